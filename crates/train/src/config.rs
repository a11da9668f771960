//! [`TrainConfig`]: everything about a run that is not the model or the optimizer, serialisable
//! as JSON; and [`OptimizerConfig`], a serialisable choice of optimizer.

use std::path::{Path, PathBuf};

use kiln_autograd::Param;
use kiln_optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, RmsProp, RmsPropConfig,
    Schedule, Sgd, SgdConfig,
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How training reports progress on standard output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressMode {
    /// A progress bar when standard output is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Always a progress bar.
    Bar,
    /// Always plain lines (`epoch 1 step 200/938 loss 0.1234 acc 0.9612 1234 img/s`).
    Lines,
    /// Nothing.
    Off,
}

/// What training does when a step's loss or gradient norm is not finite (`--on-nan`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnNan {
    /// Stop with an error naming the step (the default): no update is applied and no checkpoint
    /// with non-finite weights is written.
    #[default]
    Stop,
    /// Skip the batch (no update from it), log it, and go on.
    SkipBatch,
}

/// The configuration of a training run (JSON with every field optional:
/// `{"epochs": 3, "batch_size": 64, "schedule": {"kind": "cosine", ...}}`).
///
/// Training stops after `epochs` epochs or `max_steps` optimizer steps, whichever comes first
/// (at least one must be set). A step is one optimizer update, made from `grad_accum_steps`
/// batches. Files (logs, TensorBoard events, the curves PNG, checkpoints) are written only when
/// `out_dir` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Number of epochs (default 1).
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps in total (default: no limit).
    pub max_steps: Option<usize>,
    /// Examples per batch (default 64).
    pub batch_size: usize,
    /// Examples per batch in `evaluate` and `predict` (default: `batch_size`).
    pub eval_batch_size: Option<usize>,
    /// Seed of the data order (default 0).
    pub seed: u64,
    /// Shuffle the training data every epoch (default true).
    pub shuffle: bool,
    /// Drop the last, smaller batch of each epoch (default false).
    pub drop_last: bool,
    /// Learning-rate schedule, applied before every optimizer step (default: keep the
    /// optimizer's learning rate).
    pub schedule: Option<Schedule>,
    /// Clip the global L2 norm of the gradients to this value (default: no clipping).
    pub clip_grad_norm: Option<f64>,
    /// Batches whose gradients are averaged into one optimizer step (default 1).
    pub grad_accum_steps: usize,
    /// Log (progress line, `metrics.jsonl`, TensorBoard) every this many steps (default 50).
    pub log_every_steps: usize,
    /// Also evaluate on the validation data every this many steps (default: only at the end of
    /// each epoch).
    #[serde(default)]
    pub eval_every_steps: Option<usize>,
    /// Write a checkpoint every this many steps (default: none).
    pub checkpoint_every_steps: Option<usize>,
    /// Write a checkpoint at the end of every epoch (default true; needs `out_dir`).
    pub checkpoint_every_epoch: bool,
    /// Write a checkpoint when training ends (default true; needs `out_dir`).
    pub checkpoint_at_end: bool,
    /// Keep only the newest this many checkpoints (default 3).
    pub keep_last: usize,
    /// The run directory for logs and checkpoints (default: none, nothing is written).
    pub out_dir: Option<PathBuf>,
    /// Batches assembled ahead on a background thread (default 2; 0 = on demand).
    pub prefetch: usize,
    /// Progress reporting (default `auto`).
    pub progress: ProgressMode,
    /// Write TensorBoard event files in `out_dir` (default true).
    pub tensorboard: bool,
    /// Draw `curves.png` (loss and accuracy) in `out_dir` at the end (default true).
    pub plot: bool,
    /// What a non-finite loss or gradient norm does (default: stop with an error).
    pub on_nan: OnNan,
    /// Arithmetic of matrix products and convolutions in forward, backward and evaluation
    /// (default `f32`; `bf16`: bf16 operands with f32 accumulation, weights and optimizer
    /// state stay f32). See [`kiln_tensor::MatmulPrecision`].
    pub precision: kiln_tensor::MatmulPrecision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: Some(1),
            max_steps: None,
            batch_size: 64,
            eval_batch_size: None,
            seed: 0,
            shuffle: true,
            drop_last: false,
            schedule: None,
            clip_grad_norm: None,
            grad_accum_steps: 1,
            log_every_steps: 50,
            eval_every_steps: None,
            checkpoint_every_steps: None,
            checkpoint_every_epoch: true,
            checkpoint_at_end: true,
            keep_last: 3,
            out_dir: None,
            prefetch: 2,
            progress: ProgressMode::Auto,
            tensorboard: true,
            plot: true,
            on_nan: OnNan::Stop,
            precision: kiln_tensor::MatmulPrecision::F32,
        }
    }
}

