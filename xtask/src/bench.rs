//! `cargo xtask bench <name>`: end-to-end speed measurements (release build), reported as medians.
//! The PyTorch scripts they are compared with live in `benches/reference/`.

use std::time::Instant;

use kiln::autograd::Var;
use kiln::nn::Scope;
use kiln::optim::{Adam, AdamConfig, Optimizer};
use kiln::tensor::{DType, Device, Tensor, TensorRng};
use kiln::zoo::Batch;

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: `suite` (every CPU workload, `--compare torch` beside PyTorch/numpy,
    /// `--threads`, `--rounds` x `--reps` timed iterations per side, `--json`), `train-lenet`, `train-mnist-cnn`, `train-resnet20` (a training step: forward,
    /// backward, Adam update), `decode`, `train-gpt-tiny`, `llama`, `serve`, `embed` (BERT encoders
    /// beside PyTorch).
    name: String,
    /// Measured iterations (after warm-up).
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Channels of the random input images.
    #[arg(long, default_value_t = 1)]
    in_channels: usize,
    /// Side of the random input images.
    #[arg(long, default_value_t = 28)]
    image_size: usize,
    /// `decode`: repetitions of the prefill + 128-token decode (medians reported); `llama`:
    /// repetitions per activation path; `embed`: timed forwards per workload and round.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// `decode`: layers of the GPT-2-small shape (default 12).
    #[arg(long)]
    layers: Option<usize>,
    /// `llama`: the GGUF file (default: SmolLM2-135M-Instruct Q4_1 as fetched into data/registry).
    #[arg(
        long,
        default_value = "data/registry/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
    )]
    weights: std::path::PathBuf,
    /// `llama`: only this activation path (`int8` or `f32`; default both).
    #[arg(long)]
    activations: Option<String>,
    /// `serve`: requests sent in all.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// `serve`: concurrent clients (and the batching engine's running limit).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// `serve`: Poisson arrival rate in requests/s (default: as fast as the clients go).
    #[arg(long)]
    rate: Option<f64>,
    /// `serve`: prompt tokens per request.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// `serve`: output tokens per request.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// `serve`: prompt and output lengths vary uniformly within ×[1 − r, 1 + r] (vLLM's
    /// `--random-range-ratio`; 0 = fixed).
    #[arg(long, default_value_t = 0.0)]
    range_ratio: f64,
    /// `serve`: KV cache memory in MiB.
    #[arg(long, default_value_t = 512)]
    kv_memory: usize,
    /// `serve`: what the KV cache stores (f16 or f32).
    #[arg(long, default_value = "f16")]
    kv_cache_dtype: kiln::zoo::generate::KvDtype,
    /// `embed`: threads of kiln's rayon pool and of torch.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// `embed`: rounds per side, alternating kiln and PyTorch (kiln, torch, kiln, torch, ...);
    /// `serve`: rounds alternating the batching engine and one request at a time (medians).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// `embed`: the Python with torch for the reference (default: `$KILN_TORCH_PYTHON`, then
    /// `python3`, then `/tmp/torchvenv/bin/python`, the first that imports torch).
    #[arg(long)]
    python: Option<std::path::PathBuf>,
    /// `embed`: kiln only, without the PyTorch reference.
    #[arg(long)]
    no_reference: bool,
    /// `embed`: only this workload (`minilm` or `bert-base`; default both), e.g. for profiling;
    /// `suite`: only the workloads whose name starts with this (`gemm`, `lstm`, ...).
    #[arg(long)]
    workload: Option<String>,
    /// `suite`: run each workload's peer too (`torch`: PyTorch, and numpy for GEMM, from
    /// `benches/reference/suite.py`).
    #[arg(long, value_parser = ["torch"])]
    compare: Option<String>,
    /// `suite`: one JSON object per row on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// `train-*`: arithmetic of the matrix products (`f32` or `bf16`, as `train --precision`).
    #[arg(long, default_value = "f32")]
    precision: kiln::tensor::MatmulPrecision,
}

