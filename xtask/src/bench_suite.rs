//! `cargo xtask bench suite [--threads N] [--compare torch] [--json]`: every CPU workload of
//! issue 22 in one run, with PyTorch (and numpy for GEMM) beside it.
//!
//! Each row times a kiln workload and, with `--compare torch`, its twin in
//! `benches/reference/suite.py` (kept running as a child process, so models are built once):
//! per round, `--reps` timed iterations of kiln and then of the peer (more for short workloads,
//! so that a round lasts at least 50 ms), each side after a pause and an untimed iteration;
//! `--rounds` rounds alternate. Reported: medians over all timed iterations, PyTorch time ÷
//! kiln time (above 1: kiln is faster) and each side's spread (interquartile range ÷ median).
//! numpy runs with `OPENBLAS_CORETYPE` and `OPENBLAS_L2_SIZE` removed from its environment (its
//! AVX-512 kernel then runs). GEMM rows also give GFLOP/s against this machine's FMA peak,
//! measured first with a register-only FMA loop on every thread. Results are appended as JSON
//! lines to `runs/bench/suite.jsonl`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use kiln::autograd::{Gradients, Param, Var};
use kiln::nn::Scope;
use kiln::optim::{Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use kiln::tensor::{DType, Device, Tensor, TensorRng};
use kiln::zoo::{Batch, Model};

/// The peer script, relative to the repository root.
const SCRIPT: &str = "benches/reference/suite.py";
/// Where results are appended.
const RESULTS: &str = "runs/bench/suite.jsonl";
/// Untimed iterations before the first round, on each side (and one before every later round).
const WARMUP: usize = 3;
/// The shortest timed round per side, in seconds (short workloads run more iterations). A quarter
/// second: on a virtual machine a CPU left idle (the pause before each round) comes back at full
/// speed only after some tens of milliseconds, which a shorter round would measure instead of
/// the steady state a training loop runs in (both sides alike).
const MIN_ROUND_SECS: f64 = 0.25;
/// Pause before each side's timed iterations: the other side's threads (OpenMP's spin-waiting
/// workers, rayon's) go idle first.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// Options of the suite.
pub struct SuiteOptions {
    /// Threads of kiln's pool and of torch.
    pub threads: usize,
    /// Run the PyTorch (and numpy) peers.
    pub compare_torch: bool,
    /// JSON lines on stdout instead of the table.
    pub json: bool,
    /// Rounds of alternation.
    pub rounds: usize,
    /// Timed iterations per side and round.
    pub reps: usize,
    /// The Python with torch (see `bench_embed::find_torch_python`).
    pub python: Option<std::path::PathBuf>,
    /// Only the workloads whose name starts with this.
    pub only: Option<String>,
}

/// One kiln workload: one call of `step` is one timed iteration.
struct Workload {
    key: &'static str,
    /// Multiply-adds ×2 of one iteration, for GEMM rows.
    flops: Option<f64>,
    step: Box<dyn FnMut() -> anyhow::Result<()> + Send>,
}

fn randn(dims: &[usize], rng: &mut TensorRng) -> anyhow::Result<Tensor> {
    Ok(Tensor::randn(
        dims.to_vec(),
        0.0,
        1.0,
        DType::F32,
        Device::Cpu,
        rng,
    )?)
}

fn gemm(n: usize) -> anyhow::Result<Workload> {
    let mut rng = TensorRng::new(n as u64);
    let (a, b) = (randn(&[n, n], &mut rng)?, randn(&[n, n], &mut rng)?);
    Ok(Workload {
        key: Box::leak(format!("gemm-{n}").into_boxed_str()),
        flops: Some(2.0 * (n as f64).powi(3)),
        step: Box::new(move || {
            a.matmul(&b)?;
            Ok(())
        }),
    })
}

/// A model of the zoo with `config` merged over its defaults, weights from seed 0.
fn zoo_model(name: &str, config: serde_json::Value) -> anyhow::Result<Box<dyn Model>> {
    let entry = kiln::find_model(name)?;
    let cfg = kiln::zoo::merge_config(entry, Some(&config))?;
    Ok((entry.build)(&cfg, Scope::init(0, DType::F32, Device::Cpu))?)
}

/// Class targets `0, 1, ..., 9, 0, ...`.
fn classes(n: usize) -> anyhow::Result<Tensor> {
    Ok(Tensor::from_vec(
        (0..n).map(|i| (i % 10) as i64).collect::<Vec<_>>(),
        [n],
    )?)
}

/// Forward and backward of `model` on `batch`, then `opt` (if any) steps.
fn train_step(model: &dyn Model, batch: &Batch, opt: Option<&mut dyn Optimizer>) -> anyhow::Result<()> {
    let loss: Var = model.forward(batch)?.loss.context("the batch has targets")?;
    let grads = loss.backward()?;
    if let Some(opt) = opt {
        opt.step(&grads)?;
    }
    Ok(())
}

fn lenet_step() -> anyhow::Result<Workload> {
    let model = zoo_model("lenet5", serde_json::json!({}))?;
    let mut opt = Sgd::from_params(
        model.parameters(),
        SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            ..Default::default()
        },
    )?;
    let mut rng = TensorRng::new(1);
    let batch = Batch {
        inputs: randn(&[64, 1, 28, 28], &mut rng)?,
        targets: Some(classes(64)?),
    };
    Ok(Workload {
        key: "lenet-step",
        flops: None,
        step: Box::new(move || train_step(&*model, &batch, Some(&mut opt))),
    })
}

