//! The real pretrained textgenrnn 2.0 weights (`tests/fixtures/textgenrnn`, copied from the shared
//! reference data): the model loads them by their own names, its logits equal the float64 numpy
//! references, and greedy generation through the shared `kiln_zoo::generate` reproduces the
//! reference texts.

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_lstm::{TextGenRnn, TextGenRnnConfig, TextGenRnnVocab};
use kiln_nn::layers::{Lstm, RnnConfig};
use kiln_nn::Scope;
use kiln_tensor::{DType, Device, Tensor};
use kiln_zoo::generate::{generate_all, SamplingParams};
use kiln_zoo::{Batch, Model};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/textgenrnn")
        .join(name)
}

fn load() -> TextGenRnn {
    let scope = Scope::from_safetensors(
        fixture("textgenrnn_weights.safetensors"),
        true,
        DType::F32,
        Device::Cpu,
    )
    .unwrap();
    let model = TextGenRnn::new(TextGenRnnConfig::default(), scope.clone()).unwrap();
    scope.check_all_used().unwrap();
    model
}

fn refs() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("textgenrnn_refs.json")).unwrap()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn npy(name: &str) -> Tensor {
    kiln_tensor::io::load_npy(fixture(name)).unwrap()
}

#[test]
fn logits_and_hidden_states_match_the_references() {
    let model = load();
    let vocab = TextGenRnnVocab::load(fixture("textgenrnn_vocab.json")).unwrap();
    let refs = refs();
    for case in 0..2 {
        let r = &refs["cases"][case];
        // The prompt encoding: <s> + characters, left-padded with 0 to 40.
        let seed = r["seed"].as_str().unwrap();
        let mut window = vec![0u32; 40];
        window.extend(vocab.encode_prompt(seed));
        let window: Vec<i64> = window[window.len() - 40..].iter().map(|&i| i as i64).collect();
        let ids = npy(&format!("case{case}_input_ids.npy"));
        assert_eq!(ids.to_vec::<i64>().unwrap(), window, "case {case}: input ids");

        let ids = ids.unsqueeze(0).unwrap();
        let out = model
            .forward(&Batch {
                inputs: ids.clone(),
                targets: None,
            })
            .unwrap();
        let want = npy(&format!("case{case}_logits.npy"));
        let err = max_abs_diff(out.logits.value(), &want);
        assert!(err <= 1e-4, "case {case}: logits max abs error {err}");

        // The second LSTM's last hidden state (features 228..356 of the last step).
        let feats = model.features(&ids).unwrap();
        assert_eq!(feats.dims(), &[1, 40, 356]);
        let h2 = feats
            .value()
            .narrow(1, 39, 1)
            .unwrap()
            .narrow(2, 228, 128)
            .unwrap();
        let err_h = max_abs_diff(&h2, &npy(&format!("case{case}_lstm2_last_h.npy")));
        assert!(err_h <= 1e-4, "case {case}: lstm2 last h max abs error {err_h}");

        // The reference top-5 characters and probabilities.
        let p = out.logits.value().softmax(1).unwrap().to_f64_vec();
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        for (k, (id, prob)) in r["top5"]
            .as_array()
            .unwrap()
            .iter()
            .zip(r["top5_prob"].as_array().unwrap())
            .enumerate()
        {
            assert_eq!(order[k] as u64, id.as_u64().unwrap(), "case {case}: top {k}");
            assert!(
                (p[order[k]] - prob.as_f64().unwrap()).abs() < 1e-5,
                "case {case}: top {k} probability"
            );
        }
        eprintln!("textgenrnn case {case}: logits max abs err {err:.3e}, lstm2 last h {err_h:.3e}");
    }
}

