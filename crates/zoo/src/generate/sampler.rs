//! The next-token rule: temperature softmax in f64, top-k, top-p, one seeded draw.

use kiln_tensor::TensorRng;

use super::SamplingParams;
use crate::{Error, Result};

/// The candidates for the next token with their probabilities, most likely first (ties: lower
/// id first), renormalised to sum to 1.
///
/// `temperature` 0 gives the single arg-max. Otherwise the probabilities are
/// `softmax(logits / temperature)` computed in f64; `top_k` keeps the `k` most likely; then, of
/// those (renormalised), `top_p` keeps the smallest prefix whose mass is at least `top_p`.
/// Logits may hold `-inf` (a forbidden token) but not NaN or `+inf`, and not only `-inf`.
pub fn next_token_distribution(
    logits: &[f32],
    temperature: f64,
    top_k: Option<usize>,
    top_p: f64,
) -> Result<Vec<(u32, f64)>> {
    if logits.is_empty() {
        return Err(Error::Generation("the model returned no logits".into()));
    }
    if let Some(i) = logits.iter().position(|v| v.is_nan() || *v == f32::INFINITY) {
        return Err(Error::Generation(format!(
            "the model returned logit {} for token {i}; logits must be finite or -inf",
            logits[i]
        )));
    }
    // The arg-max, lowest id on ties.
    let (best, &max) =
        logits.iter().enumerate().fold(
            (0, &logits[0]),
            |acc, (i, v)| if *v > *acc.1 { (i, v) } else { acc },
        );
    if max == f32::NEG_INFINITY {
        return Err(Error::Generation(
            "every logit is -inf: no token can be chosen".into(),
        ));
    }
    if temperature == 0.0 {
        return Ok(vec![(best as u32, 1.0)]);
    }
    let max = max as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, ((v as f64 - max) / temperature).exp()))
        .filter(|&(_, p)| p > 0.0)
        .collect();
    // Stable: equal probabilities keep the lower id first.
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(k) = top_k {
        probs.truncate(k.max(1));
    }
    normalise(&mut probs);
    if top_p < 1.0 {
        let mut mass = 0.0;
        let keep = probs
            .iter()
            .take_while(|&&(_, p)| {
                let before = mass;
                mass += p;
                before < top_p
            })
            .count();
        probs.truncate(keep.max(1));
        normalise(&mut probs);
    }
    Ok(probs)
}

fn normalise(probs: &mut [(u32, f64)]) {
    let total: f64 = probs.iter().map(|p| p.1).sum();
    for p in probs {
        p.1 /= total;
    }
}

/// Picks next tokens by [`SamplingParams`] with its own seeded generator (one draw per sampled
/// token; greedy decoding draws nothing).
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: TensorRng,
}

