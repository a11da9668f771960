//! kiln-nn core: scopes, state dicts, Linear, Sequential, Embedding, Dropout, norms and losses
//! against hand-computed values.

use std::collections::HashMap;

use kiln_autograd::Var;
use kiln_nn::layers::{Activation, Dropout, Embedding, LayerNorm, Linear, RmsNorm, Sequential};
use kiln_nn::loss::{self, CrossEntropyOptions, Reduction, Target};
use kiln_nn::{load_state_dict, Error, Module, Scope};
use kiln_tensor::{DType, Device, Tensor};

fn t(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape.to_vec()).unwrap()
}
fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}
fn weights(pairs: &[(&str, Tensor)]) -> HashMap<String, Tensor> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[test]
fn linear_loads_by_name_and_computes_x_wt_plus_b() {
    let w = weights(&[
        ("fc.weight", t(&[1., 2., 3., 4., 5., 6.], &[2, 3])),
        ("fc.bias", t(&[0.5, -1.], &[2])),
    ]);
    let scope = Scope::from_tensors(w, true, 0, DType::F64, Device::Cpu);
    let fc = Linear::new(scope.sub("fc"), 3, 2).unwrap();
    scope.check_all_used().unwrap();
    let y = fc.forward(&Var::constant(t(&[1., 0., -1.], &[1, 3]))).unwrap();
    close(
        &y.value().to_vec::<f64>().unwrap(),
        &[1. - 3. + 0.5, 4. - 6. - 1.],
        0.0,
    );
    // Leading dimensions fold into rows.
    let y3 = fc
        .forward(&Var::constant(
            Tensor::ones([2, 4, 3], DType::F64, Device::Cpu).unwrap(),
        ))
        .unwrap();
    assert_eq!(y3.dims(), &[2, 4, 2]);
    assert!(matches!(
        fc.forward(&Var::constant(t(&[1., 2.], &[1, 2]))),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn a_linear_layer_with_packed_weights_gives_the_same_outputs_and_still_trains() {
    let scope = Scope::init(5, DType::F32, Device::Cpu);
    let fc = Linear::new(scope.sub("fc"), 96, 64).unwrap();
    let mut rng = kiln_tensor::TensorRng::new(9);
    let x = Tensor::randn([100, 96], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
    let plain = fc.forward(&Var::constant(x.clone())).unwrap();
    fc.weight().set_keep_packed(true);
    let infer = |fc: &Linear| {
        let _g = kiln_autograd::no_grad();
        fc.forward(&Var::constant(x.clone())).unwrap()
    };
    let packed = infer(&fc);
    let bytes = |v: &Var| v.value().to_vec::<f32>().unwrap();
    assert_eq!(bytes(&packed), bytes(&plain));
    // With gradients recorded, the ordinary product runs and the weight gets its gradient.
    let y = fc.forward(&Var::constant(x.clone())).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(fc.weight().grad(&grads).is_some());
    // A new value (an optimizer step) is packed afresh, not served stale.
    let w2 = fc.weight().value().mul_scalar(2.0).unwrap();
    fc.weight().set_value(w2);
    let after = infer(&fc);
    fc.weight().set_keep_packed(false);
    assert_eq!(bytes(&after), bytes(&infer(&fc)));
    assert_ne!(bytes(&after), bytes(&packed));
}

#[test]
fn strict_loading_names_missing_and_misshaped_keys() {
    let w = weights(&[("fc.weight", t(&[1., 2.], &[1, 2]))]);
    let s = Scope::from_tensors(w.clone(), true, 0, DType::F32, Device::Cpu);
    match Linear::new(s.sub("fc"), 3, 1) {
        Err(e @ Error::ShapeMismatch { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("fc.weight") && m.contains("[1, 3]") && m.contains("[1, 2]"),
                "{m}"
            );
        }
        other => panic!("expected a shape mismatch, got {:?}", other.err()),
    }
    let s = Scope::from_tensors(w, true, 0, DType::F32, Device::Cpu);
    match Linear::new(s.sub("fc"), 2, 1) {
        Err(Error::MissingKey { name, .. }) => assert_eq!(name, "fc.bias"),
        other => panic!("expected a missing key, got {:?}", other.err()),
    }
    let s = Scope::from_tensors(
        weights(&[("extra", t(&[1.], &[1]))]),
        false,
        0,
        DType::F32,
        Device::Cpu,
    );
    Linear::new(s.sub("fc"), 2, 1).unwrap();
    assert_eq!(s.unused_weights(), vec!["extra".to_string()]);
    assert!(matches!(s.check_all_used(), Err(Error::UnexpectedKeys(_))));
}

#[test]
fn state_dict_round_trip_is_exact_and_bad_loads_change_nothing() {
    let scope = Scope::init(7, DType::F32, Device::Cpu);
    let mlp = Sequential::new()
        .add(Linear::new(scope.sub("0"), 5, 4).unwrap())
        .add(Activation::Relu)
        .add(Linear::new(scope.sub("2"), 4, 3).unwrap());
    let dir = std::env::temp_dir().join(format!("kiln-nn-sd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    kiln_nn::save_state_dict(&mlp.parameters(), &path).unwrap();
    let other = Scope::init(8, DType::F32, Device::Cpu);
    let mlp2 = Sequential::new()
        .add(Linear::new(other.sub("0"), 5, 4).unwrap())
        .add(Activation::Relu)
        .add(Linear::new(other.sub("2"), 4, 3).unwrap());
    let report = kiln_nn::load_state_dict_file(&mlp2.parameters(), &path, true).unwrap();
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    for (a, b) in mlp.parameters().iter().zip(mlp2.parameters()) {
        assert_eq!(
            a.value().to_vec::<f32>().unwrap(),
            b.value().to_vec::<f32>().unwrap()
        );
    }
    // A misshaped key is an error naming it and both shapes, and nothing was changed.
    let before = mlp2.parameters()[0].value().to_vec::<f32>().unwrap();
    let mut bad = kiln_tensor::io::load_safetensors(&path).unwrap();
    bad.insert(
        "2.bias".into(),
        Tensor::zeros([4], DType::F32, Device::Cpu).unwrap(),
    );
    bad.insert(
        "0.weight".into(),
        Tensor::zeros([4, 5], DType::F32, Device::Cpu).unwrap(),
    );
    let e = load_state_dict(&mlp2.parameters(), &bad, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2.bias") && e.contains("[3]") && e.contains("[4]"),
        "{e}"
    );
    assert_eq!(mlp2.parameters()[0].value().to_vec::<f32>().unwrap(), before);
    // Integer data for a float parameter is an error naming the key and both dtypes (it used to
    // be converted silently); f64 or f16 weights convert to f32 and are reported.
    let mut ints = kiln_tensor::io::load_safetensors(&path).unwrap();
    ints.insert(
        "2.bias".into(),
        Tensor::zeros([3], DType::U32, Device::Cpu).unwrap(),
    );
    let e = load_state_dict(&mlp2.parameters(), &ints, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2.bias") && e.contains("u32") && e.contains("f32"),
        "{e}"
    );
    assert_eq!(mlp2.parameters()[0].value().to_vec::<f32>().unwrap(), before);
    let mut wide = kiln_tensor::io::load_safetensors(&path).unwrap();
    let b = wide["2.bias"].to_dtype(DType::F64).unwrap();
    wide.insert("2.bias".into(), b);
    let report = load_state_dict(&mlp2.parameters(), &wide, true).unwrap();
    assert_eq!(
        report.converted,
        vec![("2.bias".to_string(), DType::F64, DType::F32)]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tied_weights_are_one_parameter() {
    let scope = Scope::init(0, DType::F32, Device::Cpu);
    let emb = Embedding::new(scope.sub("wte"), 10, 4, None).unwrap();
    let head = scope
        .sub("wte")
        .param("weight", [10, 4], kiln_nn::Init::Zeros)
        .unwrap();
    assert!(head.same_as(emb.weight()));
    assert_eq!(scope.all_params().len(), 1);
}

#[test]
fn embedding_padding_row_is_zero_and_gets_no_gradient() {
    let scope = Scope::init(0, DType::F64, Device::Cpu);
    let emb = Embedding::new(scope.sub("e"), 5, 3, Some(0)).unwrap();
    let w = emb.weight().value().to_vec2::<f64>().unwrap();
    assert_eq!(w[0], vec![0.0; 3]);
    let ids = Tensor::from_vec(vec![0i64, 2, 2], [3]).unwrap();
    let out = emb.lookup(&ids).unwrap();
    assert_eq!(out.value().to_vec2::<f64>().unwrap()[1], w[2]);
    let g = out.sum_all().unwrap().backward().unwrap();
    let gw = emb.weight().grad(&g).unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(gw[0], vec![0.0; 3]);
    assert_eq!(gw[2], vec![2.0; 3]);
    assert!(Embedding::new(scope.sub("bad"), 5, 3, Some(5)).is_err());
}

/// PyTorch semantics: a loaded table's padding row is returned as stored (not zeroed) and gets
/// no gradient; the other rows read at the same time get theirs.
#[test]
fn embedding_returns_a_loaded_padding_row_and_blocks_only_its_gradient() {
    let scope = Scope::init(0, DType::F64, Device::Cpu);
    let emb = Embedding::new(scope.sub("e"), 4, 2, Some(1)).unwrap();
    let loaded = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [4, 2]).unwrap();
    emb.weight().set_value(loaded);
    let ids = Tensor::from_vec(vec![1i64, 3, 1], [3]).unwrap();
    let out = emb.lookup(&ids).unwrap();
    assert_eq!(
        out.value().to_vec2::<f64>().unwrap(),
        vec![vec![3.0, 4.0], vec![7.0, 8.0], vec![3.0, 4.0]]
    );
    let g = out.sum_all().unwrap().backward().unwrap();
    let gw = emb.weight().grad(&g).unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(gw, vec![vec![0.0; 2], vec![0.0; 2], vec![0.0; 2], vec![1.0; 2]]);
}

#[test]
fn dropout_scales_kept_elements_and_is_identity_in_eval() {
    let d = Dropout::new(0.25, 3).unwrap();
    let x = Var::constant(Tensor::ones([10000], DType::F64, Device::Cpu).unwrap());
    let v = d.forward(&x).unwrap().value().to_vec::<f64>().unwrap();
    let kept = v.iter().filter(|&&e| e != 0.0).count() as f64 / v.len() as f64;
    assert!((kept - 0.75).abs() < 0.02, "{kept}");
    assert!(v.iter().all(|&e| e == 0.0 || (e - 1.0 / 0.75).abs() < 1e-12));
    d.set_training(false);
    assert_eq!(
        d.forward(&x).unwrap().value().to_vec::<f64>().unwrap(),
        vec![1.0; 10000]
    );
    assert!(Dropout::new(1.0, 0).is_err());
}

#[test]
fn norms_match_their_formulas() {
    let s = Scope::init(0, DType::F64, Device::Cpu);
    let x = Var::constant(t(&[1., 2., 3., 4.], &[1, 4]));
    // mean 2.5, var 1.25
    let ln = LayerNorm::new(s.sub("ln"), 4, 0.0).unwrap();
    let sd = 1.25f64.sqrt();
    close(
        &ln.forward(&x).unwrap().value().to_vec::<f64>().unwrap(),
        &[-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd],
        1e-12,
    );
    let rms = RmsNorm::new(s.sub("rms"), 4, 0.0).unwrap();
    let r = (30.0f64 / 4.0).sqrt();
    close(
        &rms.forward(&x).unwrap().value().to_vec::<f64>().unwrap(),
        &[1. / r, 2. / r, 3. / r, 4. / r],
        1e-12,
    );
}

/// PyTorch's default `ignore_index` is -100: such targets drop out of the mean (and get no
/// gradient); `ignore_index: None` makes -100 an out-of-range class again.
#[test]
fn cross_entropy_ignores_minus_100_by_default() {
    let logits = t(&[2.0, 0.5, -1.0, 0.1, 0.2, 0.3], &[2, 3]);
    let lp = logits.log_softmax(1).unwrap().to_vec2::<f64>().unwrap();
    let x = Var::parameter(logits);
    let tgt = Target::Indices(Tensor::from_vec(vec![0i64, -100], [2]).unwrap());
    let loss = loss::cross_entropy(&x, &tgt, &Default::default()).unwrap();
    close(&loss.value().to_vec::<f64>().unwrap(), &[-lp[0][0]], 1e-12);
    let g = loss.backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec2::<f64>().unwrap()[1], vec![0.0; 3]);
    let strict = CrossEntropyOptions {
        ignore_index: None,
        ..Default::default()
    };
    assert!(loss::cross_entropy(&x, &tgt, &strict).is_err());
}

#[test]
fn cross_entropy_variants_match_pytorch_formulas() {
    let logits = t(&[2.0, 0.5, -1.0, 0.1, 0.2, 0.3], &[2, 3]);
    let lp = logits.log_softmax(1).unwrap().to_vec2::<f64>().unwrap();
    let x = Var::parameter(logits.clone());
    let tgt = Tensor::from_vec(vec![0i64, 2], [2]).unwrap();
    let ce = |o: CrossEntropyOptions| {
        loss::cross_entropy(&x, &Target::Indices(tgt.clone()), &o)
            .unwrap()
            .value()
            .to_vec::<f64>()
            .unwrap()
    };
    // plain mean
    close(&ce(Default::default()), &[-(lp[0][0] + lp[1][2]) / 2.0], 1e-12);
    // sum and none
    close(
        &ce(CrossEntropyOptions {
            reduction: Reduction::Sum,
            ..Default::default()
        }),
        &[-(lp[0][0] + lp[1][2])],
        1e-12,
    );
    close(
        &ce(CrossEntropyOptions {
            reduction: Reduction::None,
            ..Default::default()
        }),
        &[-lp[0][0], -lp[1][2]],
        1e-12,
    );
    // ignore_index drops sample 1
    close(
        &ce(CrossEntropyOptions {
            ignore_index: Some(2),
            ..Default::default()
        }),
        &[-lp[0][0]],
        1e-12,
    );
    // class weights: weighted mean divides by the weights of the targets
    let w = t(&[2.0, 1.0, 0.5], &[3]);
    close(
        &ce(CrossEntropyOptions {
            weight: Some(w),
            ..Default::default()
        }),
        &[-(2.0 * lp[0][0] + 0.5 * lp[1][2]) / 2.5],
        1e-12,
    );
    // label smoothing 0.1: (1-ε)·nll + ε·mean_c(-logp)
    let eps = 0.1;
    let smooth = |i: usize| -lp[i].iter().sum::<f64>() / 3.0;
    let want = ((1.0 - eps) * -lp[0][0] + eps * smooth(0) + (1.0 - eps) * -lp[1][2] + eps * smooth(1)) / 2.0;
    close(
        &ce(CrossEntropyOptions {
            label_smoothing: eps,
            ..Default::default()
        }),
        &[want],
        1e-12,
    );
    // probability targets
    let p = t(&[0.5, 0.5, 0.0, 0.0, 0.0, 1.0], &[2, 3]);
    let got = loss::cross_entropy(&x, &Target::Probs(p), &Default::default())
        .unwrap()
        .value()
        .to_vec::<f64>()
        .unwrap();
    close(
        &got,
        &[-(0.5 * lp[0][0] + 0.5 * lp[0][1] + lp[1][2]) / 2.0],
        1e-12,
    );
    // nll on log-probs equals cross entropy on logits
    let nll = loss::nll_loss(
        &Var::constant(logits.log_softmax(1).unwrap()),
        &tgt,
        &Default::default(),
    )
    .unwrap();
    close(
        &nll.value().to_vec::<f64>().unwrap(),
        &ce(Default::default()),
        1e-12,
    );
    // a bad target is an error
    let bad = Tensor::from_vec(vec![0i64, 3], [2]).unwrap();
    assert!(loss::cross_entropy(&x, &Target::Indices(bad), &Default::default()).is_err());
}

#[test]
fn regression_losses_match_hand_values() {
    let x = Var::parameter(t(&[0.0, 2.0, -3.0], &[3]));
    let y = t(&[0.5, 0.0, -3.0], &[3]);
    let v = |r: kiln_nn::Result<Var>| r.unwrap().value().to_vec::<f64>().unwrap();
    close(
        &v(loss::mse_loss(&x, &y, Reduction::Mean)),
        &[(0.25 + 4.0) / 3.0],
        1e-12,
    );
    close(&v(loss::l1_loss(&x, &y, Reduction::Sum)), &[2.5], 1e-12);
    // smooth L1 beta 1: |d|=0.5 → 0.125, |d|=2 → 1.5, 0 → 0
    close(
        &v(loss::smooth_l1_loss(&x, &y, 1.0, Reduction::None)),
        &[0.125, 1.5, 0.0],
        1e-12,
    );
    // BCE with logits: x=0,y=1 → ln 2; x=2,y=0 → softplus(2); x=-3,y=1 → softplus(3)
    let yb = t(&[1.0, 0.0, 1.0], &[3]);
    let sp = |z: f64| (1.0 + z.exp()).ln();
    close(
        &v(loss::binary_cross_entropy_with_logits(&x, &yb, Reduction::None)),
        &[2f64.ln(), sp(2.0), sp(3.0)],
        1e-12,
    );
    // KL(p || q) with input = log q
    let p = t(&[0.5, 0.5, 0.0], &[1, 3]);
    let q = [0.25f64, 0.25, 0.5];
    let logq = Var::constant(t(&q.map(f64::ln), &[1, 3]));
    let want = 0.5 * (0.5f64 / 0.25).ln() * 2.0;
    close(&v(loss::kl_div(&logq, &p, Reduction::BatchMean)), &[want], 1e-12);
}
