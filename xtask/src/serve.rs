//! `cargo xtask serve`: the OpenAI-compatible HTTP server (kiln-serve) over a causal LM of the
//! zoo. It listens at once (`/health` answers 503 while the model loads), loads the model and its
//! tokenizer and chat template as `generate` does, then serves until SIGTERM or Ctrl-C, after
//! which requests in flight may finish (up to `--drain-timeout`) and the process exits 0.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kiln::data::text::TextTokenizer;
use kiln::serve::http::{serve, Ready, ServerConfig, ServerState};
use kiln::serve::{Engine, EngineConfig};
use kiln::zoo::generate::KvDtype;
use kiln::zoo::{Model, ModelEntry, Task};
use tokio::sync::watch;

use crate::generate::{apply_quantize, load, Codec, Loaded};

/// Options of `cargo xtask serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Registered causal language model (e.g. smollm2-135m); also the model id clients send.
    #[arg(long)]
    model: String,
    /// Weights: a GGUF file, a Hugging Face directory, a run or checkpoint (as for `generate`).
    #[arg(long)]
    weights: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the one taken is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on the /v1 routes.
    #[arg(long)]
    api_key: Option<String>,
    /// Most sequences decoded together (the running batch).
    #[arg(long, default_value_t = 32)]
    max_concurrent: usize,
    /// Most requests waiting beyond the running ones; more get 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Memory for the KV cache pool, in MB (allocated at start).
    #[arg(long, default_value_t = 512)]
    kv_memory: usize,
    /// What the KV cache stores: f16 (half the memory per position and half the bytes read per
    /// step, as llama.cpp's default) or f32 (exactly the tokens of `generate`).
    #[arg(long, default_value = "f16")]
    kv_cache_dtype: KvDtype,
    /// Quantize the weights: nf4, nf4-dq, int8, int8-outliers (f32: dequantize).
    #[arg(long)]
    quantize: Option<String>,
    /// On shutdown, seconds requests in flight may take to finish before they are dropped.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// Also serve `/v1/embeddings` with this registered embedding model (e.g. all-minilm-l6-v2).
    #[arg(long, requires = "embedding_weights")]
    embedding_model: Option<String>,
    /// The embedding model's Hugging Face directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, requires = "embedding_model")]
    embedding_weights: Option<PathBuf>,
}

/// A BERT sentence-embedding model behind `/v1/embeddings`: texts longer than its limit are cut
/// (and logged), as sentence-transformers does.
struct BertEmbedder {
    name: &'static str,
    model: kiln::model_crates::bert::BertModel,
    tokenizer: kiln::data::text::Tokenizer,
    options: kiln::model_crates::bert::EmbedOptions,
}

impl kiln::serve::http::Embedder for BertEmbedder {
    fn embed(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let out = self
            .model
            .embed(&self.tokenizer, inputs, &self.options)
            .map_err(|e| e.to_string())?;
        for t in &out.truncated {
            tracing::warn!(
                "embedding input {} has {} tokens; truncated to {}",
                t.index,
                t.tokens,
                t.limit
            );
        }
        Ok(out.embeddings)
    }
    fn dims(&self) -> usize {
        self.model.hidden_size()
    }
    fn model_id(&self) -> &str {
        self.name
    }
}

/// Loads the embedding model of `--embedding-model` / `--embedding-weights`.
fn load_embedder(name: &str, dir: &std::path::Path) -> anyhow::Result<BertEmbedder> {
    let entry = kiln::find_model(name)?;
    if entry.task != Task::Embedding {
        bail!(
            "--embedding-model {} is a {} model, not an embedding model",
            entry.name,
            entry.task
        );
    }
    let (model, report) = kiln::model_crates::bert::load_hf_dir(dir, entry.name)
        .with_context(|| format!("loading the embedding model in {}", dir.display()))?;
    let tokenizer = kiln::model_crates::bert::hf_tokenizer(dir)?;
    // Inference only: each weight packed for the GEMM once, not on every request.
    model.keep_packed_weights(true);
    Ok(BertEmbedder {
        name: entry.name,
        model,
        tokenizer,
        options: kiln::model_crates::bert::EmbedOptions {
            max_len: report.max_seq_length,
            ..Default::default()
        },
    })
}

/// Logs to stderr at `info` unless `RUST_LOG` says otherwise.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve_until_signal(args));
    // A model still loading when a signal came is not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
