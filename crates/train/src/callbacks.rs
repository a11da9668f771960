//! [`Callback`]s: hooks the [`Trainer`](crate::Trainer) calls at the start and end of training,
//! of each epoch and of each step, with [`EarlyStopping`], [`ModelCheckpoint`] and [`LrLogger`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use kiln_zoo::Model;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::metrics::{epoch_metric, EpochMetrics, History};
use crate::{Error, Result};

/// What a callback sees of the run, and how it can steer it.
pub struct CallbackContext<'a> {
    /// Optimizer steps taken so far.
    pub step: usize,
    /// The current epoch (0-based).
    pub epoch: usize,
    /// The optimizer's current learning rate.
    pub lr: f64,
    /// The model being trained.
    pub model: &'a dyn Model,
    /// The run directory, when files are written.
    pub out_dir: Option<&'a Path>,
    pub(crate) stop: Option<String>,
    pub(crate) checkpoint: bool,
}

impl<'a> CallbackContext<'a> {
    pub(crate) fn new(
        step: usize,
        epoch: usize,
        lr: f64,
        model: &'a dyn Model,
        out_dir: Option<&'a Path>,
    ) -> Self {
        CallbackContext {
            step,
            epoch,
            lr,
            model,
            out_dir,
            stop: None,
            checkpoint: false,
        }
    }

    /// Ask the trainer to stop after the current step or epoch, giving the reason (recorded in
    /// [`History::stopped_early`]).
    pub fn request_stop(&mut self, reason: impl Into<String>) {
        self.stop = Some(reason.into());
    }

    /// Whether a stop has been requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_some()
    }

    /// Ask the trainer to write a (resumable) checkpoint now. Needs an `out_dir`.
    pub fn request_checkpoint(&mut self) {
        self.checkpoint = true;
    }
}

/// What a step's end reports to callbacks.
#[derive(Clone, Debug, PartialEq)]
pub struct StepEnd {
    /// Optimizer steps taken, including this one.
    pub step: usize,
    /// The epoch (0-based).
    pub epoch: usize,
    /// Batches of the epoch consumed, including this step's.
    pub batch: usize,
    /// Mean loss over the step's batches.
    pub loss: f64,
    /// The learning rate the step used.
    pub lr: f64,
    /// Examples in the step.
    pub samples: usize,
}

/// Hooks into training. Every method has a default that does nothing; an error from any of them
/// stops training and is returned by `fit`.
///
/// A callback with state that should survive a resume returns it from [`Callback::state`] (saved
/// in `trainer_state.json` under [`Callback::name`]) and takes it back in
/// [`Callback::load_state`].
pub trait Callback {
    /// A name, unique among the trainer's callbacks (keys the saved state).
    fn name(&self) -> &str;
    /// Training starts (also after a resume).
    fn on_train_begin(&mut self, _ctx: &mut CallbackContext<'_>) -> Result<()> {
        Ok(())
    }
    /// An epoch starts (not called when a resumed run continues an epoch in progress).
    fn on_epoch_begin(&mut self, _epoch: usize, _ctx: &mut CallbackContext<'_>) -> Result<()> {
        Ok(())
    }
    /// An optimizer step starts; `batch` is the index in the epoch of its first batch.
    fn on_batch_begin(&mut self, _batch: usize, _ctx: &mut CallbackContext<'_>) -> Result<()> {
        Ok(())
    }
    /// An optimizer step ended.
    fn on_batch_end(&mut self, _logs: &StepEnd, _ctx: &mut CallbackContext<'_>) -> Result<()> {
        Ok(())
    }
    /// An epoch ended (after validation).
    fn on_epoch_end(&mut self, _metrics: &EpochMetrics, _ctx: &mut CallbackContext<'_>) -> Result<()> {
        Ok(())
    }
    /// Training ended.
    fn on_train_end(&mut self, _history: &History, _ctx: &mut CallbackContext<'_>) -> Result<()> {
        Ok(())
    }
    /// State to save with checkpoints.
    fn state(&self) -> Option<serde_json::Value> {
        None
    }
    /// Restore state saved by [`Callback::state`].
    fn load_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// A metric to watch, and whether lower or higher is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    /// Validation loss (lower is better).
    ValLoss,
    /// Validation accuracy (higher is better).
    ValAccuracy,
    /// Training loss over the epoch (lower is better).
    Loss,
    /// Training accuracy over the epoch (higher is better).
    Accuracy,
}

