//! Response ids (`cmpl-...`, `chatcmpl-...`), `created` timestamps, and the [`Head`] every
//! completion object or chunk starts with.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The current time in Unix seconds.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh id `prefix` + 24 hex digits: a process-wide counter hashed with a random key (not
/// guessable from earlier ids, never repeated within a process).
pub(crate) fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hash = |salt: u64| {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u64(salt);
        h.finish()
    };
    format!("{prefix}{:016x}{:08x}", hash(0), hash(1) as u32)
}

/// What every completion object or chunk starts with: its id, creation time and model.
pub(crate) struct Head {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
}

impl Head {
    /// The object `{id, object, created, model, choices}`.
    pub(crate) fn object(&self, object: &str, choices: Vec<serde_json::Value>) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_differ_and_have_the_prefix() {
        let (a, b) = (super::new_id("cmpl-"), super::new_id("cmpl-"));
        assert_ne!(a, b);
        assert!(a.starts_with("cmpl-") && a.len() == 5 + 24);
    }
}
