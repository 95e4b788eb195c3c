//! `cargo fuzz run proxy_header`: see [`fuzz::proxy_header`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::proxy_header(data));
