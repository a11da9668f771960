//! Property tests of convolution and pooling against naive reference definitions, and of their
//! backward passes through the adjoint identity `<f(x), g> == <x, f'(g)>` (exact for linear maps).

use kiln_tensor::ops::conv::{Conv2dParams, ConvParams, ConvTranspose2dParams};
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

fn v(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    v(a).iter().zip(v(b)).map(|(x, y)| x * y).sum()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

fn assert_scalar_close(a: f64, b: f64, scale: f64) {
    assert!((a - b).abs() <= 1e-10 * (1.0 + scale), "{a} vs {b}");
}

/// A random 2-D convolution problem whose kernel always fits the padded input.
#[derive(Clone, Debug)]
struct Case {
    n: usize,
    groups: usize,
    cig: usize,
    cog: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    p: Conv2dParams,
    bias: bool,
    seed: u64,
}

/// The smallest input length for which a kernel fits, plus `extra`.
fn fitting_len(k: usize, p: usize, d: usize, extra: usize) -> usize {
    (d * (k - 1) + 1).saturating_sub(2 * p).max(1) + extra
}

fn conv_case() -> impl Strategy<Value = Case> {
    (
        (1usize..=3, 1usize..=3, 1usize..=3, 1usize..=3),
        (1usize..=3, 1usize..=3),
        (1usize..=3, 1usize..=3),
        (0usize..=2, 0usize..=2),
        (1usize..=2, 1usize..=2),
        (0usize..=4, 0usize..=4),
        any::<bool>(),
        0u64..10_000,
    )
        .prop_map(
            |((n, groups, cig, cog), (kh, kw), stride, padding, dilation, (eh, ew), bias, seed)| Case {
                n,
                groups,
                cig,
                cog,
                h: fitting_len(kh, padding.0, dilation.0, eh),
                w: fitting_len(kw, padding.1, dilation.1, ew),
                kh,
                kw,
                p: Conv2dParams {
                    stride,
                    padding,
                    dilation,
                    groups,
                },
                bias,
                seed,
            },
        )
}

/// Direct convolution: seven nested loops over n, output channel, output y/x, input channel of the
/// group, kernel y/x.
fn naive_conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2dParams) -> (Vec<f64>, [usize; 4]) {
    let [n, c, h, wd] = x.dims4("t").unwrap();
    let [co, cig, kh, kw] = w.dims4("t").unwrap();
    let (xv, wv) = (v(x), v(w));
    let bv = b.map(v);
    let oh = (h + 2 * p.padding.0 - p.dilation.0 * (kh - 1) - 1) / p.stride.0 + 1;
    let ow = (wd + 2 * p.padding.1 - p.dilation.1 * (kw - 1) - 1) / p.stride.1 + 1;
    let cog = co / p.groups;
    let mut out = vec![0.0; n * co * oh * ow];
    for b_ in 0..n {
        for o in 0..co {
            let grp = o / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bv.as_ref().map_or(0.0, |bv| bv[o]);
                    for ci in 0..cig {
                        let cin = grp * cig + ci;
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let iy =
                                    (oy * p.stride.0 + ki * p.dilation.0) as isize - p.padding.0 as isize;
                                let ix =
                                    (ox * p.stride.1 + kj * p.dilation.1) as isize - p.padding.1 as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let (iy, ix) = (iy as usize, ix as usize);
                                acc += xv[((b_ * c + cin) * h + iy) * wd + ix]
                                    * wv[((o * cig + ci) * kh + ki) * kw + kj];
                            }
                        }
                    }
                    out[((b_ * co + o) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    (out, [n, co, oh, ow])
}

/// Transposed convolution by its scatter definition: every input pixel adds `x * w` into the output
/// window it maps to.
fn naive_conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: ConvTranspose2dParams,
) -> (Vec<f64>, [usize; 4]) {
    let [n, ci, h, wd] = x.dims4("t").unwrap();
    let [_, cog, kh, kw] = w.dims4("t").unwrap();
    let (xv, wv) = (v(x), v(w));
    let co = cog * p.groups;
    let cig = ci / p.groups;
    let oh = (h - 1) * p.stride.0 + p.dilation.0 * (kh - 1) + p.output_padding.0 + 1 - 2 * p.padding.0;
    let ow = (wd - 1) * p.stride.1 + p.dilation.1 * (kw - 1) + p.output_padding.1 + 1 - 2 * p.padding.1;
    let mut out = vec![0.0; n * co * oh * ow];
    if let Some(b) = b {
        let bv = v(b);
        for (i, o) in out.iter_mut().enumerate() {
            *o = bv[(i / (oh * ow)) % co];
        }
    }
    for b_ in 0..n {
        for c in 0..ci {
            let grp = c / cig;
            for iy in 0..h {
                for ix in 0..wd {
                    let xval = xv[((b_ * ci + c) * h + iy) * wd + ix];
                    for j in 0..cog {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let oy =
                                    (iy * p.stride.0 + ki * p.dilation.0) as isize - p.padding.0 as isize;
                                let ox =
                                    (ix * p.stride.1 + kj * p.dilation.1) as isize - p.padding.1 as isize;
                                if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                    continue;
                                }
                                let o = grp * cog + j;
                                out[((b_ * co + o) * oh + oy as usize) * ow + ox as usize] +=
                                    xval * wv[((c * cog + j) * kh + ki) * kw + kj];
                            }
                        }
                    }
                }
            }
        }
    }
    (out, [n, co, oh, ow])
}

