//! `lstm-lm`: embedding → multi-layer LSTM → linear to the vocabulary.

use kiln_autograd::{Param, Var};
use kiln_nn::layers::{Embedding, Linear, Lstm, RnnConfig};
use kiln_nn::{Init, Module, Scope};
use kiln_tensor::{DType, Tensor};
use kiln_zoo::generate::{CausalLm, DecodeState};
use kiln_zoo::{Batch, Model, Output, Result, Task};
use serde::{Deserialize, Serialize};

use crate::dropout_rng::DropoutRng;
use crate::input::{config_err, cross_entropy, targets, token_ids};

const NAME: &str = "lstm-lm";

/// Configuration of [`LstmLm`]. The default is a character model for tinyshakespeare's 65
/// characters: embedding 128, 2 layers of 256, no dropout, untied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LstmLmConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Size of the token embeddings (the first layer's input).
    pub embedding_dim: usize,
    /// Hidden size of every LSTM layer.
    pub hidden_size: usize,
    /// Stacked LSTM layers.
    pub num_layers: usize,
    /// Dropout on the outputs of every LSTM layer but the last, in training (as `nn.LSTM`'s
    /// `dropout`), in `[0, 1)`.
    pub dropout: f64,
    /// Use the embedding table as the output projection's weight (needs `hidden_size ==
    /// embedding_dim`).
    pub tie_embeddings: bool,
}

impl Default for LstmLmConfig {
    fn default() -> Self {
        LstmLmConfig {
            vocab_size: 65,
            embedding_dim: 128,
            hidden_size: 256,
            num_layers: 2,
            dropout: 0.0,
            tie_embeddings: false,
        }
    }
}

impl LstmLmConfig {
    fn validate(&self) -> Result<()> {
        let c = self;
        if c.vocab_size == 0 || c.embedding_dim == 0 || c.hidden_size == 0 || c.num_layers == 0 {
            return Err(config_err(
                NAME,
                format!("vocab_size, embedding_dim, hidden_size and num_layers must be > 0, got {c:?}"),
            ));
        }
        if !(0.0..1.0).contains(&c.dropout) {
            return Err(config_err(
                NAME,
                format!("dropout must be in [0, 1), got {}", c.dropout),
            ));
        }
        if c.tie_embeddings && c.hidden_size != c.embedding_dim {
            return Err(config_err(
                NAME,
                format!(
                    "tie_embeddings needs hidden_size == embedding_dim, got hidden_size {} and embedding_dim {}",
                    c.hidden_size, c.embedding_dim
                ),
            ));
        }
        Ok(())
    }
}

/// The projection from hidden states to token logits.
enum Head {
    /// `decoder.weight` `[V, H]`, `decoder.bias` `[V]`.
    Linear(Linear),
    /// The embedding table `[V, E]` (E = H) and `decoder.bias` `[V]`.
    Tied { weight: Param, bias: Param },
}

/// An LSTM language model: `embedding` `[V, E]` → `lstm` (`nn.LSTM(E, H, num_layers, dropout,
/// batch_first=True)`, PyTorch's parameter names `lstm.weight_ih_l{k}`, ...) → `decoder`
/// (`[V, H]` + bias, or the embedding table when tied).
///
/// `forward` takes token ids `[B, T]` and returns logits `[B, T, V]`; with targets `[B, T]` (the
/// next token at each position) the loss is the mean cross-entropy over all `B * T` positions.
/// As a [`CausalLm`] it carries the LSTM's `(h, c)` from token to token. With dropout, the
/// buffer `lstm.dropout_rng` keeps the dropout generator in checkpoints so a resumed run is exact.
pub struct LstmLm {
    cfg: LstmLmConfig,
    embedding: Embedding,
    lstm: Lstm,
    head: Head,
    dropout_rng: Option<DropoutRng>,
}

impl LstmLm {
    /// Build with parameters from `scope`.
    pub fn new(cfg: LstmLmConfig, scope: Scope) -> Result<LstmLm> {
        cfg.validate()?;
        let embedding = Embedding::new(scope.sub("embedding"), cfg.vocab_size, cfg.embedding_dim, None)?;
        let rnn = RnnConfig::new(cfg.embedding_dim, cfg.hidden_size)
            .num_layers(cfg.num_layers)
            .dropout(cfg.dropout)
            .batch_first(true);
        let lstm = Lstm::new(scope.sub("lstm"), rnn)?;
        let dropout_rng = match lstm.dropout() {
            Some(d) => Some(DropoutRng::new(&scope.sub("lstm"), "dropout_rng", d)?),
            None => None,
        };
        let head = if cfg.tie_embeddings {
            let bound = 1.0 / (cfg.hidden_size as f64).sqrt();
            Head::Tied {
                weight: embedding.weight().clone(),
                bias: scope.sub("decoder").param(
                    "bias",
                    [cfg.vocab_size],
                    Init::Uniform {
                        lo: -bound,
                        hi: bound,
                    },
                )?,
            }
        } else {
            Head::Linear(Linear::new(
                scope.sub("decoder"),
                cfg.hidden_size,
                cfg.vocab_size,
            )?)
        };
        Ok(LstmLm {
            cfg,
            embedding,
            lstm,
            head,
            dropout_rng,
        })
    }

