//! [`BertModel`] as a zoo [`Model`] (task [`Task::Embedding`]).

use std::sync::atomic::Ordering;

use kiln_autograd::{Param, Var};
use kiln_tensor::{DType, Tensor};
use kiln_zoo::{Batch, Model, Output, Result, Task};

use crate::model::{BertInput, BertModel};

impl BertModel {
    /// `[B, L]` integer ids → a [`BertInput`] whose attention mask is 0 where the id is the
    /// configured `pad_token_id` (type ids 0).
    fn input_from_ids(&self, ids: &Tensor) -> Result<BertInput> {
        let &[batch, seq_len] = ids.dims() else {
            return Err(self.input_err(format!("inputs must be token ids [B, L]; got {:?}", ids.dims())));
        };
        if ids.dtype().is_float() {
            return Err(self.input_err(format!("inputs must be integer token ids; got {:?}", ids.dtype())));
        }
        let raw = ids.to_dtype(DType::I64)?.to_vec::<i64>()?;
        if let Some(&bad) = raw.iter().find(|&&v| v < 0 || v >= self.cfg.vocab_size as i64) {
            return Err(self.input_err(format!("token id {bad} is outside 0..{}", self.cfg.vocab_size)));
        }
        let ids: Vec<u32> = raw.iter().map(|&v| v as u32).collect();
        let pad = self.cfg.pad_token_id;
        Ok(BertInput {
            attention_mask: ids.iter().map(|&v| u32::from(v != pad)).collect(),
            type_ids: vec![0; ids.len()],
            ids,
            batch,
            seq_len,
        })
    }
}

/// The zoo's view of the encoder: `forward` takes token ids `[B, L]` (positions holding
/// `pad_token_id` are padding) and returns the mean-pooled, L2-normalised sentence embeddings
/// `[B, D]` as `logits`. Inference only: a batch with targets, or training mode, is an error.
impl Model for BertModel {
    fn name(&self) -> &str {
        &self.name
    }
    fn task(&self) -> Task {
        Task::Embedding
    }
    fn forward(&self, batch: &Batch) -> Result<Output> {
        if self.training.load(Ordering::Relaxed) || batch.targets.is_some() {
            return Err(self.input_err(
                "kiln runs BERT models for inference only (sentence embeddings); training them is not supported yet"
                    .into(),
            ));
        }
        let input = self.input_from_ids(&batch.inputs)?;
        let rows = self.sentence_embeddings(&input)?;
        let d = self.cfg.hidden_size;
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        Ok(Output {
            logits: Var::constant(Tensor::from_vec(flat, [input.batch, d])?),
            loss: None,
        })
    }
    fn parameters(&self) -> Vec<Param> {
        self.params.clone()
    }
    fn set_training(&self, training: bool) {
        // No dropout at inference; the flag only lets `forward` refuse training.
        self.training.store(training, Ordering::Relaxed);
    }
    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).unwrap_or_default()
    }
}
