//! # kiln-lstm
//!
//! Three LSTM models registered in the zoo:
//!
//! - `lstm-lm` ([`LstmLm`]): a character- or token-level language model — embedding →
//!   multi-layer LSTM (dropout between layers) → linear to the vocabulary, optionally tied to the
//!   embedding. Token ids `[B, T]` → logits `[B, T, V]`; generates through
//!   [`kiln_zoo::generate`] carrying the LSTM's `(h, c)`.
//! - `lstm-classifier` ([`LstmClassifier`]): an LSTM over float sequences `[B, T, F]`, classified
//!   from the last hidden state — e.g. "sequential MNIST", 28 rows of 28 pixels.
//! - `textgenrnn` ([`TextGenRnn`]): the textgenrnn 2.0 architecture (embedding → 2 LSTMs →
//!   concatenation → attention-weighted average → dense), whose parameter names are those of the
//!   pretrained weights file, so the real model loads unchanged and generates text with
//!   [`TextGenRnnVocab`].
//!
//! With dropout, `lstm-lm` and `lstm-classifier` keep the dropout generator in a buffer
//! `lstm.dropout_rng` (48 byte values) of their state dict, so checkpoints carry it and a resumed
//! run draws the same masks as an uninterrupted one.

mod classifier;
mod dropout_rng;
mod input;
mod lm;
mod textgenrnn;

pub use classifier::{LstmClassifier, LstmClassifierConfig};
pub use lm::{LstmLm, LstmLmConfig};
pub use textgenrnn::{TextGenRnn, TextGenRnnConfig, TextGenRnnVocab, META_TOKEN};

use kiln_zoo::{inventory, ModelEntry, Task};

inventory::submit! {
    ModelEntry {
        name: "lstm-lm",
        family: "lstm",
        task: Task::CausalLm,
        description: "LSTM language model: embedding 128 -> 2x LSTM 256 -> linear to 65 characters (optional dropout, tied embeddings)",
        default_config: lm::default_json,
        build: lm::build,
    }
}

inventory::submit! {
    ModelEntry {
        name: "lstm-classifier",
        family: "lstm",
        task: Task::SequenceClassification,
        description: "LSTM sequence classifier: 28 features/step -> LSTM 128 -> last hidden -> 10 classes (sequential MNIST)",
        default_config: classifier::default_json,
        build: classifier::build,
    }
}

inventory::submit! {
    ModelEntry {
        name: "textgenrnn",
        family: "lstm",
        task: Task::CausalLm,
        description: "textgenrnn 2.0 char model: embedding 100 -> 2x LSTM 128 -> attention average -> 465 ids; loads the pretrained weights",
        default_config: textgenrnn::default_json,
        build: textgenrnn::build,
    }
}
