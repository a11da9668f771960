//! Tokenizing a whole corpus in parallel.
//!
//! [`encode_corpus`] cuts the text into chunks of about `chunk_bytes` and encodes them on rayon
//! threads. A cut is made only at a line break that has a non-whitespace character on both
//! sides (`"...word\nWord..."`). Byte-level BPE (GPT-2's pre-tokenization never joins a `'\n'`
//! to the following non-space character, nor a lone `'\n'` to the preceding non-space one),
//! BERT-style whitespace splitting and character tokenizers all give exactly the ids of encoding
//! the whole text in one call (tested for GPT-2 on tiny-shakespeare).
//!
//! Tokenizers that mark the start of a text (a `Metaspace` pre-tokenizer with the `first` prepend
//! scheme, a normalizer that prepends a symbol) see the start of every chunk as a text start;
//! for those, pass a `chunk_bytes` at least the text's length to encode it in one call.

use rayon::prelude::*;

use super::{invalid, TextTokenizer};
use crate::Result;

/// The default chunk size of [`encode_corpus`] (64 KiB).
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 16;

/// Split `text` into chunks of at least `chunk_bytes` (except the last), cut only at safe line
/// breaks (see the [module documentation](self)).
pub fn split_chunks(text: &str, chunk_bytes: usize) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut from = 0;
    while from < text.len() {
        let target = from + chunk_bytes.max(1);
        let cut = if target >= text.len() {
            None
        } else {
            find_cut(text, target)
        };
        match cut {
            Some(c) => {
                chunks.push(&text[from..c]);
                from = c;
            }
            None => {
                chunks.push(&text[from..]);
                break;
            }
        }
    }
    chunks
}

/// The first safe cut at or after byte `at`: just after a `'\n'` preceded and followed by
/// non-whitespace characters.
fn find_cut(text: &str, at: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    // `at` may fall inside a multi-byte character; '\n' is ASCII so scanning bytes is safe.
    (at.max(1)..bytes.len()).find(|&i| {
        bytes[i - 1] == b'\n'
            && text[..i - 1]
                .chars()
                .next_back()
                .is_some_and(|c| !c.is_whitespace())
            && text.is_char_boundary(i)
            && text[i..].chars().next().is_some_and(|c| !c.is_whitespace())
    })
}

/// The ids of `text`, encoded in parallel chunks of about `chunk_bytes` (see the
/// [module documentation](self)) and concatenated in order.
pub fn encode_corpus(tokenizer: &dyn TextTokenizer, text: &str, chunk_bytes: usize) -> Result<Vec<u32>> {
    if chunk_bytes == 0 {
        return Err(invalid("encode_corpus", "chunk_bytes must be at least 1"));
    }
    let parts = split_chunks(text, chunk_bytes)
        .par_iter()
        .map(|c| tokenizer.encode(c))
        .collect::<Result<Vec<_>>>()?;
    Ok(parts.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_text_and_cut_at_safe_breaks() {
        let text = "ab\ncd\n\nef  \ngh\nij";
        for size in 1..text.len() + 2 {
            let chunks = split_chunks(text, size);
            assert_eq!(chunks.concat(), text, "size {size}");
            for c in &chunks[..chunks.len() - 1] {
                let b = c.as_bytes();
                assert_eq!(b[b.len() - 1], b'\n');
                assert!(!(b[b.len() - 2] as char).is_whitespace(), "{c:?}");
            }
            for c in &chunks[1..] {
                assert!(!c.starts_with(char::is_whitespace), "{c:?}");
            }
        }
        assert_eq!(split_chunks("", 4), Vec::<&str>::new());
        // Multi-byte characters around the cut.
        let t = "é\né\né";
        assert_eq!(split_chunks(t, 1), vec!["é\n", "é\n", "é"]);
    }
}
