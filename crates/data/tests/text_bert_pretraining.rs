//! BERT pre-training collation: masked-LM statistics over > 100k tokens, specials never masked,
//! determinism per seed; next-sentence pairs 50/50 with the right layout.

use std::path::Path;

use kiln_data::text::{nsp_pairs, MlmConfig, Tokenizer, IGNORE_INDEX};
use kiln_tensor::TensorRng;

const CLS: u32 = 101;
const SEP: u32 = 102;
const PAD: u32 = 0;
const MASK: u32 = 103;

fn bert_config() -> MlmConfig {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text/bert/tokenizer.json");
    MlmConfig::from_tokenizer(&Tokenizer::from_file(p).unwrap()).unwrap()
}

/// `n` sequences `[CLS] w... [SEP]` of lengths 20..=200 with ids in the WordPiece range.
fn sequences(n: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = TensorRng::new(seed);
    (0..n)
        .map(|_| {
            let len = 20 + rng.next_below(181) as usize;
            let mut s = vec![CLS];
            s.extend((0..len - 2).map(|_| 999 + rng.next_below(30522 - 999) as u32));
            s.push(SEP);
            s
        })
        .collect()
}

#[test]
fn config_from_the_bert_tokenizer() {
    let c = bert_config();
    assert_eq!(c.mask_id, MASK);
    assert_eq!(c.vocab_size, 30522);
    assert_eq!(c.special_ids, vec![0, 100, 101, 102, 103]);
    assert_eq!(
        (c.mask_prob, c.mask_token_prob, c.random_token_prob),
        (0.15, 0.8, 0.1)
    );
}

#[test]
fn masking_statistics_over_100k_tokens() {
    let cfg = bert_config();
    let seqs = sequences(1100, 1);
    let batch = cfg.collate(&seqs, PAD, 42).unwrap();
    let ids = batch.input_ids.to_vec2::<i64>().unwrap();
    let labels = batch.labels.to_vec2::<i64>().unwrap();
    let attn = batch.attention_mask.to_vec2::<i64>().unwrap();
    let (mut candidates, mut selected, mut masked, mut kept, mut random) = (0, 0, 0, 0, 0);
    for (r, s) in seqs.iter().enumerate() {
        for (i, &orig) in s.iter().enumerate() {
            assert_eq!(attn[r][i], 1);
            let special = cfg.special_ids.contains(&orig);
            if special {
                // Never selected, never changed.
                assert_eq!(labels[r][i], IGNORE_INDEX);
                assert_eq!(ids[r][i], orig as i64);
                continue;
            }
            candidates += 1;
            if labels[r][i] == IGNORE_INDEX {
                assert_eq!(ids[r][i], orig as i64);
                continue;
            }
            selected += 1;
            assert_eq!(labels[r][i], orig as i64);
            let now = ids[r][i];
            if now == MASK as i64 {
                masked += 1;
            } else if now == orig as i64 {
                kept += 1;
            } else {
                random += 1;
                assert!(!cfg.special_ids.contains(&(now as u32)) && now < 30522);
            }
        }
        // Padding: pad id, attention 0, label -100.
        for i in s.len()..ids[r].len() {
            assert_eq!(
                (ids[r][i], attn[r][i], labels[r][i]),
                (PAD as i64, 0, IGNORE_INDEX)
            );
        }
    }
    assert!(candidates >= 100_000, "{candidates} tokens");
    let frac = selected as f64 / candidates as f64;
    assert!((frac - 0.15).abs() <= 0.005, "selected {frac}");
    let f = |n: usize| n as f64 / selected as f64;
    assert!((f(masked) - 0.8).abs() <= 0.015, "[MASK] {}", f(masked));
    assert!((f(random) - 0.1).abs() <= 0.015, "random {}", f(random));
    assert!((f(kept) - 0.1).abs() <= 0.015, "kept {}", f(kept));
}

