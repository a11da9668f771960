//! Training BERT: the pre-training and classification losses have the gradients finite
//! differences give, trailing padding changes nothing, the tallies count what they say, a tiny
//! model learns a fixed batch, and bad targets are errors naming the problem.

use kiln_bert::{BertClassifier, BertConfig, BertForPreTraining};
use kiln_nn::Scope;
use kiln_tensor::{DType, Device, Tensor};
use kiln_zoo::{Batch, Model};

fn small_config() -> BertConfig {
    BertConfig {
        vocab_size: 40,
        hidden_size: 8,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 16,
        max_position_embeddings: 16,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        num_labels: Some(3),
    }
}

/// Two pairs `[CLS] a [SEP] b [SEP]` as `[2, 3, L]` (ids, types, mask), the second padded,
/// plus `pad` extra all-padding columns.
fn pair_inputs(pad: usize) -> Tensor {
    let rows: [(&[u32], &[u32]); 2] = [
        (&[1, 5, 6, 7, 2, 8, 9, 2], &[0, 0, 0, 0, 0, 1, 1, 1]),
        (&[1, 10, 11, 2, 12, 2], &[0, 0, 0, 0, 1, 1]),
    ];
    let l = 8 + pad;
    let mut data = Vec::new();
    for (ids, types) in rows {
        let fill = |v: &[u32]| -> Vec<i64> {
            let mut out: Vec<i64> = v.iter().map(|&x| i64::from(x)).collect();
            out.resize(l, 0);
            out
        };
        data.extend(fill(ids));
        data.extend(fill(types));
        data.extend(fill(&vec![1; ids.len()]));
    }
    Tensor::from_vec(data, [2, 3, l]).unwrap()
}

/// Masked-LM labels at a few real positions (-100 elsewhere), then the next-sentence labels.
fn pretraining_targets(pad: usize) -> Tensor {
    let l = 8 + pad;
    let mut t = vec![-100i64; 2 * (l + 1)];
    t[2] = 6;
    t[6] = 9;
    t[l] = 0;
    t[(l + 1) + 1] = 10;
    t[(l + 1) + 4] = 12;
    t[2 * (l + 1) - 1] = 1;
    Tensor::from_vec(t, [2, l + 1]).unwrap()
}

fn loss_of(model: &dyn Model, batch: &Batch) -> f64 {
    let out = model.forward(batch).unwrap();
    out.loss.unwrap().value().to_vec::<f64>().unwrap()[0]
}

