//! `cargo xtask train` and `cargo xtask eval`: train a registered model on a dataset, and evaluate a run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kiln::nn::Scope;
use kiln::optim::Schedule;
use kiln::tensor::{DType, Device};
use kiln::train::{OptimizerConfig, TrainConfig, Trainer};
use serde::{Deserialize, Serialize};

use crate::datasets::{self, check_fits, fit_model_to_data};

/// Options of `cargo xtask train`. With no options it trains LeNet-5 on MNIST for 5 epochs.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Registered model (`cargo xtask models` lists them).
    #[arg(long)]
    model: Option<String>,
    /// Dataset: mnist, fashion-mnist, mnist-sequential, tinyshakespeare-char.
    #[arg(long)]
    dataset: Option<String>,
    /// Number of epochs (default 5).
    #[arg(long, conflicts_with = "steps")]
    epochs: Option<usize>,
    /// Number of optimizer steps instead of epochs.
    #[arg(long)]
    steps: Option<usize>,
    /// Batch size (default 64).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Tokens per example of a language-modelling dataset (default 64).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Learning rate (default 1e-3).
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Optimizer: sgd, adam, adamw, rmsprop, adagrad (default adam).
    #[arg(long)]
    optimizer: Option<String>,
    /// Seed of initialisation and data order (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Run directory for logs and checkpoints (default runs/MODEL-DATASET).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its newest complete checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// A JSON file with any of: model, dataset, optimizer, lr, model_config, train (TrainConfig fields).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Directory holding the datasets (default: data/ of this repository).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// A run's settings: the config file's schema, and what is stored as `run.json` in the run directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSpec {
    /// Registered model name.
    pub model: Option<String>,
    /// Dataset name.
    pub dataset: Option<String>,
    /// Optimizer name.
    pub optimizer: Option<String>,
    /// Learning rate.
    pub lr: Option<f64>,
    /// Overrides of the model's default config.
    pub model_config: Option<serde_json::Value>,
    /// Trainer settings.
    pub train: Option<serde_json::Value>,
    /// Tokens per example of a language-modelling dataset.
    pub seq_len: Option<usize>,
}

const RUN_FILE: &str = "run.json";

fn default_data_dir() -> PathBuf {
    // xtask runs from the workspace root through the cargo alias; fall back to the manifest's parent.
    let here = PathBuf::from("data");
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("data")
}

