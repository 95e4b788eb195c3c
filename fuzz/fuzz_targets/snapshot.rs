//! `cargo fuzz run snapshot`: see [`fuzz::snapshot`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::snapshot(data));
