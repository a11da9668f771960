//! Checkpoints and resume: bit-exact continuation, and damaged checkpoints are never used.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use kiln_optim::Schedule;
use kiln_train::checkpoint::{MODEL_FILE, OPTIMIZER_FILE, STATE_FILE};
use kiln_train::{latest_checkpoint, verify_checkpoint, Error, TrainConfig, TrainerState};
use kiln_zoo::Model;

/// Train `2n` steps straight, and `n` steps + checkpoint + a new trainer (other initial weights)
/// + resume + `n` steps: the parameters must be bit-identical.
fn straight_vs_resumed(name: &str, n: usize, cfg: TrainConfig) {
    let data = blobs(100, 1);
    let val = blobs(30, 2);

    let mut straight = trainer(
        7,
        TrainConfig {
            max_steps: Some(2 * n),
            epochs: None,
            // Checkpointing along the way must not change training.
            out_dir: Some(scratch(&format!("{name}-straight"))),
            checkpoint_every_steps: Some(3),
            ..cfg.clone()
        },
    );
    let h_straight = straight.fit(&data, Some(&val)).unwrap();
    assert_eq!(straight.step(), 2 * n);

    let dir = scratch(&format!("{name}-resumed"));
    let first_cfg = TrainConfig {
        max_steps: Some(n),
        epochs: None,
        out_dir: Some(dir.clone()),
        ..cfg.clone()
    };
    let mut first = trainer(7, first_cfg);
    first.fit(&data, Some(&val)).unwrap();
    assert_eq!(first.step(), n);
    drop(first);

    let second_cfg = TrainConfig {
        max_steps: Some(2 * n),
        epochs: None,
        out_dir: Some(dir.clone()),
        ..cfg
    };
    // Different initial weights: everything must come from the checkpoint.
    let mut second = trainer(99, second_cfg);
    let used = second.resume(&dir).unwrap();
    assert!(
        used.ends_with(format!("checkpoints/step-{n:08}")),
        "{}",
        used.display()
    );
    assert_eq!(second.step(), n);
    let h_resumed = second.fit(&data, Some(&val)).unwrap();
    assert_eq!(second.step(), 2 * n);

    assert_eq!(
        param_bits(&straight),
        param_bits(&second),
        "{name}: parameters differ"
    );
    assert_eq!(
        straight.optimizer().state_tensors().unwrap().len(),
        second.optimizer().state_tensors().unwrap().len()
    );
    for ((ka, a), (kb, b)) in straight
        .optimizer()
        .state_tensors()
        .unwrap()
        .iter()
        .zip(second.optimizer().state_tensors().unwrap().iter())
    {
        assert_eq!(ka, kb);
        assert_eq!(a.to_f64_vec(), b.to_f64_vec(), "optimizer state {ka}");
    }
    // The epoch history matches too (same losses, same validation).
    assert_eq!(h_straight.epochs.len(), h_resumed.epochs.len());
    for (a, b) in h_straight.epochs.iter().zip(&h_resumed.epochs) {
        assert_eq!(a.step, b.step);
        assert_eq!(a.train.loss.to_bits(), b.train.loss.to_bits());
        assert_eq!(a.val, b.val);
    }
}

#[test]
fn resume_mid_epoch_and_across_epochs_is_bit_exact() {
    // 100 examples in batches of 16: 7 batches per epoch; 5 + 5 steps cross an epoch boundary.
    straight_vs_resumed("plain", 5, quiet());
}

#[test]
fn resume_with_accumulation_clipping_and_schedule_is_bit_exact() {
    let cfg = TrainConfig {
        grad_accum_steps: 2,
        clip_grad_norm: Some(0.5),
        schedule: Some(Schedule::warmup_cosine(0.02, 3, 12, 0.001)),
        drop_last: true,
        ..quiet()
    };
    // 6 full batches per epoch (drop_last) in steps of 2: 3 steps per epoch; resume at step 4.
    straight_vs_resumed("accum", 4, cfg);
}

