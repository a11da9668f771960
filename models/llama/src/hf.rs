//! Loading a Hugging Face Llama directory: `config.json` and `model.safetensors`.

use std::collections::HashMap;
use std::path::Path;

use kiln_nn::Scope;
use kiln_tensor::{DType, Device};
use kiln_zoo::{Error, Result};

use crate::config::LlamaConfig;
use crate::model::Llama;

/// Loads `config.json` + `model.safetensors` from `dir` strictly: every parameter present with
/// its shape, no unknown key (a tied model's `lm_head.weight`, if saved, is dropped).
pub fn load_hf_dir(dir: &Path, name: &str) -> Result<Llama> {
    let cfg = LlamaConfig::from_hf_config(&dir.join("config.json"))?;
    let file = dir.join("model.safetensors");
    if !file.is_file() {
        return Err(Error::Config {
            model: name.into(),
            reason: format!("{} has no model.safetensors", dir.display()),
        });
    }
    let mut weights: HashMap<_, _> = kiln_tensor::io::load_safetensors(&file)?;
    if cfg.tie_word_embeddings {
        weights.remove("lm_head.weight");
    }
    let scope = Scope::from_tensors(weights, true, 0, DType::F32, Device::Cpu);
    let model = Llama::new(name, cfg, scope.clone())?;
    scope.check_all_used()?;
    Ok(model)
}
