//! Loading a Hugging Face GPT-2 checkpoint: a directory with `config.json` and
//! `model.safetensors`, keys with or without the `transformer.` prefix.

use std::collections::HashMap;
use std::path::Path;

use kiln_nn::Scope;
use kiln_tensor::{DType, Device, Tensor};
use kiln_zoo::{Error, Result};

use crate::config::GptConfig;
use crate::model::Gpt;

/// What [`load_hf_dir`] dropped from the file, for the caller to report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HfLoadReport {
    /// Keys that are not parameters: the causal-mask buffers `attn.bias` / `attn.masked_bias`
    /// and `lm_head.weight` (the head is tied to `wte`).
    pub ignored: Vec<String>,
}

/// Rename a GPT-2 state dict to kiln's names: strip `transformer.`, drop the attention mask
/// buffers and the tied `lm_head.weight`.
pub fn hf_to_kiln(weights: HashMap<String, Tensor>) -> (HashMap<String, Tensor>, HfLoadReport) {
    let mut out = HashMap::with_capacity(weights.len());
    let mut report = HfLoadReport::default();
    for (key, t) in weights {
        let name = key.strip_prefix("transformer.").unwrap_or(&key);
        if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name == "lm_head.weight" {
            report.ignored.push(key.clone());
            continue;
        }
        out.insert(name.to_string(), t);
    }
    report.ignored.sort();
    (out, report)
}

/// Load a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`) strictly: every
/// parameter must be present with its shape, and an unexpected key is an error.
pub fn load_hf_dir(dir: &Path, name: &'static str) -> Result<(Gpt, HfLoadReport)> {
    let cfg = GptConfig::from_hf_config(&dir.join("config.json"))?;
    let file = dir.join("model.safetensors");
    if !file.is_file() {
        return Err(Error::Config {
            model: name.into(),
            reason: format!("{} has no model.safetensors", dir.display()),
        });
    }
    let weights = kiln_tensor::io::load_safetensors(&file)?;
    load_weights(cfg, weights, name)
}

/// Build a [`Gpt`] of `cfg` from a GPT-2 state dict (Hugging Face or kiln names).
pub fn load_weights(
    cfg: GptConfig,
    weights: HashMap<String, Tensor>,
    name: &'static str,
) -> Result<(Gpt, HfLoadReport)> {
    let (weights, report) = hf_to_kiln(weights);
    let scope = Scope::from_tensors(weights, true, 0, DType::F32, Device::Cpu);
    let model = Gpt::new(name, cfg, scope.clone())?;
    scope.check_all_used()?;
    Ok((model, report))
}
