//! `cargo xtask chat`: a terminal chat with a causal LM of the zoo. Applies the model's chat
//! template, keeps the conversation (dropping the oldest turns when the context fills, and saying
//! so), reuses the KV cache of the conversation so far, streams the answer, stops it on Ctrl-C and
//! exits on EOF (or Ctrl-C at the prompt). With `--json` or a non-terminal stdin it reads one user
//! message per line and prints one answer per line (`--json`: one JSON object per answer).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use kiln::data::text::ChatMessage;
use kiln::zoo::generate::{CausalLm, DecodeState, Sampler, SamplingParams, TextStream, TokenHistory};
use kiln::zoo::Task;

use crate::generate::{apply_quantize, load, Codec, Loaded};

/// Options of `cargo xtask chat`.
#[derive(clap::Args)]
pub struct ChatArgs {
    /// Registered causal language model (e.g. smollm2-135m).
    #[arg(long)]
    model: String,
    /// Weights: a GGUF file, a Hugging Face directory, a run or checkpoint (as for `generate`).
    #[arg(long)]
    weights: PathBuf,
    /// System message (the template's default system turn otherwise).
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Softmax temperature; 0 = greedy (the sampling defaults are llama.cpp's).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f64,
    /// Sample among the k most likely tokens only (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling threshold, in (0, 1].
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f64,
    /// Keep tokens at least this fraction as likely as the most likely one.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    min_p: f64,
    /// Penalise tokens already in the conversation (> 0; 1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repetition_penalty: f64,
    /// Seed of the sampling generator (each answer continues the same stream of seeds).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use at most this many positions of the model's context.
    #[arg(long)]
    context: Option<usize>,
    /// Quantize the weights: nf4, nf4-dq, int8, int8-outliers (f32: dequantize).
    #[arg(long)]
    quantize: Option<String>,
    /// Print each answer as a JSON object on one line (for scripts).
    #[arg(long)]
    json: bool,
}

/// Why an answer ended.
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Finish {
    Stop,
    Length,
    Interrupted,
}

/// One answer as `--json` prints it.
#[derive(serde::Serialize)]
struct JsonAnswer<'a> {
    role: &'static str,
    content: &'a str,
    prompt_tokens: usize,
    completion_tokens: usize,
    finish_reason: Finish,
    dropped_turns: usize,
}

