//! The OpenAI-compatible HTTP server over real HTTP on 127.0.0.1, on a small random Llama (int8
//! linear layers, so a sequence's tokens do not depend on its batch-mates) with a 256-character
//! tokenizer: response formats (plain and SSE), agreement between streaming, non-streaming, lone
//! and concurrent requests, stop strings, log-probabilities, the side routes, every error path,
//! cancellation on disconnect, 429 under a burst, graceful shutdown, and mutated bodies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_data::text::{CharTokenizer, ChatTemplate, TextTokenizer};
use kiln_llama::{Llama, LlamaConfig};
use kiln_nn::Scope;
use kiln_serve::http::{serve, Embedder, Ready, ServerConfig, ServerState};
use kiln_serve::{Engine, EngineConfig};
use kiln_tensor::quant::QuantScheme;
use kiln_tensor::{DType, Device};
use kiln_zoo::Model;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const MODEL: &str = "llama-tiny";

/// The tiny Llama (256 ids, context 128) with int8 linear layers.
fn model() -> Arc<dyn Model> {
    let mut m = Llama::new(
        MODEL,
        LlamaConfig::tiny(),
        Scope::init(7, DType::F32, Device::Cpu),
    )
    .unwrap();
    m.quantize(QuantScheme::parse("int8").unwrap()).unwrap();
    Arc::new(m)
}

/// 256 characters: newline, printable ASCII, then Latin-1 and Latin Extended-A letters.
fn tokenizer() -> Arc<CharTokenizer> {
    let chars = std::iter::once('\n')
        .chain(' '..='~')
        .chain(('\u{A1}'..).take(256 - 96));
    let t = CharTokenizer::from_chars(chars);
    assert_eq!(t.vocab_size(), 256);
    Arc::new(t)
}

/// A test embedder: per text, its length, its count of 'a', its count of spaces, and 1.
struct CountingEmbedder;

impl Embedder for CountingEmbedder {
    fn model_id(&self) -> &str {
        "counting-embedder"
    }
    fn embed(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, String> {
        if inputs.iter().any(|s| s.contains("FAIL")) {
            return Err("cannot embed FAIL".into());
        }
        Ok(inputs
            .iter()
            .map(|s| {
                let count = |c: char| s.chars().filter(|&x| x == c).count() as f32;
                vec![s.chars().count() as f32, count('a'), count(' '), 1.0]
            })
            .collect())
    }
    fn dims(&self) -> usize {
        4
    }
}

struct Options {
    engine: EngineConfig,
    server: ServerConfig,
    embedder: bool,
    loading: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            engine: EngineConfig {
                kv_memory_bytes: 16 << 20,
                ..Default::default()
            },
            server: ServerConfig::default(),
            embedder: false,
            loading: false,
        }
    }
}

/// A server on an ephemeral port.
struct Server {
    addr: SocketAddr,
    engine: Engine,
    state: ServerState,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// `Ready` held back while the state is "loading".
    pending: Option<Ready>,
}

impl Server {
    async fn start(options: Options) -> Server {
        let engine = Engine::start(model(), options.engine).unwrap();
        let tokenizer: Arc<dyn TextTokenizer> = tokenizer();
        let mut ready = Ready::new(engine.clone(), tokenizer).with_template(Some(ChatTemplate::builtin()));
        if options.embedder {
            ready = ready.with_embedder(Arc::new(CountingEmbedder));
        }
        let (state, pending) = if options.loading {
            (ServerState::loading(MODEL), Some(ready))
        } else {
            (ServerState::new(MODEL, ready), None)
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), options.server, async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            engine,
            state,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            stop: Some(tx),
            task: Some(task),
            pending,
        }
    }

    async fn default() -> Server {
        Self::start(Options::default()).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs raw bytes; the status and the body as text.
    async fn post_bytes(&self, path: &str, body: Vec<u8>, key: Option<&str>) -> (u16, String) {
        let mut req = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// POSTs JSON; the status and the JSON body.
    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.post_bytes(path, body.to_string().into_bytes(), None).await;
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, v)
    }

    /// POSTs and expects 200.
    async fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post(path, body).await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// POSTs and expects an error with `status`; returns the `error` object.
    async fn error(&self, path: &str, body: &Value, status: u16) -> Value {
        let (got, v) = self.post(path, body).await;
        assert_eq!(got, status, "{body} -> {v}");
        check_error_shape(&v);
        v["error"].clone()
    }

    /// POSTs a streaming request; its chunks (without the final `[DONE]`, which must be there).
    async fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let resp = self.client.post(self.url(path)).json(body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        sse_chunks(&resp.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Stops the server (graceful) and the engine; returns what `serve` returned.
    async fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        let r = self.task.take().unwrap().await.unwrap();
        self.engine.shutdown();
        r
    }
}

/// Every error body is OpenAI's shape.
fn check_error_shape(v: &Value) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

