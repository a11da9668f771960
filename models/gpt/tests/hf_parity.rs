//! The synthetic GPT-2 in exact Hugging Face layout (`tests/fixtures/gpt2-synthetic`, copied from
//! the shared reference data) against its float64 numpy references: logits, mean NLL, greedy ids;
//! and the KV-cache path against the full forward at every position.

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_gpt::{load_hf_dir, load_weights, Gpt, GptConfig};
use kiln_tensor::{DType, Tensor};
use kiln_zoo::generate::{generate_all, CausalLm, SamplingParams};
use kiln_zoo::{Batch, Model};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gpt2-synthetic")
        .join(name)
}

fn refs() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("gpt2_synthetic_refs.json")).unwrap()).unwrap()
}

fn model() -> Gpt {
    let (m, report) = load_hf_dir(&fixture(""), "gpt2").unwrap();
    assert!(report.ignored.is_empty(), "{report:?}");
    m
}

fn input_ids() -> Vec<u32> {
    refs()["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::from_vec(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, ids.len()]).unwrap()
}

#[test]
fn logits_nll_and_greedy_ids_match_the_reference() {
    let m = model();
    let ids = input_ids();
    let want = kiln_tensor::io::load_npy(fixture("logits.npy")).unwrap();
    let want_ids = kiln_tensor::io::load_npy(fixture("input_ids.npy")).unwrap();
    assert_eq!(
        want_ids.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(),
        ids.iter().map(|&i| i as i64).collect::<Vec<_>>()
    );
    let targets: Vec<i64> = ids[1..].iter().map(|&i| i as i64).collect();
    let n = ids.len();
    let out = m
        .forward(&Batch {
            inputs: ids_tensor(&ids[..n - 1]),
            targets: Some(Tensor::from_vec(targets, [1, n - 1]).unwrap()),
        })
        .unwrap();
    let nll = out.loss.unwrap().value().to_scalar::<f32>().unwrap() as f64;
    let ref_nll = refs()["mean_next_token_nll"].as_f64().unwrap();
    assert!((nll - ref_nll).abs() <= 1e-4, "mean NLL {nll} vs {ref_nll}");

    let logits = m
        .logits(&ids_tensor(&ids))
        .unwrap()
        .value()
        .reshape([n, 50257])
        .unwrap();
    let (got, want) = (logits.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
    let max_err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_err <= 1e-4, "logits max abs error {max_err}");
    let argmax: Vec<u64> = got
        .chunks(50257)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0 as u64
        })
        .collect();
    let want_argmax: Vec<u64> = refs()["argmax_per_position"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(argmax, want_argmax);

    let greedy = generate_all(&m, &ids, &SamplingParams::greedy(8)).unwrap();
    let want_greedy: Vec<u32> = refs()["greedy_8_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(greedy, want_greedy);
}

#[test]
fn the_kv_cache_gives_the_full_forward_logits_at_every_position() {
    let m = model();
    let ids = input_ids();
    let n = ids.len();
    let full = m
        .logits(&ids_tensor(&ids))
        .unwrap()
        .value()
        .to_vec::<f32>()
        .unwrap();
    let v = 50257;
    let mut state = m.start().unwrap();
    // A 5-token prefill, then one token at a time.
    let mut at = vec![(4, state.feed(&ids[..5]).unwrap())];
    for (pos, &tok) in ids.iter().enumerate().skip(5) {
        at.push((pos, state.feed(&[tok]).unwrap()));
    }
    for (pos, logits) in at {
        let want = &full[pos * v..(pos + 1) * v];
        let err = logits
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err <= 1e-4, "position {pos}: max abs error {err}");
    }
    assert_eq!(n, 14);
}

#[test]
fn the_transformer_prefix_and_buffers_are_accepted() {
    let weights = kiln_tensor::io::load_safetensors(fixture("model.safetensors")).unwrap();
    let mut renamed: HashMap<String, Tensor> = weights
        .into_iter()
        .map(|(k, t)| (format!("transformer.{k}"), t))
        .collect();
    let mask = Tensor::ones([1, 1, 128, 128], DType::F32, kiln_tensor::Device::Cpu).unwrap();
    renamed.insert("transformer.h.0.attn.bias".into(), mask.clone());
    renamed.insert("transformer.h.1.attn.masked_bias".into(), mask);
    let cfg = GptConfig::from_hf_config(&fixture("config.json")).unwrap();
    let (m, report) = load_weights(cfg, renamed, "gpt2").unwrap();
    assert_eq!(
        report.ignored,
        ["transformer.h.0.attn.bias", "transformer.h.1.attn.masked_bias"]
    );
    let ids = input_ids();
    assert_eq!(
        generate_all(&m, &ids, &SamplingParams::greedy(3)).unwrap(),
        generate_all(&model(), &ids, &SamplingParams::greedy(3)).unwrap()
    );
    // A missing tensor is an error naming it.
    let mut weights = kiln_tensor::io::load_safetensors(fixture("model.safetensors")).unwrap();
    weights.remove("h.1.mlp.c_fc.bias");
    let cfg = GptConfig::from_hf_config(&fixture("config.json")).unwrap();
    let e = load_weights(cfg, weights, "gpt2").err().unwrap().to_string();
    assert!(e.contains("h.1.mlp.c_fc.bias"), "{e}");
}

#[test]
fn prompts_beyond_the_context_are_errors() {
    let m = model();
    let e = generate_all(&m, &[1; 100], &SamplingParams::greedy(29))
        .unwrap_err()
        .to_string();
    assert!(e.contains("context of 128"), "{e}");
    assert!(generate_all(&m, &[1; 100], &SamplingParams::greedy(28)).is_ok());
    let e = m.logits(&ids_tensor(&[1; 129])).err().unwrap().to_string();
    assert!(e.contains("128"), "{e}");
}