/// The conversation's KV cache: the state and the tokens it holds.
struct Cached<'m> {
    state: Box<dyn DecodeState + 'm>,
    ids: Vec<u32>,
    logits: Vec<f32>,
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let entry = kiln::find_model(&args.model)?;
    if entry.task != Task::CausalLm {
        bail!(
            "model {} is a {} model; chat needs a causal LM",
            entry.name,
            entry.task
        );
    }
    let Loaded {
        mut model,
        codec,
        tokenizer_dir,
        template,
    } = load(entry, &args.weights)?;
    model.set_training(false);
    apply_quantize(&mut model, args.quantize.as_deref())?;
    let lm = model
        .as_causal_lm()
        .with_context(|| format!("model {} does not implement generation", entry.name))?;
    let codec = codec.with_context(|| {
        format!(
            "chat needs a tokenizer; none found in {}",
            tokenizer_dir.display()
        )
    })?;
    let template = template.with_context(|| {
        format!(
            "chat needs a chat template (in the GGUF file or a tokenizer_config.json in {})",
            tokenizer_dir.display()
        )
    })?;
    let context = match (lm.context_len(), args.context) {
        (Some(c), Some(limit)) => c.min(limit),
        (Some(c), None) => c,
        (None, limit) => limit.unwrap_or(usize::MAX),
    };
    if args.max_tokens == 0 || args.max_tokens >= context {
        bail!(
            "--max-tokens {} must be between 1 and the context ({context}) - 1",
            args.max_tokens
        );
    }
    let params = SamplingParams {
        max_new_tokens: args.max_tokens,
        temperature: args.temperature,
        top_k: (args.top_k > 0).then_some(args.top_k),
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        stop_tokens: codec.stop_tokens(),
        ..Default::default()
    };
    params.validate()?;
    let mut sampler = Sampler::new(&params)?;

    // Ctrl-C stops the answer being generated; at the prompt it ends the chat.
    let generating = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (generating, interrupted) = (generating.clone(), interrupted.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                interrupted.store(true, Ordering::SeqCst);
            } else {
                println!();
                std::process::exit(130);
            }
        })
        .context("installing the Ctrl-C handler")?;
    }

    let interactive = std::io::stdin().is_terminal() && !args.json;
    if interactive {
        eprintln!(
            "kiln chat with {} ({} tokens of context). Ctrl-C stops an answer; Ctrl-D or Ctrl-C at the prompt exits.",
            entry.name, context
        );
    }
    let mut messages: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::system(s.clone()))
        .collect();
    let first_turn = messages.len();
    let mut cached: Option<Cached> = None;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            print!("> ");
            std::io::stdout().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        messages.push(ChatMessage::user(text));
        // The prompt: the whole conversation, oldest turns dropped until it fits.
        let mut dropped = 0;
        let prompt = loop {
            let ids = codec.encode_prompt(&template.render(&messages, true)?)?;
            if ids.len() + args.max_tokens <= context {
                break Some(ids);
            }
            if messages.len() - first_turn <= 1 {
                break None;
            }
            // Drop the oldest user turn and the answer after it.
            let n = if messages.len() - first_turn >= 2 { 2 } else { 1 };
            messages.drain(first_turn..first_turn + n);
            dropped += 1;
        };
        if dropped > 0 {
            eprintln!("note: the conversation outgrew the context of {context} tokens; dropped the {dropped} oldest turn(s)");
        }
        let Some(prompt) = prompt else {
            eprintln!("error: this message alone does not fit the context of {context} tokens with --max-tokens {}; it was not sent", args.max_tokens);
            messages.pop();
            continue;
        };
        generating.store(true, Ordering::SeqCst);
        interrupted.store(false, Ordering::SeqCst);
        let answer = answer(
            lm,
            &codec,
            &prompt,
            &params,
            &mut sampler,
            &mut cached,
            &interrupted,
            !args.json,
        );
        generating.store(false, Ordering::SeqCst);
        let (content, completion, finish) = answer?;
        if args.json {
            let out = JsonAnswer {
                role: "assistant",
                content: &content,
                prompt_tokens: prompt.len(),
                completion_tokens: completion,
                finish_reason: finish,
                dropped_turns: dropped,
            };
            println!("{}", serde_json::to_string(&out)?);
        } else {
            if finish == Finish::Interrupted {
                print!(" [stopped]");
            }
            println!();
        }
        std::io::stdout().flush()?;
        messages.push(ChatMessage::assistant(content));
    }
    if interactive {
        println!();
    }
    Ok(())
}

/// Generates one answer to `prompt`, feeding only what the cached conversation does not hold;
/// streams the text when `stream`. Returns the text, its token count and why it ended.
#[allow(clippy::too_many_arguments)]
fn answer<'m>(
    lm: &'m dyn CausalLm,
    codec: &Codec,
    prompt: &[u32],
    params: &SamplingParams,
    sampler: &mut Sampler,
    cached: &mut Option<Cached<'m>>,
    interrupted: &AtomicBool,
    stream: bool,
) -> anyhow::Result<(String, usize, Finish)> {
    // Reuse the cache when it holds a prefix of the new prompt (the usual case: the template
    // re-renders the earlier turns identically); otherwise start over.
    let reuse = cached
        .as_ref()
        .is_some_and(|c| c.ids.len() < prompt.len() && prompt.starts_with(&c.ids));
    if !reuse {
        let state = lm.start()?;
        *cached = Some(Cached {
            state,
            ids: Vec::new(),
            logits: Vec::new(),
        });
    }
    let c = cached.as_mut().context("no decoding state")?;
    c.logits = c.state.feed(&prompt[c.ids.len()..])?;
    c.ids = prompt.to_vec();
    let mut history = TokenHistory::new(prompt);
    let mut text = TextStream::new(codec, &[]);
    let mut out = String::new();
    let mut stdout = std::io::stdout().lock();
    let mut n = 0;
    let finish = loop {
        if interrupted.load(Ordering::SeqCst) {
            break Finish::Interrupted;
        }
        if n == params.max_new_tokens {
            break Finish::Length;
        }
        let id = sampler.sample_with(&c.logits, &history)?.id;
        if params.stop_tokens.contains(&id) {
            break Finish::Stop;
        }
        n += 1;
        history.push(id);
        let delta = text.push(id)?;
        if stream {
            write!(stdout, "{delta}")?;
            stdout.flush()?;
        }
        out += &delta;
        c.logits = c.state.feed(&[id])?;
        c.ids.push(id);
    };
    let tail = text.finish()?;
    if stream {
        write!(stdout, "{tail}")?;
    }
    out += &tail;
    Ok((out, n, finish))
}
