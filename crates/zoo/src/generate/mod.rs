//! Text generation shared by every causal language model of the zoo.
//!
//! A model opts in by implementing [`CausalLm`] (and returning itself from
//! [`Model::as_causal_lm`](crate::Model::as_causal_lm)): it hands out a fresh [`DecodeState`] —
//! recurrent `(h, c)`, a KV cache, a window of recent tokens, whatever the architecture keeps —
//! that is fed the prompt once and then one sampled token at a time, and answers each feed with
//! the logits of the next token. Everything else lives here, written once:
//!
//! - [`SamplingParams`]: greedy (`temperature` 0), temperature, top-k, top-p, seed, stop tokens
//!   and the number of new tokens, validated up front;
//! - [`Sampler`]: the next-token rule (a softmax in f64, then top-k, then top-p, then one seeded
//!   ChaCha draw from [`kiln_tensor::TensorRng`]);
//! - [`generate`]: a streaming [`Generator`] (an iterator of token ids), and [`generate_all`] to
//!   collect it;
//! - [`BatchDecoder`]: several independent sequences advanced by one forward pass, joining and
//!   leaving between steps; every model gets a one-after-another [`SerialDecoder`] for free and
//!   batching models (GPT) override [`CausalLm::batch_decoder`]. [`BatchGenerator`] runs many
//!   requests (each with its own prompt and parameters, `n` samples each) on top of it;
//! - [`kv`]: the one KV-cache interface of transformers ([`KvCausalLm`], [`KvStore`]) with a
//!   contiguous cache per sequence ([`KvBatchDecoder`]) and a paged block pool ([`KvPool`]);
//! - [`StopStrings`] and [`TextStream`]: stop strings matched on the decoded text across token
//!   boundaries and never emitted.
//!
//! ```
//! use kiln_zoo::generate::{generate_all, CausalLm, DecodeState, SamplingParams};
//!
//! /// A toy model that always predicts `last + 1` (mod 5).
//! struct Counter;
//! struct CounterState(u32);
//! impl CausalLm for Counter {
//!     fn vocab_size(&self) -> usize { 5 }
//!     fn start(&self) -> kiln_zoo::Result<Box<dyn DecodeState + '_>> { Ok(Box::new(CounterState(0))) }
//! }
//! impl DecodeState for CounterState {
//!     fn feed(&mut self, ids: &[u32]) -> kiln_zoo::Result<Vec<f32>> {
//!         self.0 = *ids.last().unwrap_or(&self.0);
//!         Ok((0..5).map(|j| if j == (self.0 + 1) % 5 { 1.0 } else { 0.0 }).collect())
//!     }
//! }
//!
//! let params = SamplingParams { max_new_tokens: 6, temperature: 0.0, ..Default::default() };
//! assert_eq!(generate_all(&Counter, &[2], &params)?, [3, 4, 0, 1, 2, 3]);
//! # Ok::<(), kiln_zoo::Error>(())
//! ```

mod batch;
pub mod kv;
mod kv_decoder;
mod params;
mod sampler;
mod stop;
mod stream;

pub use batch::{BatchDecoder, BatchGenerator, GenerationEvent, RequestId, SeqId, SerialDecoder};
pub use kv::{
    attend_feeds, check_feeds, CachedFeed, KvBlocks, KvCache, KvCausalLm, KvDtype, KvElement, KvPool,
    KvShape, KvStore, KvView, Logits, PagedKv, PagedSeq,
};
pub use kv_decoder::{KvBatchDecoder, KvState};
pub use params::{SamplingParams, MAX_LOGPROBS};
pub use sampler::{apply_penalties, logprobs, next_token_distribution, Sampled, Sampler, TokenHistory};
pub use stop::{Detokenizer, StopStrings, TextStream};
pub use stream::{check_prompt, generate, generate_all, Generator};

use crate::Result;

/// A model that can continue a token sequence. Object-safe: `&dyn CausalLm` is what
/// [`generate`] takes.
pub trait CausalLm: Send + Sync {
    /// The number of token ids (the length of every logits vector).
    fn vocab_size(&self) -> usize;
    /// A fresh decoding state (recurrent `h`/`c`, a KV cache, a token window...), before any
    /// token.
    fn start(&self) -> Result<Box<dyn DecodeState + '_>>;
    /// The most tokens (prompt and output) one sequence can hold, when the model has a limit (a
    /// transformer's context); `None` for recurrent models.
    fn context_len(&self) -> Option<usize> {
        None
    }
    /// A decoder that advances many sequences at once. The default runs them one after another
    /// through [`CausalLm::start`] states; models with a batched forward pass override it.
    fn batch_decoder(&self) -> Result<Box<dyn BatchDecoder + '_>> {
        Ok(Box::new(SerialDecoder::new(self)))
    }
    /// The model as a [`KvCausalLm`] (a transformer whose forward pass reads and writes a
    /// [`KvStore`]: what paged serving needs); `None` for models without a KV cache.
    fn as_kv(&self) -> Option<&dyn KvCausalLm> {
        None
    }
}

/// The incremental state of one generation.
pub trait DecodeState: Send {
    /// Feed tokens (the prompt, then one sampled token at a time) and return the logits
    /// (`vocab_size` values) predicting the token after the last one fed. `ids` is never empty
    /// when called by [`generate`].
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>>;
}