async fn termination() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Loads the model, its tokenizer and chat template, and starts the engine (blocking).
fn load_ready(
    entry: &'static ModelEntry,
    weights: PathBuf,
    quantize: Option<String>,
    config: EngineConfig,
    embedding: Option<(String, PathBuf)>,
) -> anyhow::Result<Ready> {
    let embedder = match &embedding {
        Some((name, dir)) => Some(Arc::new(load_embedder(name, dir)?)),
        None => None,
    };
    let Loaded {
        mut model,
        codec,
        tokenizer_dir,
        template,
    } = load(entry, &weights)?;
    model.set_training(false);
    apply_quantize(&mut model, quantize.as_deref())?;
    let tokenizer: Arc<dyn TextTokenizer> =
        Arc::from(codec.and_then(Codec::into_tokenizer).with_context(|| {
            format!(
                "serving needs a text tokenizer; none found with the weights in {}",
                tokenizer_dir.display()
            )
        })?);
    if template.is_none() {
        tracing::warn!("no chat template with the weights: /v1/chat/completions will answer 400");
    }
    let model: Arc<dyn Model> = Arc::from(model);
    let engine = Engine::start(model, config)?;
    if tokenizer.vocab_size() > engine.vocab_size() {
        engine.shutdown();
        bail!(
            "the tokenizer has {} ids but model {} only {}",
            tokenizer.vocab_size(),
            entry.name,
            engine.vocab_size()
        );
    }
    let ready = Ready::new(engine, tokenizer).with_template(template);
    Ok(match embedder {
        Some(e) => ready.with_embedder(e),
        None => ready,
    })
}

async fn serve_until_signal(args: ServeArgs) -> anyhow::Result<()> {
    let entry = kiln::find_model(&args.model)?;
    if entry.task != Task::CausalLm {
        bail!(
            "model {} is a {} model; serving needs a causal LM",
            entry.name,
            entry.task
        );
    }
    if !(args.drain_timeout.is_finite() && args.drain_timeout >= 0.0) {
        bail!("--drain-timeout must be a number of seconds >= 0");
    }
    let engine_config = EngineConfig {
        kv_memory_bytes: args
            .kv_memory
            .checked_mul(1 << 20)
            .context("--kv-memory is too large")?,
        kv_dtype: args.kv_cache_dtype,
        max_running: args.max_concurrent,
        max_queue: args.max_queue,
        max_step_tokens: EngineConfig::default().max_step_tokens.max(args.max_concurrent),
        ..EngineConfig::default()
    };
    engine_config.validate()?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    let state = ServerState::loading(entry.name);
    let (stop, stopping) = watch::channel(false);
    let stop = Arc::new(stop);
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            termination().await;
            tracing::info!("termination signal: shutting down");
            let _ = stop.send(true);
        });
    }
    let wait_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|&s| s).await;
    };
    let config = ServerConfig {
        api_key: args.api_key.clone(),
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
        ..ServerConfig::default()
    };
    let server = tokio::spawn(serve(
        listener,
        state.clone(),
        config,
        wait_stop(stopping.clone()),
    ));

    tracing::info!("loading {} from {}", entry.name, args.weights.display());
    let started = std::time::Instant::now();
    let embedding = args.embedding_model.clone().zip(args.embedding_weights.clone());
    let loading = tokio::task::spawn_blocking(move || {
        load_ready(entry, args.weights, args.quantize, engine_config, embedding)
    });
    let loaded = tokio::select! {
        r = loading => r.context("the loading thread panicked")?,
        () = wait_stop(stopping.clone()) => {
            server.await.context("the server task panicked")??;
            return Ok(());
        }
    };
    let ready = match loaded {
        Ok(r) => r,
        Err(e) => {
            let _ = stop.send(true);
            let _ = server.await;
            return Err(e);
        }
    };
    let engine = ready.engine.clone();
    let stats = engine.stats();
    tracing::info!(
        "ready in {:.1} s: context {} tokens, KV pool {} blocks of {} positions, at most {} sequences running and {} waiting",
        started.elapsed().as_secs_f64(),
        engine.context_len(),
        stats.blocks_total,
        engine.config().block_size,
        engine.config().max_running,
        engine.config().max_queue
    );
    if state.set_ready(ready).is_err() {
        bail!("the server state was already ready");
    }
    let served = server.await.context("the server task panicked")?;
    engine.shutdown();
    served.context("serving")?;
    tracing::info!("stopped");
    Ok(())
}
