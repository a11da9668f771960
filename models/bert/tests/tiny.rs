//! A random `bert-tiny`: padded batches give each sentence's lone result, the zoo entry works,
//! and bad configs and checkpoints are errors naming the problem.

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_bert::{load_hf_dir, load_weights, BertConfig, BertInput, BertModel};
use kiln_nn::Scope;
use kiln_tensor::{DType, Device, Tensor};
use kiln_zoo::{Batch, Model, Task};

fn tiny_config() -> BertConfig {
    BertConfig {
        vocab_size: 100,
        max_position_embeddings: 32,
        ..BertConfig::bert_tiny()
    }
}

fn random_tiny(seed: u64) -> BertModel {
    BertModel::new(
        "bert-tiny",
        tiny_config(),
        Scope::init(seed, DType::F32, Device::Cpu),
    )
    .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A fresh, empty directory under the system's temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-bert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn state_dict(model: &BertModel) -> HashMap<String, Tensor> {
    model
        .parameters()
        .iter()
        .map(|p| (p.name().to_string(), p.value()))
        .collect()
}

#[test]
fn a_padded_batch_gives_each_sentence_its_lone_result() {
    let model = random_tiny(1);
    let seqs: Vec<Vec<u32>> = vec![vec![2, 17, 40, 3], vec![2, 5, 6, 7, 8, 9, 10, 3], vec![2, 3]];
    let batch = model.forward_input(&BertInput::padded(&seqs, 0)).unwrap();
    let embs = batch.sentence_embeddings().unwrap();
    let d = model.hidden_size();
    let hidden = batch.last_hidden_state.to_vec::<f32>().unwrap();
    let pooled = batch.pooler_output.to_vec::<f32>().unwrap();
    let l = 8;
    for (i, s) in seqs.iter().enumerate() {
        let alone = model
            .forward_input(&BertInput::padded(std::slice::from_ref(s), 0))
            .unwrap();
        let h = alone.last_hidden_state.to_vec::<f32>().unwrap();
        let rows = &hidden[i * l * d..(i * l + s.len()) * d];
        assert!(
            max_abs_diff(rows, &h) <= 1e-5,
            "sequence {i}: hidden states differ"
        );
        let p = alone.pooler_output.to_vec::<f32>().unwrap();
        assert!(max_abs_diff(&pooled[i * d..(i + 1) * d], &p) <= 1e-5);
        let e = alone.sentence_embeddings().unwrap();
        assert!(
            max_abs_diff(&embs[i], &e[0]) <= 1e-6,
            "sequence {i}: embeddings differ"
        );
        let norm: f32 = e[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}

#[test]
fn weights_kept_packed_for_inference_give_the_same_embeddings() {
    let model = random_tiny(4);
    // 8 x 16 tokens: 128 rows, enough for the packed GEMM path.
    let seqs: Vec<Vec<u32>> = (0..8u32)
        .map(|s| (0..16).map(|i| 2 + (s * 7 + i * 3) % 90).collect())
        .collect();
    let input = BertInput::padded(&seqs, 0);
    let plain = model.sentence_embeddings(&input).unwrap();
    model.keep_packed_weights(true);
    let packed = model.sentence_embeddings(&input).unwrap();
    assert_eq!(packed, plain, "bit for bit");
    model.keep_packed_weights(false);
}

#[test]
fn the_zoo_entries_build_and_forward_gives_embeddings_or_logits() {
    let entry = kiln_zoo::find("all-minilm-l6-v2").unwrap();
    assert_eq!(entry.task, Task::Embedding);
    // The sentence encoder at bert-tiny's sizes, to keep the test small.
    let mut cfg = serde_json::to_value(tiny_config()).unwrap();
    cfg["vocab_size"] = 100.into();
    let model = (entry.build)(&cfg, Scope::init(0, DType::F32, Device::Cpu)).unwrap();
    let ids = Tensor::from_vec(vec![2i64, 11, 12, 3, 2, 13, 3, 0], [2, 4]).unwrap();
    let out = model
        .forward(&Batch {
            inputs: ids.clone(),
            targets: None,
        })
        .unwrap();
    assert_eq!(out.logits.dims(), &[2, 128]);
    // Wrong inputs and training are errors, not panics.
    for inputs in [
        Tensor::zeros([2, 4], DType::F32, Device::Cpu).unwrap(),
        Tensor::from_vec(vec![2i64, 500], [1, 2]).unwrap(),
        Tensor::from_vec(vec![2i64; 600], [1, 600]).unwrap(),
        Tensor::from_vec(vec![2i64, -1], [1, 2]).unwrap(),
        Tensor::from_vec(vec![2i64; 8], [1, 2, 4]).unwrap(),
        Tensor::from_vec(vec![2i64, 3, 0, 0, 1, 7], [1, 3, 2]).unwrap(),
    ] {
        let err = model
            .forward(&Batch {
                inputs,
                targets: None,
            })
            .err()
            .unwrap();
        assert!(err.to_string().contains("all-minilm-l6-v2"), "{err}");
    }
    let err = model
        .forward(&Batch {
            inputs: ids.clone(),
            targets: Some(Tensor::from_vec(vec![0i64, 1], [2]).unwrap()),
        })
        .err()
        .unwrap();
    assert!(err.to_string().contains("no training objective"), "{err}");
    let mut bad = (entry.default_config)();
    bad["hidden_sizes"] = 64.into();
    assert!((entry.build)(&bad, Scope::init(0, DType::F32, Device::Cpu)).is_err());

    // bert-tiny and bert-base carry the pre-training heads; bert-classifier its classifier.
    for (name, task) in [
        ("bert-tiny", Task::MaskedLm),
        ("bert-base", Task::MaskedLm),
        ("bert-classifier", Task::SequenceClassification),
    ] {
        assert_eq!(kiln_zoo::find(name).unwrap().task, task, "{name}");
    }
    let tiny = kiln_zoo::find("bert-tiny").unwrap();
    let mut cfg = (tiny.default_config)();
    cfg["vocab_size"] = 100.into();
    let model = (tiny.build)(&cfg, Scope::init(0, DType::F32, Device::Cpu)).unwrap();
    let names: Vec<String> = model.parameters().iter().map(|p| p.name().to_string()).collect();
    for want in [
        "bert.embeddings.word_embeddings.weight",
        "bert.pooler.dense.weight",
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.seq_relationship.weight",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    let out = model
        .forward(&Batch {
            inputs: ids,
            targets: None,
        })
        .unwrap();
    assert_eq!(
        out.logits.dims(),
        &[2, 4, 100],
        "masked-LM logits of every position"
    );
}

#[test]
fn a_checkpoint_loads_with_or_without_the_prefix_and_in_half_precision() {
    let model = random_tiny(2);
    let input = BertInput::padded(&[vec![2, 30, 31, 3]], 0);
    let want = model.sentence_embeddings(&input).unwrap();
    let mut prefixed: HashMap<String, Tensor> = state_dict(&model)
        .into_iter()
        .map(|(k, v)| (format!("bert.{k}"), v.to_dtype(DType::F16).unwrap()))
        .collect();
    prefixed.insert(
        "bert.embeddings.position_ids".into(),
        Tensor::from_vec((0..32i64).collect::<Vec<_>>(), [1, 32]).unwrap(),
    );
    let (loaded, ignored) = load_weights(tiny_config(), prefixed, "bert-tiny").unwrap();
    assert_eq!(ignored, ["bert.embeddings.position_ids"]);
    let got = loaded.sentence_embeddings(&input).unwrap();
    assert!(
        max_abs_diff(&got[0], &want[0]) < 2e-2,
        "f16 weights drift too far"
    );
    let (same, _) = load_weights(tiny_config(), state_dict(&model), "bert-tiny").unwrap();
    assert_eq!(same.sentence_embeddings(&input).unwrap(), want);
}

#[test]
fn shapes_that_do_not_fit_the_config_and_unknown_keys_are_errors() {
    let model = random_tiny(3);
    let mut weights = state_dict(&model);
    weights.insert(
        "encoder.layer.1.intermediate.dense.weight".into(),
        Tensor::zeros([256, 128], DType::F32, Device::Cpu).unwrap(),
    );
    let err = load_weights(tiny_config(), weights, "bert-tiny")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("encoder.layer.1.intermediate.dense.weight")
            && err.contains("512")
            && err.contains("256"),
        "{err}"
    );
    let mut weights = state_dict(&model);
    weights.insert(
        "encoder.layer.9.output.dense.weight".into(),
        Tensor::zeros([2], DType::F32, Device::Cpu).unwrap(),
    );
    let err = load_weights(tiny_config(), weights, "bert-tiny")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("encoder.layer.9.output.dense.weight"), "{err}");
    let mut weights = state_dict(&model);
    weights.remove("pooler.dense.bias");
    let err = load_weights(tiny_config(), weights, "bert-tiny")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("pooler.dense.bias"), "{err}");
}