impl TrainConfig {
    /// Check every field; an [`Error::Config`] names the first bad one and what it must be.
    pub fn validate(&self) -> Result<()> {
        const W: &str = "TrainConfig";
        let positive = |field: &str, v: usize| {
            if v == 0 {
                Err(Error::config(W, field, v, "must be > 0"))
            } else {
                Ok(())
            }
        };
        positive("batch_size", self.batch_size)?;
        if let Some(b) = self.eval_batch_size {
            positive("eval_batch_size", b)?;
        }
        positive("grad_accum_steps", self.grad_accum_steps)?;
        positive("log_every_steps", self.log_every_steps)?;
        positive("keep_last", self.keep_last)?;
        if let Some(n) = self.checkpoint_every_steps {
            positive("checkpoint_every_steps", n)?;
        }
        match (self.epochs, self.max_steps) {
            (None, None) => {
                return Err(Error::config(
                    W,
                    "epochs",
                    "null",
                    "set epochs or max_steps (training needs a stopping point)",
                ))
            }
            (Some(0), _) => return Err(Error::config(W, "epochs", 0, "must be > 0")),
            (_, Some(0)) => return Err(Error::config(W, "max_steps", 0, "must be > 0")),
            _ => {}
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::config(W, "clip_grad_norm", c, "must be > 0 and finite"));
            }
        }
        if self.prefetch > 1024 {
            return Err(Error::config(W, "prefetch", self.prefetch, "must be <= 1024"));
        }
        if let Some(s) = &self.schedule {
            s.validate()?;
        }
        Ok(())
    }

    /// Parse a JSON configuration (missing fields take their defaults) and validate it.
    pub fn from_json(text: &str) -> Result<TrainConfig> {
        let cfg: TrainConfig = serde_json::from_str(text).map_err(|e| Error::ConfigFile {
            path: PathBuf::from("<string>"),
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a JSON configuration file (see [`TrainConfig::from_json`]); an unreadable or
    /// malformed file is an error naming it.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<TrainConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: TrainConfig = serde_json::from_str(&text).map_err(|e| Error::ConfigFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The batch size of `evaluate` and `predict`.
    pub fn eval_batch_size(&self) -> usize {
        self.eval_batch_size.unwrap_or(self.batch_size)
    }
}

/// A serialisable choice of optimizer and its hyperparameters
/// (`{"kind": "adam", "lr": 0.001}`; omitted fields take PyTorch's defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// [`Sgd`].
    Sgd(SgdConfig),
    /// [`Adam`].
    Adam(AdamConfig),
    /// [`AdamW`] (every parameter decayed; build it yourself with
    /// [`ParamGroup::split_decay`](kiln_optim::ParamGroup::split_decay) to exempt biases).
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
    /// [`RmsProp`].
    #[serde(rename = "rmsprop")]
    RmsProp(RmsPropConfig),
    /// [`Adagrad`].
    Adagrad(AdagradConfig),
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::Adam(AdamConfig::default())
    }
}

