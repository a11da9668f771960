//! # kiln-bert
//!
//! BERT encoders in kiln's zoo (`all-minilm-l6-v2`, `bert-base`, `bert-tiny`; task
//! [`Task::Embedding`]): word + position + token-type embeddings, post-LN encoder layers with an
//! attention mask for padded batches and the exact (erf) GELU, the `[CLS]` pooler, and
//! mean-pooled, L2-normalised sentence embeddings (the sentence-transformers recipe).
//! Parameter names and layouts are Hugging Face's. Inference only: the forward pass runs on
//! plain tensors (GEMM through `Tensor::matmul`), without autograd.
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
mod config;
mod embed;
mod embeddings;
mod hf;
mod layer;
mod layers;
mod model;
pub mod pooling;
mod zoo;

pub use config::BertConfig;
pub use embed::{EmbedOptions, Embedded, Truncated};
pub use hf::{hf_to_kiln, hf_tokenizer, load_hf_dir, load_weights, HfLoadReport};
pub use model::{BertInput, BertModel, BertOutput};

use kiln_nn::Scope;
use kiln_zoo::{inventory, Model, ModelEntry, Result, Task};

fn build_named(name: &'static str, cfg: &serde_json::Value, scope: Scope) -> Result<Box<dyn Model>> {
    let cfg: BertConfig = kiln_zoo::parse_config(name, cfg)?;
    Ok(Box::new(BertModel::new(name, cfg, scope)?))
}

macro_rules! preset {
    ($name:literal, $cfg:expr, $build:ident, $default:ident, $about:literal) => {
        fn $default() -> serde_json::Value {
            serde_json::to_value($cfg).unwrap_or_default()
        }
        fn $build(cfg: &serde_json::Value, scope: Scope) -> Result<Box<dyn Model>> {
            build_named($name, cfg, scope)
        }
        inventory::submit! {
            ModelEntry {
                name: $name,
                family: "bert",
                task: Task::Embedding,
                description: $about,
                default_config: $default,
                build: $build,
            }
        }
    };
}

preset!(
    "all-minilm-l6-v2",
    BertConfig::all_minilm_l6_v2(),
    build_minilm,
    default_minilm,
    "all-MiniLM-L6-v2 sentence embeddings (BERT): 6 layers, width 384, 12 heads, MLP 1536, vocab 30522; loads Hugging Face weights"
);
preset!(
    "bert-base",
    BertConfig::bert_base(),
    build_bert_base,
    default_bert_base,
    "BERT-base encoder: 12 layers, width 768, 12 heads, MLP 3072, vocab 30522, 512 positions"
);
preset!(
    "bert-tiny",
    BertConfig::bert_tiny(),
    build_bert_tiny,
    default_bert_tiny,
    "BERT-Tiny encoder: 2 layers, width 128, 2 heads, MLP 512, vocab 30522, 512 positions"
);
