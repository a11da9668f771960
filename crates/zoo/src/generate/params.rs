//! [`SamplingParams`]: how the next token is chosen, and when generation stops.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How [`generate`](super::generate) picks tokens and when it stops.
///
/// The next token is drawn from `softmax(logits / temperature)` restricted to the `top_k` most
/// likely tokens, then to the smallest set of those whose (renormalised) probability mass reaches
/// `top_p`. `temperature` 0 means greedy decoding (the arg-max, lowest id on ties; no random draw),
/// as in the OpenAI API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// The most tokens to generate (after the prompt). Default 64.
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
    pub stop_tokens: Vec<u32>,
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
        }
    }
}

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
    }
}
