//! Property tests of kiln-tensor against plain reference definitions.

use kiln_tensor::{DType, Device, Tensor, TensorRng};
use proptest::prelude::*;

fn rand_t(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(
        shape.to_vec(),
        0.0,
        1.0,
        DType::F64,
        Device::Cpu,
        &mut TensorRng::new(seed),
    )
    .unwrap()
}

/// Row-major multi-index of a flat position.
fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        idx[d] = i % dims[d];
        i /= dims[d];
    }
    idx
}

/// NumPy's rule, written out: a source element is found by right-aligning and clamping size-1 dims.
fn numpy_broadcast_get(vals: &[f64], src: &[usize], out_idx: &[usize]) -> f64 {
    let lead = out_idx.len() - src.len();
    let mut flat = 0;
    for (d, &s) in src.iter().enumerate() {
        let i = if s == 1 { 0 } else { out_idx[lead + d] };
        flat = flat * s + i;
    }
    vals[flat]
}

fn broadcastable_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec((1usize..4, any::<bool>(), any::<bool>()), 0..4).prop_flat_map(|dims| {
        let out: Vec<usize> = dims.iter().map(|d| d.0).collect();
        let a: Vec<usize> = dims.iter().map(|&(d, one, _)| if one { 1 } else { d }).collect();
        let b: Vec<usize> = dims.iter().map(|&(d, _, one)| if one { 1 } else { d }).collect();
        let _ = out;
        (0..=a.len(), Just(a), Just(b)).prop_map(|(drop, a, b)| (a[drop..].to_vec(), b))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn broadcasting_follows_numpy((sa, sb) in broadcastable_pair(), seed in 0u64..1000) {
        let (a, b) = (rand_t(&sa, seed), rand_t(&sb, seed + 1));
        let c = a.sub(&b).unwrap();
        let (va, vb, vc) = (a.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap(), c.to_vec::<f64>().unwrap());
        for (i, &got) in vc.iter().enumerate() {
            let idx = unravel(i, c.dims());
            let want = numpy_broadcast_get(&va, &sa, &idx) - numpy_broadcast_get(&vb, &sb, &idx);
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn matmul_equals_triple_loop(m in 1usize..9, k in 1usize..9, n in 1usize..9, batch in 1usize..3,
                                 ta in any::<bool>(), tb in any::<bool>(), seed in 0u64..1000) {
        // Optionally build the operands as transposed views to exercise strided GEMM.
        let a = if ta { rand_t(&[batch, k, m], seed).transpose(1, 2).unwrap() } else { rand_t(&[batch, m, k], seed) };
        let b = if tb { rand_t(&[n, k], seed + 1).t().unwrap() } else { rand_t(&[k, n], seed + 1) };
        let c = a.matmul(&b).unwrap();
        prop_assert_eq!(c.dims(), &[batch, m, n]);
        let (va, vb, vc) = (a.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap(), c.to_vec::<f64>().unwrap());
        for bi in 0..batch { for i in 0..m { for j in 0..n {
            let want: f64 = (0..k).map(|p| va[bi * m * k + i * k + p] * vb[p * n + j]).sum();
            prop_assert!((vc[bi * m * n + i * n + j] - want).abs() < 1e-12);
        }}}
        // f32 goes through the same kernel
        let c32 = a.to_dtype(DType::F32).unwrap().matmul(&b.to_dtype(DType::F32).unwrap()).unwrap();
        for (x, y) in c32.to_vec::<f32>().unwrap().iter().zip(&vc) { prop_assert!((*x as f64 - y).abs() < 1e-4); }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_shift_invariant(rows in 1usize..5, cols in 1usize..9, shift in -50.0f64..50.0, seed in 0u64..1000) {
        let x = rand_t(&[rows, cols], seed).mul_scalar(5.0).unwrap();
        let s = x.softmax(-1).unwrap();
        for r in s.sum(-1, false).unwrap().to_vec::<f64>().unwrap() { prop_assert!((r - 1.0).abs() < 1e-12); }
        let s2 = x.add_scalar(shift).unwrap().softmax(-1).unwrap();
        for (a, b) in s.to_vec::<f64>().unwrap().iter().zip(s2.to_vec::<f64>().unwrap()) { prop_assert!((a - b).abs() < 1e-12); }
        let ls = x.log_softmax(0).unwrap().exp().unwrap();
        for r in ls.sum(0, false).unwrap().to_vec::<f64>().unwrap() { prop_assert!((r - 1.0).abs() < 1e-12); }
    }

    #[test]
    fn reshape_permute_cat_split_round_trip(d0 in 1usize..5, d1 in 1usize..5, d2 in 1usize..5, seed in 0u64..1000) {
        let x = rand_t(&[d0, d1, d2], seed);
        let v = x.to_vec::<f64>().unwrap();
        prop_assert_eq!(x.reshape([d2, d0 * d1]).unwrap().reshape([d0, d1, d2]).unwrap().to_vec::<f64>().unwrap(), v.clone());
        let p = x.permute(&[2, 0, 1]).unwrap();
        prop_assert_eq!(p.permute(&[1, 2, 0]).unwrap().to_vec::<f64>().unwrap(), v.clone());
        // reshape of a permuted (non-contiguous) view equals reshape of its contiguous copy
        prop_assert_eq!(p.reshape([d2 * d0 * d1]).unwrap().to_vec::<f64>().unwrap(),
                        p.contiguous().unwrap().reshape([d2 * d0 * d1]).unwrap().to_vec::<f64>().unwrap());
        for dim in 0..3 {
            let parts = x.split(2, dim).unwrap();
            prop_assert_eq!(Tensor::cat(&parts, dim).unwrap().to_vec::<f64>().unwrap(), v.clone());
            let chunks = x.chunk(2, dim).unwrap();
            prop_assert_eq!(Tensor::cat(&chunks, dim).unwrap().to_vec::<f64>().unwrap(), v.clone());
        }
        let st = Tensor::stack(&[x.clone(), x.clone()], 1).unwrap();
        prop_assert_eq!(st.narrow(1, 1, 1).unwrap().squeeze(1).unwrap().to_vec::<f64>().unwrap(), v);
    }

    #[test]
    fn bf16_and_f16_round_trip_within_precision(vals in prop::collection::vec(-1e4f32..1e4, 1..64)) {
        let t = Tensor::from_vec(vals.clone(), [vals.len()]).unwrap();
        let bf = t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
        let hf = t.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
        for ((x, b), h) in vals.iter().zip(bf).zip(hf) {
            // bf16 keeps 8 significant bits (relative error <= 2^-8 after rounding), f16 11 bits.
            prop_assert!((x - b).abs() <= x.abs() * 2f32.powi(-8) + 1e-30, "bf16 {x} -> {b}");
            prop_assert!((x - h).abs() <= x.abs() * 2f32.powi(-11) + 2f32.powi(-24), "f16 {x} -> {h}");
        }
    }
}
