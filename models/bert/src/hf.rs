//! Loading a Hugging Face BERT directory: `config.json`, `model.safetensors` (memory-mapped;
//! keys with or without the `bert.` prefix), `tokenizer.json`, and sentence-transformers'
//! `sentence_bert_config.json` when present.

use std::collections::HashMap;
use std::path::Path;

use kiln_data::text::Tokenizer;
use kiln_nn::Scope;
use kiln_tensor::{DType, Device, Tensor};
use kiln_zoo::{Error, Result};
use serde::Deserialize;

use crate::config::BertConfig;
use crate::model::BertModel;

/// A Hugging Face `config.json` of a `BertModel`. Every field Hugging Face writes is listed: an
/// unknown field is an error naming it (serde's message), so is a missing size.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // fields read only to accept them
struct HfBertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    is_decoder: Option<bool>,
    // Accepted and ignored: training settings and bookkeeping.
    #[serde(default, rename = "_name_or_path")]
    name_or_path: Option<serde_json::Value>,
    #[serde(default)]
    architectures: Option<serde_json::Value>,
    #[serde(default)]
    attention_probs_dropout_prob: Option<serde_json::Value>,
    #[serde(default)]
    hidden_dropout_prob: Option<serde_json::Value>,
    #[serde(default)]
    classifier_dropout: Option<serde_json::Value>,
    #[serde(default)]
    gradient_checkpointing: Option<serde_json::Value>,
    #[serde(default)]
    initializer_range: Option<serde_json::Value>,
    #[serde(default)]
    transformers_version: Option<serde_json::Value>,
    #[serde(default)]
    use_cache: Option<serde_json::Value>,
    #[serde(default)]
    torch_dtype: Option<serde_json::Value>,
    #[serde(default)]
    id2label: Option<serde_json::Value>,
    #[serde(default)]
    label2id: Option<serde_json::Value>,
    #[serde(default)]
    output_past: Option<serde_json::Value>,
    #[serde(default)]
    problem_type: Option<serde_json::Value>,
}

impl BertConfig {
    /// Reads a Hugging Face `config.json` (`BertModel`, `model_type` "bert", exact GELU, absolute
    /// positions). An unknown or missing field, or an unsupported setting, is an error naming it.
    pub fn from_hf_config(path: &Path) -> Result<BertConfig> {
        let err = |reason: String| Error::Config {
            model: "bert".into(),
            reason,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        let hf: HfBertConfig =
            serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let checks = [
            ("model_type", hf.model_type.as_deref(), "bert"),
            ("hidden_act", hf.hidden_act.as_deref(), "gelu"),
            (
                "position_embedding_type",
                hf.position_embedding_type.as_deref(),
                "absolute",
            ),
        ];
        for (field, got, want) in checks {
            if let Some(got) = got.filter(|g| *g != want) {
                return Err(err(format!(
                    "{}: {field} {got:?} is not supported (only {want:?})",
                    path.display()
                )));
            }
        }
        if hf.is_decoder == Some(true) {
            return Err(err(format!(
                "{}: is_decoder = true is not supported",
                path.display()
            )));
        }
        let cfg = BertConfig {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            intermediate_size: hf.intermediate_size,
            max_position_embeddings: hf.max_position_embeddings,
            type_vocab_size: hf.type_vocab_size,
            layer_norm_eps: hf.layer_norm_eps,
            pad_token_id: hf.pad_token_id.unwrap_or(0),
            num_labels: None,
        };
        cfg.validate("bert")?;
        Ok(cfg)
    }
}

/// What [`load_hf_dir`] skipped or found beside the weights.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HfLoadReport {
    /// Keys that are not encoder parameters: buffers (`embeddings.position_ids`) and pre-training
    /// heads (`cls.*`), as named in the file.
    pub ignored: Vec<String>,
    /// `max_seq_length` of `sentence_bert_config.json` (sentence-transformers truncates inputs
    /// there), when the directory has one.
    pub max_seq_length: Option<usize>,
}

/// Renames a BERT state dict to the encoder's names: strips `bert.`, drops the position-id
/// buffers and the pre-training heads (`cls.*`) into the report.
pub fn hf_to_kiln(weights: HashMap<String, Tensor>) -> (HashMap<String, Tensor>, Vec<String>) {
    let mut out = HashMap::with_capacity(weights.len());
    let mut ignored = Vec::new();
    for (key, t) in weights {
        let name = key.strip_prefix("bert.").unwrap_or(&key);
        if name.ends_with("position_ids") || name.starts_with("cls.") {
            ignored.push(key);
            continue;
        }
        out.insert(name.to_string(), t);
    }
    ignored.sort();
    (out, ignored)
}

/// Builds a [`BertModel`] of `cfg` from a state dict (Hugging Face names, with or without
/// `bert.`) strictly: every parameter present with the shape the config gives it (an error names
/// the tensor and both shapes), no unknown key. f16/bf16 tensors are converted to f32.
pub fn load_weights(
    cfg: BertConfig,
    weights: HashMap<String, Tensor>,
    name: &str,
) -> Result<(BertModel, Vec<String>)> {
    let (weights, ignored) = hf_to_kiln(weights);
    let scope = Scope::from_tensors(weights, true, 0, DType::F32, Device::Cpu);
    let model = BertModel::new(name, cfg, scope.clone())?;
    scope.check_all_used()?;
    Ok((model, ignored))
}

/// Loads a Hugging Face BERT directory (`config.json` + `model.safetensors`, memory-mapped) as
/// the model `name`. See [`load_weights`] for what is checked.
pub fn load_hf_dir(dir: &Path, name: &str) -> Result<(BertModel, HfLoadReport)> {
    let cfg = BertConfig::from_hf_config(&dir.join("config.json"))?;
    let file = dir.join("model.safetensors");
    if !file.is_file() {
        return Err(Error::Config {
            model: name.into(),
            reason: format!("{} has no model.safetensors", dir.display()),
        });
    }
    let (model, ignored) = load_weights(cfg, kiln_tensor::io::load_safetensors(&file)?, name)?;
    let max_seq_length = sentence_max_len(dir)?;
    Ok((
        model,
        HfLoadReport {
            ignored,
            max_seq_length,
        },
    ))
}

/// `max_seq_length` of `dir/sentence_bert_config.json`, if the file exists.
fn sentence_max_len(dir: &Path) -> Result<Option<usize>> {
    let path = dir.join("sentence_bert_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        model: "bert".into(),
        reason: format!("{} is not JSON: {e}", path.display()),
    })?;
    Ok(v.get("max_seq_length")
        .and_then(|x| x.as_u64())
        .map(|x| x as usize))
}

/// The WordPiece tokenizer of a Hugging Face directory (`tokenizer.json`).
pub fn hf_tokenizer(dir: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| Error::Config {
        model: "bert".into(),
        reason: e.to_string(),
    })
}
