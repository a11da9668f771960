//! The device conformance suite: every op with a device kernel runs on each available device
//! and must agree with the CPU (the reference backend) within a tolerance set by the dtype.
//! On a machine without a usable GPU the device half is skipped, saying why; the device errors
//! a user can hit are checked everywhere.

use kiln_tensor::ops::binary::CmpOp;
use kiln_tensor::ops::unary::UnaryOp;
use kiln_tensor::{DType, Device, Error, Result, Tensor, TensorRng};

/// The devices other than the CPU that this machine can run, with a note for each one it cannot.
fn devices() -> Vec<Device> {
    match Device::Cuda(0).ensure_available() {
        Ok(()) => vec![Device::Cuda(0)],
        Err(e) => {
            eprintln!("device conformance skipped for cuda:0: {e}");
            vec![]
        }
    }
}

/// Allowed difference for a dtype, relative to the larger magnitude (absolute near zero).
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        DType::F32 => 2e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
        _ => 0.0,
    }
}

fn assert_close(what: &str, cpu: &Tensor, dev: &Tensor) {
    assert_ne!(dev.device(), Device::Cpu, "{what}: result left the device");
    assert_eq!(cpu.dims(), dev.dims(), "{what}: shape");
    assert_eq!(cpu.dtype(), dev.dtype(), "{what}: dtype");
    let tol = tolerance(cpu.dtype());
    let (a, b) = (cpu.to_f64_vec(), dev.to_f64_vec());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let same =
            (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= tol * x.abs().max(y.abs()).max(1.0);
        assert!(
            same,
            "{what}: element {i}: cpu {x} vs device {y} (tolerance {tol})"
        );
    }
}

/// Run `op` on CPU inputs and on their copies on `device`, and compare.
fn check(device: Device, what: &str, inputs: Vec<Tensor>, op: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let cpu = op(&inputs).unwrap_or_else(|e| panic!("{what} on cpu: {e}"));
    let moved: Vec<Tensor> = inputs.iter().map(|t| t.to_device(device).unwrap()).collect();
    let dev = op(&moved).unwrap_or_else(|e| panic!("{what} on {device}: {e}"));
    assert_close(&format!("{what} on {device}"), &cpu, &dev);
}

fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.5, dtype, Device::Cpu, &mut TensorRng::new(seed)).unwrap()
}

fn ints(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::rand_uniform(
        shape,
        0.0,
        50.0,
        DType::F64,
        Device::Cpu,
        &mut TensorRng::new(seed),
    )
    .unwrap()
    .to_dtype(dtype)
    .unwrap()
}

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];
const ALL: [DType; 7] = DType::ALL;

fn sample(dtype: DType, shape: &[usize], seed: u64) -> Tensor {
    if dtype.is_float() {
        randn(shape, dtype, seed)
    } else {
        ints(shape, dtype, seed)
    }
}

#[test]
fn element_wise_ops_match_the_cpu_on_every_device() {
    for device in devices() {
        for dtype in FLOATS {
            let x = randn(&[7, 33], dtype, 1);
            let pos = x.abs().unwrap().add_scalar(0.1).unwrap();
            for op in [
                UnaryOp::Exp,
                UnaryOp::Sin,
                UnaryOp::Cos,
                UnaryOp::Tanh,
                UnaryOp::Sigmoid,
                UnaryOp::Relu,
                UnaryOp::Erf,
                UnaryOp::Gelu,
                UnaryOp::GeluTanh,
                UnaryOp::Silu,
                UnaryOp::Sqr,
                UnaryOp::Affine { mul: 1.5, add: -0.25 },
                UnaryOp::Clamp { lo: -0.5, hi: 0.75 },
            ] {
                check(device, &format!("{op:?} {dtype:?}"), vec![x.clone()], |t| {
                    t[0].unary(op)
                });
            }
            for op in [
                UnaryOp::Log,
                UnaryOp::Sqrt,
                UnaryOp::Rsqrt,
                UnaryOp::Recip,
                UnaryOp::Powf(1.7),
            ] {
                check(device, &format!("{op:?} {dtype:?}"), vec![pos.clone()], |t| {
                    t[0].unary(op)
                });
            }
            // A transposed view: the kernels read strided input.
            check(device, "exp of a transposed view", vec![x.clone()], |t| {
                t[0].t()?.exp()
            });
        }
        for dtype in ALL {
            let x = sample(dtype, &[5, 6], 2);
            check(device, &format!("neg {dtype:?}"), vec![x.clone()], |t| t[0].neg());
            check(device, &format!("abs {dtype:?}"), vec![x.clone()], |t| t[0].abs());
            check(device, &format!("affine {dtype:?}"), vec![x.clone()], |t| {
                t[0].affine(2.0, 3.0)
            });
            check(device, &format!("clamp {dtype:?}"), vec![x.clone()], |t| {
                t[0].clamp(1.0, 20.0)
            });
            check(device, &format!("cmp_scalar {dtype:?}"), vec![x.clone()], |t| {
                t[0].cmp_scalar(3.0, CmpOp::Gt)
            });
            check(device, &format!("contiguous {dtype:?}"), vec![x.clone()], |t| {
                t[0].t()?.contiguous()
            });
            for to in ALL {
                check(
                    device,
                    &format!("cast {dtype:?} -> {to:?}"),
                    vec![x.clone()],
                    |t| t[0].to_dtype(to),
                );
            }
        }
    }
}

