//! [`BertModel`]: the encoder with Hugging Face's parameter names, its inputs ([`BertInput`]) and
//! outputs ([`BertOutput`]). One forward pass on autograd variables serves training (the
//! pre-training and classification models wrap it) and inference (run under `no_grad`).

use std::sync::atomic::AtomicBool;

use kiln_autograd::{Param, Var};
use kiln_nn::Scope;
use kiln_tensor::{DType, Tensor};
use kiln_zoo::{Error, Result};

use crate::attention::mask_bias;
use crate::config::BertConfig;
use crate::embeddings::Embeddings;
use crate::layer::BertLayer;
use crate::layers::Dense;
use crate::pooling::{l2_normalize, mean_pool};

/// A batch of token sequences for [`BertModel::forward_input`], all of `seq_len` positions
/// (pad shorter ones and mark the padding 0 in `attention_mask`). Row-major `[batch, seq_len]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BertInput {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Segment of each token (0 for a single sentence).
    pub type_ids: Vec<u32>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<u32>,
    /// Sequences.
    pub batch: usize,
    /// Positions of every sequence.
    pub seq_len: usize,
}

impl BertInput {
    /// Pads `sequences` on the right with `pad_id` to the longest of them (type ids 0).
    pub fn padded(sequences: &[Vec<u32>], pad_id: u32) -> BertInput {
        let seq_len = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut input = BertInput {
            batch: sequences.len(),
            seq_len,
            ..BertInput::default()
        };
        for s in sequences {
            let pad = seq_len - s.len();
            input
                .ids
                .extend(s.iter().copied().chain(std::iter::repeat_n(pad_id, pad)));
            input
                .attention_mask
                .extend(std::iter::repeat_n(1, s.len()).chain(std::iter::repeat_n(0, pad)));
        }
        input.type_ids = vec![0; input.ids.len()];
        input
    }

    /// A batch from a zoo input tensor: token ids `[B, L]` (positions holding `pad_id` are
    /// padding, type ids 0), or `[B, 3, L]` holding token ids, token type ids and the attention
    /// mask (1 real, 0 padding), the layout of kiln's BERT datasets. The error says what is wrong.
    pub fn from_tensor(inputs: &Tensor, pad_id: u32) -> std::result::Result<BertInput, String> {
        if inputs.dtype().is_float() {
            return Err(format!(
                "inputs must be integer token ids; got {:?}",
                inputs.dtype()
            ));
        }
        let raw = inputs
            .to_dtype(DType::I64)
            .and_then(|t| t.to_vec::<i64>())
            .map_err(|e| e.to_string())?;
        let to_u32 = |what: &str, v: &[i64]| -> std::result::Result<Vec<u32>, String> {
            v.iter()
                .map(|&x| u32::try_from(x).map_err(|_| format!("{what} {x} is negative or too large")))
                .collect()
        };
        match *inputs.dims() {
            [batch, seq_len] => {
                let ids = to_u32("token id", &raw)?;
                Ok(BertInput {
                    attention_mask: ids.iter().map(|&v| u32::from(v != pad_id)).collect(),
                    type_ids: vec![0; ids.len()],
                    ids,
                    batch,
                    seq_len,
                })
            }
            [batch, 3, seq_len] => {
                let (mut ids, mut type_ids, mut mask) = (Vec::new(), Vec::new(), Vec::new());
                for row in raw.chunks_exact(3 * seq_len.max(1)) {
                    let (a, rest) = row.split_at(seq_len);
                    let (t, m) = rest.split_at(seq_len);
                    ids.extend(to_u32("token id", a)?);
                    type_ids.extend(to_u32("token type id", t)?);
                    mask.extend(to_u32("attention mask value", m)?);
                }
                if let Some(bad) = mask.iter().find(|&&m| m > 1) {
                    return Err(format!("attention mask values must be 0 or 1; got {bad}"));
                }
                Ok(BertInput {
                    ids,
                    type_ids,
                    attention_mask: mask,
                    batch,
                    seq_len,
                })
            }
            ref other => Err(format!(
                "inputs must be token ids [B, L] or [B, 3, L] (ids, token types, attention mask); got {other:?}"
            )),
        }
    }

