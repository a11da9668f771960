//! Fuzz targets of kiln's readers of untrusted files: each takes arbitrary bytes and must return
//! (accepting or refusing them), never panic, hang or allocate without bound.
//!
//! The same functions run under two drivers:
//! - `cargo run --release -p kiln-fuzz -- [--seconds N] [TARGET...]` (stable Rust): replays the
//!   checked-in corpus `fuzz/corpus/TARGET/` and mutates it for a while (`.ci/run` does this);
//! - `cargo +nightly fuzz run TARGET --fuzz-dir fuzz/libfuzzer` (libFuzzer, coverage-guided) for
//!   long campaigns.
//!
//! An input that crashes a target is saved under `fuzz/artifacts/TARGET/` and becomes a file of
//! `fuzz/regressions/TARGET/`, which `cargo test -p kiln-fuzz` replays.

pub mod mutate;
pub mod targets;

/// A fuzz target: a name (its corpus directory) and the function that takes an input.
pub struct Target {
    /// The name, as given on the command line and as the corpus directory.
    pub name: &'static str,
    /// Runs one input.
    pub run: fn(&[u8]),
    /// Inputs made at run time and added to the corpus (valid files of the current format,
    /// too large or too version-bound to check in).
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// No generated seeds: the checked-in corpus is all.
fn no_seeds() -> Vec<Vec<u8>> {
    Vec::new()
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "safetensors",
        run: targets::safetensors,
        seeds: no_seeds,
    },
    Target {
        name: "idx",
        run: targets::idx,
        seeds: no_seeds,
    },
    Target {
        name: "tokenizer_json",
        run: targets::tokenizer_json,
        seeds: no_seeds,
    },
    Target {
        name: "instruction_jsonl",
        run: targets::instruction_jsonl,
        seeds: no_seeds,
    },
    Target {
        name: "run_config",
        run: targets::run_config,
        seeds: no_seeds,
    },
    Target {
        name: "checkpoint",
        run: targets::checkpoint,
        seeds: targets::checkpoint_seeds,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The directory of this crate (corpus, regressions and artifacts live under it).
pub fn crate_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir`, sorted by name (none when it does not exist).
pub fn inputs_in(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}
