//! Instruction tuning: the template, labels masked exactly on the prompt, the shifted dataset,
//! the shipped JSONL, and bad lines (error with the line number, or skipped and counted).

use std::path::{Path, PathBuf};

use kiln_data::text::{
    CharTokenizer, InstructionRecord, InstructionSet, SftDataset, TextTokenizer, Tokenizer, IGNORE_INDEX,
};
use kiln_data::Dataset;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn record(instruction: &str, input: &str, output: &str) -> InstructionRecord {
    InstructionRecord {
        instruction: instruction.into(),
        input: input.into(),
        output: output.into(),
    }
}

#[test]
fn template_with_and_without_input() {
    let r = record("Add the numbers.", "2 and 3", "5");
    assert_eq!(
        r.full_text(),
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n5"
    );
    let r = record("What is 2 + 3?", "", "5");
    assert_eq!(r.prompt(), "### Instruction:\nWhat is 2 + 3?\n\n### Response:\n");
    assert_eq!(
        r.full_text(),
        "### Instruction:\nWhat is 2 + 3?\n\n### Response:\n5"
    );
}

#[test]
fn sft_labels_mask_exactly_the_prompt_gpt2() {
    let tok = Tokenizer::from_file(repo("data/tokenizers/gpt2/tokenizer.json")).unwrap();
    let r = record(
        "Translate the sentence into French.",
        "The cat is sleeping.",
        "Le chat dort.",
    );
    let ex = r.tokenize(&tok, None).unwrap();
    let prompt = tok.encode(&r.prompt(), false).unwrap();
    let response = tok.encode(&r.output, false).unwrap();
    assert_eq!(ex.prompt_len, prompt.len());
    assert_eq!(ex.input_ids.len(), prompt.len() + response.len() + 1);
    assert_eq!(ex.input_ids[..prompt.len()], prompt[..]);
    assert_eq!(ex.input_ids[prompt.len()..ex.input_ids.len() - 1], response[..]);
    assert_eq!(*ex.input_ids.last().unwrap(), 50256); // <|endoftext|>
    for (i, (&id, &label)) in ex.input_ids.iter().zip(&ex.labels).enumerate() {
        if i < prompt.len() {
            assert_eq!(label, IGNORE_INDEX, "prompt token {i}");
        } else {
            assert_eq!(label, id as i64, "response token {i}");
        }
    }
    // The ids decode to the formatted text (+ eos): the split tokenization loses nothing.
    assert_eq!(
        tok.decode(&ex.input_ids, false).unwrap(),
        r.full_text() + "<|endoftext|>"
    );
    // Truncation.
    let cut = r.tokenize(&tok, Some(prompt.len() + 2)).unwrap();
    assert_eq!(cut.input_ids.len(), prompt.len() + 2);
    assert_eq!(cut.labels.iter().filter(|&&l| l != IGNORE_INDEX).count(), 2);
}

#[test]
fn sft_dataset_shifts_labels_and_pads() {
    let text = "### Instruction:\nInput: Response abcdefghijklmnopqrstuvwxyz0123456789 +=?.";
    let tok = CharTokenizer::from_text(text);
    assert_eq!(TextTokenizer::eos_id(&tok), None);
    let records = vec![record("a+b", "", "ab"), record("abc", "1 2", "three")];
    let ds = SftDataset::from_records(&records, &tok, None).unwrap();
    assert_eq!(ds.len(), 2);
    let b = ds.get_batch(&[1, 0]).unwrap();
    let ex = &ds.examples()[1];
    let l = ex.input_ids.len() - 1;
    assert_eq!(b.inputs.dims(), &[2, l]);
    let x = b.inputs.to_vec2::<i64>().unwrap();
    let y = b.targets.unwrap().to_vec2::<i64>().unwrap();
    let ids: Vec<i64> = ex.input_ids.iter().map(|&t| t as i64).collect();
    assert_eq!(x[0], ids[..l]);
    assert_eq!(y[0], ex.labels[1..]);
    // Exactly the response ("three", no eos for a char tokenizer) is learned.
    let learned: Vec<u32> = y[0]
        .iter()
        .filter(|&&t| t != IGNORE_INDEX)
        .map(|&t| t as u32)
        .collect();
    assert_eq!(tok.decode(&learned).unwrap(), "three");
    // The shorter example is padded: targets -100 past its end.
    let short = &ds.examples()[0];
    let m = short.input_ids.len() - 1;
    assert!(y[1][m..].iter().all(|&t| t == IGNORE_INDEX));
    assert_eq!(
        tok.decode(
            &y[1][..m]
                .iter()
                .filter(|&&t| t >= 0)
                .map(|&t| t as u32)
                .collect::<Vec<_>>()
        )
        .unwrap(),
        "ab"
    );
    assert!(ds.get_batch(&[2]).is_err());
}

#[test]
fn the_shipped_instruction_dataset_is_valid_and_varied() {
    let set = InstructionSet::load(repo("data/instructions/instructions.jsonl"), false).unwrap();
    assert!(set.records.len() >= 50, "{} records", set.records.len());
    assert_eq!(set.skipped(), 0);
    let with_input = set.records.iter().filter(|r| !r.input.is_empty()).count();
    assert!(with_input >= 10 && set.records.len() - with_input >= 10);
    let mut instructions: Vec<&str> = set.records.iter().map(|r| r.instruction.as_str()).collect();
    instructions.sort_unstable();
    instructions.dedup();
    assert!(instructions.len() >= 50);
}

#[test]
fn a_bad_line_is_an_error_naming_file_and_line_or_is_skipped_and_counted() {
    let dir = std::env::temp_dir().join(format!("kiln-text-jsonl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("train.jsonl");
    let lines = [
        r#"{"instruction": "Say hi.", "output": "Hi!"}"#,
        "",
        r#"{"instruction": "Add.", "input": "1 and 2", "output": "3"}"#,
        r#"{"instruction": "Broken", "output": "#,
        r#"{"instruction": "No output."}"#,
        r#"{"instruction": "Null input.", "input": null, "output": "ok"}"#,
        r#"{"instruction": "", "output": "empty instruction"}"#,
        r#"["not", "an", "object"]"#,
    ];
    std::fs::write(&p, lines.join("\n")).unwrap();
    let e = InstructionSet::load(&p, false).unwrap_err().to_string();
    assert!(e.contains("train.jsonl") && e.contains("line 4"), "{e}");
    // Fix line 4: the error moves to line 5 and names the missing field.
    let mut fixed = lines;
    fixed[3] = r#"{"instruction": "Fixed", "output": "yes"}"#;
    std::fs::write(&p, fixed.join("\n")).unwrap();
    let e = InstructionSet::load(&p, false).unwrap_err().to_string();
    assert!(
        e.contains("line 5") && e.contains("missing field `output`"),
        "{e}"
    );
    // Skip and count.
    std::fs::write(&p, lines.join("\n")).unwrap();
    let set = InstructionSet::load(&p, true).unwrap();
    assert_eq!(set.skipped_lines, vec![4, 5, 7, 8]);
    assert_eq!(set.skipped(), 4);
    assert_eq!(set.records.len(), 3);
    assert_eq!(set.records[0].input, "");
    assert_eq!(set.records[1].input, "1 and 2");
    assert_eq!(set.records[2].input, "");
    let e = InstructionSet::load(dir.join("missing.jsonl"), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.jsonl"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
