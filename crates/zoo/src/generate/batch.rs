//! Batched decoding: [`BatchDecoder`] advances several sequences in one forward pass;
//! [`BatchGenerator`] runs generation requests on it, with requests joining and leaving between
//! steps (what a server's continuous batching needs).

use std::collections::BTreeMap;

use super::sampler::{Sampled, Sampler, TokenHistory};
use super::stream::check_prompt;
use super::{CausalLm, DecodeState, SamplingParams};
use crate::{Error, Result};

/// A sequence inside a [`BatchDecoder`].
pub type SeqId = u64;

/// Advances many independent sequences together. A sequence is opened empty, fed its prompt,
/// then one token at a time; a step feeds any subset of the open sequences (each its own number
/// of tokens) and returns each one's next-token logits. The logits of a sequence do not depend on
/// which other sequences share the step.
pub trait BatchDecoder: Send {
    /// The length of every logits vector.
    fn vocab_size(&self) -> usize;
    /// Open an empty sequence.
    fn add_sequence(&mut self) -> Result<SeqId>;
    /// Close a sequence and free its state; an unknown id is an error.
    fn remove_sequence(&mut self, id: SeqId) -> Result<()>;
    /// Open a copy of a sequence's state (for several samples of one prompt), when the model can
    /// copy it; `None` means the caller feeds the prompt again.
    fn fork_sequence(&mut self, _id: SeqId) -> Result<Option<SeqId>> {
        Ok(None)
    }
    /// Feed each listed sequence its new tokens (at least one each) in one forward pass; returns
    /// the next-token logits of each, in the order given.
    fn step(&mut self, feeds: &[(SeqId, &[u32])]) -> Result<Vec<Vec<f32>>>;
}

/// The batch decoder of any [`CausalLm`]: one [`DecodeState`] per sequence, fed one after another.
pub struct SerialDecoder<'a, L: CausalLm + ?Sized> {
    lm: &'a L,
    states: BTreeMap<SeqId, Box<dyn DecodeState + 'a>>,
    next: SeqId,
}

impl<'a, L: CausalLm + ?Sized> SerialDecoder<'a, L> {
    /// A decoder over `lm`'s states.
    pub fn new(lm: &'a L) -> Self {
        SerialDecoder {
            lm,
            states: BTreeMap::new(),
            next: 0,
        }
    }
}

pub(crate) fn unknown_sequence(id: SeqId) -> Error {
    Error::Generation(format!("sequence {id} is not open in this decoder"))
}

impl<'a, L: CausalLm + ?Sized> BatchDecoder for SerialDecoder<'a, L> {
    fn vocab_size(&self) -> usize {
        self.lm.vocab_size()
    }
    fn add_sequence(&mut self) -> Result<SeqId> {
        let id = self.next;
        self.next += 1;
        self.states.insert(id, self.lm.start()?);
        Ok(id)
    }
    fn remove_sequence(&mut self, id: SeqId) -> Result<()> {
        self.states
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| unknown_sequence(id))
    }
    fn step(&mut self, feeds: &[(SeqId, &[u32])]) -> Result<Vec<Vec<f32>>> {
        let states = &mut self.states;
        kiln_autograd::in_pool(|| {
            let _no_grad = kiln_autograd::no_grad();
            feeds
                .iter()
                .map(|&(id, ids)| {
                    let state = states.get_mut(&id).ok_or_else(|| unknown_sequence(id))?;
                    state.feed(ids)
                })
                .collect()
        })
    }
}

/// A request handed to [`BatchGenerator::add_request`].
pub type RequestId = u64;

/// One token of one sample of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationEvent {
    /// The request.
    pub request: RequestId,
    /// Which of the request's `n` samples (0-based).
    pub sample: usize,
    /// The token (with log-probabilities when asked for).
    pub token: Sampled,
    /// Whether this was the sample's last token (its length limit or a stop token).
    pub finished: bool,
}

/// One sample in flight.
struct Running {
    request: RequestId,
    sample: usize,
    seq: SeqId,
    sampler: Sampler,
    history: TokenHistory,
    /// Tokens to feed at the next step: the prompt, then the last sampled token.
    pending: Vec<u32>,
    emitted: usize,
}

/// Many generation requests decoded together: each [`step`](BatchGenerator::step) runs one forward
/// pass over every sample in flight (prompts of newcomers and one token of the others) and
/// returns one token per sample. Requests may be added between steps; finished samples leave at
/// once. Each sample's tokens are those [`generate`](super::generate) gives for it alone (sample
/// `i` of a request uses seed `seed + i`).
pub struct BatchGenerator<'a> {
    decoder: Box<dyn BatchDecoder + 'a>,
    vocab_size: usize,
    context_len: Option<usize>,
    running: Vec<Running>,
    next_request: RequestId,
}

