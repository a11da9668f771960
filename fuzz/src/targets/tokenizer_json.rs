use std::path::Path;

use kiln::data::text::tokenizer_from_bytes;

/// Texts every accepted tokenizer encodes (or refuses) and decodes.
const TEXTS: [&str; 4] = [
    "Hello, world! To be, or not to be.",
    "\n\n  tabs\tand   spaces  ",
    "ünïcödé 123 \u{1F600} 日本語",
    "",
];

/// `tokenizer.json` loading (Hugging Face or kiln's character tokenizer), then encoding and
/// decoding with what loaded, including ids outside its vocabulary.
pub fn tokenizer_json(data: &[u8]) {
    let Ok(tok) = tokenizer_from_bytes(data, Path::new("tokenizer.json")) else {
        return;
    };
    for text in TEXTS {
        if let Ok(ids) = tok.encode(text) {
            let _ = tok.decode(&ids);
        }
    }
    let _ = tok.decode(&[0, 1, u32::MAX]);
    let _ = (tok.vocab_size(), tok.eos_id());
}
