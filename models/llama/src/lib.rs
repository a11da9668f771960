//! # kiln-llama
//!
//! Llama-family causal language models in kiln's zoo (`llama-tiny`, `smollm2-135m`): RMSNorm,
//! rotary embeddings with the configured base, grouped-query attention, SwiGLU MLP, tied or
//! untied head, the same generation API as GPT (KV cache, batched decoding).
//!
//! - [`load_gguf`]: a GGUF file (config from its metadata; quantized matrices stay quantized,
//!   read from the memory map by `kiln_tensor::quant` kernels); [`gguf_tokenizer`] and
//!   [`gguf_chat_template`] give the tokenizer and chat template it carries.
//! - [`load_hf_dir`]: a Hugging Face directory (`config.json`, `model.safetensors`), dense f32.
//!
//! ```no_run
//! use kiln_zoo::generate::{generate_all, SamplingParams};
//! let (model, _) = kiln_llama::load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), "smollm2-135m")?;
//! let params = SamplingParams { temperature: 0.0, max_new_tokens: 8, ..Default::default() };
//! let ids = generate_all(&model, &[1, 4093, 198], &params)?;
//! # Ok::<(), kiln_zoo::Error>(())
//! ```

mod config;
mod decode;
mod gguf;
mod hf;
mod model;
mod rope;
mod weights;

pub use config::{LlamaConfig, RopeLayout};
pub use gguf::{from_gguf_file, gguf_chat_template, gguf_tokenizer, load_gguf, GgufLoadReport};
pub use hf::load_hf_dir;
pub use model::{Llama, LlamaLayer, IGNORE_INDEX};
pub use weights::{Linear, Vector};

use kiln_nn::Scope;
use kiln_zoo::{inventory, Model, ModelEntry, Result, Task};

fn build_named(name: &'static str, cfg: &serde_json::Value, scope: Scope) -> Result<Box<dyn Model>> {
    let cfg: LlamaConfig = kiln_zoo::parse_config(name, cfg)?;
    Ok(Box::new(Llama::new(name, cfg, scope)?))
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
                family: "llama",
                task: Task::CausalLm,
                description: $about,
                default_config: $default,
                build: $build,
            }
        }
    };
}

preset!(
    "smollm2-135m",
    LlamaConfig::smollm2_135m(),
    build_smollm2,
    default_smollm2,
    "SmolLM2-135M (Llama architecture): 30 blocks, width 576, 9/3 heads, SwiGLU 1536, vocab 49152; loads GGUF (Q4_1...) or Hugging Face weights"
);
preset!(
    "llama-tiny",
    LlamaConfig::tiny(),
    build_llama_tiny,
    default_llama_tiny,
    "A tiny Llama for tests: 2 blocks, width 64, 4/2 heads, SwiGLU 128, 256 ids, context 128"
);
