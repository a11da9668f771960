//! Vision layers (convolutions, pooling, batch and group norm) against plain-Rust reference loops
//! and hand-computed values; PyTorch parameter names and shapes; state-dict round trips.

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_autograd::{gradcheck, GradcheckOptions};
use kiln_nn::layers::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, BatchNormConfig, Conv1d, Conv1dConfig, Conv2d,
    Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Flatten, GroupNorm, Linear, MaxPool2d, Sequential,
};
use kiln_nn::{load_state_dict_file, save_state_dict, Error, Module, Param, Scope, Var};
use kiln_tensor::{DType, Device, Tensor};

const CPU: Device = Device::Cpu;

/// Deterministic, irregular test values (no two equal, mixed signs).
fn values(n: usize, salt: f64) -> Vec<f64> {
    (0..n)
        .map(|i| (i as f64 * 0.7311 + salt).sin() * 1.7 + (i as f64 * 0.137).cos() * 0.3)
        .collect()
}

fn t64(data: Vec<f64>, dims: &[usize]) -> Tensor {
    Tensor::from_vec(data, dims.to_vec()).unwrap()
}

/// A strict f64 scope loading exactly these tensors.
fn scope_with(weights: &[(&str, Tensor)]) -> Scope {
    let map: HashMap<String, Tensor> = weights.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    Scope::from_tensors(map, true, 0, DType::F64, CPU)
}

fn names_and_shapes(m: &dyn Module) -> Vec<(String, Vec<usize>)> {
    m.parameters()
        .iter()
        .map(|p| (p.name().to_string(), p.value().dims().to_vec()))
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

fn out_vec(v: &Var) -> Vec<f64> {
    v.value().to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-nn-vision-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

// ---------------------------------------------------------------------------------------------
// Reference definitions.

/// Direct 2-D convolution: `y[n, o, i, j] = b[o] + Σ_{c, ki, kj} x[n, g·cig + c, i·s - p + ki·d, ...]
/// · w[o, c, ki, kj]` with `g = o / cog`.
#[allow(clippy::too_many_arguments)]
fn conv2d_ref(
    x: &[f64],
    xd: [usize; 4],
    w: &[f64],
    wd: [usize; 4],
    b: Option<&[f64]>,
    s: (usize, usize),
    p: (usize, usize),
    d: (usize, usize),
    groups: usize,
) -> (Vec<f64>, [usize; 4]) {
    let [n, c, h, wi] = xd;
    let [co, cig, kh, kw] = wd;
    let oh = (h + 2 * p.0 - d.0 * (kh - 1) - 1) / s.0 + 1;
    let ow = (wi + 2 * p.1 - d.1 * (kw - 1) - 1) / s.1 + 1;
    let cog = co / groups;
    assert_eq!(cig * groups, c);
    let mut y = vec![0.0; n * co * oh * ow];
    for ni in 0..n {
        for o in 0..co {
            let g = o / cog;
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b[o]);
                    for cc in 0..cig {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let yy = (i * s.0 + ki * d.0) as isize - p.0 as isize;
                                let xx = (j * s.1 + kj * d.1) as isize - p.1 as isize;
                                if yy < 0 || xx < 0 || yy >= h as isize || xx >= wi as isize {
                                    continue;
                                }
                                let ci = g * cig + cc;
                                acc += x[((ni * c + ci) * h + yy as usize) * wi + xx as usize]
                                    * w[((o * cig + cc) * kh + ki) * kw + kj];
                            }
                        }
                    }
                    y[((ni * co + o) * oh + i) * ow + j] = acc;
                }
            }
        }
    }
    (y, [n, co, oh, ow])
}

// ---------------------------------------------------------------------------------------------
// Convolutions.

