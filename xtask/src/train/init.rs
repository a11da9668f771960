//! `cargo xtask train --init DIR`: start from weights trained elsewhere. `DIR` is a kiln run
//! directory (its newest complete checkpoint) or a Hugging Face BERT directory (`config.json` +
//! `model.safetensors`, such as all-MiniLM-L6-v2).
//!
//! The same model continues strictly (instruction tuning after pre-training: every tensor must
//! fit). Another model of the same family starts as Hugging Face's `from_pretrained` does: the
//! tensors whose names and shapes match are loaded, the rest of the new model keeps its fresh
//! initialisation (a classifier head), and both lists are printed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kiln::tensor::Tensor;
use kiln::zoo::Model;

use kiln::train::{RunSpec, RUN_FILE};

use super::read_spec;

/// Where `--init` weights come from.
pub enum InitSource {
    /// A kiln run directory and its `run.json`.
    Run {
        /// The directory.
        dir: PathBuf,
        /// Its settings.
        spec: RunSpec,
    },
    /// A Hugging Face BERT directory and its encoder configuration.
    HfBert {
        /// The directory.
        dir: PathBuf,
        /// `config.json` read as a kiln BERT config.
        config: kiln::model_crates::bert::BertConfig,
    },
}

impl InitSource {
    /// Reads `dir`: a kiln run (`run.json`) or a Hugging Face BERT directory.
    pub fn open(dir: &Path) -> anyhow::Result<InitSource> {
        if dir.join(RUN_FILE).is_file() {
            let spec = read_spec(&dir.join(RUN_FILE))
                .with_context(|| format!("--init {} is not a kiln run directory", dir.display()))?;
            return Ok(InitSource::Run {
                dir: dir.to_path_buf(),
                spec,
            });
        }
        if dir.join("config.json").is_file() && dir.join("model.safetensors").is_file() {
            let config = kiln::model_crates::bert::BertConfig::from_hf_config(&dir.join("config.json"))?;
            return Ok(InitSource::HfBert {
                dir: dir.to_path_buf(),
                config,
            });
        }
        bail!(
            "--init {} is neither a kiln run directory (run.json) nor a Hugging Face BERT directory (config.json and model.safetensors)",
            dir.display()
        )
    }

    /// Settles the model and its config against the source: the model defaults to the
    /// source's; a different model must be of the same family and not be instruction tuning; the
    /// source's sizes are the base of the model config (the user's `model_config` on top).
    pub fn reconcile(&self, spec: &mut RunSpec, sft: bool) -> anyhow::Result<()> {
        let (source_model, source_cfg) = match self {
            InitSource::Run { spec: s, .. } => (s.model.clone(), s.model_config.clone()),
            InitSource::HfBert { config, .. } => (None, Some(serde_json::to_value(config)?)),
        };
        if spec.model.is_none() {
            spec.model = source_model.clone();
        }
        let Some(model) = spec.model.clone() else {
            bail!(
                "--init of a Hugging Face directory needs --model (bert-classifier, all-minilm-l6-v2, ...)"
            );
        };
        let family = kiln::find_model(&model)?.family;
        match (&source_model, self) {
            (Some(src), _) if *src != model => {
                let src_family = kiln::find_model(src)?.family;
                if sft || src_family != family {
                    bail!("--model {model} differs from the --init run's model {src}");
                }
            }
            (_, InitSource::HfBert { .. }) if family != "bert" => {
                bail!(
                    "--init {} holds a BERT encoder; --model {model} is a {family} model",
                    self.dir().display()
                );
            }
            _ => {}
        }
        let mut cfg = source_cfg.unwrap_or_else(|| serde_json::json!({}));
        if let (Some(base), Some(user)) = (
            cfg.as_object_mut(),
            spec.model_config.as_ref().and_then(|u| u.as_object()),
        ) {
            base.extend(user.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        // Keys the new model does not have (another family member's extras) are left out.
        let entry = kiln::find_model(&model)?;
        if let (Some(obj), Some(keys)) = (cfg.as_object_mut(), (entry.default_config)().as_object().cloned())
        {
            obj.retain(|k, _| keys.contains_key(k));
        }
        spec.model_config = Some(cfg);
        Ok(())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        match self {
            InitSource::Run { dir, .. } | InitSource::HfBert { dir, .. } => dir,
        }
    }

    /// Loads the weights into `model`: strictly when it is the source's own model, otherwise
    /// every tensor whose name and shape match (the lists of the rest are printed).
    pub fn load_into(&self, model: &dyn Model) -> anyhow::Result<()> {
        let params = model.parameters();
        let (weights, same_model, from) = match self {
            InitSource::Run { dir, spec } => {
                let ckpt = kiln::train::latest_checkpoint(dir)?
                    .with_context(|| format!("no complete checkpoint in the --init run {}", dir.display()))?;
                let file = ckpt.join("model.safetensors");
                let w = kiln::tensor::io::load_safetensors(&file)
                    .with_context(|| format!("loading the --init weights {}", file.display()))?;
                (w, spec.model.as_deref() == Some(model.name()), ckpt)
            }
            InitSource::HfBert { dir, .. } => {
                let file = dir.join("model.safetensors");
                let raw = kiln::tensor::io::load_safetensors(&file)
                    .with_context(|| format!("loading {}", file.display()))?;
                // The file names the encoder `embeddings.*` (or `bert.*`); models with heads
                // hold it under `bert.`.
                let (encoder, _) = kiln::model_crates::bert::hf_to_kiln(raw);
                let prefixed = params.iter().any(|p| p.name().starts_with("bert."));
                let w: HashMap<String, Tensor> = encoder
                    .into_iter()
                    .map(|(k, t)| (if prefixed { format!("bert.{k}") } else { k }, t))
                    .collect();
                (w, false, dir.clone())
            }
        };
        let weights = to_f32(weights)?;
        if same_model {
            kiln::nn::load_state_dict(&params, &weights, true)
                .with_context(|| format!("loading the --init weights {}", from.display()))?;
            println!("starting from the weights of {}", from.display());
            return Ok(());
        }
        let report = kiln::nn::load_state_dict(&params, &weights, false)
            .with_context(|| format!("loading the --init weights {}", from.display()))?;
        let loaded = params.len() - report.missing.len();
        if loaded == 0 {
            bail!(
                "no tensor of {} fits {}: nothing to start from",
                from.display(),
                model.name()
            );
        }
        println!(
            "starting {} from {}: {loaded} of {} tensors loaded",
            model.name(),
            from.display(),
            params.len()
        );
        if !report.missing.is_empty() {
            println!(
                "  newly initialised (not in the source): {}",
                report.missing.join(", ")
            );
        }
        if !report.unexpected.is_empty() {
            println!(
                "  not used (the source's own heads): {}",
                report.unexpected.join(", ")
            );
        }
        Ok(())
    }
}

/// Half-precision tensors of a checkpoint converted to f32 (BERT checkpoints are often f16).
fn to_f32(weights: HashMap<String, Tensor>) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut converted = 0;
    let mut out = HashMap::with_capacity(weights.len());
    for (k, t) in weights {
        let t = if matches!(t.dtype(), kiln::tensor::DType::F16 | kiln::tensor::DType::BF16) {
            converted += 1;
            t.to_dtype(kiln::tensor::DType::F32)?
        } else {
            t
        };
        out.insert(k, t);
    }
    if converted > 0 {
        println!("  converted {converted} half-precision tensors to f32");
    }
    Ok(out)
}
