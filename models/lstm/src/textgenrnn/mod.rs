//! `textgenrnn`: Max Woolf's character model (textgenrnn 2.0), which loads the real pretrained
//! weights by their own names.

mod decode;
mod keras_lstm;
mod vocab;

pub use vocab::{TextGenRnnVocab, META_TOKEN};

use kiln_autograd::{Param, Var};
use kiln_nn::layers::Embedding;
use kiln_nn::{Init, Module, Scope};
use kiln_tensor::Tensor;
use kiln_zoo::generate::CausalLm;
use kiln_zoo::{Batch, Model, Output, Result, Task};
use serde::{Deserialize, Serialize};

use crate::input::{config_err, cross_entropy, targets, token_ids};
use keras_lstm::KerasLstm;

const NAME: &str = "textgenrnn";

/// Configuration of [`TextGenRnn`]; the default is the pretrained model shipped with
/// textgenrnn 2.0 (465 ids, embedding 100, two LSTMs of 128, a 40-character window).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextGenRnnConfig {
    /// Number of ids (characters, `<s>` and the padding 0).
    pub vocab_size: usize,
    /// Size of the character embeddings.
    pub embedding_dim: usize,
    /// Units of every LSTM.
    pub rnn_size: usize,
    /// Number of LSTMs (`rnn_1`, `rnn_2`, ...), each reading the previous one's outputs.
    pub rnn_layers: usize,
    /// The window of characters the model reads to predict the next one (left-padded with 0).
    pub max_length: usize,
}

impl Default for TextGenRnnConfig {
    fn default() -> Self {
        TextGenRnnConfig {
            vocab_size: 465,
            embedding_dim: 100,
            rnn_size: 128,
            rnn_layers: 2,
            max_length: 40,
        }
    }
}

impl TextGenRnnConfig {
    /// Width of the concatenated features the attention pools: `embedding_dim + rnn_layers *
    /// rnn_size` (356 for the pretrained model).
    pub fn features(&self) -> usize {
        self.embedding_dim + self.rnn_layers * self.rnn_size
    }
}

/// textgenrnn: `embedding` → `rnn_1` → `rnn_2` (Keras LSTMs returning sequences) →
/// concatenation `[embedding, rnn_1, rnn_2]` per time step → attention-weighted average over time
/// (`a_t = softmax_t(x_t · attention.W)`, with textgenrnn's `1e-7` added to the softmax's
/// denominator) → `output` dense layer to next-character logits.
///
/// Parameter names are those of the pretrained weights file (`embedding.weight`, `rnn_1.kernel`
/// `[in, 4H]`, `rnn_1.recurrent_kernel` `[H, 4H]`, `rnn_1.bias` `[4H]`, ..., `attention.W`
/// `[F, 1]`, `output.kernel` `[F, V]`, `output.bias` `[V]`), so
/// `Scope::from_safetensors(textgenrnn_weights.safetensors, strict)` loads it unchanged. The
/// gates are logistic sigmoids (textgenrnn 2.0 runs on tf.keras, whose LSTM default is
/// `sigmoid`, not the old `hard_sigmoid`; the references only match with the logistic one).
///
/// `forward` takes windows of ids `[B, T]` and returns the logits of the character after each
/// window, `[B, V]`; targets are those characters `[B]`. As a [`CausalLm`], the decoding state is
/// the last `max_length` ids, left-padded with 0, re-read in full for every new character, as
/// textgenrnn generates. (One difference from the reference script: were the padding id 0 ever
/// generated, it is fed back as 0, where the script re-encodes its text `?`.)
pub struct TextGenRnn {
    cfg: TextGenRnnConfig,
    embedding: Embedding,
    rnns: Vec<KerasLstm>,
    attention: Param,
    out_kernel: Param,
    out_bias: Param,
}

