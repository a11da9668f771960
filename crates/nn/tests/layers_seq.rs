//! Sequence layers: LSTM / GRU (against a plain reference, gradient checks; the real pretrained
//! textgenrnn weights are tested with the model in `models/lstm`), multi-head attention (against
//! the explicit per-head formula), transformer layers (against a hand composition) and position
//! encodings (hand-checked values, RoPE laws).

use std::collections::HashMap;

use kiln_autograd::{gradcheck, GradcheckOptions, Var};
use kiln_nn::layers::{
    causal_mask, gru_recurrence, lstm_recurrence, sinusoidal_table, split_packed_attention_weights,
    Activation, AttentionConfig, DecoderMasks, Gru, GruCell, LearnedPositionalEmbedding, Lstm, LstmCell,
    MultiHeadAttention, RnnConfig, RotaryEmbedding, SinusoidalPositionalEncoding, TransformerConfig,
    TransformerDecoderLayer, TransformerEncoderLayer,
};
use kiln_nn::{Error, Module, Param, Scope};
use kiln_tensor::ops::binary::CmpOp;
use kiln_tensor::{DType, Device, Tensor, TensorRng};

// ---------------------------------------------------------------- helpers

const CPU: Device = Device::Cpu;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(
        shape.to_vec(),
        0.0,
        1.0,
        DType::F64,
        CPU,
        &mut TensorRng::new(seed),
    )
    .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(
        a.elem_count(),
        b.elem_count(),
        "{:?} vs {:?}",
        a.shape(),
        b.shape()
    );
    a.to_f64_vec()
        .iter()
        .zip(b.to_f64_vec())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
}

fn param(m: &dyn Module, name: &str) -> Param {
    m.parameters()
        .into_iter()
        .find(|p| p.name() == name)
        .unwrap_or_else(|| panic!("no parameter {name}"))
}

fn pv(m: &dyn Module, name: &str) -> Vec<f64> {
    param(m, name).value().to_f64_vec()
}

fn autograd_err(e: Error) -> kiln_autograd::Error {
    kiln_autograd::Error::Invalid {
        op: "test",
        reason: e.to_string(),
    }
}

fn invalid_mentions(r: kiln_nn::Result<impl Sized>, words: &[&str]) {
    match r {
        Err(e @ Error::Invalid { .. }) => {
            let msg = e.to_string();
            for w in words {
                assert!(msg.contains(w), "error {msg:?} should mention {w:?}");
            }
        }
        Err(e) => panic!("expected Error::Invalid, got {e}"),
        Ok(_) => panic!("expected an error mentioning {words:?}"),
    }
}

/// Compare analytic parameter gradients of `loss` with central differences on a few entries.
fn check_param_grads(params: &[Param], loss: impl Fn() -> Var, picks: usize, tol: f64) {
    let grads = loss().backward().unwrap();
    let analytic: Vec<Vec<f64>> = params
        .iter()
        .map(|p| {
            p.grad(&grads)
                .unwrap_or_else(|| panic!("no gradient for {}", p.name()))
                .to_f64_vec()
        })
        .collect();
    let eps = 1e-6;
    let mut rng = TensorRng::new(99);
    for (p, g) in params.iter().zip(&analytic) {
        let v = p.value();
        let base = v.to_f64_vec();
        for _ in 0..picks {
            let k = rng.next_below(base.len() as u64) as usize;
            let eval = |delta: f64| {
                let mut w = base.clone();
                w[k] += delta;
                p.set_value(Tensor::from_vec(w, v.shape().clone()).unwrap());
                loss().value().to_scalar::<f64>().unwrap()
            };
            let num = (eval(eps) - eval(-eps)) / (2.0 * eps);
            p.set_value(v.clone());
            assert!(
                (num - g[k]).abs() <= tol * (1.0 + num.abs()),
                "{}[{k}]: analytic {} vs numeric {num}",
                p.name(),
                g[k]
            );
        }
    }
}

// ---------------------------------------------------------------- plain RNN reference

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `W x + b` for a row-major `[rows, x.len()]` matrix.
fn affine(w: &[f64], x: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let cols = x.len();
    (0..w.len() / cols)
        .map(|r| {
            let s: f64 = (0..cols).map(|c| w[r * cols + c] * x[c]).sum();
            s + b.map_or(0.0, |b| b[r])
        })
        .collect()
}

type Seq = Vec<Vec<Vec<f64>>>; // [t][b][features] or [layer*dir][b][H]

/// nn.LSTM / nn.GRU written out with loops, reading the module's parameters by name.
fn ref_rnn(
    m: &dyn Module,
    gru: bool,
    cfg: &RnnConfig,
    x: &Seq,
    h0: Option<&Seq>,
    c0: Option<&Seq>,
) -> (Seq, Seq, Seq) {
    ref_rnn_with(m, gru, cfg, x, h0, c0, sig)
}

/// [`ref_rnn`] with a chosen gate function (the logistic sigmoid, or Keras' `hard_sigmoid`).
fn ref_rnn_with(
    m: &dyn Module,
    gru: bool,
    cfg: &RnnConfig,
    x: &Seq,
    h0: Option<&Seq>,
    c0: Option<&Seq>,
    sig: fn(f64) -> f64,
) -> (Seq, Seq, Seq) {
    let (hid, dirs, t_len, b) = (cfg.hidden_size, cfg.num_directions(), x.len(), x[0].len());
    let mut input = x.clone();
    let n = cfg.num_layers * dirs;
    let mut hn = vec![vec![vec![0.0; hid]; b]; n];
    let mut cn = hn.clone();
    for l in 0..cfg.num_layers {
        let mut out = vec![vec![vec![0.0; dirs * hid]; b]; t_len];
        for d in 0..dirs {
            let sfx = format!("_l{l}{}", if d == 1 { "_reverse" } else { "" });
            let wih = pv(m, &format!("weight_ih{sfx}"));
            let whh = pv(m, &format!("weight_hh{sfx}"));
            let (bih, bhh) = if cfg.bias {
                (
                    Some(pv(m, &format!("bias_ih{sfx}"))),
                    Some(pv(m, &format!("bias_hh{sfx}"))),
                )
            } else {
                (None, None)
            };
            let k = l * dirs + d;
            for bi in 0..b {
                let mut h = h0.map_or(vec![0.0; hid], |s| s[k][bi].clone());
                let mut c = c0.map_or(vec![0.0; hid], |s| s[k][bi].clone());
                for s in 0..t_len {
                    let t = if d == 1 { t_len - 1 - s } else { s };
                    let gi = affine(&wih, &input[t][bi], bih.as_deref());
                    let gh = affine(&whh, &h, bhh.as_deref());
                    if gru {
                        h = (0..hid)
                            .map(|j| {
                                let r = sig(gi[j] + gh[j]);
                                let z = sig(gi[hid + j] + gh[hid + j]);
                                let nn = (gi[2 * hid + j] + r * gh[2 * hid + j]).tanh();
                                (1.0 - z) * nn + z * h[j]
                            })
                            .collect();
                    } else {
                        let g = |q: usize, j: usize| gi[q * hid + j] + gh[q * hid + j];
                        c = (0..hid)
                            .map(|j| sig(g(1, j)) * c[j] + sig(g(0, j)) * g(2, j).tanh())
                            .collect();
                        h = (0..hid).map(|j| sig(g(3, j)) * c[j].tanh()).collect();
                    }
                    out[t][bi][d * hid..(d + 1) * hid].copy_from_slice(&h);
                }
                hn[k][bi] = h;
                cn[k][bi] = c;
            }
        }
        input = out;
    }
    (input, hn, cn)
}

