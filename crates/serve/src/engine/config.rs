//! [`EngineConfig`]: the engine's limits.

use kiln_zoo::generate::KvDtype;

use crate::error::{Result, ServeError};

/// How big the engine's batch, queue and KV cache may grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Positions per KV block (vLLM's default, 16).
    pub block_size: usize,
    /// Bytes of the KV block pool (`--kv-memory`); the pool is allocated once, at start.
    pub kv_memory_bytes: usize,
    /// What the pool stores keys and values in (`--kv-cache-dtype`; default `f16`, as
    /// llama.cpp's cache): `f16` holds twice the positions in the same memory and halves the
    /// bytes a decode step reads; `f32` keeps the computed values exactly (the tokens of
    /// `generate`).
    pub kv_dtype: KvDtype,
    /// The most sequences in the running batch (`--max-concurrent`); others wait.
    pub max_running: usize,
    /// The most requests waiting beyond the running ones (`--max-queue`); more are refused
    /// ([`ServeError::QueueFull`], HTTP 429).
    pub max_queue: usize,
    /// The most tokens one forward pass takes (decode tokens plus prefill chunks): long prompts
    /// are prefilled in chunks so that running sequences keep decoding.
    pub max_step_tokens: usize,
    /// Share full blocks of identical prefixes between sequences.
    pub prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            kv_memory_bytes: 512 << 20,
            kv_dtype: KvDtype::default(),
            max_running: 32,
            max_queue: 256,
            max_step_tokens: 512,
            prefix_caching: true,
        }
    }
}

impl EngineConfig {
    /// Checks the limits are usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: &str| Err(ServeError::Config(format!("{field}: {reason}")));
        if self.block_size == 0 {
            return bad("block_size", "must be at least 1");
        }
        if self.max_running == 0 {
            return bad("max_running", "must be at least 1");
        }
        if self.max_step_tokens < self.max_running.max(self.block_size) {
            return bad(
                "max_step_tokens",
                "must be at least max_running and block_size (every running sequence decodes one token per step)",
            );
        }
        Ok(())
    }
}
