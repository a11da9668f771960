//! The targets, one file each.

mod checkpoint;
mod idx;
mod instruction_jsonl;
mod run_config;
mod safetensors;
mod tokenizer_json;

pub use checkpoint::{checkpoint, checkpoint_seeds};
pub use idx::idx;
pub use instruction_jsonl::instruction_jsonl;
pub use run_config::run_config;
pub use safetensors::safetensors;
pub use tokenizer_json::tokenizer_json;
