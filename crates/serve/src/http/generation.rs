//! [`Job`]: one generation request in flight — submits it to the engine, turns the engine's
//! token events into text per sample (stop strings cut here: the engine only knows stop token
//! ids), collects log-probabilities, and times the request for the metrics.

use std::sync::Arc;
use std::time::Instant;

use kiln_data::text::TextTokenizer;
use kiln_zoo::generate::{Sampled, SamplingParams};

use super::error::ApiError;
use super::state::{Ready, ServerState};
use super::text::SampleText;
use crate::{Event, Submission};

/// What a sampled token and its alternatives were, as text.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f64,
    /// The most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(String, f64)>,
}

/// A step of a generation, as a response reports it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Update {
    /// New text of sample `sample` (possibly empty when only log-probabilities are new).
    Text {
        /// Which sample (the choice index).
        sample: usize,
        /// The new text.
        text: String,
        /// The tokens behind it, when log-probabilities were asked for.
        logprobs: Vec<TokenLogprob>,
    },
    /// Sample `sample` is complete.
    Finish {
        /// Which sample.
        sample: usize,
        /// OpenAI's `finish_reason`: `stop` (end-of-sequence token or stop string) or `length`.
        reason: &'static str,
    },
}

/// Token counts of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated over all samples (an end-of-sequence token counts; tokens after a stop
    /// string do not).
    pub completion_tokens: usize,
}

impl Usage {
    /// OpenAI's `usage` object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// One sample of a finished request.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SampleResult {
    /// The whole text.
    pub text: String,
    /// Per token, when asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// Why it ended.
    pub finish_reason: &'static str,
}

/// A request submitted to the engine. Dropping it (or the future of [`Job::run`]) cancels the
/// request.
pub(crate) struct Job {
    submission: Submission,
    tokenizer: Arc<dyn TextTokenizer>,
    stop: Vec<String>,
    stop_tokens: Vec<u32>,
    n: usize,
    logprobs: bool,
    prompt_tokens: usize,
    state: ServerState,
    arrived: Instant,
    /// Whether the request ran to its end (or failed); a job dropped before that counts as
    /// cancelled.
    ended: bool,
}

impl Drop for Job {
    fn drop(&mut self) {
        // Runs before the submission is dropped (which tells the engine), so the counter is
        // up to date by the time the engine's stats show the request gone.
        if !self.ended {
            self.state.metrics().cancelled();
        }
    }
}

/// What a request asks of the engine beyond its prompt.
pub(crate) struct Ask<'a> {
    /// Sampling parameters (`max_new_tokens`, `logprobs`, `n`, ... set; stop tokens are added).
    pub params: SamplingParams,
    /// Stop strings, applied to the text here.
    pub stop: Vec<String>,
    /// The request parameter holding the prompt (`prompt` or `messages`), for errors.
    pub prompt_param: &'a str,
    /// When the request arrived (for the time to first token).
    pub arrived: Instant,
}

impl Job {
    /// Submits `prompt` to the engine; the tokenizer's end-of-sequence id stops generation.
    pub fn submit(state: &ServerState, ready: &Ready, prompt: Vec<u32>, ask: Ask) -> Result<Job, ApiError> {
        let Ask {
            mut params,
            stop,
            prompt_param,
            arrived,
        } = ask;
        let vocab = ready.engine.vocab_size();
        params.stop_tokens = ready
            .tokenizer
            .eos_id()
            .filter(|&id| (id as usize) < vocab)
            .into_iter()
            .collect();
        params.stop = Vec::new();
        let (n, logprobs, prompt_tokens) = (params.n, params.logprobs.is_some(), prompt.len());
        let stop_tokens = params.stop_tokens.clone();
        let submission = ready
            .engine
            .submit(prompt, params)
            .map_err(|e| ApiError::from_serve(e, prompt_param))?;
        state.metrics().add_prompt_tokens(prompt_tokens);
        Ok(Job {
            submission,
            tokenizer: ready.tokenizer.clone(),
            stop,
            stop_tokens,
            n,
            logprobs,
            prompt_tokens,
            state: state.clone(),
            arrived,
            ended: false,
        })
    }

    /// The token and its alternatives as text.
    fn logprob(&self, token: &Sampled) -> TokenLogprob {
        let text = |id: u32| self.tokenizer.decode(&[id]).unwrap_or_default();
        TokenLogprob {
            token: text(token.id),
            logprob: finite(token.logprob.unwrap_or(0.0)),
            top: token
                .top_logprobs
                .iter()
                .map(|&(id, lp)| (text(id), finite(lp)))
                .collect(),
        }
    }

