//! The real SmolLM2-135M-Instruct Q4_1 GGUF (git-ignored; skipped with a message when absent,
//! a failure when `KILN_REQUIRE_WEIGHTS=1`). Found under `$KILN_REGISTRY_MODELS`, default
//! `<workspace>/data/registry`.

mod common;

use kiln_gguf::{GgmlType, GgufFile, QuantFormat};

const FILE: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

#[test]
fn smollm2_q4_1_header_and_tensors() {
    let Some(path) = common::weights("smollm2_q4_1_header_and_tensors", FILE) else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.tensors().len(), 272);
    assert_eq!(file.metadata().len(), 33);
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(file.get_u32("llama.embedding_length").unwrap(), 576);
    let tokens = file.get_string_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(
        file.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
        49152
    );
    assert!(!file.get_string_array("tokenizer.ggml.merges").unwrap().is_empty());
    assert!(file.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap() > 0.0);

    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [576, 49152]);
    assert_eq!(embd.shape(), [49152, 576]);
    assert_eq!(embd.dtype, GgmlType::Quant(QuantFormat::Q8_0));
    assert_eq!(embd.n_bytes, 576 * 49152 / 32 * 34);

    let q = file.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.dims, [576, 576]);
    assert_eq!(q.dtype, GgmlType::Quant(QuantFormat::Q4_1));
    let t = file.tensor_to_f32("blk.0.attn_q.weight").unwrap();
    assert_eq!(t.dims(), [576, 576]);
    assert!(t.to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));

    let norm = file.tensor("blk.0.attn_norm.weight").unwrap();
    assert_eq!(norm.dtype, GgmlType::F32);
    assert_eq!(norm.dims, [576]);
    let raw: Vec<f32> = file
        .tensor_bytes("blk.0.attn_norm.weight")
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let values = file
        .tensor_to_f32("blk.0.attn_norm.weight")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(
        values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        raw.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );

    // Every tensor's bytes are in the file, aligned, and every supported one reads.
    for t in file.tensors() {
        assert_eq!(t.offset % file.alignment(), 0, "{}", t.name);
        assert_eq!(file.tensor_bytes(&t.name).unwrap().len(), t.n_bytes);
    }
}
