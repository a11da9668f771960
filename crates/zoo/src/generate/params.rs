//! [`SamplingParams`]: how the next token is chosen, and when generation stops.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How [`generate`](super::generate) picks tokens and when it stops.
///
/// The next token is drawn from `softmax(logits / temperature)` restricted to the `top_k` most
/// likely tokens, then to the smallest set of those whose (renormalised) probability mass reaches
/// `top_p`, then to the tokens at least `min_p` times as likely as the most likely one.
/// `temperature` 0 means greedy decoding (the arg-max, lowest id on ties; no random draw), as in
/// the OpenAI API. Before that, penalties reshape the logits: `repetition_penalty` (the CTRL /
/// Hugging Face rule: a positive logit of a token already in the prompt or output is divided by
/// it, a negative one multiplied) and the OpenAI `presence_penalty` / `frequency_penalty`
/// (subtracted once per generated token kind / per occurrence). Field names follow the OpenAI API
/// where it has one (`max_tokens` is accepted for `max_new_tokens`), vLLM's otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// The most tokens to generate (after the prompt). Default 64.
    #[serde(alias = "max_tokens")]
    pub max_new_tokens: usize,
    /// Softmax temperature, `>= 0` and finite; 0 = greedy. Default 1.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (`k >= 1`); `None` keeps all. Default `None`.
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose mass is at least
    /// `top_p`, in `(0, 1]`; 1 keeps all. Default 1.
    pub top_p: f64,
    /// Seed of the sampling generator (ChaCha8): the same seed, model and prompt give the same
    /// tokens. Default 0.
    pub seed: u64,
    /// Generation ends right after one of these tokens is emitted (the stop token itself is
    /// yielded). Default none.
    #[serde(alias = "stop_token_ids")]
    pub stop_tokens: Vec<u32>,
    /// Keep only tokens whose probability is at least `min_p` times the largest, in `[0, 1]`;
    /// 0 keeps all. Default 0.
    pub min_p: f64,
    /// Divide positive logits (multiply negative ones) of tokens already in the prompt or the
    /// output by this, `> 0`; 1 is off, above 1 discourages repetition. Default 1.
    pub repetition_penalty: f64,
    /// Subtracted from the logit of every token generated at least once, in `[-2, 2]`. Default 0.
    pub presence_penalty: f64,
    /// Subtracted from the logit of a token once per time it was generated, in `[-2, 2]`.
    /// Default 0.
    pub frequency_penalty: f64,
    /// Text that ends generation when the output contains it (matched across token boundaries;
    /// the stop string and what follows are not returned). Needs a tokenizer. Default none.
    pub stop: Vec<String>,
    /// Also return the log-probability of each chosen token and of the `logprobs` most likely
    /// alternatives (from the model's logits, before penalties and temperature, as vLLM), at most
    /// 20. Default none.
    pub logprobs: Option<usize>,
    /// Independent samples from the prompt (sample `i` draws from seed `seed + i`), at least 1.
    /// Default 1.
    pub n: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 64,
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            seed: 0,
            stop_tokens: Vec::new(),
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: Vec::new(),
            logprobs: None,
            n: 1,
        }
    }
}

/// The most alternatives `logprobs` may ask for (as the OpenAI API).
pub const MAX_LOGPROBS: usize = 20;

impl SamplingParams {
    /// Greedy decoding of up to `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> SamplingParams {
        SamplingParams {
            max_new_tokens,
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Whether decoding is greedy (`temperature == 0`).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Check every field; the error names the field, its value and the allowed range.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::Generation(reason));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "temperature must be a finite number >= 0 (0 = greedy), got {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return bad("top_k must be >= 1 (leave it unset to keep every token), got 0".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty must be a finite number > 0 (1 = off), got {}",
                self.repetition_penalty
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} must be in [-2, 2], got {v}"));
            }
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return bad("a stop string is empty; every stop string needs at least one character".into());
        }
        if let Some(k) = self.logprobs {
            if k > MAX_LOGPROBS {
                return bad(format!("logprobs must be at most {MAX_LOGPROBS}, got {k}"));
            }
        }
        if self.n == 0 {
            return bad("n (the number of samples) must be at least 1, got 0".into());
        }
        Ok(())
    }

    /// Check the parameters against a vocabulary: every stop token must be a valid id.
    pub fn validate_for_vocab(&self, vocab_size: usize) -> Result<()> {
        self.validate()?;
        if let Some(&t) = self.stop_tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(Error::Generation(format!(
                "stop token {t} is not below the vocabulary size {vocab_size}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(p: SamplingParams) -> String {
        p.validate().unwrap_err().to_string()
    }

    #[test]
    fn bad_values_are_errors_naming_the_field() {
        let base = SamplingParams::default();
        assert!(base.validate().is_ok());
        assert!(SamplingParams::greedy(3).validate().is_ok());
        for t in [-0.5, f64::NAN, f64::INFINITY] {
            let e = err(SamplingParams {
                temperature: t,
                ..base.clone()
            });
            assert!(e.contains("temperature"), "{e}");
        }
        let e = err(SamplingParams {
            top_k: Some(0),
            ..base.clone()
        });
        assert!(e.contains("top_k"), "{e}");
        for p in [0.0, -0.1, 1.5, f64::NAN] {
            let e = err(SamplingParams {
                top_p: p,
                ..base.clone()
            });
            assert!(e.contains("top_p") && e.contains("(0, 1]"), "{e}");
        }
        let e = SamplingParams {
            stop_tokens: vec![1, 9],
            ..base
        }
        .validate_for_vocab(5)
        .unwrap_err()
        .to_string();
        assert!(e.contains("stop token 9") && e.contains('5'), "{e}");
        let base = SamplingParams::default();
        for (p, field) in [
            (
                SamplingParams {
                    min_p: 1.5,
                    ..base.clone()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    min_p: -0.1,
                    ..base.clone()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: -1.0,
                    ..base.clone()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..base.clone()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: 2.5,
                    ..base.clone()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: -3.0,
                    ..base.clone()
                },
                "frequency_penalty",
            ),
            (
                SamplingParams {
                    stop: vec!["ok".into(), String::new()],
                    ..base.clone()
                },
                "stop string",
            ),
            (
                SamplingParams {
                    logprobs: Some(21),
                    ..base.clone()
                },
                "logprobs",
            ),
            (SamplingParams { n: 0, ..base.clone() }, "n (the number"),
        ] {
            let e = err(p);
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn json_uses_defaults_and_rejects_unknown_fields() {
        let p: SamplingParams = serde_json::from_str(r#"{"temperature": 0, "top_k": 5}"#).unwrap();
        assert_eq!(
            p,
            SamplingParams {
                temperature: 0.0,
                top_k: Some(5),
                ..Default::default()
            }
        );
        assert!(serde_json::from_str::<SamplingParams>(r#"{"top_q": 1}"#).is_err());
        // OpenAI's names.
        let p: SamplingParams =
            serde_json::from_str(r#"{"max_tokens": 7, "stop": ["\n\n"], "presence_penalty": 0.5, "n": 2}"#)
                .unwrap();
        assert_eq!(
            (p.max_new_tokens, p.stop.len(), p.presence_penalty, p.n),
            (7, 1, 0.5, 2)
        );
    }
}
