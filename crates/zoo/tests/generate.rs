//! The shared generation loop on a tiny deterministic fake language model: greedy is the arg-max
//! chain, sampling is seeded, top-k 1 is greedy, stop tokens end generation, streaming equals
//! collecting, and bad requests are errors.

use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_zoo::generate::{generate, generate_all, CausalLm, DecodeState, SamplingParams};
use kiln_zoo::{Error, Result};

const VOCAB: usize = 11;

/// Next-token logits as a fixed function of the whole history (so any mistake in what was fed
/// shows up in the output). Counts the tokens it is fed.
struct FakeLm {
    fed: AtomicUsize,
    /// Return logits of this length instead of `VOCAB` (a buggy model).
    logits_len: usize,
}

impl FakeLm {
    fn new() -> FakeLm {
        FakeLm {
            fed: AtomicUsize::new(0),
            logits_len: VOCAB,
        }
    }
}

/// The logits after `history`: a hash of the history mixed with each token id.
fn logits_after(history: &[u32], len: usize) -> Vec<f32> {
    let h = history
        .iter()
        .fold(17u64, |h, &t| h.wrapping_mul(31).wrapping_add(t as u64 + 1));
    (0..len as u64)
        .map(|j| ((h.wrapping_mul(7919).wrapping_add(j * 104_729) >> 3) % 1000) as f32 / 250.0)
        .collect()
}

struct FakeState<'a> {
    lm: &'a FakeLm,
    history: Vec<u32>,
}

impl CausalLm for FakeLm {
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn start(&self) -> Result<Box<dyn DecodeState + '_>> {
        Ok(Box::new(FakeState {
            lm: self,
            history: Vec::new(),
        }))
    }
}

impl DecodeState for FakeState<'_> {
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.lm.fed.fetch_add(ids.len(), Ordering::Relaxed);
        self.history.extend_from_slice(ids);
        Ok(logits_after(&self.history, self.lm.logits_len))
    }
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        max_new_tokens: 24,
        temperature: 1.0,
        seed,
        ..Default::default()
    }
}

#[test]
fn greedy_is_the_argmax_chain_and_feeds_each_token_once() {
    let lm = FakeLm::new();
    let prompt = [3u32, 1, 4];
    let out = generate_all(&lm, &prompt, &SamplingParams::greedy(12)).unwrap();
    let mut history = prompt.to_vec();
    let mut want = Vec::new();
    for _ in 0..12 {
        let t = argmax(&logits_after(&history, VOCAB));
        want.push(t);
        history.push(t);
    }
    assert_eq!(out, want);
    // The prompt once, then every new token but the last.
    assert_eq!(lm.fed.load(Ordering::Relaxed), 3 + 11);
}

#[test]
fn the_same_seed_repeats_and_another_seed_differs() {
    let lm = FakeLm::new();
    let a = generate_all(&lm, &[5], &sampled(1)).unwrap();
    let b = generate_all(&lm, &[5], &sampled(1)).unwrap();
    let c = generate_all(&lm, &[5], &sampled(2)).unwrap();
    assert_eq!(a.len(), 24);
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Sampling at temperature 1 is not the greedy chain.
    assert_ne!(a, generate_all(&lm, &[5], &SamplingParams::greedy(24)).unwrap());
}

#[test]
fn top_k_one_is_greedy_at_any_temperature() {
    let lm = FakeLm::new();
    let greedy = generate_all(&lm, &[2, 7], &SamplingParams::greedy(20)).unwrap();
    for (t, seed) in [(0.5, 0), (1.0, 1), (3.0, 2)] {
        let p = SamplingParams {
            max_new_tokens: 20,
            temperature: t,
            top_k: Some(1),
            seed,
            ..Default::default()
        };
        assert_eq!(generate_all(&lm, &[2, 7], &p).unwrap(), greedy, "temperature {t}");
    }
}

#[test]
fn a_stop_token_ends_generation_and_is_yielded() {
    let lm = FakeLm::new();
    let free = generate_all(&lm, &[1], &sampled(9)).unwrap();
    let stop = free[5];
    let first = free.iter().position(|&t| t == stop).unwrap();
    let p = SamplingParams {
        stop_tokens: vec![stop],
        ..sampled(9)
    };
    let out = generate_all(&lm, &[1], &p).unwrap();
    assert_eq!(out, free[..=first]);
    assert_eq!(*out.last().unwrap(), stop);
}

#[test]
fn streaming_yields_what_collect_returns() {
    let lm = FakeLm::new();
    let p = sampled(4);
    let mut streamed = Vec::new();
    let mut g = generate(&lm, &[0, 10], &p).unwrap();
    while let Some(t) = g.next() {
        streamed.push(t.unwrap());
        assert_eq!(g.emitted(), streamed.len());
    }
    assert!(g.next().is_none(), "a finished generator stays finished");
    assert_eq!(streamed, generate_all(&lm, &[0, 10], &p).unwrap());
    // Zero new tokens: nothing, and the prompt is not even fed.
    let lm0 = FakeLm::new();
    assert!(generate_all(&lm0, &[1], &SamplingParams::greedy(0))
        .unwrap()
        .is_empty());
    assert_eq!(lm0.fed.load(Ordering::Relaxed), 0);
}

fn generation_error(lm: &FakeLm, prompt: &[u32], p: &SamplingParams) -> String {
    match generate(lm, prompt, p) {
        Err(e @ Error::Generation(_)) => e.to_string(),
        Err(e) => panic!("unexpected error kind {e}"),
        Ok(mut g) => match g.find_map(|t| t.err()) {
            Some(e) => e.to_string(),
            None => panic!("{prompt:?} {p:?} should fail"),
        },
    }
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let lm = FakeLm::new();
    let g = SamplingParams::greedy(3);
    let e = generation_error(&lm, &[], &g);
    assert!(e.contains("prompt is empty"), "{e}");
    let e = generation_error(&lm, &[1, 11], &g);
    assert!(
        e.contains("11") && e.contains("position 1") && e.contains("vocabulary size 11"),
        "{e}"
    );
    let e = generation_error(
        &lm,
        &[1],
        &SamplingParams {
            temperature: -1.0,
            ..g.clone()
        },
    );
    assert!(e.contains("temperature"), "{e}");
    let e = generation_error(
        &lm,
        &[1],
        &SamplingParams {
            top_p: 0.0,
            ..g.clone()
        },
    );
    assert!(e.contains("top_p"), "{e}");
    let bad = FakeLm {
        fed: AtomicUsize::new(0),
        logits_len: 4,
    };
    let e = generation_error(&bad, &[1], &g);
    assert!(e.contains("4 logits") && e.contains("11"), "{e}");
}
