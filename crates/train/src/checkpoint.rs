//! Checkpoints: `DIR/checkpoints/step-XXXXXXXX/` holding `model.safetensors` (the parameters by
//! their Hugging Face-style dotted names), `optimizer.safetensors`
//! ([`Optimizer::state_tensors`](kiln_optim::Optimizer::state_tensors)) and
//! `trainer_state.json` ([`TrainerState`]: step, epoch, position in the epoch, RNG state, config,
//! metrics, and the size and CRC-32C of both tensor files).
//!
//! A checkpoint is written into a temporary sibling directory (`.tmp-step-...`); every file is
//! synced, `trainer_state.json` last, then the directory is renamed into place and its parent
//! synced. A crash therefore leaves either no `step-*` directory or a complete one; and
//! [`latest_checkpoint`] also verifies every candidate (state parses, files have the recorded
//! size and CRC), so a damaged checkpoint is skipped rather than resumed from.
//!
//! Writing the checkpoint of step `s` keeps the newest `keep_last` checkpoints up to `s` and
//! removes those of later steps: they belong to a run that this one was resumed before, and the
//! run directory now follows this one.
//!
//! The trainer writes checkpoints on a background thread: it hands the thread snapshots of
//! the tensors (cheap handles: tensors are immutable) and goes on.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use kiln_tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::metrics::{History, MetricAccumulator};
use crate::{Error, Result};

/// The weights file of a checkpoint.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer-state file of a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The trainer-state file of a checkpoint (written last).
pub const STATE_FILE: &str = "trainer_state.json";
/// The subdirectory of a run directory that holds its checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// The `format` field of every [`TrainerState`].
pub const STATE_FORMAT: &str = "kiln-trainer-state";
/// The current [`TrainerState`] version.
pub const STATE_VERSION: u32 = 1;

const TMP_PREFIX: &str = ".tmp-";

/// The directory name of the checkpoint at `step`: `step-00000938`.
pub fn checkpoint_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// The step of a checkpoint directory name (`step-00000938` → 938).
fn parse_step(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Size and checksum of a checkpoint file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Length in bytes.
    pub bytes: u64,
    /// CRC-32C (Castagnoli) of the contents.
    pub crc32c: u32,
}

/// The state of a generator: its 32-byte key (hex) and word position (decimal, as it exceeds
/// `u64`), as [`kiln_tensor::TensorRng::state`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The key as 64 hex digits.
    pub key: String,
    /// The word position.
    pub word_pos: String,
}

impl RngState {
    /// From a generator.
    pub fn of(rng: &kiln_tensor::TensorRng) -> RngState {
        let (key, pos) = rng.state();
        RngState {
            key: key.iter().map(|b| format!("{b:02x}")).collect(),
            word_pos: pos.to_string(),
        }
    }

    /// Rebuild the generator; a malformed state is an error.
    pub fn to_rng(&self) -> std::result::Result<kiln_tensor::TensorRng, String> {
        let bytes = self.key.as_bytes();
        if bytes.len() != 64 {
            return Err(format!(
                "rng key must be 64 hex digits, found {} characters",
                bytes.len()
            ));
        }
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            let s = std::str::from_utf8(&bytes[2 * i..2 * i + 2]).map_err(|e| e.to_string())?;
            *k = u8::from_str_radix(s, 16).map_err(|_| format!("rng key: '{s}' is not hex"))?;
        }
        let pos: u128 = self
            .word_pos
            .parse()
            .map_err(|_| format!("rng word_pos '{}' is not an integer", self.word_pos))?;
        Ok(kiln_tensor::TensorRng::from_state(key, pos))
    }
}

/// The model a checkpoint belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model's registered name.
    pub name: String,
    /// The model's configuration.
    pub config: serde_json::Value,
}