#[test]
fn configs_with_unknown_or_missing_fields_are_errors_naming_them() {
    let dir = temp_dir("config");
    let good = serde_json::json!({
        "model_type": "bert", "hidden_act": "gelu", "vocab_size": 100, "hidden_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512,
        "max_position_embeddings": 32, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_dropout_prob": 0.1, "architectures": ["BertModel"], "pad_token_id": 0
    });
    let write = |v: &serde_json::Value| std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    write(&good);
    assert_eq!(
        BertConfig::from_hf_config(&dir.join("config.json")).unwrap(),
        tiny_config()
    );

    let mut unknown = good.clone();
    unknown["attention_window"] = 4.into();
    write(&unknown);
    let err = BertConfig::from_hf_config(&dir.join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("attention_window"), "{err}");

    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("intermediate_size");
    write(&missing);
    let err = BertConfig::from_hf_config(&dir.join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("intermediate_size"), "{err}");

    let mut act = good.clone();
    act["hidden_act"] = "relu".into();
    write(&act);
    let err = BertConfig::from_hf_config(&dir.join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("hidden_act") && err.contains("relu"), "{err}");

    let mut heads = good.clone();
    heads["num_attention_heads"] = 3.into();
    write(&heads);
    let err = BertConfig::from_hf_config(&dir.join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_attention_heads"), "{err}");

    // A directory whose weights do not fit its config.
    write(&good);
    let mut weights = state_dict(&random_tiny(4));
    weights.insert(
        "embeddings.word_embeddings.weight".into(),
        Tensor::zeros([99, 128], DType::F32, Device::Cpu).unwrap(),
    );
    kiln_tensor::io::save_safetensors(&weights, dir.join("model.safetensors")).unwrap();
    let err = load_hf_dir(&dir, "bert-tiny").err().unwrap().to_string();
    assert!(
        err.contains("embeddings.word_embeddings.weight") && err.contains("99"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
