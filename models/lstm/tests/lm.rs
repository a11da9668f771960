//! `lstm-lm`: shapes and loss, incremental decoding equal to the full forward, tied embeddings,
//! the dropout generator saved with the weights, learning a pattern, and input errors.

use kiln_autograd::Var;
use kiln_lstm::{LstmLm, LstmLmConfig};
use kiln_nn::Scope;
use kiln_optim::{Adam, AdamConfig, Optimizer};
use kiln_tensor::{DType, Device, Tensor};
use kiln_zoo::generate::{generate_all, SamplingParams};
use kiln_zoo::{Batch, Model};

const CPU: Device = Device::Cpu;

fn small(vocab: usize, embed: usize, hidden: usize, layers: usize, dropout: f64) -> LstmLmConfig {
    LstmLmConfig {
        vocab_size: vocab,
        embedding_dim: embed,
        hidden_size: hidden,
        num_layers: layers,
        dropout,
        tie_embeddings: false,
    }
}

fn ids(v: &[i64], shape: [usize; 2]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape).unwrap()
}

fn scalar(v: &Var) -> f64 {
    v.value().to_f64_vec()[0]
}

#[test]
fn default_model_shapes_and_initial_loss() {
    let m = LstmLm::new(LstmLmConfig::default(), Scope::init(0, DType::F32, CPU)).unwrap();
    let x: Vec<i64> = (0..16).map(|i| (i * 7) % 65).collect();
    let y: Vec<i64> = (0..16).map(|i| (i * 11 + 3) % 65).collect();
    let out = m
        .forward(&Batch {
            inputs: ids(&x, [2, 8]),
            targets: Some(ids(&y, [2, 8])),
        })
        .unwrap();
    assert_eq!(out.logits.dims(), &[2, 8, 65]);
    // Small initial logits: the loss starts near ln(65) = 4.17.
    let loss = scalar(&out.loss.unwrap());
    assert!((loss - 65f64.ln()).abs() < 0.2, "{loss}");
    // embedding 65x128, 2 LSTM layers (4*256*(128+256+2) and 4*256*(256+256+2)), decoder 256x65+65.
    assert_eq!(
        m.num_parameters(),
        65 * 128 + 4 * 256 * (128 + 256 + 2) + 4 * 256 * (256 + 256 + 2) + 256 * 65 + 65
    );
}

#[test]
fn incremental_decoding_equals_the_full_forward() {
    let m = LstmLm::new(small(7, 6, 5, 2, 0.0), Scope::init(1, DType::F64, CPU)).unwrap();
    let seq = [3i64, 1, 4, 1, 5, 2, 6, 0, 3];
    let full = m
        .forward(&Batch {
            inputs: ids(&seq, [1, 9]),
            targets: None,
        })
        .unwrap()
        .logits
        .value()
        .to_f64_vec();
    let at = |t: usize| &full[t * 7..(t + 1) * 7];
    let lm = m.as_causal_lm().unwrap();
    let mut state = lm.start().unwrap();
    let close = |got: &[f32], want: &[f64]| got.iter().zip(want).all(|(a, b)| (*a as f64 - b).abs() < 1e-6);
    let first: Vec<u32> = seq[..4].iter().map(|&i| i as u32).collect();
    assert!(close(&state.feed(&first).unwrap(), at(3)), "after the prompt");
    for (t, &id) in seq.iter().enumerate().skip(4) {
        assert!(close(&state.feed(&[id as u32]).unwrap(), at(t)), "step {t}");
    }
}

#[test]
fn tied_embeddings_share_the_table_and_need_equal_sizes() {
    let cfg = LstmLmConfig {
        tie_embeddings: true,
        ..small(11, 8, 8, 1, 0.0)
    };
    let m = LstmLm::new(cfg.clone(), Scope::init(0, DType::F32, CPU)).unwrap();
    let names: Vec<String> = m.parameters().iter().map(|p| p.name().to_string()).collect();
    assert!(names.contains(&"embedding.weight".to_string()) && names.contains(&"decoder.bias".to_string()));
    assert!(!names.iter().any(|n| n == "decoder.weight"), "{names:?}");
    assert_eq!(m.num_parameters(), 11 * 8 + 4 * 8 * (8 + 8 + 2) + 11);
    // The gradient of the shared table collects both uses.
    let x = ids(&[1, 2, 3, 4], [1, 4]);
    let loss = m
        .forward(&Batch {
            inputs: x.clone(),
            targets: Some(ids(&[2, 3, 4, 5], [1, 4])),
        })
        .unwrap()
        .loss
        .unwrap();
    let grads = loss.backward().unwrap();
    let table = m
        .parameters()
        .into_iter()
        .find(|p| p.name() == "embedding.weight")
        .unwrap();
    let g = table.grad(&grads).unwrap().to_f64_vec();
    // Row 9 is never an input, but the output projection still reaches it.
    assert!(g[9 * 8..10 * 8].iter().any(|v| *v != 0.0));
    let err = LstmLm::new(
        LstmLmConfig {
            hidden_size: 16,
            ..cfg
        },
        Scope::init(0, DType::F32, CPU),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("tie_embeddings") && err.contains("16") && err.contains('8'),
        "{err}"
    );
}

