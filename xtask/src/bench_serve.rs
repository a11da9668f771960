//! `cargo xtask bench serve`: a load generator on the serving engine (in process, no HTTP),
//! reporting vLLM's `benchmark_serving` metrics — request throughput, output tokens/s, TTFT,
//! TPOT, ITL and end-to-end latency (mean, median, p99) — for the batching engine and for the
//! same engine limited to one request at a time, with the same seeded requests; then the
//! time to first token of a request whose 512-token prefix is cached against the first one.
//! `--rounds N` alternates the two modes N times and reports the median ratio.
//!
//! Clients are closed loops (`--clients`, each sends its next request when the previous one
//! ended, as vLLM's `--max-concurrency`); with `--rate R` requests also wait for seeded Poisson
//! arrival times at R requests/s.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kiln::model_crates::llama::load_gguf;
use kiln::serve::{Engine, EngineConfig, Event};
use kiln::zoo::generate::{CausalLm, KvDtype, SamplingParams};
use kiln::zoo::Model;

use crate::bench_llama::prompt;

/// The load of one run.
pub struct Load {
    /// Requests sent in all.
    pub requests: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Poisson arrival rate in requests/s (`None`: as fast as the clients go).
    pub rate: Option<f64>,
    /// Prompt tokens per request.
    pub prompt_len: usize,
    /// Tokens generated per request (no stop token: every request generates them all).
    pub gen: usize,
    /// Prompt and output lengths are drawn uniformly from `len · [1 − r, 1 + r]` (seeded; vLLM's
    /// `--random-range-ratio`); 0 keeps them fixed.
    pub range_ratio: f64,
}

/// What one request saw.
struct Trace {
    tokens: Vec<u32>,
    ttft: f64,
    /// Times between consecutive tokens.
    itl: Vec<f64>,
    e2e: f64,
}

/// `(mean, median, p99)` of `v` (in the unit given).
fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let at = |q: f64| v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
    (mean, at(0.5), at(0.99))
}

/// Seeded exponential gaps (a Poisson process).
fn arrivals(n: usize, rate: Option<f64>, seed: u64) -> Vec<f64> {
    let Some(rate) = rate else {
        return vec![0.0; n];
    };
    let mut t = 0.0;
    uniforms(seed)
        .take(n)
        .map(|u| {
            t += -(1.0 - u).ln() / rate;
            t
        })
        .collect()
}

/// A seeded SplitMix64 stream of uniform numbers in [0, 1).
fn uniforms(seed: u64) -> impl Iterator<Item = f64> {
    let mut s = seed;
    std::iter::repeat_with(move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// A length drawn from `len · [1 − r, 1 + r]` (at least 1).
fn spread(len: usize, r: f64, u: f64) -> usize {
    ((len as f64 * (1.0 - r + 2.0 * r * u)).round() as usize).max(1)
}

/// The requests of a run: prompts from one fixed stream, each with its own seed.
fn requests(load: &Load, vocab: usize) -> Vec<(Vec<u32>, SamplingParams)> {
    let r = load.range_ratio.clamp(0.0, 1.0);
    let mut u = uniforms(7);
    let lens: Vec<(usize, usize)> = (0..load.requests)
        .map(|_| {
            let (a, b) = (u.next().unwrap_or(0.5), u.next().unwrap_or(0.5));
            (spread(load.prompt_len, r, a), spread(load.gen, r, b))
        })
        .collect();
    let total: usize = lens.iter().map(|l| l.0).sum();
    let all = prompt(total + 1, vocab);
    let mut at = 0;
    lens.iter()
        .enumerate()
        .map(|(i, &(p, g))| {
            let ids = all[at..at + p].to_vec();
            at += p;
            let params = SamplingParams {
                max_new_tokens: g,
                temperature: 0.8,
                seed: 1000 + i as u64,
                ..Default::default()
            };
            (ids, params)
        })
        .collect()
}

/// Sends one request and times its tokens.
fn send(engine: &Engine, prompt: Vec<u32>, params: SamplingParams) -> anyhow::Result<Trace> {
    let start = Instant::now();
    let mut sub = engine.submit(prompt, params)?;
    let mut times = Vec::new();
    let mut tokens = Vec::new();
    while let Some(e) = sub.blocking_next() {
        match e {
            Event::Token { token, .. } => {
                times.push(start.elapsed().as_secs_f64());
                tokens.push(token.id);
            }
            Event::Finished { .. } => {}
            Event::Failed(e) => anyhow::bail!("a request failed: {e}"),
        }
    }
    anyhow::ensure!(!times.is_empty(), "a request produced no token");
    Ok(Trace {
        tokens,
        ttft: times[0],
        itl: times.windows(2).map(|w| w[1] - w[0]).collect(),
        e2e: start.elapsed().as_secs_f64(),
    })
}

/// Runs the load on an engine; returns the traces (in request order) and the wall time.
fn run_load(
    engine: &Engine,
    load: &Load,
    reqs: &[(Vec<u32>, SamplingParams)],
) -> anyhow::Result<(Vec<Trace>, f64)> {
    let next = AtomicUsize::new(0);
    let arrive = arrivals(reqs.len(), load.rate, 42);
    let start = Instant::now();
    let results: Vec<anyhow::Result<Vec<(usize, Trace)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..load.clients)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<Vec<(usize, Trace)>> {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= reqs.len() {
                            return Ok(mine);
                        }
                        let wait = arrive[i] - start.elapsed().as_secs_f64();
                        if wait > 0.0 {
                            std::thread::sleep(Duration::from_secs_f64(wait));
                        }
                        mine.push((i, send(engine, reqs[i].0.clone(), reqs[i].1.clone())?));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked")))
            })
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let mut traces: Vec<(usize, Trace)> = Vec::new();
    for r in results {
        traces.extend(r?);
    }
    traces.sort_by_key(|t| t.0);
    Ok((traces.into_iter().map(|t| t.1).collect(), wall))
}