fn resnet20_fwdbwd() -> anyhow::Result<Workload> {
    let geometry = serde_json::json!({"in_channels": 3, "image_size": 32, "num_classes": 10});
    let model = zoo_model("resnet20", geometry)?;
    let mut rng = TensorRng::new(2);
    let batch = Batch {
        inputs: randn(&[32, 3, 32, 32], &mut rng)?,
        targets: Some(classes(32)?),
    };
    Ok(Workload {
        key: "resnet20-fwdbwd",
        flops: None,
        step: Box::new(move || train_step(&*model, &batch, None)),
    })
}

fn lstm_fwdbwd() -> anyhow::Result<Workload> {
    use kiln::nn::layers::{Lstm, RnnConfig};
    let lstm = Lstm::new(
        Scope::init(0, DType::F32, Device::Cpu),
        RnnConfig {
            batch_first: true,
            ..RnnConfig::new(256, 256)
        },
    )?;
    let mut rng = TensorRng::new(3);
    let x = Var::constant(randn(&[32, 64, 256], &mut rng)?);
    Ok(Workload {
        key: "lstm-fwdbwd",
        flops: None,
        step: Box::new(move || {
            let (out, _) = lstm.forward_with_state(&x, None)?;
            out.sum_all()?.backward()?;
            Ok(())
        }),
    })
}

fn lstm_lm_step() -> anyhow::Result<Workload> {
    let model = zoo_model("lstm-lm", serde_json::json!({}))?;
    let mut opt = Adam::from_params(
        model.parameters(),
        AdamConfig {
            lr: 2e-3,
            ..Default::default()
        },
    )?;
    let mut rng = TensorRng::new(4);
    let ids: Vec<i64> = (0..32 * 65).map(|_| rng.next_below(65) as i64).collect();
    let pick = |from: usize| -> Vec<i64> {
        (0..32)
            .flat_map(|r| ids[r * 65 + from..r * 65 + from + 64].to_vec())
            .collect()
    };
    let batch = Batch {
        inputs: Tensor::from_vec(pick(0), [32, 64])?,
        targets: Some(Tensor::from_vec(pick(1), [32, 64])?),
    };
    Ok(Workload {
        key: "lstm-lm-step",
        flops: None,
        step: Box::new(move || train_step(&*model, &batch, Some(&mut opt))),
    })
}

fn gpt2_fwd() -> anyhow::Result<Workload> {
    let model = zoo_model("gpt2", serde_json::json!({}))?;
    let mut rng = TensorRng::new(5);
    let ids: Vec<i64> = (0..128).map(|_| rng.next_below(50257) as i64).collect();
    let batch = Batch {
        inputs: Tensor::from_vec(ids, [1, 128])?,
        targets: None,
    };
    Ok(Workload {
        key: "gpt2-fwd",
        flops: None,
        step: Box::new(move || {
            let _no_grad = kiln::autograd::no_grad();
            model.forward(&batch)?;
            Ok(())
        }),
    })
}

fn bert_base_fwd() -> anyhow::Result<Workload> {
    let w = crate::bench_embed::Workload::new("bert_base_forward", "bert-base", [8, 128], false, 1, 1)?;
    Ok(Workload {
        key: "bert-base-fwd",
        flops: None,
        step: Box::new(move || {
            let _no_grad = kiln::autograd::no_grad();
            w.run()
        }),
    })
}

