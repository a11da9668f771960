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
    /// Which benchmark: `train-lenet`, `train-mnist-cnn`, `train-resnet20` (a training step: forward,
    /// backward, Adam update).
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
    /// `decode`: repetitions of the prefill + 128-token decode (medians reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// `decode`: layers of the GPT-2-small shape (default 12).
    #[arg(long)]
    layers: Option<usize>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.name.as_str() {
        "train-lenet" => train_step("lenet5", &args),
        "train-mnist-cnn" => train_step("mnist-cnn", &args),
        "train-resnet20" => train_step("resnet20", &args),
        "decode" => crate::bench_decode::run(args.reps, args.layers),
        other => {
            anyhow::bail!(
                "unknown benchmark {other:?}; known: train-lenet, train-mnist-cnn, train-resnet20, decode"
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
        let out = model.forward(&batch)?;
        let loss: Var = out.loss.expect("batch has targets");
        let grads = loss.backward()?;
        opt.step(&grads)?;
        Ok(t.elapsed().as_secs_f64())
    };
    for _ in 0..5 {
        step()?;
    }
    let mut times: Vec<f64> = (0..args.iters).map(|_| step()).collect::<anyhow::Result<_>>()?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{model_name} training step, batch {b} of {c}x{side}x{side}: median {:.2} ms, {:.0} images/s ({} iterations, {} threads)",
        median * 1e3,
        b as f64 / median,
        args.iters,
        rayon_threads()
    );
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
