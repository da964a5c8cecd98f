#![no_main]
//! `cargo +nightly fuzz run checkpoint`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| paragen_fuzz::checkpoint(data));
