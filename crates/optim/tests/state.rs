//! Optimizer state: save -> load -> continue is bit-identical to an uninterrupted run, and
//! loading checks keys and shapes without changing anything on error.

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_autograd::{Gradients, Param};
use kiln_optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, AdamW, AdamWConfig, Error, Optimizer, ParamGroup, RmsProp,
    RmsPropConfig, Sgd, SgdConfig,
};
use kiln_tensor::{io, Tensor};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-optim-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two parameters (one 2-D) with fixed starting values.
fn model() -> Vec<Param> {
    vec![
        Param::new(
            "fc.weight",
            Tensor::from_vec(vec![0.5f64, -1.0, 0.25, 2.0, 1.5, -0.75], [2, 3]).unwrap(),
        ),
        Param::new("fc.bias", Tensor::from_vec(vec![0.1f64, -0.2], [2]).unwrap()),
    ]
}

/// grad = 2 * (p - 1) + 0.3 * sin(t + i), from the current values.
fn grads(t: usize, params: &[Param]) -> Gradients {
    let mut g = Gradients::new();
    for p in params {
        let v = p.value();
        let d: Vec<f64> = v
            .to_vec::<f64>()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, x)| 2.0 * (x - 1.0) + 0.3 * (t as f64 + i as f64).sin())
            .collect();
        g.insert(&p.var(), Tensor::from_vec(d, v.shape().clone()).unwrap());
    }
    g
}

fn bits(params: &[Param]) -> Vec<Vec<u64>> {
    params
        .iter()
        .map(|p| {
            p.value()
                .to_vec::<f64>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        })
        .collect()
}

type Make = fn(Vec<Param>) -> Box<dyn Optimizer>;

