//! [`generate`]: a streaming iterator over new tokens, and [`generate_all`] to collect it.

use super::sampler::{Sampled, TokenHistory};
use super::{CausalLm, DecodeState, Sampler, SamplingParams};
use crate::{Error, Result};

/// The new tokens of one generation, produced one at a time as the iterator is advanced.
///
/// Each item is a token id, or the error that ended generation. It ends after
/// `max_new_tokens` tokens, or right after yielding a stop token (the stop token is part of the
/// output), or after an error. The model is fed each sampled token only when another one is
/// needed, so the last token costs no forward pass.
pub struct Generator<'a> {
    state: Box<dyn DecodeState + 'a>,
    sampler: Sampler,
    history: TokenHistory,
    vocab_size: usize,
    /// Logits predicting the next token; `None` once generation has ended.
    logits: Option<Vec<f32>>,
    emitted: usize,
}

impl Generator<'_> {
    /// Tokens yielded so far.
    pub fn emitted(&self) -> usize {
        self.emitted
    }

    fn step(&mut self, logits: &[f32]) -> Result<(Sampled, Option<Vec<f32>>)> {
        let token = self.sampler.sample_with(logits, &self.history)?;
        let id = token.id;
        self.history.push(id);
        self.emitted += 1;
        let p = self.sampler.params();
        if self.emitted >= p.max_new_tokens || p.stop_tokens.contains(&id) {
            return Ok((token, None));
        }
        let next = feed(&mut *self.state, &[id], self.vocab_size)?;
        Ok((token, Some(next)))
    }

    /// The next token with its log-probabilities (when [`SamplingParams::logprobs`] asks for
    /// them); `None` once generation has ended.
    pub fn next_token(&mut self) -> Option<Result<Sampled>> {
        let logits = self.logits.take()?;
        match self.step(&logits) {
            Ok((token, next)) => {
                self.logits = next;
                Some(Ok(token))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

impl Iterator for Generator<'_> {
    type Item = Result<u32>;

    fn next(&mut self) -> Option<Result<u32>> {
        self.next_token().map(|t| t.map(|t| t.id))
    }
}

/// Feed `ids` without recording a graph; check the logits' length.
fn feed(state: &mut dyn DecodeState, ids: &[u32], vocab_size: usize) -> Result<Vec<f32>> {
    // From inside the thread pool, so the step's many small kernels do not each hand their
    // work over to it (see `kiln_autograd::in_pool`).
    let logits = kiln_autograd::in_pool(|| {
        let _no_grad = kiln_autograd::no_grad();
        state.feed(ids)
    })?;
    if logits.len() != vocab_size {
        return Err(Error::Generation(format!(
            "the model returned {} logits for a vocabulary of {vocab_size}",
            logits.len()
        )));
    }
    Ok(logits)
}

/// Check a request before any work: the parameters, a non-empty prompt of ids below the
/// vocabulary size, and, for a model with a context limit, room for the prompt and
/// `max_new_tokens` (no silent truncation).
pub fn check_prompt(
    vocab_size: usize,
    context_len: Option<usize>,
    prompt: &[u32],
    params: &SamplingParams,
) -> Result<()> {
    params.validate_for_vocab(vocab_size)?;
    if prompt.is_empty() {
        return Err(Error::Generation(
            "the prompt is empty: generation needs at least one token to start from".into(),
        ));
    }
    if let Some((pos, &id)) = prompt
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= vocab_size)
    {
        return Err(Error::Generation(format!(
            "prompt token {id} at position {pos} is not below the vocabulary size {vocab_size}"
        )));
    }
    if let Some(ctx) = context_len {
        if prompt.len() + params.max_new_tokens > ctx {
            return Err(Error::Generation(format!(
                "the prompt ({} tokens) plus max_new_tokens ({}) exceeds the model's context of {ctx} tokens; shorten the prompt or ask for at most {} new tokens",
                prompt.len(),
                params.max_new_tokens,
                ctx.saturating_sub(prompt.len())
            )));
        }
    }
    Ok(())
}

/// Start generating after `prompt` with `lm`. The request is checked first ([`check_prompt`]),
/// then the prompt is fed once; the returned [`Generator`] yields the new tokens as they are
/// sampled. `params.n` must be 1 here; [`BatchGenerator`](super::BatchGenerator) draws several
/// samples.
pub fn generate<'a>(lm: &'a dyn CausalLm, prompt: &[u32], params: &SamplingParams) -> Result<Generator<'a>> {
    let vocab_size = lm.vocab_size();
    check_prompt(vocab_size, lm.context_len(), prompt, params)?;
    if params.n != 1 {
        return Err(Error::Generation(format!(
            "generate draws one sample; n = {} needs BatchGenerator",
            params.n
        )));
    }
    let sampler = Sampler::new(params)?;
    let mut state = lm.start()?;
    let logits = if params.max_new_tokens == 0 {
        None
    } else {
        Some(feed(&mut *state, prompt, vocab_size)?)
    };
    Ok(Generator {
        state,
        sampler,
        history: TokenHistory::new(prompt),
        vocab_size,
        logits,
        emitted: 0,
    })
}

/// [`generate`] collected: every new token, or the first error.
pub fn generate_all(lm: &dyn CausalLm, prompt: &[u32], params: &SamplingParams) -> Result<Vec<u32>> {
    generate(lm, prompt, params)?.collect()
}
