//! Training tokenizers on tiny-shakespeare: byte-level BPE and WordPiece reach the requested
//! vocabulary, round-trip text, save and reload to the same ids.

use std::path::{Path, PathBuf};

use kiln_data::text::{train_bpe, train_wordpiece, EncodeOptions, Tokenizer, TrainOptions};

struct Corpus {
    dir: PathBuf,
    file: PathBuf,
}

impl Corpus {
    /// The first 200 kB of tiny-shakespeare in a temporary file.
    fn new(name: &str) -> Corpus {
        let dir = std::env::temp_dir().join(format!("kiln-text-train-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/text/tinyshakespeare.txt"),
        )
        .unwrap();
        let file = dir.join("corpus.txt");
        std::fs::write(&file, &text[..200_000]).unwrap();
        Corpus { dir, file }
    }
}

impl Drop for Corpus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn byte_level_bpe_trains_round_trips_and_reloads() {
    let c = Corpus::new("bpe");
    let tok = train_bpe(&[c.file.as_path()], &TrainOptions::bpe(600)).unwrap();
    assert_eq!(tok.vocab_size(), 600);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    assert_eq!(tok.eos_id(), Some(0));
    let line = "First Citizen:\nWe are accounted poor citizens, the patricians good.";
    let ids = tok.encode(line, false).unwrap();
    // Merges compress: far fewer tokens than bytes.
    assert!(ids.len() * 2 < line.len(), "{} tokens", ids.len());
    assert_eq!(tok.decode(&ids, false).unwrap(), line);
    // Text never seen (other scripts) still round-trips through the byte alphabet.
    let odd = "naïve 日本語 🤖\t<|endoftext|>";
    let odd_ids = tok.encode(odd, false).unwrap();
    assert_eq!(tok.decode(&odd_ids, false).unwrap(), odd);
    let saved = c.dir.join("bpe.json");
    tok.save(&saved).unwrap();
    let back = Tokenizer::from_file(&saved).unwrap();
    assert_eq!(back.encode(line, false).unwrap(), ids);
    assert_eq!(back.vocab_size(), 600);
}

#[test]
fn wordpiece_trains_with_bert_special_tokens() {
    let c = Corpus::new("wp");
    let tok = train_wordpiece(&[c.file.as_path()], &TrainOptions::wordpiece(800)).unwrap();
    assert!(
        tok.vocab_size() <= 800 && tok.vocab_size() > 700,
        "{}",
        tok.vocab_size()
    );
    for (t, id) in [
        ("[PAD]", 0),
        ("[UNK]", 1),
        ("[CLS]", 2),
        ("[SEP]", 3),
        ("[MASK]", 4),
    ] {
        assert_eq!(tok.token_to_id(t), Some(id));
    }
    let e = tok
        .encode_with("Before we proceed any further", &EncodeOptions::default())
        .unwrap();
    assert_eq!(e.ids[0], 2);
    assert_eq!(*e.ids.last().unwrap(), 3);
    // Lower-cased, split into known pieces, decoded back with ## pieces joined.
    assert_eq!(tok.decode(&e.ids, true).unwrap(), "before we proceed any further");
    // A character never seen in training is [UNK].
    let unk = tok.encode("日", false).unwrap();
    assert_eq!(unk, vec![1]);
    let saved = c.dir.join("wp.json");
    tok.save(&saved).unwrap();
    assert_eq!(
        Tokenizer::from_file(&saved)
            .unwrap()
            .encode("Citizen", true)
            .unwrap(),
        tok.encode("Citizen", true).unwrap()
    );
}

#[test]
fn training_errors_name_the_problem() {
    let missing = Path::new("no/such/corpus.txt");
    let e = train_bpe(&[missing], &TrainOptions::bpe(300))
        .unwrap_err()
        .to_string();
    assert!(e.contains("corpus.txt"), "{e}");
    let mut opts = TrainOptions::wordpiece(300);
    opts.special_tokens.retain(|t| t != "[UNK]");
    let c = Corpus::new("err");
    let e = train_wordpiece(&[c.file.as_path()], &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[UNK]"), "{e}");
    assert!(train_bpe(&[], &TrainOptions::bpe(300)).is_err());
}