#[test]
fn conv2d_matches_a_direct_loop_with_stride_padding_dilation_groups() {
    let (n, c, h, w, co, kh, kw, groups) = (2, 4, 7, 6, 6, 3, 2, 2);
    let xd = [n, c, h, w];
    let wd = [co, c / groups, kh, kw];
    let x = values(n * c * h * w, 0.1);
    let wt = values(wd.iter().product(), 1.3);
    let b = values(co, 2.9);
    let cfg = Conv2dConfig {
        stride: (2, 1),
        padding: (1, 2),
        dilation: (1, 2),
        groups,
        bias: true,
    };
    let conv = Conv2d::with_config(
        scope_with(&[("weight", t64(wt.clone(), &wd)), ("bias", t64(b.clone(), &[co]))]),
        c,
        co,
        (kh, kw),
        cfg,
    )
    .unwrap();
    let y = conv.forward(&Var::constant(t64(x.clone(), &xd))).unwrap();
    let (want, wdims) = conv2d_ref(
        &x,
        xd,
        &wt,
        wd,
        Some(&b),
        cfg.stride,
        cfg.padding,
        cfg.dilation,
        groups,
    );
    assert_eq!(y.dims(), &wdims);
    assert_close(&out_vec(&y), &want, 1e-12, "conv2d");

    // Defaults (stride 1, no padding) and no bias.
    let wd = [3, c, 3, 3];
    let wt = values(wd.iter().product(), 0.5);
    let conv = Conv2d::with_config(
        scope_with(&[("weight", t64(wt.clone(), &wd))]),
        c,
        3,
        (3, 3),
        Conv2dConfig {
            bias: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(conv.bias().is_none());
    let y = conv.forward(&Var::constant(t64(x.clone(), &xd))).unwrap();
    let (want, wdims) = conv2d_ref(&x, xd, &wt, wd, None, (1, 1), (0, 0), (1, 1), 1);
    assert_eq!(y.dims(), &wdims);
    assert_close(&out_vec(&y), &want, 1e-12, "conv2d no bias");
}

#[test]
fn conv2d_hand_computed_values() {
    // A 3x3 image and a 2x2 kernel [[1, 0], [0, -1]] (bottom-right minus top-left), bias 0.5.
    let x = t64((1..=9).map(f64::from).collect(), &[1, 1, 3, 3]);
    let conv = Conv2d::new(
        scope_with(&[
            ("weight", t64(vec![1.0, 0.0, 0.0, -1.0], &[1, 1, 2, 2])),
            ("bias", t64(vec![0.5], &[1])),
        ]),
        1,
        1,
        (2, 2),
    )
    .unwrap();
    let y = conv.forward(&Var::constant(x)).unwrap();
    assert_eq!(y.dims(), &[1, 1, 2, 2]);
    // x[i][j] - x[i+1][j+1] = -4 everywhere, + 0.5.
    assert_eq!(out_vec(&y), vec![-3.5; 4]);
}

#[test]
fn conv1d_matches_a_direct_loop() {
    let (n, c, l, co, k, groups) = (2, 6, 11, 4, 3, 2);
    let x = values(n * c * l, 0.3);
    let wd = [co, c / groups, k];
    let wt = values(wd.iter().product(), 0.9);
    let b = values(co, 1.1);
    let cfg = Conv1dConfig {
        stride: 2,
        padding: 1,
        dilation: 2,
        groups,
        bias: true,
    };
    let conv = Conv1d::with_config(
        scope_with(&[("weight", t64(wt.clone(), &wd)), ("bias", t64(b.clone(), &[co]))]),
        c,
        co,
        k,
        cfg,
    )
    .unwrap();
    let y = conv.forward(&Var::constant(t64(x.clone(), &[n, c, l]))).unwrap();
    // A 1-D convolution is a 2-D one of height 1.
    let (want, wdims) = conv2d_ref(
        &x,
        [n, c, 1, l],
        &wt,
        [co, c / groups, 1, k],
        Some(&b),
        (1, 2),
        (0, 1),
        (1, 2),
        groups,
    );
    assert_eq!(y.dims(), &[n, co, wdims[3]]);
    assert_close(&out_vec(&y), &want, 1e-12, "conv1d");
}

#[test]
fn conv_transpose2d_matches_the_scatter_definition() {
    let (n, ci, h, w, co, kh, kw, groups) = (2, 4, 3, 4, 6, 3, 2, 2);
    let (s, p, op, d) = ((2, 3), (1, 0), (1, 2), (1, 1));
    let cog = co / groups;
    let cig = ci / groups;
    let x = values(n * ci * h * w, 0.7);
    let wd = [ci, cog, kh, kw];
    let wt = values(wd.iter().product(), 0.2);
    let b = values(co, 3.3);
    let m = ConvTranspose2d::with_config(
        scope_with(&[("weight", t64(wt.clone(), &wd)), ("bias", t64(b.clone(), &[co]))]),
        ci,
        co,
        (kh, kw),
        ConvTranspose2dConfig {
            stride: s,
            padding: p,
            output_padding: op,
            dilation: d,
            groups,
            bias: true,
        },
    )
    .unwrap();
    let y = m.forward(&Var::constant(t64(x.clone(), &[n, ci, h, w]))).unwrap();
    let oh = (h - 1) * s.0 - 2 * p.0 + d.0 * (kh - 1) + op.0 + 1;
    let ow = (w - 1) * s.1 - 2 * p.1 + d.1 * (kw - 1) + op.1 + 1;
    assert_eq!(y.dims(), &[n, co, oh, ow]);
    // Every input pixel scatters its value times the kernel into the output.
    let mut want = vec![0.0; n * co * oh * ow];
    for ni in 0..n {
        for o in 0..co {
            for e in want[(ni * co + o) * oh * ow..][..oh * ow].iter_mut() {
                *e = b[o];
            }
        }
        for c in 0..ci {
            let g = c / cig;
            for i in 0..h {
                for j in 0..w {
                    for oc in 0..cog {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let yy = (i * s.0 + ki * d.0) as isize - p.0 as isize;
                                let xx = (j * s.1 + kj * d.1) as isize - p.1 as isize;
                                if yy < 0 || xx < 0 || yy >= oh as isize || xx >= ow as isize {
                                    continue;
                                }
                                let o = g * cog + oc;
                                want[((ni * co + o) * oh + yy as usize) * ow + xx as usize] += x
                                    [((ni * ci + c) * h + i) * w + j]
                                    * wt[((c * cog + oc) * kh + ki) * kw + kj];
                            }
                        }
                    }
                }
            }
        }
    }
    assert_close(&out_vec(&y), &want, 1e-12, "conv_transpose2d");
}

