//! [`ServerConfig`]: the HTTP server's settings.

use std::time::Duration;

/// Settings of the HTTP server (the engine has its own, [`EngineConfig`](crate::EngineConfig)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// When set, every `/v1/*` request must carry `Authorization: Bearer <api_key>` (compared in
    /// constant time); others get 401. `/health` and `/metrics` never need it.
    pub api_key: Option<String>,
    /// The largest request body accepted, in bytes; a larger one gets 413. Default 1 MiB.
    pub body_limit_bytes: usize,
    /// On shutdown, how long requests in flight may take to finish; those still running after it
    /// are dropped (their generations cancelled). Default 30 s.
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            body_limit_bytes: 1 << 20,
            drain_timeout: Duration::from_secs(30),
        }
    }
}