/// The JSON chunks of an SSE body, checking the framing: `data: ...\n\n` events ending with
/// `data: [DONE]`.
fn sse_chunks(body: &str) -> Vec<Value> {
    assert!(body.ends_with("data: [DONE]\n\n"), "no [DONE] at the end: {body}");
    let events: Vec<&str> = body
        .split_terminator("\n\n")
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad event {e:?}"))
        })
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("bad chunk {e:?}: {err}")))
        .collect()
}

/// Per choice, the text streamed and the finish reason.
fn stream_texts(chunks: &[Value], chat: bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for c in chunks {
        for choice in c["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            if out.len() <= i {
                out.resize(i + 1, Default::default());
            }
            let piece = if chat {
                &choice["delta"]["content"]
            } else {
                &choice["text"]
            };
            if let Some(t) = piece.as_str() {
                assert!(out[i].1.is_empty(), "text after the finish reason");
                out[i].0 += t;
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                out[i].1 = r.to_string();
            }
        }
    }
    out
}

fn completion(prompt: &str, max_tokens: usize) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

fn chat(content: &str, max_tokens: usize) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

fn text(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_plain_and_streamed_agree() {
    let s = Server::default().await;
    let body = completion("Hello, world", 20);
    let v = s.ok("/v1/completions", &body).await;
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"), "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(text(&v).chars().count(), 20, "one character per token");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32})
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = s.stream("/v1/completions", &streamed).await;
    for c in &chunks {
        assert_eq!(c["object"], "text_completion");
        assert!(c["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(c["id"], chunks[0]["id"]);
        assert_eq!(c["model"], MODEL);
        assert!(c.get("usage").is_none(), "usage only with include_usage: {c}");
    }
    assert_eq!(
        stream_texts(&chunks, false),
        vec![(text(&v), "length".to_string())]
    );

    // include_usage: every chunk has "usage": null, then a last chunk with no choices.
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = s.stream("/v1/completions", &streamed).await;
    let (last, rest) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], v["usage"]);
    assert!(rest
        .iter()
        .all(|c| c["usage"].is_null() && c.get("usage").is_some()));
    assert_eq!(stream_texts(rest, false), vec![(text(&v), "length".to_string())]);
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_plain_and_streamed_agree() {
    let s = Server::default().await;
    let body = chat("Hi there!", 16);
    let v = s.ok("/v1/chat/completions", &body).await;
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"), "{v}");
    assert_eq!(v["object"], "chat.completion");
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let answer = choice["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(answer.chars().count(), 16);
    assert_eq!(choice["finish_reason"], "length");
    // The prompt is the built-in template's rendering.
    let rendered = ChatTemplate::builtin()
        .render(
            &[
                kiln_data::text::ChatMessage::system("Be brief."),
                kiln_data::text::ChatMessage::user("Hi there!"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], rendered.chars().count());
    assert_eq!(v["usage"]["completion_tokens"], 16);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = s.stream("/v1/chat/completions", &streamed).await;
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let (last, rest) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], v["usage"]);
    for c in rest {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert!(c["usage"].is_null());
        let choice = &c["choices"][0];
        assert!(choice.get("logprobs").is_some() && choice.get("finish_reason").is_some());
    }
    let finish = &rest.last().unwrap()["choices"][0];
    assert_eq!(finish["delta"], json!({}));
    assert_eq!(finish["finish_reason"], "length");
    assert_eq!(stream_texts(rest, true), vec![(answer, "length".to_string())]);

    // max_completion_tokens wins over max_tokens; without either the answer runs to the context.
    let mut b = body.clone();
    b["max_completion_tokens"] = json!(3);
    let v = s.ok("/v1/chat/completions", &b).await;
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let mut b = body.clone();
    b.as_object_mut().unwrap().remove("max_tokens");
    let v = s.ok("/v1/chat/completions", &b).await;
    assert_eq!(
        v["usage"]["total_tokens"], 128,
        "the default max_tokens fills the context: {v}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_forms_agree() {
    let s = Server::default().await;
    let a = text(&s.ok("/v1/completions", &completion("abc", 8)).await);
    let ids = tokenizer().encode("abc").unwrap();
    for prompt in [json!(ids), json!(["abc"]), json!([ids])] {
        let body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0});
        assert_eq!(text(&s.ok("/v1/completions", &body).await), a, "{prompt}");
    }
    s.shutdown().await.unwrap();
}

