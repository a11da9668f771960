//! `cargo xtask bench llama`: a GGUF Llama model (SmolLM2-135M Q4_1 by default) as
//! `benches/reference/llama_cpp_bench.py` measures llama.cpp: processing a 128-token prompt and
//! 128 greedy tokens after it, tokens/s as medians, plus decode against the memory-bandwidth
//! ceiling (bytes of weights read per token ÷ measured streaming bandwidth).

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use kiln::model_crates::llama::{load_gguf, Llama};
use kiln::tensor::quant::QuantPath;
use kiln::zoo::generate::{BatchDecoder, CausalLm, KvBatchDecoder};
use rayon::prelude::*;

use crate::bench_decode::{argmax, median};

/// The benchmark prompt: `len` ids from a fixed sequence (the same every run, as in the peer
/// script), avoiding the 17 special ids.
pub fn prompt(len: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x9E37_79B9u64;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            17 + ((s >> 33) % (vocab as u64 - 17)) as u32
        })
        .collect()
}

/// Streaming read bandwidth in bytes/s: summing a 512 MiB buffer on every thread, best of 3.
fn bandwidth() -> f64 {
    let buf: Vec<u64> = (0..64usize << 20).map(|i| i as u64).collect();
    let bytes = (buf.len() * 8) as f64;
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let s: u64 = buf
                .par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, &x| a ^ x))
                .sum();
            std::hint::black_box(s);
            bytes / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// One measurement: prompt processing and decoding tokens/s.
fn measure(model: &Llama, prompt: &[u32], gen: usize) -> anyhow::Result<(f64, f64)> {
    let mut state = model.start()?;
    let t = Instant::now();
    let mut logits = state.feed(prompt)?;
    let pp = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..gen {
        logits = state.feed(&[argmax(&logits)])?;
    }
    Ok((pp, gen as f64 / t.elapsed().as_secs_f64()))
}

/// Sequences the batched measurement advances together (kiln-serve's default running batch).
const BATCH: usize = 16;

/// Milliseconds per step of [`BATCH`] sequences advanced together by one greedy token each, after
/// each was prefilled with `prompt` (median of `steps` steps).
fn measure_batched(model: &Llama, prompt: &[u32], steps: usize) -> anyhow::Result<f64> {
    let mut dec = KvBatchDecoder::new(model);
    let mut next = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        let id = dec.add_sequence()?;
        let logits = dec.step(&[(id, prompt)])?;
        next.push((id, argmax(&logits[0])));
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let tokens: Vec<[u32; 1]> = next.iter().map(|&(_, t)| [t]).collect();
        let feeds: Vec<_> = next
            .iter()
            .zip(&tokens)
            .map(|(&(id, _), t)| (id, &t[..]))
            .collect();
        let t = Instant::now();
        let logits = dec.step(&feeds)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        for (n, l) in next.iter_mut().zip(&logits) {
            n.1 = argmax(l);
        }
    }
    Ok(median(times))
}

/// Runs the benchmark on `weights` with `reps` repetitions per activation path (`only` one of
/// them when given).
pub fn run(weights: &Path, reps: usize, only: Option<&str>) -> anyhow::Result<()> {
    let (prompt_len, gen) = (128, 128);
    let paths = match only {
        None => vec![QuantPath::Int8Activations, QuantPath::F32Activations],
        Some("int8") => vec![QuantPath::Int8Activations],
        Some("f32") => vec![QuantPath::F32Activations],
        Some(other) => anyhow::bail!("--activations {other:?}: expected int8 or f32"),
    };
    let (mut model, _) =
        load_gguf(weights, "smollm2-135m").with_context(|| format!("loading {}", weights.display()))?;
    let ids = prompt(prompt_len, model.vocab_size());
    let bytes = model.weight_bytes() as f64;
    let bw = bandwidth();
    println!(
        "llama {}: {prompt_len}-token prompt, {gen} greedy tokens, {} threads, weights {:.1} MB, streaming bandwidth {:.1} GB/s",
        weights.display(),
        crate::bench::rayon_threads(),
        bytes / 1e6,
        bw / 1e9
    );
    for path in paths {
        model.set_quant_path(path);
        measure(&model, &ids[..ids.len().min(16)], 4)?; // warm-up
        let (mut pp, mut tg) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let (p, g) = measure(&model, &ids, gen)?;
            pp.push(p);
            tg.push(g);
        }
        let (pp, tg) = (median(pp), median(tg));
        println!(
            "  {path:?}: prompt {pp:.1} tok/s, decode {tg:.1} tok/s ({:.0}% of the bandwidth ceiling {:.1} tok/s)",
            100.0 * tg * bytes / bw,
            bw / bytes
        );
        let step = measure_batched(&model, &ids, gen / 2)?;
        println!(
            "  {path:?}: batched decode of {BATCH} sequences: {step:.2} ms per step, {:.1} tok/s ({:.2}x one sequence)",
            BATCH as f64 * 1e3 / step,
            BATCH as f64 * 1e3 / step / tg
        );
    }
    Ok(())
}
