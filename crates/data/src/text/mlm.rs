//! BERT masked-language-model masking and batch collation.
//!
//! Each non-special token is selected independently with probability `mask_prob` (15%), as
//! Hugging Face's `DataCollatorForLanguageModeling` does; special tokens (`[CLS]`, `[SEP]`,
//! `[PAD]`, ... — every id in [`MlmConfig::special_ids`]) are never selected. A selected token
//! becomes `[MASK]` with probability 0.8, a random token with probability 0.1 (drawn uniformly
//! from the vocabulary's non-special ids) and stays itself otherwise. Labels hold the original id
//! at selected positions and [`IGNORE_INDEX`] (-100) elsewhere. All draws come from a seeded
//! [`TensorRng`], so a seed gives the same masks on every machine.

use kiln_tensor::{Tensor, TensorRng};

use super::{invalid, NspExample, Tokenizer, IGNORE_INDEX};
use crate::Result;

/// Masking settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MlmConfig {
    /// The `[MASK]` id.
    pub mask_id: u32,
    /// The vocabulary size (random replacements are drawn below it).
    pub vocab_size: usize,
    /// Ids never selected for masking and never used as random replacements.
    pub special_ids: Vec<u32>,
    /// The probability of selecting a non-special token (0.15).
    pub mask_prob: f64,
    /// The probability that a selected token becomes `[MASK]` (0.8).
    pub mask_token_prob: f64,
    /// The probability that a selected token becomes a random token (0.1); it is kept otherwise.
    pub random_token_prob: f64,
}

/// One masked sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlmExample {
    /// The ids after masking.
    pub input_ids: Vec<u32>,
    /// The original id at selected positions, -100 elsewhere.
    pub labels: Vec<i64>,
}

/// A padded batch for BERT pre-training (all `i64` `[B, L]`, next-sentence labels `[B]`).
#[derive(Clone, Debug)]
pub struct MlmBatch {
    /// Masked ids, padded with the pad id.
    pub input_ids: Tensor,
    /// Segment ids (0 for single sequences and padding).
    pub token_type_ids: Tensor,
    /// 1 on tokens, 0 on padding.
    pub attention_mask: Tensor,
    /// Masked-LM labels: the original id at selected positions, -100 elsewhere and on padding.
    pub labels: Tensor,
    /// Next-sentence labels (0: the second sentence follows the first, 1: random), for pairs.
    pub next_sentence_labels: Option<Tensor>,
}

impl MlmConfig {
    /// BERT's settings (15%; 80% / 10% / 10%) for the given `[MASK]` id, vocabulary size and
    /// special ids.
    pub fn new(mask_id: u32, vocab_size: usize, special_ids: Vec<u32>) -> MlmConfig {
        MlmConfig {
            mask_id,
            vocab_size,
            special_ids,
            mask_prob: 0.15,
            mask_token_prob: 0.8,
            random_token_prob: 0.1,
        }
    }

    /// BERT's settings for a tokenizer with a `[MASK]` token; the special ids are its added
    /// tokens marked special (`[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]` for BERT).
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<MlmConfig> {
        let mask_id = tokenizer.token_to_id("[MASK]").ok_or_else(|| {
            invalid(
                "MlmConfig::from_tokenizer",
                format!("{} has no [MASK] token", tokenizer.source().display()),
            )
        })?;
        let mut special_ids: Vec<u32> = tokenizer
            .inner()
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        special_ids.sort_unstable();
        Ok(MlmConfig::new(mask_id, tokenizer.vocab_size(), special_ids))
    }

    fn validate(&self) -> Result<()> {
        const OP: &str = "MlmConfig";
        let probs = [self.mask_prob, self.mask_token_prob, self.random_token_prob];
        if probs.iter().any(|p| !(0.0..=1.0).contains(p))
            || self.mask_token_prob + self.random_token_prob > 1.0
        {
            return Err(invalid(
                OP,
                format!("probabilities must be in [0, 1] with mask + random <= 1, got {probs:?}"),
            ));
        }
        if self.mask_id as usize >= self.vocab_size {
            return Err(invalid(
                OP,
                format!(
                    "the mask id {} is not below the vocabulary size {}",
                    self.mask_id, self.vocab_size
                ),
            ));
        }
        if self.random_token_prob > 0.0 && self.special_ids.len() >= self.vocab_size {
            return Err(invalid(OP, "every id is special: no random replacement exists"));
        }
        Ok(())
    }

    fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// Mask one sequence, drawing from `rng`.
    pub fn mask(&self, ids: &[u32], rng: &mut TensorRng) -> Result<MlmExample> {
        self.validate()?;
        let mut input_ids = ids.to_vec();
        let mut labels = vec![IGNORE_INDEX; ids.len()];
        for (i, &id) in ids.iter().enumerate() {
            if self.is_special(id) || rng.next_f64() >= self.mask_prob {
                continue;
            }
            labels[i] = id as i64;
            let r = rng.next_f64();
            if r < self.mask_token_prob {
                input_ids[i] = self.mask_id;
            } else if r < self.mask_token_prob + self.random_token_prob {
                input_ids[i] = loop {
                    let t = rng.next_below(self.vocab_size as u64) as u32;
                    if !self.is_special(t) {
                        break t;
                    }
                };
            }
        }
        Ok(MlmExample { input_ids, labels })
    }

    /// Mask and pad a batch of single sequences; the masks are drawn from one generator seeded
    /// with `seed`, sequence after sequence.
    pub fn collate(&self, sequences: &[Vec<u32>], pad_id: u32, seed: u64) -> Result<MlmBatch> {
        let rows: Vec<(&[u32], Option<&[u32]>)> = sequences.iter().map(|s| (s.as_slice(), None)).collect();
        let mut batch = self.collate_rows(&rows, pad_id, seed)?;
        batch.next_sentence_labels = None;
        Ok(batch)
    }

    /// Mask and pad a batch of next-sentence pairs (their token type ids and labels are kept).
    pub fn collate_pairs(&self, pairs: &[NspExample], pad_id: u32, seed: u64) -> Result<MlmBatch> {
        let rows: Vec<(&[u32], Option<&[u32]>)> = pairs
            .iter()
            .map(|p| (p.input_ids.as_slice(), Some(p.token_type_ids.as_slice())))
            .collect();
        let mut batch = self.collate_rows(&rows, pad_id, seed)?;
        let labels: Vec<i64> = pairs.iter().map(NspExample::label).collect();
        batch.next_sentence_labels = Some(Tensor::from_vec(labels, [pairs.len()])?);
        Ok(batch)
    }

    fn collate_rows(&self, rows: &[(&[u32], Option<&[u32]>)], pad_id: u32, seed: u64) -> Result<MlmBatch> {
        let b = rows.len();
        let l = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let mut rng = TensorRng::new(seed);
        let mut ids = vec![pad_id as i64; b * l];
        let mut types = vec![0i64; b * l];
        let mut mask = vec![0i64; b * l];
        let mut labels = vec![IGNORE_INDEX; b * l];
        for (r, (seq, type_ids)) in rows.iter().enumerate() {
            if let Some(t) = type_ids {
                if t.len() != seq.len() {
                    return Err(invalid(
                        "MlmConfig::collate_pairs",
                        format!("example {r} has {} ids but {} token type ids", seq.len(), t.len()),
                    ));
                }
            }
            let ex = self.mask(seq, &mut rng)?;
            let row = r * l;
            for (i, (&id, &label)) in ex.input_ids.iter().zip(&ex.labels).enumerate() {
                ids[row + i] = id as i64;
                labels[row + i] = label;
                mask[row + i] = 1;
                types[row + i] = type_ids.map_or(0, |t| t[i] as i64);
            }
        }
        Ok(MlmBatch {
            input_ids: Tensor::from_vec(ids, [b, l])?,
            token_type_ids: Tensor::from_vec(types, [b, l])?,
            attention_mask: Tensor::from_vec(mask, [b, l])?,
            labels: Tensor::from_vec(labels, [b, l])?,
            next_sentence_labels: None,
        })
    }
}
