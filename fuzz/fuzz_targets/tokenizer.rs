#![no_main]
//! `cargo +nightly fuzz run tokenizer`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| paragen_fuzz::tokenizer(data));