    /// The configuration.
    pub fn cfg(&self) -> &LstmLmConfig {
        &self.cfg
    }

    /// Logits `[B, T, V]` for ids `[B, T]` from the states `(h, c)` (`[layers, B, H]`, zeros when
    /// `None`), and the final states.
    pub fn forward_with_state(&self, ids: &Tensor, state: Option<(&Var, &Var)>) -> Result<(Var, (Var, Var))> {
        let [b, t] = token_ids(NAME, "inputs", ids, self.cfg.vocab_size)?;
        let x = self.embedding.lookup(ids)?;
        let (h, state) = match (&self.dropout_rng, self.lstm.dropout()) {
            (Some(rng), Some(d)) => rng.around(d, || Ok(self.lstm.forward_with_state(&x, state)?))?,
            _ => self.lstm.forward_with_state(&x, state)?,
        };
        let rows = h.reshape([b * t, self.cfg.hidden_size])?;
        let logits = match &self.head {
            Head::Linear(l) => l.forward(&rows)?,
            Head::Tied { weight, bias } => rows.matmul_bias(&weight.var().t()?, &bias.var())?,
        };
        Ok((logits.reshape([b, t, self.cfg.vocab_size])?, state))
    }
}

impl Model for LstmLm {
    fn name(&self) -> &str {
        NAME
    }
    fn task(&self) -> Task {
        Task::CausalLm
    }
    fn forward(&self, batch: &Batch) -> Result<Output> {
        let (logits, _) = self.forward_with_state(&batch.inputs, None)?;
        let loss = match &batch.targets {
            None => None,
            Some(t) => {
                let (b, s, v) = (logits.dims()[0], logits.dims()[1], self.cfg.vocab_size);
                let t = targets(NAME, t, &[b, s], v)?;
                Some(cross_entropy(&logits.reshape([b * s, v])?, &t.reshape([b * s])?)?)
            }
        };
        Ok(Output::new(logits, loss))
    }
    fn parameters(&self) -> Vec<Param> {
        let mut p = self.embedding.parameters();
        p.extend(self.lstm.parameters());
        p.extend(self.dropout_rng.as_ref().map(|r| r.param().clone()));
        match &self.head {
            Head::Linear(l) => p.extend(l.parameters()),
            Head::Tied { bias, .. } => p.push(bias.clone()),
        }
        p
    }
    fn set_training(&self, training: bool) {
        self.lstm.set_training(training);
    }
    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).unwrap_or_default()
    }
    fn as_causal_lm(&self) -> Option<&dyn CausalLm> {
        Some(self)
    }
}

impl CausalLm for LstmLm {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn start(&self) -> Result<Box<dyn DecodeState + '_>> {
        Ok(Box::new(LmState {
            model: self,
            state: None,
        }))
    }
}

/// Generation state of [`LstmLm`]: the LSTM's `(h, c)` after the tokens fed so far.
struct LmState<'a> {
    model: &'a LstmLm,
    state: Option<(Var, Var)>,
}

impl DecodeState for LmState<'_> {
    /// Runs only the new tokens, from the carried `(h, c)`. Call it in eval mode
    /// (`set_training(false)`) so dropout is off.
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let _no_grad = kiln_autograd::no_grad();
        let n = ids.len();
        let ids = Tensor::from_vec(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, n])?;
        let state = self.state.as_ref().map(|(h, c)| (h, c));
        let (logits, next) = self.model.forward_with_state(&ids, state)?;
        self.state = Some(next);
        let last = logits.value().narrow(1, n.saturating_sub(1), 1)?;
        Ok(last.to_dtype(DType::F32)?.flatten_all()?.to_vec::<f32>()?)
    }
}

pub(crate) fn default_json() -> serde_json::Value {
    serde_json::to_value(LstmLmConfig::default()).unwrap_or_default()
}

pub(crate) fn build(cfg: &serde_json::Value, scope: Scope) -> Result<Box<dyn Model>> {
    let cfg: LstmLmConfig = kiln_zoo::parse_config(NAME, cfg)?;
    Ok(Box::new(LstmLm::new(cfg, scope)?))
}
