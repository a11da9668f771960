//! Autograd recording overhead: forward+backward of a 2-layer MLP (batch 64, 784→256→10) through
//! `Var`, against the same math with the backward written by hand in kiln-tensor ops.
//! Goal: recording costs at most 20%.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use kiln_autograd::Var;
use kiln_tensor::ops::binary::CmpOp;
use kiln_tensor::{DType, Device, Tensor, TensorRng};
use std::time::Duration;

struct Mlp {
    x: Tensor,
    y: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

fn setup() -> Mlp {
    let mut r = TensorRng::new(0);
    let randn = |s: &[usize], std: f64, r: &mut TensorRng| {
        Tensor::randn(s.to_vec(), 0.0, std, DType::F32, Device::Cpu, r).unwrap()
    };
    Mlp {
        x: randn(&[64, 784], 1.0, &mut r),
        y: Tensor::from_vec((0..64).map(|i| (i % 10) as i64).collect::<Vec<_>>(), [64]).unwrap(),
        w1: randn(&[784, 256], 0.05, &mut r),
        b1: Tensor::zeros([256], DType::F32, Device::Cpu).unwrap(),
        w2: randn(&[256, 10], 0.05, &mut r),
        b2: Tensor::zeros([10], DType::F32, Device::Cpu).unwrap(),
    }
}

fn with_autograd(m: &Mlp) -> Vec<Tensor> {
    let p: Vec<Var> = [&m.w1, &m.b1, &m.w2, &m.b2]
        .iter()
        .map(|t| Var::parameter((*t).clone()))
        .collect();
    let x = Var::constant(m.x.clone());
    let h = x.matmul(&p[0]).unwrap().add(&p[1]).unwrap().relu().unwrap();
    let loss = h
        .matmul(&p[2])
        .unwrap()
        .add(&p[3])
        .unwrap()
        .log_softmax_nll(&m.y)
        .unwrap();
    let g = loss.backward().unwrap();
    p.iter().map(|v| g.get(v).unwrap().clone()).collect()
}

fn by_hand(m: &Mlp) -> Vec<Tensor> {
    let n = m.x.dims()[0] as f64;
    let h = m.x.matmul(&m.w1).unwrap().add(&m.b1).unwrap();
    let a = h.relu().unwrap();
    let o = a.matmul(&m.w2).unwrap().add(&m.b2).unwrap();
    let lsm = o.log_softmax(1).unwrap();
    let _loss = lsm
        .gather(1, &m.y.unsqueeze(1).unwrap())
        .unwrap()
        .mean_all()
        .unwrap()
        .neg()
        .unwrap();
    let d_o = lsm
        .exp()
        .unwrap()
        .sub(&m.y.one_hot(10).unwrap().to_dtype(DType::F32).unwrap())
        .unwrap()
        .mul_scalar(1.0 / n)
        .unwrap();
    let dw2 = a.t().unwrap().matmul(&d_o).unwrap();
    let db2 = d_o.sum(0, false).unwrap();
    let da = d_o.matmul(&m.w2.t().unwrap()).unwrap();
    let dh = da
        .mul(
            &h.cmp_scalar(0.0, CmpOp::Gt)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
        )
        .unwrap();
    let dw1 = m.x.t().unwrap().matmul(&dh).unwrap();
    let db1 = dh.sum(0, false).unwrap();
    vec![dw1, db1, dw2, db2]
}

fn bench(c: &mut Criterion) {
    let m = setup();
    // Both paths compute the same gradients.
    for (a, b) in with_autograd(&m).iter().zip(by_hand(&m)) {
        let diff = a
            .sub(&b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0, false)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff < 1e-5,
            "autograd and hand-written gradients differ by {diff}"
        );
    }
    let mut g = c.benchmark_group("mlp_784_256_10_b64_fwd_bwd");
    g.sample_size(30).measurement_time(Duration::from_secs(4));
    g.bench_function("tensor_by_hand", |b| b.iter(|| by_hand(&m)));
    g.bench_function("autograd", |b| b.iter(|| with_autograd(&m)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
