//! Training tokenizers on a corpus: a GPT-2-style byte-level BPE ([`train_bpe`]) or a BERT-style
//! WordPiece ([`train_wordpiece`]). Save the result with [`Tokenizer::save`].

use std::collections::HashSet;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::AddedToken;

use super::{format_error, invalid, io_error, Tokenizer};
use crate::Result;

/// Settings of tokenizer training.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainOptions {
    /// The target vocabulary size, special tokens and the initial alphabet included.
    pub vocab_size: usize,
    /// A pair (BPE) or piece must occur at least this often to be merged.
    pub min_frequency: u64,
    /// Special tokens, given the first ids in this order.
    pub special_tokens: Vec<String>,
}

impl TrainOptions {
    /// BPE defaults: `min_frequency` 2 and the special token `<|endoftext|>` (id 0).
    pub fn bpe(vocab_size: usize) -> TrainOptions {
        TrainOptions {
            vocab_size,
            min_frequency: 2,
            special_tokens: vec!["<|endoftext|>".to_string()],
        }
    }

    /// WordPiece defaults: `min_frequency` 2 and BERT's `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`,
    /// `[MASK]` (ids 0 to 4).
    pub fn wordpiece(vocab_size: usize) -> TrainOptions {
        TrainOptions {
            vocab_size,
            min_frequency: 2,
            special_tokens: ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                .map(String::from)
                .to_vec(),
        }
    }

    fn added_tokens(&self) -> Vec<AddedToken> {
        self.special_tokens
            .iter()
            .map(|t| AddedToken::from(t.clone(), true))
            .collect()
    }
}

fn read_corpus(files: &[&Path]) -> Result<Vec<String>> {
    if files.is_empty() {
        return Err(invalid("train tokenizer", "no corpus file given"));
    }
    files
        .iter()
        .map(|&path| {
            let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
            String::from_utf8(bytes).map_err(|e| {
                format_error(
                    path,
                    format!(
                        "the corpus is not UTF-8 (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                )
            })
        })
        .collect()
}

fn train(
    mut tok: tokenizers::Tokenizer,
    mut trainer: TrainerWrapper,
    files: &[&Path],
    name: &str,
) -> Result<tokenizers::Tokenizer> {
    let texts = read_corpus(files)?;
    tok.train(&mut trainer, texts.iter().flat_map(|t| t.split_inclusive('\n')))
        .map_err(|e| invalid("train tokenizer", format!("training the {name} failed: {e}")))?;
    Ok(tok)
}

/// Train a GPT-2-style byte-level BPE on the corpus `files` (UTF-8 text, read line by line):
/// GPT-2's pre-tokenization regex without a prefix space, the 256 byte symbols as the initial
/// alphabet (so every string encodes and decodes losslessly), the special tokens first.
pub fn train_bpe(files: &[&Path], options: &TrainOptions) -> Result<Tokenizer> {
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    tok.with_post_processor(Some(ByteLevel::new(false, true, true)));
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let trainer = BpeTrainer::builder()
        .vocab_size(options.vocab_size)
        .min_frequency(options.min_frequency)
        .special_tokens(options.added_tokens())
        .initial_alphabet(alphabet)
        .show_progress(false)
        .build();
    let tok = train(tok, trainer.into(), files, "byte-level BPE")?;
    Ok(Tokenizer::from_hf(tok, "<trained byte-level BPE>"))
}

/// Train a BERT-style WordPiece (lower-casing BERT normalizer, BERT pre-tokenizer, `##`
/// continuation prefix) on the corpus `files`. The special tokens must include `[UNK]`; when
/// they include `[CLS]` and `[SEP]`, encoding with special tokens gives `[CLS] ... [SEP]`.
pub fn train_wordpiece(files: &[&Path], options: &TrainOptions) -> Result<Tokenizer> {
    if !options.special_tokens.iter().any(|t| t == "[UNK]") {
        return Err(invalid(
            "train_wordpiece",
            format!(
                "the special tokens {:?} must include [UNK]",
                options.special_tokens
            ),
        ));
    }
    let mut tok = tokenizers::Tokenizer::new(WordPiece::default());
    tok.with_normalizer(Some(BertNormalizer::default()))
        .map_err(|e| invalid("train_wordpiece", e.to_string()))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_decoder(Some(WordPieceDecoder::default()));
    let trainer = WordPieceTrainer::builder()
        .vocab_size(options.vocab_size)
        .min_frequency(options.min_frequency)
        .special_tokens(options.added_tokens())
        .show_progress(false)
        .build();
    let mut tok = train(tok, trainer.into(), files, "WordPiece")?;
    if let (Some(cls), Some(sep)) = (tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")) {
        tok.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".to_string(), sep),
            ("[CLS]".to_string(), cls),
        )));
    }
    Ok(Tokenizer::from_hf(tok, "<trained WordPiece>"))
}
