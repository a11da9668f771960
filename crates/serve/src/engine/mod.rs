//! The serving engine: no HTTP inside, usable as a library.
//!
//! [`Engine::start`] moves a causal LM onto a thread of its own that runs the decode loop:
//!
//! - **continuous batching**: requests join and leave the running batch between forward passes;
//!   the prompts of newcomers are prefilled in chunks interleaved with the decoding of the others
//!   (a per-step token budget);
//! - **a paged KV cache**: a pool of fixed-size blocks sized by the user's memory budget, a block
//!   table per sequence, and preemption by recomputation when blocks run out;
//! - **prefix caching**: full blocks are keyed by a hash chain of their tokens and shared without
//!   copying by later sequences with the same prefix; unused cached blocks are evicted LRU;
//! - `n > 1` samples share their prompt's blocks (the partial last block is copied).
//!
//! [`Engine::submit`] returns a [`Submission`], a stream of [`Event`]s; dropping it cancels the
//! request and frees its blocks before the next step.

mod blocks;
mod config;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

pub use config::EngineConfig;
use kiln_zoo::generate::{Sampled, SamplingParams};
use kiln_zoo::Model;
use tokio::sync::mpsc as tmpsc;

use crate::error::{Result, ServeError};

/// A request handed to the engine.
pub type RequestId = u64;

/// Why a sample ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token (end of sequence) was generated.
    Stop,
    /// `max_tokens` were generated.
    Length,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a request's stream carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A new token of sample `sample` (with log-probabilities when asked for).
    Token {
        /// Which of the request's `n` samples.
        sample: usize,
        /// The token.
        token: Sampled,
    },
    /// Sample `sample` is complete (its last token came just before).
    Finished {
        /// Which sample.
        sample: usize,
        /// Why it ended.
        reason: FinishReason,
    },
    /// The engine failed while running this request; nothing more comes.
    Failed(String),
}

/// A snapshot of the engine's state, for `/metrics` and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Requests with at least one sample in the running batch.
    pub running: usize,
    /// Requests waiting for admission (new or preempted).
    pub waiting: usize,
    /// Blocks in the KV pool.
    pub blocks_total: usize,
    /// Blocks held by sequences.
    pub blocks_in_use: usize,
    /// Blocks free (including cached prefix blocks that nobody holds).
    pub blocks_free: usize,
    /// Positions per block.
    pub block_size: usize,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queried_tokens: u64,
    /// Prompt tokens found there (not recomputed).
    pub prefix_hit_tokens: u64,
    /// Tokens generated since the start.
    pub generated_tokens: u64,
    /// Sequences preempted (their blocks freed, recomputed later).
    pub preemptions: u64,
    /// Forward passes run.
    pub steps: u64,
    /// Requests completed (all samples finished).
    pub completed: u64,
}

/// What the handle tells the worker.
pub(crate) enum Command {
    Submit {
        id: RequestId,
        prompt: Vec<u32>,
        params: SamplingParams,
        events: tmpsc::UnboundedSender<Event>,
    },
    Cancel(RequestId),
    CancelSample(RequestId, usize),
    Shutdown,
}

/// State shared by the handle and the worker.
pub(crate) struct Shared {
    pub(crate) stats: Mutex<EngineStats>,
    pub(crate) alive: AtomicBool,
    pub(crate) failure: Mutex<Option<String>>,
    /// Requests submitted and not yet finished or cancelled (the queue limit counts them).
    pub(crate) pending: AtomicU64,
}

