//! Every differentiable op against central finite differences (f64), over random shapes, ranks
//! and parameters, including broadcasting and strided (transposed) inputs. Inputs avoid
//! non-differentiable points (|x| >= 0.1 for relu/abs/clamp edges, positive for log/sqrt/pow).

use kiln_autograd::{gradcheck, GradcheckOptions, Result, Var};
use kiln_tensor::{DType, Device, Tensor, TensorRng};
use proptest::prelude::*;

fn opts() -> GradcheckOptions {
    GradcheckOptions {
        eps: 1e-6,
        atol: 1e-6,
        rtol: 1e-4,
        seed: 3,
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
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

/// Values with |x| >= 0.1 (away from kinks at 0).
fn away_from_zero(shape: &[usize], seed: u64) -> Tensor {
    let t = randn(shape, seed);
    let sign = t
        .cmp_scalar(0.0, kiln_tensor::ops::binary::CmpOp::Ge)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .affine(2.0, -1.0)
        .unwrap();
    t.abs().unwrap().add_scalar(0.1).unwrap().mul(&sign).unwrap()
}

fn positive(shape: &[usize], seed: u64) -> Tensor {
    randn(shape, seed).abs().unwrap().add_scalar(0.5).unwrap()
}

fn shape_strategy(max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..4, 0..=max_rank)
}

fn check(f: impl Fn(&[Var]) -> Result<Var>, inputs: &[Tensor]) -> std::result::Result<(), TestCaseError> {
    gradcheck(f, inputs, opts())
        .map(|_| ())
        .map_err(|e| TestCaseError::fail(e.to_string()))
}

fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec((1usize..4, any::<bool>(), any::<bool>()), 0..4).prop_flat_map(|dims| {
        let a: Vec<usize> = dims.iter().map(|&(d, one, _)| if one { 1 } else { d }).collect();
        let b: Vec<usize> = dims.iter().map(|&(d, _, one)| if one { 1 } else { d }).collect();
        (0..=a.len(), Just(a), Just(b)).prop_map(|(drop, a, b)| (a[drop..].to_vec(), b))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn unary_smooth(shape in shape_strategy(3), seed in 0u64..10_000, op in 0usize..13) {
        let x = randn(&shape, seed);
        check(|v| {
            let x = &v[0];
            match op {
                0 => x.exp(), 1 => x.sin(), 2 => x.cos(), 3 => x.tanh(), 4 => x.sigmoid(),
                5 => x.gelu(), 6 => x.gelu_tanh(), 7 => x.silu(), 8 => x.sqr(),
                9 => x.affine(-1.5, 0.25), 10 => x.neg(), 11 => x.erf(), _ => x.mul_scalar(3.0)?.add_scalar(1.0),
            }
        }, &[x])?;
    }

    #[test]
    fn unary_positive_domain(shape in shape_strategy(3), seed in 0u64..10_000, op in 0usize..5, p in -2.0f64..3.0) {
        let x = positive(&shape, seed);
        check(|v| {
            let x = &v[0];
            match op { 0 => x.log(), 1 => x.sqrt(), 2 => x.rsqrt(), 3 => x.recip(), _ => x.powf(p) }
        }, &[x])?;
    }

    #[test]
    fn unary_kinked(shape in shape_strategy(3), seed in 0u64..10_000, op in 0usize..3) {
        let x = away_from_zero(&shape, seed);
        check(|v| match op {
            0 => v[0].relu(), 1 => v[0].abs(),
            // bounds at ±0.05 never touch inputs (|x| >= 0.1)
            _ => v[0].clamp(-0.05, 0.05)?.add(&v[0].clamp(-10.0, 0.05)?),
        }, &[x])?;
    }

    #[test]
    fn binary_broadcasting((sa, sb) in broadcast_pair(), seed in 0u64..10_000, op in 0usize..7) {
        let a = if op == 4 { positive(&sa, seed) } else { randn(&sa, seed) };
        let b = match op { 3 => positive(&sb, seed + 1), _ => randn(&sb, seed + 1) };
        check(|v| {
            let (a, b) = (&v[0], &v[1]);
            match op {
                0 => a.add(b), 1 => a.sub(b), 2 => a.mul(b), 3 => a.div(b), 4 => a.pow(b),
                5 => a.maximum(b), _ => a.minimum(b),
            }
        }, &[a, b])?;
    }

    #[test]
    fn where_and_masked_fill((sa, sb) in broadcast_pair(), seed in 0u64..10_000) {
        let (a, b) = (randn(&sa, seed), randn(&sb, seed + 1));
        let shape = kiln_tensor::Shape::new(sa.clone()).broadcast_with(&kiln_tensor::Shape::new(sb.clone()), "t").unwrap();
        let mask = randn(shape.dims(), seed + 2).cmp_scalar(0.0, kiln_tensor::ops::binary::CmpOp::Gt).unwrap();
        let mask_a = randn(&sa, seed + 3).cmp_scalar(0.0, kiln_tensor::ops::binary::CmpOp::Gt).unwrap();
        check(|v| Var::where_cond(&mask, &v[0], &v[1])?.add(&v[0].masked_fill(&mask_a, 2.0)?), &[a, b])?;
    }

    #[test]
    fn reductions(shape in prop::collection::vec(1usize..4, 1..4), seed in 0u64..10_000, op in 0usize..7, keep in any::<bool>(), pick in any::<u8>()) {
        let x = randn(&shape, seed);
        let rank = shape.len();
        let d0 = pick as usize % rank;
        let dims: Vec<usize> = if pick % 3 == 0 && rank > 1 { vec![0, rank - 1] } else { vec![d0] };
        check(|v| {
            let x = &v[0];
            match op {
                0 => x.sum(dims.clone(), keep), 1 => x.mean(dims.clone(), keep), 2 => x.max(dims.clone(), keep),
                3 => x.min(dims.clone(), keep), 4 => x.logsumexp(dims.clone(), keep),
                5 => if dims.iter().map(|&d| shape[d]).product::<usize>() > 1 { x.var(dims.clone(), 1, keep) } else { x.var(dims.clone(), 0, keep) },
                _ => x.sum_all(),
            }
        }, &[x])?;
    }

    #[test]
    fn softmax_family(shape in prop::collection::vec(1usize..5, 1..4), seed in 0u64..10_000, pick in any::<u8>(), log in any::<bool>()) {
        let x = randn(&shape, seed).mul_scalar(2.0).unwrap();
        let d = pick as usize % shape.len();
        check(|v| if log { v[0].log_softmax(d) } else { v[0].softmax(d) }, &[x])?;
    }

    #[test]
    fn matmul_all_forms(m in 1usize..5, k in 1usize..5, n in 1usize..5, form in 0usize..6, ta in any::<bool>(), seed in 0u64..10_000) {
        let (sa, sb): (Vec<usize>, Vec<usize>) = match form {
            0 => (vec![k], vec![k]),            // dot
            1 => (vec![m, k], vec![k, n]),      // mm
            2 => (vec![k], vec![k, n]),         // vec @ mat
            3 => (vec![m, k], vec![k]),         // mat @ vec
            4 => (vec![2, m, k], vec![k, n]),   // batch @ mat (broadcast)
            _ => (vec![2, 1, m, k], vec![3, k, n]), // broadcast batch dims
        };
        // Transposed (strided) storage for the left operand when it is a matrix.
        let a = if ta && sa.len() >= 2 {
            let mut rev = sa.clone();
            let r = rev.len();
            rev.swap(r - 1, r - 2);
            randn(&rev, seed).transpose(-1, -2).unwrap()
        } else { randn(&sa, seed) };
        let b = randn(&sb, seed + 1);
        check(|v| v[0].matmul(&v[1]), &[a, b])?;
    }

    #[test]
    fn matmul_bias_with_a_transposed_weight(m in 1usize..5, k in 1usize..5, n in 1usize..5, seed in 0u64..10_000) {
        let (x, w, b) = (randn(&[m, k], seed), randn(&[n, k], seed + 1), randn(&[n], seed + 2));
        check(|v| v[0].matmul_bias(&v[1].t()?, &v[2]), &[x, w, b])?;
    }

    #[test]
    fn shape_ops(d0 in 1usize..4, d1 in 1usize..4, d2 in 1usize..4, seed in 0u64..10_000, op in 0usize..12) {
        let x = randn(&[d0, d1, d2], seed);
        let y = randn(&[d0, d1, d2], seed + 1);
        check(|v| {
            let (x, y) = (&v[0], &v[1]);
            match op {
                0 => x.reshape([d2, d0 * d1])?.mul(&y.reshape([d2, d0 * d1])?),
                1 => x.permute(&[2, 0, 1])?.exp()?.contiguous(),
                2 => x.transpose(0, 2)?.reshape([d2 * d1 * d0]),
                3 => x.unsqueeze(1)?.squeeze(1)?.mul(y)?.unsqueeze(0)?.squeeze_all(),
                4 => x.narrow(2, d2 - 1, 1)?.sqr(),
                5 => x.flatten(0, 1)?.sin(),
                6 => x.narrow(0, 0, 1)?.broadcast_to([2, d0, d1, d2])?.mul(&y.unsqueeze(0)?),
                7 => Var::cat(&[x.clone(), y.sqr()?], 1),
                8 => Var::stack(&[x.clone(), y.clone(), x.mul(y)?], 0),
                9 => { let p = x.split(2, 2)?; Var::cat(&p.iter().rev().cloned().collect::<Vec<_>>(), 2) }
                10 => { let c = x.chunk(2, 0)?; c[0].sum_all()?.mul(&c.last().unwrap().sum_all()?) }
                _ => x.t()?.slice(1, 0..1)?.exp(),
            }
        }, &[x, y])?;
    }

    #[test]
    fn fused_layer_norm(rows in 1usize..4, d in 2usize..6, seed in 0u64..10_000) {
        let x = randn(&[rows, d], seed);
        let w = randn(&[d], seed + 1);
        let b = randn(&[d], seed + 2);
        check(|v| v[0].layer_norm(&v[1], &v[2], 1e-5), &[x, w, b])?;
    }

    #[test]
    fn fused_batch_norm(n in 2usize..4, c in 1usize..4, rest in prop::collection::vec(1usize..4, 0..3),
                        affine in any::<bool>(), seed in 0u64..10_000) {
        let mut dims = vec![n, c];
        dims.extend(&rest);
        let x = randn(&dims, seed).mul_scalar(2.0).unwrap().add_scalar(1.5).unwrap();
        let w = randn(&[c], seed + 1);
        let b = randn(&[c], seed + 2);
        if affine {
            check(|v| Ok(v[0].batch_norm_train(Some((&v[1], &v[2])), 1e-5)?.0), &[x.clone(), w, b])?;
        } else {
            check(|v| Ok(v[0].batch_norm_train(None, 1e-5)?.0), std::slice::from_ref(&x))?;
        }
        // Fused equals the composed definition: (x - mean) / sqrt(biased var + eps).
        let axes: Vec<usize> = (0..dims.len()).filter(|&d| d != 1).collect();
        let mean = x.mean(axes.clone(), true).unwrap();
        let var = x.var(axes, 0, true).unwrap();
        let composed = x.sub(&mean).unwrap().mul(&var.add_scalar(1e-5).unwrap().rsqrt().unwrap()).unwrap();
        let fused = Var::constant(x.clone()).batch_norm_train(None, 1e-5).unwrap().0.value().clone();
        for (a, b) in fused.to_vec::<f64>().unwrap().iter().zip(composed.to_vec::<f64>().unwrap()) {
            prop_assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }

    #[test]
    fn fused_log_softmax_nll(n in 1usize..5, c in 2usize..6, seed in 0u64..10_000) {
        let x = randn(&[n, c], seed);
        let mut r = TensorRng::new(seed);
        let t = Tensor::from_vec((0..n).map(|_| r.next_below(c as u64) as i64).collect::<Vec<_>>(), [n]).unwrap();
        check(|v| v[0].log_softmax_nll(&t), std::slice::from_ref(&x))?;
        // Fused equals the composed definition.
        let fused = Var::constant(x.clone()).log_softmax_nll(&t).unwrap().value().to_scalar::<f64>().unwrap();
        let lsm = x.log_softmax(1).unwrap().to_vec2::<f64>().unwrap();
        let ti = t.to_vec::<i64>().unwrap();
        let composed = -(0..n).map(|i| lsm[i][ti[i] as usize]).sum::<f64>() / n as f64;
        prop_assert!((fused - composed).abs() < 1e-12);
    }

    #[test]
    fn indexing(rows in 1usize..5, cols in 1usize..4, k in 1usize..6, seed in 0u64..10_000, op in 0usize..5) {
        let mut r = TensorRng::new(seed);
        let x = randn(&[rows, cols], seed);
        let idx = Tensor::from_vec((0..k).map(|_| r.next_below(rows as u64) as i64).collect::<Vec<_>>(), [k]).unwrap();
        let gidx = Tensor::from_vec((0..rows * cols).map(|_| r.next_below(cols as u64) as i64).collect::<Vec<_>>(), [rows, cols]).unwrap();
        let src_rows = randn(&[k, cols], seed + 1);
        let src_full = randn(&[rows, cols], seed + 2);
        check(|v| match op {
            0 => v[0].index_select(0, &idx),
            1 => v[0].gather(1, &gidx),
            2 => v[0].scatter_add(1, &gidx, &v[2]),
            3 => v[0].index_add(0, &idx, &v[1]),
            _ => Var::embedding(&idx.reshape([1, k]).unwrap(), &v[0]),
        }, &[x, src_rows, src_full])?;
    }

    #[test]
    fn conv2d_with_stride_padding_dilation_groups(n in 1usize..3, g in 1usize..3, cpg in 1usize..3, opg in 1usize..3,
            h in 3usize..6, w in 3usize..6, k in 1usize..3, s in 1usize..3, pad in 0usize..2, dil in 1usize..3,
            bias in any::<bool>(), seed in 0u64..10_000) {
        let (c, o) = (g * cpg, g * opg);
        prop_assume!(dil * (k - 1) < h + 2 * pad && dil * (k - 1) < w + 2 * pad);
        let p = kiln_tensor::ops::conv::Conv2dParams { stride: (s, s), padding: (pad, pad), dilation: (dil, dil), groups: g };
        let x = randn(&[n, c, h, w], seed);
        let wt = randn(&[o, cpg, k, k], seed + 1);
        let b = randn(&[o], seed + 2);
        check(|v| v[0].conv2d(&v[1], bias.then_some(&v[2]), p), &[x, wt, b])?;
    }

    #[test]
    fn conv1d_and_transposed(n in 1usize..3, c in 1usize..3, o in 1usize..3, l in 3usize..6, k in 1usize..3,
            s in 1usize..3, pad in 0usize..2, seed in 0u64..10_000) {
        let p1 = kiln_tensor::ops::conv::ConvParams { stride: s, padding: pad, dilation: 1, groups: 1 };
        let x = randn(&[n, c, l], seed);
        let w1 = randn(&[o, c, k], seed + 1);
        check(|v| v[0].conv1d(&v[1], None, p1), &[x, w1])?;
        prop_assume!(pad < k);
        let pt = kiln_tensor::ops::conv::ConvTranspose2dParams { stride: (s, s), padding: (pad, pad), output_padding: (0, 0), dilation: (1, 1), groups: 1 };
        let xt = randn(&[n, c, l, l - 1], seed + 2);
        let wt = randn(&[c, o, k, k], seed + 3);
        let bt = randn(&[o], seed + 4);
        check(|v| v[0].conv_transpose2d(&v[1], Some(&v[2]), pt), &[xt, wt, bt])?;
    }

    #[test]
    fn pooling_and_upsampling(n in 1usize..3, c in 1usize..3, h in 2usize..7, w in 2usize..7, k in 1usize..3,
            s in 1usize..3, seed in 0u64..10_000, op in 0usize..4) {
        prop_assume!(k <= h && k <= w);
        let x = randn(&[n, c, h, w], seed);
        check(|v| match op {
            0 => v[0].max_pool2d((k, k), (s, s), (0, 0)),
            1 => v[0].avg_pool2d((k, k), (s, s), (k / 2, k / 2), s == 1),
            2 => v[0].adaptive_avg_pool2d((h.div_ceil(2), 2)),
            _ => v[0].upsample_nearest2d((2 * h, w + 1)),
        }, &[x])?;
    }
}
