//! The logs of a run directory: `metrics.jsonl` (one JSON object per logging step and per epoch)
//! and TensorBoard event files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::metrics::{EpochMetrics, StepLog};
use crate::tensorboard::EventWriter;
use crate::{Error, Result};

/// The name of the JSON-lines metrics log in a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The open log files of a run directory.
pub(crate) struct RunLogs {
    jsonl_path: PathBuf,
    jsonl: BufWriter<File>,
    events: Option<EventWriter>,
}

impl RunLogs {
    /// Open `dir/metrics.jsonl` (appending when `append`, for a resumed run) and, with
    /// `tensorboard`, a new event file in `dir`.
    pub fn open(dir: &Path, append: bool, tensorboard: bool) -> Result<RunLogs> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let jsonl_path = dir.join(METRICS_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&jsonl_path)
            .map_err(|e| Error::io(&jsonl_path, e))?;
        let events = if tensorboard {
            Some(EventWriter::create(dir)?)
        } else {
            None
        };
        Ok(RunLogs {
            jsonl_path,
            jsonl: BufWriter::new(file),
            events,
        })
    }

    fn line(&mut self, v: serde_json::Value) -> Result<()> {
        let p = &self.jsonl_path;
        serde_json::to_writer(&mut self.jsonl, &v).map_err(|e| Error::io(p, e.into()))?;
        self.jsonl.write_all(b"\n").map_err(|e| Error::io(p, e))?;
        self.jsonl.flush().map_err(|e| Error::io(p, e))
    }

    /// Log a training step.
    pub fn step(&mut self, s: &StepLog) -> Result<()> {
        self.line(json!({
            "type": "step",
            "step": s.step,
            "epoch": s.epoch,
            "loss": s.loss,
            "accuracy": s.accuracy,
            "lr": s.lr,
            "samples_per_sec": s.samples_per_sec,
            "tokens_per_sec": s.tokens_per_sec,
            "grad_norm": s.grad_norm,
            "time": unix_time(),
        }))?;
        if let Some(ev) = &mut self.events {
            let mut scalars = vec![
                ("train/loss", s.loss as f32),
                ("train/lr", s.lr as f32),
                ("train/samples_per_sec", s.samples_per_sec as f32),
            ];
            if let Some(a) = s.accuracy {
                scalars.push(("train/accuracy", a as f32));
            }
            if let Some(t) = s.tokens_per_sec {
                scalars.push(("train/tokens_per_sec", t as f32));
            }
            if let Some(g) = s.grad_norm {
                scalars.push(("train/grad_norm", g as f32));
            }
            ev.add_scalars(s.step, &scalars)?;
            ev.flush()?;
        }
        Ok(())
    }

    /// Log a validation pass after `step`.
    pub fn validation(&mut self, v: &crate::metrics::ValLog) -> Result<()> {
        self.line(json!({
            "type": "val",
            "step": v.step,
            "val_loss": v.val.loss,
            "val_accuracy": v.val.accuracy,
            "time": unix_time(),
        }))?;
        if let Some(ev) = &mut self.events {
            ev.add_scalars(v.step, &[("val/loss", v.val.loss as f32)])?;
            ev.flush()?;
        }
        Ok(())
    }

    /// Log a completed epoch.
    pub fn epoch(&mut self, e: &EpochMetrics) -> Result<()> {
        self.line(json!({
            "type": "epoch",
            "epoch": e.epoch,
            "step": e.step,
            "loss": e.train.loss,
            "accuracy": e.train.accuracy,
            "val_loss": e.val.as_ref().map(|m| m.loss),
            "val_accuracy": e.val.as_ref().and_then(|m| m.accuracy),
            "val_top5": e.val.as_ref().and_then(|m| m.top5),
            "lr": e.lr,
            "seconds": e.seconds,
            "time": unix_time(),
        }))?;
        if let Some(ev) = &mut self.events {
            let mut scalars = vec![("epoch/loss", e.train.loss as f32), ("epoch/lr", e.lr as f32)];
            if let Some(a) = e.train.accuracy {
                scalars.push(("epoch/accuracy", a as f32));
            }
            if let Some(v) = &e.val {
                scalars.push(("val/loss", v.loss as f32));
                if let Some(a) = v.accuracy {
                    scalars.push(("val/accuracy", a as f32));
                }
                if let Some(a) = v.top5 {
                    scalars.push(("val/top5", a as f32));
                }
            }
            ev.add_scalars(e.step, &scalars)?;
            ev.flush()?;
        }
        Ok(())
    }
}
