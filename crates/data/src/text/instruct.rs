//! Instruction tuning (SFT): a JSONL dataset of `instruction` / `input` / `output` records, the
//! prompt template, and labels masked on the prompt.
//!
//! # Template
//!
//! A record with a non-empty `input` is formatted as
//!
//! ```text
//! ### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}
//! ```
//!
//! and a record whose `input` is empty or absent leaves the Input block out (rather than showing
//! an empty one), as the Alpaca-style templates do:
//!
//! ```text
//! ### Instruction:\n{instruction}\n\n### Response:\n{output}
//! ```
//!
//! # Labels
//!
//! The prompt (everything up to and including `### Response:\n`) and the response are tokenized
//! separately, so the boundary is exact; the response is followed by the tokenizer's
//! end-of-sequence id when it has one. Labels are -100 ([`IGNORE_INDEX`]) on every prompt token
//! and the token itself on every response token (and the end of sequence): only the response is
//! learned.
//!
//! # JSONL
//!
//! One JSON object per line; blank lines are skipped. `instruction` and `output` are required
//! non-empty strings, `input` an optional string (`null` counts as absent); other fields are
//! ignored. A line that is not such an object is an error naming the file and the line number,
//! or, with `skip_invalid`, is skipped and counted in [`InstructionSet::skipped_lines`].

use std::path::Path;

use kiln_tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{format_error, invalid, io_error, TextTokenizer, IGNORE_INDEX};
use crate::{Batch, Dataset, Result};

/// One instruction-tuning record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionRecord {
    /// The task.
    pub instruction: String,
    /// The task's input; empty when the instruction stands alone.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub input: String,
    /// The expected response.
    pub output: String,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// The records of a JSONL file and the lines skipped as invalid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstructionSet {
    /// The valid records, in file order.
    pub records: Vec<InstructionRecord>,
    /// The 1-based line numbers skipped as invalid (only with `skip_invalid`).
    pub skipped_lines: Vec<usize>,
}

/// One tokenized record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SftExample {
    /// Prompt ids then response ids (then the end-of-sequence id).
    pub input_ids: Vec<u32>,
    /// -100 on the prompt, the ids on the response (aligned with `input_ids`, not shifted).
    pub labels: Vec<i64>,
    /// The number of prompt tokens (after truncation).
    pub prompt_len: usize,
}

impl InstructionRecord {
    /// The prompt: the template up to and including `### Response:\n`.
    pub fn prompt(&self) -> String {
        if self.input.is_empty() {
            format!("### Instruction:\n{}\n\n### Response:\n", self.instruction)
        } else {
            format!(
                "### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:\n",
                self.instruction, self.input
            )
        }
    }

    /// The whole formatted text: the prompt then the output.
    pub fn full_text(&self) -> String {
        self.prompt() + &self.output
    }

    /// Tokenize with labels masked on the prompt (see the [module documentation](self)); with
    /// `max_len` the sequence is cut to that many tokens (from the end).
    pub fn tokenize(&self, tokenizer: &dyn TextTokenizer, max_len: Option<usize>) -> Result<SftExample> {
        let mut input_ids = tokenizer.encode(&self.prompt())?;
        let mut prompt_len = input_ids.len();
        let mut response = tokenizer.encode(&self.output)?;
        response.extend(tokenizer.eos_id());
        let mut labels = vec![IGNORE_INDEX; prompt_len];
        labels.extend(response.iter().map(|&t| t as i64));
        input_ids.extend(response);
        if let Some(m) = max_len {
            input_ids.truncate(m);
            labels.truncate(m);
            prompt_len = prompt_len.min(m);
        }
        Ok(SftExample {
            input_ids,
            labels,
            prompt_len,
        })
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.instruction.trim().is_empty() {
            return Err("`instruction` is empty".into());
        }
        if self.output.trim().is_empty() {
            return Err("`output` is empty".into());
        }
        Ok(())
    }
}

/// serde_json's message without its " at line L column C" suffix (always line 1 here).
fn json_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// One JSONL line as a record, or why it is not one.
fn parse_record(line: &str) -> std::result::Result<InstructionRecord, String> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| format!("invalid JSON at column {}: {}", e.column(), json_message(&e)))?;
    let kind = crate::json::non_object_kind(&value);
    if let Some(kind) = kind {
        return Err(format!("expected a JSON object, found {kind}"));
    }
    let record: InstructionRecord = serde_json::from_value(value).map_err(|e| json_message(&e))?;
    record.validate()?;
    Ok(record)
}