/// `[d0, d1, d2]` tensor as nested vectors; `swap01` reads it as `[d1][d0]`.
fn nested(t: &Tensor, swap01: bool) -> Seq {
    let d = t.dims();
    let v = t.to_f64_vec();
    let (a, b, c) = (d[0], d[1], d[2]);
    let at = |i: usize, j: usize| v[(i * b + j) * c..(i * b + j + 1) * c].to_vec();
    if swap01 {
        (0..b).map(|j| (0..a).map(|i| at(i, j)).collect()).collect()
    } else {
        (0..a).map(|i| (0..b).map(|j| at(i, j)).collect()).collect()
    }
}

fn flat(s: &Seq) -> Vec<f64> {
    s.iter().flatten().flatten().copied().collect()
}

// ---------------------------------------------------------------- LSTM / GRU

#[test]
fn lstm_matches_plain_reference_multilayer_bidirectional_batch_first_with_state() {
    for (bidir, batch_first, bias) in [(true, true, true), (false, false, true), (true, false, false)] {
        let cfg = RnnConfig::new(3, 4)
            .num_layers(2)
            .bidirectional(bidir)
            .batch_first(batch_first)
            .bias(bias);
        let lstm = Lstm::new(Scope::init(7, DType::F64, CPU), cfg.clone()).unwrap();
        let (b, t) = (2, 5);
        let n = 2 * cfg.num_directions();
        let x = if batch_first {
            randn(&[b, t, 3], 1)
        } else {
            randn(&[t, b, 3], 1)
        };
        let (h0, c0) = (randn(&[n, b, 4], 2), randn(&[n, b, 4], 3));
        let (out, (hn, cn)) = lstm
            .forward_with_state(
                &Var::constant(x.clone()),
                Some((&Var::constant(h0.clone()), &Var::constant(c0.clone()))),
            )
            .unwrap();
        let x_tm = nested(&x, batch_first);
        let (r_out, r_hn, r_cn) = ref_rnn(
            &lstm,
            false,
            &cfg,
            &x_tm,
            Some(&nested(&h0, false)),
            Some(&nested(&c0, false)),
        );
        let out_tm = if batch_first {
            out.value().transpose(0, 1).unwrap().contiguous().unwrap()
        } else {
            out.value().clone()
        };
        assert_eq!(out_tm.dims(), &[t, b, 4 * cfg.num_directions()]);
        assert_eq!(hn.dims(), &[n, b, 4]);
        assert_close(
            &out_tm,
            &Tensor::from_vec(flat(&r_out), out_tm.shape().clone()).unwrap(),
            1e-12,
            "output",
        );
        assert_close(
            &hn.value().clone(),
            &Tensor::from_vec(flat(&r_hn), [n, b, 4]).unwrap(),
            1e-12,
            "h_n",
        );
        assert_close(
            &cn.value().clone(),
            &Tensor::from_vec(flat(&r_cn), [n, b, 4]).unwrap(),
            1e-12,
            "c_n",
        );
    }
}

#[test]
fn gru_matches_plain_reference_multilayer_bidirectional() {
    let cfg = RnnConfig::new(3, 5)
        .num_layers(2)
        .bidirectional(true)
        .batch_first(true);
    let gru = Gru::new(Scope::init(8, DType::F64, CPU), cfg.clone()).unwrap();
    let x = randn(&[3, 6, 3], 4);
    let h0 = randn(&[4, 3, 5], 5);
    let (out, hn) = gru
        .forward_with_state(&Var::constant(x.clone()), Some(&Var::constant(h0.clone())))
        .unwrap();
    let (r_out, r_hn, _) = ref_rnn(
        &gru,
        true,
        &cfg,
        &nested(&x, true),
        Some(&nested(&h0, false)),
        None,
    );
    let out_tm = out.value().transpose(0, 1).unwrap().contiguous().unwrap();
    assert_close(
        &out_tm,
        &Tensor::from_vec(flat(&r_out), [6, 3, 10]).unwrap(),
        1e-12,
        "gru output",
    );
    assert_close(
        &hn.value().clone(),
        &Tensor::from_vec(flat(&r_hn), [4, 3, 5]).unwrap(),
        1e-12,
        "gru h_n",
    );
    // Zero initial state by default.
    let (_, hn0) = gru.forward_with_state(&Var::constant(x.clone()), None).unwrap();
    let (_, r_hn0, _) = ref_rnn(&gru, true, &cfg, &nested(&x, true), None, None);
    assert_close(
        &hn0.value().clone(),
        &Tensor::from_vec(flat(&r_hn0), [4, 3, 5]).unwrap(),
        1e-12,
        "h_n, zero h0",
    );
}

#[test]
fn parameter_names_shapes_and_init_follow_pytorch() {
    let lstm = Lstm::new(
        Scope::init(0, DType::F32, CPU).sub("rnn"),
        RnnConfig::new(10, 20).num_layers(2).bidirectional(true),
    )
    .unwrap();
    let got: Vec<(String, Vec<usize>)> = lstm
        .parameters()
        .iter()
        .map(|p| (p.name().to_string(), p.value().dims().to_vec()))
        .collect();
    let mut want = Vec::new();
    for l in 0..2 {
        for sfx in ["", "_reverse"] {
            let input = if l == 0 { 10 } else { 40 };
            want.push((format!("rnn.weight_ih_l{l}{sfx}"), vec![80, input]));
            want.push((format!("rnn.weight_hh_l{l}{sfx}"), vec![80, 20]));
            want.push((format!("rnn.bias_ih_l{l}{sfx}"), vec![80]));
            want.push((format!("rnn.bias_hh_l{l}{sfx}"), vec![80]));
        }
    }
    assert_eq!(got, want);
    let bound = 1.0 / 20f64.sqrt();
    for p in lstm.parameters() {
        assert!(
            p.value().to_f64_vec().iter().all(|v| v.abs() <= bound),
            "{} outside ±1/√H",
            p.name()
        );
    }
    let gru = Gru::new(Scope::init(0, DType::F32, CPU), RnnConfig::new(10, 20)).unwrap();
    let dims: Vec<Vec<usize>> = gru
        .parameters()
        .iter()
        .map(|p| p.value().dims().to_vec())
        .collect();
    assert_eq!(dims, vec![vec![60, 10], vec![60, 20], vec![60], vec![60]]);
    let cell = LstmCell::new(Scope::init(0, DType::F32, CPU), 3, 4, true).unwrap();
    let names: Vec<String> = cell.parameters().iter().map(|p| p.name().to_string()).collect();
    assert_eq!(names, ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]);
}

