//! libFuzzer driver of the `run_config` target (see `kiln_fuzz::targets::run_config`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::targets::run_config(data));
