//! The engine's thread: the scheduler and the decode loop.
//!
//! Each iteration takes the commands that arrived (new requests, cancellations), admits waiting
//! sequences while blocks and batch slots allow, gives every running sequence its next block,
//! preempting the latest admitted ones when the pool is exhausted, fills a token budget with one
//! token per decoding sequence and prompt chunks of the prefilling ones, runs one forward pass
//! over the paged cache, and samples a token for every sequence whose known tokens are all
//! computed.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use rayon::prelude::*;

use kiln_zoo::generate::{
    CachedFeed, KvCausalLm, KvPool, Logits, PagedKv, PagedSeq, Sampler, SamplingParams, TokenHistory,
};
use kiln_zoo::Model;
use tokio::sync::mpsc as tmpsc;

use super::blocks::{chain_hash, BlockManager};
use super::{Command, EngineConfig, Event, FinishReason, RequestId, Shared};
use crate::error::{Result, ServeError};

/// One sample of a request: its tokens, its cache and its sampler.
struct Seq {
    request: RequestId,
    sample: usize,
    /// The prompt, then the generated tokens.
    tokens: Vec<u32>,
    /// Positions whose keys and values are in the cache.
    computed: usize,
    /// The block table.
    blocks: Vec<u32>,
    /// Keys of the leading full blocks registered in the prefix cache (or found there).
    keys: Vec<u64>,
    sampler: Sampler,
    history: TokenHistory,
    generated: usize,
    /// Samples still to fork from this one when its prompt is computed (`n - 1` for a request's
    /// first sample, 0 otherwise).
    forks: usize,
}

/// A request in flight: where its events go and how many samples are left.
struct Request {
    events: tmpsc::UnboundedSender<Event>,
    params: SamplingParams,
    live_samples: usize,
}

/// The scheduler's state.
pub(crate) struct Worker<'m> {
    lm: &'m dyn KvCausalLm,
    config: EngineConfig,
    pool: KvPool,
    blocks: BlockManager,
    requests: HashMap<RequestId, Request>,
    /// Admitted sequences, oldest first.
    running: Vec<Seq>,
    /// Sequences waiting for admission: new ones at the back, preempted ones at the front.
    waiting: VecDeque<Seq>,
    shared: Arc<Shared>,
    generated: u64,
    preemptions: u64,
    steps: u64,
    completed: u64,
}

fn model_of(model: &dyn Model) -> Result<&dyn KvCausalLm> {
    model
        .as_causal_lm()
        .and_then(|lm| lm.as_kv())
        .ok_or_else(|| ServeError::Unsupported {
            model: model.name().into(),
            reason: "it has no KV cache for paged serving".into(),
        })
}

/// The worker thread's body: runs until shutdown, a closed command channel, or a failure (which
/// is recorded and sent to every request in flight).
pub(crate) fn run(
    model: Arc<dyn Model>,
    pool: KvPool,
    config: EngineConfig,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
) {
    let failure = match model_of(model.as_ref()) {
        Err(e) => Some(e.to_string()),
        Ok(lm) => {
            let mut worker = Worker::new(lm, pool, config, shared.clone());
            let outcome = catch_unwind(AssertUnwindSafe(|| worker.run(&commands)));
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(panic) => Some(format!(
                    "the engine thread panicked: {}",
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                )),
            };
            // Every request still in flight learns why its stream ends (after a panic too: this
            // only drains the request table and releases blocks).
            worker.fail_all(failure.as_deref().unwrap_or("the engine shut down"));
            failure
        }
    };
    if let Some(f) = failure {
        tracing::error!("engine stopped: {f}");
        if let Ok(mut slot) = shared.failure.lock() {
            *slot = Some(f);
        }
    }
    shared.alive.store(false, Ordering::SeqCst);
}

