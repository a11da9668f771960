//! [`Trainer`]: the training loop (fit / evaluate / predict), with gradient accumulation,
//! clipping, learning-rate schedules, callbacks, logs and resumable checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kiln_autograd::{Gradients, Param, Var};
use kiln_data::{DataLoader, Dataset, Pipeline};
use kiln_optim::{clip_grad_norm, grad_norm, GradAccumulator, LrSchedule, Optimizer};
use kiln_tensor::{DType, Tensor, TensorRng};
use kiln_zoo::{Model, Task};

use crate::buckets::{BucketPlan, Reduction, BUCKET_BYTES};
use crate::callbacks::{distinct_params, Callback, CallbackContext, StepEnd};
use crate::checkpoint::{
    self, CheckpointJob, CheckpointWriter, ModelInfo, RngState, TrainerState, CHECKPOINTS_DIR, STATE_FILE,
    STATE_FORMAT, STATE_VERSION,
};
use crate::collective::{Collective, SingleProcess};
use crate::config::{OnNan, TrainConfig};
use crate::logs::{RunLogs, METRICS_FILE};
use crate::metrics::{EpochMetrics, History, MetricAccumulator, Metrics, StepLog};
use crate::progress::{Progress, ProgressLine};
use crate::train_data::TrainSource;
use crate::{Error, Result};

/// The name of the history file written at the end of `fit` in the run directory.
pub const HISTORY_FILE: &str = "history.json";
/// The name of the curves picture written at the end of `fit` in the run directory.
pub const CURVES_FILE: &str = "curves.png";

/// Where a run stands: everything a checkpoint must restore besides weights and optimizer.
#[derive(Clone, Debug, Default)]
struct RunState {
    step: usize,
    epoch: usize,
    batch_offset: usize,
    /// The fingerprint of the data loader's settings ([`DataLoader::fingerprint`]): set by
    /// `fit`, restored from a checkpoint, checked when `fit` continues.
    data_fingerprint: String,
    history: History,
    epoch_metrics: MetricAccumulator,
    window_metrics: MetricAccumulator,
    epoch_seconds: f64,
}

/// A Keras-like trainer for a [`kiln_zoo::Model`].
///
/// ```no_run
/// use kiln_train::{OptimizerConfig, TrainConfig, Trainer};
/// # fn run(model: Box<dyn kiln_zoo::Model>, train: kiln_data::TensorDataset, test: kiln_data::TensorDataset)
/// #     -> kiln_train::Result<()> {
/// let optimizer = OptimizerConfig::by_name("adam", 1e-3)?.build(model.parameters())?;
/// let config = TrainConfig { epochs: Some(3), out_dir: Some("runs/lenet".into()), ..Default::default() };
/// let mut trainer = Trainer::new(model, optimizer, config)?;
/// let history = trainer.fit(&train, Some(&test))?;
/// let metrics = trainer.evaluate(&test)?;
/// println!("test accuracy {:?} after {} epochs", metrics.accuracy, history.epochs.len());
/// # Ok(()) }
/// ```
///
/// Every step: forward and backward on each of `grad_accum_steps` batches (gradients averaged),
/// then [`Collective::all_reduce_gradients`] (the one place gradients cross replicas), clipping,
/// the learning-rate schedule, and the optimizer step. Logging happens every
/// `log_every_steps` steps only. Checkpoints are written on a background thread.
pub struct Trainer {
    model: Arc<dyn Model>,
    optimizer: Box<dyn Optimizer>,
    config: TrainConfig,
    collective: Arc<dyn Collective>,
    callbacks: Vec<Box<dyn Callback>>,
    /// Every distinct parameter and buffer (what checkpoints save).
    params: Vec<Param>,
    rng: TensorRng,
    state: RunState,
    writer: Option<CheckpointWriter>,
    /// The gradient buckets all-reduced during the backward pass (data parallel without
    /// accumulation; otherwise the accumulated gradients are reduced after the last micro-batch).
    buckets: Option<BucketPlan>,
    /// Time spent waiting for the buckets after the backward passes.
    exposed_communication: std::time::Duration,
    /// The step of the last checkpoint requested (to not write one step twice).
    last_checkpoint_step: Option<usize>,
}

/// Read a scalar tensor as f64.
fn scalar(t: &Tensor) -> Result<f64> {
    if t.elem_count() != 1 {
        return Err(Error::Data(format!(
            "the model's loss must be a scalar, found shape {:?}",
            t.dims()
        )));
    }
    Ok(match t.dtype() {
        DType::F32 => t.to_scalar::<f32>()? as f64,
        DType::F64 => t.to_scalar::<f64>()?,
        _ => t.to_f64_vec()[0],
    })
}

/// Whether every value of `t` is finite (float tensors; integer tensors always are).
fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(match t.dtype() {
        DType::F32 => t.contiguous_slice::<f32>()?.iter().all(|v| v.is_finite()),
        DType::F64 => t.contiguous_slice::<f64>()?.iter().all(|v| v.is_finite()),
        d if d.is_float() => t
            .to_dtype(DType::F32)?
            .contiguous_slice::<f32>()?
            .iter()
            .all(|v| v.is_finite()),
        _ => true,
    })
}

