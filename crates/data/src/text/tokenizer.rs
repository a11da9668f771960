//! [`Tokenizer`]: any Hugging Face `tokenizer.json` (through the `tokenizers` crate), with
//! per-call truncation and padding and parallel batch encoding.
//!
//! Truncation and padding are options of each call ([`EncodeOptions`]), not state of the
//! tokenizer: the `truncation` and `padding` settings stored in a `tokenizer.json` are taken out
//! at load (so `encode` gives the plain ids) and offered as [`Tokenizer::file_options`].

use std::path::{Path, PathBuf};

use kiln_tensor::Tensor;
use rayon::prelude::*;
use tokenizers::{
    pad_encodings, truncate_encodings, Encoding, PaddingDirection, PaddingParams, PaddingStrategy,
    PostProcessor, TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::{format_error, invalid, io_error, TextTokenizer};
use crate::Result;

/// Tokens tried, in order, as the end-of-sequence token of a loaded tokenizer.
const EOS_CANDIDATES: [&str; 5] = ["<|endoftext|>", "</s>", "<|im_end|>", "<|eot_id|>", "<eos>"];
/// Tokens tried, in order, as the padding token when neither the options nor the file name one.
const PAD_CANDIDATES: [&str; 4] = ["[PAD]", "<pad>", "<|pad|>", "<|padding|>"];

/// How a batch is padded (on the right, with the pad id; the attention mask is 0 on padding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Padding {
    /// No padding: every sequence keeps its length.
    #[default]
    None,
    /// Pad every sequence to the longest of the batch.
    Longest,
    /// Pad every sequence to this length. A longer sequence stays longer (set
    /// [`EncodeOptions::max_len`] to the same length to cut it).
    Fixed(usize),
}

/// Options of [`Tokenizer::encode_with`] and [`Tokenizer::encode_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Add the tokenizer's special tokens around the sequence (BERT's `[CLS] ... [SEP]`).
    pub add_special_tokens: bool,
    /// Truncate to at most this many tokens, special tokens included (a pair is cut longest
    /// first).
    pub max_len: Option<usize>,
    /// Padding of the batch.
    pub padding: Padding,
    /// The padding id; `None` takes the file's padding id, then the first of `[PAD]`, `<pad>`,
    /// `<|pad|>`, `<|padding|>` in the vocabulary (padding without any is an error).
    pub pad_id: Option<u32>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            add_special_tokens: true,
            max_len: None,
            padding: Padding::None,
            pad_id: None,
        }
    }
}

/// One encoded sequence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    /// The token ids.
    pub ids: Vec<u32>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<u32>,
    /// The segment of each token (0 for the first sequence, 1 for the second of a pair).
    pub type_ids: Vec<u32>,
    /// 1 on special tokens (added by the post-processor, or padding), 0 elsewhere.
    pub special_tokens_mask: Vec<u32>,
}

impl Encoded {
    fn from_hf(e: &Encoding) -> Encoded {
        Encoded {
            ids: e.get_ids().to_vec(),
            attention_mask: e.get_attention_mask().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
            special_tokens_mask: e.get_special_tokens_mask().to_vec(),
        }
    }

    /// The number of tokens (padding included).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there is no token.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The encodings of a batch, in input order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchEncoding {
    /// One encoding per input.
    pub encodings: Vec<Encoded>,
}

impl BatchEncoding {
    fn matrix(&self, what: &'static str, pick: impl Fn(&Encoded) -> &[u32]) -> Result<Tensor> {
        let b = self.encodings.len();
        let l = self.encodings.first().map_or(0, |e| pick(e).len());
        if let Some((i, e)) = self
            .encodings
            .iter()
            .enumerate()
            .find(|(_, e)| pick(e).len() != l)
        {
            return Err(invalid(
                what,
                format!(
                    "sequence {i} has {} tokens but sequence 0 has {l}: pad the batch (Padding::Longest) to stack it",
                    pick(e).len()
                ),
            ));
        }
        let data: Vec<i64> = self
            .encodings
            .iter()
            .flat_map(|e| pick(e).iter().map(|&v| v as i64))
            .collect();
        Ok(Tensor::from_vec(data, [b, l])?)
    }

    /// The ids as an `i64` tensor `[B, L]` (the batch must be rectangular: pad it).
    pub fn ids_tensor(&self) -> Result<Tensor> {
        self.matrix("BatchEncoding::ids_tensor", |e| &e.ids)
    }

