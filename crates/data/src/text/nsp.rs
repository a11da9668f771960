//! BERT next-sentence pairs.
//!
//! [`nsp_pairs`] walks every document's consecutive sentences `(a, next)`: with probability 0.5
//! the pair is `(a, next)` (label 0, "is next"), otherwise `(a, r)` with `r` a uniformly drawn
//! sentence of a uniformly drawn *other* document (label 1). Each pair is laid out as
//! `[CLS] a [SEP] b [SEP]` with token type ids 0 on `[CLS] a [SEP]` and 1 on `b [SEP]`, the
//! labels of Hugging Face's `BertForPreTraining`.

use kiln_tensor::TensorRng;

use super::invalid;
use crate::Result;

/// One next-sentence pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NspExample {
    /// `[CLS] a [SEP] b [SEP]`.
    pub input_ids: Vec<u32>,
    /// 0 on `[CLS] a [SEP]`, 1 on `b [SEP]`.
    pub token_type_ids: Vec<u32>,
    /// Whether `b` is the sentence that follows `a`.
    pub is_next: bool,
}

impl NspExample {
    /// The classification label: 0 when `b` follows `a`, 1 when it is random.
    pub fn label(&self) -> i64 {
        if self.is_next {
            0
        } else {
            1
        }
    }
}

/// Truncate the longer of `a` and `b` (from the end) until they fit `budget` tokens together.
fn truncate_pair(a: &mut Vec<u32>, b: &mut Vec<u32>, budget: usize) {
    while a.len() + b.len() > budget {
        if a.len() >= b.len() {
            a.pop();
        } else {
            b.pop();
        }
    }
}

/// Next-sentence pairs from `documents` (each a list of tokenized sentences, without special
/// tokens), with the `[CLS]` and `[SEP]` ids, cut to at most `max_len` tokens (longer sentence
/// first) and drawn from a generator seeded with `seed`. Needs at least two documents with a
/// sentence.
pub fn nsp_pairs(
    documents: &[Vec<Vec<u32>>],
    cls_id: u32,
    sep_id: u32,
    max_len: Option<usize>,
    seed: u64,
) -> Result<Vec<NspExample>> {
    const OP: &str = "nsp_pairs";
    let non_empty: Vec<usize> = (0..documents.len())
        .filter(|&d| !documents[d].is_empty())
        .collect();
    if non_empty.len() < 2 {
        return Err(invalid(
            OP,
            format!(
                "random second sentences come from another document: need at least 2 documents with sentences, got {}",
                non_empty.len()
            ),
        ));
    }
    if max_len.is_some_and(|m| m < 3) {
        return Err(invalid(
            OP,
            "max_len must leave room for [CLS] and two [SEP] (at least 3)",
        ));
    }
    let mut rng = TensorRng::new(seed);
    let mut out = Vec::new();
    for (d, doc) in documents.iter().enumerate() {
        for j in 0..doc.len().saturating_sub(1) {
            let mut a = doc[j].clone();
            let is_next = rng.next_f64() < 0.5;
            let mut b = if is_next {
                doc[j + 1].clone()
            } else {
                // A uniformly drawn other non-empty document (d itself is skipped).
                let others = non_empty.len() - usize::from(non_empty.contains(&d));
                let mut k = rng.next_below(others as u64) as usize;
                let other = *non_empty
                    .iter()
                    .filter(|&&o| o != d)
                    .nth(k)
                    .unwrap_or(&non_empty[0]);
                let sentences = &documents[other];
                k = rng.next_below(sentences.len() as u64) as usize;
                sentences[k].clone()
            };
            if let Some(m) = max_len {
                truncate_pair(&mut a, &mut b, m - 3);
            }
            let mut input_ids = Vec::with_capacity(a.len() + b.len() + 3);
            input_ids.push(cls_id);
            input_ids.extend_from_slice(&a);
            input_ids.push(sep_id);
            let first = input_ids.len();
            input_ids.extend_from_slice(&b);
            input_ids.push(sep_id);
            let mut token_type_ids = vec![0; first];
            token_type_ids.resize(input_ids.len(), 1);
            out.push(NspExample {
                input_ids,
                token_type_ids,
                is_next,
            });
        }
    }
    Ok(out)
}