/// The contents of `trainer_state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Always [`STATE_FORMAT`].
    pub format: String,
    /// [`STATE_VERSION`] when written.
    pub version: u32,
    /// Optimizer steps taken.
    pub step: usize,
    /// The current epoch (0-based): the one in progress, or the next one when `batch_offset` is 0.
    pub epoch: usize,
    /// Batches of `epoch` already consumed.
    pub batch_offset: usize,
    /// The same position in the training data as kiln-data's serialisable
    /// [`PipelineState`](kiln_data::PipelineState): epoch, batch offset and the fingerprint of the
    /// loader's settings (dataset length, batch size, shuffle seed, `drop_last`, replicas),
    /// which a run continuing mid-epoch checks. Absent from checkpoints written before it existed; those resume from
    /// `epoch` and `batch_offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<kiln_data::PipelineState>,
    /// The trainer's generator.
    pub rng: RngState,
    /// The configuration of the run that wrote the checkpoint.
    pub config: TrainConfig,
    /// The model.
    pub model: ModelInfo,
    /// Completed epochs and logged steps.
    pub history: History,
    /// Running training metrics of the epoch in progress.
    pub epoch_metrics: MetricAccumulator,
    /// Running training metrics since the last logging step.
    pub window_metrics: MetricAccumulator,
    /// Seconds spent so far in the epoch in progress.
    pub epoch_seconds: f64,
    /// Callback states, by callback name.
    pub callbacks: BTreeMap<String, serde_json::Value>,
    /// Size and CRC-32C of [`MODEL_FILE`] and [`OPTIMIZER_FILE`].
    pub files: BTreeMap<String, FileInfo>,
    /// When the checkpoint was taken (seconds since the Unix epoch).
    pub wall_time: f64,
}

/// What a checkpoint needs, snapshotted on the training thread.
pub(crate) struct CheckpointJob {
    /// The checkpoints directory (`DIR/checkpoints`).
    pub root: PathBuf,
    /// Parameters by name.
    pub model: Vec<(String, Tensor)>,
    /// Optimizer state by key.
    pub optimizer: Vec<(String, Tensor)>,
    /// Trainer state (its `files` are filled in by the writer).
    pub state: TrainerState,
    /// Keep this many newest checkpoints.
    pub keep_last: usize,
}