#[test]
fn fused_recurrences_pass_gradcheck_in_both_directions() {
    let (t, b, h) = (4, 2, 3);
    for reverse in [false, true] {
        let inputs = [
            randn(&[t, b, 4 * h], 10),
            randn(&[4 * h, h], 11).mul_scalar(0.5).unwrap(),
            randn(&[b, h], 12),
            randn(&[b, h], 13),
        ];
        gradcheck(
            |v| lstm_recurrence(&v[0], &v[1], &v[2], &v[3], reverse).map_err(autograd_err),
            &inputs,
            GradcheckOptions::default(),
        )
        .unwrap();
        let inputs = [
            randn(&[t, b, 3 * h], 14),
            randn(&[3 * h, h], 15).mul_scalar(0.5).unwrap(),
            randn(&[b, h], 16),
            randn(&[3 * h], 17),
        ];
        gradcheck(
            |v| gru_recurrence(&v[0], &v[1], Some(&v[3]), &v[2], reverse).map_err(autograd_err),
            &inputs,
            GradcheckOptions::default(),
        )
        .unwrap();
        gradcheck(
            |v| gru_recurrence(&v[0], &v[1], None, &v[2], reverse).map_err(autograd_err),
            &inputs[..3],
            GradcheckOptions::default(),
        )
        .unwrap();
    }
}

#[test]
fn lstm_and_gru_gradients_reach_inputs_states_and_every_parameter() {
    let cfg = RnnConfig::new(3, 4)
        .num_layers(2)
        .bidirectional(true)
        .batch_first(true);
    let lstm = Lstm::new(Scope::init(3, DType::F64, CPU), cfg.clone()).unwrap();
    // Inputs and initial states.
    let inputs = [
        randn(&[2, 4, 3], 20),
        randn(&[4, 2, 4], 21),
        randn(&[4, 2, 4], 22),
    ];
    gradcheck(
        |v| {
            let (out, (hn, cn)) = lstm
                .forward_with_state(&v[0], Some((&v[1], &v[2])))
                .map_err(autograd_err)?;
            // Every output feeds the check: the sequence and both final states.
            Var::cat(&[out.flatten_all()?, hn.flatten_all()?, cn.flatten_all()?], 0)
        },
        &inputs,
        GradcheckOptions::default(),
    )
    .unwrap();
    // Parameters, by central differences through the whole module.
    let x = Var::constant(randn(&[2, 4, 3], 23));
    let w = Var::constant(randn(&[2, 4, 8], 24));
    let loss = || {
        let (out, (hn, cn)) = lstm.forward_with_state(&x, None).unwrap();
        out.mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .add(
                &hn.sum_all()
                    .unwrap()
                    .add(&cn.sqr().unwrap().sum_all().unwrap())
                    .unwrap(),
            )
            .unwrap()
    };
    check_param_grads(&lstm.parameters(), loss, 3, 1e-6);
    let gru = Gru::new(Scope::init(4, DType::F64, CPU), cfg).unwrap();
    let loss = || {
        let (out, hn) = gru.forward_with_state(&x, None).unwrap();
        out.mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .add(&hn.sum_all().unwrap())
            .unwrap()
    };
    check_param_grads(&gru.parameters(), loss, 3, 1e-6);
}

#[test]
fn cells_match_the_sequence_layers_step_by_step() {
    let lstm = Lstm::new(Scope::init(5, DType::F64, CPU), RnnConfig::new(3, 4)).unwrap();
    let gru = Gru::new(Scope::init(6, DType::F64, CPU), RnnConfig::new(3, 4)).unwrap();
    let rename = |m: &dyn Module| -> HashMap<String, Tensor> {
        m.parameters()
            .iter()
            .map(|p| (p.name().trim_end_matches("_l0").to_string(), p.value()))
            .collect()
    };
    let lcell = LstmCell::new(
        Scope::from_tensors(rename(&lstm), true, 0, DType::F64, CPU),
        3,
        4,
        true,
    )
    .unwrap();
    let gcell = GruCell::new(
        Scope::from_tensors(rename(&gru), true, 0, DType::F64, CPU),
        3,
        4,
        true,
    )
    .unwrap();
    let x = randn(&[6, 2, 3], 30);
    let (out, (hn, cn)) = lstm.forward_with_state(&Var::constant(x.clone()), None).unwrap();
    let gout = gru.forward(&Var::constant(x.clone())).unwrap();
    let (mut h, mut c) = (
        Var::constant(Tensor::zeros([2, 4], DType::F64, CPU).unwrap()),
        None::<Var>,
    );
    let mut gh = h.clone();
    for t in 0..6 {
        let xt = Var::constant(x.narrow(0, t, 1).unwrap().squeeze(0).unwrap());
        let state = c.as_ref().map(|c| (&h, c));
        let (h2, c2) = lcell.forward_with_state(&xt, state).unwrap();
        assert_close(
            h2.value(),
            &out.value().narrow(0, t, 1).unwrap(),
            1e-14,
            "LstmCell step",
        );
        (h, c) = (h2, Some(c2));
        gh = gcell.forward_with_state(&xt, Some(&gh)).unwrap();
        assert_close(
            gh.value(),
            &gout.value().narrow(0, t, 1).unwrap(),
            1e-14,
            "GruCell step",
        );
    }
    assert_close(h.value(), hn.value(), 1e-14, "h_n");
    assert_close(c.unwrap().value(), cn.value(), 1e-14, "c_n");
    // Unbatched forms: [T, in] for the layers, [in] for the cells.
    let x0 = x.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let (u_out, (u_hn, _)) = lstm.forward_with_state(&Var::constant(x0.clone()), None).unwrap();
    assert_eq!((u_out.dims(), u_hn.dims()), (&[6, 4][..], &[1, 4][..]));
    assert_close(
        u_out.value(),
        &out.value().narrow(1, 0, 1).unwrap(),
        1e-14,
        "unbatched lstm",
    );
    let (h1, c1) = lcell
        .forward_with_state(
            &Var::constant(x0.narrow(0, 0, 1).unwrap().squeeze(0).unwrap()),
            None,
        )
        .unwrap();
    assert_eq!((h1.dims(), c1.dims()), (&[4][..], &[4][..]));
}