#[test]
fn conv_parameter_names_shapes_and_default_init_follow_pytorch() {
    let scope = Scope::init(7, DType::F32, CPU);
    let conv = Conv2d::with_config(
        scope.sub("features").sub(0),
        3,
        8,
        (5, 3),
        Conv2dConfig {
            groups: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        names_and_shapes(&conv),
        [
            ("features.0.weight".to_string(), vec![8, 3, 5, 3]),
            ("features.0.bias".to_string(), vec![8]),
        ]
    );
    // kaiming_uniform(a = √5) has bound 1/√fan_in, as does the bias; fan_in = 3·5·3 = 45.
    let bound = 1.0 / 45f64.sqrt();
    for p in conv.parameters() {
        let v = p.value().to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap();
        assert!(v.iter().all(|x| x.abs() <= bound + 1e-7), "{}", p.name());
        assert!(v.iter().any(|x| x.abs() > 0.5 * bound), "{}", p.name());
        assert!(p.requires_grad());
    }

    let dw = Conv2d::with_config(
        scope.sub("dw"),
        8,
        16,
        (3, 3),
        Conv2dConfig {
            groups: 8,
            bias: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        names_and_shapes(&dw),
        [("dw.weight".to_string(), vec![16, 1, 3, 3])]
    );

    let c1 = Conv1d::new(scope.sub("c1"), 4, 2, 5).unwrap();
    assert_eq!(
        names_and_shapes(&c1),
        [
            ("c1.weight".to_string(), vec![2, 4, 5]),
            ("c1.bias".to_string(), vec![2])
        ]
    );

    // ConvTranspose2d's weight is [C_in, C_out / groups, kH, kW]; PyTorch's fan_in is its dim 1
    // times the kernel: 3 · 2 · 2 = 12.
    let up = ConvTranspose2d::with_config(
        scope.sub("up"),
        4,
        6,
        (2, 2),
        ConvTranspose2dConfig {
            groups: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        names_and_shapes(&up),
        [
            ("up.weight".to_string(), vec![4, 3, 2, 2]),
            ("up.bias".to_string(), vec![6])
        ]
    );
    let bound = 1.0 / 12f64.sqrt();
    let b = up.bias().unwrap().value().to_vec::<f32>().unwrap();
    assert!(b.iter().all(|x| (x.abs() as f64) <= bound + 1e-7));
}

#[test]
fn conv_gradients_reach_the_weights_and_the_input() {
    let conv = Conv2d::with_config(
        Scope::init(1, DType::F64, CPU),
        2,
        3,
        (3, 3),
        Conv2dConfig {
            padding: (1, 1),
            stride: (2, 2),
            ..Default::default()
        },
    )
    .unwrap();
    let x = t64(values(2 * 2 * 5 * 5, 0.4), &[2, 2, 5, 5]);
    gradcheck(
        |v| {
            conv.forward(&v[0]).map_err(|e| kiln_autograd::Error::Invalid {
                op: "test",
                reason: e.to_string(),
            })
        },
        std::slice::from_ref(&x),
        GradcheckOptions::default(),
    )
    .unwrap();
    let y = conv.forward(&Var::constant(x)).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(conv.weight().grad(&grads).unwrap().dims(), &[3, 2, 3, 3]);
    assert_eq!(conv.bias().unwrap().grad(&grads).unwrap().dims(), &[3]);
}

#[test]
fn conv_bad_inputs_and_configs_are_errors_naming_the_layer_and_shape() {
    let scope = Scope::init(0, DType::F32, CPU);
    let conv = Conv2d::new(scope.sub("c"), 1, 4, (3, 3)).unwrap();
    let x3 = Var::constant(Tensor::zeros([1, 28, 28], DType::F32, CPU).unwrap());
    let e = conv.forward(&x3).unwrap_err().to_string();
    assert!(e.contains("Conv2d") && e.contains("[1, 28, 28]"), "{e}");
    let wrong_c = Var::constant(Tensor::zeros([2, 3, 8, 8], DType::F32, CPU).unwrap());
    let e = conv.forward(&wrong_c).unwrap_err().to_string();
    assert!(
        e.contains("Conv2d") && e.contains("[2, 3, 8, 8]") && e.contains("C = 1"),
        "{e}"
    );
    // A kernel larger than the input: the tensor op's error, not a panic.
    let small = Var::constant(Tensor::zeros([1, 1, 2, 2], DType::F32, CPU).unwrap());
    assert!(conv.forward(&small).is_err());

    let c1 = Conv1d::new(scope.sub("c1"), 2, 2, 3).unwrap();
    let e = c1.forward(&x3).unwrap_err().to_string();
    assert!(e.contains("Conv1d") && e.contains("[1, 28, 28]"), "{e}");
    let t = ConvTranspose2d::new(scope.sub("t"), 2, 2, (2, 2)).unwrap();
    let e = t.forward(&x3).unwrap_err().to_string();
    assert!(e.contains("ConvTranspose2d") && e.contains("[1, 28, 28]"), "{e}");

    let bad = |cfg: Conv2dConfig| Conv2d::with_config(scope.sub("bad"), 4, 6, (3, 3), cfg).is_err();
    assert!(bad(Conv2dConfig {
        groups: 4,
        ..Default::default()
    }));
    assert!(bad(Conv2dConfig {
        groups: 0,
        ..Default::default()
    }));
    assert!(bad(Conv2dConfig {
        stride: (0, 1),
        ..Default::default()
    }));
    assert!(Conv2d::new(scope.sub("bad"), 4, 6, (0, 3)).is_err());
    assert!(ConvTranspose2d::with_config(
        scope.sub("bad"),
        2,
        2,
        (3, 3),
        ConvTranspose2dConfig {
            output_padding: (1, 0),
            ..Default::default()
        }
    )
    .is_err());
}

// ---------------------------------------------------------------------------------------------
// Pooling.

#[test]
fn max_pool2d_matches_a_direct_loop_and_hand_values() {
    // 4x4 plane 0..16, 2x2 windows: maxima 5, 7, 13, 15.
    let x = t64((0..16).map(f64::from).collect(), &[1, 1, 4, 4]);
    let y = MaxPool2d::new((2, 2))
        .unwrap()
        .forward(&Var::constant(x))
        .unwrap();
    assert_eq!(y.dims(), &[1, 1, 2, 2]);
    assert_eq!(out_vec(&y), vec![5.0, 7.0, 13.0, 15.0]);

    // Overlapping, padded windows on irregular values.
    let (n, c, h, w) = (2, 3, 5, 6);
    let (k, s, p) = ((3, 2), (2, 1), (1, 1));
    let xv = values(n * c * h * w, 0.8);
    let y = MaxPool2d::with_stride(k, s, p)
        .unwrap()
        .forward(&Var::constant(t64(xv.clone(), &[n, c, h, w])))
        .unwrap();
    let oh = (h + 2 * p.0 - k.0) / s.0 + 1;
    let ow = (w + 2 * p.1 - k.1) / s.1 + 1;
    assert_eq!(y.dims(), &[n, c, oh, ow]);
    let mut want = Vec::new();
    for plane in 0..n * c {
        for i in 0..oh {
            for j in 0..ow {
                let mut m = f64::NEG_INFINITY;
                for ki in 0..k.0 {
                    for kj in 0..k.1 {
                        let (yy, xx) = (
                            (i * s.0 + ki) as isize - p.0 as isize,
                            (j * s.1 + kj) as isize - p.1 as isize,
                        );
                        if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                            m = m.max(xv[plane * h * w + yy as usize * w + xx as usize]);
                        }
                    }
                }
                want.push(m);
            }
        }
    }
    assert_eq!(out_vec(&y), want);
}

#[test]
fn avg_pool2d_matches_a_direct_loop_with_and_without_padding_in_the_divisor() {
    let x = t64((0..16).map(f64::from).collect(), &[1, 1, 4, 4]);
    let y = AvgPool2d::new((2, 2))
        .unwrap()
        .forward(&Var::constant(x))
        .unwrap();
    assert_eq!(out_vec(&y), vec![2.5, 4.5, 10.5, 12.5]);

    let (n, c, h, w) = (1, 2, 5, 4);
    let (k, s, p) = ((3, 3), (2, 2), (1, 1));
    let xv = values(n * c * h * w, 0.25);
    for include in [true, false] {
        let pool = AvgPool2d::with_stride(k, s, p, include).unwrap();
        let y = pool
            .forward(&Var::constant(t64(xv.clone(), &[n, c, h, w])))
            .unwrap();
        let oh = (h + 2 * p.0 - k.0) / s.0 + 1;
        let ow = (w + 2 * p.1 - k.1) / s.1 + 1;
        let mut want = Vec::new();
        for plane in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    let (mut sum, mut count) = (0.0, 0);
                    for ki in 0..k.0 {
                        for kj in 0..k.1 {
                            let (yy, xx) = ((i * s.0 + ki) as isize - 1, (j * s.1 + kj) as isize - 1);
                            if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                                sum += xv[plane * h * w + yy as usize * w + xx as usize];
                                count += 1;
                            }
                        }
                    }
                    want.push(sum / if include { (k.0 * k.1) as f64 } else { count as f64 });
                }
            }
        }
        assert_close(&out_vec(&y), &want, 1e-12, "avg_pool2d");
    }
}