    /// The positions every sequence needs: one past the last real token of the longest. The
    /// columns after it are padding in every row and change nothing for real tokens.
    pub fn used_len(&self) -> usize {
        (0..self.batch)
            .map(|b| {
                let row = &self.attention_mask[b * self.seq_len..(b + 1) * self.seq_len];
                row.iter().rposition(|&m| m != 0).map_or(0, |p| p + 1)
            })
            .max()
            .unwrap_or(0)
    }

    /// The batch cut to its first `len` positions.
    pub fn truncated(&self, len: usize) -> BertInput {
        let len = len.min(self.seq_len);
        let cut = |v: &[u32]| -> Vec<u32> {
            v.chunks_exact(self.seq_len.max(1))
                .flat_map(|row| row[..len].iter().copied())
                .collect()
        };
        BertInput {
            ids: cut(&self.ids),
            type_ids: cut(&self.type_ids),
            attention_mask: cut(&self.attention_mask),
            batch: self.batch,
            seq_len: len,
        }
    }
}

/// The real (unmasked) tokens of zoo inputs (see [`BertInput::from_tensor`]), for tokens/s.
pub(crate) fn real_tokens(inputs: &Tensor, pad_id: u32) -> Option<usize> {
    let input = BertInput::from_tensor(inputs, pad_id).ok()?;
    Some(input.attention_mask.iter().map(|&m| m as usize).sum())
}

/// What [`BertModel::forward_input`] returns.
#[derive(Clone, Debug)]
pub struct BertOutput {
    /// The last layer's hidden states `[B, L, D]` (padding rows included; ignore them).
    pub last_hidden_state: Tensor,
    /// `tanh(pooler.dense(h[:, 0]))`: `[B, D]`.
    pub pooler_output: Tensor,
    /// The input's attention mask `[B·L]`, for [`BertOutput::sentence_embeddings`].
    pub attention_mask: Vec<u32>,
}

impl BertOutput {
    /// Mean-pooled (over real tokens), L2-normalised sentence embeddings, one row of `D` per
    /// sequence (the sentence-transformers recipe of all-MiniLM-L6-v2).
    pub fn sentence_embeddings(&self) -> Result<Vec<Vec<f32>>> {
        let [b, l, d] = [0, 1, 2].map(|i| self.last_hidden_state.dims()[i]);
        let hidden = self.last_hidden_state.contiguous_slice::<f32>()?;
        let mut pooled = mean_pool(&hidden, &self.attention_mask, b, l, d);
        l2_normalize(&mut pooled, d.max(1));
        Ok(pooled.chunks(d.max(1)).map(<[f32]>::to_vec).collect())
    }
}

/// A BERT encoder: embeddings, `num_hidden_layers` post-LN layers, pooler. Parameter names and
/// layouts are Hugging Face's `BertModel` (`embeddings.word_embeddings.weight`,
/// `encoder.layer.{i}.attention.self.query.weight` `[out, in]`, ..., `pooler.dense.bias`).
pub struct BertModel {
    pub(crate) name: String,
    pub(crate) cfg: BertConfig,
    pub(crate) embeddings: Embeddings,
    layers: Vec<BertLayer>,
    pooler: Dense,
    pub(crate) params: Vec<Param>,
    pub(crate) training: AtomicBool,
}

