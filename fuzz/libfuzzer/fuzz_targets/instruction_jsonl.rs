//! libFuzzer driver of the `instruction_jsonl` target (see `kiln_fuzz::targets::instruction_jsonl`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::targets::instruction_jsonl(data));