impl OptimizerConfig {
    /// The optimizer by name (`sgd`, `adam`, `adamw`, `rmsprop`, `adagrad`) with its default
    /// hyperparameters and learning rate `lr`. An unknown name is an error listing the known ones.
    pub fn by_name(name: &str, lr: f64) -> Result<OptimizerConfig> {
        let mut cfg = match name.to_ascii_lowercase().as_str() {
            "sgd" => OptimizerConfig::Sgd(SgdConfig::default()),
            "adam" => OptimizerConfig::Adam(AdamConfig::default()),
            "adamw" => OptimizerConfig::AdamW(AdamWConfig::default()),
            "rmsprop" => OptimizerConfig::RmsProp(RmsPropConfig::default()),
            "adagrad" => OptimizerConfig::Adagrad(AdagradConfig::default()),
            _ => {
                return Err(Error::config(
                    "optimizer",
                    "name",
                    name,
                    "unknown optimizer; known: sgd, adam, adamw, rmsprop, adagrad",
                ))
            }
        };
        cfg.set_lr(lr);
        Ok(cfg)
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd(c) => c.lr,
            OptimizerConfig::Adam(c) => c.lr,
            OptimizerConfig::AdamW(c) => c.lr,
            OptimizerConfig::RmsProp(c) => c.lr,
            OptimizerConfig::Adagrad(c) => c.lr,
        }
    }

    /// Set the learning rate.
    pub fn set_lr(&mut self, lr: f64) {
        match self {
            OptimizerConfig::Sgd(c) => c.lr = lr,
            OptimizerConfig::Adam(c) => c.lr = lr,
            OptimizerConfig::AdamW(c) => c.lr = lr,
            OptimizerConfig::RmsProp(c) => c.lr = lr,
            OptimizerConfig::Adagrad(c) => c.lr = lr,
        }
    }

    /// Build the optimizer over `params` (one group). Invalid hyperparameters (a negative
    /// learning rate, ...) are an error naming the field.
    pub fn build(&self, params: Vec<Param>) -> Result<Box<dyn Optimizer>> {
        Ok(match self {
            OptimizerConfig::Sgd(c) => Box::new(Sgd::from_params(params, c.clone())?),
            OptimizerConfig::Adam(c) => Box::new(Adam::from_params(params, c.clone())?),
            OptimizerConfig::AdamW(c) => Box::new(AdamW::from_params(params, c.clone())?),
            OptimizerConfig::RmsProp(c) => Box::new(RmsProp::from_params(params, c.clone())?),
            OptimizerConfig::Adagrad(c) => Box::new(Adagrad::from_params(params, c.clone())?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        TrainConfig::default().validate().unwrap();
        let cases: Vec<(TrainConfig, &str)> = vec![
            (
                TrainConfig {
                    batch_size: 0,
                    ..Default::default()
                },
                "batch_size = 0: must be > 0",
            ),
            (
                TrainConfig {
                    grad_accum_steps: 0,
                    ..Default::default()
                },
                "grad_accum_steps",
            ),
            (
                TrainConfig {
                    epochs: None,
                    max_steps: None,
                    ..Default::default()
                },
                "max_steps",
            ),
            (
                TrainConfig {
                    clip_grad_norm: Some(-1.0),
                    ..Default::default()
                },
                "clip_grad_norm = -1",
            ),
            (
                TrainConfig {
                    schedule: Some(Schedule::Constant { lr: -0.1 }),
                    ..Default::default()
                },
                "lr = -0.1",
            ),
        ];
        for (cfg, want) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn json_round_trip_and_unknown_fields() {
        let cfg = TrainConfig::from_json(
            r#"{"epochs": 3, "batch_size": 32, "schedule": {"kind": "cosine", "lr": 0.1, "t_max": 10, "eta_min": 0.0}}"#,
        )
        .unwrap();
        assert_eq!(cfg.epochs, Some(3));
        assert_eq!(cfg.batch_size, 32);
        assert_eq!(cfg.log_every_steps, 50);
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let e = TrainConfig::from_json(r#"{"batch_sise": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_sise"), "{e}");
        let e = TrainConfig::from_json(r#"{"batch_size": 0}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
        let e = TrainConfig::from_json_file("/nonexistent/kiln/train.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/kiln/train.json"), "{e}");
    }

    #[test]
    fn optimizer_configs() {
        let c: OptimizerConfig = serde_json::from_str(r#"{"kind": "adamw", "lr": 0.01}"#).unwrap();
        assert_eq!(c.lr(), 0.01);
        assert!(matches!(c, OptimizerConfig::AdamW(_)));
        let c = OptimizerConfig::by_name("SGD", 0.1).unwrap();
        assert_eq!(c.lr(), 0.1);
        let e = OptimizerConfig::by_name("lion", 0.1).unwrap_err().to_string();
        assert!(e.contains("lion") && e.contains("adamw"), "{e}");
        let p = Param::new("w", kiln_tensor::Tensor::from_vec(vec![1.0f32], [1]).unwrap());
        let e = OptimizerConfig::by_name("adam", -1.0)
            .unwrap()
            .build(vec![p])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("lr = -1"), "{e}");
    }
}