struct Inner {
    commands: Mutex<mpsc::Sender<Command>>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    config: EngineConfig,
    vocab_size: usize,
    context_len: usize,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A handle on a running engine; cheap to clone (all clones talk to the same worker).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Starts the engine's worker thread over `model`, which must be a causal LM with a KV cache
    /// (the transformers of the zoo). The KV pool (`config.kv_memory_bytes`) is allocated now.
    pub fn start(model: Arc<dyn Model>, config: EngineConfig) -> Result<Engine> {
        config.validate()?;
        let lm = model.as_causal_lm().ok_or_else(|| ServeError::Unsupported {
            model: model.name().into(),
            reason: "it is not a causal language model".into(),
        })?;
        let kv = lm.as_kv().ok_or_else(|| ServeError::Unsupported {
            model: model.name().into(),
            reason: "it has no KV cache for paged serving (only transformer LMs do)".into(),
        })?;
        let (vocab_size, context_len) = (kv.vocab_size(), kv.context_len().unwrap_or(usize::MAX));
        let pool = worker::Worker::make_pool(kv, &config)?;
        let shared = Arc::new(Shared {
            stats: Mutex::new(EngineStats {
                blocks_total: pool.num_blocks(),
                blocks_free: pool.num_blocks(),
                block_size: config.block_size,
                ..EngineStats::default()
            }),
            alive: AtomicBool::new(true),
            failure: Mutex::new(None),
            pending: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (shared, config) = (shared.clone(), config.clone());
            std::thread::Builder::new()
                .name("kiln-engine".into())
                .spawn(move || worker::run(model, pool, config, rx, shared))
                .map_err(|e| ServeError::Engine(format!("cannot start the engine thread: {e}")))?
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                commands: Mutex::new(tx),
                shared,
                next_id: AtomicU64::new(0),
                config,
                vocab_size,
                context_len,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The length of every logits vector (token ids must be below it).
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size
    }

    /// The most tokens (prompt and output) one sequence can hold.
    pub fn context_len(&self) -> usize {
        self.inner.context_len
    }

    /// Whether the worker is running (it stops on [`Engine::shutdown`] or a failure).
    pub fn is_alive(&self) -> bool {
        self.inner.shared.alive.load(Ordering::SeqCst)
    }

    /// Why the worker stopped, when it failed.
    pub fn failure(&self) -> Option<String> {
        self.inner.shared.failure.lock().ok().and_then(|f| f.clone())
    }

    /// A snapshot of the engine's counters.
    pub fn stats(&self) -> EngineStats {
        self.inner
            .shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Checks a request without queueing it: a non-empty prompt of ids in the vocabulary, valid
    /// sampling parameters, and `prompt + max_tokens` within the context.
    pub fn check(&self, prompt: &[u32], params: &SamplingParams) -> Result<()> {
        params
            .validate_for_vocab(self.inner.vocab_size)
            .map_err(|e| ServeError::InvalidRequest {
                param: None,
                message: e.to_string(),
            })?;
        if prompt.is_empty() {
            return Err(ServeError::InvalidRequest {
                param: Some("prompt".into()),
                message: "the prompt is empty (at least one token is needed)".into(),
            });
        }
        let v = self.inner.vocab_size;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= v) {
            return Err(ServeError::InvalidRequest {
                param: Some("prompt".into()),
                message: format!("token id {bad} is not below the vocabulary size {v}"),
            });
        }
        let ctx = self.inner.context_len;
        if prompt.len() + params.max_new_tokens > ctx {
            return Err(ServeError::ContextOverflow {
                prompt_tokens: prompt.len(),
                max_tokens: params.max_new_tokens,
                context: ctx,
            });
        }
        let needed = (prompt.len() + params.max_new_tokens).div_ceil(self.inner.config.block_size);
        let stats = self.stats();
        if needed > stats.blocks_total {
            return Err(ServeError::InvalidRequest {
                param: Some("max_tokens".into()),
                message: format!(
                    "the prompt ({} tokens) and max_tokens ({}) need {needed} KV blocks, more than the {} the KV memory budget holds",
                    prompt.len(),
                    params.max_new_tokens,
                    stats.blocks_total
                ),
            });
        }
        Ok(())
    }

    /// Queues a request. Errors: [`ServeError::InvalidRequest`] / [`ServeError::ContextOverflow`]
    /// (see [`Engine::check`]), [`ServeError::QueueFull`] when `max_queue` requests are already
    /// waiting or running beyond `max_running`, [`ServeError::EngineDown`] when the worker stopped.
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<Submission> {
        self.check(&prompt, &params)?;
        if !self.is_alive() {
            return Err(ServeError::EngineDown(
                self.failure().unwrap_or_else(|| "the engine is shut down".into()),
            ));
        }
        let shared = &self.inner.shared;
        let limit = (self.inner.config.max_queue + self.inner.config.max_running) as u64;
        let taken = shared
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                (p < limit).then_some(p + 1)
            });
        if taken.is_err() {
            return Err(ServeError::QueueFull {
                limit: self.inner.config.max_queue,
            });
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = tmpsc::unbounded_channel();
        let sent = self.send(Command::Submit {
            id,
            prompt,
            params,
            events: tx,
        });
        if sent.is_err() {
            shared.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(ServeError::EngineDown("the engine thread is gone".into()));
        }
        Ok(Submission {
            id,
            events: rx,
            engine: self.clone(),
            done: false,
        })
    }

    fn send(&self, command: Command) -> std::result::Result<(), ()> {
        let tx = self.inner.commands.lock().map_err(|_| ())?;
        tx.send(command).map_err(|_| ())
    }

    /// Cancels a request: its samples leave the batch and their blocks are freed before the next
    /// forward pass. Unknown or finished ids are ignored.
    pub fn cancel(&self, id: RequestId) {
        let _ = self.send(Command::Cancel(id));
    }

    /// Cancels one sample of a request (its text hit a stop string); the others go on.
    pub fn cancel_sample(&self, id: RequestId, sample: usize) {
        let _ = self.send(Command::CancelSample(id, sample));
    }

    /// Stops the worker after the current step; requests still in flight get
    /// [`Event::Failed`]. Waits for the thread to end.
    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
        let handle = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// One request's stream of [`Event`]s. Dropping it before the request finished cancels it.
pub struct Submission {
    id: RequestId,
    events: tmpsc::UnboundedReceiver<Event>,
    engine: Engine,
    done: bool,
}

impl Submission {
    /// The request's id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event (async); `None` once the request is over.
    pub async fn next(&mut self) -> Option<Event> {
        let e = self.events.recv().await;
        self.done |= e.is_none();
        e
    }

    /// The next event, blocking the calling thread (not for async contexts).
    pub fn blocking_next(&mut self) -> Option<Event> {
        let e = self.events.blocking_recv();
        self.done |= e.is_none();
        e
    }

    /// Stops one sample (a stop string ended its text).
    pub fn cancel_sample(&self, sample: usize) {
        self.engine.cancel_sample(self.id, sample);
    }
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        if !self.done {
            self.engine.cancel(self.id);
        }
    }
}
