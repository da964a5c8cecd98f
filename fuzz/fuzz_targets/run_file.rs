#![no_main]
//! `cargo +nightly fuzz run run_file`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| paragen_fuzz::run_file(data));
