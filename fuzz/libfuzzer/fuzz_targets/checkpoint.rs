//! libFuzzer driver of the `checkpoint` target (see `kiln_fuzz::targets::checkpoint`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::targets::checkpoint(data));
