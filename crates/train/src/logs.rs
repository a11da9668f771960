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
        let mut line = json!({
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
        });
        with_extra(&mut line, &s.extra, "");
        self.line(line)?;
        if let Some(ev) = &mut self.events {
            let mut scalars = vec![
                ("train/loss".to_string(), s.loss as f32),
                ("train/lr".to_string(), s.lr as f32),
                ("train/samples_per_sec".to_string(), s.samples_per_sec as f32),
            ];
            if let Some(a) = s.accuracy {
                scalars.push(("train/accuracy".into(), a as f32));
            }
            if let Some(t) = s.tokens_per_sec {
                scalars.push(("train/tokens_per_sec".into(), t as f32));
            }
            if let Some(g) = s.grad_norm {
                scalars.push(("train/grad_norm".into(), g as f32));
            }
            scalars.extend(s.extra.iter().map(|(k, v)| (format!("train/{k}"), *v as f32)));
            add_scalars(ev, s.step, &scalars)?;
            ev.flush()?;
        }
        Ok(())
    }

    /// Log a validation pass after `step`.
    pub fn validation(&mut self, v: &crate::metrics::ValLog) -> Result<()> {
        let mut line = json!({
            "type": "val",
            "step": v.step,
            "val_loss": v.val.loss,
            "val_accuracy": v.val.accuracy,
            "time": unix_time(),
        });
        with_extra(&mut line, &v.val.extra, "val_");
        self.line(line)?;
        if let Some(ev) = &mut self.events {
            let mut scalars = vec![("val/loss".to_string(), v.val.loss as f32)];
            scalars.extend(v.val.extra.iter().map(|(k, x)| (format!("val/{k}"), *x as f32)));
            add_scalars(ev, v.step, &scalars)?;
            ev.flush()?;
        }
        Ok(())
    }

    /// Log a completed epoch.
    pub fn epoch(&mut self, e: &EpochMetrics) -> Result<()> {
        let mut line = json!({
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
        });
        with_extra(&mut line, &e.train.extra, "");
        if let Some(v) = &e.val {
            with_extra(&mut line, &v.extra, "val_");
        }
        self.line(line)?;
        if let Some(ev) = &mut self.events {
            let mut scalars = vec![
                ("epoch/loss".to_string(), e.train.loss as f32),
                ("epoch/lr".to_string(), e.lr as f32),
            ];
            if let Some(a) = e.train.accuracy {
                scalars.push(("epoch/accuracy".into(), a as f32));
            }
            scalars.extend(
                e.train
                    .extra
                    .iter()
                    .map(|(k, x)| (format!("epoch/{k}"), *x as f32)),
            );
            if let Some(v) = &e.val {
                scalars.push(("val/loss".into(), v.loss as f32));
                if let Some(a) = v.accuracy {
                    scalars.push(("val/accuracy".into(), a as f32));
                }
                if let Some(a) = v.top5 {
                    scalars.push(("val/top5".into(), a as f32));
                }
                scalars.extend(v.extra.iter().map(|(k, x)| (format!("val/{k}"), *x as f32)));
            }
            add_scalars(ev, e.step, &scalars)?;
            ev.flush()?;
        }
        Ok(())
    }
}

/// Adds a model's own metrics to a JSON line as `{prefix}{name}`.
fn with_extra(line: &mut serde_json::Value, extra: &std::collections::BTreeMap<String, f64>, prefix: &str) {
    if let Some(obj) = line.as_object_mut() {
        for (k, v) in extra {
            obj.insert(format!("{prefix}{k}"), json!(v));
        }
    }
}

/// Writes owned-name scalars through [`EventWriter::add_scalars`].
fn add_scalars(ev: &mut EventWriter, step: usize, scalars: &[(String, f32)]) -> Result<()> {
    let borrowed: Vec<(&str, f32)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    ev.add_scalars(step, &borrowed)
}
