//! MNIST through the pipeline, and truncated IDX files (gzip or raw) as clear errors.

use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_data::mnist::{
    load_idx_images, load_idx_labels, Mnist, Split, FASHION_MNIST_CLASSES, IMAGES_MAGIC, LABELS_MAGIC,
};
use kiln_data::pipeline::{collate, Pipeline};
use kiln_data::vision::transforms::{Compose, Normalize, ToTensor, Transform};
use kiln_data::{Source, MNIST_MEAN, MNIST_STD};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-mnist-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn truncated_idx_files_name_the_file_and_the_sizes() {
    let d = scratch("truncated");
    // 3 images of 4x5 = 60 data bytes after a 16-byte header; the file stops after 50.
    let img = idx(IMAGES_MAGIC, &[3, 4, 5], &[7; 60]);
    let cut = &img[..16 + 50];
    for (name, bytes) in [("images-raw", cut.to_vec()), ("images.gz", gz(cut))] {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = load_idx_images(&p).unwrap_err().to_string();
        assert!(
            e.contains(name)
                && e.contains("truncated")
                && e.contains("76 bytes in all")
                && e.contains("end at byte 66"),
            "{name}: {e}"
        );
    }
    // A gzip stream cut in the middle: the error says where decompression stopped.
    let big = idx(
        LABELS_MAGIC,
        &[5000],
        &(0..5000).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>(),
    );
    let z = gz(&big);
    let p = d.join("labels.gz");
    std::fs::write(&p, &z[..z.len() - 20]).unwrap();
    let e = load_idx_labels(&p).unwrap_err().to_string();
    assert!(
        e.contains("labels.gz") && e.contains("decompressed bytes") && e.contains("gzip"),
        "{e}"
    );
    // A header cut short.
    let p = d.join("header");
    std::fs::write(&p, &img[..9]).unwrap();
    let e = load_idx_images(&p).unwrap_err().to_string();
    assert!(
        e.contains("header") && e.contains("9 bytes") && e.contains("needs 16"),
        "{e}"
    );
}

#[test]
fn reads_fashion_mnist_as_a_source() {
    // The first 16 Fashion-MNIST test images (a fixture cut from the real files).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fashion-mnist");
    let f = Mnist::load(&dir, Split::Test).unwrap();
    assert_eq!(f.images.dims(), &[16, 28, 28]);
    let labels = f.labels.to_vec::<i64>().unwrap();
    assert_eq!(labels, vec![9, 2, 1, 1, 6, 1, 4, 6, 5, 7, 4, 5, 7, 3, 4, 1]);
    assert_eq!(FASHION_MNIST_CLASSES[labels[0] as usize], "Ankle boot");
    let px = f.images.to_vec::<u8>().unwrap();
    assert_eq!(px[..784].iter().map(|&p| p as u64).sum::<u64>(), 33_456);
    assert_eq!(px.iter().map(|&p| p as u64).sum::<u64>(), 757_029);
    let ex = f.get(15).unwrap();
    assert_eq!(ex.input.dims(), &[1, 28, 28]);
    assert_eq!(ex.input.to_vec::<u8>().unwrap(), px[15 * 784..]);
    assert_eq!(ex.target.unwrap().to_scalar::<i64>().unwrap(), 1);
}

fn real_mnist_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    d.join("t10k-images-idx3-ubyte.gz").exists().then_some(d)
}

#[test]
fn mnist_through_the_pipeline_matches_the_normalised_dataset() {
    let Some(dir) = real_mnist_dir() else {
        eprintln!("skipping: data/mnist not present");
        return;
    };
    let test = Mnist::load(&dir, Split::Test).unwrap();
    let ex = test.get(0).unwrap();
    assert_eq!(ex.input.dims(), &[1, 28, 28]);
    assert_eq!(ex.target.as_ref().unwrap().to_scalar::<i64>().unwrap(), 7);
    // Shuffle + to_tensor + normalize + batch, against batches of the normalised dataset taken
    // in the same order: identical.
    let normalize = Compose::new()
        .then(ToTensor::chw())
        .then(Normalize::new(vec![MNIST_MEAN], vec![MNIST_STD]).unwrap());
    let p = Pipeline::from_source(test.clone())
        .take(1000)
        .shuffle(1000, 5)
        .unwrap()
        .map_seeded(2, 0, move |ex, rng| normalize.apply_example(ex, rng))
        .unwrap()
        .batch(64, false, collate::stack_examples)
        .unwrap();
    let ours: Vec<_> = p.iter_epoch(1).unwrap().map(|b| b.unwrap()).collect();
    assert_eq!(ours.len(), 16);
    let data = test.to_dataset(true).unwrap().slice(0, 1000).unwrap();
    let order: Vec<usize> = Pipeline::range(0..1000)
        .shuffle(1000, 5)
        .unwrap()
        .iter_epoch(1)
        .unwrap()
        .map(|i| i.unwrap())
        .collect();
    for (k, b) in ours.iter().enumerate() {
        let idx = &order[k * 64..((k + 1) * 64).min(1000)];
        let want = kiln_data::Dataset::get_batch(&data, idx).unwrap();
        let (a, w) = (
            b.inputs.to_vec::<f32>().unwrap(),
            want.inputs.to_vec::<f32>().unwrap(),
        );
        assert!(a.iter().zip(&w).all(|(x, y)| (x - y).abs() < 1e-5), "batch {k}");
        assert_eq!(
            b.targets.as_ref().unwrap().to_vec::<i64>().unwrap(),
            want.targets.unwrap().to_vec::<i64>().unwrap()
        );
    }
}

