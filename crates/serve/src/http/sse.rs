//! Streaming responses: server-sent events exactly as OpenAI frames them — `data: {json}\n\n`
//! per chunk and `data: [DONE]\n\n` at the end.
//!
//! A task runs the [`Job`] and sends the framed chunks to the response body through a channel.
//! When the client disconnects, hyper drops the body, the channel closes, and the task drops the
//! job, which cancels the request in the engine.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::Value;
use tokio::sync::mpsc;

use super::generation::{Job, Update, Usage};

/// How a route turns updates into chunks.
pub(crate) trait Chunks: Send + 'static {
    /// Chunks sent before any token (chat: each choice's `role`).
    fn opening(&mut self) -> Vec<Value>;
    /// The chunk of an update, if it makes one.
    fn update(&mut self, update: Update) -> Option<Value>;
    /// The last chunk with `include_usage`: no choices, the `usage`.
    fn usage(&self, usage: Usage) -> Value;
}

/// `data: {json}\n\n`; with `include_usage`, every chunk carries `"usage": null` but the last.
fn frame(mut chunk: Value, include_usage: bool) -> Bytes {
    if include_usage {
        if let Some(o) = chunk.as_object_mut() {
            o.entry("usage").or_insert(Value::Null);
        }
    }
    Bytes::from(format!("data: {chunk}\n\n"))
}

/// The streaming response of `job`.
pub(crate) fn respond(job: Job, mut chunks: impl Chunks, include_usage: bool) -> Response {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        for c in chunks.opening() {
            let _ = tx.send(frame(c, include_usage));
        }
        let outcome = {
            let run = job.run(|update| match chunks.update(update) {
                Some(c) => tx.send(frame(c, include_usage)).is_ok(),
                None => true,
            });
            tokio::select! {
                outcome = run => Some(outcome),
                // The client went away: dropping `run` cancels the request.
                _ = tx.closed() => None,
            }
        };
        match outcome {
            None => return,
            Some(Ok(usage)) if include_usage => {
                let _ = tx.send(frame(chunks.usage(usage), false));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let _ = tx.send(frame(e.body(), false));
            }
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n"));
    });
    let stream =
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>)));
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
