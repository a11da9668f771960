//! Real tokenizers against reference ids: GPT-2 (r50k, cross-checked with tiktoken), BERT
//! WordPiece (all-MiniLM-L6-v2, from `transformers`), SmolLM2 (byte-level BPE); truncation,
//! padding, pairs, and the errors of a bad tokenizer.json.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_data::text::{EncodeOptions, Padding, TextTokenizer, Tokenizer};
use kiln_tensor::Tensor;
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text")
        .join(rel)
}

fn gpt2_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tokenizers/gpt2/tokenizer.json")
}

fn gpt2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_file(gpt2_path()).unwrap())
}

fn bert() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_file(fixture("bert/tokenizer.json")).unwrap())
}

fn json(rel: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(rel)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gpt2_ids_equal_the_reference_for_every_case() {
    let refs = json("gpt2/gpt2_tokenizer_refs.json");
    let cases = refs["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    let tok = gpt2();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        assert_eq!(tok.encode(text, true).unwrap(), expected, "{text:?}");
        assert_eq!(tok.encode(text, false).unwrap(), expected, "{text:?}");
        let tokens: Vec<String> = expected.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        let ref_tokens: Vec<&str> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(tokens, ref_tokens, "{text:?}");
        assert_eq!(tok.decode(&expected, false).unwrap(), text);
    }
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(50256));
    assert_eq!(tok.eos_id(), Some(50256));
    // Skipping special tokens on decode drops <|endoftext|>.
    let e = tok.encode("<|endoftext|>The end.", false).unwrap();
    assert_eq!(tok.decode(&e, true).unwrap(), "The end.");
}

