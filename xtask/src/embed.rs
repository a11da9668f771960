//! `cargo xtask embed`: sentence embeddings of texts with a BERT encoder from a Hugging Face
//! directory (`config.json`, `model.safetensors`, `tokenizer.json`), printed as JSON or as the
//! cosine-similarity matrix.

use std::path::PathBuf;

use anyhow::{bail, Context};
use kiln::model_crates::bert::{hf_tokenizer, load_hf_dir, EmbedOptions};
use kiln::zoo::{Model, Task};

/// Options of `cargo xtask embed`.
#[derive(clap::Args)]
pub struct EmbedArgs {
    /// Registered embedding model.
    #[arg(long, default_value = "all-minilm-l6-v2")]
    model: String,
    /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    weights: PathBuf,
    /// Print `{"model", "dim", "embeddings"}` as JSON instead of the similarity table.
    #[arg(long)]
    json: bool,
    /// Read the texts from this file, one a line (blank lines skipped), after any TEXT arguments.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Most tokens per text, `[CLS]` and `[SEP]` included (default: the directory's
    /// sentence_bert_config.json `max_seq_length`, else the model's position limit).
    #[arg(long)]
    max_len: Option<usize>,
    /// A text longer than the limit is an error instead of being truncated with a warning.
    #[arg(long)]
    no_truncate: bool,
    /// The texts.
    texts: Vec<String>,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let entry = kiln::find_model(&args.model)?;
    if entry.task != Task::Embedding {
        bail!(
            "model {} is a {} model; embed needs an embedding model",
            entry.name,
            entry.task
        );
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut texts = args.texts.clone();
    if let Some(file) = &args.file {
        let content = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        texts.extend(
            content
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    if texts.is_empty() {
        bail!("no texts to embed: give TEXT arguments or --file with one text a line");
    }
    if !args.weights.is_dir() {
        bail!(
            "--weights {} is not a Hugging Face model directory",
            args.weights.display()
        );
    }
    let (model, report) = load_hf_dir(&args.weights, entry.name)?;
    // Inference only: pack each weight for the GEMM once instead of on every batch.
    model.keep_packed_weights(true);
    let tokenizer = hf_tokenizer(&args.weights)?;
    let options = EmbedOptions {
        batch_size: args.batch_size,
        max_len: args.max_len.or(report.max_seq_length),
        truncate: !args.no_truncate,
    };
    let out = model.embed(&tokenizer, &texts, &options)?;
    for t in &out.truncated {
        eprintln!(
            "warning: text {} has {} tokens; truncated to {} (--no-truncate makes this an error)",
            t.index, t.tokens, t.limit
        );
    }
    if args.json {
        // Written by hand to keep the documented key order (serde_json sorts object keys).
        println!(
            "{{\"model\":{},\"dim\":{},\"embeddings\":{}}}",
            serde_json::Value::from(entry.name),
            model.hidden_size(),
            serde_json::json!(out.embeddings)
        );
        return Ok(());
    }
    print_similarities(entry.name, &texts, &out.embeddings);
    Ok(())
}

/// The cosine similarities of unit vectors as a table, then the texts by row number.
fn print_similarities(model: &str, texts: &[String], embeddings: &[Vec<f32>]) {
    let n = embeddings.len();
    let dim = embeddings.first().map_or(0, Vec::len);
    println!("{model}: {n} texts, {dim} dimensions; cosine similarity");
    let header: String = (0..n).map(|j| format!("{:>8}", format!("[{j}]"))).collect();
    println!("{:>6}{header}", "");
    for (i, a) in embeddings.iter().enumerate() {
        let row: String = embeddings
            .iter()
            .map(|b| format!("{:>8.4}", a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()))
            .collect();
        println!("{:>6}{row}", format!("[{i}]"));
    }
    for (i, t) in texts.iter().enumerate() {
        let short: String = t.chars().take(70).collect();
        let more = if t.chars().count() > 70 { "..." } else { "" };
        println!("[{i}] {short}{more}");
    }
}