impl Monitor {
    /// The metric's name (`val_loss`, `val_accuracy`, `loss`, `accuracy`).
    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::ValAccuracy => "val_accuracy",
            Monitor::Loss => "loss",
            Monitor::Accuracy => "accuracy",
        }
    }

    /// Whether higher values are better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Monitor::ValAccuracy | Monitor::Accuracy)
    }

    /// Parse a name (`val_loss`, `val_accuracy`/`val_acc`, `loss`, `accuracy`/`acc`).
    pub fn parse(name: &str) -> Result<Monitor> {
        Ok(match name {
            "val_loss" => Monitor::ValLoss,
            "val_accuracy" | "val_acc" => Monitor::ValAccuracy,
            "loss" => Monitor::Loss,
            "accuracy" | "acc" => Monitor::Accuracy,
            _ => {
                return Err(Error::config(
                    "Monitor",
                    "name",
                    name,
                    "known: val_loss, val_accuracy, loss, accuracy",
                ))
            }
        })
    }

    /// The value in an epoch's metrics; an error when the epoch lacks it (e.g. no validation set).
    pub fn value(self, m: &EpochMetrics) -> Result<f64> {
        epoch_metric(m, self.name()).ok_or_else(|| {
            let hint = if matches!(self, Monitor::ValLoss | Monitor::ValAccuracy) {
                "pass a validation dataset to fit"
            } else {
                "the model's outputs have no class targets"
            };
            Error::Data(format!(
                "monitored metric {} is not available at epoch {} ({hint})",
                self.name(),
                m.epoch + 1
            ))
        })
    }

    /// Whether `value` improves on `best` by more than `min_delta`.
    pub fn improves(self, value: f64, best: Option<f64>, min_delta: f64) -> bool {
        match best {
            None => !value.is_nan(),
            Some(b) if self.higher_is_better() => value > b + min_delta,
            Some(b) => value < b - min_delta,
        }
    }
}

/// Stop training when a monitored metric has not improved by more than `min_delta` for
/// `patience` consecutive epochs (Keras's `EarlyStopping`).
#[derive(Clone, Debug)]
pub struct EarlyStopping {
    monitor: Monitor,
    patience: usize,
    min_delta: f64,
    best: Option<f64>,
    wait: usize,
    stopped_epoch: Arc<Mutex<Option<usize>>>,
}

impl EarlyStopping {
    /// Watch `monitor`; stop after `patience` epochs without an improvement larger than
    /// `min_delta` (>= 0 and finite, else an error).
    pub fn new(monitor: Monitor, patience: usize, min_delta: f64) -> Result<EarlyStopping> {
        if !(min_delta >= 0.0 && min_delta.is_finite()) {
            return Err(Error::config(
                "EarlyStopping",
                "min_delta",
                min_delta,
                "must be >= 0 and finite",
            ));
        }
        Ok(EarlyStopping {
            monitor,
            patience,
            min_delta,
            best: None,
            wait: 0,
            stopped_epoch: Arc::new(Mutex::new(None)),
        })
    }

    /// The best value seen so far.
    pub fn best(&self) -> Option<f64> {
        self.best
    }

    /// A handle that reads the epoch (0-based) at which this callback stopped training, if it
    /// did; it stays valid after the callback is moved into a trainer.
    pub fn stopped_epoch(&self) -> Arc<Mutex<Option<usize>>> {
        self.stopped_epoch.clone()
    }
}

impl Callback for EarlyStopping {
    fn name(&self) -> &str {
        "early_stopping"
    }

    fn on_epoch_end(&mut self, m: &EpochMetrics, ctx: &mut CallbackContext<'_>) -> Result<()> {
        let v = self.monitor.value(m)?;
        if self.monitor.improves(v, self.best, self.min_delta) {
            self.best = Some(v);
            self.wait = 0;
            return Ok(());
        }
        self.wait += 1;
        if self.wait >= self.patience {
            *self.stopped_epoch.lock().unwrap_or_else(PoisonError::into_inner) = Some(m.epoch);
            ctx.request_stop(format!(
                "early stopping: {} did not improve on {:.6} for {} epochs",
                self.monitor.name(),
                self.best.unwrap_or(f64::NAN),
                self.wait
            ));
        }
        Ok(())
    }

    fn state(&self) -> Option<serde_json::Value> {
        Some(json!({ "best": self.best, "wait": self.wait }))
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.best = state.get("best").and_then(|v| v.as_f64());
        self.wait = state.get("wait").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        Ok(())
    }
}

/// Checkpointing driven by epochs: a resumable trainer checkpoint every `n` epochs, and/or the
/// model's weights written to a file whenever a monitored metric improves (Keras's
/// `ModelCheckpoint(save_best_only=True)`).
#[derive(Clone, Debug)]
pub struct ModelCheckpoint {
    every_epochs: Option<usize>,
    best: Option<(Monitor, PathBuf)>,
    best_value: Option<f64>,
}

