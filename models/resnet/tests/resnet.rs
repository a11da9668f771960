//! ResNet shapes, parameter counts against torchvision's, strict loading of torchvision-named state
//! dicts, and train/eval behaviour of batch norm.

use kiln_nn::Scope;
use kiln_tensor::{DType, Device, Tensor, TensorRng};
use kiln_zoo::{Batch, Model};

fn build(name: &str, overrides: serde_json::Value, seed: u64) -> Box<dyn Model> {
    // Reference the crate so the linker keeps its registrations.
    std::hint::black_box(kiln_resnet::ResNet::<kiln_resnet::BasicBlock>::new as fn(_, _, _, _) -> _);
    let entry = kiln_zoo::find(name).unwrap();
    let cfg = kiln_zoo::merge_config(entry, Some(&overrides)).unwrap();
    (entry.build)(&cfg, Scope::init(seed, DType::F32, Device::Cpu)).unwrap()
}

fn images(n: usize, c: usize, side: usize, seed: u64) -> Tensor {
    let mut rng = TensorRng::new(seed);
    let v: Vec<f32> = (0..n * c * side * side)
        .map(|_| rng.next_normal() as f32)
        .collect();
    Tensor::from_vec(v, [n, c, side, side]).unwrap()
}

#[test]
fn parameter_counts_equal_torchvision() {
    // torchvision.models.resnetXX(num_classes=1000): sum(p.numel() for p in m.parameters()).
    for (name, count) in [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
    ] {
        assert_eq!(
            build(name, serde_json::json!({}), 0).num_parameters(),
            count,
            "{name}"
        );
    }
}

#[test]
fn cifar_resnets_have_6n_plus_2_layers() {
    for (name, n) in [("resnet20", 3), ("resnet32", 5), ("resnet56", 9)] {
        let model = build(name, serde_json::json!({}), 0);
        let convs = model
            .parameters()
            .iter()
            .filter(|p| p.name().ends_with("conv1.weight") || p.name().ends_with("conv2.weight"))
            .count();
        // The stem convolution plus two per block; with the classifier, 6n + 2 weighted layers.
        assert_eq!(convs + 1, 6 * n + 2, "{name}");
    }
}

