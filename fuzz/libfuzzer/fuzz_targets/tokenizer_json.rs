//! libFuzzer driver of the `tokenizer_json` target (see `kiln_fuzz::targets::tokenizer_json`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::targets::tokenizer_json(data));
