//! A small random Llama: the KV cache (growing past its first allocation) gives the logits of
//! the full forward pass, the two rotary layouts agree on correspondingly permuted weights, and
//! bad input is an error.

use std::collections::HashMap;

use kiln_llama::{Llama, LlamaConfig, RopeLayout};
use kiln_nn::Scope;
use kiln_tensor::{DType, Device, Tensor};
use kiln_zoo::generate::CausalLm;
use kiln_zoo::Model;

fn config(positions: usize) -> LlamaConfig {
    LlamaConfig {
        max_position_embeddings: positions,
        ..LlamaConfig::tiny()
    }
}

fn tokens(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % 256) as u32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn cached_decoding_gives_the_full_forward_logits_across_cache_growth() {
    let model = Llama::new("llama-tiny", config(600), Scope::init(1, DType::F32, Device::Cpu)).unwrap();
    let ids = tokens(300);
    let ids_t = Tensor::from_vec(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, 300]).unwrap();
    let full = model.logits(&ids_t).unwrap().to_vec::<f32>().unwrap();
    let v = 256;
    // A 200-token prompt (past the first 256-position allocation with what follows), then one
    // token at a time.
    let mut state = model.start().unwrap();
    let got = state.feed(&ids[..200]).unwrap();
    assert!(max_diff(&got, &full[199 * v..200 * v]) < 1e-4);
    for (i, &t) in ids.iter().enumerate().skip(200) {
        let got = state.feed(&[t]).unwrap();
        let d = max_diff(&got, &full[i * v..(i + 1) * v]);
        assert!(d < 1e-4, "position {i}: {d}");
    }
}

#[test]
fn pairs_layout_on_permuted_rows_equals_halves_layout() {
    let cfg = config(64);
    let halves = Llama::new("llama-tiny", cfg.clone(), Scope::init(2, DType::F32, Device::Cpu)).unwrap();
    // The same weights with q/k rows permuted per head as GGUF stores them: row 2i is row i,
    // row 2i + 1 is row i + head_dim / 2.
    let dh = cfg.head_dim();
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    for p in halves.parameters() {
        let mut t = p.value();
        if p.name().ends_with("q_proj.weight") || p.name().ends_with("k_proj.weight") {
            let rows = t.dims()[0];
            let order: Vec<i64> = (0..rows)
                .map(|r| {
                    let (head, j) = (r / dh, r % dh);
                    let src = if j % 2 == 0 { j / 2 } else { j / 2 + dh / 2 };
                    (head * dh + src) as i64
                })
                .collect();
            t = t
                .index_select(0, &Tensor::from_vec(order, [rows]).unwrap())
                .unwrap();
        }
        weights.insert(p.name().to_string(), t);
    }
    let pairs_cfg = LlamaConfig {
        rope_layout: RopeLayout::Pairs,
        ..cfg
    };
    let scope = Scope::from_tensors(weights, true, 0, DType::F32, Device::Cpu);
    let pairs = Llama::new("llama-tiny", pairs_cfg, scope).unwrap();
    let ids = Tensor::from_vec(tokens(20).iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, 20]).unwrap();
    let a = halves.logits(&ids).unwrap().to_vec::<f32>().unwrap();
    let b = pairs.logits(&ids).unwrap().to_vec::<f32>().unwrap();
    assert!(max_diff(&a, &b) < 1e-4, "{}", max_diff(&a, &b));
}

#[test]
fn bad_input_is_an_error() {
    let model = Llama::new("llama-tiny", config(32), Scope::init(3, DType::F32, Device::Cpu)).unwrap();
    let mut state = model.start().unwrap();
    let e = state.feed(&tokens(33)).unwrap_err().to_string();
    assert!(e.contains("33") && e.contains("32"), "{e}");
    let e = state.feed(&[256]).unwrap_err().to_string();
    assert!(e.contains("256"), "{e}");
    assert!(state.feed(&[]).is_err());
    // The failed feeds left the cache untouched.
    assert!(state.feed(&tokens(32)).is_ok());
    let bad = Tensor::from_vec(vec![1.5f32, 2.0], [1, 2]).unwrap();
    assert!(model.logits(&bad).is_err());
    // Inference only: a training forward is refused by name.
    let batch = kiln_zoo::Batch {
        inputs: Tensor::from_vec(vec![1i64, 2, 3], [1, 3]).unwrap(),
        targets: Some(Tensor::from_vec(vec![2i64, 3, 4], [1, 3]).unwrap()),
    };
    let out = model.forward(&batch).unwrap();
    assert!(out.loss.unwrap().value().to_scalar::<f32>().unwrap().is_finite());
    model.set_training(true);
    let e = model.forward(&batch).err().unwrap().to_string();
    assert!(e.contains("inference only"), "{e}");
    let bad_cfg = LlamaConfig {
        num_key_value_heads: 3,
        ..LlamaConfig::tiny()
    };
    assert!(Llama::new("llama-tiny", bad_cfg, Scope::init(0, DType::F32, Device::Cpu)).is_err());
}

#[test]
fn quantized_weights_give_nearly_the_dense_logits_in_less_memory() {
    let ids = Tensor::from_vec(tokens(24).iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, 24]).unwrap();
    let dense = Llama::new("llama-tiny", config(64), Scope::init(4, DType::F32, Device::Cpu)).unwrap();
    let want = dense.logits(&ids).unwrap().to_vec::<f32>().unwrap();
    for scheme in ["int8", "int8-outliers", "nf4", "nf4-dq"] {
        let mut q = Llama::new("llama-tiny", config(64), Scope::init(4, DType::F32, Device::Cpu)).unwrap();
        let report = q
            .quantize(kiln_tensor::quant::QuantScheme::parse(scheme).unwrap())
            .unwrap();
        assert_eq!(report.matrices, 14);
        assert!(report.bytes_after < report.bytes_before, "{scheme}: {report:?}");
        let got = q.logits(&ids).unwrap().to_vec::<f32>().unwrap();
        let dot: f64 = got.iter().zip(&want).map(|(a, b)| *a as f64 * *b as f64).sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let cosine = dot / (norm(&got) * norm(&want));
        assert!(cosine > 0.99, "{scheme}: cosine {cosine}");
        // And back to dense f32.
        let r = q.dequantize_weights().unwrap();
        assert_eq!(r.matrices, 14);
    }
}

#[test]
fn a_hugging_face_directory_loads_to_the_same_model() {
    let dir = std::env::temp_dir().join(format!("kiln-llama-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = Llama::new("llama-tiny", config(64), Scope::init(6, DType::F32, Device::Cpu)).unwrap();
    kiln_nn::save_state_dict(&model.parameters(), dir.join("model.safetensors")).unwrap();
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": false,
        "torch_dtype": "float32"
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let loaded = kiln_llama::load_hf_dir(&dir, "llama-tiny").unwrap();
    let ids = Tensor::from_vec(tokens(12).iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, 12]).unwrap();
    let (a, b) = (model.logits(&ids).unwrap(), loaded.logits(&ids).unwrap());
    assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    // A config that does not fit the weights is an error naming the problem.
    let bad = serde_json::json!({"vocab_size": 256, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64});
    std::fs::write(dir.join("config.json"), bad.to_string()).unwrap();
    let e = kiln_llama::load_hf_dir(&dir, "llama-tiny")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("mlp"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
