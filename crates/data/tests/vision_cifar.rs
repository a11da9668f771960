//! The CIFAR binary reader: real CIFAR-10 test images (a 20-image fixture), synthetic CIFAR-100
//! files, and damaged files.

use std::path::{Path, PathBuf};

use kiln_data::mnist::Split;
use kiln_data::pipeline::{collate, Pipeline};
use kiln_data::vision::{Cifar, CifarKind, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD};
use kiln_data::Dataset;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar10/test_batch_first20.bin")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cifar-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn reads_the_real_cifar10_test_images() {
    let c = Cifar::load_files(&[fixture()], CifarKind::Cifar10).unwrap();
    assert_eq!(c.len(), 20);
    assert_eq!(c.images.dims(), &[20, 3, 32, 32]);
    assert!(c.coarse_labels.is_none());
    let labels = c.labels.to_vec::<i64>().unwrap();
    assert_eq!(
        labels,
        vec![3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
    );
    assert_eq!(CIFAR10_CLASSES[labels[0] as usize], "cat");
    // Image 0's top-left pixels (RGB), image 19's first pixel: values of the original files.
    let px = c.images.to_vec::<u8>().unwrap();
    let at = |n: usize, ch: usize, y: usize, x: usize| px[((n * 3 + ch) * 32 + y) * 32 + x];
    assert_eq!([at(0, 0, 0, 0), at(0, 1, 0, 0), at(0, 2, 0, 0)], [158, 112, 49]);
    assert_eq!([at(0, 0, 0, 1), at(0, 1, 0, 1), at(0, 2, 0, 1)], [159, 111, 47]);
    assert_eq!([at(19, 0, 0, 0), at(19, 1, 0, 0), at(19, 2, 0, 0)], [55, 38, 46]);
    // Per-channel means of these 20 images.
    let plane = 32 * 32;
    for (ch, want) in [124.882_71, 120.962_21, 114.870_81].into_iter().enumerate() {
        let sum: f64 = (0..20)
            .flat_map(|n| px[(n * 3 + ch) * plane..(n * 3 + ch + 1) * plane].iter())
            .map(|&p| p as f64)
            .sum();
        assert!((sum / (20.0 * plane as f64) - want).abs() < 1e-4, "channel {ch}");
    }
    // As a dataset, normalised per channel.
    let d = c.to_dataset(true).unwrap();
    assert_eq!(d.len(), 20);
    let b = d.get_batch(&[0]).unwrap();
    let v = b.inputs.to_vec::<f32>().unwrap();
    let want = (158.0 / 255.0 - CIFAR10_MEAN[0]) / CIFAR10_STD[0];
    assert!((v[0] - want).abs() < 1e-5);
    let want_blue = (49.0 / 255.0 - CIFAR10_MEAN[2]) / CIFAR10_STD[2];
    assert!((v[2 * plane] - want_blue).abs() < 1e-5);
}

#[test]
fn cifar_is_a_pipeline_source() {
    let c = Cifar::load_files(&[fixture()], CifarKind::Cifar10).unwrap();
    let p = Pipeline::from_source(c.clone())
        .batch(8, false, collate::stack_examples)
        .unwrap();
    let batches: Vec<_> = p.iter().unwrap().map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[0].inputs.dims(), &[8, 3, 32, 32]);
    assert_eq!(batches[2].inputs.dims(), &[4, 3, 32, 32]);
    let all: Vec<u8> = batches
        .iter()
        .flat_map(|b| b.inputs.to_vec::<u8>().unwrap())
        .collect();
    assert_eq!(all, c.images.to_vec::<u8>().unwrap());
    let labels: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.targets.as_ref().unwrap().to_vec::<i64>().unwrap())
        .collect();
    assert_eq!(labels, c.labels.to_vec::<i64>().unwrap());
}

/// A synthetic CIFAR-100 record: coarse, fine, then pixels `(i + k) % 256`.
fn record100(coarse: u8, fine: u8, i: usize) -> Vec<u8> {
    let mut r = vec![coarse, fine];
    r.extend((0..3072).map(|k| ((i + k) % 256) as u8));
    r
}

#[test]
fn reads_cifar100_and_concatenates_files() {
    let d = scratch("c100");
    let a: Vec<u8> = [record100(3, 41, 0), record100(19, 99, 1)].concat();
    let b: Vec<u8> = record100(0, 7, 2);
    std::fs::write(d.join("train.bin"), &a).unwrap();
    std::fs::write(d.join("extra.bin"), &b).unwrap();
    let c = Cifar::load_files(&[d.join("train.bin"), d.join("extra.bin")], CifarKind::Cifar100).unwrap();
    assert_eq!(c.len(), 3);
    assert_eq!(c.labels.to_vec::<i64>().unwrap(), vec![41, 99, 7]);
    assert_eq!(
        c.coarse_labels.as_ref().unwrap().to_vec::<i64>().unwrap(),
        vec![3, 19, 0]
    );
    let px = c.images.to_vec::<u8>().unwrap();
    assert_eq!(px[3072..3076], [1, 2, 3, 4]);
    assert_eq!(px[2 * 3072 + 3071], ((2 + 3071) % 256) as u8);
    // The split loader finds train.bin.
    let train = Cifar::load(&d, CifarKind::Cifar100, Split::Train).unwrap();
    assert_eq!(train.len(), 2);
    let e = Cifar::load(&d, CifarKind::Cifar100, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(e.contains("test.bin"), "{e}");
}

#[test]
fn damaged_files_are_errors_naming_file_record_and_offset() {
    let d = scratch("bad");
    let good = std::fs::read(fixture()).unwrap();
    // Truncated in record 7.
    let p = d.join("cut.bin");
    std::fs::write(&p, &good[..7 * 3073 + 100]).unwrap();
    let e = Cifar::load_files(&[&p], CifarKind::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cut.bin") && e.contains("7 whole") && e.contains("record 7") && e.contains("byte 21511"),
        "{e}"
    );
    // A CIFAR-100 file read as CIFAR-10: the record size does not divide (3074 vs 3073).
    let p = d.join("c100.bin");
    std::fs::write(&p, record100(1, 2, 0)).unwrap();
    let e = Cifar::load_files(&[&p], CifarKind::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("c100.bin") && e.contains("truncated"), "{e}");
    // A label out of range.
    let mut bad = good.clone();
    bad[3 * 3073] = 10;
    let p = d.join("label.bin");
    std::fs::write(&p, &bad).unwrap();
    let e = Cifar::load_files(&[&p], CifarKind::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("label.bin") && e.contains("record 3") && e.contains("label 10"),
        "{e}"
    );
    // Empty and missing files.
    let p = d.join("empty.bin");
    std::fs::write(&p, b"").unwrap();
    let e = Cifar::load_files(&[&p], CifarKind::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty.bin") && e.contains("empty"), "{e}");
    let e = Cifar::load_files(&[d.join("nope.bin")], CifarKind::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.bin"), "{e}");
}
