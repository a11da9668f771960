//! The autograd API: leaves, no_grad, accumulation, detach and the errors for misuse.

use kiln_autograd::{in_pool, is_grad_enabled, no_grad, Error, Var};
use kiln_tensor::{DType, Tensor};

fn t(v: &[f32]) -> Tensor {
    Tensor::from_slice(v, [v.len()]).unwrap()
}

#[test]
fn hand_checked_gradients() {
    // f = sum(w * x + w²) → df/dw = x + 2w
    let w = Var::parameter(t(&[1.0, -2.0]));
    let x = Var::constant(t(&[3.0, 5.0]));
    let f = w
        .mul(&x)
        .unwrap()
        .add(&w.sqr().unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = f.backward().unwrap();
    assert_eq!(g.get(&w).unwrap().to_vec::<f32>().unwrap(), vec![5.0, 1.0]);
    assert!(g.get(&x).is_none(), "constants get no gradient");
    assert!(matches!(g.require(&x), Err(Error::NotRequiringGrad { .. })));
}

#[test]
fn backward_on_non_scalar_needs_a_seed() {
    let w = Var::parameter(t(&[1.0, 2.0]));
    let y = w.mul_scalar(3.0).unwrap();
    let e = y.backward().err().unwrap();
    assert!(matches!(e, Error::NonScalarLoss(_)));
    assert!(e.to_string().contains("[2]"), "{e}");
    let g = y.backward_with(&t(&[1.0, 10.0])).unwrap();
    assert_eq!(g.get(&w).unwrap().to_vec::<f32>().unwrap(), vec![3.0, 30.0]);
    assert!(matches!(
        y.backward_with(&t(&[1.0])),
        Err(Error::SeedMismatch { .. })
    ));
}

#[test]
fn backward_without_graph_and_dtype_mismatch_are_errors() {
    let c = Var::constant(t(&[1.0]));
    assert!(matches!(c.sum_all().unwrap().backward(), Err(Error::NoGraph)));
    let w = Var::parameter(t(&[1.0]));
    let d = Var::constant(Tensor::from_vec(vec![1.0f64], [1]).unwrap());
    let e = w.add(&d).err().unwrap();
    assert!(e.to_string().contains("dtype"), "{e}");
}

#[test]
fn no_grad_records_nothing_and_restores() {
    let w = Var::parameter(t(&[1.0, 2.0]));
    {
        let _g = no_grad();
        let y = w.exp().unwrap();
        assert!(!y.requires_grad() && y.is_leaf());
    }
    let y = w.exp().unwrap();
    assert!(y.requires_grad() && !y.is_leaf());
    assert_eq!(y.op_name(), Some("exp"));
    assert!(!y.detach().requires_grad());
}

#[test]
fn a_step_run_in_the_pool_keeps_the_callers_modes_and_gives_the_same_bits() {
    let w = Var::parameter(
        Tensor::from_vec(
            (0..96).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(),
            [12, 8],
        )
        .unwrap(),
    );
    let x = Var::constant(
        Tensor::from_vec(
            (0..80).map(|i| (i as f32 * 0.11).cos()).collect::<Vec<_>>(),
            [10, 8],
        )
        .unwrap(),
    );
    let step = || {
        let loss = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .tanh()
            .unwrap()
            .sum_all()
            .unwrap();
        let g = loss.backward().unwrap();
        g.get(&w).unwrap().to_vec::<f32>().unwrap()
    };
    let outside = step();
    assert_eq!(in_pool(step), outside);
    {
        let _g = no_grad();
        let (recording, records) = in_pool(|| (is_grad_enabled(), w.exp().unwrap().requires_grad()));
        assert!(!recording && !records, "no_grad carried into the pool thread");
    }
    {
        let _p = kiln_tensor::set_matmul_precision(kiln_tensor::MatmulPrecision::Bf16);
        assert_eq!(
            in_pool(kiln_tensor::matmul_precision),
            kiln_tensor::MatmulPrecision::Bf16
        );
    }
    assert!(in_pool(is_grad_enabled));
}

#[test]
fn gradients_accumulate_across_backward_passes() {
    let w = Var::parameter(t(&[1.0, 2.0]));
    let mut acc = w.sum_all().unwrap().backward().unwrap();
    acc.accumulate(w.mul_scalar(2.0).unwrap().sum_all().unwrap().backward().unwrap())
        .unwrap();
    assert_eq!(acc.get(&w).unwrap().to_vec::<f32>().unwrap(), vec![3.0, 3.0]);
    acc.scale(0.5).unwrap();
    assert_eq!(acc.get(&w).unwrap().to_vec::<f32>().unwrap(), vec![1.5, 1.5]);
}

#[test]
fn shared_subexpressions_sum_their_gradients() {
    // y = x * x used twice: f = y + y → df/dx = 4x
    let x = Var::parameter(t(&[3.0]));
    let y = x.mul(&x).unwrap();
    let f = y.add(&y).unwrap().sum_all().unwrap();
    assert_eq!(
        f.backward().unwrap().get(&x).unwrap().to_vec::<f32>().unwrap(),
        vec![12.0]
    );
}

#[test]
fn half_precision_gradients_flow_through_casts() {
    let w = Var::parameter(t(&[0.5, 1.5]));
    let f = w
        .to_dtype(DType::BF16)
        .unwrap()
        .sqr()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(
        f.backward().unwrap().get(&w).unwrap().to_vec::<f32>().unwrap(),
        vec![1.0, 3.0]
    );
}

#[test]
fn deep_chain_backward_and_drop_do_not_overflow_the_stack() {
    let x = Var::parameter(Tensor::from_vec(vec![1.0f64], [1]).unwrap());
    let mut y = x.clone();
    for _ in 0..100_000 {
        y = y.mul_scalar(1.0).unwrap();
    }
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec::<f64>().unwrap(), vec![1.0]);
    drop(y);
}

/// `backward_streaming` hands each leaf's complete gradient over once, the last layer's first,
/// and returns what `backward` does.
#[test]
fn streaming_backward_hands_over_each_complete_gradient_last_layer_first() {
    // f = sum(w2 · tanh(w1 · x) + w1) : w1 is used twice (its gradient sums two paths).
    let x = Var::constant(t(&[0.5, -1.0]));
    let w1 = Var::parameter(t(&[1.0, 2.0]));
    let w2 = Var::parameter(t(&[-3.0, 0.25]));
    let h = w1.mul(&x).unwrap().tanh().unwrap();
    let f = w2.mul(&h).unwrap().add(&w1).unwrap().sum_all().unwrap();
    let mut seen: Vec<(u64, Vec<f32>)> = Vec::new();
    let g = f
        .backward_streaming(&f.value().ones_like().unwrap(), &mut |leaf, grad| {
            seen.push((leaf.id(), grad.to_vec::<f32>().unwrap()));
            Ok(())
        })
        .unwrap();
    let plain = f.backward().unwrap();
    assert_eq!(seen.len(), 2, "each leaf once; constants never");
    assert_eq!(seen[0].0, w2.id(), "the output side completes first");
    for (id, grad) in &seen {
        let leaf = if *id == w1.id() { &w1 } else { &w2 };
        assert_eq!(grad, &plain.get(leaf).unwrap().to_vec::<f32>().unwrap());
        assert_eq!(grad, &g.get(leaf).unwrap().to_vec::<f32>().unwrap());
    }
    // An error from the hook ends the pass.
    let e = f.backward_streaming(&f.value().ones_like().unwrap(), &mut |_, _| Err(Error::NoGraph));
    assert!(e.is_err());
}
