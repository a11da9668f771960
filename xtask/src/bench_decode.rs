//! `cargo xtask bench decode`: GPT-2-small-shaped decoding with the KV cache (random weights), as
//! `benches/reference/gpt2_decode.py` measures PyTorch: prefill of a 128-token prompt, 128 greedy
//! tokens, the cost of one step at position 10 and at position 1000, and 8 sequences decoded
//! together against one after another (same tokens either way, checked).

use std::time::Instant;

use anyhow::{bail, Context};
use kiln::model_crates::gpt::{Gpt, GptConfig};
use kiln::nn::Scope;
use kiln::tensor::{DType, Device};
use kiln::zoo::generate::KvState;
use kiln::zoo::generate::{BatchGenerator, DecodeState, SamplingParams};

/// The median of `v`.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The index of the largest logit.
pub(crate) fn argmax(l: &[f32]) -> u32 {
    l.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0 as u32
}

/// Prompt ids drawn from a fixed linear congruential sequence (the same every run).
fn prompt(len: usize, salt: u64) -> Vec<u32> {
    lcg_ids(len, 0, 50257, salt)
}

/// `n` token ids in `[lo, hi)` from a fixed linear congruential sequence picked by `salt` (the
/// PyTorch reference scripts draw the same one, so both sides see the same tokens).
pub(crate) fn lcg_ids(n: usize, lo: u64, hi: u64, salt: u64) -> Vec<u32> {
    let mut s = 0x9E37_79B9u64 ^ salt;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (lo + (s >> 33) % (hi - lo)) as u32
        })
        .collect()
}

pub fn run(reps: usize, layers: Option<usize>) -> anyhow::Result<()> {
    let mut cfg = GptConfig::gpt2();
    if let Some(l) = layers {
        cfg.n_layer = l;
    }
    let started = Instant::now();
    let model = Gpt::new("gpt2", cfg.clone(), Scope::init(0, DType::F32, Device::Cpu))?;
    println!(
        "gpt2 shape: {} layers, width {}, {} heads, vocabulary {} (random weights, built in {:.1} s), {} threads",
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_head,
        cfg.vocab_size,
        started.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    let _no_grad = kiln::autograd::no_grad();
    let (p_len, new) = (128, 128);
    let mut prefill_ms = Vec::new();
    let mut decode_tps = Vec::new();
    let mut first_tokens = None;
    for rep in 0..reps.max(1) {
        let mut state = KvState::new(&model)?;
        let t0 = Instant::now();
        let mut logits = state.feed(&prompt(p_len, 0))?;
        prefill_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        let t1 = Instant::now();
        let mut tokens = Vec::with_capacity(new);
        for _ in 0..new {
            let id = argmax(&logits);
            tokens.push(id);
            logits = state.feed(&[id])?;
        }
        decode_tps.push(new as f64 / t1.elapsed().as_secs_f64());
        match &first_tokens {
            None => first_tokens = Some(tokens),
            Some(t) if *t != tokens => bail!("rep {rep} decoded different tokens than rep 0"),
            _ => {}
        }
    }
    // One step at a given position: fill the cache, then time single-token feeds at that position
    // (each on a fresh copy of the filled state would cost a prefill; instead step forward a few
    // tokens and take the median).
    let step_ms_at = |pos: usize| -> anyhow::Result<f64> {
        let mut state = KvState::new(&model)?;
        state.feed(&prompt(pos, 1))?;
        let mut times = Vec::new();
        for i in 0..9 {
            let t = Instant::now();
            state.feed(&[(i * 7 + 11) as u32])?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median(times))
    };
    let at10 = step_ms_at(10)?;
    let at1000 = step_ms_at(1000)?;
    // Eight sequences: together (one forward per step) and one after another; same tokens.
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| prompt(p_len, 10 + i)).collect();
    let params = SamplingParams::greedy(new);
    let run_batch = |group: &[Vec<u32>]| -> anyhow::Result<(Vec<Vec<u32>>, f64)> {
        let mut gen = BatchGenerator::new(&model)?;
        for p in group {
            gen.add_request(p, &params)?;
        }
        let mut out = vec![Vec::new(); group.len()];
        // The first step is the prefill; decode throughput counts the steps after it.
        for ev in gen.step()? {
            out[ev.request as usize].push(ev.token.id);
        }
        let t = Instant::now();
        while !gen.is_idle() {
            for ev in gen.step()? {
                out[ev.request as usize].push(ev.token.id);
            }
        }
        Ok((out, t.elapsed().as_secs_f64()))
    };
    let (together, secs_together) = run_batch(&prompts)?;
    let mut alone = Vec::new();
    let mut secs_alone = 0.0;
    for p in &prompts {
        let (mut out, s) = run_batch(std::slice::from_ref(p))?;
        alone.push(out.pop().context("no output")?);
        secs_alone += s;
    }
    if together != alone {
        bail!("batched decoding gave different tokens than decoding each sequence alone");
    }
    let decoded = (8 * (new - 1)) as f64;
    let result = serde_json::json!({
        "prefill_ms": median(prefill_ms),
        "decode_tok_s": median(decode_tps),
        "step_ms_pos10": at10,
        "step_ms_pos1000": at1000,
        "pos1000_over_pos10": at1000 / at10,
        "batch8_tok_s": decoded / secs_together,
        "sequential8_tok_s": decoded / secs_alone,
        "batch8_speedup": secs_alone / secs_together,
        "batch8_tokens_identical": true,
        "threads": rayon::current_num_threads(),
    });
    println!("{result}");
    Ok(())
}