fn report(name: &str, traces: &[Trace], wall: f64) -> (f64, f64) {
    let out: usize = traces.iter().map(|t| t.tokens.len()).sum();
    let ms = |v: Vec<f64>| {
        let (a, b, c) = summary(v);
        format!("{:8.1} {:8.1} {:8.1}", a * 1e3, b * 1e3, c * 1e3)
    };
    let tpot: Vec<f64> = traces
        .iter()
        .filter(|t| t.tokens.len() > 1)
        .map(|t| (t.e2e - t.ttft) / (t.tokens.len() - 1) as f64)
        .collect();
    let tok_s = out as f64 / wall;
    println!("== {name}: {} requests in {wall:.2} s", traces.len());
    println!(
        "   request throughput {:.2} req/s, output {tok_s:.1} tok/s",
        traces.len() as f64 / wall
    );
    println!("   (ms)          mean   median      p99");
    println!("   TTFT      {}", ms(traces.iter().map(|t| t.ttft).collect()));
    println!("   TPOT      {}", ms(tpot));
    println!(
        "   ITL       {}",
        ms(traces.iter().flat_map(|t| t.itl.clone()).collect())
    );
    println!("   E2E       {}", ms(traces.iter().map(|t| t.e2e).collect()));
    (tok_s, summary(traces.iter().map(|t| t.ttft).collect()).1)
}

