//! Tokenization throughput: all of tiny-shakespeare (1.1 MB) with the GPT-2 byte-level BPE, as
//! one call and as parallel chunks ([`encode_corpus`]); criterion reports tokens/s ("elem/s").
//! Compare with `benches/reference/tokenize_python.py` (Python `tokenizers`, same file).
//!
//! `cargo bench -p kiln-data --bench tokenize`

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_data::text::corpus::DEFAULT_CHUNK_BYTES;
use kiln_data::text::{encode_corpus, CharTokenizer, Tokenizer};

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn tokenize(c: &mut Criterion) {
    let text = std::fs::read_to_string(repo("data/text/tinyshakespeare.txt"))
        .expect("data/text/tinyshakespeare.txt");
    let gpt2 = Tokenizer::from_file(repo("data/tokenizers/gpt2/tokenizer.json"))
        .expect("data/tokenizers/gpt2/tokenizer.json");
    let n = gpt2.encode(&text, false).expect("encode").len();
    println!(
        "tiny-shakespeare: {} bytes, {} GPT-2 tokens, {} threads",
        text.len(),
        n,
        rayon::current_num_threads()
    );
    let mut g = c.benchmark_group("tokenize_tinyshakespeare");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("gpt2_one_call", |b| {
        b.iter(|| gpt2.encode(&text, false).expect("encode"))
    });
    g.bench_function("gpt2_parallel_chunks", |b| {
        b.iter(|| encode_corpus(&gpt2, &text, DEFAULT_CHUNK_BYTES).expect("encode"))
    });
    let chars = CharTokenizer::from_text(&text);
    g.throughput(Throughput::Elements(text.chars().count() as u64));
    g.bench_function("char", |b| b.iter(|| chars.encode(&text).expect("encode")));
    g.finish();
}

criterion_group!(benches, tokenize);
criterion_main!(benches);
