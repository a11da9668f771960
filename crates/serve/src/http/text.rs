//! [`SampleText`]: the text of one sample, token by token, with stop strings applied.
//!
//! This is `kiln_zoo::generate::TextStream` for async handlers: that type borrows a
//! `&dyn Detokenizer` (not `Sync`), so a future holding it is not `Send`. Here the tokenizer is
//! passed to each call instead, and only a window of recent ids is decoded per token (Hugging
//! Face's incremental detokenization: the ids since the previous token's start are decoded with
//! and without the new one, so tokenizers that drop a leading space on the first token still give
//! the right delta). Stop strings use kiln-zoo's [`StopStrings`] (matched across tokens, never
//! emitted).

use kiln_data::text::TextTokenizer;
use kiln_zoo::generate::StopStrings;

/// One sample's output text.
pub(crate) struct SampleText {
    ids: Vec<u32>,
    /// Start of the decoding window.
    prefix_offset: usize,
    /// End of the text already emitted (ids before it are accounted for).
    read_offset: usize,
    stops: StopStrings,
}

impl SampleText {
    /// Text that ends at any of `stops`.
    pub fn new(stops: &[String]) -> SampleText {
        SampleText {
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            stops: StopStrings::new(stops),
        }
    }

    /// Whether a stop string ended the text.
    pub fn stopped(&self) -> bool {
        self.stops.stopped()
    }

    /// The text of the ids not yet emitted, if it is complete (no split UTF-8 character at the
    /// end) or `force`; advances the window.
    fn take_new(&mut self, tokenizer: &dyn TextTokenizer, force: bool) -> Result<String, String> {
        let decode = |ids: &[u32]| {
            tokenizer
                .decode(ids)
                .map_err(|e| format!("cannot decode the generated tokens: {e}"))
        };
        let prefix = decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = decode(&self.ids[self.prefix_offset..])?;
        if !force && full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let delta = match full.strip_prefix(prefix.as_str()) {
            Some(d) => d.to_string(),
            // The tokenizer rewrote earlier text: emit only what is new.
            None => full.get(prefix.len()..).unwrap_or("").to_string(),
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// Adds a generated token; returns the text that can be shown now.
    pub fn push(&mut self, tokenizer: &dyn TextTokenizer, id: u32) -> Result<String, String> {
        if self.stopped() {
            return Ok(String::new());
        }
        self.ids.push(id);
        let delta = self.take_new(tokenizer, false)?;
        Ok(self.stops.push(&delta))
    }

    /// The end of the sample: the text still held back (a split character at the very end is
    /// decoded as U+FFFD; a held-back prefix of a stop string that never completed is released).
    pub fn finish(&mut self, tokenizer: &dyn TextTokenizer) -> Result<String, String> {
        if self.stopped() {
            return Ok(String::new());
        }
        let mut out = String::new();
        if self.read_offset < self.ids.len() {
            let delta = self.take_new(tokenizer, true)?;
            out += &self.stops.push(&delta);
        }
        if !self.stopped() {
            out += &self.stops.finish();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are bytes.
    struct Bytes;
    impl TextTokenizer for Bytes {
        fn encode(&self, text: &str) -> kiln_data::Result<Vec<u32>> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn decode(&self, ids: &[u32]) -> kiln_data::Result<String> {
            let b: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
            Ok(String::from_utf8_lossy(&b).into_owned())
        }
        fn vocab_size(&self) -> usize {
            256
        }
        fn eos_id(&self) -> Option<u32> {
            None
        }
    }

    fn run(text: &str, stops: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut t = SampleText::new(&stops);
        let mut out = String::new();
        for b in text.bytes() {
            out += &t.push(&Bytes, b as u32).unwrap();
        }
        out += &t.finish(&Bytes).unwrap();
        (out, t.stopped())
    }

    #[test]
    fn split_characters_and_stop_strings() {
        assert_eq!(run("aé€b", &[]), ("aé€b".to_string(), false));
        assert_eq!(run("aé!b", &["é!"]), ("a".to_string(), true));
        assert_eq!(
            run("hello END there", &["END", "\n\n"]),
            ("hello ".to_string(), true)
        );
        assert_eq!(run("hello EN", &["END"]), ("hello EN".to_string(), false));
        // A split character at the end is decoded lossily.
        let mut t = SampleText::new(&[]);
        assert_eq!(t.push(&Bytes, 0xC3).unwrap(), "");
        assert_eq!(t.finish(&Bytes).unwrap(), "\u{FFFD}");
    }
}
