//! A character-level tokenizer: one id per distinct character of a corpus.
//!
//! The vocabulary is the corpus's distinct characters (Unicode scalar values) sorted by code
//! point; a character's id is its rank. Tiny-shakespeare gives 65 characters (`'\n'` is 0,
//! `' '` is 1, ...), the setup of char-RNN and nanoGPT's character models.
//!
//! The file format (written by [`CharTokenizer::save`]) is a small JSON object:
//! `{"type": "char", "version": 1, "chars": ["\n", " ", "!", ...]}`.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{format_error, invalid, io_error, TextTokenizer};
use crate::Result;

/// A character-level tokenizer (see the [module documentation](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    ids: HashMap<char, u32>,
}

#[derive(Serialize, Deserialize)]
struct CharFile {
    #[serde(rename = "type")]
    kind: String,
    version: u32,
    chars: Vec<String>,
}

const KIND: &str = "char";
const VERSION: u32 = 1;

/// Whether `bytes` look like a char tokenizer file (a JSON object with `"type": "char"`).
pub(crate) fn is_char_tokenizer_json(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| p.kind.as_deref() == Some(KIND))
}

impl CharTokenizer {
    /// The tokenizer whose vocabulary is the distinct characters of `text`, sorted.
    pub fn from_text(text: &str) -> CharTokenizer {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_sorted(chars)
    }

    /// A tokenizer over exactly `chars` (sorted and deduplicated here; ids follow that order).
    pub fn from_chars(chars: impl IntoIterator<Item = char>) -> CharTokenizer {
        let mut chars: Vec<char> = chars.into_iter().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_sorted(chars)
    }

    fn from_sorted(chars: Vec<char>) -> CharTokenizer {
        let ids = chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
        CharTokenizer { chars, ids }
    }

    /// The vocabulary, in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The number of characters (ids `0..vocab_size()`).
    pub fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    /// The id of `c`, if it is in the vocabulary.
    pub fn char_to_id(&self, c: char) -> Option<u32> {
        self.ids.get(&c).copied()
    }

    /// The ids of the characters of `text`. A character outside the vocabulary is an error naming
    /// it and its position (in characters from the start).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .enumerate()
            .map(|(pos, c)| {
                self.char_to_id(c).ok_or_else(|| {
                    invalid(
                        "CharTokenizer::encode",
                        format!(
                            "character {c:?} (U+{:04X}) at position {pos} is not in the vocabulary of {} characters",
                            c as u32,
                            self.chars.len()
                        ),
                    )
                })
            })
            .collect()
    }

    /// The text of `ids`. An id `>= vocab_size()` is an error naming it and its position.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        ids.iter()
            .enumerate()
            .map(|(pos, &id)| {
                self.chars.get(id as usize).copied().ok_or_else(|| {
                    invalid(
                        "CharTokenizer::decode",
                        format!(
                            "id {id} at position {pos} is outside the vocabulary of {} characters",
                            self.chars.len()
                        ),
                    )
                })
            })
            .collect()
    }

    /// The tokenizer as its JSON file contents.
    pub fn to_json(&self) -> String {
        let file = CharFile {
            kind: KIND.to_string(),
            version: VERSION,
            chars: self.chars.iter().map(|c| c.to_string()).collect(),
        };
        // Serialising strings into a JSON value cannot fail.
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }

    /// Write the tokenizer as JSON to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json()).map_err(|e| io_error(path, e))
    }

    /// Read a tokenizer written by [`CharTokenizer::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<CharTokenizer> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        Self::from_json_bytes(&bytes, path)
    }

    /// Parse the JSON file contents `bytes`; `path` names the source in errors.
    pub fn from_json_bytes(bytes: &[u8], path: &Path) -> Result<CharTokenizer> {
        let file: CharFile = serde_json::from_slice(bytes).map_err(|e| {
            format_error(
                path,
                format!("not a char tokenizer file (expected {{\"type\": \"char\", \"version\": 1, \"chars\": [...]}}): {e}"),
            )
        })?;
        if file.kind != KIND || file.version != VERSION {
            return Err(format_error(
                path,
                format!(
                    "expected a char tokenizer of type \"{KIND}\" version {VERSION}, found type {:?} version {}",
                    file.kind, file.version
                ),
            ));
        }
        let mut chars = Vec::with_capacity(file.chars.len());
        for (i, s) in file.chars.iter().enumerate() {
            let mut it = s.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => chars.push(c),
                _ => {
                    return Err(format_error(
                        path,
                        format!("chars[{i}] is {s:?}: expected exactly one character"),
                    ))
                }
            }
        }
        if chars.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format_error(
                path,
                "chars must be sorted by code point without duplicates",
            ));
        }
        Ok(Self::from_sorted(chars))
    }
}

impl TextTokenizer for CharTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        CharTokenizer::encode(self, text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        CharTokenizer::decode(self, ids)
    }
    fn vocab_size(&self) -> usize {
        CharTokenizer::vocab_size(self)
    }
    fn eos_id(&self) -> Option<u32> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_vocabulary_and_round_trip() {
        let t = CharTokenizer::from_text("hello, world\n");
        assert_eq!(t.chars(), &['\n', ' ', ',', 'd', 'e', 'h', 'l', 'o', 'r', 'w']);
        let ids = t.encode("hold").unwrap();
        assert_eq!(ids, vec![5, 7, 6, 3]);
        assert_eq!(t.decode(&ids).unwrap(), "hold");
    }

    #[test]
    fn unknown_character_and_id_are_named() {
        let t = CharTokenizer::from_text("abc");
        let e = t.encode("abzc").unwrap_err().to_string();
        assert!(e.contains("'z'") && e.contains("position 2"), "{e}");
        let e = t.decode(&[0, 3]).unwrap_err().to_string();
        assert!(e.contains("id 3") && e.contains("position 1"), "{e}");
    }

    #[test]
    fn json_round_trip_and_errors() {
        let t = CharTokenizer::from_text("é\n\"x");
        let p = Path::new("mem.json");
        let back = CharTokenizer::from_json_bytes(t.to_json().as_bytes(), p).unwrap();
        assert_eq!(back, t);
        assert!(is_char_tokenizer_json(t.to_json().as_bytes()));
        let bad = br#"{"type": "char", "version": 1, "chars": ["ab"]}"#;
        let e = CharTokenizer::from_json_bytes(bad, p).unwrap_err().to_string();
        assert!(e.contains("mem.json") && e.contains("chars[0]"), "{e}");
        let e = CharTokenizer::from_json_bytes(b"{", p).unwrap_err().to_string();
        assert!(e.contains("mem.json"), "{e}");
    }
}