#[test]
fn greedy_generation_reproduces_the_reference_texts() {
    let model = load();
    let vocab = TextGenRnnVocab::load(fixture("textgenrnn_vocab.json")).unwrap();
    let lm = model.as_causal_lm().unwrap();
    let refs = refs();
    for case in refs["cases"].as_array().unwrap() {
        let seed = case["seed"].as_str().unwrap();
        let params = SamplingParams {
            stop_tokens: vocab.meta_id().into_iter().collect(),
            ..SamplingParams::greedy(40)
        };
        let out = generate_all(lm, &vocab.encode_prompt(seed), &params).unwrap();
        let text = format!("{seed}{}", vocab.decode(&out));
        assert_eq!(text, case["greedy_40_chars"].as_str().unwrap());
    }
}

/// The same weights in kiln-nn's `Lstm` (PyTorch layout: kernels transposed, the Keras bias as
/// `bias_ih` and a zero `bias_hh`), as two layers and as one 2-layer `Lstm`: the real-weights
/// check of the layer itself, and a cross-check of the model's Keras-layout LSTM.
#[test]
fn kiln_nn_lstm_with_converted_weights_agrees() {
    let w = kiln_tensor::io::load_safetensors(fixture("textgenrnn_weights.safetensors")).unwrap();
    let mut sd = HashMap::new();
    for k in 0..2 {
        let p = format!("rnn_{}", k + 1);
        let t = |n: &str| w[&format!("{p}.{n}")].t().unwrap().contiguous().unwrap();
        sd.insert(format!("weight_ih_l{k}"), t("kernel"));
        sd.insert(format!("weight_hh_l{k}"), t("recurrent_kernel"));
        sd.insert(format!("bias_ih_l{k}"), w[&format!("{p}.bias")].clone());
        sd.insert(
            format!("bias_hh_l{k}"),
            w[&format!("{p}.bias")].zeros_like().unwrap(),
        );
    }
    let lstm = Lstm::new(
        Scope::from_tensors(sd, true, 0, DType::F32, Device::Cpu),
        RnnConfig::new(100, 128).num_layers(2).batch_first(true),
    )
    .unwrap();
    let model = load();
    for case in 0..2 {
        let ids = npy(&format!("case{case}_input_ids.npy")).unsqueeze(0).unwrap();
        let e = kiln_autograd::Var::constant(Tensor::embedding(&ids, &w["embedding.weight"]).unwrap());
        let (out, (h_n, _)) = lstm.forward_with_state(&e, None).unwrap();
        let want = npy(&format!("case{case}_lstm2_last_h.npy"));
        let err = max_abs_diff(&h_n.value().narrow(0, 1, 1).unwrap(), &want);
        assert!(err <= 1e-4, "case {case}: nn Lstm h_n[1] error {err}");
        let feats = model.features(&ids).unwrap();
        let ours = feats.value().narrow(2, 228, 128).unwrap();
        let err = max_abs_diff(&ours, out.value());
        assert!(
            err <= 1e-5,
            "case {case}: Keras-layout LSTM vs nn Lstm outputs differ by {err}"
        );
    }
}

#[test]
fn bad_inputs_are_errors() {
    let model = load();
    let forward = |inputs: Tensor, targets: Option<Tensor>| {
        model
            .forward(&Batch { inputs, targets })
            .err()
            .unwrap()
            .to_string()
    };
    let e = forward(Tensor::from_vec(vec![1i64, 465], [1, 2]).unwrap(), None);
    assert!(
        e.contains("465") && e.contains("[0, 1]") && e.contains("0..465"),
        "{e}"
    );
    let e = forward(Tensor::zeros([2, 3], DType::F32, Device::Cpu).unwrap(), None);
    assert!(e.contains("integer"), "{e}");
    let e = forward(
        Tensor::from_vec(vec![1i64, 2], [1, 2]).unwrap(),
        Some(Tensor::from_vec(vec![1i64, 2], [2]).unwrap()),
    );
    assert!(e.contains("targets of shape [1]"), "{e}");
    let e = TextGenRnnVocab::load(fixture("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.json"), "{e}");
}