#[test]
fn adaptive_avg_pool2d_uses_pytorch_bins() {
    // 5 -> 3 bins: [0, 2), [1, 4), [3, 5); 4 -> 2 bins: [0, 2), [2, 4).
    let (h, w) = (5, 4);
    let xv = values(h * w, 1.5);
    let y = AdaptiveAvgPool2d::new((3, 2))
        .unwrap()
        .forward(&Var::constant(t64(xv.clone(), &[1, 1, h, w])))
        .unwrap();
    assert_eq!(y.dims(), &[1, 1, 3, 2]);
    let mut want = Vec::new();
    for (r0, r1) in [(0, 2), (1, 4), (3, 5)] {
        for (c0, c1) in [(0, 2), (2, 4)] {
            let mut s = 0.0;
            for r in r0..r1 {
                for c in c0..c1 {
                    s += xv[r * w + c];
                }
            }
            want.push(s / ((r1 - r0) * (c1 - c0)) as f64);
        }
    }
    assert_close(&out_vec(&y), &want, 1e-12, "adaptive_avg_pool2d");
    // Global average pooling.
    let g = AdaptiveAvgPool2d::new((1, 1))
        .unwrap()
        .forward(&Var::constant(t64(xv.clone(), &[1, 1, h, w])))
        .unwrap();
    assert_close(&out_vec(&g), &[xv.iter().sum::<f64>() / 20.0], 1e-12, "global");
}

#[test]
fn pools_reject_bad_inputs_and_configs_with_errors() {
    let x3 = Var::constant(Tensor::zeros([3, 8, 8], DType::F32, CPU).unwrap());
    let e = MaxPool2d::new((2, 2))
        .unwrap()
        .forward(&x3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("MaxPool2d") && e.contains("[3, 8, 8]"), "{e}");
    let e = AvgPool2d::new((2, 2))
        .unwrap()
        .forward(&x3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("AvgPool2d") && e.contains("[3, 8, 8]"), "{e}");
    let e = AdaptiveAvgPool2d::new((1, 1))
        .unwrap()
        .forward(&x3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("AdaptiveAvgPool2d") && e.contains("[3, 8, 8]"), "{e}");
    assert!(MaxPool2d::new((0, 2)).is_err());
    assert!(MaxPool2d::with_stride((2, 2), (2, 2), (2, 0)).is_err());
    assert!(AvgPool2d::with_stride((2, 2), (0, 2), (0, 0), true).is_err());
    assert!(AdaptiveAvgPool2d::new((0, 1)).is_err());
    assert!(MaxPool2d::new((2, 2)).unwrap().parameters().is_empty());
}