#[test]
fn gpt2_batch_encoding_is_in_order_and_padded() {
    let tok = gpt2();
    let refs = json("gpt2/gpt2_tokenizer_refs.json");
    let cases = refs["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let opts = EncodeOptions {
        padding: Padding::Longest,
        pad_id: Some(50256),
        ..EncodeOptions::default()
    };
    let batch = tok.encode_batch(&texts, &opts).unwrap();
    let longest = cases.iter().map(|c| ids(&c["ids"]).len()).max().unwrap();
    for (e, c) in batch.encodings.iter().zip(cases) {
        let want = ids(&c["ids"]);
        assert_eq!(e.len(), longest);
        assert_eq!(&e.ids[..want.len()], &want[..]);
        assert!(e.ids[want.len()..].iter().all(|&i| i == 50256));
        assert!(e.attention_mask[..want.len()].iter().all(|&m| m == 1));
        assert!(e.attention_mask[want.len()..].iter().all(|&m| m == 0));
    }
    assert_eq!(batch.ids_tensor().unwrap().dims(), &[10, longest]);
    // GPT-2 has no [PAD]: padding without a pad id is an error naming the way out.
    let e = tok
        .encode_batch(
            &texts,
            &EncodeOptions {
                padding: Padding::Longest,
                ..EncodeOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("pad id") && e.contains("tokenizer.json"), "{e}");
    // An unpadded ragged batch does not stack.
    let ragged = tok.encode_batch(&texts, &EncodeOptions::default()).unwrap();
    assert!(ragged.ids_tensor().is_err());
}

#[test]
fn bert_ids_equal_the_reference_for_every_sentence() {
    let refs = json("bert/bert_refs.json");
    let tok = bert();
    let per = refs["per_sentence"].as_array().unwrap();
    assert_eq!(per.len(), 3);
    for s in per {
        let text = s["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids(&s["input_ids"]), "{text:?}");
    }
    assert_eq!(tok.vocab_size(), 30522);
    for (t, id) in [
        ("[PAD]", 0),
        ("[UNK]", 100),
        ("[CLS]", 101),
        ("[SEP]", 102),
        ("[MASK]", 103),
    ] {
        assert_eq!(tok.token_to_id(t), Some(id), "{t}");
    }
    // The file's own settings (truncation 128, padding to 128) are not applied by default but
    // are reported.
    let f = tok.file_options();
    assert_eq!(f.max_len, Some(128));
    assert_eq!(f.padding, Padding::Fixed(128));
    assert_eq!(f.pad_id, Some(0));
}

#[test]
fn bert_padded_batch_equals_the_reference_batch() {
    let refs = json("bert/bert_refs.json");
    let sentences: Vec<&str> = refs["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let opts = EncodeOptions {
        padding: Padding::Longest,
        ..EncodeOptions::default()
    };
    let batch = bert().encode_batch(&sentences, &opts).unwrap();
    let want_ids = Tensor::read_npy(fixture("bert/batch_input_ids.npy")).unwrap();
    let want_mask = Tensor::read_npy(fixture("bert/batch_attention_mask.npy")).unwrap();
    let got_ids = batch.ids_tensor().unwrap();
    assert_eq!(got_ids.dims(), want_ids.dims());
    assert_eq!(
        got_ids.to_vec::<i64>().unwrap(),
        want_ids
            .to_dtype(kiln_tensor::DType::I64)
            .unwrap()
            .to_vec::<i64>()
            .unwrap()
    );
    assert_eq!(
        batch.attention_mask_tensor().unwrap().to_vec::<i64>().unwrap(),
        want_mask
            .to_dtype(kiln_tensor::DType::I64)
            .unwrap()
            .to_vec::<i64>()
            .unwrap()
    );
    assert!(batch
        .type_ids_tensor()
        .unwrap()
        .to_vec::<i64>()
        .unwrap()
        .iter()
        .all(|&t| t == 0));
}

#[test]
fn bert_truncation_keeps_the_special_tokens_and_pairs_get_type_ids() {
    let tok = bert();
    let opts = EncodeOptions {
        max_len: Some(6),
        ..EncodeOptions::default()
    };
    let e = tok
        .encode_with("The quick brown fox jumps over the lazy dog.", &opts)
        .unwrap();
    assert_eq!(e.ids, vec![101, 1996, 4248, 2829, 4419, 102]);
    let fixed = EncodeOptions {
        max_len: Some(8),
        padding: Padding::Fixed(8),
        ..EncodeOptions::default()
    };
    let e = tok.encode_with("A man.", &fixed).unwrap();
    assert_eq!(e.ids, vec![101, 1037, 2158, 1012, 102, 0, 0, 0]);
    assert_eq!(e.attention_mask, vec![1, 1, 1, 1, 1, 0, 0, 0]);
    // [CLS] a man . [SEP] a guitar . [SEP]
    let p = tok
        .encode_pair("A man.", "A guitar.", &EncodeOptions::default())
        .unwrap();
    assert_eq!(p.ids, vec![101, 1037, 2158, 1012, 102, 1037, 2858, 1012, 102]);
    assert_eq!(p.type_ids, vec![0, 0, 0, 0, 0, 1, 1, 1, 1]);
    // Truncated pair: longest first, specials kept.
    let p = tok
        .encode_pair("A man is playing a guitar.", "A guitar.", &opts)
        .unwrap();
    assert_eq!(p.ids.len(), 6);
    assert_eq!((p.ids[0], p.ids[5]), (101, 102));
    assert_eq!(p.type_ids.iter().filter(|&&t| t == 1).count(), 2);
    let e = tok
        .encode_with(
            "x",
            &EncodeOptions {
                max_len: Some(1),
                ..EncodeOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_len 1") && e.contains("2 special tokens"), "{e}");
    // Without special tokens, as the TextTokenizer trait encodes.
    let plain = TextTokenizer::encode(tok, "A man.").unwrap();
    assert_eq!(plain, vec![1037, 2158, 1012]);
    assert_eq!(TextTokenizer::decode(tok, &plain).unwrap(), "a man.");
}

#[test]
fn smollm2_loads_and_encodes_the_reference_prompt() {
    let refs = json("smollm2/smollm2_refs.json");
    let tok = Tokenizer::from_file(fixture("smollm2/tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    let prompt = refs["prompt"].as_str().unwrap();
    let want = ids(&refs["input_ids"]);
    assert_eq!(tok.encode(prompt, false).unwrap(), want);
    assert_eq!(tok.decode(&want, false).unwrap(), prompt);
    let greedy = ids(&refs["greedy_ids_numpy"]);
    assert_eq!(
        tok.decode(&greedy, false).unwrap(),
        refs["greedy_text"].as_str().unwrap()
    );
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    let mut tok = tok;
    assert_eq!(tok.eos_id(), Some(0)); // <|endoftext|> comes first in the list
    tok.set_eos_token("<|im_end|>").unwrap();
    assert_eq!(tok.eos_id(), Some(2));
    assert!(tok.set_eos_token("<nope>").is_err());
}

#[test]
fn a_tokenizer_json_that_does_not_parse_is_an_error_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("kiln-text-badtok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let truncated = dir.join("truncated.json");
    let good = std::fs::read(fixture("bert/tokenizer.json")).unwrap();
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let e = Tokenizer::from_file(&truncated).unwrap_err().to_string();
    assert!(
        e.contains("truncated.json") && e.contains("not a valid tokenizer.json") && e.contains("line"),
        "{e}"
    );
    let wrong = dir.join("wrong.json");
    std::fs::write(&wrong, br#"{"model": {"type": "Nope"}}"#).unwrap();
    let e = Tokenizer::from_file(&wrong).unwrap_err().to_string();
    assert!(e.contains("wrong.json"), "{e}");
    let e = Tokenizer::from_file(dir.join("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.json"), "{e}");
    // The generic loader gives the same error.
    let e = kiln_data::text::load_tokenizer(&truncated)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("truncated.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn decoding_an_id_outside_the_vocabulary_is_an_error() {
    let e = gpt2().decode(&[464, 50257], false).unwrap_err().to_string();
    assert!(e.contains("id 50257") && e.contains("position 1"), "{e}");
}

#[test]
fn load_tokenizer_dispatches_on_the_file() {
    let t = kiln_data::text::load_tokenizer(gpt2_path()).unwrap();
    assert_eq!(t.vocab_size(), 50257);
    assert_eq!(t.encode("Hello world").unwrap(), vec![15496, 995]);
}

/// A JSON syntax error inside the "decoder" object made `tokenizers` panic (found by fuzzing,
/// `fuzz/regressions/tokenizer_json/`): it is an error naming the file.
#[test]
fn a_syntax_error_inside_the_decoder_is_an_error_not_a_panic() {
    let text = r#"{"version": "1.0", "decoder": {H": 39, "type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {}, "merges": []}}"#;
    let Err(e) = Tokenizer::from_bytes(text.as_bytes(), "bad/tokenizer.json") else {
        panic!("a tokenizer.json with a syntax error was accepted");
    };
    let e = e.to_string();
    assert!(e.contains("bad/tokenizer.json") && e.contains("not JSON"), "{e}");
    // Likewise a byte that is not UTF-8 inside a decoder key.
    let mut bytes = br#"{"version": "1.0", "decoder": {"type": "ByteLevel", "add_pr"#.to_vec();
    bytes.push(0xf3);
    bytes.extend_from_slice(br#"efix_space": true}, "model": {"type": "BPE", "vocab": {}, "merges": []}}"#);
    assert!(Tokenizer::from_bytes(&bytes, "bad/tokenizer.json").is_err());
}