fn message<T: std::fmt::Debug>(r: kiln_data::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn reads_gzip_and_plain_images_and_labels() {
    let d = scratch("ok");
    let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8 * 10).collect();
    let img = idx(IMAGES_MAGIC, &[2, 3, 4], &pixels);
    std::fs::write(d.join("a.gz"), gz(&img)).unwrap();
    std::fs::write(d.join("a"), &img).unwrap();
    for name in ["a.gz", "a"] {
        let (px, dims) = load_idx_images(d.join(name)).unwrap();
        assert_eq!(dims, [2, 3, 4]);
        assert_eq!(px, pixels);
    }
    std::fs::write(d.join("l.gz"), gz(&idx(LABELS_MAGIC, &[3], &[7, 0, 9]))).unwrap();
    assert_eq!(load_idx_labels(d.join("l.gz")).unwrap(), vec![7, 0, 9]);
}

#[test]
fn loads_a_split_as_tensors() {
    let d = scratch("split");
    let img = idx(IMAGES_MAGIC, &[3, 2, 2], &[0, 255, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    std::fs::write(d.join("t10k-images-idx3-ubyte.gz"), gz(&img)).unwrap();
    // Uncompressed labels are found too.
    std::fs::write(
        d.join("t10k-labels-idx1-ubyte"),
        idx(LABELS_MAGIC, &[3], &[4, 1, 9]),
    )
    .unwrap();
    let m = Mnist::load(&d, Split::Test).unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(m.images.dims(), &[3, 2, 2]);
    assert_eq!(m.images.dtype(), kiln_tensor::DType::U8);
    assert_eq!(m.labels.dtype(), kiln_tensor::DType::I64);
    assert_eq!(m.labels.to_vec::<i64>().unwrap(), vec![4, 1, 9]);
    let f = m.images_f32_flat().unwrap();
    assert_eq!(f.dims(), &[3, 4]);
    assert_eq!(f.to_vec::<f32>().unwrap()[..2], [0.0, 1.0]);
    // The train split is absent: an error naming the file.
    let e = message(Mnist::load(&d, Split::Train));
    assert!(
        e.contains("train-images-idx3-ubyte.gz") && e.contains("not found"),
        "{e}"
    );
}

#[test]
fn count_mismatch_is_an_error() {
    let d = scratch("mismatch");
    let img = idx(IMAGES_MAGIC, &[2, 1, 1], &[1, 2]);
    std::fs::write(d.join("train-images-idx3-ubyte.gz"), gz(&img)).unwrap();
    std::fs::write(
        d.join("train-labels-idx1-ubyte.gz"),
        gz(&idx(LABELS_MAGIC, &[3], &[1, 2, 3])),
    )
    .unwrap();
    let e = message(Mnist::load(&d, Split::Train));
    assert!(e.contains("2 images") && e.contains("3 labels"), "{e}");
}

#[test]
fn bad_files_are_errors_naming_the_file_and_the_problem() {
    let d = scratch("bad");
    let img = idx(IMAGES_MAGIC, &[2, 3, 4], &[0; 24]);
    let lab = idx(LABELS_MAGIC, &[2], &[1, 2]);
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        // (file, bytes, read as images?, expected text)
        ("labels-as-images.gz", gz(&lab), true, "IDX label file"),
        ("images-as-labels.gz", gz(&img), false, "IDX image file"),
        ("short-data.gz", gz(&img[..img.len() - 5]), true, "truncated"),
        ("short-header", img[..10].to_vec(), true, "truncated header"),
        ("tiny", vec![0, 0], true, "too short"),
        ("empty", vec![], false, "too short"),
        (
            "trailing.gz",
            gz(&[&img[..], &[1, 2, 3]].concat()),
            true,
            "3 unexpected bytes",
        ),
        (
            "foreign.txt",
            b"hello, world, not an idx file".to_vec(),
            true,
            "not an IDX file",
        ),
        (
            "other-idx",
            idx(0x0000_0D02, &[1, 1], &[0; 4]),
            true,
            "type 0x0d with 2 dimensions",
        ),
    ];
    for (name, bytes, images, want) in cases {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = if images {
            message(load_idx_images(&p))
        } else {
            message(load_idx_labels(&p))
        };
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
    // A gzip stream cut short.
    let full = gz(&img);
    let p = d.join("cut.gz");
    std::fs::write(&p, &full[..full.len() / 2]).unwrap();
    let e = message(load_idx_images(&p));
    assert!(e.contains("cut.gz") && e.contains("gzip"), "{e}");
    // A missing file.
    let e = message(load_idx_labels(d.join("nope.gz")));
    assert!(e.contains("nope.gz"), "{e}");
}

#[test]
fn huge_announced_dimensions_do_not_allocate_or_panic() {
    let d = scratch("huge");
    let p = d.join("huge");
    std::fs::write(&p, idx(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[1, 2])).unwrap();
    let e = message(load_idx_images(&p));
    assert!(e.contains("huge"), "{e}");
}

/// The real test labels, when the repository's data/ folder is present.
#[test]
fn real_mnist_test_labels_if_present() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist/t10k-labels-idx1-ubyte.gz");
    if !p.exists() {
        eprintln!("skipping: {} not present", p.display());
        return;
    }
    let labels = load_idx_labels(&p).unwrap();
    assert_eq!(labels.len(), 10_000);
    assert_eq!(labels[0], 7);
    assert!(labels.iter().all(|&l| l < 10));
    let test = Mnist::load(p.parent().unwrap(), Split::Test).unwrap();
    assert_eq!(test.images.dims(), &[10_000, 28, 28]);
    assert_eq!(test.labels.to_vec::<i64>().unwrap()[..3], [7, 2, 1]);
}