#[test]
fn resume_at_an_epoch_boundary_is_bit_exact() {
    // 7 batches per epoch: step 7 ends epoch 1 exactly.
    straight_vs_resumed("boundary", 7, quiet());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A run with complete checkpoints at steps 2, 4 and 6.
fn run_with_checkpoints(name: &str) -> PathBuf {
    let dir = scratch(name);
    let mut t = trainer(
        3,
        TrainConfig {
            max_steps: Some(6),
            epochs: None,
            checkpoint_every_steps: Some(2),
            keep_last: 10,
            out_dir: Some(dir.clone()),
            ..quiet()
        },
    );
    t.fit(&blobs(100, 1), None).unwrap();
    dir
}

#[test]
fn interrupted_or_damaged_checkpoints_are_never_chosen() {
    let dir = run_with_checkpoints("damaged");
    let ck = dir.join("checkpoints");
    let good = ck.join("step-00000006");
    assert_eq!(latest_checkpoint(&dir).unwrap(), Some(good.clone()));
    assert_eq!(latest_checkpoint(&ck).unwrap(), Some(good.clone()));
    assert!(ck.join("step-00000002").is_dir() && ck.join("step-00000004").is_dir());

    // A writer killed mid-write leaves its temporary directory (complete-looking even).
    copy_dir(&good, &ck.join(".tmp-step-00000020-1234-0-deadbeef"));
    // Truncated weights.
    let t = ck.join("step-00000008");
    copy_dir(&good, &t);
    let bytes = std::fs::read(t.join(MODEL_FILE)).unwrap();
    std::fs::write(t.join(MODEL_FILE), &bytes[..bytes.len() / 2]).unwrap();
    // No trainer state (the writer died before writing it).
    let t = ck.join("step-00000010");
    copy_dir(&good, &t);
    std::fs::remove_file(t.join(STATE_FILE)).unwrap();
    // A flipped bit in the optimizer state.
    let t = ck.join("step-00000012");
    copy_dir(&good, &t);
    let mut bytes = std::fs::read(t.join(OPTIMIZER_FILE)).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x10;
    std::fs::write(t.join(OPTIMIZER_FILE), &bytes).unwrap();
    // A truncated trainer state.
    let t = ck.join("step-00000014");
    copy_dir(&good, &t);
    let text = std::fs::read(t.join(STATE_FILE)).unwrap();
    std::fs::write(t.join(STATE_FILE), &text[..text.len() / 3]).unwrap();
    // An empty directory.
    std::fs::create_dir_all(ck.join("step-00000016")).unwrap();

    assert_eq!(latest_checkpoint(&dir).unwrap(), Some(good.clone()));
    for (step, want) in [
        (8, "truncated"),
        (10, "trainer_state.json"),
        (12, "checksum"),
        (14, "not a valid trainer state"),
        (16, "trainer_state.json"),
    ] {
        let e = verify_checkpoint(ck.join(format!("step-{step:08}")))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "step {step}: {e}");
    }

    // Resume picks step 6, and training continues from there.
    let mut t = trainer(
        3,
        TrainConfig {
            max_steps: Some(8),
            epochs: None,
            out_dir: Some(dir.clone()),
            keep_last: 10,
            ..quiet()
        },
    );
    let (used, skipped) = t.resume_reporting(&dir).unwrap();
    assert_eq!(used, good);
    assert_eq!(t.step(), 6);
    // The fallback says which newer checkpoints were skipped, newest first, and why.
    let skipped: Vec<(String, &str)> = skipped
        .iter()
        .map(|(p, why)| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                why.as_str(),
            )
        })
        .collect();
    assert_eq!(skipped.len(), 5, "{skipped:?}");
    assert_eq!(skipped[0].0, "step-00000016");
    assert!(skipped[2].1.contains("checksum"), "{skipped:?}");
    assert_eq!(skipped[4].0, "step-00000008");
    // Resuming straight from a damaged checkpoint is a clear error.
    let e = t.resume(ck.join("step-00000012")).unwrap_err().to_string();
    assert!(
        e.contains("step-00000012") && e.contains(OPTIMIZER_FILE) && e.contains("corrupt"),
        "{e}"
    );

    t.fit(&blobs(100, 1), None).unwrap();
    assert_eq!(t.step(), 8);
    // The new run replaced the damaged step-8 directory with a complete one, removed the stale
    // later ones, and cleaned up the interrupted write's temporary directory.
    verify_checkpoint(ck.join("step-00000008")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // (step 7 is the end of the first epoch.)
    assert_eq!(
        names,
        vec![
            "step-00000002",
            "step-00000004",
            "step-00000006",
            "step-00000007",
            "step-00000008"
        ]
    );
}

