//! Metrics (loss, accuracy, top-k accuracy), their running accumulation, and the [`History`] of a
//! run.

use std::collections::BTreeMap;

use kiln_tensor::{DType, Tensor};
use kiln_zoo::Tally;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The number of correct predictions among `logits` for `targets`, at each `k` of `ks`.
///
/// `logits` is `[..., C]` (any float dtype) and `targets` holds class indices with the leading
/// shape `[...]`; a negative target (an ignore index such as -100) is skipped. A prediction is
/// correct at `k` when fewer than `k` classes rank above the target, ties going to the lower class
/// index (as `argmax`). Returns `(counts, rows counted)`.
pub fn correct_at_k(logits: &Tensor, targets: &Tensor, ks: &[usize]) -> Result<(Vec<u64>, u64)> {
    let dims = logits.dims();
    let Some((&classes, lead)) = dims.split_last() else {
        return Err(Error::Data(format!(
            "accuracy: logits must have a class dimension, found shape {dims:?}"
        )));
    };
    if targets.dims() != lead || classes == 0 {
        return Err(Error::Data(format!(
            "accuracy: logits of shape {dims:?} need targets of shape {lead:?}, found {:?}",
            targets.dims()
        )));
    }
    let logits = if logits.dtype() == DType::F32 {
        logits.clone()
    } else {
        logits.to_dtype(DType::F32)?
    };
    let targets = if targets.dtype() == DType::I64 {
        targets.clone()
    } else {
        targets.to_dtype(DType::I64)?
    };
    let x = logits.contiguous_slice::<f32>()?;
    let t = targets.contiguous_slice::<i64>()?;
    let mut counts = vec![0u64; ks.len()];
    let mut rows = 0u64;
    for (row, &target) in x.chunks_exact(classes).zip(t.iter()) {
        if target < 0 {
            continue;
        }
        let target = target as usize;
        if target >= classes {
            return Err(Error::Data(format!(
                "accuracy: target class {target} out of range for {classes} classes"
            )));
        }
        rows += 1;
        let v = row[target];
        // The target's rank: classes strictly above it, plus equal ones with a lower index.
        // A NaN score for the target is never correct.
        let rank = if v.is_nan() {
            classes
        } else {
            row.iter()
                .enumerate()
                .filter(|&(j, &y)| y > v || (y == v && j < target))
                .count()
        };
        for (c, &k) in counts.iter_mut().zip(ks) {
            if rank < k {
                *c += 1;
            }
        }
    }
    Ok((counts, rows))
}

/// The fraction of rows whose highest logit is the target class (see [`correct_at_k`]).
pub fn accuracy(logits: &Tensor, targets: &Tensor) -> Result<f64> {
    top_k_accuracy(logits, targets, 1)
}

/// The fraction of rows whose target is among the `k` highest logits (see [`correct_at_k`]).
pub fn top_k_accuracy(logits: &Tensor, targets: &Tensor, k: usize) -> Result<f64> {
    let (c, n) = correct_at_k(logits, targets, &[k])?;
    Ok(if n == 0 { 0.0 } else { c[0] as f64 / n as f64 })
}

/// Whether a batch's logits and targets are class scores and class indices (so accuracy
/// applies): targets are integers with the logits' leading shape.
pub(crate) fn is_classification(logits: &Tensor, targets: &Tensor) -> bool {
    !targets.dtype().is_float()
        && logits.rank() == targets.rank() + 1
        && logits.dims()[..targets.rank()] == *targets.dims()
}

/// Aggregate metrics over a set of examples (an epoch, an evaluation).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean loss per example.
    pub loss: f64,
    /// Top-1 accuracy, for classification.
    pub accuracy: Option<f64>,
    /// Top-5 accuracy, for classification with at least 5 classes.
    pub top5: Option<f64>,
    /// The number of examples.
    pub samples: usize,
    /// The model's own metrics ([`Tally`]: `mlm_accuracy`, `nsp_accuracy`, ...), each the mean
    /// over everything it counted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

/// Running sums behind a [`Metrics`]: add batches, read the means.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricAccumulator {
    /// Sum over batches of (mean batch loss x batch size).
    pub loss_sum: f64,
    /// Examples added.
    pub samples: u64,
    /// Rows with a class target (for accuracy).
    pub rows: u64,
    /// Rows predicted correctly (top-1).
    pub correct: u64,
    /// Rows with the target in the top 5 (counted when there are at least 5 classes).
    pub correct5: u64,
    /// Whether any batch was a classification batch.
    pub classification: bool,
    /// Whether every classification batch had at least 5 classes.
    pub top5_valid: bool,
    /// Sums and counts of the model's own metrics, by name.
    #[serde(default)]
    pub tallies: BTreeMap<String, [f64; 2]>,
}

