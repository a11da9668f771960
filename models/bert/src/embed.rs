//! Sentence embeddings of texts: WordPiece with `[CLS]`/`[SEP]`, truncation to the position
//! limit, length-sorted padded batches, mean pooling and L2 normalisation.

use kiln_data::text::{EncodeOptions, Tokenizer};
use kiln_zoo::Result;

use crate::model::{BertInput, BertModel};

/// How [`BertModel::embed`] treats its texts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedOptions {
    /// Texts per forward pass (they are sorted by length first, so padding stays short).
    pub batch_size: usize,
    /// The most tokens of a text, `[CLS]` and `[SEP]` included; `None` is the model's position
    /// limit (never more than it).
    pub max_len: Option<usize>,
    /// Cut longer texts (reported in [`Embedded::truncated`]); `false` makes them an error.
    pub truncate: bool,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions {
            batch_size: 32,
            max_len: None,
            truncate: true,
        }
    }
}

/// A text that [`BertModel::embed`] cut to the length limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncated {
    /// Its index among the texts.
    pub index: usize,
    /// Its tokens before cutting (special tokens included).
    pub tokens: usize,
    /// The limit it was cut to.
    pub limit: usize,
}

/// The result of [`BertModel::embed`].
#[derive(Clone, Debug, PartialEq)]
pub struct Embedded {
    /// One unit-length vector of `hidden_size` per text, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// The texts that were cut (warn the user about them).
    pub truncated: Vec<Truncated>,
}

impl BertModel {
    /// The token ids of each text (`[CLS] ... [SEP]`), cut to `limit` tokens when `truncate`
    /// (else a longer text is an error naming it), and the texts that were cut.
    pub fn tokenize<S: AsRef<str> + Sync>(
        &self,
        tokenizer: &Tokenizer,
        texts: &[S],
        options: &EmbedOptions,
    ) -> Result<(Vec<Vec<u32>>, Vec<Truncated>)> {
        let data_err = |e: kiln_data::Error| self.input_err(e.to_string());
        let limit = options
            .max_len
            .unwrap_or(usize::MAX)
            .min(self.cfg.max_position_embeddings);
        let plain = EncodeOptions::default();
        let mut ids: Vec<Vec<u32>> = tokenizer
            .encode_batch(texts, &plain)
            .map_err(data_err)?
            .encodings
            .into_iter()
            .map(|e| e.ids)
            .collect();
        let mut truncated = Vec::new();
        for (index, seq) in ids.iter_mut().enumerate() {
            if seq.len() <= limit {
                continue;
            }
            if !options.truncate {
                return Err(self.input_err(format!(
                    "text {index} has {} tokens, more than the limit of {limit} (allow truncation to cut it)",
                    seq.len()
                )));
            }
            truncated.push(Truncated {
                index,
                tokens: seq.len(),
                limit,
            });
            let cut = EncodeOptions {
                max_len: Some(limit),
                ..EncodeOptions::default()
            };
            *seq = tokenizer
                .encode_with(texts[index].as_ref(), &cut)
                .map_err(data_err)?
                .ids;
        }
        Ok((ids, truncated))
    }

    /// Sentence embeddings of `texts`: tokenized with `[CLS]`/`[SEP]` (cut as [`EmbedOptions`]
    /// says), sorted by length into padded batches of `batch_size`, mean-pooled over real tokens
    /// and L2-normalised. An empty list is an error; each text's vector does not depend on the
    /// others in its batch beyond rounding.
    pub fn embed<S: AsRef<str> + Sync>(
        &self,
        tokenizer: &Tokenizer,
        texts: &[S],
        options: &EmbedOptions,
    ) -> Result<Embedded> {
        if texts.is_empty() {
            return Err(self.input_err("no texts to embed".into()));
        }
        let (ids, truncated) = self.tokenize(tokenizer, texts, options)?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut embeddings = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(options.batch_size.max(1)) {
            let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let input = BertInput::padded(&seqs, self.cfg.pad_token_id);
            for (&i, e) in chunk.iter().zip(self.sentence_embeddings(&input)?) {
                embeddings[i] = e;
            }
        }
        Ok(Embedded {
            embeddings,
            truncated,
        })
    }
}