fn makers() -> Vec<(&'static str, Make)> {
    vec![
        ("sgd", |p| {
            Box::new(
                Sgd::from_params(
                    p,
                    SgdConfig {
                        lr: 0.05,
                        momentum: 0.9,
                        dampening: 0.1,
                        weight_decay: 0.01,
                        nesterov: false,
                    },
                )
                .unwrap(),
            )
        }),
        ("sgd_nesterov", |p| {
            Box::new(
                Sgd::from_params(
                    p,
                    SgdConfig {
                        lr: 0.05,
                        momentum: 0.9,
                        nesterov: true,
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
        }),
        ("adam_amsgrad", |p| {
            Box::new(
                Adam::from_params(
                    p,
                    AdamConfig {
                        lr: 0.05,
                        betas: (0.9, 0.9),
                        amsgrad: true,
                        weight_decay: 0.01,
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
        }),
        ("adamw", |p| {
            Box::new(
                AdamW::new(
                    ParamGroup::split_decay(p, 0.1),
                    AdamWConfig {
                        lr: 0.02,
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
        }),
        ("rmsprop", |p| {
            Box::new(
                RmsProp::from_params(
                    p,
                    RmsPropConfig {
                        momentum: 0.5,
                        centered: true,
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
        }),
        ("adagrad", |p| {
            Box::new(
                Adagrad::from_params(
                    p,
                    AdagradConfig {
                        lr: 0.1,
                        lr_decay: 0.05,
                        initial_accumulator_value: 0.1,
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
        }),
    ]
}

#[test]
fn save_load_continue_is_bit_identical_to_an_uninterrupted_run() {
    let dir = temp_dir("resume");
    const TOTAL: usize = 14;
    const SPLIT: usize = 6;
    for (name, make) in makers() {
        // Uninterrupted.
        let params = model();
        let mut opt = make(params.clone());
        for t in 0..TOTAL {
            opt.step(&grads(t, &params)).unwrap();
        }
        let want = bits(&params);

        // Interrupted: train, save weights and optimizer state, drop everything.
        let params = model();
        let mut opt = make(params.clone());
        for t in 0..SPLIT {
            opt.step(&grads(t, &params)).unwrap();
        }
        let weights = dir.join(format!("{name}.model.safetensors"));
        let state = dir.join(format!("{name}.optim.safetensors"));
        io::save_safetensors(params.iter().map(|p| (p.name().to_string(), p.value())), &weights).unwrap();
        opt.save_state(&state).unwrap();
        drop(opt);

        // Resume in a fresh model and optimizer.
        let params = model();
        let saved = io::load_safetensors(&weights).unwrap();
        for p in &params {
            p.set_value(saved[p.name()].clone());
        }
        let mut opt = make(params.clone());
        assert_eq!(opt.step_count(), 0);
        opt.load_state(&state).unwrap();
        assert_eq!(opt.step_count(), SPLIT, "{name}");
        for t in SPLIT..TOTAL {
            opt.step(&grads(t, &params)).unwrap();
        }
        assert_eq!(
            bits(&params),
            want,
            "{name}: resumed run differs from the uninterrupted one"
        );

        // A fresh optimizer that skipped the state would not match (the test has teeth).
        let params = model();
        for p in &params {
            p.set_value(saved[p.name()].clone());
        }
        let mut opt = make(params.clone());
        for t in SPLIT..TOTAL {
            opt.step(&grads(t, &params)).unwrap();
        }
        assert_ne!(bits(&params), want, "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn state_keys_are_named_after_parameters() {
    let keys = |opt: &dyn Optimizer| {
        let mut k: Vec<String> = opt.state_tensors().unwrap().into_iter().map(|(k, _)| k).collect();
        k.sort();
        k
    };
    let p = model();
    let sgd = Sgd::from_params(
        p.clone(),
        SgdConfig {
            momentum: 0.9,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        keys(&sgd),
        [
            "__step",
            "fc.bias.momentum_buffer",
            "fc.bias.step",
            "fc.weight.momentum_buffer",
            "fc.weight.step"
        ]
    );
    let adam = Adam::from_params(
        p.clone(),
        AdamConfig {
            amsgrad: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        keys(&adam),
        [
            "__step",
            "fc.bias.exp_avg",
            "fc.bias.exp_avg_sq",
            "fc.bias.max_exp_avg_sq",
            "fc.bias.step",
            "fc.weight.exp_avg",
            "fc.weight.exp_avg_sq",
            "fc.weight.max_exp_avg_sq",
            "fc.weight.step"
        ]
    );
    let rms = RmsProp::from_params(
        p.clone(),
        RmsPropConfig {
            centered: true,
            momentum: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(keys(&rms).contains(&"fc.weight.grad_avg".to_string()));
    assert!(keys(&rms).contains(&"fc.weight.square_avg".to_string()));
    assert!(keys(&rms).contains(&"fc.weight.momentum_buffer".to_string()));
    let ada = Adagrad::from_params(
        p,
        AdagradConfig {
            initial_accumulator_value: 0.5,
            ..Default::default()
        },
    )
    .unwrap();
    let state: HashMap<String, Tensor> = ada.state_tensors().unwrap().into_iter().collect();
    assert_eq!(state["fc.weight.sum"].to_vec::<f64>().unwrap(), vec![0.5; 6]);
    assert_eq!(state["fc.weight.sum"].dims(), &[2, 3]);
    assert_eq!(state["__step"].to_scalar::<i64>().unwrap(), 0);
}

/// An Adam optimizer after 3 steps, its state as a map, and its parameters.
fn trained_adam() -> (Adam, HashMap<String, Tensor>, Vec<Param>) {
    let params = model();
    let mut opt = Adam::from_params(params.clone(), AdamConfig::default()).unwrap();
    for t in 0..3 {
        opt.step(&grads(t, &params)).unwrap();
    }
    let map = opt.state_tensors().unwrap().into_iter().collect();
    (opt, map, params)
}

fn state_error(r: kiln_optim::Result<()>) -> String {
    match r {
        Err(e @ Error::State { .. }) => e.to_string(),
        Err(e) => panic!("expected Error::State, got {e}"),
        Ok(()) => panic!("expected Error::State, got Ok"),
    }
}

/// Loading `bad` into a fresh optimizer fails with a message satisfying `check`, and leaves the
/// optimizer exactly as it was (same state, and it then trains exactly like an untouched one).
fn assert_rejected(bad: &HashMap<String, Tensor>, check: impl Fn(&str)) {
    let params = model();
    let mut opt = Adam::from_params(params.clone(), AdamConfig::default()).unwrap();
    opt.step(&grads(0, &params)).unwrap();
    let before: Vec<(String, Vec<f64>)> = opt
        .state_tensors()
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.to_f64_vec()))
        .collect();
    check(&state_error(opt.load_state_tensors(bad)));
    let after: Vec<(String, Vec<f64>)> = opt
        .state_tensors()
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.to_f64_vec()))
        .collect();
    assert_eq!(before, after, "a failed load changed the state");
    assert_eq!(opt.step_count(), 1);
}

#[test]
fn a_missing_key_is_an_error_naming_it() {
    let (_, mut map, _) = trained_adam();
    map.remove("fc.weight.exp_avg_sq");
    assert_rejected(&map, |msg| {
        assert!(
            msg.contains("'fc.weight.exp_avg_sq'") && msg.contains("missing"),
            "{msg}"
        );
        assert!(msg.contains("[2, 3]"), "the expected shape: {msg}");
    });
    let (_, mut map, _) = trained_adam();
    map.remove("__step");
    assert_rejected(&map, |msg| {
        assert!(msg.contains("'__step'") && msg.contains("missing"), "{msg}")
    });
    let (_, mut map, _) = trained_adam();
    map.remove("fc.bias.step");
    assert_rejected(&map, |msg| {
        assert!(msg.contains("'fc.bias.step'") && msg.contains("missing"), "{msg}")
    });
}

#[test]
fn a_misshaped_tensor_is_an_error_naming_the_key_and_both_shapes() {
    let (_, mut map, _) = trained_adam();
    map.insert(
        "fc.bias.exp_avg".into(),
        Tensor::from_vec(vec![0.0f64; 3], [3]).unwrap(),
    );
    assert_rejected(&map, |msg| {
        assert!(msg.contains("'fc.bias.exp_avg'"), "{msg}");
        assert!(msg.contains("expected [2]") && msg.contains("found [3]"), "{msg}");
    });
    let (_, mut map, _) = trained_adam();
    map.insert(
        "fc.weight.exp_avg".into(),
        Tensor::from_vec(vec![0.0f64; 6], [3, 2]).unwrap(),
    );
    assert_rejected(&map, |msg| {
        assert!(msg.contains("'fc.weight.exp_avg'"), "{msg}");
        assert!(
            msg.contains("expected [2, 3]") && msg.contains("found [3, 2]"),
            "{msg}"
        );
    });
    let (_, mut map, _) = trained_adam();
    map.insert("__step".into(), Tensor::from_vec(vec![1i64, 2], [2]).unwrap());
    assert_rejected(&map, |msg| {
        assert!(msg.contains("'__step'") && msg.contains("[2]"), "{msg}")
    });
}

#[test]
fn a_misshaped_state_file_is_rejected_through_load_state() {
    let dir = temp_dir("bad-file");
    let (opt, mut map, _) = trained_adam();
    let good = dir.join("good.safetensors");
    opt.save_state(&good).unwrap();
    let loaded = io::load_safetensors(&good).unwrap();
    assert_eq!(loaded.len(), map.len());

    map.insert(
        "fc.weight.exp_avg".into(),
        Tensor::from_vec(vec![0.0f64; 4], [4]).unwrap(),
    );
    let bad = dir.join("bad.safetensors");
    io::save_safetensors(&map, &bad).unwrap();
    let params = model();
    let mut fresh = Adam::from_params(params, AdamConfig::default()).unwrap();
    let msg = state_error(fresh.load_state(&bad));
    assert!(
        msg.contains("'fc.weight.exp_avg'") && msg.contains("[2, 3]") && msg.contains("[4]"),
        "{msg}"
    );
    assert_eq!(fresh.step_count(), 0);
    fresh.load_state(&good).unwrap();
    assert_eq!(fresh.step_count(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unexpected_keys_and_foreign_optimizers_are_rejected() {
    let (_, mut map, _) = trained_adam();
    map.insert(
        "fc.other.exp_avg".into(),
        Tensor::from_vec(vec![0.0f64; 2], [2]).unwrap(),
    );
    assert_rejected(&map, |msg| {
        assert!(
            msg.contains("'fc.other.exp_avg'") && msg.contains("unexpected"),
            "{msg}"
        )
    });

    // SGD state (momentum buffers) into Adam: Adam's keys are missing.
    let params = model();
    let sgd = Sgd::from_params(
        params,
        SgdConfig {
            momentum: 0.9,
            ..Default::default()
        },
    )
    .unwrap();
    let map: HashMap<String, Tensor> = sgd.state_tensors().unwrap().into_iter().collect();
    assert_rejected(&map, |msg| {
        assert!(msg.contains("exp_avg") && msg.contains("missing"), "{msg}")
    });
}

#[test]
fn loading_converts_float_dtypes_and_restores_frozen_state_when_present() {
    let (_, map, _) = trained_adam();
    // f32 copies of the state load into f64 parameters.
    let f32_map: HashMap<String, Tensor> = map
        .iter()
        .map(|(k, t)| {
            let t = if t.dtype().is_float() {
                t.to_dtype(kiln_tensor::DType::F32).unwrap()
            } else {
                t.clone()
            };
            (k.clone(), t)
        })
        .collect();
    let mut opt = Adam::from_params(model(), AdamConfig::default()).unwrap();
    opt.load_state_tensors(&f32_map).unwrap();
    let state: HashMap<String, Tensor> = opt.state_tensors().unwrap().into_iter().collect();
    assert_eq!(state["fc.weight.exp_avg"].dtype(), kiln_tensor::DType::F64);

    // A parameter frozen when the optimizer is built has no state: its keys are optional.
    let params = model();
    params[1].set_requires_grad(false);
    let mut opt = Adam::from_params(params.clone(), AdamConfig::default()).unwrap();
    let without_bias: HashMap<String, Tensor> = map
        .iter()
        .filter(|(k, _)| !k.starts_with("fc.bias"))
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    opt.load_state_tensors(&without_bias).unwrap();
    assert_eq!(opt.state_tensors().unwrap().len(), 4);
    opt.load_state_tensors(&map).unwrap();
    assert_eq!(
        opt.state_tensors().unwrap().len(),
        7,
        "present keys of a frozen parameter are loaded"
    );
}
