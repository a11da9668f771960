//! `cargo xtask generate`: continue a prompt with a causal language model of the zoo, through the
//! shared `kiln::zoo::generate`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kiln::data::text::{load_tokenizer, TextTokenizer};
use kiln::data::text::{ChatMessage, ChatTemplate};
use kiln::gguf::GgufFile;
use kiln::model_crates::lstm::TextGenRnnVocab;
use kiln::nn::Scope;
use kiln::tensor::quant::QuantScheme;
use kiln::tensor::{DType, Device};
use kiln::zoo::generate::{generate, BatchGenerator, CausalLm, Detokenizer, SamplingParams, TextStream};
use kiln::zoo::{Model, ModelEntry, QuantReport, Task};

use kiln::train::{RunSpec, RUN_FILE};

/// Options of `cargo xtask generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Registered causal language model (`cargo xtask models` lists them).
    #[arg(long)]
    model: String,
    /// A kiln run directory (newest complete checkpoint; config from its run.json), one checkpoint
    /// directory, a Hugging Face model directory (config.json + model.safetensors), or the model's
    /// own safetensors file (a tokenizer.json or textgenrnn_vocab.json beside it is used for text).
    #[arg(long)]
    weights: PathBuf,
    /// Prompt text (needs a tokenizer next to the weights).
    #[arg(long, required_unless_present = "prompt_ids", conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Most new tokens to generate.
    #[arg(long, default_value_t = 100)]
    max_tokens: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    temperature: f64,
    /// Sample among the k most likely tokens only.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample from the smallest set of tokens whose probability reaches p, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f64,
    /// Seed of the sampling generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep tokens at least this fraction as likely as the most likely one, in [0, 1].
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    min_p: f64,
    /// Penalise tokens already in the prompt or output (> 0; 1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repetition_penalty: f64,
    /// OpenAI presence penalty, in [-2, 2].
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f64,
    /// OpenAI frequency penalty, in [-2, 2].
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f64,
    /// Stop when the text contains this string (repeatable; not printed).
    #[arg(long)]
    stop: Vec<String>,
    /// Report the log-probability of each token and of the K most likely alternatives (JSON).
    #[arg(long)]
    logprobs: Option<usize>,
    /// Number of independent samples (decoded together in one batch).
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Wrap --prompt in a template: `instruction` (### Instruction / ### Response) or `chat` (the
    /// model's chat template, from its GGUF file or tokenizer_config.json, as one user turn).
    #[arg(long)]
    template: Option<String>,
    /// Quantize the weights for generation: nf4, nf4-dq, int8, int8-outliers (f32: dequantize).
    #[arg(long)]
    quantize: Option<String>,
    /// Print {"prompt_ids": [...], "output_ids": [...], "text": "..."} (new tokens only) instead
    /// of streaming the text.
    #[arg(long)]
    json: bool,
}

/// Text to ids and back, for one model.
pub enum Codec {
    /// textgenrnn's vocabulary: prompts start with `<s>`, which also ends generation.
    TextGenRnn(TextGenRnnVocab),
    /// A kiln tokenizer file (character-level or Hugging Face `tokenizer.json`).
    Tokenizer(Box<dyn TextTokenizer>),
}

impl Codec {
    /// The tokenizer stored beside the weights: `textgenrnn_vocab.json`, then `tokenizer.json`.
    fn find(dir: &Path) -> anyhow::Result<Option<Codec>> {
        let vocab = dir.join("textgenrnn_vocab.json");
        if vocab.is_file() {
            return Ok(Some(Codec::TextGenRnn(TextGenRnnVocab::load(&vocab)?)));
        }
        let tok = dir.join("tokenizer.json");
        if tok.is_file() {
            let t = load_tokenizer(&tok).with_context(|| format!("loading tokenizer {}", tok.display()))?;
            return Ok(Some(Codec::Tokenizer(t)));
        }
        Ok(None)
    }
    pub fn encode_prompt(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(match self {
            Codec::TextGenRnn(v) => v.encode_prompt(text),
            Codec::Tokenizer(t) => t.encode(text)?,
        })
    }
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        Ok(match self {
            Codec::TextGenRnn(v) => v.decode(ids),
            Codec::Tokenizer(t) => t.decode(ids)?,
        })
    }
    pub fn stop_tokens(&self) -> Vec<u32> {
        match self {
            Codec::TextGenRnn(v) => v.meta_id().into_iter().collect(),
            Codec::Tokenizer(t) => t.eos_id().into_iter().collect(),
        }
    }
    pub fn vocab_size(&self) -> usize {
        match self {
            Codec::TextGenRnn(v) => v.vocab_size(),
            Codec::Tokenizer(t) => t.vocab_size(),
        }
    }
    /// The tokenizer, when this is one (serving needs a `TextTokenizer`).
    pub fn into_tokenizer(self) -> Option<Box<dyn TextTokenizer>> {
        match self {
            Codec::TextGenRnn(_) => None,
            Codec::Tokenizer(t) => Some(t),
        }
    }
}