impl<'m> Worker<'m> {
    /// The KV pool the configuration's memory budget holds.
    pub(crate) fn make_pool(lm: &dyn KvCausalLm, config: &EngineConfig) -> Result<KvPool> {
        let shape = lm.kv_shape();
        let blocks =
            KvPool::blocks_for_bytes(shape, config.kv_dtype, config.block_size, config.kv_memory_bytes);
        if blocks == 0 {
            return Err(ServeError::Config(format!(
                "a KV memory budget of {} bytes holds no block of {} positions ({} bytes each); raise it",
                config.kv_memory_bytes,
                config.block_size,
                config.block_size * shape.bytes_per_position(config.kv_dtype)
            )));
        }
        let pool = KvPool::new(shape, config.kv_dtype, config.block_size, blocks)?;
        tracing::info!(
            "KV cache: {blocks} blocks of {} positions in {} ({:.1} MiB, {} positions)",
            config.block_size,
            config.kv_dtype.name(),
            pool.bytes() as f64 / (1 << 20) as f64,
            blocks * config.block_size
        );
        Ok(pool)
    }

    fn new(lm: &'m dyn KvCausalLm, pool: KvPool, config: EngineConfig, shared: Arc<Shared>) -> Worker<'m> {
        let blocks = BlockManager::new(pool.num_blocks());
        let w = Worker {
            lm,
            config,
            pool,
            blocks,
            requests: HashMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            shared,
            generated: 0,
            preemptions: 0,
            steps: 0,
            completed: 0,
        };
        w.publish_stats();
        w
    }

    fn run(&mut self, commands: &mpsc::Receiver<Command>) -> Result<()> {
        loop {
            // Idle: block until something arrives; busy: take what is there and go on.
            if self.running.is_empty() && self.waiting.is_empty() {
                match commands.recv() {
                    Ok(c) => {
                        if !self.handle(c) {
                            return Ok(());
                        }
                    }
                    Err(_) => return Ok(()),
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(c) => {
                        if !self.handle(c) {
                            return Ok(());
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                }
            }
            self.step()?;
            self.publish_stats();
        }
    }

    /// Applies a command; `false` on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Submit {
                id,
                prompt,
                params,
                events,
            } => {
                match Sampler::new(&params) {
                    Ok(sampler) => {
                        let forks = params.n.saturating_sub(1);
                        self.requests.insert(
                            id,
                            Request {
                                events,
                                params: params.clone(),
                                live_samples: params.n.max(1),
                            },
                        );
                        self.waiting.push_back(Seq {
                            request: id,
                            sample: 0,
                            history: TokenHistory::new(&prompt),
                            tokens: prompt,
                            computed: 0,
                            blocks: Vec::new(),
                            keys: Vec::new(),
                            sampler,
                            generated: 0,
                            forks,
                        });
                    }
                    Err(e) => {
                        let _ = events.send(Event::Failed(e.to_string()));
                        self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                true
            }
            Command::Cancel(id) => {
                self.drop_request(id);
                true
            }
            Command::CancelSample(id, sample) => {
                self.drop_sample(id, sample);
                true
            }
            Command::Shutdown => false,
        }
    }

    /// Removes a request and frees its sequences' blocks.
    fn drop_request(&mut self, id: RequestId) {
        if self.requests.remove(&id).is_none() {
            return;
        }
        self.shared.pending.fetch_sub(1, Ordering::SeqCst);
        let blocks = &mut self.blocks;
        for s in self.running.iter_mut().chain(self.waiting.iter_mut()) {
            if s.request == id {
                blocks.release_all(&mut s.blocks);
            }
        }
        self.running.retain(|s| s.request != id);
        self.waiting.retain(|s| s.request != id);
    }

    /// Ends one sample of a request (finished or cancelled); the request ends with its last.
    fn drop_sample(&mut self, id: RequestId, sample: usize) {
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        let before = self.running.len() + self.waiting.len();
        let blocks = &mut self.blocks;
        let mut forks_lost = 0;
        for s in self.running.iter_mut().chain(self.waiting.iter_mut()) {
            if s.request == id && s.sample == sample {
                blocks.release_all(&mut s.blocks);
                forks_lost += s.forks;
            }
        }
        self.running.retain(|s| !(s.request == id && s.sample == sample));
        self.waiting.retain(|s| !(s.request == id && s.sample == sample));
        if before == self.running.len() + self.waiting.len() {
            return;
        }
        // Cancelling the first sample before its prompt was computed cancels the forks it owed.
        req.live_samples = req.live_samples.saturating_sub(1 + forks_lost);
        if req.live_samples == 0 {
            self.requests.remove(&id);
            self.completed += 1;
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn publish_stats(&self) {
        if let Ok(mut s) = self.shared.stats.lock() {
            let running: std::collections::HashSet<RequestId> =
                self.running.iter().map(|s| s.request).collect();
            s.running = running.len();
            s.waiting = self.requests.len() - running.len();
            s.blocks_total = self.blocks.total();
            s.blocks_in_use = self.blocks.in_use();
            s.blocks_free = self.blocks.available();
            s.block_size = self.config.block_size;
            s.prefix_queried_tokens = self.blocks.queried_tokens;
            s.prefix_hit_tokens = self.blocks.hit_tokens;
            s.generated_tokens = self.generated;
            s.preemptions = self.preemptions;
            s.steps = self.steps;
            s.completed = self.completed;
        }
    }

    /// Sends every request in flight `Failed(reason)` and drops them.
    fn fail_all(&mut self, reason: &str) {
        for (_, r) in self.requests.drain() {
            let _ = r.events.send(Event::Failed(reason.to_string()));
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
        }
        let blocks = &mut self.blocks;
        for s in self.running.iter_mut().chain(self.waiting.iter_mut()) {
            blocks.release_all(&mut s.blocks);
        }
        self.running.clear();
        self.waiting.clear();
        self.publish_stats();
    }

    /// Blocks a sequence needs to hold `positions` positions.
    fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.config.block_size)
    }

    /// Takes the cached blocks of the sequence's leading full blocks (leaving at least one token
    /// to compute, whose logits are needed).
    fn match_prefix(&mut self, seq: &mut Seq) {
        if !self.config.prefix_caching || !seq.blocks.is_empty() {
            return;
        }
        let bs = self.config.block_size;
        let full = (seq.tokens.len() - 1) / bs;
        let mut parent = None;
        for i in 0..full {
            let chunk = &seq.tokens[i * bs..(i + 1) * bs];
            let key = chain_hash(parent, chunk);
            match self.blocks.lookup(key, parent, chunk) {
                Some(b) => {
                    seq.blocks.push(b);
                    seq.keys.push(key);
                    parent = Some(key);
                }
                None => break,
            }
        }
        seq.computed = seq.blocks.len() * bs;
    }

    /// Admits waiting sequences while there are batch slots and blocks for their whole known
    /// tokens (keeping 1% of the pool in reserve for the running ones' growth).
    fn admit(&mut self) {
        let reserve = (self.blocks.total() / 100).max(1);
        while self.running.len() < self.config.max_running {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            self.match_prefix(&mut seq);
            let needed = self.blocks_for(seq.tokens.len()) - seq.blocks.len();
            let spare = if self.running.is_empty() { 0 } else { reserve };
            if self.blocks.available() < needed + spare {
                // Give the prefix back (it stays cached) and wait for blocks.
                self.blocks.release_all(&mut seq.blocks);
                seq.keys.clear();
                seq.computed = 0;
                self.waiting.push_front(seq);
                break;
            }
            for _ in 0..needed {
                match self.blocks.allocate() {
                    Some(b) => seq.blocks.push(b),
                    None => break,
                }
            }
            if self.config.prefix_caching {
                self.blocks.queried_tokens += seq.tokens.len() as u64;
                self.blocks.hit_tokens += seq.computed as u64;
            }
            self.running.push(seq);
        }
    }

    /// Frees a running sequence's blocks and puts it back at the front of the queue; it will
    /// recompute its tokens (prompt and output so far) when readmitted.
    fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        self.blocks.release_all(&mut seq.blocks);
        seq.keys.clear();
        seq.computed = 0;
        self.preemptions += 1;
        tracing::debug!(
            "preempted request {} sample {} ({} tokens) for lack of KV blocks",
            seq.request,
            seq.sample,
            seq.tokens.len()
        );
        self.waiting.push_front(seq);
    }

    /// Gives every running sequence the blocks its next token needs, preempting the latest
    /// admitted sequences while the pool is short.
    fn grow_blocks(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let needed = self.blocks_for(self.running[i].tokens.len());
            while self.running[i].blocks.len() < needed {
                if let Some(b) = self.blocks.allocate() {
                    self.running[i].blocks.push(b);
                    continue;
                }
                // Preempt the newest other sequence, or this one when it is the newest.
                let victim = self.running.len() - 1;
                self.preempt(victim);
                if victim == i {
                    break;
                }
            }
            i += 1;
        }
    }

