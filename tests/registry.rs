//! Every model crate's plugins are in the registry, built from their default configs.

use kiln::nn::Scope;
use kiln::tensor::{DType, Device, Tensor};
use kiln::zoo::{Batch, Task};

/// The models each plugin crate registers. A new model crate adds its names here.
const EXPECTED: &[(&str, &[&str])] = &[
    ("kiln-bert", &["all-minilm-l6-v2", "bert-base", "bert-tiny"]),
    ("kiln-gpt", &["gpt2", "gpt2-medium", "gpt-tiny"]),
    ("kiln-lenet", &["lenet5", "mnist-cnn"]),
    ("kiln-llama", &["smollm2-135m", "llama-tiny"]),
    ("kiln-lstm", &["lstm-lm", "lstm-classifier", "textgenrnn"]),
    (
        "kiln-resnet",
        &[
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "resnet20",
            "resnet32",
            "resnet56",
        ],
    ),
];

#[test]
fn every_model_crate_is_registered() {
    let names: Vec<&str> = kiln::models().unwrap().iter().map(|e| e.name).collect();
    for (krate, models) in EXPECTED {
        for m in *models {
            assert!(
                names.contains(m),
                "{krate}'s model {m} is missing from the registry {names:?}"
            );
        }
    }
}

#[test]
fn unknown_model_lists_the_known_ones() {
    let e = kiln::find_model("lenet6").err().unwrap().to_string();
    assert!(
        e.contains("lenet6") && e.contains("lenet5") && e.contains("mnist-cnn"),
        "{e}"
    );
}

#[test]
fn image_classifiers_build_and_run_with_default_configs() {
    for entry in kiln::models()
        .unwrap()
        .into_iter()
        .filter(|e| e.task == Task::ImageClassification)
    {
        // The smallest geometry every architecture takes keeps ResNet-101 cheap.
        let mut cfg = (entry.default_config)();
        let side = cfg["image_size"].as_u64().unwrap().min(32) as usize;
        cfg["image_size"] = side.into();
        let channels = cfg["in_channels"].as_u64().unwrap() as usize;
        let classes = cfg["num_classes"].as_u64().unwrap() as usize;
        let model = (entry.build)(&cfg, Scope::init(0, DType::F32, Device::Cpu)).unwrap();
        let images = Tensor::zeros([2, channels, side, side], DType::F32, Device::Cpu).unwrap();
        let targets = Tensor::from_vec(vec![3i64, 7], [2]).unwrap();
        let out = model
            .forward(&Batch {
                inputs: images,
                targets: Some(targets),
            })
            .unwrap();
        assert_eq!(out.logits.dims(), &[2, classes], "{}", entry.name);
        let loss = out.loss.unwrap().value().to_scalar::<f32>().unwrap();
        assert!(loss.is_finite());
        // A wrongly shaped batch is an error, not a panic.
        let bad = Batch {
            inputs: Tensor::zeros([2, side, side], DType::F32, Device::Cpu).unwrap(),
            targets: None,
        };
        assert!(model.forward(&bad).is_err());
    }
}

#[test]
fn parameter_counts_match_the_architectures() {
    let count = |name: &str| {
        let e = kiln::find_model(name).unwrap();
        (e.build)(&(e.default_config)(), Scope::init(0, DType::F32, Device::Cpu))
            .unwrap()
            .num_parameters()
    };
    assert_eq!(count("lenet5"), 61_706);
    assert_eq!(count("mnist-cnn"), 93_322);
    // GPT2LMHeadModel's count (the head is tied to wte); nanoGPT's 0.80M plus 8192 positions.
    assert_eq!(count("gpt2"), 124_439_808);
    assert_eq!(count("gpt-tiny"), 809_856);
    // 2 × (q 64², k and v 64·32, o 64², MLP 3·64·128, two norms) + embedding, head, final norm.
    assert_eq!(count("llama-tiny"), 106_816);
}

#[test]
fn quantization_is_offered_by_the_language_models_and_refused_by_the_others() {
    let scheme = kiln::tensor::quant::QuantScheme::parse("int8").unwrap();
    let build = |name: &str| {
        let e = kiln::find_model(name).unwrap();
        (e.build)(&(e.default_config)(), Scope::init(0, DType::F32, Device::Cpu)).unwrap()
    };
    let err = build("lenet5").quantize(scheme).unwrap_err().to_string();
    assert!(err.contains("gpt and llama"), "{err}");
    let report = build("gpt-tiny").quantize(scheme).unwrap();
    assert_eq!(report.matrices, 16);
    // 4 bytes a weight to 1 (plus a scale per row).
    assert!(report.bytes_after * 3 < report.bytes_before, "{report:?}");
}
