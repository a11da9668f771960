//! The next-token rule: penalties, temperature softmax in f64, top-k, top-p, min-p, one seeded
//! draw; and the log-probabilities reported with each token.

use std::collections::{HashMap, HashSet};

use kiln_tensor::fast_math::softmax_weights_f64;
use kiln_tensor::TensorRng;

use super::SamplingParams;
use crate::{Error, Result};

/// The candidates for the next token with their probabilities, most likely first (ties: lower
/// id first), renormalised to sum to 1.
///
/// `temperature` 0 gives the single arg-max. Otherwise the probabilities are
/// `softmax(logits / temperature)` computed in f64; `top_k` keeps the `k` most likely; then, of
/// those (renormalised), `top_p` keeps the smallest prefix whose mass is at least `top_p`; then
/// `min_p` keeps the tokens at least `min_p` times as likely as the first.
/// Logits may hold `-inf` (a forbidden token) but not NaN or `+inf`, and not only `-inf`.
pub fn next_token_distribution(
    logits: &[f32],
    temperature: f64,
    top_k: Option<usize>,
    top_p: f64,
    min_p: f64,
) -> Result<Vec<(u32, f64)>> {
    let (best, max) = check_logits(logits)?;
    if temperature == 0.0 {
        return Ok(vec![(best as u32, 1.0)]);
    }
    let mut weights = vec![0f64; logits.len()];
    softmax_weights_f64(logits, max as f64, temperature, &mut weights);
    let mut probs: Vec<(u32, f64)> = weights
        .into_iter()
        .enumerate()
        .map(|(i, p)| (i as u32, p))
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
    if min_p > 0.0 {
        let floor = probs[0].1 * min_p;
        let keep = probs.iter().take_while(|&&(_, p)| p >= floor).count();
        probs.truncate(keep.max(1));
        normalise(&mut probs);
    }
    Ok(probs)
}

/// Checks logits (non-empty, no NaN or `+inf`, not all `-inf`); returns the arg-max (lowest id
/// on ties) and the largest logit.
fn check_logits(logits: &[f32]) -> Result<(usize, f32)> {
    if logits.is_empty() {
        return Err(Error::Generation("the model returned no logits".into()));
    }
    // One branch-free pass over 16 lanes (flags and maxima), then the first index of the
    // maximum: the scalar scans with an early exit cost a millisecond per batched step.
    let (mut bad, mut lanes) = (false, [f32::NEG_INFINITY; 16]);
    let chunks = logits.chunks_exact(16);
    for &v in chunks.remainder() {
        bad |= v.is_nan() | (v == f32::INFINITY);
        lanes[0] = if v > lanes[0] { v } else { lanes[0] };
    }
    for c in chunks {
        for l in 0..16 {
            bad |= c[l].is_nan() | (c[l] == f32::INFINITY);
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    if bad {
        let i = logits
            .iter()
            .position(|v| v.is_nan() || *v == f32::INFINITY)
            .unwrap_or(0);
        return Err(Error::Generation(format!(
            "the model returned logit {} for token {i}; logits must be finite or -inf",
            logits[i]
        )));
    }
    let max = lanes
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let best = logits.iter().position(|&v| v == max).unwrap_or(0);
    if max == f32::NEG_INFINITY {
        return Err(Error::Generation(
            "every logit is -inf: no token can be chosen".into(),
        ));
    }
    Ok((best, max))
}

/// Weight tiers of [`draw_untruncated`]: a tier holds the tokens at most this many times less
/// likely than those of the tier before (the first, those within it of the most likely token).
const TIER_RATIO: f64 = 1.0 / 1024.0;

thread_local! {
    /// Each sampling thread's buffer of softmax weights (a vocabulary of f64 per draw would be a
    /// fresh, page-faulting allocation every token).
    static WEIGHTS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The token whose cumulative probability first passes `u`, walking tokens from the most likely
/// (lowest id on ties) — the draw of [`next_token_distribution`] without truncation — but
/// ordering only the tokens the walk reaches: tokens are taken in tiers of weight (within
/// [`TIER_RATIO`] of the most likely, then the next factor, ...), each tier sorted and walked
/// after the one before, and a draw almost always ends in the first tier (a few hundred
/// tokens of a 50k vocabulary).
fn draw_untruncated(logits: &[f32], temperature: f64, u: f64) -> Result<u32> {
    let (_, max) = check_logits(logits)?;
    WEIGHTS.with(|cell| {
        let mut weights = cell.borrow_mut();
        weights.resize(logits.len(), 0.0);
        let total = softmax_weights_f64(logits, max as f64, temperature, &mut weights);
        let target = u * total;
        let order = |a: &u32, b: &u32| {
            weights[*b as usize]
                .total_cmp(&weights[*a as usize])
                .then(a.cmp(b))
        };
        // The most likely token weighs 1: tier k (from 1) holds the weights in
        // [RATIO^k, RATIO^(k - 1));
        // after a few tiers the last takes every token left with a positive weight.
        let (mut cum, mut last, mut above) = (0.0, 0u32, f64::INFINITY);
        let mut tier: Vec<u32> = Vec::new();
        for k in 1..=4 {
            let floor = if k < 4 { TIER_RATIO.powi(k) } else { 0.0 };
            tier.clear();
            tier.extend((0..logits.len() as u32).filter(|&i| {
                let w = weights[i as usize];
                (w < above) & (w >= floor) & (w > 0.0)
            }));
            tier.sort_unstable_by(order);
            for &id in &tier {
                cum += weights[id as usize];
                last = id;
                if target < cum {
                    return Ok(id);
                }
            }
            above = floor;
        }
        // Rounding left the total a hair below the target: the last candidate.
        Ok(last)
    })
}

/// The tokens a sequence has seen, for the penalties: every prompt and output token, and how
/// often each was generated.
#[derive(Clone, Debug, Default)]
pub struct TokenHistory {
    seen: HashSet<u32>,
    generated: HashMap<u32, u32>,
}

impl TokenHistory {
    /// A history that has seen the prompt.
    pub fn new(prompt: &[u32]) -> TokenHistory {
        TokenHistory {
            seen: prompt.iter().copied().collect(),
            generated: HashMap::new(),
        }
    }

    /// Record a generated token.
    pub fn push(&mut self, id: u32) {
        self.seen.insert(id);
        *self.generated.entry(id).or_insert(0) += 1;
    }
}

/// Apply `repetition_penalty`, `presence_penalty` and `frequency_penalty` to `logits` in place
/// (see [`SamplingParams`]); tokens the history has not seen are untouched.
pub fn apply_penalties(logits: &mut [f32], params: &SamplingParams, history: &TokenHistory) {
    let rep = params.repetition_penalty;
    if rep != 1.0 {
        for &id in &history.seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 {
                    (*l as f64 / rep) as f32
                } else {
                    (*l as f64 * rep) as f32
                };
            }
        }
    }
    let (presence, frequency) = (params.presence_penalty, params.frequency_penalty);
    if presence != 0.0 || frequency != 0.0 {
        for (&id, &count) in &history.generated {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = (*l as f64 - presence - frequency * count as f64) as f32;
            }
        }
    }
}

