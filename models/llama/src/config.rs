//! [`LlamaConfig`]: the architecture's sizes, with Hugging Face's names; read from a
//! `config.json` or from GGUF metadata.

use std::path::Path;

use kiln_gguf::GgufFile;
use kiln_tensor::quant::QuantPath;
use kiln_zoo::{Error, Result};
use serde::{Deserialize, Serialize};

/// How rotary embeddings pair the dimensions of a head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RopeLayout {
    /// Dimension `i` rotates with `i + head_dim / 2` (Hugging Face's `rotate_half`).
    #[default]
    Halves,
    /// Dimensions `2i` and `2i + 1` rotate together (llama.cpp; GGUF files store the query and
    /// key rows permuted for it).
    Pairs,
}

/// A Llama-family decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Token ids.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
    /// Context length (positions).
    pub max_position_embeddings: usize,
    /// The head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// How rotary embeddings pair dimensions.
    #[serde(default)]
    pub rope_layout: RopeLayout,
    /// How products with quantized weights treat the activations.
    #[serde(default)]
    pub quant_path: QuantPath,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

impl LlamaConfig {
    /// SmolLM2-135M: 30 blocks, width 576, 9 query and 3 key/value heads, MLP 1536, vocabulary
    /// 49152, context 8192, rope base 100000, tied head.
    pub fn smollm2_135m() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            rope_layout: RopeLayout::Halves,
            quant_path: QuantPath::Int8Activations,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    /// A small model for tests and CPU experiments: 2 blocks, width 64, 4 query and 2 key/value
    /// heads, MLP 128, 256 byte-level ids, context 128.
    pub fn tiny() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 256,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 128,
            tie_word_embeddings: false,
            rope_layout: RopeLayout::Halves,
            quant_path: QuantPath::Int8Activations,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Width of the keys (and values) of one position.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim()
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self, model: &str) -> Result<()> {
        let err = |reason: String| {
            Err(Error::Config {
                model: model.into(),
                reason,
            })
        };
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return err(format!("{name} must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) || !self.head_dim().is_multiple_of(2) {
            return err(format!(
                "hidden_size {} must split into {} heads of an even width",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return err(format!(
                "num_attention_heads {} must be a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 1.0) {
            return err(format!(
                "rms_norm_eps {} must be positive and rope_theta {} above 1",
                self.rms_norm_eps, self.rope_theta
            ));
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json` (`LlamaForCausalLM` and kin).
    pub fn from_hf_config(path: &Path) -> Result<LlamaConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            model: "llama".into(),
            reason: format!("reading {}: {e}", path.display()),
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            model: "llama".into(),
            reason: format!("{} is not valid JSON: {e}", path.display()),
        })?;
        let need = |key: &str| -> Result<usize> {
            v.get(key)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| Error::Config {
                    model: "llama".into(),
                    reason: format!("{} has no integer \"{key}\"", path.display()),
                })
        };
        let heads = need("num_attention_heads")?;
        let cfg = LlamaConfig {
            vocab_size: need("vocab_size")?,
            hidden_size: need("hidden_size")?,
            intermediate_size: need("intermediate_size")?,
            num_hidden_layers: need("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: v
                .get("num_key_value_heads")
                .and_then(|x| x.as_u64())
                .map_or(heads, |x| x as usize),
            rms_norm_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6),
            rope_theta: v.get("rope_theta").and_then(|x| x.as_f64()).unwrap_or(10_000.0),
            max_position_embeddings: need("max_position_embeddings")?,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            rope_layout: RopeLayout::Halves,
            quant_path: QuantPath::default(),
            bos_token_id: v.get("bos_token_id").and_then(|x| x.as_u64()).map(|x| x as u32),
            eos_token_id: v.get("eos_token_id").and_then(|x| x.as_u64()).map(|x| x as u32),
        };
        cfg.validate("llama")?;
        Ok(cfg)
    }

    /// Reads the `llama.*` metadata of a GGUF file (and the vocabulary size from its tokenizer
    /// or token embedding). Rotary pairs follow llama.cpp's layout of the stored weights.
    pub fn from_gguf(file: &GgufFile) -> Result<LlamaConfig> {
        let gg = |e: kiln_gguf::GgufError| Error::Config {
            model: "llama".into(),
            reason: e.to_string(),
        };
        let arch = file.get_str("general.architecture").map_err(gg)?;
        if arch != "llama" {
            return Err(Error::Config {
                model: "llama".into(),
                reason: format!("the GGUF file holds a {arch:?} model; this plugin reads \"llama\""),
            });
        }
        let u = |key: &str| file.get_u32(key).map(|v| v as usize).map_err(gg);
        let heads = u("llama.attention.head_count")?;
        let vocab_size = match file.get("llama.vocab_size").and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => file.get_string_array("tokenizer.ggml.tokens").map_err(gg)?.len(),
        };
        let tied = file.tensor("output.weight").is_err();
        let cfg = LlamaConfig {
            vocab_size,
            hidden_size: u("llama.embedding_length")?,
            intermediate_size: u("llama.feed_forward_length")?,
            num_hidden_layers: u("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: file
                .get("llama.attention.head_count_kv")
                .and_then(|v| v.as_u64())
                .map_or(heads, |v| v as usize),
            rms_norm_eps: file
                .get_f32("llama.attention.layer_norm_rms_epsilon")
                .map_err(gg)? as f64,
            rope_theta: file
                .get("llama.rope.freq_base")
                .and_then(|v| v.as_f32())
                .map_or(10_000.0, |v| v as f64),
            max_position_embeddings: u("llama.context_length")?,
            tie_word_embeddings: tied,
            rope_layout: RopeLayout::Pairs,
            quant_path: QuantPath::default(),
            bos_token_id: file.get("tokenizer.ggml.bos_token_id").and_then(|v| v.as_u32()),
            eos_token_id: file.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_u32()),
        };
        cfg.validate("llama")?;
        Ok(cfg)
    }
}
