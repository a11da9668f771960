//! `run.json`: the settings of a run directory (model, dataset, optimizer, trainer config), as
//! written by `cargo xtask train` and read back by `--resume`, `eval` and `generate`. A run's
//! `--config` file has the same schema.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result, TrainConfig};

/// The name of a run directory's settings file.
pub const RUN_FILE: &str = "run.json";

/// The transformer recipe's optimizer settings, stored so that a resumed run rebuilds the same
/// optimizer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    /// Adam's second-moment decay.
    pub beta2: Option<f64>,
    /// AdamW's decoupled weight decay (matrices only for the transformer recipe).
    pub weight_decay: Option<f64>,
}

/// A run's settings: the config file's schema, and what is stored as `run.json`.
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
    /// Trainer settings ([`TrainConfig`] fields).
    pub train: Option<serde_json::Value>,
    /// Tokens per example of a language-modelling dataset.
    pub seq_len: Option<usize>,
    /// Optimizer details beyond the name and learning rate.
    pub recipe: Option<Recipe>,
    /// `sft` for instruction tuning; absent for the dataset's own task.
    pub task: Option<String>,
    /// The run whose weights and tokenizer this run started from.
    pub init: Option<PathBuf>,
    /// The share of the training data held out for validation (seeded with the run's seed);
    /// absent when the dataset's own validation split is used.
    pub val_fraction: Option<f64>,
    /// The training data's content fingerprint (`kiln_data::content_fingerprint`); a resumed run
    /// refuses data that does not match it.
    pub data_fingerprint: Option<String>,
}

impl RunSpec {
    /// Read a settings file (`run.json` or a `--config` file).
    pub fn read(path: &Path) -> Result<RunSpec> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        RunSpec::from_json(&bytes, path)
    }

    /// Parse settings from JSON bytes; `origin` names them in errors. The text must be one JSON
    /// object of known fields (serde alone would also read an array as the fields in order).
    pub fn from_json(bytes: &[u8], origin: &Path) -> Result<RunSpec> {
        let bad = |reason: String| Error::ConfigFile {
            path: origin.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let found = kiln_data::json::non_object_kind(&value);
        if let Some(found) = found {
            return Err(bad(format!(
                "a run config must be a JSON object ({{\"model\": ..., \"train\": {{...}}}}), found {found}"
            )));
        }
        serde_json::from_value(value).map_err(|e| bad(format!("not a valid run config: {e}")))
    }

    /// The trainer settings of the `train` section (not yet validated: flags may still change
    /// them); without one, 5 epochs. A `max_steps` alone means that many steps (the default of
    /// one epoch must not cut it short).
    pub fn train_config(&self) -> Result<TrainConfig> {
        let parse = |v: &serde_json::Value| -> Result<TrainConfig> {
            serde_json::from_value(v.clone()).map_err(|e| Error::ConfigFile {
                path: PathBuf::from(RUN_FILE),
                reason: format!("invalid \"train\" section: {e}"),
            })
        };
        let cfg = match &self.train {
            Some(v) if v.get("max_steps").is_some_and(|s| !s.is_null()) && v.get("epochs").is_none() => {
                TrainConfig {
                    epochs: None,
                    ..parse(v)?
                }
            }
            Some(v) => parse(v)?,
            None => TrainConfig {
                epochs: Some(5),
                ..Default::default()
            },
        };
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_is_an_object_of_known_fields() {
        let origin = Path::new("cfg.json");
        let e = RunSpec::from_json(br#"["lenet5", "mnist"]"#, origin).unwrap_err();
        assert!(e.to_string().contains("found an array"), "{e}");
        let e = RunSpec::from_json(br#"{"modle": "lenet5"}"#, origin).unwrap_err();
        assert!(e.to_string().contains("modle"), "{e}");
        let spec =
            RunSpec::from_json(br#"{"model": "lenet5", "train": {"max_steps": 1000}}"#, origin).unwrap();
        let cfg = spec.train_config().unwrap();
        assert_eq!((cfg.max_steps, cfg.epochs), (Some(1000), None));
        assert_eq!(RunSpec::default().train_config().unwrap().epochs, Some(5));
        let bad = RunSpec::from_json(br#"{"train": {"batch_size": 0}}"#, origin).unwrap();
        assert!(bad.train_config().unwrap().validate().is_err());
        let bad = RunSpec::from_json(br#"{"train": {"batch_size": "64"}}"#, origin).unwrap();
        assert!(bad.train_config().is_err());
    }
}