/// Write `bytes` to `path` and sync it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Sync a directory (best effort: not every platform can).
fn sync_dir(path: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(path) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never a
/// part: a temporary file beside it, fsynced, then renamed over it.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!("{TMP_PREFIX}{name}-{}", unique_suffix()));
    // A failure is reported on `path`, the file the caller asked for, not the temporary name.
    let written = write_synced(&tmp, bytes)
        .map_err(|e| match e {
            Error::Io { source, .. } => Error::io(path, source),
            other => other,
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir);
    Ok(())
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Write one checkpoint synchronously (temporary directory, synced files, rename), then remove
/// all but the newest `keep_last`. Returns the checkpoint's directory.
pub(crate) fn write_checkpoint(job: CheckpointJob) -> Result<PathBuf> {
    let CheckpointJob {
        root,
        model,
        optimizer,
        mut state,
        keep_last,
    } = job;
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = checkpoint_name(state.step);
    let final_dir = root.join(&name);
    let tmp = root.join(format!("{TMP_PREFIX}{name}-{}", unique_suffix()));
    let result = (|| -> Result<()> {
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for (file, tensors) in [(MODEL_FILE, &model), (OPTIMIZER_FILE, &optimizer)] {
            let bytes =
                kiln_tensor::io::save_safetensors_to_bytes(tensors.iter().map(|(n, t)| (n.as_str(), t)))?;
            write_synced(&tmp.join(file), &bytes)?;
            state.files.insert(
                file.to_string(),
                FileInfo {
                    bytes: bytes.len() as u64,
                    crc32c: crc32c::crc32c(&bytes),
                },
            );
        }
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|e| Error::checkpoint(&tmp, format!("cannot serialise the trainer state: {e}")))?;
        write_synced(&tmp.join(STATE_FILE), &json)?;
        sync_dir(&tmp);
        // A checkpoint of the same step (a re-run): the new one replaces it. The old one leaves
        // the `step-*` namespace in one rename before anything of it is deleted.
        let replaced = if final_dir.exists() {
            Some(retire(&root, &final_dir).map_err(|e| Error::io(&final_dir, e))?)
        } else {
            None
        };
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        sync_dir(&root);
        if let Some(old) = replaced {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    prune(&root, keep_last, state.step);
    Ok(final_dir)
}

/// After writing the checkpoint of step `current`: remove the `step-*` directories of later
/// steps (stale: left by a run this one resumed before) and all but the newest `keep_last` of
/// the others (best effort).
fn prune(root: &Path, keep_last: usize, current: usize) {
    let mut steps = list_step_dirs(root).unwrap_or_default();
    steps.sort_by_key(|(s, _)| std::cmp::Reverse(*s));
    let (later, mut kept): (Vec<_>, Vec<_>) = steps.into_iter().partition(|(s, _)| *s > current);
    let old = kept.split_off(keep_last.max(1).min(kept.len()));
    for (_, dir) in later.into_iter().chain(old) {
        remove_step_dir(root, &dir, |d| std::fs::remove_dir_all(d));
    }
}

/// Moves the checkpoint directory `dir` out of the `step-*` namespace in one atomic rename (to a
/// temporary name that [`remove_stale_temporaries`] cleans) and returns its new path.
fn retire(root: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trash = root.join(format!("{TMP_PREFIX}removed-{name}-{}", unique_suffix()));
    std::fs::rename(dir, &trash)?;
    sync_dir(root);
    Ok(trash)
}

/// Removes a checkpoint directory so that no moment leaves a half-deleted `step-*` directory
/// (one that still looks like a checkpoint): [`retire`] first, then `delete` the retired copy
/// (best effort; a `kill -9` during the delete leaves only a temporary that the next start
/// removes).
fn remove_step_dir(root: &Path, dir: &Path, delete: impl FnOnce(&Path) -> std::io::Result<()>) {
    if let Ok(trash) = retire(root, dir) {
        let _ = delete(&trash);
    }
}

/// Remove temporary directories that interrupted writes left in `root` (best effort).
pub(crate) fn remove_stale_temporaries(root: &Path) {
    if let Ok(rd) = std::fs::read_dir(root) {
        for entry in rd.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// `(step, path)` of every `step-*` directory in `root`.
fn list_step_dirs(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let rd = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        let name = entry.file_name();
        if let Some(step) = parse_step(&name.to_string_lossy()) {
            if entry.path().is_dir() {
                out.push((step, entry.path()));
            }
        }
    }
    Ok(out)
}

/// Check one checkpoint directory: `trainer_state.json` parses and is of this format, and both
/// tensor files exist with the recorded size and CRC-32C. Returns the state.
pub fn verify_checkpoint(dir: impl AsRef<Path>) -> Result<TrainerState> {
    let dir = dir.as_ref();
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read(&state_path)
        .map_err(|e| Error::checkpoint(dir, format!("cannot read {STATE_FILE}: {e}")))?;
    let state: TrainerState = serde_json::from_slice(&text)
        .map_err(|e| Error::checkpoint(dir, format!("{STATE_FILE} is not a valid trainer state: {e}")))?;
    if state.format != STATE_FORMAT {
        return Err(Error::checkpoint(
            dir,
            format!(
                "{STATE_FILE} has format '{}', expected '{STATE_FORMAT}'",
                state.format
            ),
        ));
    }
    if state.version > STATE_VERSION {
        return Err(Error::checkpoint(
            dir,
            format!(
                "{STATE_FILE} has version {}, this kiln reads up to {STATE_VERSION}",
                state.version
            ),
        ));
    }
    for file in [MODEL_FILE, OPTIMIZER_FILE] {
        let info = state
            .files
            .get(file)
            .ok_or_else(|| Error::checkpoint(dir, format!("{STATE_FILE} does not record {file}")))?;
        let path = dir.join(file);
        let bytes =
            std::fs::read(&path).map_err(|e| Error::checkpoint(dir, format!("cannot read {file}: {e}")))?;
        if bytes.len() as u64 != info.bytes {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "{file} has {} bytes, {STATE_FILE} records {} (truncated or replaced)",
                    bytes.len(),
                    info.bytes
                ),
            ));
        }
        let crc = crc32c::crc32c(&bytes);
        if crc != info.crc32c {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "{file} fails its checksum (CRC-32C {crc:08x}, recorded {:08x}): the file is corrupt",
                    info.crc32c
                ),
            ));
        }
    }
    Ok(state)
}

