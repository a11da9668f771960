//! The image-folder dataset: classes from sub-folders, PNG and JPEG decoding to `[C, H, W]`,
//! corrupt files as errors or skipped-and-counted.

use std::path::{Path, PathBuf};

use kiln_data::pipeline::{collate, Pipeline};
use kiln_data::vision::transforms::{Resize, ToTensor, Transform};
use kiln_data::vision::{Cifar, CifarKind, ColorMode, ImageFolder, ImageFolderOptions};
use kiln_data::Source;
use kiln_tensor::{DType, TensorRng};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-imgfolder-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// CIFAR image `n` of the fixture as HWC bytes.
fn cifar_hwc(c: &Cifar, n: usize) -> Vec<u8> {
    let px = c.images.to_vec::<u8>().unwrap();
    let img = &px[n * 3072..(n + 1) * 3072];
    (0..1024)
        .flat_map(|i| [img[i], img[1024 + i], img[2048 + i]])
        .collect()
}

fn cifar() -> Cifar {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar10/test_batch_first20.bin");
    Cifar::load_files(&[p], CifarKind::Cifar10).unwrap()
}

/// root/{cat,ship,airplane}/... with PNGs of real CIFAR images, one JPEG, one nested file, one
/// text file (ignored).
fn build_tree(root: &Path) -> Cifar {
    let c = cifar();
    let save = |n: usize, path: PathBuf| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_raw(32, 32, cifar_hwc(&c, n))
            .unwrap()
            .save(&path)
            .unwrap();
    };
    save(0, root.join("cat/b.png")); // label 3 in CIFAR
    save(8, root.join("cat/a.png"));
    save(1, root.join("ship/x.png"));
    save(2, root.join("ship/deeper/y.PNG"));
    save(3, root.join("airplane/z.jpg"));
    std::fs::write(root.join("ship/notes.txt"), "not an image").unwrap();
    std::fs::create_dir_all(root.join(".hidden")).unwrap();
    c
}

#[test]
fn lists_sorted_classes_and_decodes_exact_pixels() {
    let root = scratch("ok");
    let c = build_tree(&root);
    let f = ImageFolder::open(&root).unwrap();
    assert_eq!(f.classes(), ["airplane", "cat", "ship"]);
    assert_eq!(f.len(), 5);
    let names: Vec<(String, usize)> = (0..f.len())
        .map(|i| {
            let (p, l) = f.sample(i).unwrap();
            (
                p.strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
                l,
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("airplane/z.jpg".into(), 0),
            ("cat/a.png".into(), 1),
            ("cat/b.png".into(), 1),
            ("ship/deeper/y.PNG".into(), 2),
            ("ship/x.png".into(), 2),
        ]
    );
    let ex = f.get(2).unwrap();
    assert_eq!(ex.input.dims(), &[3, 32, 32]);
    assert_eq!(ex.input.dtype(), DType::U8);
    // PNG is lossless: exactly CIFAR image 0 (channels first).
    let cifar_px = c.images.to_vec::<u8>().unwrap();
    assert_eq!(ex.input.to_vec::<u8>().unwrap(), cifar_px[..3072]);
    assert_eq!(ex.target.unwrap().to_scalar::<i64>().unwrap(), 1);
    // JPEG is lossy: close on average.
    let jpg = f.get(0).unwrap().input.to_vec::<u8>().unwrap();
    let orig = &cifar_px[3 * 3072..4 * 3072];
    let mad: f64 = jpg
        .iter()
        .zip(orig)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / 3072.0;
    assert!(mad < 8.0, "mean absolute difference {mad}");
}

#[test]
fn gray_f32_and_pipelines() {
    let root = scratch("gray");
    build_tree(&root);
    let f = ImageFolder::with_options(
        &root,
        ImageFolderOptions {
            color: ColorMode::Gray,
            dtype: DType::F32,
            ..Default::default()
        },
    )
    .unwrap();
    let ex = f.get(1).unwrap();
    assert_eq!(ex.input.dims(), &[1, 32, 32]);
    let v = ex.input.to_vec::<f32>().unwrap();
    assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
    // In a pipeline with a resize: batches of [B, 1, 16, 16].
    let resize = Resize::new(16, 16).unwrap();
    let p = Pipeline::from_source(f)
        .map_seeded(2, 0, move |ex, rng| resize.apply_example(ex, rng))
        .unwrap()
        .batch(4, false, collate::stack_examples)
        .unwrap();
    let batches: Vec<_> = p.iter().unwrap().map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].inputs.dims(), &[4, 1, 16, 16]);
    assert_eq!(
        batches[1].targets.as_ref().unwrap().to_vec::<i64>().unwrap(),
        vec![2]
    );
    // RGB u8 through ToTensor equals the f32 decoding.
    let rgb = ImageFolder::open(&root).unwrap().get(1).unwrap().input;
    let as_f32 = ToTensor::chw().apply(rgb, &mut TensorRng::new(0)).unwrap();
    let f32_folder = ImageFolder::with_options(
        &root,
        ImageFolderOptions {
            dtype: DType::F32,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        as_f32.to_vec::<f32>().unwrap(),
        f32_folder.get(1).unwrap().input.to_vec::<f32>().unwrap()
    );
}

#[test]
fn corrupt_images_are_errors_naming_the_file_or_skipped_and_counted() {
    let root = scratch("corrupt");
    build_tree(&root);
    // A PNG cut in half and a "JPEG" of garbage.
    let good = std::fs::read(root.join("cat/a.png")).unwrap();
    std::fs::write(root.join("cat/c_cut.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(root.join("ship/garbage.jpg"), b"\xff\xd8\xff this is no jpeg").unwrap();
    let f = ImageFolder::open(&root).unwrap();
    assert_eq!(f.len(), 7, "listing does not decode");
    let cut = (0..f.len())
        .find(|&i| f.sample(i).unwrap().0.ends_with("c_cut.png"))
        .unwrap();
    let e = f.get(cut).unwrap_err().to_string();
    assert!(e.contains("c_cut.png") && e.contains("cannot decode"), "{e}");
    // Through a pipeline the error is an item, and iteration stops there.
    let items: Vec<_> = Pipeline::from_source(f).iter().unwrap().collect();
    assert_eq!(items.len(), cut + 1);
    assert!(items[cut].as_ref().unwrap_err().to_string().contains("c_cut.png"));
    // Skip mode: both bad files left out and reported, the rest readable.
    let f = ImageFolder::with_options(
        &root,
        ImageFolderOptions {
            skip_bad: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(f.len(), 5);
    let mut bad: Vec<String> = f
        .skipped()
        .iter()
        .map(|b| b.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    bad.sort();
    assert_eq!(bad, ["c_cut.png", "garbage.jpg"]);
    assert!(f.skipped().iter().all(|b| !b.reason.is_empty()));
    assert!((0..f.len()).all(|i| f.get(i).is_ok()));
}

#[test]
fn bad_layouts_are_errors_naming_the_folder() {
    let root = scratch("layout");
    let e = ImageFolder::open(&root).unwrap_err().to_string();
    assert!(e.contains("no class sub-folder"), "{e}");
    std::fs::create_dir_all(root.join("empty_class")).unwrap();
    let e = ImageFolder::open(&root).unwrap_err().to_string();
    assert!(e.contains("empty_class") && e.contains("without an image"), "{e}");
    let e = ImageFolder::open(root.join("missing")).unwrap_err().to_string();
    assert!(e.contains("missing"), "{e}");
}