#[test]
fn no_complete_checkpoint_is_an_error_listing_the_skipped_ones() {
    let dir = scratch("none");
    let mut t = trainer(1, quiet());
    let e = t.resume(&dir).unwrap_err();
    assert!(matches!(e, Error::NoCheckpoint { .. }), "{e}");
    std::fs::create_dir_all(dir.join("checkpoints/step-00000003")).unwrap();
    let e = t.resume(&dir).unwrap_err().to_string();
    assert!(
        e.contains("no complete checkpoint") && e.contains("step-00000003"),
        "{e}"
    );
}

#[test]
fn keeps_only_the_last_k_checkpoints() {
    let dir = scratch("keep");
    let mut t = trainer(
        3,
        TrainConfig {
            max_steps: Some(10),
            epochs: None,
            checkpoint_every_steps: Some(1),
            checkpoint_every_epoch: false,
            keep_last: 2,
            out_dir: Some(dir.clone()),
            ..quiet()
        },
    );
    t.fit(&blobs(100, 1), None).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["step-00000009", "step-00000010"]);
    let state: TrainerState = serde_json::from_slice(
        &std::fs::read(dir.join("checkpoints/step-00000010").join(STATE_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!((state.step, state.epoch, state.batch_offset), (10, 1, 3));
    assert_eq!(state.model.name, "test-mlp");
    assert_eq!(state.config.batch_size, 16);
}

#[test]
fn corrupt_or_foreign_weights_are_clear_errors() {
    let dir = run_with_checkpoints("foreign");
    let good = dir.join("checkpoints/step-00000006");

    // A foreign but valid safetensors file, with its size and checksum recorded so that only its
    // contents are wrong.
    let foreign_dir = dir.join("checkpoints/step-00000007");
    copy_dir(&good, &foreign_dir);
    let w = kiln_tensor::Tensor::from_vec(vec![1.0f32; 6], [2, 3]).unwrap();
    kiln_tensor::io::save_safetensors([("encoder.weight", &w)], foreign_dir.join(MODEL_FILE)).unwrap();
    let bytes = std::fs::read(foreign_dir.join(MODEL_FILE)).unwrap();
    let mut state: TrainerState =
        serde_json::from_slice(&std::fs::read(foreign_dir.join(STATE_FILE)).unwrap()).unwrap();
    let info = state.files.get_mut(MODEL_FILE).unwrap();
    info.bytes = bytes.len() as u64;
    info.crc32c = crc32c_of(&bytes);
    std::fs::write(foreign_dir.join(STATE_FILE), serde_json::to_vec(&state).unwrap()).unwrap();

    let mut t = trainer(3, quiet());
    let before = param_bits(&t);
    let e = t.resume(&foreign_dir).unwrap_err().to_string();
    assert!(
        e.contains("step-00000007") && e.contains("does not fit model test-mlp"),
        "{e}"
    );
    assert_eq!(param_bits(&t), before, "a failed resume changes nothing");
    assert_eq!(t.step(), 0);

    // Weights of another model.
    let model = Mlp::named(3, "other-mlp");
    let opt = adam(&model, 0.01);
    let mut other = kiln_train::Trainer::new(Box::new(model) as Box<dyn Model>, opt, quiet()).unwrap();
    let e = other.resume(&good).unwrap_err().to_string();
    assert!(e.contains("written for model test-mlp"), "{e}");

    // Other data settings.
    let mut t2 = trainer(
        3,
        TrainConfig {
            batch_size: 8,
            ..quiet()
        },
    );
    let e = t2.resume(&good).unwrap_err().to_string();
    assert!(e.contains("batch_size = 16") && e.contains("has 8"), "{e}");

    // Loading weights: garbage, truncated and foreign files.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"definitely not safetensors").unwrap();
    let e = t.load_weights(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.safetensors"), "{e}");
    let e = t
        .load_weights(foreign_dir.join(MODEL_FILE))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not fit model test-mlp") && e.contains("fc1.weight"),
        "{e}"
    );
    let e = t
        .load_weights(dir.join("missing.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.safetensors"), "{e}");
    t.load_weights(good.join(MODEL_FILE)).unwrap();
}

fn crc32c_of(bytes: &[u8]) -> u32 {
    // CRC-32C (Castagnoli), bitwise: the tests' own reference.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The environment variable that turns `killed_mid_write_never_leaves_a_chosen_damaged_checkpoint`
/// into the child process that trains until it is killed.
const CHILD_DIR: &str = "KILN_TRAIN_KILL_TEST_DIR";

/// Really kill a training process (SIGKILL) while it writes a checkpoint at every step, several
/// times, resuming after each kill: the newest checkpoint chosen is always complete.
#[test]
fn killed_mid_write_never_leaves_a_chosen_damaged_checkpoint() {
    let cfg = |dir: PathBuf| TrainConfig {
        max_steps: Some(1_000_000),
        epochs: None,
        checkpoint_every_steps: Some(1),
        keep_last: 3,
        out_dir: Some(dir),
        ..quiet()
    };
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let dir = PathBuf::from(dir);
        let mut t = trainer(3, cfg(dir.clone()));
        if latest_checkpoint(&dir).unwrap().is_some() {
            t.resume(&dir).unwrap();
        }
        let _ = t.fit(&blobs(100, 1), None);
        return;
    }
    let dir = scratch("killed");
    let exe = std::env::current_exe().unwrap();
    let mut last_step = 0;
    for round in 0..3u64 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "killed_mid_write_never_leaves_a_chosen_damaged_checkpoint",
                "--nocapture",
            ])
            .env(CHILD_DIR, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until it has written a few checkpoints beyond the last round's, then kill it at
        // an arbitrary moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let step = latest_checkpoint(&dir)
                .ok()
                .flatten()
                .and_then(|p| verify_checkpoint(p).ok())
                .map_or(0, |s| s.step);
            if step >= last_step + 5 || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_micros(700 * (round + 1)));
        child.kill().unwrap();
        child.wait().unwrap();
        let latest = latest_checkpoint(&dir).unwrap().expect("a complete checkpoint");
        let state = verify_checkpoint(&latest).unwrap();
        assert!(state.step > last_step, "round {round}: no progress");
        last_step = state.step;
        // What the killed run left is loadable by a new trainer.
        let mut t = trainer(9, quiet());
        assert_eq!(t.resume(&dir).unwrap(), latest);
        assert_eq!(t.step(), state.step);
    }
}

