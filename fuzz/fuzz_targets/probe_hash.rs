//! `cargo fuzz run probe_hash`: see [`fuzz::probe_hash`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::probe_hash(data));