impl BertModel {
    /// Builds the encoder of `cfg`, every parameter taken from `scope` (initialised as Hugging
    /// Face does — normal(0, 0.02) weights, zero biases, unit norms — or loaded by name).
    pub fn new(name: &str, cfg: BertConfig, scope: Scope) -> Result<BertModel> {
        cfg.validate(name)?;
        let embeddings = Embeddings::new(scope.sub("embeddings"), &cfg)?;
        let encoder = scope.sub("encoder").sub("layer");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::new(encoder.sub(i), &cfg))
            .collect::<Result<Vec<_>>>()?;
        let d = cfg.hidden_size;
        let pooler = Dense::new(scope.sub("pooler").sub("dense"), d, d)?;
        Ok(BertModel {
            name: name.to_string(),
            cfg,
            embeddings,
            layers,
            pooler,
            params: scope.all_params(),
            training: AtomicBool::new(false),
        })
    }

    /// The configuration.
    pub fn bert_config(&self) -> &BertConfig {
        &self.cfg
    }

    /// The width of the hidden states and sentence embeddings.
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    pub(crate) fn input_err(&self, reason: String) -> Error {
        Error::Input {
            model: self.name.clone(),
            reason,
        }
    }

    /// Zoo inputs (see [`BertInput::from_tensor`]) as a batch, or an input error naming the model.
    pub(crate) fn parse_input(&self, inputs: &Tensor) -> Result<BertInput> {
        BertInput::from_tensor(inputs, self.cfg.pad_token_id).map_err(|r| self.input_err(r))
    }

    fn check(&self, input: &BertInput) -> Result<()> {
        let n = input.batch * input.seq_len;
        if input.ids.len() != n || input.type_ids.len() != n || input.attention_mask.len() != n {
            return Err(self.input_err(format!(
                "a batch of {} x {} needs {n} ids, type ids and mask values; got {}, {} and {}",
                input.batch,
                input.seq_len,
                input.ids.len(),
                input.type_ids.len(),
                input.attention_mask.len()
            )));
        }
        if input.batch == 0 || input.seq_len == 0 {
            return Err(self.input_err("the batch is empty".into()));
        }
        if input.seq_len > self.cfg.max_position_embeddings {
            return Err(self.input_err(format!(
                "sequences of {} tokens are longer than the {} positions of the model (truncate them)",
                input.seq_len, self.cfg.max_position_embeddings
            )));
        }
        let checks = [
            ("token id", &input.ids, self.cfg.vocab_size),
            ("token type id", &input.type_ids, self.cfg.type_vocab_size),
        ];
        for (what, ids, limit) in checks {
            if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= limit) {
                return Err(self.input_err(format!(
                    "{what} {id} at sequence {}, position {} is outside 0..{limit}",
                    i / input.seq_len,
                    i % input.seq_len
                )));
            }
        }
        Ok(())
    }

    /// The encoder's last hidden states `[B·L, D]` (row `b·L + i` is position `i` of sequence
    /// `b`), recording the graph when gradients are on. Padding changes nothing for the real
    /// tokens (their attention gives padded keys probability 0).
    pub fn encode(&self, input: &BertInput) -> Result<Var> {
        self.check(input)?;
        let (b, l) = (input.batch, input.seq_len);
        let ids = Tensor::from_slice(&input.ids, [b, l])?;
        let types = Tensor::from_slice(&input.type_ids, [b, l])?;
        let mut x = self.embeddings.forward(&ids, &types)?;
        let bias = mask_bias(&input.attention_mask, b, l)?.to_dtype(x.dtype())?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, b, l)?;
        }
        Ok(x)
    }

    /// `tanh(pooler.dense(h[:, 0]))` of hidden states `[B·L, D]` from [`BertModel::encode`]:
    /// `[B, D]`.
    pub fn pool(&self, hidden: &Var, batch: usize, len: usize) -> Result<Var> {
        let d = self.cfg.hidden_size;
        let cls = hidden
            .reshape([batch, len, d])?
            .narrow(1usize, 0, 1)?
            .reshape([batch, d])?;
        Ok(self.pooler.forward(&cls)?.tanh()?)
    }

    /// The encoder over a padded batch, for inference (no graph): last hidden states and pooler
    /// output.
    pub fn forward_input(&self, input: &BertInput) -> Result<BertOutput> {
        let _no_grad = kiln_autograd::no_grad();
        let (b, l, d) = (input.batch, input.seq_len, self.cfg.hidden_size);
        let hidden = self.encode(input)?;
        let pooler_output = self.pool(&hidden, b, l)?.value().clone();
        Ok(BertOutput {
            last_hidden_state: hidden.value().reshape([b, l, d])?,
            pooler_output,
            attention_mask: input.attention_mask.clone(),
        })
    }

    /// Mean-pooled, L2-normalised sentence embeddings of a padded batch, one per sequence.
    pub fn sentence_embeddings(&self, input: &BertInput) -> Result<Vec<Vec<f32>>> {
        self.forward_input(input)?.sentence_embeddings()
    }
}