/// GPT-2 small's parameter shapes (124,439,808 values), in Hugging Face's order.
fn gpt2_shapes() -> Vec<Vec<usize>> {
    let (vocab, positions, d) = (50257, 1024, 768);
    let mut shapes = vec![vec![vocab, d], vec![positions, d]];
    for _ in 0..12 {
        for s in [
            vec![d],
            vec![d],
            vec![d, 3 * d],
            vec![3 * d],
            vec![d, d],
            vec![d],
            vec![d],
            vec![d],
            vec![d, 4 * d],
            vec![4 * d],
            vec![4 * d, d],
            vec![d],
        ] {
            shapes.push(s);
        }
    }
    shapes.extend([vec![d], vec![d]]);
    shapes
}

fn adamw_124m() -> anyhow::Result<Workload> {
    let mut rng = TensorRng::new(6);
    let mut params = Vec::new();
    let mut grad_values = Vec::new();
    for (i, dims) in gpt2_shapes().into_iter().enumerate() {
        params.push(Param::new(
            format!("p{i}"),
            randn(&dims, &mut rng)?.mul_scalar(0.02)?,
        ));
        grad_values.push(randn(&dims, &mut rng)?.mul_scalar(1e-3)?);
    }
    let mut opt = AdamW::from_params(
        params.clone(),
        AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.95),
            weight_decay: 0.1,
            ..Default::default()
        },
    )?;
    Ok(Workload {
        key: "adamw-124m",
        flops: None,
        step: Box::new(move || {
            // Gradients belong to the parameters' current leaves (each step makes new ones).
            let mut grads = Gradients::new();
            for (p, g) in params.iter().zip(&grad_values) {
                grads.insert(&p.var(), g.clone());
            }
            opt.step(&grads)?;
            Ok(())
        }),
    })
}

/// Every workload whose name starts with `only` (all without it), with its peer scripts' keys
/// (numpy for GEMM besides torch). Only the chosen ones are built.
fn workloads(only: Option<&str>) -> anyhow::Result<Vec<(Workload, Vec<&'static str>)>> {
    let wanted = |key: &str| only.is_none_or(|o| key.starts_with(o));
    let mut all = Vec::new();
    for n in [256usize, 512, 1024, 2048] {
        if !wanted(&format!("gemm-{n}")) {
            continue;
        }
        let w = gemm(n)?;
        let numpy: &'static str = Box::leak(format!("numpy-gemm-{n}").into_boxed_str());
        let peers = vec![w.key, numpy];
        all.push((w, peers));
    }
    type Builder = fn() -> anyhow::Result<Workload>;
    let builders: [(&str, Builder); 7] = [
        ("lenet-step", lenet_step),
        ("resnet20-fwdbwd", resnet20_fwdbwd),
        ("lstm-fwdbwd", lstm_fwdbwd),
        ("lstm-lm-step", lstm_lm_step),
        ("gpt2-fwd", gpt2_fwd),
        ("bert-base-fwd", bert_base_fwd),
        ("adamw-124m", adamw_124m),
    ];
    for (key, build) in builders {
        if !wanted(key) {
            continue;
        }
        let w = build()?;
        let peers = vec![w.key];
        all.push((w, peers));
    }
    Ok(all)
}

/// The PyTorch/numpy script, kept running between rounds.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    ready: serde_json::Value,
}

impl Peer {
    fn start(python: &Path, threads: usize) -> anyhow::Result<Peer> {
        let mut child = Command::new(python)
            .args([SCRIPT, "--serve", "--threads", &threads.to_string()])
            .env_remove("OPENBLAS_CORETYPE")
            .env_remove("OPENBLAS_L2_SIZE")
            .env("OMP_NUM_THREADS", threads.to_string())
            .env("OPENBLAS_NUM_THREADS", threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} {SCRIPT}", python.display()))?;
        let stdin = child.stdin.take().context("no stdin of the peer")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout of the peer")?);
        let mut peer = Peer {
            child,
            stdin,
            stdout,
            ready: serde_json::Value::Null,
        };
        peer.ready = peer.next_json()?;
        Ok(peer)
    }

