//! Batched decoding for every kind of causal LM of the zoo (GPT's KV-cache batch decoder, and the
//! LSTM models through the default one): sequences of different lengths and sampling parameters
//! join and leave between steps, and each one gets exactly the tokens it gets decoded alone.

use std::path::PathBuf;

use kiln::model_crates::gpt::load_hf_dir;
use kiln::nn::Scope;
use kiln::tensor::{DType, Device};
use kiln::zoo::generate::{generate_all, BatchGenerator, CausalLm, SamplingParams};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Requests: (prompt, params), the first two start together, the others join after two steps.
fn requests(vocab: u32) -> Vec<(Vec<u32>, SamplingParams)> {
    let p = |v: &[u32]| v.iter().map(|x| x % vocab).collect::<Vec<u32>>();
    vec![
        (p(&[5, 9, 14]), SamplingParams::greedy(9)),
        (p(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]), SamplingParams::greedy(3)),
        (
            p(&[42]),
            SamplingParams {
                max_new_tokens: 7,
                temperature: 0.9,
                top_k: Some(20),
                seed: 3,
                ..Default::default()
            },
        ),
        (
            p(&[7, 7, 7, 30]),
            SamplingParams {
                max_new_tokens: 6,
                temperature: 1.0,
                min_p: 0.05,
                repetition_penalty: 1.3,
                seed: 11,
                ..Default::default()
            },
        ),
    ]
}

fn check(lm: &dyn CausalLm) {
    let reqs = requests(lm.vocab_size() as u32);
    let mut gen = BatchGenerator::new(lm).unwrap();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); reqs.len()];
    let mut ids = Vec::new();
    for (p, params) in &reqs[..2] {
        ids.push(gen.add_request(p, params).unwrap());
    }
    let mut steps = 0;
    while !gen.is_idle() || ids.len() < reqs.len() {
        if steps == 2 {
            for (p, params) in &reqs[2..] {
                ids.push(gen.add_request(p, params).unwrap());
            }
        }
        for ev in gen.step().unwrap() {
            let i = ids.iter().position(|&r| r == ev.request).unwrap();
            out[i].push(ev.token.id);
        }
        steps += 1;
    }
    for (i, (p, params)) in reqs.iter().enumerate() {
        assert_eq!(out[i], generate_all(lm, p, params).unwrap(), "request {i}");
        assert_eq!(out[i].len(), params.max_new_tokens);
    }
    // n samples of one prompt: sample i is the single generation with seed + i.
    let params = SamplingParams {
        max_new_tokens: 5,
        n: 3,
        seed: 100,
        ..Default::default()
    };
    let mut gen = BatchGenerator::new(lm).unwrap();
    gen.add_request(&reqs[0].0, &params).unwrap();
    let mut samples = vec![Vec::new(); 3];
    while !gen.is_idle() {
        for ev in gen.step().unwrap() {
            samples[ev.sample].push(ev.token.id);
        }
    }
    for (i, s) in samples.iter().enumerate() {
        let one = SamplingParams {
            n: 1,
            seed: 100 + i as u64,
            ..params.clone()
        };
        assert_eq!(*s, generate_all(lm, &reqs[0].0, &one).unwrap(), "sample {i}");
    }
}

#[test]
fn gpt_batches_match_decoding_alone() {
    let (model, _) = load_hf_dir(&root().join("models/gpt/tests/fixtures/gpt2-synthetic"), "gpt2").unwrap();
    check(&model);
}

#[test]
fn lstm_models_batch_through_the_default_decoder() {
    let e = kiln::find_model("lstm-lm").unwrap();
    let lm = (e.build)(&(e.default_config)(), Scope::init(3, DType::F32, Device::Cpu)).unwrap();
    lm.set_training(false);
    check(lm.as_causal_lm().unwrap());

    let e = kiln::find_model("textgenrnn").unwrap();
    let weights = root().join("models/lstm/tests/fixtures/textgenrnn/textgenrnn_weights.safetensors");
    let scope = Scope::from_safetensors(weights, true, DType::F32, Device::Cpu).unwrap();
    let tg = (e.build)(&(e.default_config)(), scope).unwrap();
    tg.set_training(false);
    check(tg.as_causal_lm().unwrap());
}

#[test]
fn llama_batches_match_decoding_alone() {
    let e = kiln::find_model("llama-tiny").unwrap();
    let lm = (e.build)(&(e.default_config)(), Scope::init(5, DType::F32, Device::Cpu)).unwrap();
    check(lm.as_causal_lm().unwrap());
}

#[test]
fn quantized_models_batch_like_they_decode_alone() {
    use kiln::zoo::Model;
    for scheme in ["int8-outliers", "nf4-dq"] {
        let scheme = kiln::tensor::quant::QuantScheme::parse(scheme).unwrap();
        let (mut gpt, _) =
            load_hf_dir(&root().join("models/gpt/tests/fixtures/gpt2-synthetic"), "gpt2").unwrap();
        gpt.quantize(scheme).unwrap();
        check(&gpt);
        let e = kiln::find_model("llama-tiny").unwrap();
        let mut lm = (e.build)(&(e.default_config)(), Scope::init(5, DType::F32, Device::Cpu)).unwrap();
        lm.quantize(scheme).unwrap();
        check(lm.as_causal_lm().unwrap());
    }
}
