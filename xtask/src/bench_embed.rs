//! `cargo xtask bench embed`: BERT encoders with random weights against PyTorch in the same run.
//!
//! Two workloads, both on `f32` with seeded random weights and seeded random token ids (no special
//! ids), full attention masks:
//!
//! - `minilm_embed`: `all-minilm-l6-v2` at batch 32 × 64 tokens, the whole path to mean-pooled,
//!   L2-normalised sentence embeddings ([`BertModel::sentence_embeddings`]); reported as seconds
//!   per batch and sentences/s.
//! - `bert_base_forward`: `bert-base` at batch 8 × 128 tokens, [`BertModel::forward_input`]
//!   (encoder and pooler); seconds per batch.
//!
//! Each round runs, per workload, one warm-up forward and `--reps` timed ones. Unless
//! `--no-reference` is given, `benches/reference/bert_embed_bench.py` runs the same workloads in
//! PyTorch (Hugging Face `transformers.BertModel` when it imports, else a plain-torch BERT) as a
//! child process kept alive between rounds, and rounds alternate: kiln, torch, kiln, torch. Both
//! sides use `--threads` threads (kiln: a rayon pool of that size; torch: `torch.set_num_threads`).
//! The table reports medians over every timed forward of every round and PyTorch time ÷ kiln
//! time (above 1: kiln is faster); a JSON line with the same numbers follows it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use kiln::model_crates::bert::{BertConfig, BertInput, BertModel};
use kiln::nn::Scope;
use kiln::tensor::{DType, Device};
use kiln::zoo::Model;

use crate::bench_decode::median;

/// Options of `cargo xtask bench embed` (taken from the `bench` command line).
pub struct EmbedBenchOptions {
    /// Timed forwards per workload and round (after one warm-up forward).
    pub reps: usize,
    /// Rounds per side; with the reference they alternate (kiln, torch, kiln, torch, ...).
    pub rounds: usize,
    /// Threads of kiln's rayon pool and of torch.
    pub threads: usize,
    /// The Python interpreter with torch (default: `$KILN_TORCH_PYTHON`, then `python3`, then
    /// `/tmp/torchvenv/bin/python`, the first that imports torch).
    pub python: Option<PathBuf>,
    /// Run the PyTorch reference beside kiln.
    pub reference: bool,
    /// Only this workload: `minilm` or `bert-base` (default both).
    pub only: Option<String>,
}

/// The PyTorch script, next to the other references.
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../benches/reference/bert_embed_bench.py"
);

/// Token ids start here: the BERT uncased vocabulary holds `[PAD]`, `[unused*]`, `[UNK]`, `[CLS]`,
/// `[SEP]`, `[MASK]` and more `[unused*]` below it.
const FIRST_ID: u64 = 1000;

/// One benchmarked forward: a model, its input, and whether it goes on to sentence embeddings.
pub(crate) struct Workload {
    /// The key both sides report under.
    key: &'static str,
    /// What the table calls it.
    label: String,
    model: BertModel,
    input: BertInput,
    /// Mean pooling and L2 normalisation after the encoder (else `forward_input` only).
    embed: bool,
}

impl Workload {
    /// Builds `model` from the zoo (its default configuration) with weights seeded by `seed`,
    /// and a `batch × len` input of ids from the sequence `salt` picks.
    pub(crate) fn new(
        key: &'static str,
        model: &str,
        [batch, len]: [usize; 2],
        embed: bool,
        seed: u64,
        salt: u64,
    ) -> anyhow::Result<Workload> {
        let entry = kiln::find_model(model)?;
        let cfg: BertConfig = kiln::zoo::parse_config(entry.name, &(entry.default_config)())?;
        let ids = token_ids(batch * len, cfg.vocab_size as u64, salt);
        let model = BertModel::new(entry.name, cfg, Scope::init(seed, DType::F32, Device::Cpu))?;
        // As `cargo xtask embed` runs it: weights packed for the GEMM once, at the warm-up.
        model.keep_packed_weights(true);
        let what = if embed { "sentence embeddings" } else { "forward" };
        Ok(Workload {
            key,
            label: format!("{model} {what} {batch}x{len}", model = entry.name),
            model,
            input: BertInput {
                type_ids: vec![0; ids.len()],
                attention_mask: vec![1; ids.len()],
                ids,
                batch,
                seq_len: len,
            },
            embed,
        })
    }

