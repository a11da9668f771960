//! Data parallel over real MPI (`--features mpi`; `.ci/run` installs OpenMPI): 2 ranks under
//! `mpirun`, each with its half of every global batch, end 100 steps with the weights and the
//! optimizer state of 1 process accumulating the same 2 micro-batches per step, bit for bit.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/..")
}

/// `mpirun -np 2` over the given per-rank argument lists (one list: the same for both ranks;
/// two: MPMD, rank 0 then rank 1).
fn mpirun(ranks: &[Vec<String>], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("mpirun");
    // Root in CI containers; oversubscribe: 2 ranks may exceed the slots mpirun counts.
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .envs(env.iter().copied())
        .current_dir(repo());
    let per = if ranks.len() == 1 { 2 } else { 1 };
    for (i, args) in ranks.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args([
            "-np",
            &per.to_string(),
            "--oversubscribe",
            env!("CARGO_BIN_EXE_xtask"),
        ])
        .args(args);
    }
    cmd.output().expect("mpirun runs (apt-get install openmpi-bin)")
}

fn xtask(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-mpi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn args(list: &[&str], out: &Path) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.push("--out".into());
    v.push(out.display().to_string());
    v
}

/// Trains `model_args` for 100 steps on 2 MPI ranks and in 1 process with 2 accumulation
/// steps; asserts both checkpoints hold the same bytes.
fn two_ranks_equal_one_process(name: &str, model_args: &[&str]) {
    let (ranks_dir, single_dir) = (scratch(&format!("{name}-2")), scratch(&format!("{name}-1")));
    let mut common = vec!["train"];
    common.extend(model_args);
    common.extend(["--steps", "100", "--log-every", "50"]);
    let mut distributed = common.clone();
    distributed.extend(["--distributed", "mpi"]);
    check(&mpirun(&[args(&distributed, &ranks_dir)], &[]), "mpirun -np 2");
    let mut single = common.clone();
    single.extend(["--grad-accum", "2"]);
    check(&xtask(&args(&single, &single_dir)), "1 process");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let a = std::fs::read(ranks_dir.join("checkpoints/step-00000100").join(file)).unwrap();
        let b = std::fs::read(single_dir.join("checkpoints/step-00000100").join(file)).unwrap();
        assert!(a == b, "{name}: {file} differs between 2 ranks and 1 process");
    }
    // Rank 0 wrote the run; the other rank wrote nothing beside it.
    assert!(ranks_dir.join("run.json").is_file() && ranks_dir.join("metrics.json").is_file());
    let _ = std::fs::remove_dir_all(ranks_dir);
    let _ = std::fs::remove_dir_all(single_dir);
}

#[test]
fn lenet5_on_two_ranks_equals_one_process_bit_for_bit() {
    two_ranks_equal_one_process("lenet5", &["--model", "lenet5", "--batch-size", "32"]);
}

#[test]
fn gpt_tiny_on_two_ranks_equals_one_process_bit_for_bit() {
    two_ranks_equal_one_process(
        "gpt-tiny",
        &[
            "--model",
            "gpt-tiny",
            "--dataset",
            "tinyshakespeare-char",
            "--batch-size",
            "8",
        ],
    );
}

/// Ranks started with different settings fail before the first step, each naming the setting,
/// and the job ends (no rank waits forever).
#[test]
fn ranks_that_disagree_fail_naming_the_difference() {
    let dir = scratch("disagree");
    let rank = |batch: &str| {
        args(
            &[
                "--model",
                "lenet5",
                "--steps",
                "5",
                "--batch-size",
                batch,
                "--distributed",
                "mpi",
            ],
            &dir,
        )
    };
    let mut r0 = vec!["train".to_string()];
    r0.extend(rank("32"));
    let mut r1 = vec!["train".to_string()];
    r1.extend(rank("16"));
    let out = mpirun(&[r0, r1], &[("KILN_MPI_TIMEOUT_SECS", "60")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("batch_size: 32") && err.contains("batch_size: 16"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
