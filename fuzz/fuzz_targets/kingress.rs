//! `cargo fuzz run kingress`: see [`fuzz::kingress`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::kingress(data));
