//! [`BertModel`]: the encoder with Hugging Face's parameter names, its inputs ([`BertInput`]) and
//! outputs ([`BertOutput`]). Inference only: the forward pass runs on plain tensors.

use std::sync::atomic::AtomicBool;

use kiln_autograd::Param;
use kiln_nn::Scope;
use kiln_tensor::Tensor;
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
    embeddings: Embeddings,
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

    /// The encoder over a padded batch: last hidden states and pooler output. Padding changes
    /// nothing for the real tokens (their attention gives padded keys probability 0).
    pub fn forward_input(&self, input: &BertInput) -> Result<BertOutput> {
        self.check(input)?;
        let (b, l, d) = (input.batch, input.seq_len, self.cfg.hidden_size);
        let ids = Tensor::from_slice(&input.ids, [b, l])?;
        let types = Tensor::from_slice(&input.type_ids, [b, l])?;
        let bias = mask_bias(&input.attention_mask, b, l)?;
        let mut x = self.embeddings.forward(&ids, &types)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, b, l)?;
        }
        let hidden = x.reshape([b, l, d])?;
        let cls = hidden.narrow(1usize, 0, 1)?.reshape([b, d])?;
        let pooler_output = self.pooler.forward(&cls)?.tanh()?;
        Ok(BertOutput {
            last_hidden_state: hidden,
            pooler_output,
            attention_mask: input.attention_mask.clone(),
        })
    }

    /// Mean-pooled, L2-normalised sentence embeddings of a padded batch, one per sequence.
    pub fn sentence_embeddings(&self, input: &BertInput) -> Result<Vec<Vec<f32>>> {
        self.forward_input(input)?.sentence_embeddings()
    }
}
