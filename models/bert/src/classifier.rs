//! [`BertClassifier`]: the encoder (`bert.*`) with a sequence-classification head on the pooled
//! `[CLS]` output (`classifier.*`), as Hugging Face's `BertForSequenceClassification`.

use kiln_autograd::Param;
use kiln_nn::Scope;
use kiln_tensor::Tensor;
use kiln_zoo::{Batch, Error, Model, Output, Result, Task};

use crate::config::BertConfig;
use crate::layers::Dense;
use crate::model::BertModel;
use crate::targets::integer_targets;

/// A sequence classifier: `classifier(pooler(bert(x)))`, loss the mean cross-entropy.
///
/// - inputs: token ids `[B, L]` or `[B, 3, L]` (see [`BertInput::from_tensor`](crate::BertInput::from_tensor));
/// - targets: class indices `[B]` in `0..num_labels`;
/// - logits: `[B, num_labels]`.
pub struct BertClassifier {
    name: String,
    bert: BertModel,
    classifier: Dense,
    num_labels: usize,
    params: Vec<Param>,
}

impl BertClassifier {
    /// The encoder under `bert.` and `classifier.weight` `[num_labels, D]`, `classifier.bias`,
    /// from `scope`; `cfg.num_labels` classes (2 when unset).
    pub fn new(name: &str, cfg: BertConfig, scope: Scope) -> Result<BertClassifier> {
        let num_labels = cfg.num_labels.unwrap_or(2);
        if num_labels < 2 {
            return Err(Error::Config {
                model: name.into(),
                reason: format!("num_labels must be at least 2, got {num_labels}"),
            });
        }
        let d = cfg.hidden_size;
        let bert = BertModel::new(name, cfg, scope.sub("bert"))?;
        let classifier = Dense::new(scope.sub("classifier"), d, num_labels)?;
        Ok(BertClassifier {
            name: name.to_string(),
            bert,
            classifier,
            num_labels,
            params: scope.all_params(),
        })
    }

    /// The encoder.
    pub fn encoder(&self) -> &BertModel {
        &self.bert
    }
}

impl Model for BertClassifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn task(&self) -> Task {
        Task::SequenceClassification
    }
    fn forward(&self, batch: &Batch) -> Result<Output> {
        let input = self.bert.parse_input(&batch.inputs)?;
        // Trailing columns that are padding in every row change nothing: skip them.
        let input = input.truncated(input.used_len().max(1));
        let (b, len) = (input.batch, input.seq_len);
        let hidden = self.bert.encode(&input)?;
        let logits = self.classifier.forward(&self.bert.pool(&hidden, b, len)?)?;
        let loss = match &batch.targets {
            None => None,
            Some(t) => {
                let labels = integer_targets(t, &[b], "one class index per sequence")
                    .map_err(|r| self.bert.input_err(r))?;
                if let Some(bad) = labels.iter().find(|&&c| c < 0 || c as usize >= self.num_labels) {
                    return Err(self
                        .bert
                        .input_err(format!("class {bad} is outside 0..{}", self.num_labels)));
                }
                Some(logits.log_softmax_nll(&Tensor::from_slice(&labels, [b])?)?)
            }
        };
        Ok(Output::new(logits, loss))
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
        let mut cfg = self.bert.bert_config().clone();
        cfg.num_labels = Some(self.num_labels);
        serde_json::to_value(cfg).unwrap_or_default()
    }
}