    /// One scheduling round and forward pass.
    fn step(&mut self) -> Result<()> {
        self.admit();
        self.grow_blocks();
        if self.running.is_empty() {
            return Ok(());
        }
        // The feeds: every decoding sequence's token, then prompt chunks within the budget.
        let mut budget = self.config.max_step_tokens;
        let mut plan: Vec<(usize, usize)> = Vec::new(); // (running index, tokens fed)
        for (i, s) in self.running.iter().enumerate() {
            if s.tokens.len() - s.computed == 1 {
                plan.push((i, 1));
                budget = budget.saturating_sub(1);
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            let left = s.tokens.len() - s.computed;
            if left > 1 && budget > 0 {
                let take = left.min(budget);
                plan.push((i, take));
                budget -= take;
            }
        }
        if plan.is_empty() {
            return Ok(());
        }
        let feeds: Vec<CachedFeed> = plan
            .iter()
            .map(|&(i, t)| {
                let s = &self.running[i];
                let done = s.computed + t == s.tokens.len();
                CachedFeed {
                    tokens: &s.tokens[s.computed..s.computed + t],
                    logits: if done { Logits::Last } else { Logits::None },
                }
            })
            .collect();
        let seqs: Vec<PagedSeq> = plan
            .iter()
            .map(|&(i, _)| PagedSeq {
                cached: self.running[i].computed,
                blocks: &self.running[i].blocks,
            })
            .collect();
        let (lm, pool) = (&self.lm, &mut self.pool);
        // From inside the thread pool (see `kiln_autograd::in_pool`).
        let logits = kiln_autograd::in_pool(|| {
            let _no_grad = kiln_autograd::no_grad();
            let mut store = PagedKv::new(pool, seqs);
            lm.forward_cached(&feeds, &mut store)
        })?;
        self.steps += 1;
        for &(i, t) in &plan {
            self.running[i].computed += t;
            self.register_full_blocks(i);
        }
        // Forks first (they take blocks); then every sequence with logits draws its token, side
        // by side on the thread pool (each sampler is its own seeded stream, so the tokens do
        // not depend on the order).
        let mut logits_of: Vec<Option<Vec<f32>>> = vec![None; self.running.len()];
        let mut forked: Vec<(Seq, usize)> = Vec::new();
        for (&(i, _), l) in plan.iter().zip(logits) {
            if l.is_empty() {
                continue;
            }
            if self.running[i].forks > 0 {
                forked.extend(self.fork(i).into_iter().map(|c| (c, i)));
            }
            logits_of[i] = Some(l);
        }
        let requests = &self.requests;
        let outcomes: Vec<(RequestId, usize, Result<Option<FinishReason>>)> = self
            .running
            .par_iter_mut()
            .zip(logits_of.par_iter())
            .filter_map(|(s, l)| {
                l.as_ref()
                    .map(|l| (s.request, s.sample, sample_seq(s, l, requests)))
            })
            .chain(forked.par_iter_mut().map(|(c, i)| {
                let l = logits_of[*i].as_deref().unwrap_or_default();
                (c.request, c.sample, sample_seq(c, l, requests))
            }))
            .collect();
        let mut finished = Vec::new();
        let mut failed: Vec<(RequestId, String)> = Vec::new();
        for (request, sample, outcome) in outcomes {
            match outcome {
                Ok(done) => {
                    self.generated += 1;
                    if let Some(reason) = done {
                        finished.push((request, sample, reason));
                    }
                }
                // A sampling error (non-finite logits) fails its request, not the engine.
                Err(e) => failed.push((request, e.to_string())),
            }
        }
        let forked = forked.into_iter().map(|(c, _)| c);
        for child in forked {
            // Children beyond the batch limit wait (keeping their blocks) for a slot.
            if child.blocks.is_empty() {
                self.waiting.push_front(child);
            } else if self.running.len() >= self.config.max_running {
                self.waiting.push_back(child);
            } else {
                self.running.push(child);
            }
        }
        for (request, reason) in failed {
            tracing::warn!("request {request} failed: {reason}");
            if let Some(r) = self.requests.get(&request) {
                let _ = r.events.send(Event::Failed(reason));
            }
            self.drop_request(request);
        }
        for (request, sample, reason) in finished {
            if let Some(r) = self.requests.get(&request) {
                let _ = r.events.send(Event::Finished { sample, reason });
            }
            self.drop_sample(request, sample);
        }
        // Requests whose client went away.
        let gone: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.drop_request(id);
        }
        Ok(())
    }

