//! [`BertModel`] as a zoo [`Model`] (task [`Task::Embedding`]).

use std::sync::atomic::Ordering;

use kiln_autograd::{Param, Var};
use kiln_tensor::Tensor;
use kiln_zoo::{Batch, Model, Output, Result, Task};

use crate::model::BertModel;

/// The zoo's view of the encoder: `forward` takes token ids `[B, L]` (positions holding
/// `pad_token_id` are padding) or `[B, 3, L]` (ids, token types, attention mask) and returns the
/// mean-pooled, L2-normalised sentence embeddings `[B, D]` as `logits`. It has no training
/// objective of its own: a batch with targets, or training mode, is an error (train
/// `bert-classifier` or a pre-training model on top of its weights instead).
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
                "a sentence-embedding encoder has no training objective; fine-tune it as bert-classifier (--init DIR) or pre-train bert-tiny"
                    .into(),
            ));
        }
        let input = self.parse_input(&batch.inputs)?;
        let rows = self.sentence_embeddings(&input)?;
        let d = self.cfg.hidden_size;
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        Ok(Output::new(
            Var::constant(Tensor::from_vec(flat, [input.batch, d])?),
            None,
        ))
    }
    fn tokens_in(&self, inputs: &Tensor) -> Option<usize> {
        crate::model::real_tokens(inputs, self.cfg.pad_token_id)
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
