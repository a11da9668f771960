//! libFuzzer driver of the `idx` target (see `kiln_fuzz::targets::idx`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::targets::idx(data));