/// What `--json` prints, in this key order; `text` is null without a tokenizer. With `--n`, one
/// such object per sample (a JSON array).
#[derive(serde::Serialize)]
struct JsonOutput<'a> {
    prompt_ids: &'a [u32],
    output_ids: Vec<u32>,
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Vec<TokenLogprob>>,
    finish_reason: &'static str,
}

/// One token's log-probability and the alternatives (`--logprobs K`).
#[derive(serde::Serialize)]
struct TokenLogprob {
    id: u32,
    logprob: f64,
    top_logprobs: Vec<(u32, f64)>,
}

impl kiln::zoo::generate::Detokenizer for Codec {
    fn decode(&self, ids: &[u32]) -> kiln::zoo::Result<String> {
        Codec::decode(self, ids).map_err(|e| kiln::zoo::Error::Generation(format!("decoding tokens: {e:#}")))
    }
}

/// A model with its weights, and the tokenizer and chat template found with them.
pub struct Loaded {
    pub model: Box<dyn Model>,
    pub codec: Option<Codec>,
    /// Where the tokenizer was looked for (for messages).
    pub tokenizer_dir: PathBuf,
    /// The chat template of a GGUF file or of a `tokenizer_config.json` beside the weights.
    pub template: Option<ChatTemplate>,
}

/// The chat template in `dir/tokenizer_config.json`, if there is one with a template.
fn find_template(dir: &Path) -> anyhow::Result<Option<ChatTemplate>> {
    let file = dir.join("tokenizer_config.json");
    if !file.is_file() {
        return Ok(None);
    }
    match ChatTemplate::from_tokenizer_config(&file) {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            eprintln!("note: no chat template from {}: {e}", file.display());
            Ok(None)
        }
    }
}

/// A GGUF file of a Llama-family model, with the tokenizer (a tokenizer.json beside the file
/// wins over the one in the metadata) and chat template it carries.
fn load_gguf(entry: &ModelEntry, path: &Path) -> anyhow::Result<Loaded> {
    if entry.family != "llama" {
        bail!(
            "{} is a GGUF file; only the llama models read those (model {} is {})",
            path.display(),
            entry.name,
            entry.family
        );
    }
    let file = GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (model, report) = kiln::model_crates::llama::from_gguf_file(&file, entry.name)
        .with_context(|| format!("loading {}", path.display()))?;
    if !report.unused.is_empty() {
        eprintln!(
            "note: {} tensors of the file are not used: {}",
            report.unused.len(),
            report.unused.join(", ")
        );
    }
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let codec = match Codec::find(&dir)? {
        Some(c) => c,
        None => Codec::Tokenizer(Box::new(
            kiln::model_crates::llama::gguf_tokenizer(&file, path)
                .with_context(|| format!("the tokenizer in {}", path.display()))?,
        )),
    };
    let template = match kiln::model_crates::llama::gguf_chat_template(&file)? {
        Some(t) => Some(t),
        None => find_template(&dir)?,
    };
    Ok(Loaded {
        model: Box::new(model),
        codec: Some(codec),
        tokenizer_dir: dir,
        template,
    })
}

/// `path` as a run or checkpoint directory: `(run directory, checkpoint directory)`. A checkpoint
/// named directly is verified as the newest one of a run is (sizes and checksums recorded in its
/// trainer state); one without a trainer state (not written by kiln's trainer) is loaded
/// unverified, and that is said.
pub(crate) fn locate_checkpoint(path: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    if path.join("run.json").is_file() {
        let ckpt = kiln::train::latest_checkpoint(path)?
            .with_context(|| format!("no complete checkpoint in run directory {}", path.display()))?;
        return Ok((path.to_path_buf(), ckpt));
    }
    let run = path.parent().and_then(Path::parent).map(Path::to_path_buf);
    match run {
        Some(run) if path.join("model.safetensors").is_file() && run.join("run.json").is_file() => {
            if path.join(kiln::train::checkpoint::STATE_FILE).is_file() {
                kiln::train::verify_checkpoint(path)?;
            } else {
                eprintln!(
                    "{}: no {} beside the weights, so their size and checksum are not verified",
                    path.display(),
                    kiln::train::checkpoint::STATE_FILE
                );
            }
            Ok((run, path.to_path_buf()))
        }
        _ => bail!(
            "{} is neither a kiln run directory (with run.json) nor a checkpoint directory inside one",
            path.display()
        ),
    }
}

