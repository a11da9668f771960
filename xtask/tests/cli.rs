//! The command line's answers to bad input: a clear message and a non-zero exit, never a panic.

use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("xtask runs")
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = xtask(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: message lacks {n:?}: {err}");
    }
}

#[test]
fn unknown_model_lists_the_known_ones() {
    fails_with(
        &["train", "--model", "resnet9000"],
        &["resnet9000", "lenet5", "mnist-cnn"],
    );
}

#[test]
fn unknown_dataset_lists_the_known_ones() {
    fails_with(
        &["train", "--dataset", "imagenet"],
        &["imagenet", "mnist", "fashion-mnist"],
    );
}

#[test]
fn negative_learning_rate_is_rejected() {
    fails_with(&["train", "--lr", "-0.1"], &["--lr", "-0.1"]);
}

#[test]
fn missing_data_file_names_the_file() {
    let dir = std::env::temp_dir().join(format!("kiln-empty-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    fails_with(
        &[
            "train",
            "--data-dir",
            dir.to_str().unwrap(),
            "--out",
            dir.join("run").to_str().unwrap(),
        ],
        &["mnist", "train-images"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreadable_or_invalid_config_is_rejected() {
    fails_with(
        &["train", "--config", "/nonexistent/kiln.json"],
        &["cannot read config file", "/nonexistent/kiln.json"],
    );
    let dir = std::env::temp_dir().join(format!("kiln-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.json");
    std::fs::write(&path, r#"{"modle": "lenet5"}"#).unwrap();
    fails_with(
        &["train", "--config", path.to_str().unwrap()],
        &["not a valid run config", "modle"],
    );
    std::fs::write(&path, r#"{"train": {"batch_size": 0}}"#).unwrap();
    fails_with(&["train", "--config", path.to_str().unwrap()], &["batch_size"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    fails_with(&["train", "--device", "cuda:0"], &["cuda"]);
}

#[test]
fn models_lists_the_registry_as_json() {
    let out = xtask(&["models", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"lenet5") && names.contains(&"mnist-cnn"));
    let lenet = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "lenet5")
        .unwrap();
    assert_eq!(lenet["parameters"], 61_706);
    assert_eq!(lenet["task"], "image-classification");
}