fn read_spec(path: &Path) -> anyhow::Result<RunSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("config file {} is not a valid run config", path.display()))
}

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let device = Device::parse(&args.device)?;
    device.ensure_available()?;
    // Settings: a resumed run's run.json, then the config file, then flags.
    let mut spec = match (&args.resume, &args.config) {
        (Some(dir), _) => read_spec(&dir.join(RUN_FILE))
            .with_context(|| format!("{} is not a kiln run directory", dir.display()))?,
        (None, Some(path)) => read_spec(path)?,
        (None, None) => RunSpec::default(),
    };
    if args.resume.is_some() && args.config.is_some() {
        bail!("--resume continues a run with its own settings; it cannot be combined with --config");
    }
    let mut train_cfg: TrainConfig = match &spec.train {
        Some(v) => serde_json::from_value(v.clone()).context("invalid \"train\" section")?,
        None => TrainConfig {
            epochs: Some(5),
            ..Default::default()
        },
    };
    macro_rules! flag {
        ($field:ident) => {
            if let Some(v) = args.$field.clone() {
                spec.$field = Some(v);
            }
        };
    }
    flag!(model);
    flag!(dataset);
    flag!(optimizer);
    flag!(lr);
    flag!(seq_len);
    let model_name = spec.model.clone().unwrap_or_else(|| "lenet5".into());
    let dataset = spec.dataset.clone().unwrap_or_else(|| "mnist".into());
    let lr = spec.lr.unwrap_or(1e-3);
    if !(lr.is_finite() && lr > 0.0) {
        bail!("--lr must be a positive number, got {lr}");
    }
    if let Some(e) = args.epochs {
        train_cfg.epochs = Some(e);
        train_cfg.max_steps = None;
    }
    if let Some(s) = args.steps {
        train_cfg.max_steps = Some(s);
        train_cfg.epochs = None;
    }
    if let Some(b) = args.batch_size {
        train_cfg.batch_size = b;
    }
    if let Some(s) = args.seed {
        train_cfg.seed = s;
    }
    let out = args
        .resume
        .clone()
        .or(args.out.clone())
        .or(train_cfg.out_dir.clone())
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{model_name}-{dataset}")));
    train_cfg.out_dir = Some(out.clone());
    train_cfg.validate()?;

    let entry = kiln::find_model(&model_name)?;
    let info = datasets::find(&dataset)?;
    check_fits(&dataset, info.task, &model_name, entry.task)?;
    let seq_len = spec.seq_len.unwrap_or(datasets::DEFAULT_SEQ_LEN);
    if seq_len == 0 {
        bail!("--seq-len must be at least 1");
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let data = datasets::load(info, &data_dir, seq_len)?;
    let model_cfg = kiln::zoo::merge_config(
        entry,
        Some(&fit_model_to_data(
            &(entry.default_config)(),
            &data.geometry,
            spec.model_config.as_ref(),
        )),
    )?;
    let model = (entry.build)(&model_cfg, Scope::init(train_cfg.seed, DType::F32, device))?;
    let optimizer = OptimizerConfig::by_name(spec.optimizer.as_deref().unwrap_or("adam"), lr)?
        .build(model.parameters())?;
    let (train_set, test_set) = (data.train.as_ref(), data.test.as_ref());
    if train_cfg.schedule.is_none() {
        // Without a schedule from the config: cosine decay to 0 over the run, which settles the
        // weights at the end instead of stopping mid-noise at the peak learning rate.
        let per_epoch = train_set
            .len()
            .div_ceil(train_cfg.batch_size * train_cfg.grad_accum_steps.max(1));
        let total = match (train_cfg.max_steps, train_cfg.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => e * per_epoch,
            (None, None) => per_epoch,
        };
        train_cfg.schedule = Some(Schedule::WarmupCosine {
            lr,
            warmup_steps: 0,
            total_steps: total.max(1),
            min_lr: 0.0,
        });
    }

    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create run directory {}", out.display()))?;
    let stored = RunSpec {
        model: Some(model_name.clone()),
        dataset: Some(dataset.clone()),
        optimizer: spec.optimizer.clone(),
        lr: Some(lr),
        model_config: Some(model_cfg),
        train: Some(serde_json::to_value(&train_cfg)?),
        seq_len: spec.seq_len,
    };
    std::fs::write(out.join(RUN_FILE), serde_json::to_string_pretty(&stored)?)?;
    if let Some(tokenizer) = &data.tokenizer {
        // `cargo xtask generate --weights RUN --prompt TEXT` reads it.
        tokenizer.save(out.join("tokenizer.json"))?;
    }

    println!(
        "training {model_name} ({} parameters) on {dataset}: {} train / {} test examples, run directory {}",
        model.num_parameters(),
        train_set.len(),
        test_set.len(),
        out.display()
    );
    let mut trainer = Trainer::new(model, optimizer, train_cfg)?;
    if args.resume.is_some() {
        let ckpt = trainer.resume(&out)?;
        println!("resumed from {} at step {}", ckpt.display(), trainer.step());
    }
    let started = std::time::Instant::now();
    trainer.fit(train_set, None)?;
    let train_secs = started.elapsed().as_secs_f64();
    let test = trainer.evaluate(test_set)?;
    let acc = test.accuracy.unwrap_or(f64::NAN);
    println!(
        "test: loss {:.4}, accuracy {:.2}% ({} examples); training took {train_secs:.1} s",
        test.loss,
        100.0 * acc,
        test.samples
    );
    let metrics = serde_json::json!({
        "test_accuracy": acc, "test_loss": test.loss, "test_top5": test.top5,
        "train_seconds": train_secs, "steps": trainer.step(),
    });
    std::fs::write(out.join("metrics.json"), serde_json::to_string_pretty(&metrics)?)?;
    Ok(())
}

/// Options of `cargo xtask eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// A run directory (its newest complete checkpoint is used) or one checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Directory holding the datasets (default: data/ of this repository).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    // A checkpoint directory sits in RUN/checkpoints/; a run directory holds run.json itself.
    let (run_dir, ckpt) = if args.checkpoint.join(RUN_FILE).exists() {
        let ckpt = kiln::train::latest_checkpoint(&args.checkpoint)?
            .with_context(|| format!("no complete checkpoint in {}", args.checkpoint.display()))?;
        (args.checkpoint.clone(), ckpt)
    } else {
        let run = args
            .checkpoint
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        (run, args.checkpoint.clone())
    };
    let spec = read_spec(&run_dir.join(RUN_FILE))
        .with_context(|| format!("{} is not inside a kiln run directory", args.checkpoint.display()))?;
    let model_name = spec.model.context("run.json names no model")?;
    let dataset = spec.dataset.context("run.json names no dataset")?;
    let entry = kiln::find_model(&model_name)?;
    let cfg = kiln::zoo::merge_config(entry, spec.model_config.as_ref())?;
    let model = (entry.build)(&cfg, Scope::init(0, DType::F32, Device::Cpu))?;
    kiln::nn::load_state_dict_file(&model.parameters(), ckpt.join("model.safetensors"), true)?;
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let data = datasets::load(
        datasets::find(&dataset)?,
        &data_dir,
        spec.seq_len.unwrap_or(datasets::DEFAULT_SEQ_LEN),
    )?;
    let optimizer = OptimizerConfig::by_name("sgd", 0.0)?.build(model.parameters())?;
    let trainer = Trainer::new(
        model,
        optimizer,
        TrainConfig {
            out_dir: None,
            ..Default::default()
        },
    )?;
    let m = trainer.evaluate(data.test.as_ref())?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"checkpoint": ckpt, "model": model_name, "dataset": dataset,
            "test_loss": m.loss, "test_accuracy": m.accuracy, "test_top5": m.top5, "samples": m.samples})
        );
    } else {
        println!(
            "{model_name} on {dataset} ({}): loss {:.4}, accuracy {:.2}%",
            ckpt.display(),
            m.loss,
            100.0 * m.accuracy.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