/// Applies `--quantize` (`nf4`, `nf4-dq`, `int8`, `int8-outliers`, or `f32` to dequantize) to a
/// loaded model, and says what it did on stderr.
pub fn apply_quantize(
    model: &mut Box<dyn Model>,
    scheme: Option<&str>,
) -> anyhow::Result<Option<QuantReport>> {
    let Some(scheme) = scheme else { return Ok(None) };
    let report = if scheme == "f32" {
        model.dequantize_weights()?
    } else {
        model.quantize(QuantScheme::parse(scheme)?)?
    };
    eprintln!(
        "note: --quantize {scheme}: {} matrices, weights {:.1} MB -> {:.1} MB",
        report.matrices,
        report.bytes_before as f64 / 1e6,
        report.bytes_after as f64 / 1e6
    );
    Ok(Some(report))
}

/// The model `entry` with the weights at `path` (see `--weights`), its tokenizer and template.
pub fn load(entry: &ModelEntry, path: &Path) -> anyhow::Result<Loaded> {
    if !path.exists() {
        bail!("weights {} not found", path.display());
    }
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        return load_gguf(entry, path);
    }
    if path.is_dir() && path.join("config.json").is_file() && !path.join("run.json").is_file() {
        // A Hugging Face model directory.
        if entry.family == "llama" {
            let model = kiln::model_crates::llama::load_hf_dir(path, entry.name)
                .with_context(|| format!("loading the Hugging Face Llama in {}", path.display()))?;
            return Ok(Loaded {
                model: Box::new(model),
                codec: Codec::find(path)?,
                tokenizer_dir: path.to_path_buf(),
                template: find_template(path)?,
            });
        }
        if entry.family != "gpt" {
            bail!(
                "{} is a Hugging Face model directory; only the gpt and llama models read those (model {} is {})",
                path.display(),
                entry.name,
                entry.family
            );
        }
        let (model, report) = kiln::model_crates::gpt::load_hf_dir(path, entry.name)
            .with_context(|| format!("loading the Hugging Face GPT-2 in {}", path.display()))?;
        if !report.ignored.is_empty() {
            eprintln!(
                "note: ignored {} non-parameter tensors ({})",
                report.ignored.len(),
                report.ignored.join(", ")
            );
        }
        return Ok(Loaded {
            model: Box::new(model),
            codec: Codec::find(path)?,
            tokenizer_dir: path.to_path_buf(),
            template: find_template(path)?,
        });
    }
    if path.is_dir() {
        let (run_dir, ckpt) = locate_checkpoint(path)?;
        let spec = RunSpec::read(&run_dir.join(RUN_FILE))?;
        if spec.model.as_deref() != Some(entry.name) {
            bail!(
                "{} holds a run of model {}, not {}",
                run_dir.display(),
                spec.model.as_deref().unwrap_or("(none)"),
                entry.name
            );
        }
        let cfg = kiln::zoo::merge_config(entry, spec.model_config.as_ref())?;
        let model = (entry.build)(&cfg, Scope::init(0, DType::F32, Device::Cpu))?;
        let file = ckpt.join("model.safetensors");
        kiln::nn::load_state_dict_file(&model.parameters(), &file, true)
            .with_context(|| format!("loading {} into {}", file.display(), entry.name))?;
        let codec = Codec::find(&run_dir)?;
        return Ok(Loaded {
            model,
            codec,
            tokenizer_dir: run_dir,
            template: None,
        });
    }
    let scope = Scope::from_safetensors(path, true, DType::F32, Device::Cpu)
        .with_context(|| format!("loading weights {}", path.display()))?;
    let model = (entry.build)(&(entry.default_config)(), scope.clone())
        .with_context(|| format!("weights {} do not fit model {}", path.display(), entry.name))?;
    scope.check_all_used().with_context(|| {
        format!(
            "weights {} hold tensors model {} does not use",
            path.display(),
            entry.name
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let codec = Codec::find(&dir)?;
    let template = find_template(&dir)?;
    Ok(Loaded {
        model,
        codec,
        tokenizer_dir: dir,
        template,
    })
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let entry = kiln::find_model(&args.model)?;
    if entry.task != Task::CausalLm {
        bail!(
            "model {} is a {} model; generate needs a {} model",
            entry.name,
            entry.task,
            Task::CausalLm
        );
    }
    let mut params = SamplingParams {
        max_new_tokens: args.max_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        stop_tokens: Vec::new(),
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        presence_penalty: args.presence_penalty,
        frequency_penalty: args.frequency_penalty,
        stop: args.stop.clone(),
        logprobs: args.logprobs,
        n: args.n,
    };
    params.validate()?;
    if let Some(t) = args
        .template
        .as_deref()
        .filter(|t| !["instruction", "chat"].contains(t))
    {
        bail!("--template {t:?} is not known; the templates are \"instruction\" and \"chat\"");
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
    if let Some(c) = &codec {
        if c.vocab_size() > lm.vocab_size() {
            bail!(
                "the tokenizer in {} has {} ids but model {} only {}",
                tokenizer_dir.display(),
                c.vocab_size(),
                entry.name,
                lm.vocab_size()
            );
        }
        params.stop_tokens = c.stop_tokens();
    }
    if !args.stop.is_empty() && codec.is_none() {
        bail!(
            "--stop matches text and needs a tokenizer in {}",
            tokenizer_dir.display()
        );
    }
    let prompt_ids = match (&args.prompt, args.prompt_ids) {
        (_, Some(ids)) => ids,
        (Some(text), None) => match &codec {
            Some(c) => {
                let text = match args.template.as_deref() {
                    Some("chat") => template
                        .as_ref()
                        .with_context(|| {
                            format!("--template chat: no chat template with the weights in {}", tokenizer_dir.display())
                        })?
                        .render(&[ChatMessage::user(text.clone())], true)?,
                    Some(_) => kiln::data::text::InstructionRecord {
                        instruction: text.clone(),
                        input: String::new(),
                        output: String::new(),
                    }
                    .prompt(),
                    None => text.clone(),
                };
                c.encode_prompt(&text)?
            }
            None => bail!(
                "--prompt needs a tokenizer (tokenizer.json or textgenrnn_vocab.json) in {}; give --prompt-ids instead",
                tokenizer_dir.display()
            ),
        },
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    if args.json || params.n > 1 {
        return print_json(lm, codec.as_ref(), &prompt_ids, &params);
    }
    let mut tokens = generate(lm, &prompt_ids, &params)?;
    let mut out = Vec::new();
    let mut stdout = std::io::stdout().lock();
    // Text deltas: whole characters only, stop strings held back and cut.
    let mut text = codec.as_ref().map(|c| TextStream::new(c, &params.stop));
    for t in tokens.by_ref() {
        let id = t?;
        out.push(id);
        match &mut text {
            Some(s) => {
                write!(stdout, "{}", s.push(id)?)?;
                if s.stopped() {
                    break;
                }
            }
            None => write!(stdout, "{}{id}", if out.len() > 1 { " " } else { "" })?,
        }
        stdout.flush()?;
    }
    if let Some(s) = &mut text {
        write!(stdout, "{}", s.finish()?)?;
    }
    writeln!(stdout)?;
    Ok(())
}

/// Generate every sample (`n` of them, batched) and print one JSON object per sample (an array
/// when `n > 1`), with the text cut at the first stop string.
fn print_json(
    lm: &dyn CausalLm,
    codec: Option<&Codec>,
    prompt: &[u32],
    params: &SamplingParams,
) -> anyhow::Result<()> {
    let mut gen = BatchGenerator::new(lm)?;
    gen.add_request(prompt, params)?;
    struct Sample {
        ids: Vec<u32>,
        logprobs: Vec<TokenLogprob>,
        text: String,
        stopped: bool,
    }
    let mut samples: Vec<Sample> = (0..params.n)
        .map(|_| Sample {
            ids: Vec::new(),
            logprobs: Vec::new(),
            text: String::new(),
            stopped: false,
        })
        .collect();
    let mut streams: Vec<Option<TextStream>> = (0..params.n)
        .map(|_| codec.map(|c| TextStream::new(c as &dyn Detokenizer, &params.stop)))
        .collect();
    while !gen.is_idle() {
        for ev in gen.step()? {
            let s = &mut samples[ev.sample];
            if s.stopped {
                continue;
            }
            s.ids.push(ev.token.id);
            if let Some(lp) = ev.token.logprob {
                s.logprobs.push(TokenLogprob {
                    id: ev.token.id,
                    logprob: lp,
                    top_logprobs: ev.token.top_logprobs.clone(),
                });
            }
            if let Some(stream) = &mut streams[ev.sample] {
                s.text += &stream.push(ev.token.id)?;
                if stream.stopped() {
                    s.stopped = true;
                    gen.cancel_sample(ev.request, ev.sample)?;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(params.n);
    for (s, stream) in samples.into_iter().zip(streams.iter_mut()) {
        let mut text = s.text;
        if let Some(stream) = stream {
            text += &stream.finish()?;
        }
        let finish_reason = if s.stopped || s.ids.last().is_some_and(|id| params.stop_tokens.contains(id)) {
            "stop"
        } else {
            "length"
        };
        out.push(JsonOutput {
            prompt_ids: prompt,
            output_ids: s.ids,
            text: codec.map(|_| text),
            logprobs: params.logprobs.map(|_| s.logprobs),
            finish_reason,
        });
    }
    if out.len() == 1 {
        println!("{}", serde_json::to_string(&out[0])?);
    } else {
        println!("{}", serde_json::to_string(&out)?);
    }
    Ok(())
}
