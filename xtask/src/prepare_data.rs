//! `cargo xtask prepare-data`: tokenize a text corpus into train/validation token shards for
//! language-model training.
//!
//! Writes, in `--out`: `train.bin` and `val.bin` (token shards, see `kiln::data::text::shard`),
//! the tokenizer (`tokenizer.json` for a Hugging Face tokenizer, `char_tokenizer.json` for the
//! character tokenizer) and `meta.json` (tokenizer kind and file, vocabulary size, token counts).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use kiln::data::text::corpus::DEFAULT_CHUNK_BYTES;
use kiln::data::text::lm::split_point;
use kiln::data::text::shard::write_shard;
use kiln::data::text::{encode_corpus, load_tokenizer, CharTokenizer, TextTokenizer, TokenDType, Tokenizer};

/// Options of `cargo xtask prepare-data`.
#[derive(clap::Args)]
pub struct PrepareDataArgs {
    /// The corpus: a UTF-8 text file.
    #[arg(long)]
    corpus: PathBuf,
    /// `gpt2` (the GPT-2 tokenizer in data/tokenizers/gpt2/), `char` (a character tokenizer
    /// built from the corpus), or the path of a tokenizer file: a Hugging Face tokenizer.json or
    /// a kiln character tokenizer (the `tokenizer.json` of a char-level run).
    #[arg(long)]
    tokenizer: String,
    /// Output directory (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Fraction of the token stream kept for validation: its last tokens.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
}

fn gpt2_tokenizer_path() -> PathBuf {
    // xtask runs from the workspace root through the cargo alias; fall back to the manifest's parent.
    let rel = Path::new("data/tokenizers/gpt2/tokenizer.json");
    if rel.exists() {
        return rel.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The tokenizer, its kind for meta.json, and how to write it into the output directory.
enum Choice {
    File {
        tokenizer: Box<dyn TextTokenizer>,
        kind: &'static str,
        source: PathBuf,
    },
    Char(CharTokenizer),
}

impl Choice {
    fn resolve(arg: &str, corpus: &str) -> anyhow::Result<Choice> {
        Ok(match arg {
            "char" => Choice::Char(CharTokenizer::from_text(corpus)),
            "gpt2" => {
                let source = gpt2_tokenizer_path();
                Choice::File {
                    tokenizer: Box::new(Tokenizer::from_file(&source)?),
                    kind: "gpt2",
                    source,
                }
            }
            path => {
                let source = PathBuf::from(path);
                if !source.exists() {
                    bail!("--tokenizer {path}: expected gpt2, char or the path of a tokenizer.json, and no such file exists");
                }
                Choice::File {
                    tokenizer: load_tokenizer(&source)?,
                    kind: "file",
                    source,
                }
            }
        })
    }

    fn tokenizer(&self) -> &dyn TextTokenizer {
        match self {
            Choice::File { tokenizer, .. } => tokenizer.as_ref(),
            Choice::Char(c) => c,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Choice::File { kind, .. } => kind,
            Choice::Char(_) => "char",
        }
    }

    /// Write the tokenizer into `out`; returns its file name.
    fn save(&self, out: &Path) -> anyhow::Result<&'static str> {
        match self {
            Choice::File { source, .. } => {
                let name = "tokenizer.json";
                // A byte copy keeps the file exactly as given.
                std::fs::copy(source, out.join(name)).with_context(|| {
                    format!("copying {} to {}", source.display(), out.join(name).display())
                })?;
                Ok(name)
            }
            Choice::Char(c) => {
                let name = "char_tokenizer.json";
                c.save(out.join(name))?;
                Ok(name)
            }
        }
    }
}

pub fn run(args: PrepareDataArgs) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&args.val_fraction) {
        bail!(
            "--val-fraction {}: expected a fraction in [0, 1)",
            args.val_fraction
        );
    }
    let text = std::fs::read_to_string(&args.corpus)
        .with_context(|| format!("reading the corpus {}", args.corpus.display()))?;
    let choice = Choice::resolve(&args.tokenizer, &text)?;
    let tok = choice.tokenizer();
    let vocab_size = tok.vocab_size();

    let start = Instant::now();
    let tokens = encode_corpus(tok, &text, DEFAULT_CHUNK_BYTES)
        .with_context(|| format!("tokenizing {}", args.corpus.display()))?;
    let secs = start.elapsed().as_secs_f64();
    if tokens.is_empty() {
        bail!("the corpus {} gives no token", args.corpus.display());
    }
    let n_val = split_point(tokens.len(), args.val_fraction);
    let n_train = tokens.len() - n_val;
    // An empty shard cannot be trained or validated on (and used to be written, with exit 0).
    if n_train == 0 || n_val == 0 {
        bail!(
            "--val-fraction {} splits the corpus's {} tokens into {n_train} for training and {n_val} for validation; both need at least one token (expected a fraction that leaves some on each side)",
            args.val_fraction,
            tokens.len()
        );
    }

    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    write_shard(args.out.join("train.bin"), &tokens[..n_train], vocab_size)?;
    write_shard(args.out.join("val.bin"), &tokens[n_train..], vocab_size)?;
    let tokenizer_file = choice.save(&args.out)?;
    let dtype = match TokenDType::for_vocab(vocab_size) {
        TokenDType::U16 => "u16",
        TokenDType::U32 => "u32",
    };
    let meta = serde_json::json!({
        "corpus": args.corpus.display().to_string(),
        "corpus_bytes": text.len(),
        "tokenizer": choice.kind(),
        "tokenizer_file": tokenizer_file,
        "vocab_size": vocab_size,
        "eos_id": tok.eos_id(),
        "token_dtype": dtype,
        "val_fraction": args.val_fraction,
        "total_tokens": tokens.len(),
        "train_file": "train.bin",
        "train_tokens": n_train,
        "val_file": "val.bin",
        "val_tokens": n_val,
    });
    let meta_path = args.out.join("meta.json");
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)? + "\n")
        .with_context(|| format!("writing {}", meta_path.display()))?;
    println!(
        "{}: {} bytes -> {} tokens with {} (vocab {vocab_size}, {dtype}) in {secs:.2} s ({:.0} tokens/s)",
        args.corpus.display(),
        text.len(),
        tokens.len(),
        choice.kind(),
        tokens.len() as f64 / secs.max(1e-9),
    );
    println!(
        "train {n_train} tokens, val {n_val} tokens -> {}/{{train.bin, val.bin, {tokenizer_file}, meta.json}}",
        args.out.display()
    );
    Ok(())
}