fn case_tensors(c: &Case) -> (Tensor, Tensor, Option<Tensor>) {
    let x = rand_t(&[c.n, c.cig * c.groups, c.h, c.w], c.seed);
    let w = rand_t(&[c.cog * c.groups, c.cig, c.kh, c.kw], c.seed + 1);
    let b = c.bias.then(|| rand_t(&[c.cog * c.groups], c.seed + 2));
    (x, w, b)
}

/// A random transposed-convolution problem: output padding below the stride or the dilation.
fn transpose_case() -> impl Strategy<Value = (Case, (usize, usize))> {
    (conv_case(), (0usize..3, 0usize..3)).prop_filter_map("output would be empty", |(c, (oph, opw))| {
        let op = (
            oph % c.p.stride.0.max(c.p.dilation.0),
            opw % c.p.stride.1.max(c.p.dilation.1),
        );
        let len = |i: usize, k: usize, s: usize, p: usize, d: usize, o: usize| {
            ((i - 1) * s + d * (k - 1) + o + 1) as isize - 2 * p as isize
        };
        let ok = len(c.h, c.kh, c.p.stride.0, c.p.padding.0, c.p.dilation.0, op.0) > 0
            && len(c.w, c.kw, c.p.stride.1, c.p.padding.1, c.p.dilation.1, op.1) > 0;
        ok.then_some((c, op))
    })
}

