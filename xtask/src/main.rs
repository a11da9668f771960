//! `cargo xtask`: kiln's command runner (always built in release through the alias in
//! `.cargo/config.toml`).

mod baseline;
mod bench;
mod bench_decode;
mod bench_embed;
mod bench_llama;
mod bench_serve;
mod bench_suite;
mod chat;
mod datasets;
mod distributed;
mod embed;
mod exit;
mod generate;
mod models;
mod perplexity;
mod prepare_data;
mod serve;
mod signals;
mod train;
mod verify;

use clap::{Parser, Subcommand};

/// Training allocates and frees many multi-megabyte activation buffers per step; mimalloc reuses
/// them where glibc's malloc returns them to the kernel and page-faults them back in.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// kiln's developer and user commands.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    version,
    about = "kiln: train, evaluate and serve models; run benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (default: LeNet-5 on MNIST, 5 epochs) and report its test metrics.
    Train(Box<train::TrainArgs>),
    /// Evaluate a run or checkpoint on its dataset's test split.
    Eval(train::EvalArgs),
    /// Continue a prompt with a causal language model (greedy, temperature, top-k, top-p).
    Generate(Box<generate::GenerateArgs>),
    /// Chat with a causal LM in the terminal (its chat template, streamed answers, history).
    Chat(Box<chat::ChatArgs>),
    /// Serve a causal LM over an OpenAI-compatible HTTP API (completions, chat, SSE streaming).
    Serve(Box<serve::ServeArgs>),
    /// Sentence embeddings of texts with a BERT encoder (JSON or a cosine-similarity table).
    Embed(embed::EmbedArgs),
    /// Held-out perplexity of a causal LM on a text file (optionally with quantized weights).
    Perplexity(perplexity::PerplexityArgs),
    /// Tokenize a text corpus into train/validation token shards (gpt2, char or a tokenizer.json).
    PrepareData(prepare_data::PrepareDataArgs),
    /// List the registered models: name, family, task, parameter count.
    Models(models::ModelsArgs),
    /// Simple-model baselines of a dataset (`authors`: bag-of-words logistic regression).
    Baseline(baseline::BaselineArgs),
    /// Speed benchmarks: `train-lenet`, `train-mnist-cnn`, `train-resnet20`, `decode`, `train-gpt-tiny`, `llama`.
    Bench(bench::BenchArgs),
    /// Check every checkpoint of a run directory (sizes and checksums); fails if one is damaged.
    Verify(verify::VerifyArgs),
    /// Print the kiln crates this build links and the compute devices it can use.
    Info,
}

/// `mi_option_purge_delay` in mimalloc 2's `mimalloc.h` (the Rust bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory mapped: by default mimalloc returns it to the kernel after 10 ms, and a
/// training step (hundreds of ms) then faults its activations back in as fresh zeroed pages.
fn keep_freed_memory() {
    // SAFETY: setting an option is a plain store into mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() {
    keep_freed_memory();
    exit::install_panic_hook();
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli) {
        exit::fail(e);
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train::train(*args),
        Command::Eval(args) => train::eval(args),
        Command::Generate(args) => generate::run(*args),
        Command::Chat(args) => chat::run(*args),
        Command::Serve(args) => serve::run(*args),
        Command::Embed(args) => embed::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::PrepareData(args) => prepare_data::run(args),
        Command::Models(args) => models::run(args),
        Command::Baseline(args) => baseline::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Info => info(),
    }
}

fn info() -> anyhow::Result<()> {
    println!("kiln {}", env!("CARGO_PKG_VERSION"));
    println!("crates: {}", kiln::CRATES.join(", "));
    for dev in [kiln::tensor::Device::Cpu, kiln::tensor::Device::Cuda(0)] {
        match dev.ensure_available() {
            Ok(()) => println!("device {dev}: available"),
            Err(e) => println!("device {dev}: unavailable ({e})"),
        }
    }
    Ok(())
}
