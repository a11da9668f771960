//! textgenrnn's character vocabulary (`textgenrnn_vocab.json`).

use std::collections::HashMap;
use std::path::Path;

use kiln_zoo::{Error, Result};

/// The meta token textgenrnn puts before every text (also its end-of-text token).
pub const META_TOKEN: &str = "<s>";

/// textgenrnn's vocabulary: a JSON object mapping each character (and the meta token `<s>`) to
/// an id from 1; id 0 is the padding and stands for characters the vocabulary lacks.
#[derive(Clone, Debug)]
pub struct TextGenRnnVocab {
    ids: HashMap<String, u32>,
    /// Indexed by id; `None` for 0 and gaps.
    tokens: Vec<Option<String>>,
}

fn vocab_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Config {
        model: "textgenrnn".into(),
        reason: format!("vocabulary {}: {reason}", path.display()),
    }
}

impl TextGenRnnVocab {
    /// Read `textgenrnn_vocab.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<TextGenRnnVocab> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| vocab_err(path, e))?;
        let map: HashMap<String, u32> = serde_json::from_str(&text)
            .map_err(|e| vocab_err(path, format!("expected a JSON object of token -> id: {e}")))?;
        Self::build(map).map_err(|e| vocab_err(path, e))
    }

    /// A vocabulary from token → id (ids from 1, each used once).
    pub fn from_map(ids: HashMap<String, u32>) -> Result<TextGenRnnVocab> {
        Self::build(ids).map_err(|reason| Error::Config {
            model: "textgenrnn".into(),
            reason: format!("vocabulary: {reason}"),
        })
    }

    fn build(ids: HashMap<String, u32>) -> std::result::Result<TextGenRnnVocab, String> {
        let size = ids.values().max().map_or(1, |&m| m as usize + 1);
        let mut tokens: Vec<Option<String>> = vec![None; size];
        for (tok, &id) in &ids {
            if id == 0 {
                return Err(format!("token {tok:?} has id 0, which is reserved for padding"));
            }
            if let Some(other) = tokens[id as usize].replace(tok.clone()) {
                return Err(format!("tokens {other:?} and {tok:?} share id {id}"));
            }
        }
        Ok(TextGenRnnVocab { ids, tokens })
    }

    /// Number of ids, padding included (465 for the pretrained model).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of `<s>`, if the vocabulary has it.
    pub fn meta_id(&self) -> Option<u32> {
        self.ids.get(META_TOKEN).copied()
    }

    /// One id per character; characters not in the vocabulary become 0, as textgenrnn does.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut buf = [0u8; 4];
        text.chars()
            .map(|c| self.ids.get(&*c.encode_utf8(&mut buf)).copied().unwrap_or(0))
            .collect()
    }

    /// What textgenrnn feeds for a prompt: `<s>` (when the vocabulary has it), then the
    /// characters.
    pub fn encode_prompt(&self, text: &str) -> Vec<u32> {
        self.meta_id().into_iter().chain(self.encode(text)).collect()
    }

    /// The text of `ids`: each id's token (`<s>` included as those three characters); ids
    /// without a token (the padding 0, out of range) become `?`, as textgenrnn's reference
    /// decoding does.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| {
                self.tokens
                    .get(i as usize)
                    .and_then(|t| t.as_deref())
                    .unwrap_or("?")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_and_bad_maps() {
        let map: HashMap<String, u32> = [("a", 1), ("b", 2), ("<s>", 3)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let v = TextGenRnnVocab::from_map(map).unwrap();
        assert_eq!(v.vocab_size(), 4);
        assert_eq!(v.encode_prompt("abz"), [3, 1, 2, 0]);
        assert_eq!(v.decode(&[1, 2, 3, 0, 9]), "ab<s>??");
        let dup: HashMap<String, u32> = [("a", 1), ("b", 1)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        assert!(TextGenRnnVocab::from_map(dup)
            .unwrap_err()
            .to_string()
            .contains("share id 1"));
        let zero: HashMap<String, u32> = [("a", 0)].iter().map(|(k, v)| (k.to_string(), *v)).collect();
        assert!(TextGenRnnVocab::from_map(zero)
            .unwrap_err()
            .to_string()
            .contains("padding"));
    }
}
