//! `lstm-classifier`: shapes, learning a sequence rule, dropout state, and input errors.

use kiln_lstm::{LstmClassifier, LstmClassifierConfig};
use kiln_nn::Scope;
use kiln_optim::{Adam, AdamConfig, Optimizer};
use kiln_tensor::{DType, Device, Tensor, TensorRng};
use kiln_zoo::{Batch, Model};

const CPU: Device = Device::Cpu;

#[test]
fn default_model_reads_sequential_mnist_shapes() {
    let m = LstmClassifier::new(LstmClassifierConfig::default(), Scope::init(0, DType::F32, CPU)).unwrap();
    let x = Tensor::zeros([3, 28, 28], DType::F32, CPU).unwrap();
    let out = m
        .forward(&Batch {
            inputs: x,
            targets: Some(Tensor::from_vec(vec![0i64, 4, 9], [3]).unwrap()),
        })
        .unwrap();
    assert_eq!(out.logits.dims(), &[3, 10]);
    assert!(out.loss.unwrap().value().to_f64_vec()[0].is_finite());
    assert_eq!(m.num_parameters(), 4 * 128 * (28 + 128 + 2) + 128 * 10 + 10);
    // Images [N, 1, 28, 28] are not sequences.
    let e = m
        .forward(&Batch {
            inputs: Tensor::zeros([3, 1, 28, 28], DType::F32, CPU).unwrap(),
            targets: None,
        })
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("[batch, time, 28]") && e.contains("[3, 1, 28, 28]"),
        "{e}"
    );
    let e = m
        .forward(&Batch {
            inputs: Tensor::zeros([2, 28, 28], DType::F32, CPU).unwrap(),
            targets: Some(Tensor::from_vec(vec![0i64, 10], [2]).unwrap()),
        })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("value 10") && e.contains("0..10"), "{e}");
}

#[test]
fn learns_the_sign_of_a_running_sum() {
    // Class 1 when the first feature sums to more than 0 over the sequence.
    let (n, t, f) = (64, 6, 2);
    let mut rng = TensorRng::new(11);
    let x: Vec<f32> = (0..n * t * f).map(|_| rng.next_normal() as f32).collect();
    let y: Vec<i64> = (0..n)
        .map(|i| ((0..t).map(|s| x[(i * t + s) * f]).sum::<f32>() > 0.0) as i64)
        .collect();
    let batch = Batch {
        inputs: Tensor::from_vec(x, [n, t, f]).unwrap(),
        targets: Some(Tensor::from_vec(y.clone(), [n]).unwrap()),
    };
    let cfg = LstmClassifierConfig {
        input_size: f,
        hidden_size: 16,
        num_layers: 2,
        dropout: 0.1,
        num_classes: 2,
    };
    let m = LstmClassifier::new(cfg, Scope::init(2, DType::F32, CPU)).unwrap();
    assert!(m.parameters().iter().any(|p| p.name() == "lstm.dropout_rng"));
    let mut opt = Adam::from_params(
        m.parameters(),
        AdamConfig {
            lr: 0.02,
            ..Default::default()
        },
    )
    .unwrap();
    for _ in 0..80 {
        let loss = m.forward(&batch).unwrap().loss.unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    m.set_training(false);
    let logits = m.forward(&batch).unwrap().logits.value().to_f64_vec();
    let correct = (0..n)
        .filter(|&i| ((logits[2 * i + 1] > logits[2 * i]) as i64) == y[i])
        .count();
    assert!(correct as f64 / n as f64 > 0.9, "{correct}/{n} correct");
}