#[test]
fn pool_gradients_check() {
    let x = t64(values(2 * 2 * 4 * 5, 0.9), &[2, 2, 4, 5]);
    let to_ag = |e: Error| kiln_autograd::Error::Invalid {
        op: "test",
        reason: e.to_string(),
    };
    let avg = AvgPool2d::with_stride((2, 3), (1, 2), (1, 1), false).unwrap();
    gradcheck(
        |v| avg.forward(&v[0]).map_err(to_ag),
        std::slice::from_ref(&x),
        GradcheckOptions::default(),
    )
    .unwrap();
    let ad = AdaptiveAvgPool2d::new((3, 2)).unwrap();
    gradcheck(
        |v| ad.forward(&v[0]).map_err(to_ag),
        std::slice::from_ref(&x),
        GradcheckOptions::default(),
    )
    .unwrap();
    let mx = MaxPool2d::new((2, 2)).unwrap();
    gradcheck(
        |v| mx.forward(&v[0]).map_err(to_ag),
        &[x],
        GradcheckOptions::default(),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Batch norm.

fn scalar_f64(p: &Param) -> Vec<f64> {
    p.value().to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap()
}

#[test]
fn batchnorm_names_shapes_dtypes_and_buffers_follow_pytorch() {
    let scope = Scope::init(0, DType::F32, CPU);
    let bn = BatchNorm2d::new(scope.sub("bn1"), 5).unwrap();
    assert_eq!(
        names_and_shapes(&bn),
        [
            ("bn1.weight".to_string(), vec![5]),
            ("bn1.bias".to_string(), vec![5]),
            ("bn1.running_mean".to_string(), vec![5]),
            ("bn1.running_var".to_string(), vec![5]),
            ("bn1.num_batches_tracked".to_string(), vec![]),
        ]
    );
    let p = bn.parameters();
    let trainable: Vec<bool> = p.iter().map(|p| p.requires_grad()).collect();
    assert_eq!(trainable, [true, true, false, false, false]);
    assert_eq!(scalar_f64(&p[0]), vec![1.0; 5]);
    assert_eq!(scalar_f64(&p[1]), vec![0.0; 5]);
    assert_eq!(scalar_f64(&p[2]), vec![0.0; 5]);
    assert_eq!(scalar_f64(&p[3]), vec![1.0; 5]);
    assert_eq!(p[4].value().dtype(), DType::I64);
    assert_eq!(p[4].value().to_scalar::<i64>().unwrap(), 0);
    assert!(bn.is_training());

    let bn1 = BatchNorm1d::with_config(
        scope.sub("bn"),
        3,
        BatchNormConfig {
            affine: false,
            ..Default::default()
        },
    )
    .unwrap();
    let names: Vec<String> = bn1.parameters().iter().map(|p| p.name().to_string()).collect();
    assert_eq!(
        names,
        ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    );
    let none = BatchNorm1d::with_config(
        scope.sub("x"),
        3,
        BatchNormConfig {
            affine: false,
            track_running_stats: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(none.parameters().is_empty());
}

#[test]
fn batchnorm2d_hand_computed_training_step_and_running_stats() {
    // One sample, two channels of 2x2: channel 0 = 1, 2, 3, 4; channel 1 = 10, 10, 10, 14.
    let x = t64(vec![1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 14.0], &[1, 2, 2, 2]);
    let bn = BatchNorm2d::new(Scope::init(0, DType::F64, CPU), 2).unwrap();
    let y = bn.forward(&Var::constant(x)).unwrap();
    // Channel 0: mean 2.5, biased var 1.25; channel 1: mean 11, biased var 3.
    let eps = 1e-5;
    let mut want: Vec<f64> = [1.0, 2.0, 3.0, 4.0]
        .iter()
        .map(|v| (v - 2.5) / (1.25f64 + eps).sqrt())
        .collect();
    want.extend(
        [10.0, 10.0, 10.0, 14.0]
            .iter()
            .map(|v| (v - 11.0) / (3.0f64 + eps).sqrt()),
    );
    assert_close(&out_vec(&y), &want, 1e-12, "bn train output");
    // Running stats: 0.9 · init + 0.1 · batch, with the unbiased variance (5/3 and 4).
    assert_close(
        &scalar_f64(bn.running_mean().unwrap()),
        &[0.25, 1.1],
        1e-15,
        "running_mean",
    );
    assert_close(
        &scalar_f64(bn.running_var().unwrap()),
        &[0.9 + 0.1 * 5.0 / 3.0, 0.9 + 0.4],
        1e-15,
        "running_var",
    );
    assert_eq!(
        bn.num_batches_tracked()
            .unwrap()
            .value()
            .to_scalar::<i64>()
            .unwrap(),
        1
    );
}

/// Per-channel (mean, biased var, unbiased var) of an [N, C, rest] tensor.
fn channel_stats(x: &[f64], n: usize, c: usize, rest: usize) -> Vec<(f64, f64, f64)> {
    (0..c)
        .map(|ch| {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| x[(i * c + ch) * rest..][..rest].to_vec())
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let ss: f64 = vals.iter().map(|v| (v - m) * (v - m)).sum();
            (m, ss / vals.len() as f64, ss / (vals.len() - 1) as f64)
        })
        .collect()
}

#[test]
fn batchnorm2d_train_two_steps_then_eval_uses_running_stats() {
    let (n, c, h, w) = (3, 4, 2, 3);
    let rest = h * w;
    let gamma = vec![0.5, -1.0, 2.0, 1.5];
    let beta = vec![0.1, 0.2, -0.3, 0.0];
    let zeros = vec![0.0; c];
    let ones = vec![1.0; c];
    let bn = BatchNorm2d::new(
        scope_with(&[
            ("weight", t64(gamma.clone(), &[c])),
            ("bias", t64(beta.clone(), &[c])),
            ("running_mean", t64(zeros, &[c])),
            ("running_var", t64(ones, &[c])),
            ("num_batches_tracked", Tensor::scalar(0i64)),
        ]),
        c,
    )
    .unwrap();
    let eps = 1e-5;
    let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);
    for step in 0..2 {
        let xv: Vec<f64> = values(n * c * rest, step as f64 * 5.0)
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1.0 + (i / rest % c) as f64) + (i / rest % c) as f64)
            .collect();
        let y = bn
            .forward(&Var::constant(t64(xv.clone(), &[n, c, h, w])))
            .unwrap();
        let stats = channel_stats(&xv, n, c, rest);
        let want: Vec<f64> = xv
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let ch = i / rest % c;
                let (m, var, _) = stats[ch];
                (v - m) / (var + eps).sqrt() * gamma[ch] + beta[ch]
            })
            .collect();
        assert_close(&out_vec(&y), &want, 1e-12, "train output");
        for ch in 0..c {
            rm[ch] = 0.9 * rm[ch] + 0.1 * stats[ch].0;
            rv[ch] = 0.9 * rv[ch] + 0.1 * stats[ch].2;
        }
        assert_close(
            &scalar_f64(bn.running_mean().unwrap()),
            &rm,
            1e-13,
            "running_mean",
        );
        assert_close(&scalar_f64(bn.running_var().unwrap()), &rv, 1e-13, "running_var");
        assert_eq!(
            bn.num_batches_tracked()
                .unwrap()
                .value()
                .to_scalar::<i64>()
                .unwrap(),
            step + 1
        );
    }

    bn.set_training(false);
    assert!(!bn.is_training());
    let xv = values(n * c * rest, 9.0);
    let y = bn
        .forward(&Var::constant(t64(xv.clone(), &[n, c, h, w])))
        .unwrap();
    let want: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let ch = i / rest % c;
            (v - rm[ch]) / (rv[ch] + eps).sqrt() * gamma[ch] + beta[ch]
        })
        .collect();
    assert_close(&out_vec(&y), &want, 1e-12, "eval output");
    // Eval leaves the running statistics alone.
    assert_close(
        &scalar_f64(bn.running_mean().unwrap()),
        &rm,
        1e-13,
        "running_mean after eval",
    );
    assert_eq!(
        bn.num_batches_tracked()
            .unwrap()
            .value()
            .to_scalar::<i64>()
            .unwrap(),
        2
    );
}