/// Runs the benchmark `args.name` names.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    for (flag, v) in [
        ("--iters", args.iters),
        ("--batch-size", args.batch_size),
        ("--in-channels", args.in_channels),
        ("--image-size", args.image_size),
        ("--reps", args.reps),
        ("--rounds", args.rounds),
    ] {
        if v == 0 {
            anyhow::bail!("{flag} 0: must be at least 1");
        }
    }
    // The random input batch alone: refuse sizes that would not fit in memory, before allocating.
    let input_floats = args
        .batch_size
        .saturating_mul(args.in_channels)
        .saturating_mul(args.image_size.saturating_mul(args.image_size));
    const MAX_INPUT_FLOATS: usize = 1 << 28;
    if input_floats > MAX_INPUT_FLOATS {
        anyhow::bail!(
            "--batch-size {} x --in-channels {} x --image-size {}²: {input_floats} input values, more than the {MAX_INPUT_FLOATS} (1 GiB) a benchmark batch may take",
            args.batch_size,
            args.in_channels,
            args.image_size
        );
    }
    let _precision = kiln::tensor::set_matmul_precision(args.precision);
    match args.name.as_str() {
        "train-lenet" => train_step("lenet5", &args),
        "train-mnist-cnn" => train_step("mnist-cnn", &args),
        "train-resnet20" => train_step("resnet20", &args),
        "decode" => crate::bench_decode::run(args.reps, args.layers),
        "train-gpt-tiny" => train_gpt_tiny(&args),
        "llama" => crate::bench_llama::run(&args.weights, args.reps, args.activations.as_deref()),
        "serve" => {
            let load = crate::bench_serve::Load {
                requests: args.requests,
                clients: args.clients,
                rate: args.rate,
                prompt_len: args.prompt_len,
                gen: args.gen_tokens,
                range_ratio: args.range_ratio,
            };
            crate::bench_serve::run(
                &args.weights,
                &load,
                args.kv_memory,
                args.kv_cache_dtype,
                args.rounds,
            )
        }
        "suite" => crate::bench_suite::run(&crate::bench_suite::SuiteOptions {
            threads: args.threads,
            compare_torch: args.compare.is_some(),
            json: args.json,
            rounds: args.rounds,
            reps: args.reps,
            python: args.python,
            only: args.workload,
        }),
        "embed" => crate::bench_embed::run(&crate::bench_embed::EmbedBenchOptions {
            reps: args.reps,
            rounds: args.rounds,
            threads: args.threads,
            python: args.python,
            reference: !args.no_reference,
            only: args.workload,
        }),
        other => {
            anyhow::bail!(
                "unknown benchmark {other:?}; known: suite, train-lenet, train-mnist-cnn, train-resnet20, decode, train-gpt-tiny, llama, serve, embed"
            )
        }
    }
}

/// Median wall time of one training step (forward, backward, Adam update) on random images of the
/// chosen geometry, 10 classes.
fn train_step(model_name: &str, args: &BenchArgs) -> anyhow::Result<()> {
    let entry = kiln::find_model(model_name)?;
    let (c, side) = (args.in_channels, args.image_size);
    let geometry = serde_json::json!({"in_channels": c, "image_size": side, "num_classes": 10});
    let cfg = kiln::zoo::merge_config(entry, Some(&geometry))?;
    let model = (entry.build)(&cfg, Scope::init(0, DType::F32, Device::Cpu))?;
    let mut opt = Adam::from_params(
        model.parameters(),
        AdamConfig {
            lr: 1e-3,
            ..Default::default()
        },
    )?;
    let mut rng = TensorRng::new(0);
    let b = args.batch_size;
    let inputs = Tensor::randn([b, c, side, side], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng)?;
    let targets = Tensor::from_vec((0..b).map(|i| (i % 10) as i64).collect::<Vec<_>>(), [b])?;
    let batch = Batch {
        inputs,
        targets: Some(targets),
    };
    let mut step = || -> anyhow::Result<f64> {
        let t = Instant::now();
        // As the Trainer runs a step: inside the thread pool.
        kiln::autograd::in_pool(|| -> anyhow::Result<()> {
            let out = model.forward(&batch)?;
            let loss: Var = out.loss.expect("batch has targets");
            let grads = loss.backward()?;
            opt.step(&grads)?;
            Ok(())
        })?;
        Ok(t.elapsed().as_secs_f64())
    };
    for _ in 0..5 {
        step()?;
    }
    let mut times: Vec<f64> = (0..args.iters).map(|_| step()).collect::<anyhow::Result<_>>()?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{model_name} training step, batch {b} of {c}x{side}x{side}: median {:.2} ms, {:.0} images/s ({} iterations, {} threads, {} products)",
        median * 1e3,
        b as f64 / median,
        args.iters,
        rayon_threads(),
        args.precision
    );
    Ok(())
}