impl Sampler {
    /// A sampler for `params` (validated), its generator seeded with `params.seed`.
    pub fn new(params: &SamplingParams) -> Result<Sampler> {
        params.validate()?;
        Ok(Sampler {
            rng: TensorRng::new(params.seed),
            params: params.clone(),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token for these logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        let p = &self.params;
        let dist = next_token_distribution(logits, p.temperature, p.top_k, p.top_p)?;
        if let [(only, _)] = dist[..] {
            if p.is_greedy() {
                return Ok(only);
            }
        }
        let u = self.rng.next_f64();
        let mut cum = 0.0;
        for &(id, prob) in &dist {
            cum += prob;
            if u < cum {
                return Ok(id);
            }
        }
        // Rounding left the total a hair below u: the last candidate.
        Ok(dist[dist.len() - 1].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ln(p: &[f64]) -> Vec<f32> {
        p.iter().map(|v| v.ln() as f32).collect()
    }

    fn ids(d: &[(u32, f64)]) -> Vec<u32> {
        d.iter().map(|x| x.0).collect()
    }

    #[test]
    fn greedy_is_the_first_argmax() {
        let d = next_token_distribution(&[0.0, 2.0, -1.0, 2.0], 0.0, None, 1.0).unwrap();
        assert_eq!(d, vec![(1, 1.0)]);
    }

    #[test]
    fn temperature_softmax_in_f64() {
        let logits = [1.0f32, 2.0, 3.0];
        let d = next_token_distribution(&logits, 2.0, None, 1.0).unwrap();
        let e: Vec<f64> = [0.5f64, 1.0, 1.5].iter().map(|v| v.exp()).collect();
        let s: f64 = e.iter().sum();
        assert_eq!(ids(&d), [2, 1, 0]);
        for (got, want) in d.iter().zip([e[2] / s, e[1] / s, e[0] / s]) {
            assert!((got.1 - want).abs() < 1e-12, "{got:?} vs {want}");
        }
    }

    #[test]
    fn top_k_then_top_p_keep_the_smallest_set_reaching_p() {
        let logits = ln(&[0.1, 0.4, 0.2, 0.3]);
        let d = next_token_distribution(&logits, 1.0, Some(3), 1.0).unwrap();
        assert_eq!(ids(&d), [1, 3, 2]);
        assert!((d[0].1 - 4.0 / 9.0).abs() < 1e-6);
        // Mass 0.4 < 0.6 <= 0.7: tokens 1 and 3.
        let d = next_token_distribution(&logits, 1.0, None, 0.6).unwrap();
        assert_eq!(ids(&d), [1, 3]);
        assert!((d[0].1 - 4.0 / 7.0).abs() < 1e-6 && (d[1].1 - 3.0 / 7.0).abs() < 1e-6);
        // top-p applies to the top-k renormalised mass: of {0.4, 0.3, 0.2}/0.9, 0.4/0.9 < 0.5.
        let d = next_token_distribution(&logits, 1.0, Some(3), 0.5).unwrap();
        assert_eq!(ids(&d), [1, 3]);
        // A tiny p keeps the most likely token only.
        let d = next_token_distribution(&logits, 1.0, None, 1e-9).unwrap();
        assert_eq!(d, vec![(1, 1.0)]);
    }

    #[test]
    fn bad_logits_are_errors() {
        for bad in [
            vec![],
            vec![0.0, f32::NAN],
            vec![f32::INFINITY, 0.0],
            vec![f32::NEG_INFINITY; 3],
        ] {
            assert!(next_token_distribution(&bad, 1.0, None, 1.0).is_err(), "{bad:?}");
        }
        // -inf marks a forbidden token.
        let d = next_token_distribution(&[f32::NEG_INFINITY, 0.0, 0.0], 1.0, None, 1.0).unwrap();
        assert_eq!(ids(&d), [1, 2]);
    }

    #[test]
    fn sampling_frequencies_follow_the_filtered_distribution() {
        let logits = ln(&[0.1, 0.4, 0.2, 0.3]);
        let n = 40_000;
        let params = SamplingParams {
            top_p: 0.6,
            seed: 7,
            ..Default::default()
        };
        let mut s = Sampler::new(&params).unwrap();
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[s.sample(&logits).unwrap() as usize] += 1;
        }
        // Only {1, 3} survive top-p 0.6, with probabilities 4/7 and 3/7 (sd of a frequency ≈ 0.0025).
        assert_eq!((counts[0], counts[2]), (0, 0), "{counts:?}");
        let f1 = counts[1] as f64 / n as f64;
        assert!((f1 - 4.0 / 7.0).abs() < 0.01, "{f1}");
        // Without filtering every token shows up in proportion.
        let mut s = Sampler::new(&SamplingParams {
            seed: 3,
            ..Default::default()
        })
        .unwrap();
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[s.sample(&logits).unwrap() as usize] += 1;
        }
        for (c, want) in counts.iter().zip([0.1, 0.4, 0.2, 0.3]) {
            assert!((*c as f64 / n as f64 - want).abs() < 0.01, "{counts:?}");
        }
    }
}