#[test]
fn dropout_between_layers_only_in_training_and_seeded() {
    let cfg = RnnConfig::new(3, 8).num_layers(3).dropout(0.5);
    let make = || Lstm::new(Scope::init(9, DType::F64, CPU), cfg.clone()).unwrap();
    let plain = Lstm::new(Scope::init(9, DType::F64, CPU), cfg.clone().dropout(0.0)).unwrap();
    let (a, b) = (make(), make());
    let x = Var::constant(randn(&[5, 2, 3], 31));
    let ya = a.forward(&x).unwrap();
    assert_close(
        ya.value(),
        b.forward(&x).unwrap().value(),
        0.0,
        "same seed, same masks",
    );
    assert!(
        max_abs_diff(ya.value(), plain.forward(&x).unwrap().value()) > 1e-3,
        "training applies dropout"
    );
    assert!(
        max_abs_diff(ya.value(), a.forward(&x).unwrap().value()) > 0.0,
        "fresh masks per call"
    );
    // Restoring the dropout generator repeats the masks (what an exact resume needs).
    let (key, pos) = b.dropout().unwrap().rng_state();
    let yb = b.forward(&x).unwrap();
    b.dropout().unwrap().set_rng_state(key, pos);
    assert_close(yb.value(), b.forward(&x).unwrap().value(), 0.0, "restored masks");
    assert!(plain.dropout().is_none());
    a.set_training(false);
    assert_close(
        a.forward(&x).unwrap().value(),
        plain.forward(&x).unwrap().value(),
        0.0,
        "eval: no dropout",
    );
}

#[test]
fn long_sequences_backpropagate_without_deep_graphs() {
    // 5000 steps: the fused recurrence adds a handful of nodes per layer, and the backward pass
    // runs on a test thread's default stack.
    let cfg = RnnConfig::new(4, 8)
        .num_layers(2)
        .batch_first(true)
        .bidirectional(true);
    let lstm = Lstm::new(Scope::init(1, DType::F32, CPU), cfg.clone()).unwrap();
    let gru = Gru::new(Scope::init(2, DType::F32, CPU), cfg).unwrap();
    let x = Var::parameter(randn(&[2, 5000, 4], 40).to_dtype(DType::F32).unwrap());
    for m in [&lstm as &dyn Module, &gru] {
        let loss = m.forward(&x).unwrap().mean_all().unwrap();
        let g = loss.backward().unwrap();
        assert!(g.get(&x).unwrap().to_f64_vec().iter().all(|v| v.is_finite()));
        for p in m.parameters() {
            let gp = p.grad(&g).unwrap().to_f64_vec();
            assert!(
                gp.iter().all(|v| v.is_finite()) && gp.iter().any(|v| *v != 0.0),
                "{}",
                p.name()
            );
        }
    }
}

#[test]
fn recurrent_shape_errors_name_the_layer_and_shapes() {
    let lstm = Lstm::new(
        Scope::init(0, DType::F32, CPU),
        RnnConfig::new(3, 4).num_layers(2),
    )
    .unwrap();
    let x = |d: &[usize]| Var::constant(Tensor::zeros(d.to_vec(), DType::F32, CPU).unwrap());
    invalid_mentions(
        lstm.forward(&x(&[5, 2, 7])),
        &["Lstm", "[5, 2, 7]", "input_size = 3"],
    );
    invalid_mentions(lstm.forward(&x(&[1, 5, 2, 3])), &["Lstm", "[1, 5, 2, 3]"]);
    invalid_mentions(lstm.forward(&x(&[0, 2, 3])), &["Lstm", "[0, 2, 3]"]);
    let (h, c) = (x(&[1, 2, 4]), x(&[2, 2, 4]));
    invalid_mentions(
        lstm.forward_with_state(&x(&[5, 2, 3]), Some((&h, &c))),
        &["Lstm", "h_0", "[2, 2, 4]", "[1, 2, 4]"],
    );
    let gru = Gru::new(Scope::init(0, DType::F32, CPU), RnnConfig::new(3, 4)).unwrap();
    invalid_mentions(
        gru.forward_with_state(&x(&[5, 2, 3]), Some(&x(&[1, 3, 4]))),
        &["Gru", "[1, 3, 4]"],
    );
    let cell = GruCell::new(Scope::init(0, DType::F32, CPU), 3, 4, true).unwrap();
    invalid_mentions(cell.forward(&x(&[2, 5])), &["GruCell", "[2, 5]"]);
    invalid_mentions(
        Lstm::new(Scope::init(0, DType::F32, CPU), RnnConfig::new(3, 4).dropout(1.5)),
        &["Lstm", "dropout"],
    );
    invalid_mentions(
        lstm_recurrence(&x(&[2, 1, 8]), &x(&[8, 3]), &x(&[1, 2]), &x(&[1, 2]), false),
        &["lstm_recurrence", "w_hh", "[8, 2]", "[8, 3]"],
    );
}

// ---------------------------------------------------------------- attention