/// `gpt-tiny` training step as `benches/reference/gpt_tiny_train.py` runs it: batch of 12 × 64
/// random characters, forward, backward, clipping at 1.0, AdamW on the matrices. Reports the
/// median step and its parts (forward; forward + backward) and tokens/s.
fn train_gpt_tiny(args: &BenchArgs) -> anyhow::Result<()> {
    use kiln::optim::{clip_grad_norm, AdamW, AdamWConfig, ParamGroup};
    let entry = kiln::find_model("gpt-tiny")?;
    let model = (entry.build)(&(entry.default_config)(), Scope::init(0, DType::F32, Device::Cpu))?;
    let params = model.parameters();
    let mut opt = AdamW::new(
        ParamGroup::split_decay_matrices(params.clone(), 0.1),
        AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.99),
            weight_decay: 0.1,
            ..Default::default()
        },
    )?;
    let (b, t) = (12usize, 64usize);
    let mut rng = TensorRng::new(0);
    let ids: Vec<i64> = (0..b * (t + 1)).map(|_| rng.next_below(65) as i64).collect();
    let x: Vec<i64> = (0..b)
        .flat_map(|i| ids[i * (t + 1)..i * (t + 1) + t].to_vec())
        .collect();
    let y: Vec<i64> = (0..b)
        .flat_map(|i| ids[i * (t + 1) + 1..(i + 1) * (t + 1)].to_vec())
        .collect();
    let batch = Batch {
        inputs: Tensor::from_vec(x, [b, t])?,
        targets: Some(Tensor::from_vec(y, [b, t])?),
    };
    let mut step = || -> anyhow::Result<[f64; 3]> {
        let t0 = Instant::now();
        let out = model.forward(&batch)?;
        let loss: Var = out.loss.expect("batch has targets");
        let t1 = t0.elapsed().as_secs_f64();
        let mut grads = loss.backward()?;
        let t2 = t0.elapsed().as_secs_f64();
        clip_grad_norm(&params, &mut grads, 1.0)?;
        opt.step(&grads)?;
        Ok([t1, t2, t0.elapsed().as_secs_f64()])
    };
    for _ in 0..5 {
        step()?;
    }
    let runs: Vec<[f64; 3]> = (0..args.iters).map(|_| step()).collect::<anyhow::Result<_>>()?;
    let med = |i: usize| {
        let mut v: Vec<f64> = runs.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (fwd, fb, all) = (med(0), med(1), med(2));
    println!(
        "gpt-tiny training step, batch 12 x 64 tokens: median {:.2} ms (forward {:.2}, backward {:.2}, clip + AdamW {:.2}), {:.0} tokens/s ({} iterations, {} threads, {} products)",
        all * 1e3,
        fwd * 1e3,
        (fb - fwd) * 1e3,
        (all - fb) * 1e3,
        (b * t) as f64 / all,
        args.iters,
        rayon_threads(),
        args.precision
    );
    Ok(())
}

/// Threads of the current rayon pool (the one kiln's kernels share work out over).
pub fn rayon_threads() -> usize {
    rayon::current_num_threads()
}
