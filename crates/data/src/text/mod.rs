//! Text: tokenizers, language-model token shards, BERT pre-training collation, instruction tuning
//! and chat templates.
//!
//! - [`Tokenizer`] wraps the Hugging Face `tokenizers` crate: it loads any `tokenizer.json`
//!   (GPT-2 byte-level BPE, BERT WordPiece, SmolLM2, ...), encodes batches in parallel with
//!   truncation and padding, and [`train_bpe`] / [`train_wordpiece`] train new ones on a corpus.
//! - [`CharTokenizer`] is a character-level tokenizer (the vocabulary is the sorted distinct
//!   characters of a corpus). Both implement the object-safe [`TextTokenizer`] trait, and
//!   [`load_tokenizer`] opens either kind from its file.
//! - [`shard`]: token shards on disk (a 32-byte header, then `u16` or `u32` little-endian
//!   tokens), written by [`ShardWriter`] and memory-mapped by [`TokenShard`].
//! - [`lm`]: language-modelling datasets over a [`TokenStream`] (sequential blocks or seeded
//!   random windows, inputs and next-token targets) and the train/validation split.
//! - [`mlm`] / [`nsp`]: BERT masked-LM masking (15% of non-special tokens: 80% `[MASK]`, 10%
//!   random, 10% kept) and next-sentence pairs.
//! - [`books`]: Shakespeare's works and Jane Austen's novels cleaned into sentences with a fixed
//!   held-out split by work, and the BERT datasets built on them (next-sentence pairs with static
//!   MLM masking; balanced author-classification passages).
//! - [`instruct`]: the JSONL instruction dataset, the `### Instruction:` template and labels
//!   masked on the prompt; [`chat`]: Jinja chat templates (`minijinja`).

pub mod books;
pub mod char_tokenizer;
pub mod chat;
pub mod corpus;
pub mod instruct;
pub mod lm;
pub mod mlm;
pub mod nsp;
pub mod shard;
pub mod tokenizer;
pub mod train;

use std::path::Path;

pub use books::{
    authors_dataset, is_held_out, load_works, mlm_nsp_dataset, split_sentences, tokenize_works, Author,
    AuthorsData, MlmNspData, SpecialIds, Work,
};
pub use char_tokenizer::CharTokenizer;
pub use chat::{ChatMessage, ChatTemplate};
pub use corpus::encode_corpus;
pub use instruct::{InstructionRecord, InstructionSet, SftDataset, SftExample};
pub use lm::{RandomWindows, SequentialBlocks, TokenStream};
pub use mlm::{MlmBatch, MlmConfig, MlmExample};
pub use nsp::{nsp_pairs, NspExample};
pub use shard::{ShardWriter, TokenDType, TokenShard};
pub use tokenizer::{BatchEncoding, EncodeOptions, Encoded, Padding, Tokenizer};
pub use train::{train_bpe, train_wordpiece, TrainOptions};

use crate::{Error, Result};

/// The label value that loss functions ignore (PyTorch's and kiln's `ignore_index` default).
pub const IGNORE_INDEX: i64 = -100;

/// What every tokenizer offers: text to ids and back. Object-safe, so callers (data preparation,
/// generation) can hold a `Box<dyn TextTokenizer>` of either kind.
pub trait TextTokenizer: Send + Sync {
    /// The ids of `text`, without any special token a tokenizer would add around a sequence
    /// (`[CLS]` ... `[SEP]`): the plain tokens of the text.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// The text of `ids`; special tokens are kept, so `decode(encode(x)) == x` for lossless
    /// tokenizers. An id outside the vocabulary is an error.
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// The number of ids (the largest id plus one).
    fn vocab_size(&self) -> usize;
    /// The end-of-sequence id, if the tokenizer has one.
    fn eos_id(&self) -> Option<u32>;
}

/// Open a tokenizer file of either kind: a [`CharTokenizer`] file (`"type": "char"`, as written
/// by [`CharTokenizer::save`]) or any Hugging Face `tokenizer.json`.
pub fn load_tokenizer(path: impl AsRef<Path>) -> Result<Box<dyn TextTokenizer>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    tokenizer_from_bytes(&bytes, path)
}

/// [`load_tokenizer`] of a file's contents; `origin` names it in errors.
pub fn tokenizer_from_bytes(bytes: &[u8], origin: &Path) -> Result<Box<dyn TextTokenizer>> {
    if char_tokenizer::is_char_tokenizer_json(bytes) {
        Ok(Box::new(CharTokenizer::from_json_bytes(bytes, origin)?))
    } else {
        Ok(Box::new(Tokenizer::from_bytes(bytes, origin)?))
    }
}

/// An I/O error on `path`.
pub(crate) fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A format error in `path`.
pub(crate) fn format_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// An invalid argument of `op` (no file involved).
pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> Error {
    Error::Tensor(kiln_tensor::Error::invalid(op, reason))
}