/// The explicit formula with plain tensor ops, one head at a time: per head `h`,
/// `softmax(Q_h K_hᵀ / √d + mask) V_h` with `Q_h = q W_q[h]ᵀ + b_q[h]`, ...; then `out_proj`.
/// `blocked` is a 0/1 mask `[B, Tq, Tk]`, `additive` a float mask `[Tq, Tk]`. Returns the
/// output `[B, Tq, E]` and the per-head weights `[B, H, Tq, Tk]`.
fn explicit_attention(
    m: &dyn Module,
    prefix: &str,
    heads: usize,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    blocked: Option<&Tensor>,
    additive: Option<&Tensor>,
) -> (Tensor, Tensor) {
    let p = |n: &str| param(m, &format!("{prefix}{n}")).value();
    let (b, e) = (q.dims()[0], q.dims()[2]);
    let dh = e / heads;
    let mut outs = Vec::new();
    let mut weights = Vec::new();
    for bi in 0..b {
        let row = |t: &Tensor| t.narrow(0, bi, 1).unwrap().squeeze(0).unwrap();
        let (qb, kb, vb) = (row(q), row(k), row(v));
        let mut head_outs = Vec::new();
        let mut head_w = Vec::new();
        for h in 0..heads {
            let proj = |x: &Tensor, name: &str| {
                let w = p(&format!("{name}.weight")).narrow(0, h * dh, dh).unwrap();
                let bias = p(&format!("{name}.bias")).narrow(0, h * dh, dh).unwrap();
                x.matmul(&w.t().unwrap()).unwrap().add(&bias).unwrap()
            };
            let (qh, kh, vh) = (proj(&qb, "q_proj"), proj(&kb, "k_proj"), proj(&vb, "v_proj"));
            let mut s = qh
                .matmul(&kh.t().unwrap())
                .unwrap()
                .mul_scalar(1.0 / (dh as f64).sqrt())
                .unwrap();
            if let Some(a) = additive {
                s = s.add(a).unwrap();
            }
            if let Some(bm) = blocked {
                s = s.masked_fill(&row(bm), f64::NEG_INFINITY).unwrap();
            }
            let pr = s.softmax(1).unwrap();
            head_outs.push(pr.matmul(&vh).unwrap());
            head_w.push(pr);
        }
        let o = Tensor::cat(&head_outs, 1).unwrap();
        outs.push(
            o.matmul(&p("out_proj.weight").t().unwrap())
                .unwrap()
                .add(&p("out_proj.bias"))
                .unwrap(),
        );
        weights.push(Tensor::stack(&head_w, 0).unwrap());
    }
    (
        Tensor::stack(&outs, 0).unwrap(),
        Tensor::stack(&weights, 0).unwrap(),
    )
}

/// A random 0/1 `u8` mask that leaves every query at least one key (column 0 stays open).
fn random_mask(shape: &[usize], seed: u64) -> Tensor {
    let r = randn(shape, seed).cmp_scalar(0.5, CmpOp::Gt).unwrap();
    let k = *shape.last().unwrap();
    let keep_first: Vec<u8> = (0..r.elem_count()).map(|i| u8::from(i % k != 0)).collect();
    r.mul(&Tensor::from_vec(keep_first, shape.to_vec()).unwrap())
        .unwrap()
}

#[test]
fn multi_head_attention_matches_the_explicit_formula() {
    let (b, tq, tk, e, h) = (2, 4, 5, 8, 2);
    let scope = Scope::init(11, DType::F64, CPU);
    let mha = MultiHeadAttention::new(scope, AttentionConfig::new(e, h).kv_dims(6, 3)).unwrap();
    // Biases start at zero (PyTorch); randomise them so the test sees them.
    for p in mha.parameters() {
        if p.name().ends_with("bias") {
            p.set_value(randn(p.value().dims(), 50).mul_scalar(0.3).unwrap());
        }
    }
    let (q, k, v) = (
        randn(&[b, tq, e], 51),
        randn(&[b, tk, 6], 52),
        randn(&[b, tk, 3], 53),
    );
    let (qv, kv, vv) = (
        Var::constant(q.clone()),
        Var::constant(k.clone()),
        Var::constant(v.clone()),
    );

    // No mask.
    let (out, w) = mha.forward(&qv, &kv, &vv, None, None, false, true).unwrap();
    let (r_out, r_w) = explicit_attention(&mha, "", h, (&q, &k, &v), None, None);
    assert_close(out.value(), &r_out, 1e-12, "no mask: output");
    assert_close(
        w.unwrap().value(),
        &r_w.mean(1, false).unwrap(),
        1e-12,
        "no mask: averaged weights",
    );

    // Boolean attn_mask [Tq, Tk] + key_padding_mask [B, Tk] (u8 and i64).
    let am = random_mask(&[tq, tk], 54);
    let kpm = Tensor::from_vec(vec![0i64, 0, 0, 1, 1, 0, 1, 0, 0, 0], [b, tk]).unwrap();
    let blocked = am
        .unsqueeze(0)
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .add(&kpm.unsqueeze(1).unwrap())
        .unwrap()
        .cmp_scalar(0.0, CmpOp::Ne)
        .unwrap();
    let (out, w) = mha
        .forward(&qv, &kv, &vv, Some(&am), Some(&kpm), false, true)
        .unwrap();
    let (r_out, r_w) = explicit_attention(&mha, "", h, (&q, &k, &v), Some(&blocked), None);
    assert_close(out.value(), &r_out, 1e-12, "bool masks: output");
    assert_close(
        w.unwrap().value(),
        &r_w.mean(1, false).unwrap(),
        1e-12,
        "bool masks: weights",
    );

    // Causal (self-attention, Tq = Tk) with per-head weights, plus a float (additive) mask.
    let mha_self = MultiHeadAttention::new(
        Scope::init(12, DType::F64, CPU),
        AttentionConfig::new(e, h).average_attn_weights(false),
    )
    .unwrap();
    let x = randn(&[b, tq, e], 55);
    let add = randn(&[tq, tq], 56);
    let xv = Var::constant(x.clone());
    let (out, w) = mha_self
        .forward(&xv, &xv, &xv, Some(&add), None, true, true)
        .unwrap();
    let causal = causal_mask(tq, tq)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .broadcast_to([b, tq, tq])
        .unwrap();
    let (r_out, r_w) = explicit_attention(&mha_self, "", h, (&x, &x, &x), Some(&causal), Some(&add));
    assert_close(out.value(), &r_out, 1e-12, "causal + additive: output");
    let w = w.unwrap();
    assert_eq!(w.dims(), &[b, h, tq, tq]);
    assert_close(w.value(), &r_w, 1e-12, "causal: per-head weights");
    // Row 0 attends only to key 0.
    assert_close(
        &w.value().narrow(2, 0, 1).unwrap().narrow(3, 0, 1).unwrap(),
        &Tensor::ones([b, h, 1, 1], DType::F64, CPU).unwrap(),
        1e-12,
        "causal row 0",
    );
    // The 3-D per-head mask form [B*H, Tq, Tk] equals the same 2-D mask repeated.
    let am3 = am
        .unsqueeze(0)
        .unwrap()
        .broadcast_to([b * h, tq, tk])
        .unwrap()
        .contiguous()
        .unwrap();
    let (o3, _) = mha
        .forward(&qv, &kv, &vv, Some(&am3), None, false, false)
        .unwrap();
    let (o2, none) = mha.forward(&qv, &kv, &vv, Some(&am), None, false, false).unwrap();
    assert!(none.is_none());
    assert_close(o3.value(), o2.value(), 0.0, "3-D mask");
    // Module::forward is unmasked self-attention.
    let (sa, _) = mha_self.forward(&xv, &xv, &xv, None, None, false, false).unwrap();
    assert_close(
        Module::forward(&mha_self, &xv).unwrap().value(),
        sa.value(),
        0.0,
        "Module::forward",
    );
}