fn seconds_since_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Trainer {
    /// A trainer for `model` (a `Box<dyn Model>` or an `Arc`), updated by `optimizer` (built over
    /// the model's parameters), configured by `config` (validated here: a bad value is an error
    /// naming it).
    pub fn new(
        model: impl Into<Arc<dyn Model>>,
        optimizer: Box<dyn Optimizer>,
        config: TrainConfig,
    ) -> Result<Trainer> {
        config.validate()?;
        let lr = optimizer.lr();
        if !(lr >= 0.0 && lr.is_finite()) {
            return Err(Error::config("optimizer", "lr", lr, "must be >= 0 and finite"));
        }
        let model: Arc<dyn Model> = model.into();
        let params = distinct_params(&*model);
        Ok(Trainer {
            rng: TensorRng::new(config.seed),
            model,
            optimizer,
            config,
            collective: Arc::new(SingleProcess),
            callbacks: Vec::new(),
            params,
            state: RunState::default(),
            writer: None,
            buckets: None,
            exposed_communication: std::time::Duration::ZERO,
            last_checkpoint_step: None,
        })
    }

    /// The number of data-parallel replicas (1 for a single process).
    pub fn world_size(&self) -> usize {
        self.collective.world_size()
    }

    /// Communication of the data-parallel run so far: seconds the collective was busy, and
    /// seconds the training loop waited for it after backward passes (the part not hidden
    /// behind computation). `None` for a single process.
    pub fn communication_seconds(&self) -> Option<(f64, f64)> {
        (self.collective.world_size() > 1).then(|| {
            (
                self.collective.busy_seconds(),
                self.exposed_communication.as_secs_f64(),
            )
        })
    }

    /// Use `collective` to average gradients across data-parallel replicas (default:
    /// [`SingleProcess`]). Each replica reads its shard of the data; only rank 0 writes files.
    pub fn with_collective(mut self, collective: Arc<dyn Collective>) -> Trainer {
        self.collective = collective;
        self
    }

    /// Add a callback (builder form).
    pub fn with_callback(mut self, callback: impl Callback + 'static) -> Trainer {
        self.callbacks.push(Box::new(callback));
        self
    }

    /// Add a callback.
    pub fn add_callback(&mut self, callback: impl Callback + 'static) {
        self.callbacks.push(Box::new(callback));
    }

    /// The model.
    pub fn model(&self) -> &Arc<dyn Model> {
        &self.model
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &dyn Optimizer {
        &*self.optimizer
    }

    /// The optimizer, mutably.
    pub fn optimizer_mut(&mut self) -> &mut dyn Optimizer {
        &mut *self.optimizer
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Change the configuration (validated). Changing `batch_size`, `grad_accum_steps`, `seed`,
    /// `shuffle` or `drop_last` in the middle of an epoch changes the data the rest of the epoch
    /// sees.
    pub fn set_config(&mut self, config: TrainConfig) -> Result<()> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Optimizer steps taken.
    pub fn step(&self) -> usize {
        self.state.step
    }

    /// The current epoch (0-based).
    pub fn epoch(&self) -> usize {
        self.state.epoch
    }

    /// Batches of the current epoch already consumed.
    pub fn batch_offset(&self) -> usize {
        self.state.batch_offset
    }

    /// The history so far.
    pub fn history(&self) -> &History {
        &self.state.history
    }

    /// The trainer's generator (seeded from the config's seed; saved in checkpoints), for
    /// randomness a training script wants resumed exactly.
    pub fn rng_mut(&mut self) -> &mut TensorRng {
        &mut self.rng
    }

    /// What every replica of a data-parallel run must share, one `key: value` per line: the
    /// training configuration (without the run directory and the display settings), the data
    /// and the parameter shapes ([`Collective::agree`] compares them before the first step).
    fn replica_description(&self, data: String) -> String {
        let mut lines = vec![
            format!("model: {}", self.model.name()),
            format!("step: {}", self.state.step),
        ];
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&self.config) {
            for (k, v) in fields {
                if !matches!(
                    k.as_str(),
                    "out_dir" | "progress" | "prefetch" | "tensorboard" | "plot"
                ) {
                    lines.push(format!("{k}: {v}"));
                }
            }
        }
        lines.push(format!("data: {data}"));
        for p in &self.params {
            let v = p.value();
            lines.push(format!(
                "parameter {}: {:?} {}{}",
                p.name(),
                v.dims(),
                v.dtype(),
                if p.requires_grad() { "" } else { " (frozen)" }
            ));
        }
        lines.join("\n")
    }

    fn out_dir(&self) -> Option<&Path> {
        if self.collective.rank() == 0 {
            self.config.out_dir.as_deref()
        } else {
            None
        }
    }

    fn unit(&self) -> &'static str {
        if self.model.task() == Task::ImageClassification {
            "img/s"
        } else {
            "samples/s"
        }
    }

    /// Train on `train` until the configured number of epochs or steps, validating on `val` at
    /// the end of every epoch. Continues from where the trainer stands (after [`Trainer::resume`],
    /// from the checkpoint). Returns the whole history.
    pub fn fit(&mut self, train: &dyn Dataset, val: Option<&dyn Dataset>) -> Result<History> {
        self.config.validate()?;
        let (rank, world) = (self.collective.rank(), self.collective.world_size());
        let source = TrainSource::dataset(train, &self.config, rank, world);
        self.fit_source(source, val)
    }

    /// As [`Trainer::fit`], reading training batches from a kiln-data [`Pipeline`] (`tf.data`
    /// style: streamed, shuffled, prefetched as its stages say). The pipeline decides the
    /// batches, their size and their order (the configuration's `batch_size`, `shuffle`,
    /// `seed`, `drop_last` and `prefetch` apply to `val` only); an epoch of the run is epoch `e`
    /// of the pipeline, and its length may be unknown (a filter, an iterator source). With
    /// several replicas, replica `r` of `W` reads the pipeline's batches `r`, `r + W`, ...
    /// A checkpoint stores the pipeline's position; [`Trainer::resume`] then `fit_pipeline`
    /// with the same pipeline continues with the batch that came next, without reading the
    /// ones before it where the stages allow ([`kiln_data::Pipeline::iter_from`]).
    pub fn fit_pipeline(
        &mut self,
        train: &Pipeline<kiln_data::Batch>,
        val: Option<&dyn Dataset>,
    ) -> Result<History> {
        self.config.validate()?;
        let (rank, world) = (self.collective.rank(), self.collective.world_size());
        let source = TrainSource::pipeline(train, rank, world);
        self.fit_source(source, val)
    }

    fn fit_source(&mut self, source: Result<TrainSource<'_>>, val: Option<&dyn Dataset>) -> Result<History> {
        let result = source.and_then(|source| self.fit_inner(&source, val));
        // Wait for background checkpoints even when training failed, so files are complete.
        let flushed = match self.writer.take() {
            Some(mut w) => w.wait().map(|_| ()),
            None => Ok(()),
        };
        result?;
        flushed?;
        if let Some(dir) = self.out_dir() {
            let path = dir.join(HISTORY_FILE);
            let json =
                serde_json::to_vec_pretty(&self.state.history).map_err(|e| Error::io(&path, e.into()))?;
            std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
            if self.config.plot {
                crate::plot::plot_history(&self.state.history, dir.join(CURVES_FILE))?;
            }
        }
        Ok(self.state.history.clone())
    }

    fn fit_inner(&mut self, source: &TrainSource<'_>, val: Option<&dyn Dataset>) -> Result<()> {
        let cfg = self.config.clone();
        let world = self.collective.world_size();
        let rank = self.collective.rank();
        let fingerprint = source.fingerprint();
        // Mid-epoch, the position only means something for the same data order; at an epoch
        // boundary any data can follow.
        let mid_epoch = self.state.batch_offset > 0;
        let then_world = replicas_in(&self.state.data_fingerprint).unwrap_or(world);
        if mid_epoch && then_world != world {
            // Continuing on another number of replicas: the position counts this replica's
            // batches, so it scales with the replicas (the run's micro-batches are the same).
            let consumed = self.state.batch_offset * then_world;
            if !consumed.is_multiple_of(world) {
                return Err(Error::Data(format!(
                    "fit: the run stopped after {consumed} batches of epoch {} on {then_world} replicas, which {world} replicas cannot split evenly; resume on {then_world} replicas (or a number dividing {consumed})",
                    self.state.epoch + 1
                )));
            }
            self.state.batch_offset = consumed / world;
            self.state.data_fingerprint = self
                .state
                .data_fingerprint
                .replace(&format!("replicas={then_world})"), &format!("replicas={world})"));
        }
        if mid_epoch && !self.state.data_fingerprint.is_empty() && self.state.data_fingerprint != fingerprint
        {
            return Err(Error::Data(format!(
                "fit: the run's data position belongs to {}, but this run reads {fingerprint} (a different dataset or data settings than before the checkpoint?)",
                self.state.data_fingerprint
            )));
        }
        self.state.data_fingerprint = fingerprint;
        if let Some(num_batches) = source.batches_in(self.state.epoch) {
            if self.state.batch_offset > num_batches {
                return Err(Error::Data(format!(
                    "fit: the run stands at batch {} of epoch {}, but the training data has only {num_batches} batches per epoch (a different dataset than before the checkpoint?)",
                    self.state.batch_offset,
                    self.state.epoch + 1
                )));
            }
        }
        let accum = cfg.grad_accum_steps;
        if world > 1 {
            self.collective.agree(
                "the run's configuration",
                &self.replica_description(source.fingerprint()),
            )?;
        }
        if self.state.step == 0 {
            self.collective.broadcast_parameters(&self.params, 0)?;
        }
        let trainable: Vec<Param> = self
            .params
            .iter()
            .filter(|p| p.requires_grad())
            .cloned()
            .collect();
        self.buckets = (world > 1 && accum == 1).then(|| BucketPlan::new(&trainable, BUCKET_BYTES));

        let mut logs = match self.out_dir() {
            Some(dir) => {
                let logs = RunLogs::open(
                    dir,
                    (self.state.step > 0).then_some(self.state.step),
                    cfg.tensorboard,
                )?;
                self.writer = Some(CheckpointWriter::start(&dir.join(CHECKPOINTS_DIR))?);
                Some(logs)
            }
            None => None,
        };
        let mut progress = if rank == 0 {
            Progress::new(cfg.progress)
        } else {
            Progress::new(crate::config::ProgressMode::Off)
        };
        if let Some(l) = logs.as_ref().filter(|l| l.dropped > 0) {
            progress.message(&format!(
                "{}: dropped {} entries logged after step {} (the run resumes from its checkpoint there)",
                METRICS_FILE, l.dropped, self.state.step
            ));
        }
        let epochs = cfg.epochs.unwrap_or(usize::MAX);
        let max_steps = cfg.max_steps.unwrap_or(usize::MAX);
        let mut stop: Option<String> = None;
        let mut checkpoint_wanted = false;
        self.run_callbacks(
            |cb, ctx| cb.on_train_begin(ctx),
            &mut stop,
            &mut checkpoint_wanted,
        )?;

        // Throughput counts what this call processed (a resumed window's earlier part ran before).
        let mut window_start = Instant::now();
        let mut window_samples = 0usize;
        let mut window_tokens = 0usize;
        while self.state.epoch < epochs && self.state.step < max_steps && stop.is_none() {
            let epoch = self.state.epoch;
            let epoch_start = Instant::now();
            source.check_epoch(epoch)?;
            // 0: an epoch of unknown length (a streamed pipeline).
            let steps_per_epoch = source.batches_in(epoch).map_or(0, |n| n.div_ceil(accum));
            if self.state.batch_offset == 0 {
                self.state.epoch_metrics = MetricAccumulator::new();
                self.state.epoch_seconds = 0.0;
                self.run_callbacks(
                    |cb, ctx| cb.on_epoch_begin(epoch, ctx),
                    &mut stop,
                    &mut checkpoint_wanted,
                )?;
            }
            progress.epoch_begin(
                epoch,
                cfg.epochs,
                steps_per_epoch,
                self.state.batch_offset.div_ceil(accum),
            );
            self.model.set_training(true);
            let epoch_finished = std::thread::scope(|scope| -> Result<bool> {
                let mut batches = source.open(scope, epoch, self.state.batch_offset)?;
                let mut acc: Option<GradAccumulator> = None;
                let mut single: Option<Gradients> = None;
                let (mut micro, mut step_loss, mut step_samples) = (0usize, 0.0f64, 0usize);
                while let Some(batch) = batches.next() {
                    let batch = batch?;
                    if micro == 0 && !self.callbacks.is_empty() {
                        let b = batches.position() - 1;
                        self.run_callbacks(
                            |cb, ctx| cb.on_batch_begin(b, ctx),
                            &mut stop,
                            &mut checkpoint_wanted,
                        )?;
                    }
                    window_tokens += self.model.tokens_in(&batch.inputs).unwrap_or(0);
                    match self.train_batch(batch)? {
                        Some((grads, loss, n)) => {
                            step_loss += loss * n as f64;
                            step_samples += n;
                            window_samples += n;
                            micro += 1;
                            if accum == 1 {
                                single = Some(grads);
                            } else {
                                acc.get_or_insert_with(GradAccumulator::new).add(grads)?;
                            }
                        }
                        None => progress.message(&format!(
                            "step {}: non-finite loss, batch {} skipped (--on-nan skip-batch)",
                            self.state.step + 1,
                            batches.position() - 1
                        )),
                    }
                    let pos = batches.position();
                    if micro == 0 || (micro < accum && !batches.finished()) {
                        continue;
                    }
                    let mut grads = match single.take() {
                        Some(g) => g,
                        None => acc.take().unwrap_or_default().finish()?,
                    };
                    let Some((lr, grad_norm)) = self.apply_step(&trainable, &mut grads)? else {
                        progress.message(&format!(
                            "step {}: non-finite gradient norm, update skipped (--on-nan skip-batch)",
                            self.state.step + 1
                        ));
                        (micro, step_loss, step_samples) = (0, 0.0, 0);
                        continue;
                    };
                    drop(grads);
                    self.state.step += 1;
                    self.state.batch_offset = pos;
                    let step = self.state.step;
                    let step_in_epoch = pos.div_ceil(accum);
                    if !self.callbacks.is_empty() {
                        let end = StepEnd {
                            step,
                            epoch,
                            batch: pos,
                            loss: step_loss / step_samples.max(1) as f64,
                            lr,
                            samples: step_samples,
                        };
                        self.run_callbacks(
                            |cb, ctx| cb.on_batch_end(&end, ctx),
                            &mut stop,
                            &mut checkpoint_wanted,
                        )?;
                    }
                    (micro, step_loss, step_samples) = (0, 0.0, 0);
                    progress.step(step_in_epoch);
                    if step.is_multiple_of(cfg.log_every_steps) {
                        let m = self.state.window_metrics.metrics();
                        let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                        let rec = StepLog {
                            step,
                            epoch,
                            loss: m.loss,
                            accuracy: m.accuracy,
                            lr,
                            samples_per_sec: window_samples as f64 / secs,
                            tokens_per_sec: (window_tokens > 0).then(|| window_tokens as f64 / secs),
                            grad_norm,
                            extra: m.extra,
                        };
                        progress.log(&ProgressLine {
                            epoch,
                            step_in_epoch,
                            steps_per_epoch,
                            loss: rec.loss,
                            accuracy: rec.accuracy,
                            samples_per_sec: rec.tokens_per_sec.unwrap_or(rec.samples_per_sec),
                            unit: if rec.tokens_per_sec.is_some() {
                                "tok/s"
                            } else {
                                self.unit()
                            },
                            lr_and_norm: rec.grad_norm.map(|g| (lr, g)),
                        });
                        if let Some(l) = &mut logs {
                            l.step(&rec)?;
                        }
                        self.state.history.steps.push(rec);
                        self.state.window_metrics = MetricAccumulator::new();
                        window_start = Instant::now();
                        window_samples = 0;
                        window_tokens = 0;
                    }
                    if let (Some(every), Some(v)) = (cfg.eval_every_steps, val) {
                        if step.is_multiple_of(every) {
                            let log = crate::metrics::ValLog {
                                step,
                                val: self.evaluate(v)?,
                            };
                            self.model.set_training(true);
                            progress.message(&format!(
                                "step {step}: val loss {:.4}{}",
                                log.val.loss,
                                extra_summary(&log.val.extra, "val_")
                            ));
                            if let Some(l) = &mut logs {
                                l.validation(&log)?;
                            }
                            self.state.history.validations.push(log);
                            // Evaluation time is not training throughput.
                            window_start = Instant::now();
                            window_samples = 0;
                            window_tokens = 0;
                        }
                    }
                    let epoch_done = batches.finished();
                    let every = cfg.checkpoint_every_steps.is_some_and(|n| step.is_multiple_of(n));
                    // At an epoch's end the epoch checkpoint (after validation) takes its place.
                    if (every && !(epoch_done && cfg.checkpoint_every_epoch)) || checkpoint_wanted {
                        checkpoint_wanted = false;
                        self.checkpoint_async()?;
                    }
                    if step >= max_steps || stop.is_some() {
                        break;
                    }
                }
                Ok(batches.finished())
            })?;
            self.state.epoch_seconds += epoch_start.elapsed().as_secs_f64();
            if !epoch_finished {
                // Stopped within the epoch (max_steps or a callback).
                break;
            }
            // The epoch is complete.
            let val_metrics = match val {
                Some(v) => Some(self.evaluate(v)?),
                None => None,
            };
            self.model.set_training(true);
            let em = EpochMetrics {
                epoch,
                step: self.state.step,
                train: self.state.epoch_metrics.metrics(),
                val: val_metrics,
                lr: self.optimizer.lr(),
                seconds: self.state.epoch_seconds,
            };
            self.state.history.epochs.push(em.clone());
            self.state.epoch += 1;
            self.state.batch_offset = 0;
            self.state.epoch_metrics = MetricAccumulator::new();
            self.state.epoch_seconds = 0.0;
            progress.message(&epoch_summary(&em, cfg.epochs));
            if let Some(l) = &mut logs {
                l.epoch(&em)?;
            }
            self.run_callbacks(
                |cb, ctx| cb.on_epoch_end(&em, ctx),
                &mut stop,
                &mut checkpoint_wanted,
            )?;
            if cfg.checkpoint_every_epoch || checkpoint_wanted {
                checkpoint_wanted = false;
                self.checkpoint_async()?;
            }
        }
        progress.finish();
        if let Some(reason) = &stop {
            progress.message(reason);
            self.state.history.stopped_early = Some(reason.clone());
        }
        if (cfg.checkpoint_at_end || checkpoint_wanted) && self.last_checkpoint_step != Some(self.state.step)
        {
            self.checkpoint_async()?;
        }
        let history = self.state.history.clone();
        self.run_callbacks(
            |cb, ctx| cb.on_train_end(&history, ctx),
            &mut stop,
            &mut checkpoint_wanted,
        )?;
        Ok(())
    }

    /// Call `f` on every callback with a fresh context, collecting stop and checkpoint requests.
    fn run_callbacks(
        &mut self,
        mut f: impl FnMut(&mut dyn Callback, &mut CallbackContext<'_>) -> Result<()>,
        stop: &mut Option<String>,
        checkpoint: &mut bool,
    ) -> Result<()> {
        if self.callbacks.is_empty() {
            return Ok(());
        }
        let out_dir = if self.collective.rank() == 0 {
            self.config.out_dir.clone()
        } else {
            None
        };
        let mut ctx = CallbackContext::new(
            self.state.step,
            self.state.epoch,
            self.optimizer.lr(),
            &*self.model,
            out_dir.as_deref(),
        );
        for cb in &mut self.callbacks {
            f(&mut **cb, &mut ctx)?;
        }
        if let Some(reason) = ctx.stop.take() {
            stop.get_or_insert(reason);
        }
        *checkpoint |= ctx.checkpoint;
        Ok(())
    }

    /// Where the model's parameters live (the CPU for a model without any): batches are copied
    /// there before the forward pass, so a model built on a GPU trains from host data.
    fn model_device(&self) -> kiln_tensor::Device {
        self.model
            .parameters()
            .first()
            .map_or(kiln_tensor::Device::Cpu, |p| p.value().device())
    }

    /// Forward and backward on one training batch; updates the running metrics. Returns the
    /// gradients, the batch's mean loss and its size, or `None` for a batch with a non-finite
    /// loss under [`OnNan::SkipBatch`] (under [`OnNan::Stop`] it is an [`Error::Diverged`]).
    fn train_batch(&mut self, batch: kiln_data::Batch) -> Result<Option<(Gradients, f64, usize)>> {
        let _precision = kiln_tensor::set_matmul_precision(self.config.precision);
        let n = batch.len();
        let targets = batch
            .targets
            .ok_or_else(|| Error::Data("fit: the training dataset has no targets".into()))?;
        let device = self.model_device();
        let model = &*self.model;
        let forward = || -> Result<(kiln_zoo::Output, Var, f64)> {
            let out = model.forward(&kiln_zoo::Batch {
                inputs: batch.inputs.to_device(device)?,
                targets: Some(targets.to_device(device)?),
            })?;
            let loss: Var = out.loss.clone().ok_or_else(|| {
                Error::Data(format!(
                    "fit: model {} returned no loss for a batch with targets",
                    model.name()
                ))
            })?;
            let lv = scalar(loss.value())?;
            Ok((out, loss, lv))
        };
        let (out, lv, grads) = match &self.buckets {
            // One process: the step's many small kernels start from inside the thread pool.
            None => kiln_autograd::in_pool(|| -> Result<_> {
                let (out, loss, lv) = forward()?;
                let grads = if lv.is_finite() {
                    Some(loss.backward()?)
                } else {
                    None
                };
                Ok((out, lv, grads))
            })?,
            // Data parallel: each bucket's mean starts as soon as its gradients are complete
            // (on this thread, which talks to the collective).
            Some(plan) => {
                let (out, loss, lv) = forward()?;
                let grads = if lv.is_finite() {
                    let mut reduction = Reduction::new(plan, &*self.collective);
                    let mut grads = loss.backward_streaming(&loss.value().ones_like()?, &mut |leaf, g| {
                        reduction.ready(leaf, g);
                        Ok(())
                    })?;
                    self.exposed_communication += reduction.finish(&mut grads)?;
                    Some(grads)
                } else {
                    None
                };
                (out, lv, grads)
            }
        };
        let Some(grads) = grads else {
            return self.non_finite(format!("the loss is {lv}"));
        };
        let mut batch_metrics = MetricAccumulator::new();
        batch_metrics.add(lv, n, Some(out.logits.value()), Some(&targets), false)?;
        batch_metrics.add_tallies(&out.tallies);
        self.state.epoch_metrics.merge(&batch_metrics);
        self.state.window_metrics.merge(&batch_metrics);
        Ok(Some((grads, lv, n)))
    }

    /// What a non-finite `what` does to the coming step: an [`Error::Diverged`] naming it under
    /// [`OnNan::Stop`], `None` (skip) under [`OnNan::SkipBatch`].
    fn non_finite<T>(&self, what: String) -> Result<Option<T>> {
        match self.config.on_nan {
            OnNan::Stop => Err(Error::Diverged {
                step: self.state.step + 1,
                what,
            }),
            OnNan::SkipBatch => Ok(None),
        }
    }

    /// Reduce across replicas, clip, schedule and step. Returns the learning rate used and the
    /// gradient norm before clipping (when clipping is on), or `None` when the gradient norm is
    /// not finite under [`OnNan::SkipBatch`] (no update; under [`OnNan::Stop`] it is an
    /// [`Error::Diverged`]).
    fn apply_step(
        &mut self,
        trainable: &[Param],
        grads: &mut Gradients,
    ) -> Result<Option<(f64, Option<f64>)>> {
        // The one place where gradients cross replicas (already done, bucket by bucket, during
        // the backward pass when there is no accumulation).
        if self.buckets.is_none() {
            self.collective.all_reduce_gradients(trainable, grads)?;
        }
        let (norm, clipped) = match self.config.clip_grad_norm {
            Some(max) => {
                let n = clip_grad_norm(trainable, grads, max)?;
                (n, Some(n))
            }
            None => (grad_norm(trainable, grads)?, None),
        };
        if !norm.is_finite() {
            return self.non_finite(format!("the gradient norm is {norm}"));
        }
        if let Some(s) = &self.config.schedule {
            s.apply(&mut *self.optimizer);
        }
        let lr = self.optimizer.lr();
        self.optimizer.step(grads)?;
        Ok(Some((lr, clipped)))
    }

    /// Evaluate on `data` (which must have targets): mean loss, and accuracy and top-5 accuracy
    /// for classification. Runs in eval mode without recording a graph; the model's training
    /// mode is restored afterwards.
    pub fn evaluate(&self, data: &dyn Dataset) -> Result<Metrics> {
        let _no_grad = kiln_autograd::no_grad();
        let _precision = kiln_tensor::set_matmul_precision(self.config.precision);
        self.model.set_training(false);
        let result = (|| {
            let loader = DataLoader::new(data, self.config.eval_batch_size())?.prefetch(self.config.prefetch);
            let mut acc = MetricAccumulator::new();
            std::thread::scope(|scope| -> Result<()> {
                for batch in loader.iter_from_scoped(scope, 0, 0)? {
                    let batch = batch?;
                    let n = batch.len();
                    let targets = batch
                        .targets
                        .ok_or_else(|| Error::Data("evaluate: the dataset has no targets".into()))?;
                    let device = self.model_device();
                    let out = self.model.forward(&kiln_zoo::Batch {
                        inputs: batch.inputs.to_device(device)?,
                        targets: Some(targets.to_device(device)?),
                    })?;
                    let loss = out.loss.ok_or_else(|| {
                        Error::Data(format!(
                            "evaluate: model {} returned no loss for a batch with targets",
                            self.model.name()
                        ))
                    })?;
                    acc.add(
                        scalar(loss.value())?,
                        n,
                        Some(out.logits.value()),
                        Some(&targets),
                        true,
                    )?;
                    acc.add_tallies(&out.tallies);
                }
                Ok(())
            })?;
            Ok(acc.metrics())
        })();
        self.model.set_training(true);
        result
    }

    /// Run the model (eval mode, no gradients) on the first batch of `data`, so that a dataset
    /// it cannot take (labels out of its range, examples of another size, no targets, no
    /// examples) is an error before training rather than at the evaluation after it. Changes
    /// nothing: no weights, statistics or random state.
    pub fn check_data(&self, data: &dyn Dataset) -> Result<()> {
        if data.is_empty() {
            return Err(Error::Data("the evaluation dataset holds no example".into()));
        }
        let head = FirstExamples {
            data,
            len: data.len().min(self.config.eval_batch_size()),
        };
        self.evaluate(&head).map(|_| ())
    }

    /// The model's outputs (logits) for every example of `data`, in order, concatenated along
    /// the first dimension. Runs in eval mode without recording a graph; targets are ignored.
    pub fn predict(&self, data: &dyn Dataset) -> Result<Tensor> {
        let _no_grad = kiln_autograd::no_grad();
        let _precision = kiln_tensor::set_matmul_precision(self.config.precision);
        self.model.set_training(false);
        let result = (|| {
            let loader = DataLoader::new(data, self.config.eval_batch_size())?.prefetch(self.config.prefetch);
            let mut outs = Vec::with_capacity(loader.num_batches());
            std::thread::scope(|scope| -> Result<()> {
                for batch in loader.iter_from_scoped(scope, 0, 0)? {
                    let batch = batch?;
                    let out = self.model.forward(&kiln_zoo::Batch {
                        inputs: batch.inputs.to_device(self.model_device())?,
                        targets: None,
                    })?;
                    outs.push(out.logits.value().clone());
                }
                Ok(())
            })?;
            if outs.is_empty() {
                return Err(Error::Data("predict: the dataset is empty".into()));
            }
            Ok(Tensor::cat(&outs, 0)?)
        })();
        self.model.set_training(true);
        result
    }

    fn trainer_state(&self) -> TrainerState {
        let mut callbacks = BTreeMap::new();
        for cb in &self.callbacks {
            if let Some(s) = cb.state() {
                callbacks.insert(cb.name().to_string(), s);
            }
        }
        TrainerState {
            format: STATE_FORMAT.to_string(),
            version: STATE_VERSION,
            step: self.state.step,
            epoch: self.state.epoch,
            batch_offset: self.state.batch_offset,
            data: Some(kiln_data::PipelineState {
                epoch: self.state.epoch as u64,
                offset: self.state.batch_offset as u64,
                fingerprint: self.state.data_fingerprint.clone(),
            }),
            rng: RngState::of(&self.rng),
            config: self.config.clone(),
            model: ModelInfo {
                name: self.model.name().to_string(),
                config: self.model.config(),
            },
            history: self.state.history.clone(),
            epoch_metrics: self.state.epoch_metrics.clone(),
            window_metrics: self.state.window_metrics.clone(),
            epoch_seconds: self.state.epoch_seconds,
            callbacks,
            files: BTreeMap::new(),
            wall_time: seconds_since_epoch(),
        }
    }

    fn checkpoint_job(&self, root: PathBuf) -> Result<CheckpointJob> {
        // Never a checkpoint with non-finite weights (an update can overflow with a finite loss
        // and gradient).
        for p in &self.params {
            if !all_finite(&p.value())? {
                return Err(Error::Diverged {
                    step: self.state.step,
                    what: format!("parameter {} holds non-finite values after this step", p.name()),
                });
            }
        }
        Ok(CheckpointJob {
            root,
            // Tensors are immutable handles: these are snapshots, whatever training does next.
            model: self
                .params
                .iter()
                .map(|p| (p.name().to_string(), p.value()))
                .collect(),
            optimizer: self.optimizer.state_tensors()?,
            state: self.trainer_state(),
            keep_last: self.config.keep_last,
        })
    }

    /// Queue a checkpoint of the current state on the background writer (rank 0 with an
    /// `out_dir` only).
    fn checkpoint_async(&mut self) -> Result<()> {
        let Some(dir) = self.out_dir() else {
            return Ok(());
        };
        let job = self.checkpoint_job(dir.join(CHECKPOINTS_DIR))?;
        if let Some(w) = &self.writer {
            w.submit(job)?;
        } else {
            checkpoint::write_checkpoint(job)?;
        }
        self.last_checkpoint_step = Some(self.state.step);
        Ok(())
    }

    /// Write a checkpoint of the current state now and wait for it, under `dir/checkpoints/`
    /// (`dir` defaults to the config's `out_dir`; one of them is needed). Returns its directory.
    pub fn save_checkpoint(&mut self, dir: Option<&Path>) -> Result<PathBuf> {
        let dir = match dir.or(self.config.out_dir.as_deref()) {
            Some(d) => d.to_path_buf(),
            None => {
                return Err(Error::config(
                    "TrainConfig",
                    "out_dir",
                    "null",
                    "save_checkpoint needs a directory (pass one or set out_dir)",
                ))
            }
        };
        let job = self.checkpoint_job(dir.join(CHECKPOINTS_DIR))?;
        let path = checkpoint::write_checkpoint(job)?;
        self.last_checkpoint_step = Some(self.state.step);
        Ok(path)
    }

    /// Load only the model's weights from a safetensors file (every parameter must be present
    /// with its shape). A missing, corrupt or foreign file is an error naming it.
    pub fn load_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let weights = kiln_tensor::io::load_safetensors(path)?;
        kiln_nn::load_state_dict(&self.params, &weights, true)
            .map_err(|e| Error::checkpoint(path, format!("does not fit model {}: {e}", self.model.name())))?;
        Ok(())
    }

    /// Resume from `dir`: a checkpoint directory (`.../step-XXXXXXXX`), or a run directory (or
    /// its `checkpoints/`), whose newest complete checkpoint is used — incomplete or damaged ones
    /// are skipped. Restores the weights, the optimizer state, and the trainer's position (step,
    /// epoch, batch within the epoch), generator, history and callback states, so that `fit`
    /// continues exactly as the interrupted run would have. Returns the checkpoint used.
    ///
    /// The checkpoint must come from the same model and the same data settings (`batch_size`,
    /// `grad_accum_steps`, `seed`, `shuffle`, `drop_last`); anything else is an error and
    /// nothing is changed.
    pub fn resume(&mut self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        Ok(self.resume_reporting(dir)?.0)
    }

    /// [`Trainer::resume`], also returning the newer checkpoints that were skipped, each with
    /// why (incomplete or damaged), so that a fallback to an older one can be reported.
    pub fn resume_reporting(&mut self, dir: impl AsRef<Path>) -> Result<(PathBuf, Vec<(PathBuf, String)>)> {
        let dir = dir.as_ref();
        let (ckpt, skipped) = if dir.join(STATE_FILE).is_file() {
            (dir.to_path_buf(), Vec::new())
        } else {
            let scan = checkpoint::scan_checkpoints(dir)?;
            match scan.latest {
                Some(p) => (p, scan.skipped),
                None => {
                    return Err(Error::NoCheckpoint {
                        dir: dir.to_path_buf(),
                        skipped: scan.skipped,
                    })
                }
            }
        };
        self.restore(&ckpt)?;
        Ok((ckpt, skipped))
    }

    fn restore(&mut self, path: &Path) -> Result<()> {
        let ck = checkpoint::load_checkpoint(path)?;
        let st = &ck.state;
        let bad = |reason: String| Error::checkpoint(path, reason);
        if st.model.name != self.model.name() {
            return Err(bad(format!(
                "written for model {}, this trainer trains {}",
                st.model.name,
                self.model.name()
            )));
        }
        let (a, b) = (&st.config, &self.config);
        // A run may continue on another number of replicas if the micro-batches of a step stay
        // the same (2 replicas × 1 accumulation step ≡ 1 process × 2).
        let then_world = st
            .data
            .as_ref()
            .and_then(|d| replicas_in(&d.fingerprint))
            .unwrap_or(1);
        let now_world = self.collective.world_size();
        for (field, then, now) in [
            ("batch_size", a.batch_size as u64, b.batch_size as u64),
            (
                "grad_accum_steps × replicas",
                (a.grad_accum_steps * then_world) as u64,
                (b.grad_accum_steps * now_world) as u64,
            ),
            ("seed", a.seed, b.seed),
            ("shuffle", a.shuffle as u64, b.shuffle as u64),
            ("drop_last", a.drop_last as u64, b.drop_last as u64),
        ] {
            if then != now {
                return Err(bad(format!(
                    "the run used {field} = {then}, this trainer has {now}; resuming needs the same data settings"
                )));
            }
        }
        let rng = st.rng.to_rng().map_err(|e| bad(format!("{STATE_FILE}: {e}")))?;
        let data_fingerprint = match &st.data {
            Some(d) if (d.epoch, d.offset) != (st.epoch as u64, st.batch_offset as u64) => {
                return Err(bad(format!(
                    "{STATE_FILE}: the data position (epoch {}, offset {}) disagrees with epoch {} and batch_offset {}",
                    d.epoch, d.offset, st.epoch, st.batch_offset
                )))
            }
            Some(d) => d.fingerprint.clone(),
            None => String::new(),
        };
        let optimizer_step = ck
            .optimizer
            .get(kiln_optim::STEP_KEY)
            .and_then(|s| s.to_f64_vec().first().copied());
        if optimizer_step != Some(st.step as f64) {
            let found = optimizer_step.map_or_else(
                || format!("no '{}' counter", kiln_optim::STEP_KEY),
                |s| format!("step count {s}"),
            );
            return Err(bad(format!(
                "{} holds {found}, but {STATE_FILE} says step {}",
                checkpoint::OPTIMIZER_FILE,
                st.step
            )));
        }
        // Weights first (all-or-nothing by itself), then the optimizer; undo the weights if the
        // optimizer state does not fit, so a failed resume changes nothing.
        let previous: Vec<Tensor> = self.params.iter().map(Param::value).collect();
        kiln_nn::load_state_dict(&self.params, &ck.model, true).map_err(|e| {
            bad(format!(
                "{}: does not fit model {}: {e}",
                checkpoint::MODEL_FILE,
                self.model.name()
            ))
        })?;
        if let Err(e) = self.optimizer.load_state_tensors(&ck.optimizer) {
            for (p, v) in self.params.iter().zip(previous) {
                p.set_value(v);
            }
            return Err(bad(format!("{}: {e}", checkpoint::OPTIMIZER_FILE)));
        }
        for cb in &mut self.callbacks {
            if let Some(s) = st.callbacks.get(cb.name()) {
                cb.load_state(s)?;
            }
        }
        self.rng = rng;
        self.state = RunState {
            step: st.step,
            epoch: st.epoch,
            batch_offset: st.batch_offset,
            data_fingerprint,
            history: st.history.clone(),
            epoch_metrics: st.epoch_metrics.clone(),
            window_metrics: st.window_metrics.clone(),
            epoch_seconds: st.epoch_seconds,
        };
        self.last_checkpoint_step = Some(st.step);
        Ok(())
    }
}