    /// One forward, checked: embeddings of unit length, or finite hidden states of the right shape.
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        let (b, l, d) = (self.input.batch, self.input.seq_len, self.model.hidden_size());
        if self.embed {
            let rows = self.model.sentence_embeddings(&self.input)?;
            let norm = rows[0].iter().map(|v| v * v).sum::<f32>().sqrt();
            if rows.len() != b || rows[0].len() != d || (norm - 1.0).abs() > 1e-3 {
                bail!(
                    "{}: unexpected embeddings ({} rows, |row 0| = {norm})",
                    self.key,
                    rows.len()
                );
            }
        } else {
            let out = self.model.forward_input(&self.input)?;
            let first = out.last_hidden_state.narrow(0usize, 0, 1)?.to_vec::<f32>()?;
            if out.last_hidden_state.dims() != [b, l, d] || !first.iter().all(|v| v.is_finite()) {
                bail!(
                    "{}: unexpected hidden states {:?}",
                    self.key,
                    out.last_hidden_state.dims()
                );
            }
        }
        Ok(())
    }

    /// A warm-up forward, then the seconds of each of `reps` forwards.
    fn round(&self, reps: usize) -> anyhow::Result<Vec<f64>> {
        self.run()?;
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                self.run()?;
                Ok(t.elapsed().as_secs_f64())
            })
            .collect()
    }
}

/// `n` token ids in `[FIRST_ID, vocab)` from a fixed linear congruential sequence (the one the
/// PyTorch script draws too, so both sides encode the same tokens).
fn token_ids(n: usize, vocab: u64, salt: u64) -> Vec<u32> {
    crate::bench_decode::lcg_ids(n, FIRST_ID, vocab, salt)
}

/// The first Python of `explicit`, `$KILN_TORCH_PYTHON`, `python3` and `/tmp/torchvenv/bin/python`
/// (that order; only `explicit` if given) that imports torch.
pub(crate) fn find_torch_python(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => std::env::var_os("KILN_TORCH_PYTHON")
            .map(PathBuf::from)
            .into_iter()
            .chain(["python3", "/tmp/torchvenv/bin/python"].map(PathBuf::from))
            .collect(),
    };
    for python in &candidates {
        let imports = Command::new(python)
            .args(["-c", "import torch"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if imports {
            return Ok(python.clone());
        }
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "no Python that imports torch (tried {}); pass --python PATH, set KILN_TORCH_PYTHON, or run with --no-reference",
        tried.join(", ")
    )
}

/// The PyTorch script running with `--serve`: one round per request, models kept between rounds.
struct Reference {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// The script's ready line (implementation, torch version, threads).
    ready: serde_json::Value,
}

impl Reference {
    /// Starts the script and waits for its ready line (the models are built by then).
    /// `keys`: the workloads to run.
    fn start(python: &Path, reps: usize, threads: usize, keys: &[&str]) -> anyhow::Result<Reference> {
        let mut child = Command::new(python)
            .arg(SCRIPT)
            .arg("--only")
            .args(keys)
            .args([
                "--serve",
                "--reps",
                &reps.to_string(),
                "--threads",
                &threads.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} {SCRIPT}", python.display()))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("no stdout of the child")?);
        let mut r = Reference {
            child,
            stdin,
            stdout,
            ready: serde_json::Value::Null,
        };
        r.ready = r.next_json(|v| v.get("ready").is_some())?;
        Ok(r)
    }

    /// The next JSON line on the script's stdout for which `want` holds (other lines are echoed).
    fn next_json(&mut self, want: impl Fn(&serde_json::Value) -> bool) -> anyhow::Result<serde_json::Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                let status = self.child.wait()?;
                bail!("the PyTorch reference ended early ({status})");
            }
            match serde_json::from_str::<serde_json::Value>(line.trim()) {
                Ok(v) if want(&v) => return Ok(v),
                _ => eprint!("reference: {line}"),
            }
        }
    }

    /// One round: the seconds of each timed forward, by workload key.
    fn round(&mut self) -> anyhow::Result<BTreeMap<String, Vec<f64>>> {
        let stdin = self.stdin.as_mut().context("the reference's stdin is closed")?;
        stdin.write_all(b"round\n")?;
        stdin.flush()?;
        let mut out = BTreeMap::new();
        loop {
            let v = self.next_json(|v| v.get("workload").is_some() || v.get("round_done").is_some())?;
            if v.get("round_done").is_some() {
                return Ok(out);
            }
            let key = v["workload"].as_str().unwrap_or_default().to_string();
            let times = serde_json::from_value(v["times_s"].clone()).context("times_s of the reference")?;
            out.insert(key, times);
        }
    }
}