impl<'a> BatchGenerator<'a> {
    /// A generator over `lm`'s batch decoder.
    pub fn new(lm: &'a dyn CausalLm) -> Result<BatchGenerator<'a>> {
        Ok(BatchGenerator {
            decoder: lm.batch_decoder()?,
            vocab_size: lm.vocab_size(),
            context_len: lm.context_len(),
            running: Vec::new(),
            next_request: 0,
        })
    }

    /// Queue a request: its prompt and parameters are checked now (an error leaves the generator
    /// unchanged); its tokens arrive from the following steps.
    pub fn add_request(&mut self, prompt: &[u32], params: &SamplingParams) -> Result<RequestId> {
        check_prompt(self.vocab_size, self.context_len, prompt, params)?;
        let request = self.next_request;
        if params.max_new_tokens == 0 {
            return Ok(request);
        }
        let mut added = Vec::with_capacity(params.n);
        for sample in 0..params.n {
            let seq = match self.decoder.add_sequence() {
                Ok(s) => s,
                Err(e) => {
                    for r in added {
                        let _ = self.decoder.remove_sequence(r);
                    }
                    return Err(e);
                }
            };
            added.push(seq);
            let seeded = SamplingParams {
                seed: params.seed.wrapping_add(sample as u64),
                ..params.clone()
            };
            self.running.push(Running {
                request,
                sample,
                seq,
                sampler: Sampler::new(&seeded)?,
                history: TokenHistory::new(prompt),
                pending: prompt.to_vec(),
                emitted: 0,
            });
        }
        self.next_request += 1;
        Ok(request)
    }

    /// Samples still in flight.
    pub fn in_flight(&self) -> usize {
        self.running.len()
    }

    /// Whether nothing is left to generate.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty()
    }

    /// Drop a request's samples (a client that went away).
    pub fn cancel(&mut self, request: RequestId) -> Result<()> {
        let (gone, kept): (Vec<Running>, Vec<Running>) =
            self.running.drain(..).partition(|r| r.request == request);
        self.running = kept;
        for r in gone {
            self.decoder.remove_sequence(r.seq)?;
        }
        Ok(())
    }

    /// Drop one sample of a request (its text hit a stop string); the request's other samples go on.
    pub fn cancel_sample(&mut self, request: RequestId, sample: usize) -> Result<()> {
        if let Some(i) = self
            .running
            .iter()
            .position(|r| r.request == request && r.sample == sample)
        {
            let r = self.running.remove(i);
            self.decoder.remove_sequence(r.seq)?;
        }
        Ok(())
    }

    /// One forward pass over every sample in flight; one token for each.
    pub fn step(&mut self) -> Result<Vec<GenerationEvent>> {
        if self.running.is_empty() {
            return Ok(Vec::new());
        }
        let feeds: Vec<(SeqId, &[u32])> = self
            .running
            .iter()
            .map(|r| (r.seq, r.pending.as_slice()))
            .collect();
        let decoder = &mut self.decoder;
        let logits = kiln_autograd::in_pool(|| {
            let _no_grad = kiln_autograd::no_grad();
            decoder.step(&feeds)
        })?;
        if logits.len() != self.running.len() {
            return Err(Error::Generation(format!(
                "the decoder returned {} logit vectors for {} sequences",
                logits.len(),
                self.running.len()
            )));
        }
        let mut events = Vec::with_capacity(self.running.len());
        let mut keep = Vec::with_capacity(self.running.len());
        for (mut r, l) in self.running.drain(..).zip(logits) {
            if l.len() != self.vocab_size {
                return Err(Error::Generation(format!(
                    "the model returned {} logits for a vocabulary of {}",
                    l.len(),
                    self.vocab_size
                )));
            }
            let token = r.sampler.sample_with(&l, &r.history)?;
            r.history.push(token.id);
            r.emitted += 1;
            let p = r.sampler.params();
            let finished = r.emitted >= p.max_new_tokens || p.stop_tokens.contains(&token.id);
            events.push(GenerationEvent {
                request: r.request,
                sample: r.sample,
                token: token.clone(),
                finished,
            });
            if finished {
                self.decoder.remove_sequence(r.seq)?;
            } else {
                r.pending = vec![token.id];
                keep.push(r);
            }
        }
        self.running = keep;
        Ok(events)
    }
}