#[test]
fn attention_gradients_and_dropout() {
    let mha = MultiHeadAttention::new(Scope::init(13, DType::F64, CPU), AttentionConfig::new(6, 3)).unwrap();
    let inputs = [randn(&[2, 3, 6], 60), randn(&[2, 4, 6], 61)];
    let kpm = Tensor::from_vec(vec![0u8, 0, 1, 0, 0, 0, 0, 1], [2, 4]).unwrap();
    gradcheck(
        |v| {
            let (o, _) = mha
                .forward(&v[0], &v[1], &v[1], None, Some(&kpm), false, false)
                .map_err(autograd_err)?;
            Ok(o)
        },
        &inputs,
        GradcheckOptions::default(),
    )
    .unwrap();
    let drop = MultiHeadAttention::new(
        Scope::init(13, DType::F64, CPU),
        AttentionConfig::new(6, 3).dropout(0.5),
    )
    .unwrap();
    let (q, k) = (Var::constant(inputs[0].clone()), Var::constant(inputs[1].clone()));
    let (_, w_train) = drop.forward(&q, &k, &k, None, None, false, true).unwrap();
    let (o_ref, w_ref) = mha.forward(&q, &k, &k, None, None, false, true).unwrap();
    assert!(max_abs_diff(w_train.unwrap().value(), w_ref.as_ref().unwrap().value()) > 1e-3);
    drop.set_training(false);
    let (o_eval, w_eval) = drop.forward(&q, &k, &k, None, None, false, true).unwrap();
    assert_close(o_eval.value(), o_ref.value(), 0.0, "eval: no attention dropout");
    assert_close(
        w_eval.unwrap().value(),
        w_ref.unwrap().value(),
        0.0,
        "eval weights",
    );
}