    /// The attention mask as an `i64` tensor `[B, L]`.
    pub fn attention_mask_tensor(&self) -> Result<Tensor> {
        self.matrix("BatchEncoding::attention_mask_tensor", |e| &e.attention_mask)
    }

    /// The token type ids as an `i64` tensor `[B, L]`.
    pub fn type_ids_tensor(&self) -> Result<Tensor> {
        self.matrix("BatchEncoding::type_ids_tensor", |e| &e.type_ids)
    }
}

/// A Hugging Face tokenizer (see the [module documentation](self)).
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    file_options: EncodeOptions,
    vocab_size: usize,
    eos: Option<u32>,
}

fn hf_error(op: &'static str, e: tokenizers::Error) -> crate::Error {
    invalid(op, e.to_string())
}

impl Tokenizer {
    /// Load a `tokenizer.json`. A file that cannot be read or does not parse is an error naming
    /// the file and what failed (the JSON error's line and column).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parse the contents of a `tokenizer.json`; `source` names it in errors.
    pub fn from_bytes(bytes: &[u8], source: impl AsRef<Path>) -> Result<Tokenizer> {
        let source = source.as_ref();
        // The JSON syntax is checked first: `tokenizers` 0.23 panics (`expect("Helper")`) instead
        // of returning an error on a syntax error inside the "decoder" object (found by fuzzing).
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| format_error(source, format!("not a valid tokenizer.json: not JSON: {e}")))?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| format_error(source, format!("not a valid tokenizer.json: {e}")))?;
        Ok(Self::from_hf(inner, source))
    }

    /// Wrap a `tokenizers::Tokenizer` (its truncation and padding settings become
    /// [`Tokenizer::file_options`]); `source` names it in errors.
    pub fn from_hf(mut inner: tokenizers::Tokenizer, source: impl AsRef<Path>) -> Tokenizer {
        let file_options = EncodeOptions {
            add_special_tokens: true,
            max_len: inner.get_truncation().map(|t| t.max_length),
            padding: match inner.get_padding().map(|p| p.strategy.clone()) {
                None => Padding::None,
                Some(PaddingStrategy::BatchLongest) => Padding::Longest,
                Some(PaddingStrategy::Fixed(n)) => Padding::Fixed(n),
            },
            pad_id: inner.get_padding().map(|p| p.pad_id),
        };
        // Removing truncation cannot fail (only setting a too-short one can).
        let _ = inner.with_truncation(None);
        inner.with_padding(None);
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        let eos = EOS_CANDIDATES.iter().find_map(|t| inner.token_to_id(t));
        Tokenizer {
            inner,
            source: source.as_ref().to_path_buf(),
            file_options,
            vocab_size,
            eos,
        }
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The file (or name) the tokenizer came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The truncation and padding the `tokenizer.json` itself asked for (not applied by
    /// [`Tokenizer::encode`]; pass them to [`Tokenizer::encode_with`] to use them).
    pub fn file_options(&self) -> &EncodeOptions {
        &self.file_options
    }

    /// Save as a `tokenizer.json` (pretty-printed).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.inner
            .save(path, true)
            .map_err(|e| format_error(path, format!("cannot save the tokenizer: {e}")))
    }

    /// The number of ids: the largest id of the vocabulary (added tokens included) plus one.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of `token` (a vocabulary entry or an added token such as `[MASK]`), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of `id`, if any.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The end-of-sequence id: the first of `<|endoftext|>`, `</s>`, `<|im_end|>`, `<|eot_id|>`,
    /// `<eos>` in the vocabulary, unless set with [`Tokenizer::set_eos_token`].
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Make `token` the end-of-sequence token (an error if it is not in the vocabulary).
    pub fn set_eos_token(&mut self, token: &str) -> Result<()> {
        let id = self.token_to_id(token).ok_or_else(|| {
            invalid(
                "Tokenizer::set_eos_token",
                format!("{token:?} is not in the vocabulary of {}", self.source.display()),
            )
        })?;
        self.eos = Some(id);
        Ok(())
    }

    /// The ids of `text`, with or without the special tokens of the tokenizer's template.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let e = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| hf_error("Tokenizer::encode", e))?;
        Ok(e.get_ids().to_vec())
    }

    /// Encode one text with truncation and padding options.
    pub fn encode_with(&self, text: &str, options: &EncodeOptions) -> Result<Encoded> {
        let mut e = [self.encode_raw(text, None, options)?];
        self.pad(&mut e, options)?;
        Ok(Encoded::from_hf(&e[0]))
    }

    /// Encode a pair of texts (BERT's `[CLS] a [SEP] b [SEP]` with type ids 0 then 1).
    pub fn encode_pair(&self, a: &str, b: &str, options: &EncodeOptions) -> Result<Encoded> {
        let mut e = [self.encode_raw(a, Some(b), options)?];
        self.pad(&mut e, options)?;
        Ok(Encoded::from_hf(&e[0]))
    }

    /// Encode many texts in parallel (rayon), truncating each and padding the batch; the
    /// result is in input order.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        options: &EncodeOptions,
    ) -> Result<BatchEncoding> {
        let mut encodings = texts
            .par_iter()
            .map(|t| self.encode_raw(t.as_ref(), None, options))
            .collect::<Result<Vec<_>>>()?;
        self.pad(&mut encodings, options)?;
        Ok(BatchEncoding {
            encodings: encodings.iter().map(Encoded::from_hf).collect(),
        })
    }

    /// The text of `ids`; with `skip_special_tokens` special tokens are left out. An id outside
    /// the vocabulary is an error naming it and its position.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some((pos, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| self.inner.id_to_token(id).is_none())
        {
            return Err(invalid(
                "Tokenizer::decode",
                format!(
                    "id {id} at position {pos} is not in the vocabulary of {} ({} ids)",
                    self.source.display(),
                    self.vocab_size
                ),
            ));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| hf_error("Tokenizer::decode", e))
    }

    /// Encode without padding: the pieces without special tokens, truncated to leave room for
    /// the special tokens, then post-processed (as `tokenizers` does with truncation set).
    fn encode_raw(&self, a: &str, b: Option<&str>, options: &EncodeOptions) -> Result<Encoding> {
        const OP: &str = "Tokenizer::encode";
        let add = options.add_special_tokens;
        let Some(max_len) = options.max_len else {
            return match b {
                None => self.inner.encode_fast(a, add),
                Some(b) => self.inner.encode_fast((a, b), add),
            }
            .map_err(|e| hf_error(OP, e));
        };
        let added = match (add, self.inner.get_post_processor()) {
            (true, Some(p)) => p.added_tokens(b.is_some()),
            _ => 0,
        };
        if max_len < added {
            return Err(invalid(
                OP,
                format!("max_len {max_len} leaves no room: the tokenizer adds {added} special tokens"),
            ));
        }
        let first = self.inner.encode_fast(a, false).map_err(|e| hf_error(OP, e))?;
        let second = match b {
            None => None,
            Some(b) => {
                let mut e = self.inner.encode_fast(b, false).map_err(|e| hf_error(OP, e))?;
                e.set_type_ids(vec![1; e.len()]);
                Some(e)
            }
        };
        let params = TruncationParams {
            direction: TruncationDirection::Right,
            max_length: max_len - added,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        };
        let (first, second) = truncate_encodings(first, second, &params).map_err(|e| hf_error(OP, e))?;
        self.inner
            .post_process(first, second, add)
            .map_err(|e| hf_error(OP, e))
    }

    /// The padding id for `options`.
    pub fn pad_id(&self, options: &EncodeOptions) -> Result<u32> {
        options
            .pad_id
            .or(self.file_options.pad_id)
            .or_else(|| PAD_CANDIDATES.iter().find_map(|t| self.token_to_id(t)))
            .ok_or_else(|| {
                invalid(
                    "Tokenizer::encode",
                    format!(
                        "padding needs a pad id: {} has none of {PAD_CANDIDATES:?}; set EncodeOptions::pad_id",
                        self.source.display()
                    ),
                )
            })
    }

    fn pad(&self, encodings: &mut [Encoding], options: &EncodeOptions) -> Result<()> {
        let strategy = match options.padding {
            Padding::None => return Ok(()),
            Padding::Longest => PaddingStrategy::BatchLongest,
            Padding::Fixed(n) => PaddingStrategy::Fixed(n),
        };
        let pad_id = self.pad_id(options)?;
        let params = PaddingParams {
            strategy,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: self.id_to_token(pad_id).unwrap_or_default(),
        };
        pad_encodings(encodings, &params).map_err(|e| hf_error("Tokenizer::encode", e))
    }
}

impl TextTokenizer for Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Tokenizer::encode(self, text, false)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Tokenizer::decode(self, ids, false)
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn eos_id(&self) -> Option<u32> {
        self.eos
    }
}
