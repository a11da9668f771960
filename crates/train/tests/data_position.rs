//! The data position in checkpoints: kiln-data's `PipelineState`, written with a fingerprint of
//! the loader's settings, checked on resume; checkpoints without it still load.

mod common;

use common::*;
use kiln_train::checkpoint::STATE_FILE;
use kiln_train::{TrainConfig, TrainerState};

fn first_run(name: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    let mut t = trainer(
        7,
        TrainConfig {
            max_steps: Some(3),
            epochs: None,
            out_dir: Some(dir.clone()),
            ..quiet()
        },
    );
    t.fit(&blobs(100, 1), None).unwrap();
    dir
}

#[test]
fn checkpoints_record_the_data_position_and_resume_checks_it() {
    let dir = first_run("data-position");
    let ckpt = kiln_train::latest_checkpoint(&dir).unwrap().unwrap();
    let state: TrainerState = serde_json::from_slice(&std::fs::read(ckpt.join(STATE_FILE)).unwrap()).unwrap();
    let data = state.data.clone().expect("a data position");
    assert_eq!((data.epoch, data.offset), (0, 3));
    assert_eq!((state.epoch, state.batch_offset), (0, 3));
    assert!(
        data.fingerprint.contains("examples=100") && data.fingerprint.contains("batch_size=16"),
        "{}",
        data.fingerprint
    );

    // Resuming mid-epoch on other data is refused, naming both.
    let mut t = trainer(
        9,
        TrainConfig {
            max_steps: Some(6),
            epochs: None,
            ..quiet()
        },
    );
    t.resume(&dir).unwrap();
    let e = t.fit(&blobs(90, 1), None).unwrap_err().to_string();
    assert!(e.contains("examples=100") && e.contains("examples=90"), "{e}");
    // The same data continues.
    t.fit(&blobs(100, 1), None).unwrap();
    assert_eq!(t.step(), 6);
}

#[test]
fn checkpoints_without_a_data_position_still_resume() {
    let dir = first_run("data-position-old");
    let ckpt = kiln_train::latest_checkpoint(&dir).unwrap().unwrap();
    let path = ckpt.join(STATE_FILE);
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("data");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let mut t = trainer(
        9,
        TrainConfig {
            max_steps: Some(5),
            epochs: None,
            ..quiet()
        },
    );
    t.resume(&dir).unwrap();
    assert_eq!((t.epoch(), t.batch_offset()), (0, 3));
    t.fit(&blobs(100, 1), None).unwrap();
    assert_eq!(t.step(), 5);

    // An inconsistent position is an error naming the file.
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["data"] = serde_json::json!({"epoch": 0, "offset": 4, "fingerprint": ""});
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let mut t = trainer(9, quiet());
    let e = t.resume(&ckpt).unwrap_err().to_string();
    assert!(e.contains(STATE_FILE) && e.contains("offset 4"), "{e}");
}