/// The text of every choice of a (non-streamed) response.
fn texts(v: &Value, chat: bool) -> Vec<String> {
    v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["index"], i);
            let t = if chat {
                &c["message"]["content"]
            } else {
                &c["text"]
            };
            t.as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_are_seeded_and_independent_of_concurrency() {
    let s = Server::default().await;
    let body = |prompt: &str, seed: u64| json!({"prompt": prompt, "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "n": 2, "seed": seed});
    let lone = s.ok("/v1/completions", &body("Once upon", 11)).await;
    let samples = texts(&lone, false);
    assert_eq!(samples.len(), 2);
    assert_ne!(samples[0], samples[1], "sample i draws from seed + i");
    assert_eq!(lone["usage"]["completion_tokens"], 48);
    let greedy = text(&s.ok("/v1/completions", &completion("Once upon", 24)).await);
    // The same requests among others: same tokens.
    let mut tasks = Vec::new();
    for i in 0..12u64 {
        let (client, url) = (s.client.clone(), s.url("/v1/completions"));
        let b = match i % 3 {
            0 => body("Once upon", 11),
            1 => completion("Once upon", 24),
            _ => body(&format!("noise {i} "), i),
        };
        tasks.push(tokio::spawn(async move {
            let v: Value = client
                .post(url)
                .json(&b)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (i, v)
        }));
    }
    for t in tasks {
        let (i, v) = t.await.unwrap();
        match i % 3 {
            0 => assert_eq!(texts(&v, false), samples, "seeded request {i}"),
            1 => assert_eq!(text(&v), greedy, "greedy request {i}"),
            _ => assert_eq!(v["choices"].as_array().unwrap().len(), 2),
        }
    }
    // Streaming gives the same samples.
    let mut b = body("Once upon", 11);
    b["stream"] = json!(true);
    let streamed: Vec<String> = stream_texts(&s.stream("/v1/completions", &b).await, false)
        .into_iter()
        .map(|(t, r)| {
            assert_eq!(r, "length");
            t
        })
        .collect();
    assert_eq!(streamed, samples);
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_the_text() {
    let s = Server::default().await;
    let full = text(&s.ok("/v1/completions", &completion("The end", 40)).await);
    // A stop string from the middle of the greedy text: the answer ends before its first
    // occurrence, with finish_reason "stop".
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[10..13].iter().collect();
    let expected = &full[..full.find(&stop).unwrap()];
    for stops in [json!(stop), json!(["\u{1}never", stop])] {
        let mut body = completion("The end", 40);
        body["stop"] = stops;
        let v = s.ok("/v1/completions", &body).await;
        assert_eq!(text(&v), expected);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() < 40);
        body["stream"] = json!(true);
        let chunks = s.stream("/v1/completions", &body).await;
        assert_eq!(
            stream_texts(&chunks, false),
            vec![(expected.to_string(), "stop".to_string())]
        );
    }
    // n = 3 sampled: each sample is cut at its own first stop string; the others go on.
    let sampled = json!({"prompt": "Many", "max_tokens": 30, "n": 3, "temperature": 1.0, "seed": 9});
    let fulls = texts(&s.ok("/v1/completions", &sampled).await, false);
    let stop: String = fulls[0].chars().nth(5).unwrap().to_string();
    let mut body = sampled.clone();
    body["stop"] = json!(stop);
    let v = s.ok("/v1/completions", &body).await;
    for (i, full) in fulls.iter().enumerate() {
        let (text, reason) = match full.find(&stop) {
            Some(at) => (&full[..at], "stop"),
            None => (full.as_str(), "length"),
        };
        assert_eq!(v["choices"][i]["text"], text, "sample {i}");
        assert_eq!(v["choices"][i]["finish_reason"], reason, "sample {i}");
    }
    body["stream"] = json!(true);
    let streamed = stream_texts(&s.stream("/v1/completions", &body).await, false);
    for (i, (t, r)) in streamed.iter().enumerate() {
        assert_eq!(
            (t.as_str(), r.as_str()),
            (
                v["choices"][i]["text"].as_str().unwrap(),
                v["choices"][i]["finish_reason"].as_str().unwrap()
            )
        );
    }
    // Chat too.
    let full = s.ok("/v1/chat/completions", &chat("Stop here", 30)).await;
    let full = texts(&full, true).remove(0);
    let stop: String = full.chars().skip(5).take(2).collect();
    let mut body = chat("Stop here", 30);
    body["stop"] = json!([stop]);
    let v = s.ok("/v1/chat/completions", &body).await;
    assert_eq!(texts(&v, true)[0], full[..full.find(&stop).unwrap()]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_in_both_formats() {
    let s = Server::default().await;
    let mut body = completion("Log", 10);
    body["logprobs"] = json!(3);
    let v = s.ok("/v1/completions", &body).await;
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 10);
    assert_eq!(tokens.concat(), text(&v));
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (0..10).collect::<Vec<u64>>());
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3);
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(chosen <= 0.0);
        // Greedy: the chosen token is the most likely one.
        let best = top.values().map(|x| x.as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert!((best - chosen).abs() < 1e-9, "{chosen} vs {best}");
        assert!(top.contains_key(tokens[i]));
    }
    // Streamed: the same, chunk by chunk, offsets continuing.
    body["stream"] = json!(true);
    let chunks = s.stream("/v1/completions", &body).await;
    let mut streamed_tokens = Vec::new();
    let mut streamed_offsets = Vec::new();
    for c in &chunks {
        let l = &c["choices"][0]["logprobs"];
        if !l.is_null() {
            streamed_tokens.extend(
                l["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_string()),
            );
            streamed_offsets.extend(
                l["text_offset"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o.as_u64().unwrap()),
            );
        }
    }
    assert_eq!(streamed_tokens, tokens);
    assert_eq!(streamed_offsets, offsets);

    let mut body = chat("Log", 6);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let v = s.ok("/v1/chat/completions", &body).await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 6);
    let mut joined = String::new();
    for e in content {
        let token = e["token"].as_str().unwrap();
        joined += token;
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(bytes, token.as_bytes());
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["token"], e["token"]);
        assert!(
            top[0]["bytes"].is_array()
                && top[1]["logprob"].as_f64().unwrap() <= top[0]["logprob"].as_f64().unwrap()
        );
    }
    assert_eq!(joined, texts(&v, true)[0]);
    // Without logprobs: null.
    assert!(s.ok("/v1/chat/completions", &chat("Log", 2)).await["choices"][0]["logprobs"].is_null());
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_metrics() {
    let s = Server::default().await;
    let (status, body) = s.get("/v1/models").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    let m = &v["data"][0];
    assert_eq!(
        (m["id"].as_str(), m["object"].as_str(), m["owned_by"].as_str()),
        (Some(MODEL), Some("model"), Some("kiln"))
    );
    assert!(m["created"].as_u64().is_some());
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(s.get(&format!("/v1/models/{MODEL}")).await.0, 200);
    let (status, body) = s.get("/v1/models/gpt-4").await;
    assert_eq!(status, 404);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");

    let (status, body) = s.get("/health").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    s.ok("/v1/completions", &completion("metrics", 5)).await;
    wait_idle(&s.engine, Duration::from_secs(2)).await;
    let (status, metrics) = s.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "kiln_num_requests_running 0",
        "kiln_num_requests_waiting 0",
        "kiln_kv_blocks_in_use 0",
        "kiln_kv_blocks_total ",
        "kiln_prefix_cache_hit_rate ",
        "kiln_prefix_cache_hit_tokens_total ",
        "kiln_generation_tokens_total 5",
        "kiln_preemptions_total 0",
        "kiln_prompt_tokens_total 7",
        "kiln_request_success_total{finished_reason=\"length\"} 1",
        "kiln_http_requests_total{route=\"/v1/completions\",status=\"200\"} 1",
        "kiln_time_to_first_token_seconds_bucket{le=\"+Inf\"} 1",
        "kiln_time_to_first_token_seconds_count 1",
        "kiln_time_per_output_token_seconds_count 1",
        "kiln_e2e_request_latency_seconds_count 1",
        "# TYPE kiln_time_to_first_token_seconds histogram",
    ] {
        assert!(metrics.contains(name), "no {name:?} in\n{metrics}");
    }
    // Health follows the engine.
    s.engine.shutdown();
    let (status, body) = s.get("/health").await;
    assert_eq!(status, 503, "{body}");
    let e = s.error("/v1/completions", &completion("x", 2), 503).await;
    assert_eq!(e["type"], "server_error");
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_then_ready() {
    let mut s = Server::start(Options {
        loading: true,
        ..Default::default()
    })
    .await;
    let (status, body) = s.get("/health").await;
    assert_eq!((status, body.as_str()), (503, r#"{"status":"loading"}"#));
    assert_eq!(s.get("/v1/models").await.0, 200);
    let e = s.error("/v1/completions", &completion("x", 2), 503).await;
    assert!(e["message"].as_str().unwrap().contains("loading"), "{e}");
    s.state
        .set_ready(s.pending.take().unwrap())
        .map_err(|_| ())
        .unwrap();
    assert_eq!(s.get("/health").await.0, 200);
    s.ok("/v1/completions", &completion("x", 2)).await;
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_with_and_without_an_embedder() {
    let s = Server::start(Options {
        embedder: true,
        ..Default::default()
    })
    .await;
    let v = s
        .ok(
            "/v1/embeddings",
            &json!({"model": MODEL, "input": ["a cat", "banana"]}),
        )
        .await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], MODEL);
    assert_eq!(
        v["data"][0],
        json!({"object": "embedding", "index": 0, "embedding": [5.0, 2.0, 1.0, 1.0]})
    );
    assert_eq!(v["data"][1]["embedding"], json!([6.0, 3.0, 0.0, 1.0]));
    assert_eq!(v["usage"], json!({"prompt_tokens": 11, "total_tokens": 11}));
    let v = s
        .ok(
            "/v1/embeddings",
            &json!({"input": "a", "encoding_format": "base64"}),
        )
        .await;
    // [1, 1, 0, 1] as little-endian f32s.
    assert_eq!(v["data"][0]["embedding"], "AACAPwAAgD8AAAAAAACAPw==");
    for (body, param) in [
        (json!({}), "input"),
        (json!({"input": 3}), "input"),
        (json!({"input": []}), "input"),
        (json!({"input": [[1, 2]]}), "input"),
        (json!({"input": "a", "encoding_format": "hex"}), "encoding_format"),
        (json!({"input": "a", "dimensions": 8}), "dimensions"),
    ] {
        let e = s.error("/v1/embeddings", &body, 400).await;
        assert_eq!(e["param"], param, "{body}");
    }
    let e = s.error("/v1/embeddings", &json!({"input": "FAIL"}), 400).await;
    assert!(e["message"].as_str().unwrap().contains("cannot embed"));
    s.shutdown().await.unwrap();

    let s = Server::default().await;
    let e = s
        .error("/v1/embeddings", &json!({"model": MODEL, "input": "a"}), 400)
        .await;
    assert_eq!(e["type"], "invalid_request_error");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("does not produce embeddings"),
        "{e}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_path() {
    let s = Server::start(Options {
        server: ServerConfig {
            body_limit_bytes: 4096,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // Invalid JSON, invalid UTF-8, not an object, empty body.
    for (body, needle) in [
        (&b"{\"prompt\": \"a\","[..], "not valid JSON"),
        (b"{\"prompt\": \"\xff\xfe\"}", "UTF-8"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b"", "empty"),
    ] {
        let (status, text) = s.post_bytes("/v1/completions", body.to_vec(), None).await;
        assert_eq!(status, 400, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        check_error_shape(&v);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{v}");
    }
    // Wrong types and out-of-range values name the parameter.
    let base = completion("abc", 4);
    for (field, value) in [
        ("max_tokens", json!("ten")),
        ("max_tokens", json!(0)),
        ("max_tokens", json!(1e30)),
        ("max_tokens", json!(-5)),
        ("max_tokens", json!(2.5)),
        ("n", json!(18446744073709551616u128 as f64)),
        ("n", json!(0)),
        ("n", json!(129)),
        ("temperature", json!("hot")),
        ("temperature", json!(2.5)),
        ("temperature", json!(-1)),
        ("top_p", json!(1.5)),
        ("top_p", json!(0)),
        ("top_k", json!(-2)),
        ("min_p", json!(2)),
        ("repetition_penalty", json!(0)),
        ("presence_penalty", json!(3)),
        ("frequency_penalty", json!([1])),
        ("seed", json!("x")),
        ("seed", json!(1e300)),
        ("stop", json!(["a", "b", "c", "d", "e"])),
        ("stop", json!({"a": 1})),
        ("logprobs", json!(21)),
        ("logprobs", json!(true)),
        ("stream", json!(1)),
        ("stream_options", json!("yes")),
        ("prompt", json!({"text": "a"})),
        ("prompt", json!([])),
        ("prompt", json!([1, -1])),
        ("prompt", json!([300])),
        ("prompt", json!("")),
        ("prompt", json!("\u{4e2d}")),
        ("prompt", json!(["a", "b"])),
        ("model", json!(3)),
        ("echo", json!(true)),
        ("logit_bias", json!({"1": 5})),
    ] {
        let mut body = base.clone();
        body[field] = value.clone();
        let e = s.error("/v1/completions", &body, 400).await;
        assert_eq!(e["param"], field, "{field}: {value} -> {e}");
        assert!(
            e["message"].as_str().unwrap().contains(field) || field == "prompt",
            "{e}"
        );
    }
    let mut body = base.clone();
    body.as_object_mut().unwrap().remove("prompt");
    assert_eq!(s.error("/v1/completions", &body, 400).await["param"], "prompt");
    // Chat: messages and chat-only parameters.
    let cbase = chat("hi", 4);
    for (field, value, param) in [
        ("messages", json!([]), "messages"),
        ("messages", json!("hi"), "messages"),
        ("messages", json!([{"content": "hi"}]), "messages[0].role"),
        (
            "messages",
            json!([{"role": 1, "content": "hi"}]),
            "messages[0].role",
        ),
        (
            "messages",
            json!([{"role": "user", "content": 5}]),
            "messages[0].content",
        ),
        (
            "messages",
            json!([{"role": "user", "content": [{"type": "image_url"}]}]),
            "messages[0].content",
        ),
        (
            "messages",
            json!([{"role": "wizard", "content": "hi"}]),
            "messages",
        ),
        ("logprobs", json!(3), "logprobs"),
        ("top_logprobs", json!(2), "top_logprobs"),
        ("max_completion_tokens", json!(-1), "max_completion_tokens"),
        ("tools", json!([{"type": "function"}]), "tools"),
        (
            "response_format",
            json!({"type": "json_object"}),
            "response_format",
        ),
    ] {
        let mut body = cbase.clone();
        body[field] = value.clone();
        let e = s.error("/v1/chat/completions", &body, 400).await;
        assert_eq!(e["param"], param, "{field}: {value} -> {e}");
    }
    // Content parts are joined; unknown fields are ignored.
    let mut body = cbase.clone();
    body["messages"] =
        json!([{"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}]);
    body["parallel_tool_calls"] = json!(false);
    body["user"] = json!("someone");
    body["metadata"] = json!({"x": [1, 2, {"y": null}]});
    s.ok("/v1/chat/completions", &body).await;
    // The prompt and max_tokens over the context: both numbers in the message.
    let mut body = completion("0123456789", 200);
    let e = s.error("/v1/completions", &body, 400).await;
    assert_eq!(e["code"], "context_length_exceeded");
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("128") && m.contains("10") && m.contains("200"), "{m}");
    body["max_tokens"] = json!(u32::MAX);
    assert_eq!(
        s.error("/v1/completions", &body, 400).await["code"],
        "context_length_exceeded"
    );
    let long = "x".repeat(130);
    let e = s.error("/v1/chat/completions", &chat(&long, 1), 400).await;
    assert_eq!(
        (e["code"].as_str(), e["param"].as_str()),
        (Some("context_length_exceeded"), Some("messages"))
    );
    // Another model: 404 model_not_found (OpenAI's behaviour).
    let mut body = base.clone();
    body["model"] = json!("gpt-4o");
    let e = s.error("/v1/completions", &body, 404).await;
    assert_eq!(e["code"], "model_not_found");
    // Body over the limit: 413 with an OpenAI body.
    let big = json!({"prompt": "a".repeat(5000), "max_tokens": 1});
    let (status, text) = s
        .post_bytes("/v1/completions", big.to_string().into_bytes(), None)
        .await;
    assert_eq!(status, 413);
    check_error_shape(&serde_json::from_str(&text).unwrap());
    // A 3 MiB body: the server answers 413 as soon as the declared length is over the limit and
    // closes, so a client still writing may see a broken pipe; send the headers and a little of
    // the body over raw TCP and read the answer.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{{\"prompt\": \"",
        3 << 20
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let _ = tcp.write_all(&[b'a'; 1 << 16]).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let json_at = answer.find("\r\n\r\n").unwrap() + 4;
    check_error_shape(&serde_json::from_str(&answer[json_at..]).unwrap());
    // Unknown route and wrong method: JSON 404 / 405.
    let (status, text) = s.post_bytes("/v1/nothing", b"{}".to_vec(), None).await;
    assert_eq!(status, 404);
    check_error_shape(&serde_json::from_str(&text).unwrap());
    let (status, text) = s.get("/v1/completions").await;
    assert_eq!(status, 405);
    check_error_shape(&serde_json::from_str(&text).unwrap());
    // Still healthy.
    assert_eq!(s.get("/health").await.0, 200);
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key() {
    let s = Server::start(Options {
        server: ServerConfig {
            api_key: Some("sk-test".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let body = completion("key", 2).to_string().into_bytes();
    for key in [None, Some("sk-wrong"), Some("sk-test2"), Some("")] {
        let (status, text) = s.post_bytes("/v1/completions", body.clone(), key).await;
        assert_eq!(status, 401, "{key:?}");
        let v: Value = serde_json::from_str(&text).unwrap();
        check_error_shape(&v);
        assert_eq!(v["error"]["code"], "invalid_api_key");
    }
    let (status, _) = s
        .post_bytes("/v1/completions", body.clone(), Some("sk-test"))
        .await;
    assert_eq!(status, 200);
    let models = s.client.get(s.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 401);
    // Probes and scrapers need no key.
    assert_eq!(s.get("/health").await.0, 200);
    assert_eq!(s.get("/metrics").await.0, 200);
    s.shutdown().await.unwrap();
}

/// Waits until the engine holds no KV block and no request; panics after `limit`.
async fn wait_idle(engine: &Engine, limit: Duration) {
    let start = Instant::now();
    loop {
        let st = engine.stats();
        if st.blocks_in_use == 0 && st.running == 0 && st.waiting == 0 {
            return;
        }
        assert!(start.elapsed() < limit, "the engine is still busy: {st:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `cond` holds; panics after 2 s.
async fn wait_until(cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(2), "timed out");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The value of a metric line `name value` in `/metrics`.
async fn metric(s: &Server, name: &str) -> f64 {
    let (_, text) = s.get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_cancels_the_generation() {
    let s = Server::default().await;
    // 32 samples of 120 tokens: a few hundred ms of work, cut short by the disconnect.
    let long =
        json!({"prompt": "long", "max_tokens": 120, "n": 32, "temperature": 1.0, "seed": 3, "stream": true});
    let total = 32 * 120;
    let mut resp = s
        .client
        .post(s.url("/v1/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    // The engine publishes its stats after each step: wait until they show the request.
    wait_until(|| s.engine.stats().generated_tokens > 0).await;
    drop(resp);
    wait_idle(&s.engine, Duration::from_secs(2)).await;
    let generated = s.engine.stats().generated_tokens;
    assert!(
        generated < total,
        "the stream was not cancelled: {generated} tokens"
    );
    assert_eq!(metric(&s, "kiln_requests_cancelled_total").await, 1.0);

    // Non-streaming: the handler's future is dropped when the connection closes.
    let mut long = long;
    long["stream"] = json!(false);
    let body = long.to_string();
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    // Wait until the engine runs it (the engine was idle: new tokens are this request's), then
    // hang up.
    wait_until(|| s.engine.stats().generated_tokens > generated).await;
    drop(tcp);
    wait_idle(&s.engine, Duration::from_secs(2)).await;
    let more = s.engine.stats().generated_tokens - generated;
    assert!(more < total, "the request was not cancelled: {more} tokens");
    assert_eq!(metric(&s, "kiln_requests_cancelled_total").await, 2.0);
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_queue_gets_429() {
    let s = Server::start(Options {
        engine: EngineConfig {
            max_running: 1,
            max_queue: 2,
            kv_memory_bytes: 16 << 20,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let body = json!({"prompt": "burst", "max_tokens": 100, "n": 8, "temperature": 1.0, "seed": 1});
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, url, body) = (s.client.clone(), s.url("/v1/completions"), body.clone());
        tasks.push(tokio::spawn(async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            let status = resp.status().as_u16();
            let retry = resp.headers().get("retry-after").is_some();
            (status, retry, resp.json::<Value>().await.unwrap())
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (status, retry, v) = t.await.unwrap();
        match status {
            200 => {
                ok += 1;
                assert_eq!(v["usage"]["completion_tokens"], 800);
            }
            429 => {
                limited += 1;
                assert!(retry);
                check_error_shape(&v);
                assert_eq!(v["error"]["code"], "rate_limit_exceeded");
            }
            _ => panic!("status {status}: {v}"),
        }
    }
    assert!(ok >= 3 && limited >= 1, "{ok} answered, {limited} refused");
    wait_idle(&s.engine, Duration::from_secs(2)).await;
    s.ok("/v1/completions", &completion("after", 2)).await;
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_clients_each_get_their_answer() {
    let s = Server::default().await;
    let request = |i: usize| -> (&'static str, Value) {
        let prompt = format!("client {} says", i % 8);
        if i % 2 == 1 {
            ("/v1/chat/completions", chat(&prompt, 12))
        } else {
            ("/v1/completions", completion(&prompt, 12))
        }
    };
    // The lone answers.
    let mut expected = Vec::new();
    for i in 0..16 {
        let (path, body) = request(i);
        expected.push(texts(&s.ok(path, &body).await, path.contains("chat")));
    }
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (path, mut body) = request(i);
        let streamed = i % 4 >= 2;
        if streamed {
            body["stream"] = json!(true);
        }
        let (client, url) = (s.client.clone(), s.url(path));
        tasks.push(tokio::spawn(async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let text = resp.text().await.unwrap();
            let chat = path.contains("chat");
            if streamed {
                stream_texts(&sse_chunks(&text), chat)
                    .into_iter()
                    .map(|(t, reason)| {
                        assert_eq!(reason, "length");
                        t
                    })
                    .collect()
            } else {
                texts(&serde_json::from_str(&text).unwrap(), chat)
            }
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), expected[i % 16], "client {i}");
    }
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_then_drops() {
    // In-flight requests finish; then serve returns Ok and the port is closed.
    let s = Server::default().await;
    let addr = s.addr;
    let body =
        json!({"prompt": "drain", "max_tokens": 120, "n": 16, "temperature": 1.0, "seed": 5, "stream": true});
    let resp = s
        .client
        .post(s.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let _ = s.stop.as_ref().map(|_| ());
    let Server {
        stop, task, engine, ..
    } = s;
    let _ = stop.unwrap().send(());
    let chunks = sse_chunks(&resp.text().await.unwrap());
    assert_eq!(stream_texts(&chunks, false).len(), 16);
    task.unwrap().await.unwrap().unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting connections"
    );
    engine.shutdown();

    // A request that never completes (its body never arrives) is dropped after the drain timeout.
    let s = Server::start(Options {
        server: ServerConfig {
            drain_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"pro")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    s.shutdown().await.unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest).await;
}

/// xorshift64*: the fuzz test's generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A mutation of a valid body that must be refused with a 4xx.
fn invalid_mutation(rng: &mut Rng, valid: &Value) -> Vec<u8> {
    let text = valid.to_string();
    let bytes = text.as_bytes();
    match rng.below(7) {
        // Truncated JSON.
        0 => bytes[..rng.below(bytes.len() - 1) + 1].to_vec(),
        // An invalid UTF-8 byte somewhere.
        1 => {
            let mut b = bytes.to_vec();
            let at = rng.below(b.len() + 1);
            b.insert(at, [0xff, 0xc3, 0x80 | 0x40, 0xed][rng.below(4)]);
            if b.get(at + 1).is_some_and(|&c| (0x80..0xc0).contains(&c)) {
                b[at] = 0xff;
            }
            b
        }
        // Deep nesting.
        2 => {
            let depth = [129, 1000, 10_000, 100_000][rng.below(4)];
            let open = ["[", "{\"a\":"][rng.below(2)];
            format!("{{\"prompt\": {}", open.repeat(depth)).into_bytes()
        }
        // A field with a wrong type or an out-of-range value (for both routes).
        3 | 4 => {
            let huge = json!(18446744073709551616u128 as f64);
            let (s, o, deep) = (json!("1"), json!({"nested": [1]}), json!([[[]]]));
            let fields: [(&str, Vec<Value>); 11] = [
                (
                    "max_tokens",
                    vec![
                        s.clone(),
                        json!(1e30),
                        json!(-1),
                        huge.clone(),
                        o.clone(),
                        deep.clone(),
                        json!(true),
                        json!(0),
                        json!(0.5),
                    ],
                ),
                (
                    "temperature",
                    vec![
                        s.clone(),
                        json!(1e30),
                        json!(-1e30),
                        json!(-1),
                        o.clone(),
                        json!(true),
                        json!(2.5),
                    ],
                ),
                (
                    "top_p",
                    vec![s.clone(), json!(1e30), json!(0), json!(-1), o.clone(), json!(1.5)],
                ),
                (
                    "n",
                    vec![
                        s.clone(),
                        json!(1e30),
                        huge.clone(),
                        json!(-1),
                        json!(0),
                        o.clone(),
                        json!(true),
                        json!(0.5),
                    ],
                ),
                (
                    "seed",
                    vec![
                        s.clone(),
                        json!(1e30),
                        json!(3.6e19),
                        o.clone(),
                        deep.clone(),
                        json!(true),
                        json!(0.5),
                    ],
                ),
                (
                    "stop",
                    vec![
                        json!(1),
                        o.clone(),
                        deep.clone(),
                        json!(true),
                        json!([""]),
                        json!(["a", "b", "c", "d", "e"]),
                    ],
                ),
                (
                    "logprobs",
                    vec![s.clone(), json!(1e30), json!(-1), o.clone(), deep.clone()],
                ),
                ("stream", vec![s.clone(), json!(1), o.clone(), deep.clone()]),
                (
                    "presence_penalty",
                    vec![s.clone(), json!(1e30), json!(-3), o.clone(), json!(true)],
                ),
                (
                    "top_k",
                    vec![
                        s.clone(),
                        json!(1e30),
                        json!(-2),
                        o.clone(),
                        json!(true),
                        json!(0.5),
                    ],
                ),
                ("min_p", vec![s, json!(1e30), json!(-1), json!(2), o, json!(true)]),
            ];
            let (field, values) = &fields[rng.below(fields.len())];
            let mut v = valid.clone();
            v[*field] = values[rng.below(values.len())].clone();
            v.to_string().into_bytes()
        }
        // Garbage before the JSON.
        5 => {
            let mut b: Vec<u8> = (0..rng.below(8) + 1)
                .map(|_| b"x]}:,\"\\"[rng.below(7)])
                .collect();
            b.extend_from_slice(bytes);
            b
        }
        // A huge number literal.
        _ => text
            .replacen(
                "\"max_tokens\":4",
                &format!("\"max_tokens\":{}", "9".repeat(rng.below(400) + 25)),
                1,
            )
            .into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_bodies_are_refused_and_the_server_lives() {
    let s = Server::default().await;
    let valid = [
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "fuzz", "max_tokens": 4, "temperature": 0.5, "top_p": 0.9, "n": 1, "seed": 1, "stop": ["zz"], "logprobs": 1, "stream": false}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "fuzz"}], "max_tokens": 4, "temperature": 0.5, "stream": true}),
        ),
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..300 {
        let (path, body) = &valid[case % 2];
        let bytes = invalid_mutation(&mut rng, body);
        let (status, text) = s.post_bytes(path, bytes.clone(), None).await;
        assert!(
            (400..500).contains(&status),
            "case {case}: {status} for {:?}: {text}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        );
        check_error_shape(&serde_json::from_str(&text).unwrap());
    }
    // Random byte flips may stay valid: never a 5xx.
    for case in 0..200 {
        let (path, body) = &valid[case % 2];
        let mut bytes = body.to_string().into_bytes();
        for _ in 0..rng.below(3) + 1 {
            let at = rng.below(bytes.len());
            bytes[at] = rng.next() as u8;
        }
        let (status, text) = s.post_bytes(path, bytes, None).await;
        assert!(status < 500, "case {case}: {status}: {text}");
    }
    assert_eq!(s.get("/health").await.0, 200);
    s.ok("/v1/completions", &completion("still alive", 3)).await;
    s.shutdown().await.unwrap();
}
