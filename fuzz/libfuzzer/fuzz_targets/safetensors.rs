//! libFuzzer driver of the `safetensors` target (see `kiln_fuzz::targets::safetensors`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::targets::safetensors(data));
