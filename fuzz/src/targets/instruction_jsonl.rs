use std::path::Path;

use kiln::data::text::{CharTokenizer, InstructionSet, SftDataset};
use kiln::data::Dataset;

/// The instruction JSONL reader (strict and skipping invalid lines), then tokenizing the records
/// into an SFT dataset and reading its first batch.
pub fn instruction_jsonl(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for skip_invalid in [false, true] {
        let Ok(set) = InstructionSet::parse(text, Path::new("fuzz.jsonl"), skip_invalid) else {
            continue;
        };
        let tok = CharTokenizer::from_text(text);
        if let Ok(ds) = SftDataset::from_records(&set.records, &tok, Some(64)) {
            if !ds.is_empty() {
                let _ = ds.get_batch(&[0, ds.len() - 1]);
            }
        }
    }
}