impl MetricAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one batch: its mean loss, its size, and (for classification) its logits and targets.
    /// `top5`: also count top-5 hits (evaluation; training counts top-1 only).
    pub fn add(
        &mut self,
        loss: f64,
        batch_size: usize,
        logits: Option<&Tensor>,
        targets: Option<&Tensor>,
        top5: bool,
    ) -> Result<()> {
        self.loss_sum += loss * batch_size as f64;
        self.samples += batch_size as u64;
        if let (Some(l), Some(t)) = (logits, targets) {
            if is_classification(l, t) {
                let classes = *l.dims().last().unwrap_or(&0);
                let with5 = top5 && classes >= 5;
                let ks: &[usize] = if with5 { &[1, 5] } else { &[1] };
                let (c, n) = correct_at_k(l, t, ks)?;
                if !self.classification {
                    self.top5_valid = true;
                }
                self.classification = true;
                self.top5_valid &= with5;
                self.rows += n;
                self.correct += c[0];
                if with5 {
                    self.correct5 += c[1];
                }
            }
        }
        Ok(())
    }

    /// Add a batch's [`Tally`]s (the model's own metrics).
    pub fn add_tallies(&mut self, tallies: &[Tally]) {
        for t in tallies {
            let e = self.tallies.entry(t.name.to_string()).or_insert([0.0; 2]);
            e[0] += t.sum;
            e[1] += t.count;
        }
    }

    /// Add another accumulator's sums into this one.
    pub fn merge(&mut self, other: &MetricAccumulator) {
        for (name, [sum, count]) in &other.tallies {
            let e = self.tallies.entry(name.clone()).or_insert([0.0; 2]);
            e[0] += sum;
            e[1] += count;
        }
        if other.classification {
            self.top5_valid = if self.classification {
                self.top5_valid && other.top5_valid
            } else {
                other.top5_valid
            };
            self.classification = true;
        }
        self.loss_sum += other.loss_sum;
        self.samples += other.samples;
        self.rows += other.rows;
        self.correct += other.correct;
        self.correct5 += other.correct5;
    }

    /// The means so far.
    pub fn metrics(&self) -> Metrics {
        let frac = |c: u64| {
            if self.rows == 0 {
                0.0
            } else {
                c as f64 / self.rows as f64
            }
        };
        Metrics {
            loss: if self.samples == 0 {
                0.0
            } else {
                self.loss_sum / self.samples as f64
            },
            accuracy: self.classification.then(|| frac(self.correct)),
            top5: (self.classification && self.top5_valid).then(|| frac(self.correct5)),
            samples: self.samples as usize,
            extra: self
                .tallies
                .iter()
                .filter(|(_, [_, count])| *count > 0.0)
                .map(|(name, [sum, count])| (name.clone(), sum / count))
                .collect(),
        }
    }
}

/// What was logged at one logging step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// The optimizer step (1 for the first).
    pub step: usize,
    /// The epoch (0-based).
    pub epoch: usize,
    /// Mean training loss over the steps since the previous log.
    pub loss: f64,
    /// Training accuracy over the steps since the previous log, for classification.
    pub accuracy: Option<f64>,
    /// The learning rate of the last step.
    pub lr: f64,
    /// Training throughput since the previous log, examples per second.
    pub samples_per_sec: f64,
    /// Training throughput in tokens per second, for token-id inputs.
    #[serde(default)]
    pub tokens_per_sec: Option<f64>,
    /// The global gradient norm of the last step before clipping, when clipping is on.
    #[serde(default)]
    pub grad_norm: Option<f64>,
    /// The model's own metrics over the steps since the previous log (see [`Metrics::extra`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

/// A validation pass in the middle of an epoch (`TrainConfig::eval_every_steps`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValLog {
    /// The optimizer step after which it ran.
    pub step: usize,
    /// The validation metrics.
    pub val: Metrics,
}

/// The metrics of one completed epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// The epoch (0-based).
    pub epoch: usize,
    /// The optimizer step at the end of the epoch.
    pub step: usize,
    /// Training metrics over the epoch (running means, as Keras).
    pub train: Metrics,
    /// Validation metrics at the end of the epoch, when a validation set was given.
    pub val: Option<Metrics>,
    /// The learning rate at the end of the epoch.
    pub lr: f64,
    /// Wall-clock seconds spent on the epoch (training and validation).
    pub seconds: f64,
}

