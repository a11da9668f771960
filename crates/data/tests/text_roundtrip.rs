//! decode(encode(x)) == x on generated strings (GPT-2 on arbitrary Unicode, the char tokenizer
//! over its alphabet), and parallel corpus encoding equals encoding the whole text at once.

use std::path::Path;
use std::sync::OnceLock;

use kiln_data::text::corpus::split_chunks;
use kiln_data::text::{encode_corpus, CharTokenizer, TextTokenizer, Tokenizer};
use proptest::prelude::*;

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn gpt2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_file(repo("data/tokenizers/gpt2/tokenizer.json")).unwrap())
}

fn shakespeare() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| std::fs::read_to_string(repo("data/text/tinyshakespeare.txt")).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn gpt2_decode_encode_is_identity(s in any::<String>()) {
        let tok = gpt2();
        let ids = tok.encode(&s, false).unwrap();
        prop_assert_eq!(tok.decode(&ids, false).unwrap(), s);
    }

    #[test]
    fn gpt2_round_trips_mixed_scripts(s in "[a-zA-Z0-9 \n\t.,'!?éü日本語🤖\\x00-\\x1f]{0,64}") {
        let tok = gpt2();
        let ids = TextTokenizer::encode(tok, &s).unwrap();
        prop_assert_eq!(TextTokenizer::decode(tok, &ids).unwrap(), s);
    }

    #[test]
    fn char_tokenizer_round_trips_over_its_alphabet(
        picks in proptest::collection::vec(0usize..65, 0..200)
    ) {
        static C: OnceLock<CharTokenizer> = OnceLock::new();
        let tok = C.get_or_init(|| CharTokenizer::from_text(shakespeare()));
        let s: String = picks.iter().map(|&i| tok.chars()[i]).collect();
        let ids = tok.encode(&s).unwrap();
        prop_assert_eq!(ids.iter().map(|&i| i as usize).collect::<Vec<_>>(), picks);
        prop_assert_eq!(tok.decode(&ids).unwrap(), s);
    }
}

#[test]
fn tinyshakespeare_has_65_characters() {
    let tok = CharTokenizer::from_text(shakespeare());
    assert_eq!(tok.vocab_size(), 65);
    assert_eq!(tok.chars()[0], '\n');
    assert_eq!(tok.chars()[1], ' ');
    assert_eq!(shakespeare().chars().count(), 1_115_394);
    let e = tok.encode("Romeo é").unwrap_err().to_string();
    assert!(e.contains("'é'") && e.contains("position 6"), "{e}");
    let dir = std::env::temp_dir().join(format!("kiln-text-char-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("char_tokenizer.json");
    tok.save(&p).unwrap();
    assert_eq!(CharTokenizer::load(&p).unwrap(), tok);
    let any = kiln_data::text::load_tokenizer(&p).unwrap();
    assert_eq!(any.vocab_size(), 65);
    assert_eq!(any.eos_id(), None);
    assert_eq!(any.encode("\n ").unwrap(), vec![0, 1]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn chunked_parallel_encoding_equals_whole_text_encoding() {
    let text = &shakespeare()[..120_000];
    let tok = gpt2();
    let whole = tok.encode(text, false).unwrap();
    // Small chunks make hundreds of cuts.
    assert!(split_chunks(text, 500).len() > 100);
    let chunked = encode_corpus(tok, text, 500).unwrap();
    assert_eq!(chunked.len(), whole.len());
    assert_eq!(chunked, whole);
    let char_tok = CharTokenizer::from_text(text);
    assert_eq!(
        encode_corpus(&char_tok, text, 777).unwrap(),
        char_tok.encode(text).unwrap()
    );
}