#[test]
fn resnet50_forward_on_224_images_gives_class_logits() {
    let model = build("resnet50", serde_json::json!({}), 0);
    model.set_training(false);
    let out = model
        .forward(&Batch {
            inputs: images(1, 3, 224, 1),
            targets: None,
        })
        .unwrap();
    assert_eq!(out.logits.dims(), &[1, 1000]);
    assert!(out
        .logits
        .value()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
}

/// `benches/reference/resnet_torchvision_fixture.py` output: torchvision's state-dict layouts and
/// the logits of a formula-filled torchvision resnet18.
fn torchvision_fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/torchvision_resnet.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn layout_of(model: &dyn Model) -> Vec<(String, Vec<usize>, String)> {
    let mut v: Vec<_> = model
        .parameters()
        .iter()
        .map(|p| {
            (
                p.name().to_string(),
                p.value().dims().to_vec(),
                p.value().dtype().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn state_dict_layout_equals_torchvision() {
    let fixture = torchvision_fixture();
    for name in ["resnet18", "resnet50"] {
        let mut want: Vec<(String, Vec<usize>, String)> =
            serde_json::from_value(fixture[name].clone()).unwrap();
        // torch's dtype names against kiln's.
        for w in &mut want {
            w.2 = match w.2.as_str() {
                "float32" => "f32".into(),
                "int64" => "i64".into(),
                other => other.into(),
            };
        }
        want.sort();
        let got = layout_of(build(name, serde_json::json!({}), 0).as_ref());
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{name}");
        }
    }
}

#[test]
fn a_torchvision_state_dict_loads_strictly_and_gives_torchvisions_logits() {
    let fixture = torchvision_fixture();
    let order: Vec<(String, Vec<usize>, String)> =
        serde_json::from_value(fixture["resnet18"].clone()).unwrap();
    let model = build(
        "resnet18",
        serde_json::json!({"image_size": 64, "num_classes": 10}),
        0,
    );
    let shapes: std::collections::HashMap<String, Vec<usize>> = layout_of(model.as_ref())
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    // Fill every tensor with the fixture script's formula, in torchvision's state-dict order.
    let tensors: Vec<(String, Tensor)> = order
        .iter()
        .enumerate()
        .map(|(k, (name, _, _))| {
            let dims = shapes[name].clone();
            let n: usize = dims.iter().product();
            let t = if name.ends_with("num_batches_tracked") {
                Tensor::from_vec(vec![0i64; n], dims).unwrap()
            } else {
                let v: Vec<f32> = (0..n)
                    .map(|j| {
                        let s = (0.37 * j as f64 + 1.3 * k as f64).sin();
                        (if name.ends_with("running_var") {
                            1.0 + 0.5 * s * s
                        } else {
                            0.05 * s
                        }) as f32
                    })
                    .collect();
                Tensor::from_vec(v, dims).unwrap()
            };
            (name.clone(), t)
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("kiln-resnet-sd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resnet18.safetensors");
    kiln_tensor::io::safetensors::save(tensors, &path).unwrap();
    kiln_nn::load_state_dict_file(&model.parameters(), &path, true).unwrap();
    model.set_training(false);
    let x: Vec<f32> = (0..2 * 3 * 64 * 64)
        .map(|j| (0.01 * j as f64).sin() as f32)
        .collect();
    let logits = model
        .forward(&Batch {
            inputs: Tensor::from_vec(x, [2, 3, 64, 64]).unwrap(),
            targets: None,
        })
        .unwrap()
        .logits
        .value()
        .to_vec::<f32>()
        .unwrap();
    let want: Vec<f32> = serde_json::from_value(fixture["resnet18_10_logits_64px"].clone()).unwrap();
    assert_eq!(logits.len(), want.len());
    for (g, w) in logits.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs torchvision {w}");
    }
    // Strict loading refuses a state dict of another depth.
    let other = build(
        "resnet34",
        serde_json::json!({"image_size": 64, "num_classes": 10}),
        0,
    );
    let e = kiln_nn::load_state_dict_file(&other.parameters(), &path, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("layer1.2") || e.contains("missing"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn one_channel_28px_images_and_batch_norm_modes() {
    let model = build(
        "resnet20",
        serde_json::json!({"in_channels": 1, "image_size": 28, "num_classes": 10}),
        0,
    );
    let batch = Batch {
        inputs: images(4, 1, 28, 5),
        targets: Some(Tensor::from_vec(vec![1i64, 2, 3, 4], [4]).unwrap()),
    };
    let train_out = model.forward(&batch).unwrap();
    assert_eq!(train_out.logits.dims(), &[4, 10]);
    let loss = train_out.loss.unwrap().value().to_scalar::<f32>().unwrap();
    assert!(loss.is_finite() && loss > 0.0);
    // Training mode updated the running statistics; eval mode uses them, so an example's logits
    // no longer depend on the rest of the batch.
    let tracked = model
        .parameters()
        .into_iter()
        .find(|p| p.name() == "bn1.num_batches_tracked")
        .unwrap();
    assert_eq!(tracked.value().to_vec::<i64>().unwrap(), vec![1]);
    model.set_training(false);
    let all = model
        .forward(&batch)
        .unwrap()
        .logits
        .value()
        .to_vec::<f32>()
        .unwrap();
    let first = Batch {
        inputs: batch.inputs.narrow(0, 0, 1).unwrap(),
        targets: None,
    };
    let one = model
        .forward(&first)
        .unwrap()
        .logits
        .value()
        .to_vec::<f32>()
        .unwrap();
    for (x, y) in all[..10].iter().zip(&one) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    // Wrong geometry is an error naming the expectation.
    let e = model
        .forward(&Batch {
            inputs: images(1, 3, 28, 0),
            targets: None,
        })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("[N, 1, 28, 28]"), "{e}");
}