/// The record of a run: one entry per completed epoch, the logged steps, and why it stopped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Completed epochs, in order.
    pub epochs: Vec<EpochMetrics>,
    /// Logged steps, in order.
    pub steps: Vec<StepLog>,
    /// Validation passes every `eval_every_steps` steps, in order.
    #[serde(default)]
    pub validations: Vec<ValLog>,
    /// Set when a callback stopped training early (the reason).
    pub stopped_early: Option<String>,
}

impl History {
    /// The last completed epoch.
    pub fn last(&self) -> Option<&EpochMetrics> {
        self.epochs.last()
    }

    /// One value per epoch for a metric name: `loss`, `accuracy`, `top5`, `val_loss`,
    /// `val_accuracy`, `val_top5`, `lr` (epochs without the metric are left out).
    pub fn metric(&self, name: &str) -> Vec<f64> {
        self.epochs.iter().filter_map(|e| epoch_metric(e, name)).collect()
    }
}

/// A named metric of an epoch (see [`History::metric`]).
pub fn epoch_metric(e: &EpochMetrics, name: &str) -> Option<f64> {
    match name {
        "loss" => Some(e.train.loss),
        "accuracy" | "acc" => e.train.accuracy,
        "top5" => e.train.top5,
        "val_loss" => e.val.as_ref().map(|m| m.loss),
        "val_accuracy" | "val_acc" => e.val.as_ref().and_then(|m| m.accuracy),
        "val_top5" => e.val.as_ref().and_then(|m| m.top5),
        "lr" => Some(e.lr),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_counts_ties_as_argmax() {
        let logits = Tensor::from_vec(
            vec![
                0.1f32, 0.9, 0.0, 0.0, 0.0, 0.0, // target 1: top-1
                0.5, 0.5, 0.0, 0.0, 0.0, 0.0, // target 1: tie with class 0, ranks second
                1.0, 2.0, 3.0, 4.0, 5.0, 6.0, // target 0: rank 5
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, // ignored
            ],
            [4, 6],
        )
        .unwrap();
        let t = Tensor::from_vec(vec![1i64, 1, 0, -100], [4]).unwrap();
        let (c, n) = correct_at_k(&logits, &t, &[1, 2, 5, 6]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(c, vec![1, 2, 2, 3]);
        assert!((accuracy(&logits, &t).unwrap() - 1.0 / 3.0).abs() < 1e-12);
        let bad = Tensor::from_vec(vec![7i64, 0, 0, 0], [4]).unwrap();
        assert!(accuracy(&logits, &bad).is_err());
        let wrong = Tensor::from_vec(vec![0i64, 0], [2]).unwrap();
        assert!(accuracy(&logits, &wrong).is_err());
    }

    #[test]
    fn sequence_logits_give_token_level_accuracy() {
        // A causal LM's logits [B, T, V] against next-token targets [B, T]: every position counts.
        let logits = Tensor::from_vec(
            vec![
                1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, // sequence 0 predicts 0, 1, 2
                1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, // sequence 1 predicts 0, 0, 1
            ],
            [2, 3, 3],
        )
        .unwrap();
        let t = Tensor::from_vec(vec![0i64, 1, 0, 0, 2, -100], [2, 3]).unwrap();
        assert!(is_classification(&logits, &t));
        let (c, n) = correct_at_k(&logits, &t, &[1]).unwrap();
        assert_eq!((c[0], n), (3, 5));
        let mut acc = MetricAccumulator::new();
        acc.add(0.5, 2, Some(&logits), Some(&t), false).unwrap();
        assert_eq!((acc.metrics().accuracy, acc.metrics().samples), (Some(0.6), 2));
    }

    #[test]
    fn accumulator_means() {
        let mut acc = MetricAccumulator::new();
        let l = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]).unwrap();
        let t = Tensor::from_vec(vec![0i64, 0], [2]).unwrap();
        acc.add(1.0, 2, Some(&l), Some(&t), true).unwrap();
        acc.add(4.0, 1, None, None, true).unwrap();
        let m = acc.metrics();
        assert_eq!(m.samples, 3);
        assert!((m.loss - 2.0).abs() < 1e-12);
        assert_eq!(m.accuracy, Some(0.5));
        assert_eq!(m.top5, None, "two classes: no top-5");
    }
}
