//! `cargo xtask train` and `cargo xtask eval`: train a registered model on a dataset, and evaluate a run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kiln::autograd::Param;
use kiln::data::text::load_tokenizer;
use kiln::nn::Scope;
use kiln::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup, Schedule};
use kiln::tensor::{DType, Device};
use kiln::train::{OptimizerConfig, Recipe, RunSpec, TrainConfig, Trainer, RUN_FILE};
use kiln::zoo::Model;

use crate::datasets::{self, check_fits, fit_model_to_data};

mod init;
use init::InitSource;

/// Options of `cargo xtask train`. With no options it trains LeNet-5 on MNIST for 5 epochs.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Registered model (`cargo xtask models` lists them).
    #[arg(long)]
    model: Option<String>,
    /// Dataset: mnist, fashion-mnist, mnist-sequential, tinyshakespeare-char, shakespeare-mlm,
    /// authors, a `prepare-data` directory, or an instruction JSONL file with `--task sft`.
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
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its newest complete checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Replace the run already in the run directory (without it, an existing run is refused:
    /// continue it with --resume or pick another --out).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// A JSON file with any of: model, dataset, optimizer, lr, model_config, train (TrainConfig fields).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Directory holding the datasets (default: data/ of this repository).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Second Adam moment decay (transformer recipe default 0.95; nanoGPT's shakespeare-char 0.99).
    #[arg(long)]
    beta2: Option<f64>,
    /// Decoupled weight decay of AdamW (transformer recipe: 0.1, on weight matrices only).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Linear warm-up steps before the cosine decay (transformer recipe: 5% of the run).
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Floor of the cosine decay (transformer recipe: lr / 10; otherwise 0).
    #[arg(long)]
    min_lr: Option<f64>,
    /// Clip the global gradient norm (transformer recipe: 1.0).
    #[arg(long)]
    clip_grad_norm: Option<f64>,
    /// Batches averaged into one optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// On a non-finite loss or gradient norm: `stop` (an error naming the step; the default) or
    /// `skip-batch` (no update from that batch, logged).
    #[arg(long, value_parser = ["stop", "skip-batch"])]
    on_nan: Option<String>,
    /// Arithmetic of matrix products and convolutions: `f32` (the default) or `bf16` (bf16
    /// operands, f32 accumulation, as `torch.autocast(dtype=torch.bfloat16)`; weights, gradients
    /// and optimizer state stay f32).
    #[arg(long)]
    precision: Option<kiln::tensor::MatmulPrecision>,
    /// Validation loss every this many steps (besides each epoch's end).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Log a progress line every this many steps (default 50).
    #[arg(long)]
    log_every: Option<usize>,
    /// Write a checkpoint every this many steps.
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// `sft`: instruction tuning on a JSONL file given as --dataset (prompt tokens masked).
    #[arg(long)]
    task: Option<String>,
    /// Start from the weights of this run directory (its newest complete checkpoint) and reuse
    /// its tokenizer (instruction tuning after pre-training).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Data parallel: `mpi` runs one replica per MPI rank (`mpirun -np N xtask train ...
    /// --distributed mpi`, xtask built with `--features mpi`); each rank reads its share of
    /// every global batch of N × batch size, rank 0 writes the run. `none` (the default): one
    /// process.
    #[arg(long, value_name = "none|mpi")]
    distributed: Option<String>,
    /// Hold out this share of the training data (seeded) as the validation split, evaluated at
    /// every epoch's end (and every --eval-every steps). Default: the dataset's own validation
    /// split where it has one (text), else 0.1 (the images: their held-out split is the test
    /// set, kept for the final score).
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Stop when the validation loss has not improved for this many epochs (Keras'
    /// EarlyStopping); the best weights are in RUN/best/ either way.
    #[arg(long, value_name = "PATIENCE")]
    early_stop: Option<usize>,
}

/// The validation share of datasets whose own held-out split is a test set.
const DEFAULT_VAL_FRACTION: f64 = 0.1;

/// Reads a settings file, naming it in errors.
fn read_spec(path: &Path) -> anyhow::Result<RunSpec> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    Ok(RunSpec::from_json(&bytes, path)?)
}

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let device = Device::parse(&args.device)?;
    device.ensure_available()?;
    let collective = crate::distributed::collective(args.distributed.as_deref())?;
    if args.early_stop.is_some() && collective.world_size() > 1 {
        bail!("--early-stop is not available with --distributed: only rank 0 validates, and the ranks must stop at the same step");
    }
    // Rank 0 writes the run (files, progress, results); the other ranks only train.
    let writer = collective.rank() == 0;
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
    let mut train_cfg = spec.train_config()?;
    // A resumed run keeps what defines it: a flag that would change it is refused by name (it
    // used to be accepted, and a different dataset trained on silently).
    macro_rules! fixed_on_resume {
        ($($field:ident: $flag:literal),*) => {$(
            if let (Some(_), Some(given)) = (&args.resume, &args.$field) {
                if spec.$field.as_ref() != Some(given) {
                    bail!(
                        "{} {:?}: the resumed run was trained with {}; a resumed run keeps its {} (start a new run with --out to change it)",
                        $flag,
                        given,
                        spec.$field.as_ref().map_or("none".to_string(), |v| format!("{v:?}")),
                        $flag.trim_start_matches("--")
                    );
                }
            }
        )*};
    }
    fixed_on_resume!(model: "--model", dataset: "--dataset", optimizer: "--optimizer", lr: "--lr",
        seq_len: "--seq-len", task: "--task", init: "--init", val_fraction: "--val-fraction");
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
    flag!(task);
    flag!(init);
    flag!(val_fraction);
    let mut recipe = spec.recipe.clone().unwrap_or_default();
    if args.beta2.is_some() {
        recipe.beta2 = args.beta2;
    }
    if args.weight_decay.is_some() {
        recipe.weight_decay = args.weight_decay;
    }
    let sft = match spec.task.as_deref() {
        None => false,
        Some("sft") => true,
        Some(other) => {
            bail!("--task {other:?} is not known; the only task option is \"sft\" (instruction tuning)")
        }
    };
    // Weights trained elsewhere: their model and sizes are the base of this run's (a resumed
    // run has both in its run.json and its weights in its checkpoints).
    let init_source = match (&spec.init, &args.resume) {
        (Some(dir), None) => {
            let source = InitSource::open(dir)?;
            source.reconcile(&mut spec, sft)?;
            Some(source)
        }
        _ => None,
    };
    if sft && spec.init.is_none() {
        bail!("--task sft tunes a pre-trained model: give its run directory with --init RUN_DIR");
    }
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
    if let Some(c) = args.clip_grad_norm {
        train_cfg.clip_grad_norm = Some(c);
    }
    if let Some(a) = args.grad_accum {
        train_cfg.grad_accum_steps = a;
    }
    match args.on_nan.as_deref() {
        Some("skip-batch") => train_cfg.on_nan = kiln::train::OnNan::SkipBatch,
        Some(_) => train_cfg.on_nan = kiln::train::OnNan::Stop,
        None => {}
    }
    if let Some(p) = args.precision {
        train_cfg.precision = p;
    }
    if train_cfg.precision == kiln::tensor::MatmulPrecision::Bf16 {
        println!("{}", bf16_kernel_note());
    }
    if let Some(e) = args.eval_every {
        train_cfg.eval_every_steps = Some(e);
    }
    if let Some(l) = args.log_every {
        train_cfg.log_every_steps = l;
    }
    if let Some(c) = args.checkpoint_every {
        train_cfg.checkpoint_every_steps = Some(c);
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
    // The transformer recipe (GPT and BERT): AdamW, decay on matrices, warm-up, clipping.
    let transformer = matches!(entry.family, "gpt" | "bert");
    if entry.family == "bert" && args.resume.is_none() {
        // BERT's own optimizer settings (Devlin et al.): beta2 0.999, weight decay 0.01.
        recipe.beta2.get_or_insert(0.999);
        recipe.weight_decay.get_or_insert(0.01);
    }
    if transformer && train_cfg.clip_grad_norm.is_none() && args.resume.is_none() {
        train_cfg.clip_grad_norm = Some(1.0);
    }
    let seq_len = spec
        .seq_len
        .unwrap_or_else(|| datasets::default_seq_len(&dataset));
    if seq_len == 0 {
        bail!("--seq-len must be at least 1");
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(datasets::default_data_dir);
    let data = if sft {
        if entry.task != kiln::zoo::Task::CausalLm {
            bail!(
                "--task sft needs a causal language model; {model_name} is a {} model",
                entry.task
            );
        }
        let init_dir = spec.init.clone().unwrap_or_default();
        let tok_path = init_dir.join("tokenizer.json");
        let tok = load_tokenizer(&tok_path)
            .with_context(|| format!("the --init run has no usable tokenizer ({})", tok_path.display()))?;
        datasets::load_sft(Path::new(&dataset), tok.as_ref(), seq_len + 1)?
    } else if datasets::is_shard_dir(&dataset) {
        check_fits(&dataset, kiln::zoo::Task::CausalLm, &model_name, entry.task)?;
        datasets::load_shards(Path::new(&dataset), seq_len)?
    } else {
        let info = datasets::find(&dataset)?;
        check_fits(&dataset, info.task, &model_name, entry.task)?;
        datasets::load(info, &data_dir, seq_len)?
    };
    let model_cfg = kiln::zoo::merge_config(
        entry,
        Some(&fit_model_to_data(
            &(entry.default_config)(),
            &data.geometry,
            spec.model_config.as_ref(),
        )),
    )?;
    let model = (entry.build)(&model_cfg, Scope::init(train_cfg.seed, DType::F32, device))?;
    if let Some(source) = &init_source {
        source.load_into(model.as_ref())?;
    }
    let optimizer_name = spec
        .optimizer
        .clone()
        .unwrap_or_else(|| if transformer { "adamw" } else { "adam" }.into());
    let optimizer = build_optimizer(&optimizer_name, lr, &recipe, transformer, model.parameters())?;
    // The validation split: a seeded share of the training data, or the dataset's own.
    let own_validation = !matches!(dataset.as_str(), "mnist" | "fashion-mnist" | "mnist-sequential");
    if args.resume.is_none() && spec.val_fraction.is_none() && !own_validation {
        spec.val_fraction = Some(DEFAULT_VAL_FRACTION);
    }
    let full: std::sync::Arc<dyn kiln::data::Dataset> = std::sync::Arc::from(data.train);
    let (train_box, val_box): (Box<dyn kiln::data::Dataset>, Option<kiln::data::Subset>) =
        match spec.val_fraction {
            Some(f) => {
                if !(f > 0.0 && f < 1.0) {
                    bail!("--val-fraction must lie strictly between 0 and 1, got {f}");
                }
                let (rest, held) = kiln::data::random_split(full, f, train_cfg.seed)?;
                (Box::new(rest), Some(held))
            }
            None => (Box::new(full), None),
        };
    let (train_set, test_set) = (train_box.as_ref(), data.test.as_ref());
    let val_set: &dyn kiln::data::Dataset = match &val_box {
        Some(v) => v,
        None => test_set,
    };
    let data_fingerprint = kiln::data::content_fingerprint(train_set)?;
    if let (Some(_), Some(recorded)) = (&args.resume, &spec.data_fingerprint) {
        if *recorded != data_fingerprint {
            bail!(
                "--resume: the run was trained on {dataset} data with fingerprint \"{recorded}\", the data now read gives \"{data_fingerprint}\" (the dataset files changed?); resume with the same data, or start a new run"
            );
        }
    }
    // Optimizer steps the run will have made at its end.
    let per_epoch = train_set
        .len()
        .div_ceil(train_cfg.batch_size * train_cfg.grad_accum_steps.max(1));
    let total = match (train_cfg.max_steps, train_cfg.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e * per_epoch,
        (None, None) => per_epoch,
    };
    // Extending a resumed run past the end of its decaying schedule would train the extra
    // steps at the schedule's final rate (0 for the default cosine): refused, saying how.
    if let (
        Some(_),
        Some(Schedule::WarmupCosine { total_steps, .. } | Schedule::OneCycle { total_steps, .. }),
    ) = (&args.resume, &train_cfg.schedule)
    {
        if total > *total_steps {
            bail!(
                "--resume to {total} steps: the run's learning-rate schedule decays to its end at step {total_steps}, so the steps after it would train at its final rate; a resumed run keeps its schedule. To train longer, give the full length when starting (a run interrupted with Ctrl-C and resumed is bit-identical to one trained straight), or start a new run"
            );
        }
    }
    if train_cfg.schedule.is_none() {
        // Without a schedule from the config: cosine decay to 0 over the run, which settles the
        // weights at the end instead of stopping mid-noise at the peak learning rate.
        let warmup_steps = args
            .warmup_steps
            .unwrap_or(if transformer { total / 20 } else { 0 });
        let min_lr = args.min_lr.unwrap_or(if transformer { lr / 10.0 } else { 0.0 });
        train_cfg.schedule = Some(Schedule::WarmupCosine {
            lr,
            warmup_steps,
            total_steps: total.max(1).max(warmup_steps),
            min_lr,
        });
    } else if args.warmup_steps.is_some() || args.min_lr.is_some() {
        bail!("--warmup-steps and --min-lr shape the default schedule; the run's config already sets \"schedule\"");
    }

    let mut trainer = Trainer::new(model, optimizer, train_cfg)?.with_collective(collective);
    if args.resume.is_some() {
        match trainer.resume_reporting(&out) {
            Ok(_) if !writer => {}
            Ok((ckpt, skipped)) => {
                for (path, why) in &skipped {
                    println!("skipped newer checkpoint {}: {why}", path.display());
                }
                println!("resumed from {} at step {}", ckpt.display(), trainer.step());
            }
            // Stopped before its first checkpoint: nothing to lose, the run starts over.
            Err(kiln::train::Error::NoCheckpoint { skipped, .. }) if skipped.is_empty() => {
                if writer {
                    println!(
                        "{} has no checkpoint yet: the run starts from its beginning",
                        out.display()
                    );
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The held-out data must fit the model before hours of training, not at the evaluation after.
    trainer
        .check_data(test_set)
        .context("the test/validation split does not fit the model")?;
    // Never delete a run by accident: a new run into a directory that holds one needs
    // --overwrite (checkpoint pruning would remove its steps, and its logs would be replaced).
    if !writer {
        return train_replica(trainer, train_set);
    }
    let holds_run = out.join(RUN_FILE).exists() || out.join("checkpoints").exists();
    if args.resume.is_none() && holds_run {
        if !args.overwrite {
            bail!(
                "{} already holds a run: continue it with --resume {}, replace it with --overwrite, or choose another --out",
                out.display(),
                out.display()
            );
        }
        println!("--overwrite: removing the run in {}", out.display());
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create run directory {}", out.display()))?;
    let stored = RunSpec {
        model: Some(model_name.clone()),
        dataset: Some(dataset.clone()),
        optimizer: Some(optimizer_name.clone()),
        lr: Some(lr),
        model_config: Some(model_cfg),
        train: Some(serde_json::to_value(trainer.config())?),
        seq_len: spec.seq_len,
        recipe: Some(recipe.clone()),
        task: spec.task.clone(),
        init: spec.init.clone(),
        val_fraction: spec.val_fraction,
        data_fingerprint: Some(data_fingerprint),
    };
    println!(
        "training {model_name} ({} parameters) on {dataset}: {} train / {} validation{} examples, run directory {}",
        trainer.model().num_parameters(),
        train_set.len(),
        val_set.len(),
        if val_box.is_some() {
            format!(" (held out, seed {}) / {} test", trainer.config().seed, test_set.len())
        } else {
            String::new()
        },
        out.display()
    );
    // Written only once everything (a resumed checkpoint included) was accepted, and atomically:
    // a refused --resume leaves the run resumable as it was.
    kiln::train::write_file_atomically(
        &out.join(RUN_FILE),
        serde_json::to_string_pretty(&stored)?.as_bytes(),
    )?;
    // `cargo xtask generate --weights RUN --prompt TEXT` reads it.
    if let Some(tokenizer) = &data.tokenizer {
        tokenizer.save(out.join("tokenizer.json"))?;
    } else if let Some(file) = &data.tokenizer_file {
        std::fs::copy(file, out.join("tokenizer.json"))
            .with_context(|| format!("copying the tokenizer {}", file.display()))?;
    } else if let Some(init) = spec.init.as_ref().filter(|_| sft) {
        std::fs::copy(init.join("tokenizer.json"), out.join("tokenizer.json"))
            .with_context(|| format!("copying the tokenizer of {}", init.display()))?;
    }

    let before = if sft && args.resume.is_none() {
        let m = trainer.evaluate(test_set)?;
        println!(
            "held-out response loss before tuning: {:.4} ({} examples)",
            m.loss, m.samples
        );
        Some(m.loss)
    } else {
        None
    };
    let started = std::time::Instant::now();
    let signals = crate::signals::SignalFlag::install()?;
    trainer.add_callback(signals.callback());
    // Keras' ModelCheckpoint(save_best_only) and EarlyStopping, on the validation loss.
    trainer.add_callback(kiln::train::ModelCheckpoint::best(
        kiln::train::Monitor::ValLoss,
        "best/model.safetensors",
    ));
    if let Some(patience) = args.early_stop {
        trainer.add_callback(kiln::train::EarlyStopping::new(
            kiln::train::Monitor::ValLoss,
            patience,
            0.0,
        )?);
    }
    let history = trainer.fit(train_set, Some(val_set))?;
    if let Some(code) = signals.received() {
        println!(
            "stopped at step {} ({}): checkpoint written; continue with --resume {}",
            trainer.step(),
            history.stopped_early.as_deref().unwrap_or("signal"),
            out.display()
        );
        std::process::exit(code);
    }
    let train_secs = started.elapsed().as_secs_f64();
    let world = trainer.world_size();
    let communication = trainer.communication_seconds();
    if let Some((busy, waited)) = communication {
        println!(
            "data parallel over {world} ranks: all-reduce busy {busy:.2} s on rank 0, {waited:.2} s of it waited for after the backward passes ({:.0}% hidden behind backward)",
            100.0 * (1.0 - waited / busy.max(1e-12)).max(0.0)
        );
    }
    let test = trainer.evaluate(test_set)?;
    let acc = test.accuracy.unwrap_or(f64::NAN);
    if entry.task == kiln::zoo::Task::CausalLm {
        let tokens: f64 = history
            .steps
            .iter()
            .filter_map(|s| s.tokens_per_sec)
            .collect::<Vec<_>>()
            .last()
            .copied()
            .unwrap_or(f64::NAN);
        println!(
            "validation: loss {:.4} ({} examples); training took {train_secs:.1} s ({tokens:.0} tokens/s in the last window)",
            test.loss, test.samples
        );
        if let Some(b) = before {
            println!(
                "held-out response loss: {b:.4} before tuning, {:.4} after",
                test.loss
            );
        }
        print_sample(trainer.model(), &out, sft)?;
    } else if test.accuracy.is_none() && !test.extra.is_empty() {
        // A model with its own metrics (BERT pre-training: masked-LM and next-sentence).
        let extra: Vec<String> = test
            .extra
            .iter()
            .map(|(k, v)| {
                if k.ends_with("accuracy") {
                    format!("{k} {:.2}%", 100.0 * v)
                } else {
                    format!("{k} {v:.4}")
                }
            })
            .collect();
        println!(
            "held-out: loss {:.4}, {} ({} examples); training took {train_secs:.1} s",
            test.loss,
            extra.join(", "),
            test.samples
        );
    } else {
        println!(
            "test: loss {:.4}, accuracy {:.2}% ({} examples); training took {train_secs:.1} s",
            test.loss,
            100.0 * acc,
            test.samples
        );
    }
    let metrics = serde_json::json!({
        "test_accuracy": acc, "test_loss": test.loss, "test_top5": test.top5,
        "test_extra": test.extra, "baselines": data.baselines,
        "train_seconds": train_secs, "steps": trainer.step(),
        "world_size": world,
        "samples_per_second": (trainer.step() * trainer.config().batch_size * trainer.config().grad_accum_steps * world) as f64 / train_secs,
        "allreduce_busy_seconds": communication.map(|c| c.0),
        "allreduce_waited_seconds": communication.map(|c| c.1),
    });
    std::fs::write(out.join("metrics.json"), serde_json::to_string_pretty(&metrics)?)?;
    Ok(())
}

/// A replica other than rank 0 of a data-parallel run: it trains in step with the others and
/// leaves the run directory, the progress and the results to rank 0.
fn train_replica(mut trainer: Trainer, train_set: &dyn kiln::data::Dataset) -> anyhow::Result<()> {
    let signals = crate::signals::SignalFlag::install()?;
    trainer.add_callback(signals.callback());
    trainer.fit(train_set, None)?;
    if let Some(code) = signals.received() {
        std::process::exit(code);
    }
    Ok(())
}

/// The optimizer of a run: by name, or AdamW with the recipe's betas and weight decay (on weight
/// matrices only for transformers).
fn build_optimizer(
    name: &str,
    lr: f64,
    recipe: &Recipe,
    transformer: bool,
    params: Vec<Param>,
) -> anyhow::Result<Box<dyn Optimizer>> {
    if name.eq_ignore_ascii_case("adamw") {
        let decay = recipe
            .weight_decay
            .unwrap_or(if transformer { 0.1 } else { 0.01 });
        let cfg = AdamWConfig {
            lr,
            betas: (
                0.9,
                recipe.beta2.unwrap_or(if transformer { 0.95 } else { 0.999 }),
            ),
            weight_decay: decay,
            ..Default::default()
        };
        let groups = if transformer {
            ParamGroup::split_decay_matrices(params, decay)
        } else {
            vec![ParamGroup::new(params)]
        };
        return Ok(Box::new(AdamW::new(groups, cfg)?));
    }
    if recipe.beta2.is_some() || recipe.weight_decay.is_some() {
        bail!("--beta2 and --weight-decay apply to the adamw optimizer, not {name}");
    }
    Ok(OptimizerConfig::by_name(name, lr)?.build(params)?)
}

/// After training a causal LM: a short sample from the model, from a newline (pre-training) or an
/// instruction (after instruction tuning), with the run's tokenizer.
fn print_sample(model: &std::sync::Arc<dyn Model>, run: &Path, sft: bool) -> anyhow::Result<()> {
    let (Some(lm), Ok(tok)) = (model.as_causal_lm(), load_tokenizer(run.join("tokenizer.json"))) else {
        return Ok(());
    };
    model.set_training(false);
    let prompt_text = if sft {
        kiln::data::text::InstructionRecord {
            instruction: "What is 2 + 3?".into(),
            input: String::new(),
            output: String::new(),
        }
        .prompt()
    } else {
        "\n".to_string()
    };
    let prompt = tok.encode(&prompt_text)?;
    let max_new = lm
        .context_len()
        .map_or(200, |c| c.saturating_sub(prompt.len()).min(200));
    let params = kiln::zoo::SamplingParams {
        max_new_tokens: max_new,
        temperature: 0.8,
        stop_tokens: tok.eos_id().into_iter().collect(),
        ..Default::default()
    };
    let ids = kiln::zoo::generate::generate_all(lm, &prompt, &params)?;
    println!(
        "sample (temperature 0.8, seed 0):\n{}{}",
        prompt_text,
        tok.decode(&ids)?
    );
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

/// An error naming the first parameter of `params` (loaded from `from`) that holds a NaN or an
/// infinity: such weights come from a diverged run and give meaningless results.
pub(crate) fn ensure_finite_weights(params: &[kiln::autograd::Param], from: &Path) -> anyhow::Result<()> {
    for p in params {
        let v = p.value().to_dtype(DType::F32)?.to_vec::<f32>()?;
        if let Some(x) = v.iter().find(|x| !x.is_finite()) {
            anyhow::bail!(
                "{}: parameter {} holds non-finite values ({x}): the run diverged; these weights cannot be used",
                from.display(),
                p.name()
            );
        }
    }
    Ok(())
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    // Name the path the user gave, not the run.json looked for two levels up.
    if !args.checkpoint.is_dir() {
        anyhow::bail!(
            "--checkpoint {}: no such directory (expected a kiln run directory or a step-* checkpoint inside one)",
            args.checkpoint.display()
        );
    }
    // A run directory (its newest complete checkpoint) or a verified checkpoint inside one.
    let (run_dir, ckpt) = crate::generate::locate_checkpoint(&args.checkpoint)?;
    let spec = read_spec(&run_dir.join(RUN_FILE))?;
    let model_name = spec.model.context("run.json names no model")?;
    let dataset = spec.dataset.context("run.json names no dataset")?;
    let entry = kiln::find_model(&model_name)?;
    let cfg = kiln::zoo::merge_config(entry, spec.model_config.as_ref())?;
    let model = (entry.build)(&cfg, Scope::init(0, DType::F32, Device::Cpu))?;
    kiln::nn::load_state_dict_file(&model.parameters(), ckpt.join("model.safetensors"), true)?;
    ensure_finite_weights(&model.parameters(), &ckpt)?;
    let data_dir = args.data_dir.unwrap_or_else(datasets::default_data_dir);
    let test_set = datasets::load_test(
        datasets::find(&dataset)?,
        &data_dir,
        spec.seq_len
            .unwrap_or_else(|| datasets::default_seq_len(&dataset)),
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
    let m = trainer.evaluate(test_set.as_ref())?;
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

/// Which kernel `--precision bf16` products run on this CPU (printed at the start of a run).
fn bf16_kernel_note() -> &'static str {
    if kiln::tensor::simd::has_bf16_dot() {
        "precision bf16: matrix products and convolutions take bf16 operands (AVX-512 BF16 dot \
         products, f32 accumulation)"
    } else {
        "precision bf16: this CPU has no AVX-512 BF16 dot products; matrix products and \
         convolutions round their operands to bf16 and run the same arithmetic in f32 \
         instructions (slower than --precision f32)"
    }
}