/// The checkpoints directory of `dir`: `dir/checkpoints` when it exists, else `dir` itself.
fn checkpoints_root(dir: &Path) -> PathBuf {
    let sub = dir.join(CHECKPOINTS_DIR);
    if sub.is_dir() {
        sub
    } else {
        dir.to_path_buf()
    }
}

/// What [`scan_checkpoints`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointScan {
    /// The newest complete checkpoint.
    pub latest: Option<PathBuf>,
    /// Newer candidates that were skipped, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// The newest complete checkpoint under `dir` (a run directory or its `checkpoints/`), and the
/// newer candidates that were skipped, with why. A missing directory has none.
pub fn scan_checkpoints(dir: impl AsRef<Path>) -> Result<CheckpointScan> {
    let root = checkpoints_root(dir.as_ref());
    if !root.exists() {
        return Ok(CheckpointScan::default());
    }
    let mut steps = list_step_dirs(&root)?;
    steps.sort_by_key(|(s, _)| std::cmp::Reverse(*s));
    let mut skipped = Vec::new();
    for (_, path) in steps {
        match verify_checkpoint(&path) {
            Ok(_) => {
                return Ok(CheckpointScan {
                    latest: Some(path),
                    skipped,
                })
            }
            Err(e) => skipped.push((path, e.to_string())),
        }
    }
    Ok(CheckpointScan {
        latest: None,
        skipped,
    })
}

/// A `step-*` checkpoint directory and the outcome of [`verify_checkpoint`] on it.
#[derive(Clone, Debug)]
pub struct CheckpointCheck {
    /// Its step.
    pub step: usize,
    /// Its directory.
    pub path: PathBuf,
    /// `None` when complete, else why it is damaged or incomplete.
    pub problem: Option<String>,
}

/// Every `step-*` checkpoint under `dir` (a run directory or its `checkpoints/`), by step, each
/// verified. A missing directory has none.
pub fn verify_all_checkpoints(dir: impl AsRef<Path>) -> Result<Vec<CheckpointCheck>> {
    let root = checkpoints_root(dir.as_ref());
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut steps = list_step_dirs(&root)?;
    steps.sort();
    Ok(steps
        .into_iter()
        .map(|(step, path)| {
            let problem = verify_checkpoint(&path).err().map(|e| e.to_string());
            CheckpointCheck { step, path, problem }
        })
        .collect())
}

/// The newest complete checkpoint under `dir` (a run directory or its `checkpoints/`): the
/// highest-step `step-*` directory that passes [`verify_checkpoint`]. Temporary directories of
/// interrupted writes and damaged checkpoints are never chosen.
pub fn latest_checkpoint(dir: impl AsRef<Path>) -> Result<Option<PathBuf>> {
    Ok(scan_checkpoints(dir)?.latest)
}

/// A verified checkpoint, loaded.
pub struct Checkpoint {
    /// Its directory.
    pub path: PathBuf,
    /// The trainer state.
    pub state: TrainerState,
    /// The parameters by name.
    pub model: HashMap<String, Tensor>,
    /// The optimizer state by key.
    pub optimizer: HashMap<String, Tensor>,
}

/// Verify and load the checkpoint in `dir` (a `step-*` directory). A damaged or foreign file is
/// an [`Error::Checkpoint`] naming the directory, the file and the problem.
pub fn load_checkpoint(dir: impl AsRef<Path>) -> Result<Checkpoint> {
    let dir = dir.as_ref();
    let state = verify_checkpoint(dir)?;
    let load = |file: &str| {
        kiln_tensor::io::load_safetensors(dir.join(file))
            .map_err(|e| Error::checkpoint(dir, format!("{file}: {e}")))
    };
    Ok(Checkpoint {
        path: dir.to_path_buf(),
        model: load(MODEL_FILE)?,
        optimizer: load(OPTIMIZER_FILE)?,
        state,
    })
}

/// Writes checkpoints on a background thread, one at a time, in order.
///
/// At most one checkpoint waits while another is being written; a third request blocks until
/// the first is done. Errors of background writes are reported by the next
/// [`CheckpointWriter::submit`] or by [`CheckpointWriter::wait`].
pub(crate) struct CheckpointWriter {
    tx: Option<SyncSender<CheckpointJob>>,
    handle: Option<JoinHandle<()>>,
    errors: Arc<Mutex<Vec<Error>>>,
    written: Arc<Mutex<Vec<PathBuf>>>,
}