/// `" {prefix}name value"` for each of a model's own metrics, in name order.
fn extra_summary(extra: &std::collections::BTreeMap<String, f64>, prefix: &str) -> String {
    extra
        .iter()
        .map(|(name, v)| format!(" {prefix}{name} {v:.4}"))
        .collect()
}

fn epoch_summary(e: &EpochMetrics, epochs: Option<usize>) -> String {
    let total = epochs.map(|n| format!("/{n}")).unwrap_or_default();
    let mut s = format!("epoch {}{total}: loss {:.4}", e.epoch + 1, e.train.loss);
    if let Some(a) = e.train.accuracy {
        s.push_str(&format!(" acc {a:.4}"));
    }
    s.push_str(&extra_summary(&e.train.extra, ""));
    if let Some(v) = &e.val {
        s.push_str(&format!(" val_loss {:.4}", v.loss));
        if let Some(a) = v.accuracy {
            s.push_str(&format!(" val_acc {a:.4}"));
        }
        if let Some(a) = v.top5 {
            s.push_str(&format!(" val_top5 {a:.4}"));
        }
        s.push_str(&extra_summary(&v.extra, "val_"));
    }
    s.push_str(&format!(" ({:.1} s)", e.seconds));
    s
}

/// The first `len` examples of a dataset.
struct FirstExamples<'a> {
    data: &'a dyn Dataset,
    len: usize,
}

impl Dataset for FirstExamples<'_> {
    fn len(&self) -> usize {
        self.len
    }
    /// The loader asks only for indices below `len`, which the wrapped dataset holds.
    fn get_batch(&self, indices: &[usize]) -> kiln_data::Result<kiln_data::Batch> {
        self.data.get_batch(indices)
    }
}

/// The number of replicas a data loader's fingerprint records (`None` for fingerprints that do
/// not say).
fn replicas_in(fingerprint: &str) -> Option<usize> {
    fingerprint
        .rsplit_once("replicas=")?
        .1
        .trim_end_matches(')')
        .parse()
        .ok()
}
