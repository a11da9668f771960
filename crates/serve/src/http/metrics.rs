//! `/metrics`: Prometheus text exposition of the engine's state and the server's counters and
//! latency histograms (measured here, from the timing of the engine's events).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::router::App;

/// Upper bounds of the time-to-first-token buckets, in seconds.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0,
];
/// Upper bounds of the time-per-output-token buckets, in seconds.
const TPOT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
/// Upper bounds of the request latency buckets, in seconds.
const E2E_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 300.0,
];

/// A histogram with fixed buckets.
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), then the count above the last bound.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, x: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| x <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += x;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The server's own counters and histograms (the engine's come from
/// [`Engine::stats`](crate::Engine::stats) at each scrape).
pub(crate) struct Metrics {
    ttft: Mutex<Histogram>,
    tpot: Mutex<Histogram>,
    e2e: Mutex<Histogram>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    /// Samples finished, by finish reason.
    finished: Mutex<BTreeMap<&'static str, u64>>,
    /// HTTP responses by (route, status).
    http: Mutex<BTreeMap<(String, u16), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ttft: Mutex::new(Histogram::new(TTFT_BUCKETS)),
            tpot: Mutex::new(Histogram::new(TPOT_BUCKETS)),
            e2e: Mutex::new(Histogram::new(E2E_BUCKETS)),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            finished: Mutex::new(BTreeMap::new()),
            http: Mutex::new(BTreeMap::new()),
        }
    }
}

fn observe(h: &Mutex<Histogram>, x: f64) {
    if let Ok(mut h) = h.lock() {
        h.observe(x);
    }
}

impl Metrics {
    /// A request's time to its first token.
    pub fn observe_ttft(&self, seconds: f64) {
        observe(&self.ttft, seconds);
    }

    /// A sample's mean time between output tokens.
    pub fn observe_tpot(&self, seconds: f64) {
        observe(&self.tpot, seconds);
    }

    /// A request's time from arrival to its last token.
    pub fn observe_e2e(&self, seconds: f64) {
        observe(&self.e2e, seconds);
    }

    /// Prompt tokens of a submitted request.
    pub fn add_prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Tokens generated for a completed request.
    pub fn add_completion_tokens(&self, n: usize) {
        self.completion_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A sample finished for `reason`.
    pub fn finished(&self, reason: &'static str) {
        if let Ok(mut m) = self.finished.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// A request whose client went away before it finished.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// A request the engine failed.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP response.
    fn count_http(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.http.lock() {
            *m.entry((route.to_string(), status)).or_default() += 1;
        }
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// The exposition text.
fn render(app: &App) -> String {
    let mut out = String::new();
    let state = &app.state;
    let ready = state.ready();
    let alive = ready.is_some_and(|r| r.engine.is_alive());
    metric(
        &mut out,
        "kiln_model_ready",
        "gauge",
        "1 when the model is loaded and its engine runs.",
        u8::from(alive),
    );
    let s = ready.map(|r| r.engine.stats()).unwrap_or_default();
    metric(
        &mut out,
        "kiln_num_requests_running",
        "gauge",
        "Requests with a sample in the running batch.",
        s.running,
    );
    metric(
        &mut out,
        "kiln_num_requests_waiting",
        "gauge",
        "Requests waiting for admission (new or preempted).",
        s.waiting,
    );
    metric(
        &mut out,
        "kiln_kv_blocks_total",
        "gauge",
        "Blocks in the KV cache pool.",
        s.blocks_total,
    );
    metric(
        &mut out,
        "kiln_kv_blocks_in_use",
        "gauge",
        "KV blocks held by sequences.",
        s.blocks_in_use,
    );
    let usage = if s.blocks_total > 0 {
        s.blocks_in_use as f64 / s.blocks_total as f64
    } else {
        0.0
    };
    metric(
        &mut out,
        "kiln_kv_cache_usage_ratio",
        "gauge",
        "Fraction of the KV blocks in use.",
        usage,
    );
    metric(
        &mut out,
        "kiln_prefix_cache_queried_tokens_total",
        "counter",
        "Prompt tokens looked up in the prefix cache.",
        s.prefix_queried_tokens,
    );
    metric(
        &mut out,
        "kiln_prefix_cache_hit_tokens_total",
        "counter",
        "Prompt tokens found in the prefix cache.",
        s.prefix_hit_tokens,
    );
    let hit_rate = if s.prefix_queried_tokens > 0 {
        s.prefix_hit_tokens as f64 / s.prefix_queried_tokens as f64
    } else {
        0.0
    };
    metric(
        &mut out,
        "kiln_prefix_cache_hit_rate",
        "gauge",
        "Prefix cache hit tokens over queried tokens since the start.",
        hit_rate,
    );
    metric(
        &mut out,
        "kiln_generation_tokens_total",
        "counter",
        "Tokens generated by the engine.",
        s.generated_tokens,
    );
    metric(
        &mut out,
        "kiln_preemptions_total",
        "counter",
        "Sequences preempted (blocks freed, recomputed later).",
        s.preemptions,
    );
    metric(
        &mut out,
        "kiln_engine_steps_total",
        "counter",
        "Forward passes run by the engine.",
        s.steps,
    );
    metric(
        &mut out,
        "kiln_engine_requests_completed_total",
        "counter",
        "Requests the engine completed.",
        s.completed,
    );
    let m = state.metrics();
    metric(
        &mut out,
        "kiln_prompt_tokens_total",
        "counter",
        "Prompt tokens of submitted requests.",
        m.prompt_tokens.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "kiln_completion_tokens_total",
        "counter",
        "Tokens generated for completed requests (as reported in usage).",
        m.completion_tokens.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "kiln_requests_cancelled_total",
        "counter",
        "Generation requests whose client disconnected before the end.",
        m.cancelled.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "kiln_requests_failed_total",
        "counter",
        "Generation requests the engine failed.",
        m.failed.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP kiln_request_success_total Samples finished, by finish reason.\n# TYPE kiln_request_success_total counter"
    );
    if let Ok(f) = m.finished.lock() {
        for reason in ["stop", "length"] {
            let n = f.get(reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "kiln_request_success_total{{finished_reason=\"{reason}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP kiln_http_requests_total HTTP requests answered, by route and status.\n# TYPE kiln_http_requests_total counter"
    );
    if let Ok(h) = m.http.lock() {
        for ((route, status), n) in h.iter() {
            let _ = writeln!(
                out,
                "kiln_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
    for (h, name, help) in [
        (
            &m.ttft,
            "kiln_time_to_first_token_seconds",
            "Time from a request's arrival to its first generated token.",
        ),
        (
            &m.tpot,
            "kiln_time_per_output_token_seconds",
            "Mean time between a sample's output tokens.",
        ),
        (
            &m.e2e,
            "kiln_e2e_request_latency_seconds",
            "Time from a request's arrival to its last token.",
        ),
    ] {
        if let Ok(h) = h.lock() {
            h.render(&mut out, name, help);
        }
    }
    out
}

/// `GET /metrics`.
pub(crate) async fn handle(State(app): State<App>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        render(&app),
    )
        .into_response()
}

/// Middleware: counts every response by route and status, and logs it.
pub(crate) async fn count_requests(State(app): State<App>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    app.state.metrics().count_http(&route, status);
    tracing::info!(
        target: "kiln_serve::http",
        "{method} {path} {status} {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    response
}