    fn next_json(&mut self) -> anyhow::Result<serde_json::Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("the PyTorch peer ended early ({})", self.child.wait()?);
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) {
                if let Some(e) = v.get("error") {
                    bail!("the PyTorch peer: {e}");
                }
                return Ok(v);
            }
            eprint!("peer: {line}");
        }
    }

    /// `warmup` untimed and `iters` timed iterations of `key`: their seconds.
    fn run(&mut self, key: &str, warmup: usize, iters: usize) -> anyhow::Result<Vec<f64>> {
        writeln!(self.stdin, "run {key} {warmup} {iters}")?;
        self.stdin.flush()?;
        let v = self.next_json()?;
        serde_json::from_value(v["times_s"].clone()).with_context(|| format!("times of {key} from the peer"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// Median and interquartile range ÷ median.
fn stats(times: &[f64]) -> (f64, f64) {
    let mut v = times.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let median = q(0.5);
    (median, (q(0.75) - q(0.25)) / median)
}

/// This machine's f32 FMA peak in GFLOP/s on `threads` threads: 24 independent chains of
/// 16-lane FMAs (8-lane on AVX2) per thread, all threads at once, for about 0.25 s.
fn fma_peak_gflops(threads: usize) -> Option<(f64, &'static str)> {
    let (per_call, width) = fma_kernel()?;
    let rounds = 30_000_000usize;
    let start = Instant::now();
    let sink: f32 = std::thread::scope(|s| {
        let all: Vec<_> = (0..threads).map(|_| s.spawn(move || per_call(rounds))).collect();
        all.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    let lanes = if width == "512-bit" { 16.0 } else { 8.0 };
    Some((
        threads as f64 * rounds as f64 * 24.0 * lanes * 2.0 / secs / 1e9,
        width,
    ))
}

/// The widest FMA loop this CPU runs, and its vector width.
#[allow(clippy::type_complexity)]
fn fma_kernel() -> Option<(fn(usize) -> f32, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // Index loops and an in-function sum keep the accumulators in registers (a closure over
        // them made LLVM keep them in memory: half the rate).
        #[allow(clippy::needless_range_loop)]
        #[target_feature(enable = "avx512f")]
        unsafe fn fma512(rounds: usize) -> f32 {
            let mut acc = [_mm512_set1_ps(0.5); 24];
            let (a, b) = (_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-6));
            for _ in 0..rounds {
                for r in 0..24 {
                    acc[r] = _mm512_fmadd_ps(acc[r], a, b);
                }
            }
            let mut s = _mm512_setzero_ps();
            for x in acc {
                s = _mm512_add_ps(s, x);
            }
            _mm512_reduce_add_ps(s)
        }
        #[allow(clippy::needless_range_loop)]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fma256(rounds: usize) -> f32 {
            let mut acc = [_mm256_set1_ps(0.5); 12];
            let (a, b) = (_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-6));
            for _ in 0..2 * rounds {
                for r in 0..12 {
                    acc[r] = _mm256_fmadd_ps(acc[r], a, b);
                }
            }
            let mut s = _mm256_setzero_ps();
            for x in acc {
                s = _mm256_add_ps(s, x);
            }
            let mut out = [0f32; 8];
            // SAFETY: `out` holds 8 floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
            out.iter().sum()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return Some((|r| unsafe { fma512(r) }, "512-bit"));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return Some((|r| unsafe { fma256(r) }, "256-bit"));
        }
    }
    None
}

/// The CPU's model name, from `/proc/cpuinfo` (Linux).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Runs the suite (see the module documentation).
pub fn run(opts: &SuiteOptions) -> anyhow::Result<()> {
    if opts.threads == 0 || opts.rounds == 0 || opts.reps == 0 {
        bail!("--threads, --rounds and --reps must be at least 1");
    }
    kiln::tensor::set_num_threads(opts.threads).context("--threads")?;
    let python = match opts.compare_torch {
        true => Some(crate::bench_embed::find_torch_python(opts.python.as_deref())?),
        false => None,
    };
    let peak = fma_peak_gflops(opts.threads);
    let built = Instant::now();
    let mut all = workloads(opts.only.as_deref())?;
    if all.is_empty() {
        bail!(
            "--workload {:?} names no workload of the suite (gemm-256 ... gemm-2048, lenet-step, resnet20-fwdbwd, lstm-fwdbwd, lstm-lm-step, gpt2-fwd, bert-base-fwd, adamw-124m)",
            opts.only.as_deref().unwrap_or_default()
        );
    }
    let mut peer = python
        .as_deref()
        .map(|p| Peer::start(p, opts.threads))
        .transpose()?;
    if !opts.json {
        println!(
            "{} threads on {}; FMA peak {}; kiln workloads built in {:.1} s; {} rounds x {} timed iterations per side{}",
            opts.threads,
            cpu_model(),
            peak.map_or("unknown".into(), |(g, w)| format!("{g:.0} GFLOP/s ({w})")),
            built.elapsed().as_secs_f64(),
            opts.rounds,
            opts.reps,
            peer.as_ref()
                .map(|p| format!(
                    "; peer: torch {} / numpy {} ({} threads)",
                    p.ready["torch"].as_str().unwrap_or("?"),
                    p.ready["numpy"].as_str().unwrap_or("?"),
                    p.ready["threads"]
                ))
                .unwrap_or_default()
        );
        println!(
            "{:<18} {:>11} {:>8} {:>11} {:>8} {:>7}  {:<16}",
            "workload", "kiln", "spread", "peer", "spread", "ratio", "note"
        );
    }
    std::fs::create_dir_all(Path::new(RESULTS).parent().unwrap_or(Path::new(".")))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(RESULTS)
        .with_context(|| format!("opening {RESULTS}"))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for (w, peers) in &mut all {
        let peer_keys: Vec<&'static str> = if peer.is_some() { peers.clone() } else { vec![""] };
        for peer_key in peer_keys {
            let warm = Instant::now();
            for _ in 0..WARMUP {
                kiln::autograd::in_pool(|| (w.step)())?;
            }
            // Short workloads repeat until a round lasts about MIN_ROUND_SECS per side.
            let per_iter = warm.elapsed().as_secs_f64() / WARMUP as f64;
            let reps = opts
                .reps
                .max((MIN_ROUND_SECS / per_iter.max(1e-9)).ceil() as usize);
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for round in 0..opts.rounds {
                std::thread::sleep(SETTLE);
                // One untimed iteration per side and round wakes its threads up.
                kiln::autograd::in_pool(|| (w.step)())?;
                for _ in 0..reps {
                    let t = Instant::now();
                    kiln::autograd::in_pool(|| (w.step)())?;
                    ours.push(t.elapsed().as_secs_f64());
                }
                if let Some(p) = peer.as_mut() {
                    std::thread::sleep(SETTLE);
                    let warm = if round == 0 { WARMUP } else { 1 };
                    theirs.extend(p.run(peer_key, warm, reps)?);
                }
            }
            let (k_med, k_spread) = stats(&ours);
            let peer_stats = (!theirs.is_empty()).then(|| stats(&theirs));
            let ratio = peer_stats.map(|(p, _)| p / k_med);
            let gflops = w.flops.map(|f| f / k_med / 1e9);
            let peer_name = if peer_key.starts_with("numpy") {
                "numpy"
            } else {
                "torch"
            };
            let record = serde_json::json!({
                "time": stamp,
                "cpu": cpu_model(),
                "threads": opts.threads,
                "workload": w.key,
                "peer": peer_stats.map(|_| peer_name),
                "kiln_median_s": k_med,
                "kiln_spread": k_spread,
                "peer_median_s": peer_stats.map(|p| p.0),
                "peer_spread": peer_stats.map(|p| p.1),
                "ratio": ratio,
                "kiln_gflops": gflops,
                "fma_peak_gflops": peak.map(|p| p.0),
            });
            writeln!(log, "{record}")?;
            if opts.json {
                println!("{record}");
                continue;
            }
            let note = match (gflops, peak) {
                (Some(g), Some((p, _))) => format!("{g:.0} GFLOP/s, {:.0}% of peak", 100.0 * g / p),
                _ => String::new(),
            };
            println!(
                "{:<18} {:>11} {:>7.1}% {:>11} {:>7} {:>7}  {}",
                if peer_name == "numpy" && peer_stats.is_some() {
                    format!("{} (np)", w.key)
                } else {
                    w.key.to_string()
                },
                format_secs(k_med),
                100.0 * k_spread,
                peer_stats.map_or("-".into(), |p| format_secs(p.0)),
                peer_stats.map_or("-".into(), |p| format!("{:.1}%", 100.0 * p.1)),
                ratio.map_or("-".into(), |r| format!("{r:.2}")),
                note
            );
        }
    }
    Ok(())
}

/// Seconds as a readable duration (µs, ms or s).
fn format_secs(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}