#[test]
fn masking_is_deterministic_per_seed() {
    let cfg = bert_config();
    let seqs = sequences(50, 2);
    let a = cfg.collate(&seqs, PAD, 7).unwrap();
    let b = cfg.collate(&seqs, PAD, 7).unwrap();
    let c = cfg.collate(&seqs, PAD, 8).unwrap();
    let v = |t: &kiln_tensor::Tensor| t.to_vec::<i64>().unwrap();
    assert_eq!(v(&a.input_ids), v(&b.input_ids));
    assert_eq!(v(&a.labels), v(&b.labels));
    assert_ne!(v(&a.labels), v(&c.labels));
    // One sequence through `mask` with the same generator stream equals the first row.
    let one = cfg.mask(&seqs[0], &mut TensorRng::new(7)).unwrap();
    let row: Vec<i64> = v(&a.labels)[..seqs[0].len()].to_vec();
    assert_eq!(one.labels, row);
}

#[test]
fn bad_masking_settings_are_errors() {
    let mut cfg = MlmConfig::new(5, 4, vec![]);
    assert!(cfg.mask(&[1, 2], &mut TensorRng::new(0)).is_err()); // mask id >= vocab
    cfg = MlmConfig::new(0, 10, vec![]);
    cfg.mask_token_prob = 0.95;
    assert!(cfg.mask(&[1, 2], &mut TensorRng::new(0)).is_err()); // 0.95 + 0.1 > 1
}

fn documents(n_docs: u32, n_sent: u32) -> Vec<Vec<Vec<u32>>> {
    // Sentence j of document d is [1000 + d, 5000 + j, 5000 + j] (ids identify it).
    (0..n_docs)
        .map(|d| (0..n_sent).map(|j| vec![1000 + d, 5000 + j, 5000 + j]).collect())
        .collect()
}

#[test]
fn next_sentence_pairs_are_half_true_half_random() {
    let docs = documents(100, 40);
    let pairs = nsp_pairs(&docs, CLS, SEP, None, 11).unwrap();
    assert_eq!(pairs.len(), 100 * 39);
    let mut next = 0;
    for p in &pairs {
        // [CLS] a(3) [SEP] b(3) [SEP]
        assert_eq!(p.input_ids.len(), 9);
        assert_eq!((p.input_ids[0], p.input_ids[4], p.input_ids[8]), (CLS, SEP, SEP));
        assert_eq!(p.token_type_ids, vec![0, 0, 0, 0, 0, 1, 1, 1, 1]);
        let (da, ja) = (p.input_ids[1], p.input_ids[2]);
        let (db, jb) = (p.input_ids[5], p.input_ids[6]);
        if p.is_next {
            next += 1;
            assert_eq!((db, jb), (da, ja + 1));
            assert_eq!(p.label(), 0);
        } else {
            assert_ne!(db, da, "a random sentence comes from another document");
            assert_eq!(p.label(), 1);
        }
    }
    let frac = next as f64 / pairs.len() as f64;
    assert!((frac - 0.5).abs() <= 0.03, "is-next fraction {frac}");
    assert_eq!(nsp_pairs(&docs, CLS, SEP, None, 11).unwrap(), pairs);
    assert!(nsp_pairs(&docs[..1], CLS, SEP, None, 0).is_err());
}

#[test]
fn next_sentence_pairs_truncate_and_collate_with_masking() {
    let docs = vec![
        vec![(0..50).collect::<Vec<u32>>(), (1000..1010).collect()],
        vec![(2000..2040).collect::<Vec<u32>>(), (3000..3005).collect()],
    ];
    let pairs = nsp_pairs(&docs, CLS, SEP, Some(32), 5).unwrap();
    assert_eq!(pairs.len(), 2);
    for p in &pairs {
        assert!(p.input_ids.len() <= 32);
        assert_eq!(*p.input_ids.last().unwrap(), SEP);
    }
    let cfg = bert_config();
    let batch = cfg.collate_pairs(&pairs, PAD, 3).unwrap();
    let labels: Vec<i64> = pairs.iter().map(|p| p.label()).collect();
    assert_eq!(
        batch.next_sentence_labels.unwrap().to_vec::<i64>().unwrap(),
        labels
    );
    let types = batch.token_type_ids.to_vec2::<i64>().unwrap();
    for (r, p) in pairs.iter().enumerate() {
        let want: Vec<i64> = p.token_type_ids.iter().map(|&t| t as i64).collect();
        assert_eq!(types[r][..want.len()], want[..]);
    }
}
