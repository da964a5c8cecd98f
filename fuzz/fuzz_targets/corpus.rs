#![no_main]
//! `cargo +nightly fuzz run corpus`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| paragen_fuzz::corpus(data));