/// The log-softmax of `logits` (f64) at `id`, and the `k` most likely tokens with theirs (ties:
/// lower id first).
pub fn logprobs(logits: &[f32], id: u32, k: usize) -> (f64, Vec<(u32, f64)>) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let log_z = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    let lp = |i: u32| logits[i as usize] as f64 - log_z;
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(order.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| {
            logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b))
        });
        order.truncate(k);
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    } else {
        order.clear();
    }
    (lp(id), order.into_iter().map(|i| (i, lp(i))).collect())
}

/// One chosen token, with its log-probability and the most likely alternatives when
/// [`SamplingParams::logprobs`] asks for them.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    /// The token.
    pub id: u32,
    /// Its log-probability under the model (before penalties and temperature).
    pub logprob: Option<f64>,
    /// The `logprobs` most likely tokens and their log-probabilities, most likely first.
    pub top_logprobs: Vec<(u32, f64)>,
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

    /// The next token for these logits, with the penalties of `history` and the log-probabilities
    /// the parameters ask for.
    pub fn sample_with(&mut self, logits: &[f32], history: &TokenHistory) -> Result<Sampled> {
        let p = &self.params;
        let penalised =
            p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        let id = if penalised {
            let mut l = logits.to_vec();
            apply_penalties(&mut l, p, history);
            self.sample(&l)?
        } else {
            self.sample(logits)?
        };
        let (logprob, top_logprobs) = match self.params.logprobs {
            Some(k) => {
                let (lp, top) = logprobs(logits, id, k);
                (Some(lp), top)
            }
            None => (None, Vec::new()),
        };
        Ok(Sampled {
            id,
            logprob,
            top_logprobs,
        })
    }

    /// The next token for these logits (no penalties).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        let p = &self.params;
        if p.temperature > 0.0 && p.top_k.is_none() && p.top_p >= 1.0 && p.min_p == 0.0 {
            let (temperature, u) = (p.temperature, self.rng.next_f64());
            return draw_untruncated(logits, temperature, u);
        }
        let dist = next_token_distribution(logits, p.temperature, p.top_k, p.top_p, p.min_p)?;
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
        let d = next_token_distribution(&[0.0, 2.0, -1.0, 2.0], 0.0, None, 1.0, 0.0).unwrap();
        assert_eq!(d, vec![(1, 1.0)]);
    }

    #[test]
    fn temperature_softmax_in_f64() {
        let logits = [1.0f32, 2.0, 3.0];
        let d = next_token_distribution(&logits, 2.0, None, 1.0, 0.0).unwrap();
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
        let d = next_token_distribution(&logits, 1.0, Some(3), 1.0, 0.0).unwrap();
        assert_eq!(ids(&d), [1, 3, 2]);
        assert!((d[0].1 - 4.0 / 9.0).abs() < 1e-6);
        // Mass 0.4 < 0.6 <= 0.7: tokens 1 and 3.
        let d = next_token_distribution(&logits, 1.0, None, 0.6, 0.0).unwrap();
        assert_eq!(ids(&d), [1, 3]);
        assert!((d[0].1 - 4.0 / 7.0).abs() < 1e-6 && (d[1].1 - 3.0 / 7.0).abs() < 1e-6);
        // top-p applies to the top-k renormalised mass: of {0.4, 0.3, 0.2}/0.9, 0.4/0.9 < 0.5.
        let d = next_token_distribution(&logits, 1.0, Some(3), 0.5, 0.0).unwrap();
        assert_eq!(ids(&d), [1, 3]);
        // A tiny p keeps the most likely token only.
        let d = next_token_distribution(&logits, 1.0, None, 1e-9, 0.0).unwrap();
        assert_eq!(d, vec![(1, 1.0)]);
    }

    #[test]
    fn min_p_keeps_tokens_near_the_most_likely() {
        let logits = ln(&[0.1, 0.4, 0.2, 0.3]);
        // Floor 0.45 * 0.4 = 0.18: tokens 1, 3 and 2 (0.2) stay, 0 (0.1) goes.
        let d = next_token_distribution(&logits, 1.0, None, 1.0, 0.45).unwrap();
        assert_eq!(ids(&d), [1, 3, 2]);
        assert!((d[0].1 - 4.0 / 9.0).abs() < 1e-6);
        let d = next_token_distribution(&logits, 1.0, None, 1.0, 1.0).unwrap();
        assert_eq!(ids(&d), [1]);
    }

    #[test]
    fn penalties_follow_hugging_face_and_openai() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..Default::default()
        };
        let mut h = TokenHistory::new(&[0, 1]);
        h.push(2);
        h.push(2);
        let mut l = vec![4.0f32, -4.0, 1.0, 3.0];
        apply_penalties(&mut l, &params, &h);
        // 0 and 1 are in the prompt: repetition only; 2 was generated twice: 1/2 - 0.5 - 2 * 0.25.
        assert_eq!(l, vec![2.0, -8.0, -0.5, 3.0]);
    }

    #[test]
    fn logprobs_are_the_log_softmax_with_the_top_alternatives() {
        let logits = ln(&[0.1, 0.4, 0.2, 0.3]);
        let (lp, top) = logprobs(&logits, 2, 2);
        assert!((lp - 0.2f64.ln()).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3]);
        assert!((top[0].1 - 0.4f64.ln()).abs() < 1e-6);
        let mut s = Sampler::new(&SamplingParams {
            logprobs: Some(3),
            ..SamplingParams::greedy(1)
        })
        .unwrap();
        let got = s.sample_with(&logits, &TokenHistory::default()).unwrap();
        assert_eq!((got.id, got.top_logprobs.len()), (1, 3));
        assert!((got.logprob.unwrap() - 0.4f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn the_tiered_draw_picks_what_the_sorted_walk_picks() {
        // 3000 tokens (weights spanning every tier at temperature 0.3), ties included, a few forbidden.
        let logits: Vec<f32> = (0..3000)
            .map(|i| {
                if i % 97 == 0 {
                    f32::NEG_INFINITY
                } else {
                    ((i * 7919 % 1000) as f32 / 150.0).sin() * 4.0
                }
            })
            .collect();
        for temperature in [0.3, 1.0, 2.5] {
            let dist = next_token_distribution(&logits, temperature, None, 1.0, 0.0).unwrap();
            for j in 0..400 {
                let u = (j as f64 + 0.5) / 400.0;
                let mut cum = 0.0;
                let want = dist.iter().find(|&&(_, p)| {
                    cum += p;
                    u < cum
                });
                let want = want.map_or(dist[dist.len() - 1].0, |w| w.0);
                assert_eq!(
                    draw_untruncated(&logits, temperature, u).unwrap(),
                    want,
                    "u = {u}"
                );
            }
        }
    }

    #[test]
    fn bad_logits_are_errors() {
        for bad in [
            vec![],
            vec![0.0, f32::NAN],
            vec![f32::INFINITY, 0.0],
            vec![f32::NEG_INFINITY; 3],
        ] {
            assert!(
                next_token_distribution(&bad, 1.0, None, 1.0, 0.0).is_err(),
                "{bad:?}"
            );
        }
        // -inf marks a forbidden token.
        let d = next_token_distribution(&[f32::NEG_INFINITY, 0.0, 0.0], 1.0, None, 1.0, 0.0).unwrap();
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