#[test]
fn batchnorm1d_2d_and_3d_inputs_and_cumulative_momentum() {
    let scope = Scope::init(0, DType::F64, CPU);
    // [N, C]: statistics over N.
    let bn = BatchNorm1d::with_config(
        scope.sub("a"),
        2,
        BatchNormConfig {
            momentum: None,
            ..Default::default()
        },
    )
    .unwrap();
    let x = t64(vec![1.0, 10.0, 3.0, 20.0], &[2, 2]);
    let y = bn.forward(&Var::constant(x)).unwrap();
    // Each channel has two values m ± d: normalised to ±d/sqrt(d² + eps).
    let a = 1.0 / (1.0f64 + 1e-5).sqrt();
    let b = 5.0 / (25.0f64 + 1e-5).sqrt();
    assert_close(&out_vec(&y), &[-a, -b, a, b], 1e-12, "bn1d [N, C]");
    // momentum=None: the first update replaces the running stats by the batch's.
    assert_close(
        &scalar_f64(bn.running_mean().unwrap()),
        &[2.0, 15.0],
        1e-15,
        "cma mean 1",
    );
    assert_close(
        &scalar_f64(bn.running_var().unwrap()),
        &[2.0, 50.0],
        1e-15,
        "cma var 1",
    );
    let x = t64(vec![5.0, 0.0, 7.0, 0.0], &[2, 2]);
    bn.forward(&Var::constant(x)).unwrap();
    // Second: the average of the two batches.
    assert_close(
        &scalar_f64(bn.running_mean().unwrap()),
        &[4.0, 7.5],
        1e-15,
        "cma mean 2",
    );
    assert_close(
        &scalar_f64(bn.running_var().unwrap()),
        &[2.0, 25.0],
        1e-15,
        "cma var 2",
    );

    // [N, C, L]: statistics over N and L.
    let (n, c, l) = (2, 3, 4);
    let bn = BatchNorm1d::new(scope.sub("b"), c).unwrap();
    let xv = values(n * c * l, 0.6);
    let y = bn.forward(&Var::constant(t64(xv.clone(), &[n, c, l]))).unwrap();
    let stats = channel_stats(&xv, n, c, l);
    let want: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (m, var, _) = stats[i / l % c];
            (v - m) / (var + 1e-5).sqrt()
        })
        .collect();
    assert_close(&out_vec(&y), &want, 1e-12, "bn1d [N, C, L]");
    let rm: Vec<f64> = stats.iter().map(|s| 0.1 * s.0).collect();
    assert_close(
        &scalar_f64(bn.running_mean().unwrap()),
        &rm,
        1e-14,
        "bn1d running_mean",
    );

    // Errors: wrong rank, wrong channels, one value per channel in training.
    let e = bn
        .forward(&Var::constant(
            Tensor::zeros([2, 3, 4, 5], DType::F64, CPU).unwrap(),
        ))
        .unwrap_err()
        .to_string();
    assert!(e.contains("BatchNorm1d") && e.contains("[2, 3, 4, 5]"), "{e}");
    let e = bn
        .forward(&Var::constant(Tensor::zeros([2, 4], DType::F64, CPU).unwrap()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("BatchNorm1d") && e.contains("C = 3"), "{e}");
    let e = bn
        .forward(&Var::constant(Tensor::zeros([1, 3], DType::F64, CPU).unwrap()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 1 value per channel"), "{e}");
    // ... which is fine in eval mode.
    bn.set_training(false);
    bn.forward(&Var::constant(Tensor::zeros([1, 3], DType::F64, CPU).unwrap()))
        .unwrap();
    let bn2 = BatchNorm2d::new(scope.sub("c"), 3).unwrap();
    let e = bn2
        .forward(&Var::constant(Tensor::zeros([4, 3, 5], DType::F64, CPU).unwrap()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("BatchNorm2d") && e.contains("[4, 3, 5]"), "{e}");
}

#[test]
fn batchnorm_without_running_stats_uses_batch_stats_in_eval() {
    let bn = BatchNorm2d::with_config(
        Scope::init(0, DType::F64, CPU),
        2,
        BatchNormConfig {
            track_running_stats: false,
            ..Default::default()
        },
    )
    .unwrap();
    let x = t64(values(2 * 2 * 3 * 3, 0.1), &[2, 2, 3, 3]);
    let train = out_vec(&bn.forward(&Var::constant(x.clone())).unwrap());
    bn.set_training(false);
    let eval = out_vec(&bn.forward(&Var::constant(x)).unwrap());
    assert_eq!(train, eval);
}

#[test]
fn batchnorm_training_path_is_differentiable() {
    let to_ag = |e: Error| kiln_autograd::Error::Invalid {
        op: "test",
        reason: e.to_string(),
    };
    let c = 3;
    let bn = BatchNorm2d::new(
        scope_with(&[
            ("weight", t64(vec![0.7, -1.2, 2.0], &[c])),
            ("bias", t64(vec![0.1, 0.0, -0.5], &[c])),
            ("running_mean", t64(vec![0.0; c], &[c])),
            ("running_var", t64(vec![1.0; c], &[c])),
            ("num_batches_tracked", Tensor::scalar(0i64)),
        ]),
        c,
    )
    .unwrap();
    let x = t64(values(2 * c * 2 * 2, 0.3), &[2, c, 2, 2]);
    // The gradient through the batch mean and variance (the identity of a plain affine map would
    // give a different, wrong answer).
    gradcheck(
        |v| bn.forward(&v[0]).map_err(to_ag),
        std::slice::from_ref(&x),
        GradcheckOptions::default(),
    )
    .unwrap();
    let y = bn.forward(&Var::constant(x)).unwrap();
    let proj = Var::constant(t64(values(y.value().elem_count(), 4.0), y.dims()));
    let grads = y.mul(&proj).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(bn.weight().unwrap().grad(&grads).unwrap().dims(), &[c]);
    assert_eq!(bn.bias().unwrap().grad(&grads).unwrap().dims(), &[c]);
    assert!(bn.running_mean().unwrap().grad(&grads).is_none());
    // GroupNorm too.
    let gn = GroupNorm::new(Scope::init(3, DType::F64, CPU), 2, 4, 1e-5, true).unwrap();
    let x = t64(values(2 * 4 * 3, 0.2), &[2, 4, 3]);
    gradcheck(
        |v| gn.forward(&v[0]).map_err(to_ag),
        &[x],
        GradcheckOptions::default(),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Group norm.

#[test]
fn groupnorm_matches_the_formula() {
    let (n, c, h, w, g) = (2, 6, 2, 3, 3);
    let gamma = values(c, 0.4);
    let beta = values(c, 2.2);
    let gn = GroupNorm::new(
        scope_with(&[
            ("weight", t64(gamma.clone(), &[c])),
            ("bias", t64(beta.clone(), &[c])),
        ]),
        g,
        c,
        1e-5,
        true,
    )
    .unwrap();
    let names: Vec<String> = gn.parameters().iter().map(|p| p.name().to_string()).collect();
    assert_eq!(names, ["weight", "bias"]);
    let xv = values(n * c * h * w, 1.9);
    let y = gn
        .forward(&Var::constant(t64(xv.clone(), &[n, c, h, w])))
        .unwrap();
    let per = c / g * h * w;
    let mut want = vec![0.0; xv.len()];
    for s in 0..n {
        for gi in 0..g {
            let start = (s * g + gi) * per;
            let grp = &xv[start..start + per];
            let m = grp.iter().sum::<f64>() / per as f64;
            let var = grp.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / per as f64;
            for k in 0..per {
                let ch = gi * (c / g) + k / (h * w);
                want[start + k] = (grp[k] - m) / (var + 1e-5).sqrt() * gamma[ch] + beta[ch];
            }
        }
    }
    assert_close(&out_vec(&y), &want, 1e-12, "group_norm");

    // Without affine; same in eval; errors.
    let plain = GroupNorm::new(Scope::init(0, DType::F64, CPU), 1, 6, 1e-5, false).unwrap();
    assert!(plain.parameters().is_empty());
    plain.set_training(false);
    let y = plain
        .forward(&Var::constant(t64(xv.clone(), &[n, c, h * w])))
        .unwrap();
    let first: Vec<f64> = out_vec(&y)[..c * h * w].to_vec();
    let m = xv[..c * h * w].iter().sum::<f64>() / (c * h * w) as f64;
    let var = xv[..c * h * w].iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (c * h * w) as f64;
    let want: Vec<f64> = xv[..c * h * w]
        .iter()
        .map(|v| (v - m) / (var + 1e-5).sqrt())
        .collect();
    assert_close(&first, &want, 1e-12, "group_norm one group");
    assert!(GroupNorm::new(Scope::init(0, DType::F64, CPU), 4, 6, 1e-5, true).is_err());
    let e = gn
        .forward(&Var::constant(Tensor::zeros([2, 5, 3], DType::F64, CPU).unwrap()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("GroupNorm") && e.contains("[2, 5, 3]"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// State dicts.

/// A small CNN with PyTorch's Sequential numbering.
fn cnn(scope: &Scope) -> Sequential {
    Sequential::new()
        .add(
            Conv2d::with_config(
                scope.sub(0),
                1,
                4,
                (3, 3),
                Conv2dConfig {
                    padding: (1, 1),
                    ..Default::default()
                },
            )
            .unwrap(),
        )
        .add(BatchNorm2d::new(scope.sub(1), 4).unwrap())
        .add(MaxPool2d::new((2, 2)).unwrap())
        .add(GroupNorm::new(scope.sub(3), 2, 4, 1e-5, true).unwrap())
        .add(Flatten)
        .add(Linear::new(scope.sub(5), 4 * 3 * 3, 3).unwrap())
}

#[test]
fn state_dict_round_trip_is_exact() {
    let model = cnn(&Scope::init(11, DType::F32, CPU));
    let x = Var::constant(
        Tensor::from_vec(values(2 * 36, 0.5), [2, 1, 6, 6])
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
    );
    // Two training steps move the running statistics and the batch counter.
    model.forward(&x).unwrap();
    model.forward(&x).unwrap();
    let path = scratch("cnn.safetensors");
    save_state_dict(&model.parameters(), &path).unwrap();

    let other = cnn(&Scope::init(99, DType::F32, CPU));
    let report = load_state_dict_file(&other.parameters(), &path, true).unwrap();
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    let names: Vec<String> = other.parameters().iter().map(|p| p.name().to_string()).collect();
    assert_eq!(
        names,
        [
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "3.weight",
            "3.bias",
            "5.weight",
            "5.bias"
        ]
    );
    for (a, b) in model.parameters().iter().zip(other.parameters()) {
        let (va, vb) = (a.value(), b.value());
        assert_eq!(va.dtype(), vb.dtype(), "{}", a.name());
        assert_eq!(va.shape(), vb.shape(), "{}", a.name());
        assert_eq!(va.to_f64_vec(), vb.to_f64_vec(), "{}", a.name());
    }
    let nbt = &other.parameters()[6];
    assert_eq!(nbt.value().dtype(), DType::I64);
    assert_eq!(nbt.value().to_scalar::<i64>().unwrap(), 2);
    // Same outputs in eval mode.
    model.set_training(false);
    other.set_training(false);
    assert_eq!(
        model.forward(&x).unwrap().value().to_vec::<f32>().unwrap(),
        other.forward(&x).unwrap().value().to_vec::<f32>().unwrap()
    );
    // A model built straight from the file (Scope path) holds the same values, buffers included.
    let loaded = Scope::from_safetensors(&path, true, DType::F32, CPU).unwrap();
    let third = cnn(&loaded);
    loaded.check_all_used().unwrap();
    for (a, b) in model.parameters().iter().zip(third.parameters()) {
        assert_eq!(a.value().dtype(), b.value().dtype(), "{}", a.name());
        assert_eq!(a.value().to_f64_vec(), b.value().to_f64_vec(), "{}", a.name());
    }
    std::fs::remove_file(&path).ok();
}

#[test]
fn loading_a_misshaped_key_names_the_key_and_both_shapes() {
    let path = scratch("misshaped.safetensors");
    // A checkpoint whose first conv has 5x5 kernels.
    let big = Conv2d::new(Scope::init(0, DType::F32, CPU).sub(0), 1, 4, (5, 5)).unwrap();
    save_state_dict(&big.parameters(), &path).unwrap();
    let model = Conv2d::new(Scope::init(1, DType::F32, CPU).sub(0), 1, 4, (3, 3)).unwrap();
    let before = model.weight().value().to_vec::<f32>().unwrap();
    let err = load_state_dict_file(&model.parameters(), &path, true).unwrap_err();
    match &err {
        Error::ShapeMismatch { name, expected, got } => {
            assert_eq!(name, "0.weight");
            assert_eq!(expected.dims(), &[4, 1, 3, 3]);
            assert_eq!(got.dims(), &[4, 1, 5, 5]);
        }
        e => panic!("expected ShapeMismatch, got {e}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("0.weight") && msg.contains("[4, 1, 3, 3]") && msg.contains("[4, 1, 5, 5]"),
        "{msg}"
    );
    // Nothing changed.
    assert_eq!(model.weight().value().to_vec::<f32>().unwrap(), before);
    // The Scope path reports the same.
    let scope = Scope::from_safetensors(&path, true, DType::F32, CPU).unwrap();
    let msg = Conv2d::new(scope.sub(0), 1, 4, (3, 3)).err().unwrap().to_string();
    assert!(
        msg.contains("0.weight") && msg.contains("[4, 1, 3, 3]") && msg.contains("[4, 1, 5, 5]"),
        "{msg}"
    );
    // And a misshaped BatchNorm buffer.
    let bn = BatchNorm2d::new(Scope::init(0, DType::F32, CPU).sub("bn"), 8).unwrap();
    save_state_dict(&bn.parameters(), &path).unwrap();
    let small = BatchNorm2d::new(Scope::init(0, DType::F32, CPU).sub("bn"), 6).unwrap();
    let msg = load_state_dict_file(&small.parameters(), &path, true)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bn.weight") && msg.contains("[6]") && msg.contains("[8]"),
        "{msg}"
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_small_cnn_with_batchnorm_trains_with_adam_and_leaves_buffers_to_batchnorm() {
    use kiln_nn::loss::{cross_entropy, CrossEntropyOptions, Target};
    use kiln_optim::{Adam, AdamConfig, Optimizer};
    let model = cnn(&Scope::init(5, DType::F32, CPU));
    // All parameters, buffers included: the optimizer skips what does not require grad.
    let mut opt = Adam::from_params(
        model.parameters(),
        AdamConfig {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    let x = Tensor::from_vec(values(8 * 36, 0.9), [8, 1, 6, 6])
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let y = Tensor::from_vec(vec![0i64, 1, 2, 0, 1, 2, 0, 1], [8]).unwrap();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let logits = model.forward(&Var::constant(x.clone())).unwrap();
        let loss = cross_entropy(
            &logits,
            &Target::Indices(y.clone()),
            &CrossEntropyOptions::default(),
        )
        .unwrap();
        losses.push(loss.value().to_scalar::<f32>().unwrap());
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    assert!(losses[29] < 0.5 * losses[0], "{losses:?}");
    let p = model.parameters();
    assert_eq!(p[6].name(), "1.num_batches_tracked");
    assert_eq!(p[6].value().to_scalar::<i64>().unwrap(), 30);
    // The running mean is the momentum average of the conv output's batch means, not an
    // optimizer's doing: it is non-zero and finite.
    let rm = p[4].value().to_vec::<f32>().unwrap();
    assert!(rm.iter().all(|v| v.is_finite()) && rm.iter().any(|v| *v != 0.0));
}
