//! [`generate`]: a streaming iterator over new tokens, and [`generate_all`] to collect it.

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

    fn step(&mut self, logits: &[f32]) -> Result<(u32, Option<Vec<f32>>)> {
        let id = self.sampler.sample(logits)?;
        self.emitted += 1;
        let p = self.sampler.params();
        if self.emitted >= p.max_new_tokens || p.stop_tokens.contains(&id) {
            return Ok((id, None));
        }
        let next = feed(&mut *self.state, &[id], self.vocab_size)?;
        Ok((id, Some(next)))
    }
}

impl Iterator for Generator<'_> {
    type Item = Result<u32>;

    fn next(&mut self) -> Option<Result<u32>> {
        let logits = self.logits.take()?;
        match self.step(&logits) {
            Ok((id, next)) => {
                self.logits = next;
                Some(Ok(id))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// Feed `ids` without recording a graph; check the logits' length.
fn feed(state: &mut dyn DecodeState, ids: &[u32], vocab_size: usize) -> Result<Vec<f32>> {
    let _no_grad = kiln_autograd::no_grad();
    let logits = state.feed(ids)?;
    if logits.len() != vocab_size {
        return Err(Error::Generation(format!(
            "the model returned {} logits for a vocabulary of {vocab_size}",
            logits.len()
        )));
    }
    Ok(logits)
}

/// Start generating after `prompt` with `lm`. The parameters and the prompt are checked first
/// (a non-empty prompt of ids below the vocabulary size), then the prompt is fed once; the
/// returned [`Generator`] yields the new tokens as they are sampled.
pub fn generate<'a>(lm: &'a dyn CausalLm, prompt: &[u32], params: &SamplingParams) -> Result<Generator<'a>> {
    let vocab_size = lm.vocab_size();
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
        vocab_size,
        logits,
        emitted: 0,
    })
}

/// [`generate`] collected: every new token, or the first error.
pub fn generate_all(lm: &dyn CausalLm, prompt: &[u32], params: &SamplingParams) -> Result<Vec<u32>> {
    generate(lm, prompt, params)?.collect()
}
