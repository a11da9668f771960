//! # kiln-bert
//!
//! BERT in kiln's zoo: word + position + token-type embeddings, post-LN encoder layers with an
//! attention mask for padded batches and the exact (erf) GELU, the `[CLS]` pooler, and
//! mean-pooled, L2-normalised sentence embeddings (the sentence-transformers recipe).
//! Parameter names and layouts are Hugging Face's. One forward pass on autograd variables
//! trains and infers (inference runs it without recording a graph).
//!
//! | name | model | task |
//! |---|---|---|
//! | `all-minilm-l6-v2` | [`BertModel`]: the encoder, sentence embeddings | [`Task::Embedding`] |
//! | `bert-tiny`, `bert-base` | [`BertForPreTraining`]: `bert.*` + masked-LM and next-sentence heads `cls.*` | [`Task::MaskedLm`] |
//! | `bert-classifier` | [`BertClassifier`]: `bert.*` + `classifier.*` on the pooled `[CLS]` | [`Task::SequenceClassification`] |
//!
//! - [`load_hf_dir`]: a Hugging Face directory (`config.json`, `model.safetensors` with or without
//!   the `bert.` prefix; f16/bf16 converted to f32); [`hf_tokenizer`] reads its `tokenizer.json`.
//! - [`BertModel::embed`]: texts → unit-length vectors (batched, padded, truncated with a report).
//! - [`BertModel::forward_input`]: last hidden states and pooler output of a padded batch.
//!
//! ```no_run
//! use kiln_bert::{hf_tokenizer, load_hf_dir, EmbedOptions};
//! let dir = std::path::Path::new("data/registry/all-minilm-l6-v2");
//! let (model, _) = load_hf_dir(dir, "all-minilm-l6-v2")?;
//! let tokenizer = hf_tokenizer(dir)?;
//! let out = model.embed(&tokenizer, &["A man is playing a guitar."], &EmbedOptions::default())?;
//! assert_eq!(out.embeddings[0].len(), 384);
//! # Ok::<(), kiln_zoo::Error>(())
//! ```

mod attention;
mod classifier;
mod config;
mod embed;
mod embeddings;
mod hf;
mod layer;
mod layers;
mod model;
pub mod pooling;
mod pretraining;
mod targets;
mod zoo;

pub use classifier::BertClassifier;
pub use config::BertConfig;
pub use embed::{EmbedOptions, Embedded, Truncated};
pub use hf::{hf_to_kiln, hf_tokenizer, load_hf_dir, load_weights, HfLoadReport};
pub use model::{BertInput, BertModel, BertOutput};
pub use pretraining::BertForPreTraining;

use kiln_nn::Scope;
use kiln_zoo::{inventory, Model, ModelEntry, Result, Task};

/// Which model a preset builds over its encoder.
#[derive(Clone, Copy)]
enum Kind {
    Encoder,
    PreTraining,
    Classifier,
}

fn build_named(
    name: &'static str,
    kind: Kind,
    cfg: &serde_json::Value,
    scope: Scope,
) -> Result<Box<dyn Model>> {
    let cfg: BertConfig = kiln_zoo::parse_config(name, cfg)?;
    Ok(match kind {
        Kind::Encoder => Box::new(BertModel::new(name, cfg, scope)?),
        Kind::PreTraining => Box::new(BertForPreTraining::new(name, cfg, scope)?),
        Kind::Classifier => Box::new(BertClassifier::new(name, cfg, scope)?),
    })
}

macro_rules! preset {
    ($name:literal, $kind:ident, $task:ident, $cfg:expr, $build:ident, $default:ident, $about:literal) => {
        fn $default() -> serde_json::Value {
            serde_json::to_value($cfg).unwrap_or_default()
        }
        fn $build(cfg: &serde_json::Value, scope: Scope) -> Result<Box<dyn Model>> {
            build_named($name, Kind::$kind, cfg, scope)
        }
        inventory::submit! {
            ModelEntry {
                name: $name,
                family: "bert",
                task: Task::$task,
                description: $about,
                default_config: $default,
                build: $build,
            }
        }
    };
}

preset!(
    "all-minilm-l6-v2",
    Encoder,
    Embedding,
    BertConfig::all_minilm_l6_v2(),
    build_minilm,
    default_minilm,
    "all-MiniLM-L6-v2 sentence embeddings (BERT): 6 layers, width 384, 12 heads, MLP 1536, vocab 30522; loads Hugging Face weights"
);
preset!(
    "bert-base",
    PreTraining,
    MaskedLm,
    BertConfig::bert_base(),
    build_bert_base,
    default_bert_base,
    "BERT-base with masked-LM and next-sentence heads: 12 layers, width 768, 12 heads, MLP 3072, vocab 30522, 512 positions"
);
preset!(
    "bert-tiny",
    PreTraining,
    MaskedLm,
    BertConfig::bert_tiny(),
    build_bert_tiny,
    default_bert_tiny,
    "BERT-Tiny with masked-LM and next-sentence heads: 2 layers, width 128, 2 heads, MLP 512, vocab 30522; pre-trains on shakespeare-mlm"
);
preset!(
    "bert-classifier",
    Classifier,
    SequenceClassification,
    BertConfig {
        num_labels: Some(2),
        ..BertConfig::bert_tiny()
    },
    build_bert_classifier,
    default_bert_classifier,
    "BERT sequence classifier on the pooled [CLS] output (bert-tiny sizes unless --init gives a pre-trained encoder, e.g. all-MiniLM-L6-v2)"
);