    /// Runs the request to its end, calling `emit` for every update (in order); returns the
    /// token counts. `emit` returning `false` ends the request early (it is cancelled).
    pub async fn run(mut self, mut emit: impl FnMut(Update) -> bool) -> Result<Usage, ApiError> {
        let mut texts: Vec<SampleText> = (0..self.n).map(|_| SampleText::new(&self.stop)).collect();
        let mut done = vec![false; self.n];
        let mut tokens = vec![0usize; self.n];
        let mut times: Vec<Option<(Instant, Instant)>> = vec![None; self.n];
        let mut live = self.n;
        let mut first_token = true;
        while live > 0 {
            let Some(event) = self.submission.next().await else {
                return Err(self.fail("the engine ended the request before all samples finished".into()));
            };
            let update = match event {
                Event::Token { sample, token } => {
                    if sample >= self.n || done[sample] {
                        continue;
                    }
                    let now = Instant::now();
                    if first_token {
                        first_token = false;
                        self.state
                            .metrics()
                            .observe_ttft((now - self.arrived).as_secs_f64());
                    }
                    times[sample] = Some((times[sample].map_or(now, |t| t.0), now));
                    tokens[sample] += 1;
                    if self.stop_tokens.contains(&token.id) {
                        continue;
                    }
                    let text = texts[sample]
                        .push(self.tokenizer.as_ref(), token.id)
                        .map_err(|e| self.fail(e))?;
                    let logprobs = if self.logprobs {
                        vec![self.logprob(&token)]
                    } else {
                        Vec::new()
                    };
                    if texts[sample].stopped() {
                        self.submission.cancel_sample(sample);
                        done[sample] = true;
                        live -= 1;
                        if !(emit(Update::Text {
                            sample,
                            text,
                            logprobs,
                        }) && emit(Update::Finish {
                            sample,
                            reason: "stop",
                        })) {
                            return Ok(self.usage(&tokens));
                        }
                        self.state.metrics().finished("stop");
                        continue;
                    }
                    if text.is_empty() && logprobs.is_empty() {
                        continue;
                    }
                    Update::Text {
                        sample,
                        text,
                        logprobs,
                    }
                }
                Event::Finished { sample, reason } => {
                    if sample >= self.n || done[sample] {
                        continue;
                    }
                    done[sample] = true;
                    live -= 1;
                    let tail = texts[sample]
                        .finish(self.tokenizer.as_ref())
                        .map_err(|e| self.fail(e))?;
                    if !tail.is_empty()
                        && !emit(Update::Text {
                            sample,
                            text: tail,
                            logprobs: Vec::new(),
                        })
                    {
                        return Ok(self.usage(&tokens));
                    }
                    self.state.metrics().finished(reason.as_str());
                    Update::Finish {
                        sample,
                        reason: reason.as_str(),
                    }
                }
                Event::Failed(message) => {
                    let e = self.fail(format!("generation failed: {message}"));
                    // The engine stopped: 503 rather than 500.
                    return Err(match self.state.ready_engine() {
                        Err(_) => ApiError::unavailable(e.message),
                        Ok(_) => e,
                    });
                }
            };
            if !emit(update) {
                return Ok(self.usage(&tokens));
            }
        }
        self.ended = true;
        let metrics = self.state.metrics();
        metrics.observe_e2e(self.arrived.elapsed().as_secs_f64());
        for (t, &count) in times.iter().zip(&tokens) {
            if let (Some((first, last)), true) = (t, count >= 2) {
                metrics.observe_tpot((*last - *first).as_secs_f64() / (count - 1) as f64);
            }
        }
        let usage = self.usage(&tokens);
        metrics.add_completion_tokens(usage.completion_tokens);
        Ok(usage)
    }

    /// Counts the request as failed; the error to answer.
    fn fail(&mut self, message: String) -> ApiError {
        tracing::warn!("request failed: {message}");
        self.state.metrics().failed();
        self.ended = true;
        ApiError::internal(message)
    }

    fn usage(&self, tokens: &[usize]) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: tokens.iter().sum(),
        }
    }

    /// Runs the request to its end and returns every sample's text (non-streaming responses).
    pub async fn collect(self) -> Result<(Vec<SampleResult>, Usage), ApiError> {
        let mut samples = vec![SampleResult::default(); self.n];
        let usage = self
            .run(|update| {
                match update {
                    Update::Text {
                        sample,
                        text,
                        logprobs,
                    } => {
                        samples[sample].text += &text;
                        samples[sample].logprobs.extend(logprobs);
                    }
                    Update::Finish { sample, reason } => samples[sample].finish_reason = reason,
                }
                true
            })
            .await?;
        Ok((samples, usage))
    }
}

/// Log-probabilities as JSON can carry them (vLLM's -9999 for minus infinity).
fn finite(lp: f64) -> f64 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}