#[test]
fn the_dropout_generator_is_saved_with_the_weights() {
    let cfg = small(9, 6, 6, 3, 0.5);
    let a = LstmLm::new(cfg.clone(), Scope::init(3, DType::F32, CPU)).unwrap();
    let batch = Batch {
        inputs: ids(&[1, 2, 3, 4, 5, 6], [2, 3]),
        targets: None,
    };
    let y1 = a.forward(&batch).unwrap().logits.value().to_f64_vec();
    // A snapshot after one step, as a checkpoint holds it.
    let snapshot: std::collections::HashMap<String, Tensor> =
        kiln_nn::state_dict(&a.parameters()).into_iter().collect();
    assert!(snapshot.contains_key("lstm.dropout_rng"));
    let y2 = a.forward(&batch).unwrap().logits.value().to_f64_vec();
    assert_ne!(y1, y2, "fresh masks per call");
    // Another seed draws other masks, until the snapshot restores weights and generator.
    let b = LstmLm::new(cfg, Scope::init(99, DType::F32, CPU)).unwrap();
    kiln_nn::load_state_dict(&b.parameters(), &snapshot, true).unwrap();
    assert_eq!(b.forward(&batch).unwrap().logits.value().to_f64_vec(), y2);
    // In eval mode the generator does not move.
    b.set_training(false);
    let before = kiln_nn::state_dict(&b.parameters());
    b.forward(&batch).unwrap();
    let after = kiln_nn::state_dict(&b.parameters());
    let rng = |sd: &[(String, Tensor)]| {
        sd.iter()
            .find(|(n, _)| n == "lstm.dropout_rng")
            .unwrap()
            .1
            .to_f64_vec()
    };
    assert_eq!(rng(&before), rng(&after));
}

#[test]
fn learns_a_repeating_pattern_and_continues_it() {
    let m = LstmLm::new(small(4, 8, 16, 1, 0.0), Scope::init(5, DType::F32, CPU)).unwrap();
    let seq: Vec<i64> = (0..52).map(|i| i % 4).collect();
    let (x, y): (Vec<i64>, Vec<i64>) = (0..4)
        .flat_map(|r| (0..12).map(move |t| (r * 13 + t, r * 13 + t + 1)))
        .map(|(i, j)| (seq[i], seq[j]))
        .unzip();
    let batch = Batch {
        inputs: ids(&x, [4, 12]),
        targets: Some(ids(&y, [4, 12])),
    };
    let mut opt = Adam::from_params(
        m.parameters(),
        AdamConfig {
            lr: 0.05,
            ..Default::default()
        },
    )
    .unwrap();
    let mut loss = f64::INFINITY;
    for _ in 0..60 {
        let l = m.forward(&batch).unwrap().loss.unwrap();
        loss = scalar(&l);
        opt.step(&l.backward().unwrap()).unwrap();
    }
    assert!(loss < 0.05, "loss after 60 steps {loss}");
    m.set_training(false);
    let out = generate_all(m.as_causal_lm().unwrap(), &[2, 3], &SamplingParams::greedy(7)).unwrap();
    assert_eq!(out, [0, 1, 2, 3, 0, 1, 2]);
}

#[test]
fn bad_inputs_and_configs_are_errors() {
    let m = LstmLm::new(small(5, 4, 4, 1, 0.0), Scope::init(0, DType::F32, CPU)).unwrap();
    let fails = |inputs: Tensor, targets: Option<Tensor>| {
        m.forward(&Batch { inputs, targets })
            .err()
            .expect("should fail")
            .to_string()
    };
    let e = fails(ids(&[0, 1, 7, 2], [2, 2]), None);
    assert!(e.contains("value 7 at [1, 0]") && e.contains("0..5"), "{e}");
    let e = fails(Tensor::zeros([2, 2], DType::F32, CPU).unwrap(), None);
    assert!(e.contains("integer"), "{e}");
    let e = fails(Tensor::from_vec(vec![1i64, 2, 3], [3]).unwrap(), None);
    assert!(e.contains("[batch, time]"), "{e}");
    let e = fails(ids(&[0, 1, 2, 3], [2, 2]), Some(ids(&[0, 1], [1, 2])));
    assert!(e.contains("targets of shape [2, 2]"), "{e}");
    let e = fails(ids(&[0, 1, 2, 3], [2, 2]), Some(ids(&[0, 1, 2, 9], [2, 2])));
    assert!(e.contains("value 9 at [1, 1]"), "{e}");
    for (cfg, needle) in [
        (small(5, 4, 4, 1, 1.0), "dropout"),
        (small(0, 4, 4, 1, 0.0), "vocab_size"),
        (small(5, 4, 4, 0, 0.0), "num_layers"),
    ] {
        let e = LstmLm::new(cfg, Scope::init(0, DType::F32, CPU))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(needle) && e.contains("lstm-lm"), "{e}");
    }
}
