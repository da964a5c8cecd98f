#![no_main]
//! `cargo +nightly fuzz run translate_input`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| paragen_fuzz::translate_input(data));