    /// Registers the sequence's newly completed full blocks in the prefix cache.
    fn register_full_blocks(&mut self, i: usize) {
        if !self.config.prefix_caching {
            return;
        }
        let bs = self.config.block_size;
        let s = &mut self.running[i];
        let full = s.computed / bs;
        while s.keys.len() < full {
            let j = s.keys.len();
            let chunk = &s.tokens[j * bs..(j + 1) * bs];
            let parent = s.keys.last().copied();
            let key = chain_hash(parent, chunk);
            self.blocks.register(s.blocks[j], key, parent, chunk);
            s.keys.push(key);
        }
    }

    /// The other samples of a request whose prompt is now computed: they share its full blocks
    /// and get a copy of its partial last block (or, when no block is free, wait to recompute).
    fn fork(&mut self, i: usize) -> Vec<Seq> {
        let (forks, request) = (self.running[i].forks, self.running[i].request);
        self.running[i].forks = 0;
        let Some(params) = self.requests.get(&request).map(|r| r.params.clone()) else {
            return Vec::new();
        };
        let bs = self.config.block_size;
        let mut out = Vec::with_capacity(forks);
        for sample in 1..=forks {
            let seeded = SamplingParams {
                seed: params.seed.wrapping_add(sample as u64),
                ..params.clone()
            };
            let Ok(sampler) = Sampler::new(&seeded) else {
                // Only the seed differs from parameters already validated; should it fail, the
                // sample is counted as ended so the request still completes.
                if let Some(r) = self.requests.get_mut(&request) {
                    r.live_samples = r.live_samples.saturating_sub(1);
                }
                continue;
            };
            let parent = &self.running[i];
            let mut child = Seq {
                request,
                sample,
                tokens: parent.tokens.clone(),
                computed: parent.computed,
                blocks: Vec::new(),
                keys: parent.keys.clone(),
                sampler,
                history: TokenHistory::new(&parent.tokens),
                generated: 0,
                forks: 0,
            };
            let full = parent.computed / bs;
            let partial = !parent.computed.is_multiple_of(bs);
            let parent_blocks = parent.blocks.clone();
            for &b in &parent_blocks[..full] {
                self.blocks.share(b);
                child.blocks.push(b);
            }
            if partial {
                match self.blocks.allocate() {
                    Some(b) => {
                        self.pool.copy_block(parent_blocks[full], b);
                        child.blocks.push(b);
                    }
                    None => {
                        // No room: recompute later (its full blocks stay cached).
                        self.blocks.release_all(&mut child.blocks);
                        child.keys.clear();
                        child.computed = 0;
                    }
                }
            }
            out.push(child);
        }
        out
    }
}

/// Draws a sequence's next token, appends it and sends it to the request's stream; returns why
/// the sample finished, if it did.
fn sample_seq(
    s: &mut Seq,
    logits: &[f32],
    requests: &HashMap<RequestId, Request>,
) -> Result<Option<FinishReason>> {
    let token = s.sampler.sample_with(logits, &s.history)?;
    let id = token.id;
    s.history.push(id);
    s.tokens.push(id);
    s.generated += 1;
    let p = s.sampler.params();
    let reason = if p.stop_tokens.contains(&id) {
        Some(FinishReason::Stop)
    } else if s.generated >= p.max_new_tokens {
        Some(FinishReason::Length)
    } else {
        None
    };
    if let Some(r) = requests.get(&s.request) {
        let _ = r.events.send(Event::Token {
            sample: s.sample,
            token,
        });
    }
    Ok(reason)
}