/// Runs the serving benchmark on the GGUF model at `weights`.
pub fn run(
    weights: &Path,
    load: &Load,
    kv_memory_mb: usize,
    kv_dtype: KvDtype,
    rounds: usize,
) -> anyhow::Result<()> {
    let (model, _) =
        load_gguf(weights, "smollm2-135m").with_context(|| format!("loading {}", weights.display()))?;
    let vocab = model.vocab_size();
    let weight_bytes = model.weight_bytes();
    let model: Arc<dyn Model> = Arc::new(model);
    let config = |running: usize| EngineConfig {
        kv_memory_bytes: kv_memory_mb << 20,
        kv_dtype,
        max_running: running,
        max_queue: load.requests,
        ..Default::default()
    };
    println!(
        "serve {}: {} requests, {} clients, rate {}, {}-token prompts, {} output tokens (lengths ×[{:.2}, {:.2}]), {} threads",
        weights.display(),
        load.requests,
        load.clients,
        load.rate.map_or("inf".into(), |r| format!("{r} req/s")),
        load.prompt_len,
        load.gen,
        1.0 - load.range_ratio,
        1.0 + load.range_ratio,
        crate::bench::rayon_threads()
    );
    let reqs = requests(load, vocab);
    // Rounds alternate the two modes, so a drift of the machine's speed falls on both.
    let (mut ratios, mut ttft_ratios, mut first_tokens) = (Vec::new(), Vec::new(), None);
    for round in 1..=rounds {
        println!("-- round {round} of {rounds}");
        // A lone request on an idle engine: its TTFT is the reference.
        let engine = Engine::start(model.clone(), config(load.clients))?;
        let lone: Vec<f64> = (0..3)
            .map(|i| send(&engine, reqs[i].0.clone(), reqs[i].1.clone()).map(|t| t.ttft))
            .collect::<anyhow::Result<_>>()?;
        let lone_ttft = summary(lone).1;
        println!("lone request TTFT (median of 3): {:.1} ms", lone_ttft * 1e3);
        let (batched, wall) = run_load(&engine, load, &reqs)?;
        let (batched_tps, batched_ttft) =
            report(&format!("batched (max {} running)", load.clients), &batched, wall);
        let stats = engine.stats();
        println!(
            "   {} forward passes, {} preemptions, KV pool of {} blocks in {}",
            stats.steps,
            stats.preemptions,
            stats.blocks_total,
            kv_dtype.name()
        );
        engine.shutdown();
        let engine = Engine::start(model.clone(), config(1))?;
        let (serial, wall) = run_load(&engine, load, &reqs)?;
        let (serial_tps, _) = report("one request at a time", &serial, wall);
        engine.shutdown();
        let same = batched
            .iter()
            .zip(&serial)
            .filter(|(a, b)| a.tokens == b.tokens)
            .count();
        println!(
            "batched / one-at-a-time output tokens/s: {:.2}x; median TTFT {:.2}x a lone request's; identical tokens: {same}/{} requests",
            batched_tps / serial_tps,
            batched_ttft / lone_ttft,
            batched.len()
        );
        let tokens: Vec<Vec<u32>> = batched.into_iter().map(|t| t.tokens).collect();
        if let Some(first) = &first_tokens {
            if *first != tokens {
                println!("   (round {round}'s tokens differ from round 1's)");
            }
        } else {
            first_tokens = Some(tokens);
        }
        ratios.push(batched_tps / serial_tps);
        ttft_ratios.push(batched_ttft / lone_ttft);
    }
    if rounds > 1 {
        let list = |v: &[f64]| v.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ");
        println!(
            "over {rounds} rounds: batched / one-at-a-time output tokens/s median {:.2}x ({}); median TTFT vs lone: median {:.2}x ({})",
            summary(ratios.clone()).1,
            list(&ratios),
            summary(ttft_ratios.clone()).1,
            list(&ttft_ratios)
        );
    }
    // Prefix caching: two requests sharing a 512-token prefix.
    let engine = Engine::start(model, config(load.clients))?;
    let prefix = prompt(512 + 32, vocab);
    let greedy = SamplingParams::greedy(8);
    let mut first = prefix[..512].to_vec();
    first.extend(&prefix[512..528]);
    let mut second = prefix[..512].to_vec();
    second.extend(&prefix[528..544]);
    let a = send(&engine, first, greedy.clone())?;
    let b = send(&engine, second, greedy)?;
    let stats = engine.stats();
    println!(
        "prefix cache: TTFT {:.1} ms for a 528-token prompt, {:.1} ms for the next one sharing its first 512 tokens ({:.0}%); {} of {} prompt tokens found in the cache",
        a.ttft * 1e3,
        b.ttft * 1e3,
        100.0 * b.ttft / a.ttft,
        stats.prefix_hit_tokens,
        stats.prefix_queried_tokens
    );
    engine.shutdown();
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "memory: peak resident {:.0} MiB (VmHWM); weights {:.0} MiB as stored (the mapped file; the repacked copies of its 4-/8-bit matrices take about as much again), KV pool {:.0} MiB",
        mib(peak_resident_bytes()?),
        mib(weight_bytes),
        mib(kv_memory_mb << 20)
    );
    Ok(())
}

/// The process's peak resident set (`VmHWM` of `/proc/self/status`).
fn peak_resident_bytes() -> anyhow::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kb * 1024)
}
