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
    /// Entries of a resumed run's log dropped at open (logged after its checkpoint).
    pub dropped: usize,
}

impl RunLogs {
    /// Open `dir/metrics.jsonl` and, with `tensorboard`, a new event file in `dir`. A run
    /// resumed after `resumed_at` steps keeps the log's entries up to that step and drops the
    /// later ones (written by the interrupted run after its last checkpoint, and about to be
    /// logged again); its event file starts with a TensorBoard purge at the next step. A new
    /// run starts an empty log.
    pub fn open(dir: &Path, resumed_at: Option<usize>, tensorboard: bool) -> Result<RunLogs> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let jsonl_path = dir.join(METRICS_FILE);
        let dropped = match resumed_at {
            Some(step) => keep_entries_through(&jsonl_path, step)?,
            None => 0,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed_at.is_some())
            .truncate(resumed_at.is_none())
            .open(&jsonl_path)
            .map_err(|e| Error::io(&jsonl_path, e))?;
        let events = if tensorboard {
            let mut ev = EventWriter::create(dir)?;
            if let Some(step) = resumed_at {
                ev.add_session_start(step + 1)?;
                ev.flush()?;
            }
            Some(ev)
        } else {
            None
        };
        Ok(RunLogs {
            jsonl_path,
            jsonl: BufWriter::new(file),
            events,
            dropped,
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

/// Rewrites the JSON-lines log at `path` (atomically) without the entries logged after `step`;
/// lines that are not entries with a step (e.g. a line cut short by a kill) are dropped too.
/// Returns how many were dropped. A missing log is left missing.
fn keep_entries_through(path: &Path, step: usize) -> Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0usize;
    for line in text.lines() {
        let entry_step = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
        match entry_step {
            Some(s) if s <= step as u64 => {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => dropped += 1,
        }
    }
    if dropped > 0 {
        crate::write_file_atomically(path, kept.as_bytes())?;
    }
    Ok(dropped)
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
