//! The real all-MiniLM-L6-v2 (Hugging Face directory from the package registry, fetched by
//! `scripts/fetch_registry_models.sh`) against the references of `tests/fixtures/minilm`
//! (Hugging Face transformers + sentence-transformers): token ids, last hidden states, pooler
//! outputs and sentence embeddings of three sentences, alone and as one padded batch.
//!
//! Without the weights these tests print that they are skipped; with `KILN_REQUIRE_WEIGHTS=1`
//! (CI) missing weights fail them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_bert::{hf_tokenizer, load_hf_dir, BertInput, BertModel, EmbedOptions};
use kiln_data::text::Tokenizer;
use kiln_tensor::Tensor;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm")
}

/// The model directory, or `None` (after saying why) when it is absent and not required.
fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_REGISTRY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/registry"));
    let path = dir.join("all-minilm-l6-v2");
    if path.join("model.safetensors").is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("KILN_REQUIRE_WEIGHTS").as_deref() != Ok("1"),
        "KILN_REQUIRE_WEIGHTS=1 but {} is missing (run scripts/fetch_registry_models.sh data/registry)",
        path.join("model.safetensors").display()
    );
    eprintln!(
        "skipped: {} is absent (fetch it with scripts/fetch_registry_models.sh data/registry)",
        path.join("model.safetensors").display()
    );
    None
}

/// The model and tokenizer, loaded once for all tests of this file.
fn loaded(dir: &Path) -> &'static (BertModel, Tokenizer) {
    static MODEL: OnceLock<(BertModel, Tokenizer)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let (model, report) = load_hf_dir(dir, "all-minilm-l6-v2").unwrap();
        assert_eq!(report.ignored, ["embeddings.position_ids"]);
        assert_eq!(report.max_seq_length, Some(256));
        (model, hf_tokenizer(dir).unwrap())
    })
}

fn refs() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("bert_refs.json")).unwrap()).unwrap()
}