impl InstructionSet {
    /// Read a JSONL file (see the [module documentation](self)).
    pub fn load(path: impl AsRef<Path>, skip_invalid: bool) -> Result<InstructionSet> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
            format_error(path, format!("line {line}: not UTF-8 (byte offset {at})"))
        })?;
        Self::parse(&text, path, skip_invalid)
    }

    /// Parse JSONL text; `source` names it in errors.
    pub fn parse(text: &str, source: &Path, skip_invalid: bool) -> Result<InstructionSet> {
        let mut set = InstructionSet::default();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let parsed = parse_record(line);
            match parsed {
                Ok(r) => set.records.push(r),
                Err(_) if skip_invalid => set.skipped_lines.push(n),
                Err(why) => {
                    return Err(format_error(
                        source,
                        format!(
                            "line {n}: not a valid instruction record ({{\"instruction\": ..., \"input\": ..., \"output\": ...}}): {why}"
                        ),
                    ))
                }
            }
        }
        Ok(set)
    }

    /// The number of lines skipped as invalid.
    pub fn skipped(&self) -> usize {
        self.skipped_lines.len()
    }
}

/// A [`Dataset`] of tokenized records for next-token training: example `i` gives inputs
/// `input_ids[..n-1]` and targets `labels[1..]` (the labels shifted by one, so target `t` is the
/// token after input `t`, -100 on the prompt). A batch is padded on the right to its longest
/// example: inputs with `pad_id`, targets with -100 (padding is never learned, and a causal
/// model's earlier positions never see it).
#[derive(Clone, Debug)]
pub struct SftDataset {
    examples: Vec<SftExample>,
    pad_id: u32,
}

impl SftDataset {
    /// A dataset of already tokenized examples (each needs at least 2 tokens).
    pub fn new(examples: Vec<SftExample>, pad_id: u32) -> Result<SftDataset> {
        if let Some(i) = examples.iter().position(|e| e.input_ids.len() < 2) {
            return Err(invalid(
                "SftDataset::new",
                format!("example {i} has fewer than 2 tokens: nothing to predict"),
            ));
        }
        Ok(SftDataset { examples, pad_id })
    }

    /// Tokenize `records` (see [`InstructionRecord::tokenize`]); padding uses the tokenizer's
    /// end-of-sequence id, or 0.
    pub fn from_records(
        records: &[InstructionRecord],
        tokenizer: &dyn TextTokenizer,
        max_len: Option<usize>,
    ) -> Result<SftDataset> {
        let examples = records
            .iter()
            .map(|r| r.tokenize(tokenizer, max_len))
            .collect::<Result<Vec<_>>>()?;
        Self::new(examples, tokenizer.eos_id().unwrap_or(0))
    }

    /// The tokenized examples.
    pub fn examples(&self) -> &[SftExample] {
        &self.examples
    }
}

impl Dataset for SftDataset {
    fn len(&self) -> usize {
        self.examples.len()
    }

    fn get_batch(&self, indices: &[usize]) -> Result<Batch> {
        let n = self.examples.len();
        if let Some(bad) = indices.iter().find(|&&i| i >= n) {
            return Err(invalid(
                "SftDataset::get_batch",
                format!("index {bad} out of range for a dataset of {n} examples"),
            ));
        }
        let b = indices.len();
        let l = indices
            .iter()
            .map(|&i| self.examples[i].input_ids.len() - 1)
            .max()
            .unwrap_or(0);
        let mut inputs = vec![self.pad_id as i64; b * l];
        let mut targets = vec![IGNORE_INDEX; b * l];
        for (r, &i) in indices.iter().enumerate() {
            let e = &self.examples[i];
            let m = e.input_ids.len() - 1;
            for t in 0..m {
                inputs[r * l + t] = e.input_ids[t] as i64;
                targets[r * l + t] = e.labels[t + 1];
            }
        }
        Ok(Batch {
            inputs: Tensor::from_vec(inputs, [b, l])?,
            targets: Some(Tensor::from_vec(targets, [b, l])?),
        })
    }
}