impl CheckpointWriter {
    /// Start the writer thread for checkpoints under `root`, first removing temporary
    /// directories that interrupted writes left there.
    pub fn start(root: &Path) -> Result<CheckpointWriter> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        remove_stale_temporaries(root);
        let (tx, rx) = sync_channel::<CheckpointJob>(1);
        let errors = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let (errs, done) = (errors.clone(), written.clone());
        let handle = std::thread::Builder::new()
            .name("kiln-checkpoint".into())
            .spawn(move || {
                for job in rx {
                    match write_checkpoint(job) {
                        Ok(p) => done.lock().unwrap_or_else(PoisonError::into_inner).push(p),
                        Err(e) => errs.lock().unwrap_or_else(PoisonError::into_inner).push(e),
                    }
                }
            })
            .map_err(|e| Error::io(root, e))?;
        Ok(CheckpointWriter {
            tx: Some(tx),
            handle: Some(handle),
            errors,
            written,
        })
    }

    fn take_error(&self) -> Result<()> {
        let mut errs = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.remove(0))
        }
    }

    /// Queue a checkpoint (reports an earlier background failure first).
    pub fn submit(&self, job: CheckpointJob) -> Result<()> {
        self.take_error()?;
        let root = job.root.clone();
        match &self.tx {
            Some(tx) => tx
                .send(job)
                .map_err(|_| Error::checkpoint(root, "the checkpoint writer thread stopped unexpectedly")),
            None => Err(Error::checkpoint(root, "the checkpoint writer is closed")),
        }
    }

    /// Wait until every queued checkpoint is written; the first failure, if any, is returned.
    pub fn wait(&mut self) -> Result<Vec<PathBuf>> {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.take_error()?;
        Ok(std::mem::take(
            &mut *self.written.lock().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed atomic write names the file asked for, not its temporary sibling (a run
    /// directory that cannot be written used to be reported as `.tmp-run.json-...`).
    #[test]
    fn a_failed_atomic_write_names_the_file() {
        let path = std::env::temp_dir()
            .join(format!("kiln-no-dir-{}", std::process::id()))
            .join("run.json");
        let e = write_file_atomically(&path, b"{}").unwrap_err().to_string();
        assert!(e.starts_with(&path.display().to_string()), "{e}");
        assert!(!e.contains(TMP_PREFIX), "{e}");
    }

    #[test]
    fn names_parse() {
        assert_eq!(checkpoint_name(938), "step-00000938");
        assert_eq!(parse_step("step-00000938"), Some(938));
        assert_eq!(parse_step("step-"), None);
        assert_eq!(parse_step(".tmp-step-00000938-1-2"), None);
        assert_eq!(parse_step("step-12a"), None);
    }

    /// Pruning interrupted in the middle of a delete (here: a delete that stops after one file,
    /// as a `kill -9` would) leaves no `step-*` directory with missing files: the directory left
    /// the namespace before anything was deleted, and the next start removes the leftover.
    #[test]
    fn interrupted_pruning_leaves_no_damaged_checkpoint() {
        let root = std::env::temp_dir().join(format!("kiln-prune-{}", unique_suffix()));
        let old = root.join(checkpoint_name(1));
        std::fs::create_dir_all(&old).unwrap();
        for f in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
            std::fs::write(old.join(f), b"x").unwrap();
        }
        remove_step_dir(&root, &old, |d| std::fs::remove_file(d.join(OPTIMIZER_FILE)));
        assert!(
            list_step_dirs(&root).unwrap().is_empty(),
            "a damaged step-* directory is left"
        );
        remove_stale_temporaries(&root);
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn rng_state_round_trips() {
        let mut rng = kiln_tensor::TensorRng::new(5);
        rng.next_u64();
        let s = RngState::of(&rng);
        let mut back = s.to_rng().unwrap();
        assert_eq!(back.next_u64(), rng.next_u64());
        let bad = RngState {
            key: "zz".into(),
            word_pos: "1".into(),
        };
        assert!(bad.to_rng().is_err());
    }
}