impl TextGenRnn {
    /// Build with parameters from `scope`.
    pub fn new(cfg: TextGenRnnConfig, scope: Scope) -> Result<TextGenRnn> {
        let c = &cfg;
        if c.vocab_size == 0
            || c.embedding_dim == 0
            || c.rnn_size == 0
            || c.rnn_layers == 0
            || c.max_length == 0
        {
            return Err(config_err(NAME, format!("every size must be > 0, got {c:?}")));
        }
        let embedding = Embedding::new(scope.sub("embedding"), c.vocab_size, c.embedding_dim, None)?;
        let mut rnns = Vec::with_capacity(c.rnn_layers);
        for k in 0..c.rnn_layers {
            let input = if k == 0 { c.embedding_dim } else { c.rnn_size };
            rnns.push(KerasLstm::new(
                scope.sub(format!("rnn_{}", k + 1)),
                input,
                c.rnn_size,
            )?);
        }
        let f = c.features();
        let uniform = Init::Uniform { lo: -0.05, hi: 0.05 };
        let attention = scope.sub("attention").param("W", [f, 1], uniform)?;
        let out = scope.sub("output");
        let out_kernel = out.param("kernel", [f, c.vocab_size], Init::XavierUniform { gain: 1.0 })?;
        let out_bias = out.param("bias", [c.vocab_size], Init::Zeros)?;
        Ok(TextGenRnn {
            cfg,
            embedding,
            rnns,
            attention,
            out_kernel,
            out_bias,
        })
    }

    /// The configuration.
    pub fn cfg(&self) -> &TextGenRnnConfig {
        &self.cfg
    }

    /// The per-step features `[B, T, F]` (embedding and every LSTM's outputs, concatenated) for
    /// ids `[B, T]`.
    pub fn features(&self, ids: &Tensor) -> Result<Var> {
        token_ids(NAME, "inputs", ids, self.cfg.vocab_size)?;
        let mut x = self.embedding.lookup(ids)?;
        let mut parts = vec![x.clone()];
        for rnn in &self.rnns {
            x = rnn.forward(&x)?;
            parts.push(x.clone());
        }
        Ok(Var::cat(&parts, 2)?)
    }

    /// Next-character logits `[B, V]` for windows of ids `[B, T]`.
    pub fn logits(&self, ids: &Tensor) -> Result<Var> {
        let x = self.features(ids)?;
        let scores = x.matmul(&self.attention.var())?; // [B, T, 1]
        let a = scores.sub(&scores.max(1, true)?)?.exp()?;
        let a = a.div(&a.sum(1, true)?.add_scalar(1e-7)?)?;
        let pooled = x.mul(&a)?.sum(1, false)?; // [B, F]
        Ok(pooled.matmul_bias(&self.out_kernel.var(), &self.out_bias.var())?)
    }
}

impl Model for TextGenRnn {
    fn name(&self) -> &str {
        NAME
    }
    fn task(&self) -> Task {
        Task::CausalLm
    }
    fn forward(&self, batch: &Batch) -> Result<Output> {
        let logits = self.logits(&batch.inputs)?;
        let loss = match &batch.targets {
            None => None,
            Some(t) => {
                let t = targets(NAME, t, &[logits.dims()[0]], self.cfg.vocab_size)?;
                Some(cross_entropy(&logits, &t)?)
            }
        };
        Ok(Output::new(logits, loss))
    }
    fn parameters(&self) -> Vec<Param> {
        let mut p = self.embedding.parameters();
        p.extend(self.rnns.iter().flat_map(KerasLstm::parameters));
        p.extend([
            self.attention.clone(),
            self.out_kernel.clone(),
            self.out_bias.clone(),
        ]);
        p
    }
    fn set_training(&self, _training: bool) {}
    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).unwrap_or_default()
    }
    fn as_causal_lm(&self) -> Option<&dyn CausalLm> {
        Some(self)
    }
}

pub(crate) fn default_json() -> serde_json::Value {
    serde_json::to_value(TextGenRnnConfig::default()).unwrap_or_default()
}

pub(crate) fn build(cfg: &serde_json::Value, scope: Scope) -> Result<Box<dyn Model>> {
    let cfg: TextGenRnnConfig = kiln_zoo::parse_config(NAME, cfg)?;
    Ok(Box::new(TextGenRnn::new(cfg, scope)?))
}
