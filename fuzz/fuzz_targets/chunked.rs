//! `cargo fuzz run chunked`: see [`fuzz::chunked`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::chunked(data));