impl ModelCheckpoint {
    /// Request a full (resumable) checkpoint every `n` epochs (`n > 0`, else an error).
    pub fn every_epochs(n: usize) -> Result<ModelCheckpoint> {
        if n == 0 {
            return Err(Error::config("ModelCheckpoint", "every_epochs", 0, "must be > 0"));
        }
        Ok(ModelCheckpoint {
            every_epochs: Some(n),
            best: None,
            best_value: None,
        })
    }

    /// Write the model's weights (safetensors) to `path` — relative paths are inside the run
    /// directory — at the end of every epoch where `monitor` improves.
    pub fn best(monitor: Monitor, path: impl Into<PathBuf>) -> ModelCheckpoint {
        ModelCheckpoint {
            every_epochs: None,
            best: Some((monitor, path.into())),
            best_value: None,
        }
    }
}

/// The distinct parameters of a model (tied parameters once).
pub(crate) fn distinct_params(model: &dyn Model) -> Vec<kiln_autograd::Param> {
    let mut out: Vec<kiln_autograd::Param> = Vec::new();
    for p in model.parameters() {
        if !out.iter().any(|q| q.same_as(&p) || q.name() == p.name()) {
            out.push(p);
        }
    }
    out
}

impl Callback for ModelCheckpoint {
    fn name(&self) -> &str {
        "model_checkpoint"
    }

    fn on_epoch_end(&mut self, m: &EpochMetrics, ctx: &mut CallbackContext<'_>) -> Result<()> {
        if let Some(n) = self.every_epochs {
            if (m.epoch + 1).is_multiple_of(n) {
                ctx.request_checkpoint();
            }
        }
        if let Some((monitor, path)) = &self.best {
            let v = monitor.value(m)?;
            if monitor.improves(v, self.best_value, 0.0) {
                self.best_value = Some(v);
                let path = match ctx.out_dir {
                    Some(d) if path.is_relative() => d.join(path),
                    _ => path.clone(),
                };
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                }
                kiln_nn::save_state_dict(&distinct_params(ctx.model), &path)?;
            }
        }
        Ok(())
    }

    fn state(&self) -> Option<serde_json::Value> {
        Some(json!({ "best": self.best_value }))
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.best_value = state.get("best").and_then(|v| v.as_f64());
        Ok(())
    }
}

/// Shared records of an [`LrLogger`]: `(step, learning rate)`.
pub type LrRecords = Arc<Mutex<Vec<(usize, f64)>>>;

/// Record the learning rate every `every` steps (readable through [`LrLogger::records`] while
/// and after training; the trainer also logs it to `metrics.jsonl` and TensorBoard), and
/// optionally print it at each epoch's end.
#[derive(Clone, Debug)]
pub struct LrLogger {
    every: usize,
    print: bool,
    records: LrRecords,
}

impl LrLogger {
    /// Record every `every` steps (`every > 0`, else an error).
    pub fn new(every: usize) -> Result<LrLogger> {
        if every == 0 {
            return Err(Error::config("LrLogger", "every", 0, "must be > 0"));
        }
        Ok(LrLogger {
            every,
            print: false,
            records: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Also print the learning rate at the end of every epoch.
    pub fn print(mut self, on: bool) -> Self {
        self.print = on;
        self
    }

    /// A handle on the records.
    pub fn records(&self) -> LrRecords {
        self.records.clone()
    }
}

impl Callback for LrLogger {
    fn name(&self) -> &str {
        "lr_logger"
    }

    fn on_batch_end(&mut self, logs: &StepEnd, _ctx: &mut CallbackContext<'_>) -> Result<()> {
        if logs.step.is_multiple_of(self.every) {
            self.records
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((logs.step, logs.lr));
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, m: &EpochMetrics, _ctx: &mut CallbackContext<'_>) -> Result<()> {
        if self.print {
            println!("epoch {}: lr {:.6e}", m.epoch + 1, m.lr);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitors() {
        assert!(Monitor::ValLoss.improves(0.5, Some(0.6), 0.05));
        assert!(!Monitor::ValLoss.improves(0.58, Some(0.6), 0.05));
        assert!(Monitor::ValAccuracy.improves(0.9, Some(0.8), 0.0));
        assert!(Monitor::Loss.improves(1.0, None, 0.0));
        assert_eq!(Monitor::parse("val_acc").unwrap(), Monitor::ValAccuracy);
        assert!(Monitor::parse("val_f1")
            .unwrap_err()
            .to_string()
            .contains("val_f1"));
        assert!(EarlyStopping::new(Monitor::ValLoss, 2, -1.0).is_err());
        assert!(ModelCheckpoint::every_epochs(0).is_err());
        assert!(LrLogger::new(0).is_err());
    }
}