#[test]
fn binary_ops_compare_and_where_broadcast_like_the_cpu() {
    for device in devices() {
        for dtype in ALL {
            let a = sample(dtype, &[4, 1, 6], 3);
            let b = sample(dtype, &[5, 6], 4).add_scalar(1.0).unwrap();
            check(
                device,
                &format!("add {dtype:?}"),
                vec![a.clone(), b.clone()],
                |t| t[0].add(&t[1]),
            );
            check(
                device,
                &format!("sub {dtype:?}"),
                vec![a.clone(), b.clone()],
                |t| t[0].sub(&t[1]),
            );
            check(
                device,
                &format!("mul {dtype:?}"),
                vec![a.clone(), b.clone()],
                |t| t[0].mul(&t[1]),
            );
            check(
                device,
                &format!("div {dtype:?}"),
                vec![a.clone(), b.clone()],
                |t| t[0].div(&t[1]),
            );
            check(
                device,
                &format!("maximum {dtype:?}"),
                vec![a.clone(), b.clone()],
                |t| t[0].maximum(&t[1]),
            );
            check(
                device,
                &format!("minimum {dtype:?}"),
                vec![a.clone(), b.clone()],
                |t| t[0].minimum(&t[1]),
            );
            for op in [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
                check(
                    device,
                    &format!("{op:?} {dtype:?}"),
                    vec![a.clone(), b.clone()],
                    |t| t[0].cmp(&t[1], op),
                );
            }
            let mask = sample(DType::F32, &[4, 5, 1], 5);
            check(
                device,
                &format!("where {dtype:?}"),
                vec![mask, a.clone(), b.clone()],
                |t| t[0].gt(&t[0].zeros_like()?)?.where_cond(&t[1], &t[2]),
            );
        }
        let a = randn(&[3, 4], DType::F32, 6).abs().unwrap();
        check(device, "pow", vec![a.clone(), randn(&[4], DType::F32, 7)], |t| {
            t[0].pow(&t[1])
        });
        check(
            device,
            "relu_backward",
            vec![a, randn(&[3, 4], DType::F32, 8)],
            |t| t[1].relu_backward(&t[0]),
        );
    }
}

#[test]
fn reductions_and_softmax_match_the_cpu() {
    for device in devices() {
        for dtype in ALL {
            let x = sample(dtype, &[3, 70, 5], 9);
            for dims in [vec![0usize], vec![1], vec![2], vec![0, 2], vec![0, 1, 2]] {
                check(device, &format!("sum {dims:?} {dtype:?}"), vec![x.clone()], |t| {
                    t[0].sum(dims.as_slice(), false)
                });
                check(device, &format!("max {dims:?} {dtype:?}"), vec![x.clone()], |t| {
                    t[0].max(dims.as_slice(), true)
                });
                check(device, &format!("min {dims:?} {dtype:?}"), vec![x.clone()], |t| {
                    t[0].min(dims.as_slice(), false)
                });
            }
            check(device, &format!("argmax {dtype:?}"), vec![x.clone()], |t| {
                t[0].argmax(1, false)
            });
            check(device, &format!("argmin {dtype:?}"), vec![x.clone()], |t| {
                t[0].argmin(2, true)
            });
        }
        for dtype in FLOATS {
            let x = randn(&[4, 300], dtype, 10);
            check(device, &format!("mean {dtype:?}"), vec![x.clone()], |t| {
                t[0].mean(1usize, false)
            });
            check(device, &format!("softmax {dtype:?}"), vec![x.clone()], |t| {
                t[0].softmax(-1)
            });
            check(device, &format!("log_softmax {dtype:?}"), vec![x.clone()], |t| {
                t[0].log_softmax(-1)
            });
            check(
                device,
                &format!("softmax dim 0 {dtype:?}"),
                vec![x.clone()],
                |t| t[0].softmax(0),
            );
        }
    }
}