impl Drop for Reference {
    /// Asks the script to quit (closing its stdin ends it too) and reaps it.
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"quit\n");
        }
        let _ = self.child.wait();
    }
}

/// CPU time on the whole machine against this process's and the reference's, from `/proc` (Linux;
/// `None` elsewhere): how busy other processes kept the cores while a round ran. Timings taken
/// beside a compiler are not comparable, and torch's OpenMP threads suffer more from it than
/// rayon's.
#[derive(Clone, Copy)]
struct CpuSnapshot {
    /// Busy ticks of all CPUs (everything but idle and iowait).
    busy: u64,
    /// Ticks of this process and of the reference (all their threads).
    ours: u64,
    /// CPUs in `/proc/stat`.
    cpus: usize,
    at: Instant,
}

impl CpuSnapshot {
    /// Reads the counters now; `child` is the reference's process id.
    fn take(child: Option<u32>) -> Option<CpuSnapshot> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let total: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let busy = total.iter().sum::<u64>() - total.get(3)? - total.get(4).unwrap_or(&0);
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        // utime and stime: fields 14 and 15 of /proc/PID/stat, the 12th and 13th after the `)`
        // that closes the command name.
        let ticks = |pid: &str| -> Option<u64> {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &s[s.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        };
        let ours = ticks("self")? + child.and_then(|pid| ticks(&pid.to_string())).unwrap_or(0);
        Some(CpuSnapshot {
            busy,
            ours,
            cpus: cpus.max(1),
            at: Instant::now(),
        })
    }

    /// The share of all CPUs' time since `self` that other processes used (0 to 1), taking
    /// ticks as 1/100 s (Linux's `USER_HZ`).
    fn foreign_share_since(&self, child: Option<u32>) -> Option<f64> {
        let now = CpuSnapshot::take(child)?;
        let foreign = (now.busy.saturating_sub(self.busy)).saturating_sub(now.ours.saturating_sub(self.ours));
        let capacity = now.at.duration_since(self.at).as_secs_f64() * 100.0 * self.cpus as f64;
        (capacity > 0.0).then(|| (foreign as f64 / capacity).min(1.0))
    }
}

/// ` (other processes: N% of the CPUs)` for a round line, or nothing without `/proc`.
fn load_note(share: Option<f64>) -> String {
    share.map_or_else(String::new, |s| {
        format!(" (other processes: {:.0}% of the CPUs)", s * 100.0)
    })
}

/// Formats seconds as milliseconds with a unit.
fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1e3)
}