fn npy(name: &str) -> Tensor {
    kiln_tensor::io::load_npy(fixtures().join(format!("{name}.npy"))).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(kiln_tensor::DType::F32)
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn sentences(r: &serde_json::Value) -> Vec<String> {
    r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn token_ids_match_the_reference_tokenizer() {
    let Some(dir) = model_dir() else { return };
    let (model, tok) = loaded(&dir);
    let r = refs();
    let texts = sentences(&r);
    let (ids, truncated) = model.tokenize(tok, &texts, &EmbedOptions::default()).unwrap();
    assert!(truncated.is_empty());
    for (i, s) in r["per_sentence"].as_array().unwrap().iter().enumerate() {
        let want: Vec<u32> = s["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids[i], want, "sentence {i}");
    }
    let batch_ids: Vec<u32> = f32s(&npy("batch_input_ids")).iter().map(|&x| x as u32).collect();
    let input = BertInput::padded(&ids, 0);
    assert_eq!(input.ids, batch_ids);
    let mask: Vec<u32> = f32s(&npy("batch_attention_mask"))
        .iter()
        .map(|&x| x as u32)
        .collect();
    assert_eq!(input.attention_mask, mask);
}

#[test]
fn each_sentence_alone_matches_hidden_states_pooler_and_embedding() {
    let Some(dir) = model_dir() else { return };
    let (model, tok) = loaded(&dir);
    let texts = sentences(&refs());
    let (ids, _) = model.tokenize(tok, &texts, &EmbedOptions::default()).unwrap();
    for (i, seq) in ids.iter().enumerate() {
        let out = model
            .forward_input(&BertInput::padded(std::slice::from_ref(seq), 0))
            .unwrap();
        let hidden = max_abs_diff(
            &f32s(&out.last_hidden_state),
            &f32s(&npy(&format!("s{i}_last_hidden_state"))),
        );
        let pooler = max_abs_diff(
            &f32s(&out.pooler_output),
            &f32s(&npy(&format!("s{i}_pooler_output"))),
        );
        let emb = max_abs_diff(
            &out.sentence_embeddings().unwrap()[0],
            &f32s(&npy(&format!("s{i}_sentence_embedding"))),
        );
        eprintln!(
            "sentence {i}: max abs error hidden {hidden:.3e}, pooler {pooler:.3e}, embedding {emb:.3e}"
        );
        assert!(hidden <= 1e-4, "sentence {i}: last_hidden_state off by {hidden}");
        assert!(pooler <= 1e-4, "sentence {i}: pooler_output off by {pooler}");
        assert!(emb <= 1e-5, "sentence {i}: sentence embedding off by {emb}");
    }
}

#[test]
fn the_padded_batch_matches_the_reference_and_each_sentence_alone() {
    let Some(dir) = model_dir() else { return };
    let (model, tok) = loaded(&dir);
    let r = refs();
    let texts = sentences(&r);
    let (ids, _) = model.tokenize(tok, &texts, &EmbedOptions::default()).unwrap();
    let input = BertInput::padded(&ids, 0);
    let out = model.forward_input(&input).unwrap();
    let got = f32s(&out.last_hidden_state);
    let want = f32s(&npy("batch_last_hidden_state"));
    // Only the real tokens' rows are defined the same way by both (padding rows differ freely).
    let (l, d) = (input.seq_len, model.hidden_size());
    let mut hidden = 0f32;
    for (row, &m) in input.attention_mask.iter().enumerate() {
        if m == 1 {
            hidden = hidden.max(max_abs_diff(
                &got[row * d..(row + 1) * d],
                &want[row * d..(row + 1) * d],
            ));
        }
    }
    let emb: Vec<f32> = out.sentence_embeddings().unwrap().concat();
    let emb_err = max_abs_diff(&emb, &f32s(&npy("batch_sentence_embeddings")));
    eprintln!(
        "padded batch ({} x {l}): max abs error hidden {hidden:.3e}, embeddings {emb_err:.3e}",
        input.batch
    );
    assert!(hidden <= 1e-4, "batch last_hidden_state off by {hidden}");
    assert!(emb_err <= 1e-5, "batch sentence embeddings off by {emb_err}");

    // Through the public API (sorted, padded batches) and each sentence alone.
    let all = model.embed(tok, &texts, &EmbedOptions::default()).unwrap();
    for (i, seq) in ids.iter().enumerate() {
        let alone = model
            .sentence_embeddings(&BertInput::padded(std::slice::from_ref(seq), 0))
            .unwrap();
        let diff = max_abs_diff(&all.embeddings[i], &alone[0]);
        assert!(diff <= 1e-6, "sentence {i}: batched vs alone {diff}");
    }
    // The cosine similarities of the reference.
    let cos = r["cosine_similarity"].as_array().unwrap();
    for (i, row) in cos.iter().enumerate() {
        for (j, want) in row.as_array().unwrap().iter().enumerate() {
            let c: f32 = all.embeddings[i]
                .iter()
                .zip(&all.embeddings[j])
                .map(|(a, b)| a * b)
                .sum();
            let want = want.as_f64().unwrap() as f32;
            assert!((c - want).abs() < 1e-5, "cos[{i}][{j}] {c} vs {want}");
        }
    }
}

#[test]
fn long_texts_are_truncated_to_the_position_limit_or_refused() {
    let Some(dir) = model_dir() else { return };
    let (model, tok) = loaded(&dir);
    let long = vec!["word ".repeat(600)];
    let out = model.embed(tok, &long, &EmbedOptions::default()).unwrap();
    assert_eq!(out.truncated.len(), 1);
    assert_eq!((out.truncated[0].tokens, out.truncated[0].limit), (602, 512));
    let strict = EmbedOptions {
        truncate: false,
        ..EmbedOptions::default()
    };
    let err = model.embed(tok, &long, &strict).unwrap_err().to_string();
    assert!(err.contains("602 tokens") && err.contains("512"), "{err}");
    let none: Vec<String> = Vec::new();
    assert!(model.embed(tok, &none, &EmbedOptions::default()).is_err());
}
