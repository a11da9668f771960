//! The [`Model`] trait every zoo plugin implements, and the kinds of [`Task`].

use kiln_autograd::{Param, Var};
use kiln_tensor::Tensor;

use crate::Result;

/// What a model does; decides which datasets fit it and which metrics apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Images `[N, C, H, W]` → class logits `[N, classes]`.
    ImageClassification,
    /// Sequences → one class per sequence.
    SequenceClassification,
    /// Token ids → next-token logits.
    CausalLm,
    /// Token ids with masks → logits at masked positions.
    MaskedLm,
    /// Token ids → one vector per sequence.
    Embedding,
}

impl Task {
    /// The kebab-case name (`image-classification`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Task::ImageClassification => "image-classification",
            Task::SequenceClassification => "sequence-classification",
            Task::CausalLm => "causal-lm",
            Task::MaskedLm => "masked-lm",
            Task::Embedding => "embedding",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One batch for a model: inputs (images, token ids) and optional targets (class indices, next tokens).
#[derive(Clone, Debug)]
pub struct Batch {
    /// Model inputs.
    pub inputs: Tensor,
    /// Targets, when the batch is for training or evaluation.
    pub targets: Option<Tensor>,
}

/// What a forward pass returns.
pub struct Output {
    /// The model's raw outputs (class or token logits).
    pub logits: Var,
    /// The task's training loss, present when the batch had targets.
    pub loss: Option<Var>,
    /// Further metrics of the batch, by name (a pre-training model's masked-LM and
    /// next-sentence accuracies); empty for most models.
    pub tallies: Vec<Tally>,
}

impl Output {
    /// Logits and an optional loss, no further metrics.
    pub fn new(logits: Var, loss: Option<Var>) -> Output {
        Output {
            logits,
            loss,
            tallies: Vec::new(),
        }
    }
}

/// A metric a model reports beside its loss, as a sum over a batch and the count it is a mean
/// of (`mlm_accuracy`: correct predictions and masked tokens). Sums and counts add across
/// batches, so the trainer reports `sum / count` over an epoch or an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Tally {
    /// The metric's name (`snake_case`; logged as `train/NAME` and `val/NAME`).
    pub name: &'static str,
    /// The batch's sum.
    pub sum: f64,
    /// What the sum is over (examples, tokens).
    pub count: f64,
}

/// What [`Model::quantize`] or [`Model::dequantize_weights`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QuantReport {
    /// Weight matrices converted.
    pub matrices: usize,
    /// Bytes of weights before.
    pub bytes_before: usize,
    /// Bytes of weights after.
    pub bytes_after: usize,
}

/// A model of the zoo: a forward pass over batches plus access to its parameters.
pub trait Model: Send + Sync {
    /// The registered name of the architecture.
    fn name(&self) -> &str;
    /// The task the model solves.
    fn task(&self) -> Task;
    /// Forward a batch; computes the task loss when the batch has targets.
    fn forward(&self, batch: &Batch) -> Result<Output>;
    /// Every parameter and buffer, with full dotted names.
    fn parameters(&self) -> Vec<Param>;
    /// Switch training behaviour (dropout, batch statistics).
    fn set_training(&self, training: bool);
    /// The configuration the model was built from.
    fn config(&self) -> serde_json::Value;
    /// The model as a [`CausalLm`](crate::generate::CausalLm), when it can generate text
    /// (causal language models); `None` otherwise.
    fn as_causal_lm(&self) -> Option<&dyn crate::generate::CausalLm> {
        None
    }
    /// Quantizes the weights of the linear layers for inference (`--quantize nf4|int8`):
    /// generation then reads them quantized. Models without support say so.
    fn quantize(&mut self, scheme: kiln_tensor::quant::QuantScheme) -> Result<QuantReport> {
        Err(crate::Error::Config {
            model: self.name().into(),
            reason: format!(
                "weight quantization ({scheme:?}) is available for the gpt and llama models only"
            ),
        })
    }
    /// Converts quantized weights (GGUF blocks, NF4, int8) back to dense f32.
    fn dequantize_weights(&mut self) -> Result<QuantReport> {
        Err(crate::Error::Config {
            model: self.name().into(),
            reason: "this model holds no quantized weights".into(),
        })
    }
    /// Keep (`true`) or drop packed copies of the weight matrices for inference
    /// ([`Param::set_keep_packed`](kiln_autograd::Param::set_keep_packed)): forwards over many
    /// rows at once (embedding batches, prompts) then skip re-laying each linear layer's weight
    /// for the GEMM on every call, for as much memory again as those weights.
    fn keep_packed_weights(&self, on: bool) {
        for p in self.parameters() {
            if p.value().rank() == 2 {
                p.set_keep_packed(on);
            }
        }
    }
    /// How many tokens a batch of `inputs` holds, for the trainer's tokens/s: every element of
    /// integer inputs (token ids) unless the model knows better (BERT counts the real tokens of
    /// its `[B, 3, L]` inputs); `None` for inputs that are not tokens.
    fn tokens_in(&self, inputs: &Tensor) -> Option<usize> {
        (!inputs.dtype().is_float()).then(|| inputs.elem_count())
    }
    /// Number of trainable scalar parameters (buffers such as batch-norm running statistics are
    /// not counted, as in PyTorch's `sum(p.numel() for p in model.parameters())`).
    fn num_parameters(&self) -> usize {
        self.parameters()
            .iter()
            .filter(|p| p.requires_grad())
            .map(|p| p.value().elem_count())
            .sum()
    }
}
