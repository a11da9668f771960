//! [`BertForPreTraining`]: the encoder (`bert.*`) with Hugging Face's pre-training heads
//! (`cls.*`): the masked-LM head (dense + GELU + LayerNorm, decoder tied to the word embeddings,
//! its own output bias) and next-sentence prediction (`cls.seq_relationship`).

use kiln_autograd::{Param, Var};
use kiln_nn::{Init, Scope};
use kiln_tensor::Tensor;
use kiln_zoo::{Batch, Model, Output, Result, Tally, Task};

use crate::config::BertConfig;
use crate::layers::{Dense, Norm};
use crate::model::BertModel;
use crate::targets::{argmax_hits, integer_targets, IGNORE_INDEX};

/// BERT with its pre-training heads, as `BertForPreTraining`: a batch's loss is the mean
/// masked-LM cross-entropy over the predicted positions plus the mean next-sentence
/// cross-entropy.
///
/// - inputs: token ids `[B, L]` or `[B, 3, L]` (ids, token types, attention mask; see
///   [`BertInput::from_tensor`](crate::BertInput::from_tensor));
/// - targets: integer `[B, L + 1]`: the masked-LM label of each position (`-100` where nothing
///   is predicted) and, last, the next-sentence label (0: the second segment follows the first,
///   1: it is random);
/// - logits: with targets, the masked-LM logits of the predicted positions `[M, V]` in row-major
///   order (only those rows are computed, as the original BERT gathers them); without, every
///   position's `[B, L, V]`.
///
/// Tallies: `mlm_loss`, `mlm_accuracy` (over predicted tokens), `nsp_loss`, `nsp_accuracy`.
pub struct BertForPreTraining {
    name: String,
    bert: BertModel,
    transform: Dense,
    transform_norm: Norm,
    decoder_bias: Param,
    seq_relationship: Dense,
    params: Vec<Param>,
}

impl BertForPreTraining {
    /// The encoder under `bert.` and the heads under `cls.`, from `scope`.
    pub fn new(name: &str, cfg: BertConfig, scope: Scope) -> Result<BertForPreTraining> {
        let d = cfg.hidden_size;
        let v = cfg.vocab_size;
        let eps = cfg.layer_norm_eps;
        let bert = BertModel::new(name, cfg, scope.sub("bert"))?;
        let predictions = scope.sub("cls").sub("predictions");
        let transform = predictions.sub("transform");
        let model = BertForPreTraining {
            name: name.to_string(),
            transform: Dense::new(transform.sub("dense"), d, d)?,
            transform_norm: Norm::new(transform.sub("LayerNorm"), d, eps)?,
            decoder_bias: predictions.param("bias", [v], Init::Zeros)?,
            seq_relationship: Dense::new(scope.sub("cls").sub("seq_relationship"), d, 2)?,
            bert,
            // Last: every parameter above exists by now.
            params: scope.all_params(),
        };
        Ok(model)
    }

    /// The encoder.
    pub fn encoder(&self) -> &BertModel {
        &self.bert
    }

    /// Masked-LM logits of hidden rows `[N, D]`: `[N, V]`.
    fn mlm_logits(&self, hidden: &Var) -> Result<Var> {
        let h = self
            .transform_norm
            .forward(&self.transform.forward(hidden)?.gelu()?)?;
        let words = self.bert.embeddings.word.var();
        Ok(h.matmul_bias(&words.t()?, &self.decoder_bias.var())?)
    }
}