#[test]
fn matmul_and_indexing_match_the_cpu() {
    for device in devices() {
        for dtype in FLOATS {
            let a = randn(&[2, 3, 17, 40], dtype, 11);
            let b = randn(&[3, 40, 9], dtype, 12);
            check(
                device,
                &format!("batched matmul {dtype:?}"),
                vec![a.clone(), b.clone()],
                |t| t[0].matmul(&t[1]),
            );
            let w = randn(&[9, 40], dtype, 13);
            check(
                device,
                &format!("matmul by a transposed weight {dtype:?}"),
                vec![a.clone(), w],
                |t| t[0].matmul(&t[1].t()?),
            );
            check(
                device,
                &format!("matmul of a transposed lhs {dtype:?}"),
                vec![randn(&[40, 17], dtype, 14), b.clone()],
                |t| t[0].t()?.matmul(&t[1]),
            );
            check(
                device,
                &format!("vector matmul {dtype:?}"),
                vec![randn(&[40], dtype, 15), randn(&[40], dtype, 16)],
                |t| t[0].matmul(&t[1]),
            );
        }
        for dtype in ALL {
            let x = sample(dtype, &[6, 4, 3], 17);
            let ids = Tensor::from_vec(vec![5i64, 0, 2, 2], [4]).unwrap();
            check(
                device,
                &format!("index_select {dtype:?}"),
                vec![x.clone(), ids.clone()],
                |t| t[0].index_select(1, &t[1]),
            );
            let table = sample(dtype, &[6, 8], 18);
            let tokens = Tensor::from_vec(vec![1u32, 5, 0, 1, 3, 3], [2, 3]).unwrap();
            check(
                device,
                &format!("embedding {dtype:?}"),
                vec![table, tokens],
                |t| Tensor::embedding(&t[1], &t[0]),
            );
        }
    }
}

#[test]
fn composite_and_joining_ops_match_the_cpu() {
    for device in devices() {
        for dtype in ALL {
            let (a, b) = (sample(dtype, &[2, 3, 4], 19), sample(dtype, &[2, 5, 4], 20));
            check(device, &format!("cat {dtype:?}"), vec![a.clone(), b], |t| {
                Tensor::cat(t, 1)
            });
            check(
                device,
                &format!("stack {dtype:?}"),
                vec![a.clone(), a.clone()],
                |t| Tensor::stack(t, 2),
            );
            let mask = sample(DType::F32, &[3, 1], 21);
            check(
                device,
                &format!("masked_fill {dtype:?}"),
                vec![a.clone(), mask],
                |t| t[0].masked_fill(&t[1].gt(&t[1].zeros_like()?)?, 7.0),
            );
        }
        for dtype in FLOATS {
            let x = randn(&[4, 9], dtype, 22);
            check(device, &format!("var {dtype:?}"), vec![x.clone()], |t| {
                t[0].var(1usize, 1, false)
            });
            check(device, &format!("logsumexp {dtype:?}"), vec![x.clone()], |t| {
                t[0].logsumexp(0usize, true)
            });
            let g = randn(&[4, 9], dtype, 23);
            check(
                device,
                &format!("gelu_backward {dtype:?}"),
                vec![x.clone(), g.clone()],
                |t| t[0].gelu_backward(&t[1]),
            );
            check(
                device,
                &format!("gelu_tanh_backward {dtype:?}"),
                vec![x.clone(), g],
                |t| t[0].gelu_tanh_backward(&t[1]),
            );
        }
        for dtype in [DType::F32, DType::F64] {
            let lsm = randn(&[3, 5], dtype, 24).log_softmax(1).unwrap();
            check(
                device,
                &format!("nll_grad_from_log_softmax {dtype:?}"),
                vec![lsm],
                |t| t[0].nll_grad_from_log_softmax(&[4, 0, 2], 0.5),
            );
        }
        let ids = Tensor::from_vec(vec![3i64, 0, 1, 3], [2, 2]).unwrap();
        check(device, "one_hot", vec![ids], |t| t[0].one_hot(5));
        for dtype in [DType::F32, DType::F64] {
            let (x, w, b) = (
                randn(&[2, 3, 16], dtype, 31),
                randn(&[16], dtype, 32),
                randn(&[16], dtype, 33),
            );
            for part in 0..3 {
                check(
                    device,
                    &format!("layer_norm_forward.{part} {dtype:?}"),
                    vec![x.clone(), w.clone(), b.clone()],
                    |t| {
                        let (y, xhat, rstd) = t[0].layer_norm_forward(&t[1], &t[2], 1e-5)?;
                        Ok([y, xhat, rstd][part].clone())
                    },
                );
            }
            let (_, xhat, rstd) = x.layer_norm_forward(&w, &b, 1e-5).unwrap();
            let g = randn(&[2, 3, 16], dtype, 34);
            for part in 0..3 {
                check(
                    device,
                    &format!("layer_norm_backward.{part} {dtype:?}"),
                    vec![g.clone(), xhat.clone(), rstd.clone(), w.clone()],
                    |t| {
                        let (dx, dw, db) = t[0].layer_norm_backward(&t[1], &t[2], &t[3])?;
                        Ok([dx, dw, db][part].clone())
                    },
                );
            }
        }
    }
}