#[test]
fn packed_pytorch_in_proj_weights_load_into_separate_projections() {
    let e = 4;
    let packed_w = randn(&[3 * e, e], 70);
    let packed_b = randn(&[3 * e], 71);
    let mut sd: HashMap<String, Tensor> = [
        ("layers.0.self_attn.in_proj_weight", packed_w.clone()),
        ("layers.0.self_attn.in_proj_bias", packed_b.clone()),
        ("layers.0.self_attn.out_proj.weight", randn(&[e, e], 72)),
        ("layers.0.self_attn.out_proj.bias", randn(&[e], 73)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(split_packed_attention_weights(&mut sd).unwrap(), 2);
    let scope = Scope::from_tensors(sd, true, 0, DType::F64, CPU);
    let mha = MultiHeadAttention::new(
        scope.sub("layers").sub(0).sub("self_attn"),
        AttentionConfig::new(e, 2),
    )
    .unwrap();
    scope.check_all_used().unwrap();
    for (i, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        let w = param(&mha, &format!("layers.0.self_attn.{name}.weight")).value();
        assert_close(&w, &packed_w.narrow(0, i * e, e).unwrap(), 0.0, name);
        let b = param(&mha, &format!("layers.0.self_attn.{name}.bias")).value();
        assert_close(&b, &packed_b.narrow(0, i * e, e).unwrap(), 0.0, name);
    }
    let mut bad: HashMap<String, Tensor> = [("a.in_proj_weight".to_string(), randn(&[4, 4], 1))].into();
    invalid_mentions(
        split_packed_attention_weights(&mut bad),
        &["a.in_proj_weight", "[4, 4]"],
    );
}

#[test]
fn attention_shape_errors_name_the_layer_and_shapes() {
    let mha = MultiHeadAttention::new(Scope::init(0, DType::F32, CPU), AttentionConfig::new(8, 2)).unwrap();
    let x = |d: &[usize]| Var::constant(Tensor::zeros(d.to_vec(), DType::F32, CPU).unwrap());
    let (q, k) = (x(&[2, 3, 8]), x(&[2, 5, 8]));
    invalid_mentions(
        mha.forward(&q, &x(&[2, 5, 7]), &k, None, None, false, false),
        &["MultiHeadAttention", "[2, 5, 7]"],
    );
    invalid_mentions(
        mha.forward(&x(&[3, 8]), &k, &k, None, None, false, false),
        &["MultiHeadAttention", "[3, 8]"],
    );
    invalid_mentions(
        mha.forward(&q, &k, &x(&[2, 4, 8]), None, None, false, false),
        &["MultiHeadAttention", "[2, 4, 8]"],
    );
    let bad_mask = Tensor::zeros([3, 4], DType::U8, CPU).unwrap();
    invalid_mentions(
        mha.forward(&q, &k, &k, Some(&bad_mask), None, false, false),
        &["attn_mask", "[3, 4]", "[3, 5]"],
    );
    let bad_kpm = Tensor::zeros([2, 3], DType::U8, CPU).unwrap();
    invalid_mentions(
        mha.forward(&q, &k, &k, None, Some(&bad_kpm), false, false),
        &["key_padding_mask", "[2, 3]", "[2, 5]"],
    );
    invalid_mentions(
        MultiHeadAttention::new(Scope::init(0, DType::F32, CPU), AttentionConfig::new(8, 3)),
        &["MultiHeadAttention", "num_heads (3)"],
    );
}

// ---------------------------------------------------------------- transformer layers

fn ref_layer_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let mean = x.mean(-1, true).unwrap();
    let c = x.sub(&mean).unwrap();
    let var = c.sqr().unwrap().mean(-1, true).unwrap();
    c.div(&var.add_scalar(1e-5).unwrap().sqrt().unwrap())
        .unwrap()
        .mul(w)
        .unwrap()
        .add(b)
        .unwrap()
}

fn ref_linear(m: &dyn Module, name: &str, x: &Tensor) -> Tensor {
    let w = param(m, &format!("{name}.weight")).value();
    let b = param(m, &format!("{name}.bias")).value();
    x.matmul(&w.t().unwrap()).unwrap().add(&b).unwrap()
}

fn ref_norm(m: &dyn Module, name: &str, x: &Tensor) -> Tensor {
    ref_layer_norm(
        x,
        &param(m, &format!("{name}.weight")).value(),
        &param(m, &format!("{name}.bias")).value(),
    )
}

fn ref_ff(m: &dyn Module, x: &Tensor, gelu: bool) -> Tensor {
    let h = ref_linear(m, "linear1", x);
    let h = if gelu {
        // Exact GELU: x Φ(x) = x (1 + erf(x / √2)) / 2.
        h.mul(
            &h.mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
                .unwrap()
                .erf()
                .unwrap()
                .affine(0.5, 0.5)
                .unwrap(),
        )
        .unwrap()
    } else {
        h.relu().unwrap()
    };
    ref_linear(m, "linear2", &h)
}

/// Give every parameter a random value (norm weights and zero-initialised biases included).
fn randomise(m: &dyn Module, seed: u64) {
    for (i, p) in m.parameters().iter().enumerate() {
        let v = randn(p.value().dims(), seed + i as u64).mul_scalar(0.3).unwrap();
        let v = if p.name().contains("norm") && p.name().ends_with("weight") {
            v.add_scalar(1.0).unwrap()
        } else {
            v
        };
        p.set_value(v);
    }
}

#[test]
fn encoder_layer_matches_hand_composition_post_and_pre_ln() {
    let (b, t, d, h) = (2, 5, 8, 2);
    for (norm_first, act) in [
        (false, Activation::Relu),
        (true, Activation::Gelu),
        (false, Activation::Gelu),
        (true, Activation::Relu),
    ] {
        let cfg = TransformerConfig::new(d, h)
            .dim_feedforward(16)
            .activation(act)
            .norm_first(norm_first);
        let layer = TransformerEncoderLayer::new(Scope::init(20, DType::F64, CPU), cfg).unwrap();
        layer.set_training(false); // dropout 0.1 by default: eval mode
        randomise(&layer, 100);
        let x = randn(&[b, t, d], 80);
        let kpm = Tensor::from_vec(vec![0u8, 0, 0, 0, 1, 0, 0, 1, 1, 0], [b, t]).unwrap();
        let got = layer
            .forward_masked(&Var::constant(x.clone()), None, Some(&kpm), true)
            .unwrap();
        let blocked = causal_mask(t, t)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .maximum(&kpm.unsqueeze(1).unwrap())
            .unwrap();
        let sa = |y: &Tensor| explicit_attention(&layer, "self_attn.", h, (y, y, y), Some(&blocked), None).0;
        let gelu = act == Activation::Gelu;
        let want = if norm_first {
            let x1 = x.add(&sa(&ref_norm(&layer, "norm1", &x))).unwrap();
            x1.add(&ref_ff(&layer, &ref_norm(&layer, "norm2", &x1), gelu))
                .unwrap()
        } else {
            let x1 = ref_norm(&layer, "norm1", &x.add(&sa(&x)).unwrap());
            ref_norm(&layer, "norm2", &x1.add(&ref_ff(&layer, &x1, gelu)).unwrap())
        };
        assert_close(
            got.value(),
            &want,
            1e-10,
            &format!("encoder norm_first={norm_first} {act:?}"),
        );
    }
}

#[test]
fn decoder_layer_matches_hand_composition_post_and_pre_ln() {
    let (b, tt, tm, d, h) = (2, 4, 6, 8, 4);
    for norm_first in [false, true] {
        let cfg = TransformerConfig::new(d, h)
            .dim_feedforward(12)
            .norm_first(norm_first)
            .dropout(0.0);
        let layer = TransformerDecoderLayer::new(Scope::init(21, DType::F64, CPU), cfg).unwrap();
        randomise(&layer, 200);
        let (x, mem) = (randn(&[b, tt, d], 81), randn(&[b, tm, d], 82));
        let mkpm = Tensor::from_vec(vec![0u8, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1], [b, tm]).unwrap();
        let masks = DecoderMasks {
            tgt_is_causal: true,
            memory_key_padding_mask: Some(&mkpm),
            ..Default::default()
        };
        let got = layer
            .forward_with_memory(&Var::constant(x.clone()), &Var::constant(mem.clone()), &masks)
            .unwrap();
        let causal = causal_mask(tt, tt)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .broadcast_to([b, tt, tt])
            .unwrap();
        let mem_block = mkpm.unsqueeze(1).unwrap().broadcast_to([b, tt, tm]).unwrap();
        let sa = |y: &Tensor| explicit_attention(&layer, "self_attn.", h, (y, y, y), Some(&causal), None).0;
        let ca = |y: &Tensor| {
            explicit_attention(
                &layer,
                "multihead_attn.",
                h,
                (y, &mem, &mem),
                Some(&mem_block),
                None,
            )
            .0
        };
        let want = if norm_first {
            let x1 = x.add(&sa(&ref_norm(&layer, "norm1", &x))).unwrap();
            let x2 = x1.add(&ca(&ref_norm(&layer, "norm2", &x1))).unwrap();
            x2.add(&ref_ff(&layer, &ref_norm(&layer, "norm3", &x2), false))
                .unwrap()
        } else {
            let x1 = ref_norm(&layer, "norm1", &x.add(&sa(&x)).unwrap());
            let x2 = ref_norm(&layer, "norm2", &x1.add(&ca(&x1)).unwrap());
            ref_norm(&layer, "norm3", &x2.add(&ref_ff(&layer, &x2, false)).unwrap())
        };
        assert_close(
            got.value(),
            &want,
            1e-10,
            &format!("decoder norm_first={norm_first}"),
        );
    }
}

#[test]
fn transformer_gradients_reach_every_parameter() {
    // k_proj.bias adds q·b_k to every score of a query, which softmax ignores: its gradient is 0
    // in exact arithmetic (PyTorch's too), so it is checked to be ~0 instead of non-zero.
    let check = |m: &dyn Module, loss: Var| {
        let g = loss.backward().unwrap();
        for p in m.parameters() {
            let gp = p
                .grad(&g)
                .unwrap_or_else(|| panic!("no gradient for {}", p.name()))
                .to_f64_vec();
            let norm = gp.iter().map(|v| v * v).sum::<f64>().sqrt();
            if p.name().ends_with("k_proj.bias") {
                assert!(norm < 1e-10, "{}: {norm}", p.name());
            } else {
                assert!(norm > 1e-8, "{} gets no gradient", p.name());
            }
        }
    };
    let target = randn(&[2, 5, 8], 91);
    for norm_first in [false, true] {
        let cfg = TransformerConfig::new(8, 2)
            .dim_feedforward(16)
            .norm_first(norm_first)
            .activation(Activation::Gelu);
        let enc = TransformerEncoderLayer::new(Scope::init(30, DType::F64, CPU), cfg.clone()).unwrap();
        randomise(&enc, 300);
        let x = Var::constant(randn(&[2, 5, 8], 90));
        let y = enc.forward(&x).unwrap(); // training mode, dropout 0.1
        check(
            &enc,
            y.mul(&Var::constant(target.clone())).unwrap().sum_all().unwrap(),
        );
        let dec = TransformerDecoderLayer::new(Scope::init(31, DType::F64, CPU), cfg).unwrap();
        randomise(&dec, 400);
        let masks = DecoderMasks {
            tgt_is_causal: true,
            ..Default::default()
        };
        let y = dec
            .forward_with_memory(&x, &Var::constant(randn(&[2, 3, 8], 92)), &masks)
            .unwrap();
        check(
            &dec,
            y.mul(&Var::constant(target.clone())).unwrap().sum_all().unwrap(),
        );
        let names: Vec<String> = dec.parameters().iter().map(|p| p.name().to_string()).collect();
        assert_eq!(names.len(), 2 * 8 + 4 + 6);
        assert!(
            names.iter().any(|n| n == "multihead_attn.out_proj.weight")
                && names.iter().any(|n| n == "norm3.bias")
        );
        assert!(Module::forward(&dec, &x).is_err());
    }
}

// ---------------------------------------------------------------- position encodings

#[test]
fn sinusoidal_encoding_hand_checked_values() {
    let pe = sinusoidal_table(0, 2, 4, DType::F64, CPU).unwrap();
    let (s1, c1) = (1f64.sin(), 1f64.cos());
    let (s2, c2) = (0.01f64.sin(), 0.01f64.cos()); // 1 / 10000^(2/4) = 1/100
    assert_close(
        &pe,
        &Tensor::from_vec(vec![0.0, 1.0, 0.0, 1.0, s1, c1, s2, c2], [2, 4]).unwrap(),
        1e-15,
        "PE",
    );
    let enc = SinusoidalPositionalEncoding::new(4);
    let x = Var::constant(Tensor::zeros([3, 2, 4], DType::F32, CPU).unwrap());
    let y = enc.forward_with_offset(&x, 1).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    assert_close(
        &y.value().narrow(0, 0, 1).unwrap().narrow(1, 0, 1).unwrap(),
        &pe.narrow(0, 1, 1).unwrap(),
        1e-7,
        "offset 1",
    );
    invalid_mentions(
        enc.forward(&Var::constant(Tensor::zeros([2, 5], DType::F32, CPU).unwrap())),
        &["SinusoidalPositionalEncoding", "[2, 5]"],
    );
}

#[test]
fn learned_positions_add_rows_and_train_only_used_rows() {
    let table = randn(&[6, 3], 100);
    let scope = Scope::from_tensors(
        [("wpe.weight".to_string(), table.clone())].into(),
        true,
        0,
        DType::F64,
        CPU,
    );
    let pos = LearnedPositionalEmbedding::new(scope.sub("wpe"), 6, 3).unwrap();
    assert_eq!(pos.weight().name(), "wpe.weight");
    let x = Var::constant(randn(&[2, 4, 3], 101));
    let y = pos.forward_with_offset(&x, 2).unwrap();
    assert_close(
        &y.value().sub(x.value()).unwrap().narrow(0, 1, 1).unwrap(),
        &table.narrow(0, 2, 4).unwrap(),
        1e-15,
        "rows 2..6",
    );
    let g = y.sum_all().unwrap().backward().unwrap();
    let gw = pos.weight().grad(&g).unwrap().to_f64_vec();
    assert_eq!(&gw[..6], &[0.0; 6]);
    assert!(gw[6..].iter().all(|v| *v == 2.0));
    invalid_mentions(
        pos.forward_with_offset(&x, 3),
        &["LearnedPositionalEmbedding", "3..7", "max_positions = 6"],
    );
}

#[test]
fn rope_hand_values_norms_relative_positions_and_offsets() {
    let rope = RotaryEmbedding::new(4, 10000.0).unwrap();
    // inv_freq = [1, 1/100]; e_0 at position 1 turns by 1 rad into the second half.
    let e0 =
        Var::constant(Tensor::from_vec(vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [1, 1, 2, 4]).unwrap());
    let r = rope.apply(&e0, 0).unwrap();
    let want = [0.0, 0.0, 0.0, 0.0, 1f64.cos(), 0.0, 1f64.sin(), 0.0];
    assert_close(
        r.value(),
        &Tensor::from_vec(want.to_vec(), [1, 1, 2, 4]).unwrap(),
        1e-15,
        "rope e0",
    );
    let e1 = Var::constant(Tensor::from_vec(vec![0.0, 1.0, 0.0, 0.0], [1, 1, 1, 4]).unwrap());
    let r = rope.apply(&e1, 3).unwrap();
    let want = [0.0, 0.03f64.cos(), 0.0, 0.03f64.sin()];
    assert_close(
        r.value(),
        &Tensor::from_vec(want.to_vec(), [1, 1, 1, 4]).unwrap(),
        1e-15,
        "rope e1, offset 3",
    );

    let rope = RotaryEmbedding::new(16, 10000.0).unwrap();
    let (b, h, t, dh) = (2, 3, 7, 16);
    let x = randn(&[b, h, t, dh], 110);
    let rx = rope.apply(&Var::constant(x.clone()), 5).unwrap();
    let norms = |v: &Tensor| v.sqr().unwrap().sum(-1, false).unwrap();
    assert_close(&norms(rx.value()), &norms(&x), 1e-10, "norms preserved");
    // <rope(q, m), rope(k, n)> depends only on m - n.
    let (q, k) = (
        Var::constant(randn(&[1, 1, 1, dh], 111)),
        Var::constant(randn(&[1, 1, 1, dh], 112)),
    );
    let dot = |m: usize, n: usize| {
        let a = rope.apply(&q, m).unwrap();
        let c = rope.apply(&k, n).unwrap();
        a.value()
            .mul(c.value())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for (m, n) in [(3, 1), (10, 8), (1002, 1000), (2, 0)] {
        assert!((dot(m, n) - dot(2, 0)).abs() < 1e-9, "m={m} n={n}");
    }
    assert!(
        (dot(5, 1) - dot(2, 0)).abs() > 1e-6,
        "different offsets give different scores"
    );
    // KV-cached decoding: rotating position t alone at offset t equals slicing the full rotation.
    let step = rope
        .apply(&Var::constant(x.narrow(2, 4, 1).unwrap()), 5 + 4)
        .unwrap();
    assert_close(
        step.value(),
        &rx.value().narrow(2, 4, 1).unwrap(),
        1e-14,
        "offset",
    );
    // Gradients flow through the rotation (it is orthogonal: the gradient of |rope(x)|² is 2x).
    let xv = Var::parameter(x.clone());
    let g = rope
        .apply(&xv, 0)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_close(
        g.get(&xv).unwrap(),
        &x.mul_scalar(2.0).unwrap(),
        1e-10,
        "rope gradient",
    );
    invalid_mentions(RotaryEmbedding::new(5, 10000.0), &["RotaryEmbedding", "dim = 5"]);
    invalid_mentions(
        rope.apply(&Var::constant(randn(&[1, 2, 3, 8], 1)), 0),
        &["RotaryEmbedding", "[1, 2, 3, 8]"],
    );
}
