//! Stop strings: matched on the decoded text, across token boundaries, and never emitted.

use crate::Result;

/// Token ids back to text (a tokenizer's decode), for [`TextStream`].
pub trait Detokenizer {
    /// The text of `ids`.
    fn decode(&self, ids: &[u32]) -> Result<String>;
}

/// Holds back text that could be the start of a stop string until it is sure; cuts the output
/// before the first stop string found.
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopStrings {
    /// A matcher for `stops` (empty strings are not allowed by [`SamplingParams`](super::SamplingParams)
    /// and are ignored here).
    pub fn new(stops: &[String]) -> StopStrings {
        StopStrings {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string was found (nothing more will be emitted).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Take in newly decoded text; return the text that is now certain to be output (everything
    /// before the first stop string once one is complete).
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.pending.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            let out = self.pending[..pos].to_string();
            self.pending.clear();
            return out;
        }
        // Keep the longest tail that is a proper prefix of a stop string.
        let hold = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&k| s.is_char_boundary(k))
                    .find(|&k| self.pending.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        out
    }

    /// The end of generation: release what was held back (no stop string followed it).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// The text of a stream of generated tokens, delta by delta, with stop strings applied.
///
/// Each token's text is the difference between the decoding of all output tokens so far and the
/// previous decoding, so byte-level tokens that split a UTF-8 character are emitted once the
/// character is complete (a trailing U+FFFD waits for the next token).
pub struct TextStream<'d> {
    detokenizer: &'d dyn Detokenizer,
    ids: Vec<u32>,
    decoded: String,
    stops: StopStrings,
}

impl<'d> TextStream<'d> {
    /// A stream decoding with `detokenizer` and stopping at any of `stops`.
    pub fn new(detokenizer: &'d dyn Detokenizer, stops: &[String]) -> TextStream<'d> {
        TextStream {
            detokenizer,
            ids: Vec::new(),
            decoded: String::new(),
            stops: StopStrings::new(stops),
        }
    }

    /// Whether a stop string ended the text.
    pub fn stopped(&self) -> bool {
        self.stops.stopped()
    }

    /// Add a generated token; returns the text that can be shown now.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let full = self.detokenizer.decode(&self.ids)?;
        if full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let delta = match full.strip_prefix(self.decoded.as_str()) {
            Some(d) => d.to_string(),
            // The tokenizer rewrote earlier text (rare cleanup rules): emit only what is new.
            None => full.get(self.decoded.len()..).unwrap_or("").to_string(),
        };
        self.decoded = full;
        Ok(self.stops.push(&delta))
    }

    /// The text held back at the end (when no stop string completed).
    pub fn finish(&mut self) -> Result<String> {
        Ok(if self.stops.stopped() {
            String::new()
        } else {
            self.stops.finish()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_across_pieces_and_never_emitted() {
        let mut s = StopStrings::new(&["\n\n".to_string(), "END".to_string()]);
        let mut out = String::new();
        for piece in ["Hello", " wor", "ld\n", "x", "E", "N", "D more"] {
            out += &s.push(piece);
        }
        assert!(s.stopped());
        assert_eq!(out, "Hello world\nx");
        assert_eq!(s.push("after"), "");
        // A held-back prefix that does not complete is released.
        let mut s = StopStrings::new(&["END".to_string()]);
        assert_eq!(s.push("aE"), "a");
        assert_eq!(s.push("Nx"), "ENx");
        assert_eq!(s.push("EN"), "");
        assert_eq!(s.finish(), "EN");
        assert!(!s.stopped());
    }

    struct Bytes;
    impl Detokenizer for Bytes {
        fn decode(&self, ids: &[u32]) -> Result<String> {
            let b: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
            Ok(String::from_utf8_lossy(&b).into_owned())
        }
    }

    #[test]
    fn text_waits_for_complete_characters() {
        let mut t = TextStream::new(&Bytes, &["é!".to_string()]);
        let bytes = "aé!b".as_bytes();
        let mut out = String::new();
        for &b in bytes {
            out += &t.push(b as u32).unwrap();
        }
        out += &t.finish().unwrap();
        assert_eq!(out, "a");
        assert!(t.stopped());
    }
}
