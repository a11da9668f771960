//! [`serve`]: the accept loop, with graceful shutdown bounded by the drain timeout.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::config::ServerConfig;
use super::router::router;
use super::state::ServerState;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves [`router`]`(state, &config)` on `listener` (HTTP/1.1) until `shutdown` completes.
///
/// Then it stops accepting connections, lets the requests in flight finish (idle keep-alive
/// connections close at once) for at most `config.drain_timeout`, drops the connections still
/// open after it (which cancels their generations), and returns `Ok(())`. The engine is left
/// running: shut it down afterwards.
pub async fn serve(
    listener: TcpListener,
    state: ServerState,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state, &config);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and alike: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
                let conn = graceful.watch(conn);
                connections.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = connections.len();
    tracing::info!(
        "shutting down: draining {open} connection(s) for at most {:.0} s",
        config.drain_timeout.as_secs_f64()
    );
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "drain timeout: dropping {} connection(s) still open; their requests are cancelled",
            connections.len()
        );
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}
