//! [`GptConfig`]: the GPT-2 hyper-parameters, with the presets and the Hugging Face `config.json`
//! reader.

use std::path::Path;

use kiln_zoo::{Error, Result};
use serde::{Deserialize, Serialize};

/// GPT-2's hyper-parameters, named as in Hugging Face's `GPT2Config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Context length: the number of learned positions.
    pub n_positions: usize,
    /// Model width.
    pub n_embd: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block (divides `n_embd`).
    pub n_head: usize,
    /// Hidden width of the MLP; `None` means `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Standard deviation of the normal initialisation (GPT-2: 0.02); residual output projections
    /// use `initializer_range / sqrt(2 * n_layer)`.
    #[serde(default = "default_init")]
    pub initializer_range: f64,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_init() -> f64 {
    0.02
}

impl GptConfig {
    /// GPT-2 small (124M parameters).
    pub fn gpt2() -> GptConfig {
        GptConfig {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: None,
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
        }
    }

    /// GPT-2 medium (355M parameters).
    pub fn gpt2_medium() -> GptConfig {
        GptConfig {
            n_embd: 1024,
            n_layer: 24,
            n_head: 16,
            ..Self::gpt2()
        }
    }

    /// nanoGPT's CPU shakespeare-char model: 4 layers, 4 heads, width 128, context 64, 65 characters.
    pub fn tiny() -> GptConfig {
        GptConfig {
            vocab_size: 65,
            n_positions: 64,
            n_embd: 128,
            n_layer: 4,
            n_head: 4,
            ..Self::gpt2()
        }
    }

    /// The MLP's hidden width.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Check every field; the error says which one and what is allowed.
    pub fn validate(&self, model: &str) -> Result<()> {
        let err = |reason: String| {
            Err(Error::Config {
                model: model.into(),
                reason,
            })
        };
        let c = self;
        if c.vocab_size == 0 || c.n_positions == 0 || c.n_embd == 0 || c.n_layer == 0 || c.n_head == 0 {
            return err(format!(
                "vocab_size, n_positions, n_embd, n_layer and n_head must be > 0, got {c:?}"
            ));
        }
        if !c.n_embd.is_multiple_of(c.n_head) {
            return err(format!(
                "n_embd ({}) must be a multiple of n_head ({})",
                c.n_embd, c.n_head
            ));
        }
        if c.n_inner == Some(0) {
            return err("n_inner must be > 0 (or null for 4 * n_embd)".into());
        }
        if !(c.layer_norm_epsilon > 0.0 && c.initializer_range > 0.0) {
            return err(format!(
                "layer_norm_epsilon ({}) and initializer_range ({}) must be > 0",
                c.layer_norm_epsilon, c.initializer_range
            ));
        }
        Ok(())
    }

    /// Read a Hugging Face GPT-2 `config.json` (`model_type` "gpt2"). Fields kiln does not model
    /// are ignored, except those that would change the computation: a non-`gelu_new` activation,
    /// `scale_attn_by_inverse_layer_idx` or `reorder_and_upcast_attn` are errors.
    pub fn from_hf_config(path: &Path) -> Result<GptConfig> {
        let model = "gpt";
        let err = |reason: String| Error::Config {
            model: model.into(),
            reason,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(format!("{} is not JSON: {e}", path.display())))?;
        if let Some(t) = v.get("model_type").and_then(|t| t.as_str()) {
            if t != "gpt2" {
                return Err(err(format!(
                    "{} is a {t:?} config; the gpt model reads model_type \"gpt2\"",
                    path.display()
                )));
            }
        }
        let act = v
            .get("activation_function")
            .and_then(|a| a.as_str())
            .unwrap_or("gelu_new");
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
            return Err(err(format!(
                "activation_function {act:?} is not supported (GPT-2 uses the tanh approximation \"gelu_new\")"
            )));
        }
        for flag in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"] {
            if v.get(flag).and_then(|f| f.as_bool()) == Some(true) {
                return Err(err(format!("{flag} = true is not supported")));
            }
        }
        let num = |key: &str| -> Result<usize> {
            v.get(key)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| err(format!("{} lacks the integer field {key:?}", path.display())))
        };
        let cfg = GptConfig {
            vocab_size: num("vocab_size")?,
            n_positions: num("n_positions")?,
            n_embd: num("n_embd")?,
            n_layer: num("n_layer")?,
            n_head: num("n_head")?,
            n_inner: v.get("n_inner").and_then(|x| x.as_u64()).map(|x| x as usize),
            layer_norm_epsilon: v
                .get("layer_norm_epsilon")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-5),
            initializer_range: v
                .get("initializer_range")
                .and_then(|x| x.as_f64())
                .unwrap_or(0.02),
        };
        cfg.validate(model)?;
        Ok(cfg)
    }
}