fn transpose_params(c: &Case, output_padding: (usize, usize)) -> ConvTranspose2dParams {
    ConvTranspose2dParams {
        stride: c.p.stride,
        padding: c.p.padding,
        output_padding,
        dilation: c.p.dilation,
        groups: c.groups,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn conv2d_matches_direct_loops(c in conv_case()) {
        let (x, w, b) = case_tensors(&c);
        let (want, dims) = naive_conv2d(&x, &w, b.as_ref(), c.p);
        let y = x.conv2d(&w, b.as_ref(), c.p).unwrap();
        prop_assert_eq!(y.dims(), &dims);
        assert_close(&v(&y), &want, 1e-12);
        // f32 agrees with the f64 reference to f32 precision.
        let to32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let y32 = to32(&x).conv2d(&to32(&w), b.as_ref().map(to32).as_ref(), c.p).unwrap();
        prop_assert_eq!(y32.dtype(), DType::F32);
        assert_close(&y32.to_f64_vec(), &want, 1e-4);
    }

    #[test]
    fn conv2d_gradients_are_adjoints(c in conv_case()) {
        let (x, w, _) = case_tensors(&c);
        let y = x.conv2d(&w, None, c.p).unwrap();
        let g = rand_t(y.dims(), c.seed + 3);
        let lhs = dot(&y, &g);
        let gx = Tensor::conv2d_grad_input(&g, &w, (c.h, c.w), c.p).unwrap();
        prop_assert_eq!(gx.dims(), x.dims());
        let scale = v(&y).iter().chain(&v(&g)).map(|a| a.abs()).sum::<f64>();
        assert_scalar_close(lhs, dot(&x, &gx), scale);
        let wd = w.dims4("t").unwrap();
        let gw = Tensor::conv2d_grad_weight(&x, &g, wd, c.p).unwrap();
        prop_assert_eq!(gw.dims(), w.dims());
        assert_scalar_close(lhs, dot(&w, &gw), scale);
    }

    #[test]
    fn conv1d_matches_conv2d_of_height_one(c in conv_case()) {
        // Reuse the 2-D case's width parameters for a 1-D problem.
        let p = ConvParams { stride: c.p.stride.1, padding: c.p.padding.1, dilation: c.p.dilation.1, groups: c.groups };
        let x = rand_t(&[c.n, c.cig * c.groups, c.w], c.seed);
        let w = rand_t(&[c.cog * c.groups, c.cig, c.kw], c.seed + 1);
        let b = c.bias.then(|| rand_t(&[c.cog * c.groups], c.seed + 2));
        let y = x.conv1d(&w, b.as_ref(), p).unwrap();
        let (want, dims) = naive_conv2d(&x.unsqueeze(2).unwrap(), &w.unsqueeze(2).unwrap(), b.as_ref(), p.into());
        prop_assert_eq!(y.dims(), &[dims[0], dims[1], dims[3]]);
        assert_close(&v(&y), &want, 1e-12);
        // And its gradients are adjoints too.
        let y = x.conv1d(&w, None, p).unwrap();
        let g = rand_t(y.dims(), c.seed + 3);
        let lhs = dot(&y, &g);
        let scale = v(&y).iter().chain(&v(&g)).map(|a| a.abs()).sum::<f64>();
        let gx = Tensor::conv1d_grad_input(&g, &w, c.w, p).unwrap();
        assert_scalar_close(lhs, dot(&x, &gx), scale);
        let gw = Tensor::conv1d_grad_weight(&x, &g, [c.cog * c.groups, c.cig, c.kw], p).unwrap();
        assert_scalar_close(lhs, dot(&w, &gw), scale);
    }

    #[test]
    fn conv_transpose2d_matches_scatter_definition((c, op) in transpose_case()) {
        let p = transpose_params(&c, op);
        // Transposed weight: [C_in, C_out / groups, kH, kW] with C_in = cig * groups.
        let x = rand_t(&[c.n, c.cig * c.groups, c.h, c.w], c.seed);
        let w = rand_t(&[c.cig * c.groups, c.cog, c.kh, c.kw], c.seed + 1);
        let b = c.bias.then(|| rand_t(&[c.cog * c.groups], c.seed + 2));
        let (want, dims) = naive_conv_transpose2d(&x, &w, b.as_ref(), p);
        let y = x.conv_transpose2d(&w, b.as_ref(), p).unwrap();
        prop_assert_eq!(y.dims(), &dims);
        assert_close(&v(&y), &want, 1e-12);
    }

    #[test]
    fn conv_transpose2d_gradients_are_adjoints((c, op) in transpose_case()) {
        let p = transpose_params(&c, op);
        let x = rand_t(&[c.n, c.cig * c.groups, c.h, c.w], c.seed);
        let w = rand_t(&[c.cig * c.groups, c.cog, c.kh, c.kw], c.seed + 1);
        let y = x.conv_transpose2d(&w, None, p).unwrap();
        let g = rand_t(y.dims(), c.seed + 3);
        let lhs = dot(&y, &g);
        let scale = v(&y).iter().chain(&v(&g)).map(|a| a.abs()).sum::<f64>();
        let gx = Tensor::conv_transpose2d_grad_input(&g, &w, p).unwrap();
        prop_assert_eq!(gx.dims(), x.dims());
        assert_scalar_close(lhs, dot(&x, &gx), scale);
        let gw = Tensor::conv_transpose2d_grad_weight(&x, &g, w.dims4("t").unwrap(), p).unwrap();
        prop_assert_eq!(gw.dims(), w.dims());
        assert_scalar_close(lhs, dot(&w, &gw), scale);
        // Without output padding, the input gradient is exactly conv2d of grad_out with the same weight.
        if op == (0, 0) {
            let cp = Conv2dParams { stride: p.stride, padding: p.padding, dilation: p.dilation, groups: p.groups };
            assert_close(&v(&gx), &v(&g.conv2d(&w, None, cp).unwrap()), 1e-12);
        }
    }
}

/// A random pooling problem: kernel, stride, padding (at most half the kernel) and a fitting input.
#[derive(Clone, Debug)]
struct PoolCase {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: (usize, usize),
    s: (usize, usize),
    p: (usize, usize),
    seed: u64,
}

fn pool_case() -> impl Strategy<Value = PoolCase> {
    (
        (1usize..=2, 1usize..=3),
        (1usize..=4, 1usize..=4),
        (1usize..=3, 1usize..=3),
        (0usize..=2, 0usize..=2),
        (0usize..=4, 0usize..=4),
        0u64..10_000,
    )
        .prop_map(|((n, c), k, s, (ph, pw), (eh, ew), seed)| {
            let p = (ph.min(k.0 / 2), pw.min(k.1 / 2));
            PoolCase {
                n,
                c,
                h: fitting_len(k.0, p.0, 1, eh),
                w: fitting_len(k.1, p.1, 1, ew),
                k,
                s,
                p,
                seed,
            }
        })
}

/// Windows of a pool, each as the list of in-bounds flat positions in the plane, plus the padded
/// window size.
fn windows(c: &PoolCase) -> (usize, usize, Vec<(Vec<usize>, usize)>) {
    let oh = (c.h + 2 * c.p.0 - c.k.0) / c.s.0 + 1;
    let ow = (c.w + 2 * c.p.1 - c.k.1) / c.s.1 + 1;
    let mut out = vec![];
    for oy in 0..oh {
        for ox in 0..ow {
            let mut pos = vec![];
            for ky in 0..c.k.0 {
                for kx in 0..c.k.1 {
                    let y = (oy * c.s.0 + ky) as isize - c.p.0 as isize;
                    let x = (ox * c.s.1 + kx) as isize - c.p.1 as isize;
                    if y >= 0 && x >= 0 && (y as usize) < c.h && (x as usize) < c.w {
                        pos.push(y as usize * c.w + x as usize);
                    }
                }
            }
            out.push((pos, c.k.0 * c.k.1));
        }
    }
    (oh, ow, out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn max_pool_matches_naive_and_backward_is_adjoint(c in pool_case()) {
        let x = rand_t(&[c.n, c.c, c.h, c.w], c.seed);
        let (y, idx) = x.max_pool2d_with_indices(c.k, c.s, c.p).unwrap();
        let (oh, ow, wins) = windows(&c);
        prop_assert_eq!(y.dims(), &[c.n, c.c, oh, ow]);
        let (xv, yv, iv) = (v(&x), v(&y), idx.to_vec::<i64>().unwrap());
        for plane in 0..c.n * c.c {
            for (o, (pos, _)) in wins.iter().enumerate() {
                let want = pos.iter().map(|&p| xv[plane * c.h * c.w + p]).fold(f64::NEG_INFINITY, f64::max);
                let at = plane * oh * ow + o;
                prop_assert_eq!(yv[at], want);
                prop_assert!(pos.contains(&(iv[at] as usize)));
                prop_assert_eq!(xv[plane * c.h * c.w + iv[at] as usize], want);
            }
        }
        prop_assert_eq!(v(&x.max_pool2d(c.k, c.s, c.p).unwrap()), yv);
        let g = rand_t(y.dims(), c.seed + 1);
        let gx = Tensor::max_pool2d_backward(&g, &idx, [c.n, c.c, c.h, c.w]).unwrap();
        assert_scalar_close(dot(&y, &g), dot(&x, &gx), 1.0);
    }

    #[test]
    fn avg_pool_matches_naive_and_backward_is_adjoint(c in pool_case(), include in any::<bool>()) {
        let x = rand_t(&[c.n, c.c, c.h, c.w], c.seed);
        let y = x.avg_pool2d(c.k, c.s, c.p, include).unwrap();
        let (oh, ow, wins) = windows(&c);
        prop_assert_eq!(y.dims(), &[c.n, c.c, oh, ow]);
        let xv = x.to_vec::<f64>().unwrap();
        let mut want = vec![];
        for plane in 0..c.n * c.c {
            for (pos, padded) in &wins {
                let sum: f64 = pos.iter().map(|&p| xv[plane * c.h * c.w + p]).sum();
                want.push(sum / if include { *padded } else { pos.len() } as f64);
            }
        }
        assert_close(&v(&y), &want, 1e-12);
        let g = rand_t(y.dims(), c.seed + 1);
        let gx = Tensor::avg_pool2d_backward(&g, [c.n, c.c, c.h, c.w], c.k, c.s, c.p, include).unwrap();
        assert_scalar_close(dot(&y, &g), dot(&x, &gx), 1.0);
    }

    #[test]
    fn adaptive_avg_pool_matches_bins_and_backward_is_adjoint(
        (n, ch, h, w) in (1usize..=2, 1usize..=3, 1usize..=9, 1usize..=9),
        (oh, ow) in (1usize..=9, 1usize..=9),
        seed in 0u64..10_000,
    ) {
        let x = rand_t(&[n, ch, h, w], seed);
        let y = x.adaptive_avg_pool2d((oh, ow)).unwrap();
        prop_assert_eq!(y.dims(), &[n, ch, oh, ow]);
        let xv = v(&x);
        let mut want = vec![];
        for plane in 0..n * ch {
            for oy in 0..oh {
                let (y0, y1) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
                for ox in 0..ow {
                    let (x0, x1) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
                    let mut sum = 0.0;
                    for yy in y0..y1 {
                        for xx in x0..x1 {
                            sum += xv[plane * h * w + yy * w + xx];
                        }
                    }
                    want.push(sum / ((y1 - y0) * (x1 - x0)) as f64);
                }
            }
        }
        assert_close(&v(&y), &want, 1e-12);
        let g = rand_t(y.dims(), seed + 1);
        let gx = Tensor::adaptive_avg_pool2d_backward(&g, [n, ch, h, w]).unwrap();
        assert_scalar_close(dot(&y, &g), dot(&x, &gx), 1.0);
    }

    #[test]
    fn upsample_nearest_matches_floor_and_backward_is_adjoint(
        (n, ch, h, w) in (1usize..=2, 1usize..=3, 1usize..=6, 1usize..=6),
        (oh, ow) in (1usize..=12, 1usize..=12),
        seed in 0u64..10_000,
    ) {
        let x = rand_t(&[n, ch, h, w], seed);
        let y = x.upsample_nearest2d((oh, ow)).unwrap();
        prop_assert_eq!(y.dims(), &[n, ch, oh, ow]);
        // For sizes this small PyTorch's f32 scale agrees with exact floor(dst * in / out).
        let xv = v(&x);
        let mut want = vec![];
        for plane in 0..n * ch {
            for oy in 0..oh {
                for ox in 0..ow {
                    want.push(xv[plane * h * w + (oy * h / oh) * w + ox * w / ow]);
                }
            }
        }
        prop_assert_eq!(v(&y), want);
        let g = rand_t(y.dims(), seed + 1);
        let gx = Tensor::upsample_nearest2d_backward(&g, [n, ch, h, w]).unwrap();
        assert_scalar_close(dot(&y, &g), dot(&x, &gx), 1.0);
    }
}