#[test]
fn convolutions_pooling_and_gather_match_the_cpu() {
    use kiln_tensor::ops::conv::Conv2dParams;
    let params = [
        Conv2dParams::default(),
        Conv2dParams {
            stride: (2, 1),
            padding: (1, 2),
            dilation: (1, 2),
            groups: 2,
        },
    ];
    for device in devices() {
        for dtype in FLOATS {
            let x = randn(&[2, 4, 9, 8], dtype, 25);
            for p in params {
                let w = randn(&[6, 4 / p.groups, 3, 3], dtype, 26);
                let bias = randn(&[6], dtype, 27);
                let what = format!("conv2d {p:?} {dtype:?}");
                check(device, &what, vec![x.clone(), w.clone(), bias], |t| {
                    t[0].conv2d(&t[1], Some(&t[2]), p)
                });
                let y = x.conv2d(&w, None, p).unwrap();
                let dy = randn(y.dims(), dtype, 28);
                check(
                    device,
                    &format!("grad input {what}"),
                    vec![dy.clone(), w.clone()],
                    |t| Tensor::conv2d_grad_input(&t[0], &t[1], (9, 8), p),
                );
                check(device, &format!("grad weight {what}"), vec![x.clone(), dy], |t| {
                    Tensor::conv2d_grad_weight(&t[0], &t[1], [6, 4 / p.groups, 3, 3], p)
                });
            }
            let (out, idx) = x.max_pool2d_with_indices((2, 2), (2, 2), (0, 0)).unwrap();
            check(device, &format!("max_pool2d {dtype:?}"), vec![x.clone()], |t| {
                t[0].max_pool2d((3, 2), (2, 1), (1, 1))
            });
            check(
                device,
                &format!("max_pool2d indices {dtype:?}"),
                vec![x.clone()],
                |t| Ok(t[0].max_pool2d_with_indices((2, 2), (2, 2), (0, 0))?.1),
            );
            let g = randn(out.dims(), dtype, 29);
            check(
                device,
                &format!("max_pool2d_backward {dtype:?}"),
                vec![g, idx],
                |t| Tensor::max_pool2d_backward(&t[0], &t[1], [2, 4, 9, 8]),
            );
        }
        for dtype in ALL {
            let x = sample(dtype, &[3, 5], 30);
            let index = Tensor::from_vec(vec![4i64, 0, 0, 2, 1, 3], [3, 2]).unwrap();
            check(device, &format!("gather {dtype:?}"), vec![x, index], |t| {
                t[0].gather(1, &t[1])
            });
        }
    }
}

#[test]
fn device_errors_say_what_is_missing_and_what_to_do() {
    match Tensor::zeros([2], DType::F32, Device::Cuda(0)) {
        Ok(t) => assert_eq!(t.device(), Device::Cuda(0)),
        Err(Error::NotCompiledWithCuda(d)) => {
            assert_eq!(d, Device::Cuda(0));
            let msg = Error::NotCompiledWithCuda(d).to_string();
            assert!(msg.contains("--features cuda"), "{msg}");
        }
        Err(e @ Error::CudaUnavailable { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("cuda:0") && (msg.contains("not found") || msg.contains("GPU")),
                "{msg}"
            );
        }
        Err(e) => panic!("unexpected error for a missing GPU: {e}"),
    }
    // A device this machine has not got: one line naming it.
    let far = Device::Cuda(4096);
    let err = Tensor::ones([1], DType::F32, far).unwrap_err().to_string();
    assert!(err.contains("cuda:4096") && !err.contains('\n'), "{err}");
    let mismatch = Error::DeviceMismatch {
        op: "add",
        lhs: Device::Cpu,
        rhs: Device::Cuda(0),
    }
    .to_string();
    assert!(
        mismatch.contains("cpu") && mismatch.contains("cuda:0"),
        "{mismatch}"
    );
}