impl Model for BertForPreTraining {
    fn name(&self) -> &str {
        &self.name
    }
    fn task(&self) -> Task {
        Task::MaskedLm
    }
    fn forward(&self, batch: &Batch) -> Result<Output> {
        let cfg = self.bert.bert_config();
        let input = self.bert.parse_input(&batch.inputs)?;
        let (b, full_len) = (input.batch, input.seq_len);
        let Some(targets) = &batch.targets else {
            let hidden = self.bert.encode(&input)?;
            let logits = self.mlm_logits(&hidden)?;
            return Ok(Output::new(logits.reshape([b, full_len, cfg.vocab_size])?, None));
        };
        let labels = integer_targets(
            targets,
            &[b, full_len + 1],
            "[B, L + 1]: masked-LM labels, then the next-sentence label",
        )
        .map_err(|r| self.bert.input_err(r))?;
        // Trailing columns that are padding in every row change nothing: skip them.
        let len = input.used_len().max(1);
        let input = input.truncated(len);
        let mut picked = Vec::new();
        let mut mlm_targets = Vec::new();
        let mut nsp_targets = Vec::with_capacity(b);
        for (row, chunk) in labels.chunks_exact(full_len + 1).enumerate() {
            let (mlm, nsp) = chunk.split_at(full_len);
            for (pos, &label) in mlm.iter().enumerate() {
                if label == IGNORE_INDEX {
                    continue;
                }
                if label < 0 || label as usize >= cfg.vocab_size || pos >= len {
                    return Err(self.bert.input_err(format!(
                        "masked-LM label {label} at sequence {row}, position {pos} must be a token id in 0..{} at a real token, or -100",
                        cfg.vocab_size
                    )));
                }
                picked.push((row * len + pos) as i64);
                mlm_targets.push(label);
            }
            if !(0..=1).contains(&nsp[0]) {
                return Err(self.bert.input_err(format!(
                    "next-sentence label {} of sequence {row} must be 0 (follows) or 1 (random)",
                    nsp[0]
                )));
            }
            nsp_targets.push(nsp[0]);
        }
        let hidden = self.bert.encode(&input)?;
        let pooled = self.bert.pool(&hidden, b, len)?;
        let nsp_logits = self.seq_relationship.forward(&pooled)?;
        let nsp_loss = nsp_logits.log_softmax_nll(&Tensor::from_slice(&nsp_targets, [b])?)?;
        let nsp_hits = argmax_hits(nsp_logits.value(), &nsp_targets)?;
        let nsp_value = crate::targets::scalar(&nsp_loss)?;
        let m = mlm_targets.len();
        let mut tallies = vec![
            Tally {
                name: "nsp_loss",
                sum: nsp_value * b as f64,
                count: b as f64,
            },
            Tally {
                name: "nsp_accuracy",
                sum: nsp_hits as f64,
                count: b as f64,
            },
        ];
        if m == 0 {
            // Nothing masked in this batch: only the next-sentence loss.
            let logits = Var::constant(Tensor::zeros(
                [0, cfg.vocab_size],
                kiln_tensor::DType::F32,
                kiln_tensor::Device::Cpu,
            )?);
            return Ok(Output {
                logits,
                loss: Some(nsp_loss),
                tallies,
            });
        }
        let rows = hidden.index_select(0usize, &Tensor::from_slice(&picked, [m])?)?;
        let logits = self.mlm_logits(&rows)?;
        let mlm_loss = logits.log_softmax_nll(&Tensor::from_slice(&mlm_targets, [m])?)?;
        let mlm_hits = argmax_hits(logits.value(), &mlm_targets)?;
        tallies.push(Tally {
            name: "mlm_loss",
            sum: crate::targets::scalar(&mlm_loss)? * m as f64,
            count: m as f64,
        });
        tallies.push(Tally {
            name: "mlm_accuracy",
            sum: mlm_hits as f64,
            count: m as f64,
        });
        Ok(Output {
            loss: Some(mlm_loss.add(&nsp_loss)?),
            logits,
            tallies,
        })
    }
    fn tokens_in(&self, inputs: &Tensor) -> Option<usize> {
        crate::model::real_tokens(inputs, self.bert.bert_config().pad_token_id)
    }
    fn parameters(&self) -> Vec<Param> {
        self.params.clone()
    }
    fn set_training(&self, _training: bool) {
        // No dropout: training and evaluation run the same computation.
    }
    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self.bert.bert_config()).unwrap_or_default()
    }
}
