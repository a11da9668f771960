//! [`BertConfig`]: the encoder's sizes, with Hugging Face's names; the presets, and the checks
//! that the sizes fit together.

use kiln_zoo::{Error, Result};
use serde::{Deserialize, Serialize};

/// A BERT encoder: embeddings, post-LN layers (exact-GELU MLP), pooler.
///
/// As a zoo config every field must be given and an unknown one is an error (`pad_token_id`
/// defaults to 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertConfig {
    /// Token ids.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads (`hidden_size` must be a multiple).
    pub num_attention_heads: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Positions (the longest input, special tokens included).
    pub max_position_embeddings: usize,
    /// Token types (segments).
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// The padding id: [`Model::forward`](kiln_zoo::Model::forward) masks positions holding it.
    #[serde(default)]
    pub pad_token_id: u32,
    /// Classes of a sequence classifier (`bert-classifier`; 2 when unset); other models ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
}

impl BertConfig {
    /// `sentence-transformers/all-MiniLM-L6-v2`: 6 layers, width 384, 12 heads, MLP 1536,
    /// vocabulary 30522, 512 positions, 2 token types, eps 1e-12.
    pub fn all_minilm_l6_v2() -> BertConfig {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            num_labels: None,
        }
    }

    /// `bert-base-uncased`: 12 layers, width 768, 12 heads, MLP 3072, vocabulary 30522.
    pub fn bert_base() -> BertConfig {
        BertConfig {
            hidden_size: 768,
            num_hidden_layers: 12,
            intermediate_size: 3072,
            ..Self::all_minilm_l6_v2()
        }
    }

    /// Google's BERT-Tiny: 2 layers, width 128, 2 heads, MLP 512, vocabulary 30522.
    pub fn bert_tiny() -> BertConfig {
        BertConfig {
            hidden_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 512,
            ..Self::all_minilm_l6_v2()
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks that the sizes fit together; the error names the field.
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
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return err(format!("{name} must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return err(format!("layer_norm_eps {} must be positive", self.layer_norm_eps));
        }
        if self.pad_token_id as usize >= self.vocab_size {
            return err(format!(
                "pad_token_id {} is outside the vocabulary of {}",
                self.pad_token_id, self.vocab_size
            ));
        }
        Ok(())
    }
}
