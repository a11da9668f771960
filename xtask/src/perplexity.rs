//! `cargo xtask perplexity`: held-out perplexity of a causal LM on a text file, through the
//! generation path (so `--quantize` measures the weights generation reads): non-overlapping
//! windows of the context, each token predicted from the window's earlier tokens.

use std::path::PathBuf;

use anyhow::{bail, Context};
use kiln::zoo::Task;

use crate::generate::{apply_quantize, load, Loaded};

/// Options of `cargo xtask perplexity`.
#[derive(clap::Args)]
pub struct PerplexityArgs {
    /// Registered causal language model.
    #[arg(long)]
    model: String,
    /// Weights (as for `generate`: GGUF file, Hugging Face directory, run or checkpoint).
    #[arg(long)]
    weights: PathBuf,
    /// The text file.
    #[arg(long)]
    text: PathBuf,
    /// Start at this fraction of the file (0.9: its last 10%, the held-out split of `train`).
    #[arg(long, default_value_t = 0.9)]
    from: f64,
    /// Tokens to score (at most).
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    /// Window length (default: the model's context, at most 512).
    #[arg(long)]
    window: Option<usize>,
    /// Quantize the weights first: nf4, nf4-dq, int8, int8-outliers, or f32 (dequantize).
    #[arg(long)]
    quantize: Option<String>,
}

pub fn run(args: PerplexityArgs) -> anyhow::Result<()> {
    let entry = kiln::find_model(&args.model)?;
    if entry.task != Task::CausalLm {
        bail!(
            "model {} is a {} model; perplexity needs a causal LM",
            entry.name,
            entry.task
        );
    }
    if !(0.0..1.0).contains(&args.from) {
        bail!("--from {} must be in [0, 1)", args.from);
    }
    let Loaded {
        mut model,
        codec,
        tokenizer_dir,
        ..
    } = load(entry, &args.weights)?;
    model.set_training(false);
    let report = apply_quantize(&mut model, args.quantize.as_deref())?;
    let codec = codec.with_context(|| {
        format!(
            "perplexity needs a tokenizer; none in {}",
            tokenizer_dir.display()
        )
    })?;
    let text =
        std::fs::read_to_string(&args.text).with_context(|| format!("reading {}", args.text.display()))?;
    let mut start = (text.len() as f64 * args.from) as usize;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let mut ids = codec.encode_prompt(&text[start..])?;
    ids.truncate(args.tokens + 1);
    let lm = model.as_causal_lm().context("not a causal LM")?;
    let window = args
        .window
        .unwrap_or(512)
        .min(lm.context_len().unwrap_or(usize::MAX));
    if window < 2 || ids.len() < 2 {
        bail!(
            "need a window of at least 2 and at least 2 tokens (window {window}, {} tokens)",
            ids.len()
        );
    }
    let (mut nll, mut scored) = (0f64, 0usize);
    for chunk in ids.chunks(window) {
        let mut state = lm.start()?;
        for pair in chunk.windows(2) {
            let logits = state.feed(&pair[..1])?;
            let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let lse = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            nll += lse - logits[pair[1] as usize] as f64;
            scored += 1;
        }
    }
    let mean = nll / scored as f64;
    println!(
        "{}",
        serde_json::json!({
            "model": entry.name,
            "quantize": args.quantize.as_deref().unwrap_or("none"),
            "tokens_scored": scored,
            "window": window,
            "mean_nll": mean,
            "perplexity": mean.exp(),
            "weights": report,
        })
    );
    Ok(())
}