/// A run killed after its last checkpoint logged steps that the resumed run logs again: the log
/// keeps one entry per step, and the new TensorBoard file purges the old ones from there on.
#[test]
fn resumed_logs_have_no_duplicate_steps() {
    let dir = scratch("logs-dedup");
    let cfg = |steps| TrainConfig {
        max_steps: Some(steps),
        epochs: None,
        out_dir: Some(dir.clone()),
        log_every_steps: 1,
        checkpoint_every_steps: Some(3),
        keep_last: 10,
        ..quiet()
    };
    let data = blobs(200, 1);
    trainer(5, cfg(5)).fit(&data, None).unwrap();
    // The kill came before the step-5 checkpoint was written: steps 4 and 5 were logged.
    std::fs::remove_dir_all(dir.join("checkpoints/step-00000005")).unwrap();
    let mut t = trainer(5, cfg(6));
    assert_eq!(t.resume(&dir).unwrap(), dir.join("checkpoints/step-00000003"));
    t.fit(&data, None).unwrap();

    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "step")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6], "{log}");

    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    let newest = files
        .iter()
        .map(|f| kiln_train::tensorboard::read_events(f).unwrap())
        .find(|ev| ev.iter().any(|e| e.session_start))
        .expect("the resumed run's event file starts with a SessionLog START");
    assert_eq!(
        newest[1].step, 4,
        "the purge point is the first step logged again"
    );
    assert!(newest[1].session_start);
    assert_eq!(newest.iter().filter(|e| e.session_start).count(), 1);
}