/// Central differences on `checks` elements of every parameter against backward's gradient.
fn check_gradients(model: &dyn Model, batch: &Batch) {
    let loss = model.forward(batch).unwrap().loss.unwrap();
    let grads = loss.backward().unwrap();
    let eps = 1e-6;
    let mut checked = 0;
    for p in model.parameters() {
        let analytic = p
            .grad(&grads)
            .unwrap_or_else(|| panic!("{} got no gradient", p.name()));
        let analytic = analytic.to_vec::<f64>().unwrap();
        let base = p.value();
        let values = base.to_vec::<f64>().unwrap();
        let n = values.len();
        // A few spread-out elements of every tensor (the word table: rows used as inputs,
        // as labels, and neither).
        let picks: Vec<usize> = if p.name().ends_with("word_embeddings.weight") {
            let d = small_config().hidden_size;
            vec![6 * d, 9 * d + 3, 12 * d + 7, 30 * d + 1]
        } else {
            vec![0, n / 3, n / 2, n - 1]
        };
        for &i in &picks {
            let at = |delta: f64| -> f64 {
                let mut v = values.clone();
                v[i] += delta;
                p.set_value(Tensor::from_vec(v, base.shape().clone()).unwrap());
                loss_of(model, batch)
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            p.set_value(base.clone());
            let err = (numeric - analytic[i]).abs();
            assert!(
                err <= 1e-6 + 1e-4 * numeric.abs(),
                "{}[{i}]: backward {} vs finite differences {numeric}",
                p.name(),
                analytic[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} elements checked");
}

#[test]
fn the_pre_training_loss_has_the_gradients_of_finite_differences() {
    let model = BertForPreTraining::new(
        "bert-tiny",
        small_config(),
        Scope::init(3, DType::F64, Device::Cpu),
    )
    .unwrap();
    let batch = Batch {
        inputs: pair_inputs(0),
        targets: Some(pretraining_targets(0)),
    };
    check_gradients(&model, &batch);
}

#[test]
fn the_classification_loss_has_the_gradients_of_finite_differences() {
    let model = BertClassifier::new(
        "bert-classifier",
        small_config(),
        Scope::init(4, DType::F64, Device::Cpu),
    )
    .unwrap();
    let batch = Batch {
        inputs: pair_inputs(0),
        targets: Some(Tensor::from_vec(vec![2i64, 0], [2]).unwrap()),
    };
    check_gradients(&model, &batch);
    let out = model.forward(&batch).unwrap();
    assert_eq!(out.logits.dims(), &[2, 3]);
}

#[test]
fn trailing_padding_changes_nothing_and_tallies_count_their_rows() {
    let model = BertForPreTraining::new(
        "bert-tiny",
        small_config(),
        Scope::init(5, DType::F64, Device::Cpu),
    )
    .unwrap();
    let tight = model
        .forward(&Batch {
            inputs: pair_inputs(0),
            targets: Some(pretraining_targets(0)),
        })
        .unwrap();
    let padded = model
        .forward(&Batch {
            inputs: pair_inputs(5),
            targets: Some(pretraining_targets(5)),
        })
        .unwrap();
    let value = |o: &kiln_zoo::Output| o.loss.as_ref().unwrap().value().to_vec::<f64>().unwrap()[0];
    assert_eq!(value(&tight), value(&padded));
    assert_eq!(
        tight.logits.dims(),
        &[4, 40],
        "logits of the 4 predicted positions"
    );
    let get = |name: &str| tight.tallies.iter().find(|t| t.name == name).unwrap().clone();
    assert_eq!(get("mlm_accuracy").count, 4.0);
    assert_eq!(get("nsp_accuracy").count, 2.0);
    // The loss is the masked-LM mean plus the next-sentence mean.
    let parts = get("mlm_loss").sum / 4.0 + get("nsp_loss").sum / 2.0;
    assert!((parts - value(&tight)).abs() < 1e-12);
}

#[test]
fn a_tiny_model_learns_a_fixed_batch() {
    let model = BertForPreTraining::new(
        "bert-tiny",
        small_config(),
        Scope::init(6, DType::F32, Device::Cpu),
    )
    .unwrap();
    let batch = Batch {
        inputs: pair_inputs(0),
        targets: Some(pretraining_targets(0)),
    };
    let first = loss_of32(&model, &batch);
    let cfg = kiln_optim::AdamConfig {
        lr: 1e-2,
        ..Default::default()
    };
    let mut adam = kiln_optim::Adam::from_params(model.parameters(), cfg).unwrap();
    for _ in 0..150 {
        let loss = model.forward(&batch).unwrap().loss.unwrap();
        let grads = loss.backward().unwrap();
        kiln_optim::Optimizer::step(&mut adam, &grads).unwrap();
    }
    let out = model.forward(&batch).unwrap();
    let last = out.loss.unwrap().value().to_vec::<f32>().unwrap()[0];
    assert!(last < 0.1 * first, "loss {first} -> {last}");
    for t in out.tallies.iter().filter(|t| t.name.ends_with("accuracy")) {
        assert_eq!(t.sum, t.count, "{} not learned", t.name);
    }
}

fn loss_of32(model: &dyn Model, batch: &Batch) -> f32 {
    model
        .forward(batch)
        .unwrap()
        .loss
        .unwrap()
        .value()
        .to_vec::<f32>()
        .unwrap()[0]
}

#[test]
fn bad_targets_are_errors_naming_the_problem() {
    let model = BertForPreTraining::new(
        "bert-tiny",
        small_config(),
        Scope::init(7, DType::F32, Device::Cpu),
    )
    .unwrap();
    let cases: Vec<(Tensor, &str)> = vec![
        (Tensor::from_vec(vec![0i64; 2 * 8], [2, 8]).unwrap(), "[B, L + 1]"),
        (
            {
                let mut t = pretraining_targets(0).to_vec::<i64>().unwrap();
                t[2] = 40;
                Tensor::from_vec(t, [2, 9]).unwrap()
            },
            "masked-LM label 40",
        ),
        (
            {
                let mut t = pretraining_targets(0).to_vec::<i64>().unwrap();
                t[8] = 2;
                Tensor::from_vec(t, [2, 9]).unwrap()
            },
            "next-sentence label 2",
        ),
        (
            Tensor::zeros([2, 9], DType::F32, Device::Cpu).unwrap(),
            "integers",
        ),
    ];
    for (targets, want) in cases {
        let err = model
            .forward(&Batch {
                inputs: pair_inputs(0),
                targets: Some(targets),
            })
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(want) && err.contains("bert-tiny"), "{err}");
    }
    let classifier = BertClassifier::new(
        "bert-classifier",
        small_config(),
        Scope::init(8, DType::F32, Device::Cpu),
    )
    .unwrap();
    let err = classifier
        .forward(&Batch {
            inputs: pair_inputs(0),
            targets: Some(Tensor::from_vec(vec![3i64, 0], [2]).unwrap()),
        })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("class 3 is outside 0..3"), "{err}");
}