/// Runs the benchmark (see the module documentation).
pub fn run(opts: &EmbedBenchOptions) -> anyhow::Result<()> {
    if opts.reps == 0 || opts.rounds == 0 || opts.threads == 0 {
        bail!("--reps, --rounds and --threads must be at least 1");
    }
    let python = match opts.reference {
        true => Some(find_torch_python(opts.python.as_deref())?),
        false => None,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .context("building the rayon pool")?;
    let started = Instant::now();
    let (minilm, bert_base) = match opts.only.as_deref() {
        None => (true, true),
        Some("minilm") => (true, false),
        Some("bert-base") => (false, true),
        Some(other) => bail!("--workload {other:?}: expected minilm or bert-base"),
    };
    let mut workloads = Vec::new();
    if minilm {
        workloads.push(Workload::new(
            "minilm_embed",
            "all-minilm-l6-v2",
            [32, 64],
            true,
            0,
            0,
        )?);
    }
    if bert_base {
        workloads.push(Workload::new(
            "bert_base_forward",
            "bert-base",
            [8, 128],
            false,
            1,
            1,
        )?);
    }
    let kiln_threads = pool.install(rayon::current_num_threads);
    println!(
        "kiln: {} (random weights, built in {:.1} s), {kiln_threads} rayon threads; {} rounds of 1 warm-up + {} timed forwards per workload",
        workloads
            .iter()
            .map(|w| w.label.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64(),
        opts.rounds,
        opts.reps
    );
    let mut reference = match &python {
        Some(python) => {
            let keys: Vec<&str> = workloads.iter().map(|w| w.key).collect();
            let r = Reference::start(python, opts.reps, opts.threads, &keys)?;
            println!(
                "PyTorch ({}): {} {}, attention {}, torch {}, {} threads",
                python.display(),
                SCRIPT.rsplit('/').next().unwrap_or(SCRIPT),
                r.ready["impl"].as_str().unwrap_or("?"),
                r.ready["attention"].as_str().unwrap_or("?"),
                r.ready["torch"].as_str().unwrap_or("?"),
                r.ready["threads"]
            );
            Some(r)
        }
        None => None,
    };
    let child = reference.as_ref().map(|r| r.child.id());
    let mut kiln_times: Vec<Vec<f64>> = vec![Vec::new(); workloads.len()];
    let mut torch_times: Vec<Vec<f64>> = vec![Vec::new(); workloads.len()];
    let mut foreign: Vec<f64> = Vec::new();
    let whole = CpuSnapshot::take(child);
    for round in 1..=opts.rounds {
        for (w, times) in workloads.iter().zip(&mut kiln_times) {
            let snap = CpuSnapshot::take(child);
            let t = pool.install(|| {
                let _no_grad = kiln::autograd::no_grad();
                w.round(opts.reps)
            })?;
            let share = snap.and_then(|s| s.foreign_share_since(child));
            foreign.extend(share);
            println!(
                "round {round} kiln    {:<42} median {}{}",
                w.label,
                ms(median(t.clone())),
                load_note(share)
            );
            times.extend(t);
        }
        if let Some(r) = &mut reference {
            let snap = CpuSnapshot::take(child);
            let mut got = r.round()?;
            let share = snap.and_then(|s| s.foreign_share_since(child));
            foreign.extend(share);
            for (w, times) in workloads.iter().zip(&mut torch_times) {
                let t = got
                    .remove(w.key)
                    .with_context(|| format!("the reference reported no {}", w.key))?;
                println!(
                    "round {round} PyTorch {:<42} median {}{}",
                    w.label,
                    ms(median(t.clone())),
                    load_note(share)
                );
                times.extend(t);
            }
        }
    }
    let whole_share = whole.and_then(|s| s.foreign_share_since(child));
    drop(reference);

    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>14}",
        "workload (median per batch)", "kiln", "PyTorch", "PyTorch/kiln"
    );
    let mut summary = serde_json::Map::new();
    for ((w, k), t) in workloads.iter().zip(&kiln_times).zip(&torch_times) {
        let kiln_min = k.iter().copied().fold(f64::INFINITY, f64::min);
        let torch_min = t.iter().copied().reduce(f64::min);
        let k = median(k.clone());
        let t = (!t.is_empty()).then(|| median(t.clone()));
        let cell = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        println!(
            "{:<44} {:>12} {:>12} {:>14}",
            w.label,
            ms(k),
            cell(t.map(ms)),
            cell(t.map(|t| format!("{:.2}x", t / k)))
        );
        let batch = w.input.batch as f64;
        if w.embed {
            println!(
                "{:<44} {:>12} {:>12}",
                "  sentences/s",
                format!("{:.1}", batch / k),
                cell(t.map(|t| format!("{:.1}", batch / t)))
            );
        }
        summary.insert(
            w.key.into(),
            serde_json::json!({
                "kiln_median_s": k,
                "kiln_min_s": kiln_min,
                "torch_min_s": torch_min,
                "torch_median_s": t,
                "torch_over_kiln": t.map(|t| t / k),
                "kiln_sentences_per_s": w.embed.then(|| batch / k),
                "torch_sentences_per_s": t.filter(|_| w.embed).map(|t| batch / t),
                "batch": w.input.batch,
                "seq_len": w.input.seq_len,
            }),
        );
    }
    if let Some(share) = whole_share {
        let worst = foreign.iter().copied().fold(0.0, f64::max);
        println!(
            "other processes used {:.0}% of the CPUs during the rounds (worst round {:.0}%){}",
            share * 100.0,
            worst * 100.0,
            if worst > 0.05 {
                "; the machine was busy, so these timings are not reliable (rerun on an idle machine)"
            } else {
                ""
            }
        );
    }
    summary.insert("other_processes_cpu_share".into(), whole_share.into());
    summary.insert("threads".into(), kiln_threads.into());
    summary.insert("reps".into(), opts.reps.into());
    summary.insert("rounds".into(), opts.rounds.into());
    println!("{}", serde_json::Value::Object(summary));
    Ok(())
}
