//! # kiln-gpt
//!
//! GPT-2 in kiln's model zoo, under three names: `gpt2` (124M), `gpt2-medium` (355M) and
//! `gpt-tiny` (nanoGPT's CPU shakespeare-char model: 4 layers, 4 heads, width 128, context 64).
//!
//! - [`Gpt`]: Hugging Face's parameter names and layouts (`h.3.attn.c_attn.weight` `[in, out]`,
//!   head tied to `wte`), a training forward pass with a fused causal-attention node, and the
//!   next-token loss that skips -100 targets (instruction tuning).
//! - decoding: [`Gpt`] implements the zoo's `KvCausalLm` — a forward pass over a ragged batch
//!   (different lengths, joining and leaving) through a contiguous or paged KV cache, with the
//!   same logits each sequence would get alone, prefill of a whole prompt in one pass.
//! - [`load_hf_dir`]: a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`, with
//!   or without the `transformer.` prefix; the `attn.bias` buffers are ignored).

mod config;
mod decode;
mod hf;
mod model;

pub use config::GptConfig;
pub use hf::{hf_to_kiln, load_hf_dir, load_weights, HfLoadReport};
pub use model::{Gpt, IGNORE_INDEX};

use kiln_nn::Scope;
use kiln_zoo::{inventory, Model, ModelEntry, Result, Task};

fn build_named(name: &'static str, cfg: &serde_json::Value, scope: Scope) -> Result<Box<dyn Model>> {
    let cfg: GptConfig = kiln_zoo::parse_config(name, cfg)?;
    Ok(Box::new(Gpt::new(name, cfg, scope)?))
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
                family: "gpt",
                task: Task::CausalLm,
                description: $about,
                default_config: $default,
                build: $build,
            }
        }
    };
}

preset!(
    "gpt2",
    GptConfig::gpt2(),
    build_gpt2,
    default_gpt2,
    "GPT-2 small: 12 layers, 12 heads, width 768, context 1024, GPT-2 BPE (50257); loads Hugging Face weights"
);
preset!(
    "gpt2-medium",
    GptConfig::gpt2_medium(),
    build_gpt2_medium,
    default_gpt2_medium,
    "GPT-2 medium: 24 layers, 16 heads, width 1024, context 1024"
);
preset!(
    "gpt-tiny",
    GptConfig::tiny(),
    build_gpt_tiny,
    default_gpt_tiny,
    "nanoGPT's CPU shakespeare-char GPT: 4 layers, 4 heads, width 128, context 64, 65 characters"
);
