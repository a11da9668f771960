//! Every optimizer against its PyTorch update rule written out in plain f64 (the algorithm boxes
//! of the torch.optim documentation), over 15-step trajectories.

use kiln_autograd::{Gradients, Param};
use kiln_optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, AdamW, AdamWConfig, Error, Optimizer, ParamGroup, RmsProp,
    RmsPropConfig, Sgd, SgdConfig,
};
use kiln_tensor::{DType, Tensor};

const STEPS: usize = 15;
const P0: [f64; 4] = [0.5, -1.25, 2.0, 0.1];
const TARGET: [f64; 4] = [1.0, 0.5, -1.0, 0.0];

/// The gradient at step `t` (0-based) for the current value `p`: a quadratic's pull towards
/// TARGET plus a deterministic wobble so that gradients change sign and size.
fn grad_fn(t: usize, p: &[f64]) -> Vec<f64> {
    p.iter()
        .enumerate()
        .map(|(i, &x)| 2.0 * (x - TARGET[i]) + 0.5 * (0.7 * t as f64 + i as f64).sin())
        .collect()
}

fn param(name: &str, v: &[f64]) -> Param {
    Param::new(name, Tensor::from_vec(v.to_vec(), [v.len()]).unwrap())
}

fn values(p: &Param) -> Vec<f64> {
    p.value().to_vec::<f64>().unwrap()
}

/// Gradients holding `grad_fn(t, p)` for each parameter.
fn grads_at(t: usize, params: &[&Param]) -> Gradients {
    let mut grads = Gradients::new();
    for p in params {
        let g = grad_fn(t, &values(p));
        grads.insert(&p.var(), Tensor::from_vec(g, [P0.len()]).unwrap());
    }
    grads
}

/// The parameter's values after each of `STEPS` steps.
fn run(opt: &mut dyn Optimizer, p: &Param) -> Vec<Vec<f64>> {
    (0..STEPS)
        .map(|t| {
            opt.step(&grads_at(t, &[p])).unwrap();
            values(p)
        })
        .collect()
}

/// Run a reference update `update(t, p, g)` (t is 1-based) for `STEPS` steps from `P0`.
fn reference(mut update: impl FnMut(usize, &mut [f64], &[f64])) -> Vec<Vec<f64>> {
    let mut p = P0.to_vec();
    (0..STEPS)
        .map(|t| {
            let g = grad_fn(t, &p);
            update(t + 1, &mut p, &g);
            p.clone()
        })
        .collect()
}

fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (step, (a, b)) in got.iter().zip(want).enumerate() {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * y.abs().max(1.0),
                "step {} element {i}: kiln {x} vs reference {y} (diff {:e})\nkiln {a:?}\nref  {b:?}",
                step + 1,
                (x - y).abs()
            );
        }
    }
}

/// The trajectory must actually move (a no-op optimizer would not match a reference anyway,
/// but this keeps each test honest about exercising the update).
fn assert_moves(traj: &[Vec<f64>]) {
    assert!(
        traj.last()
            .unwrap()
            .iter()
            .zip(P0)
            .all(|(a, b)| (a - b).abs() > 1e-3),
        "{traj:?}"
    );
}

const TOL: f64 = 1e-12;

// ---------------------------------------------------------------------------------------------
// Reference algorithms (torch.optim documentation), plain f64.

/// torch.optim.SGD.
fn sgd_ref(lr: f64, momentum: f64, dampening: f64, weight_decay: f64, nesterov: bool) -> Vec<Vec<f64>> {
    let mut b = vec![0.0; P0.len()];
    reference(move |t, p, g| {
        for i in 0..p.len() {
            let mut g_t = g[i];
            if weight_decay != 0.0 {
                g_t += weight_decay * p[i];
            }
            if momentum != 0.0 {
                if t > 1 {
                    b[i] = momentum * b[i] + (1.0 - dampening) * g_t;
                } else {
                    b[i] = g_t;
                }
                if nesterov {
                    g_t += momentum * b[i];
                } else {
                    g_t = b[i];
                }
            }
            p[i] -= lr * g_t;
        }
    })
}

/// torch.optim.Adam (decoupled = false) and torch.optim.AdamW (decoupled = true).
fn adam_ref(
    lr: f64,
    (beta1, beta2): (f64, f64),
    eps: f64,
    weight_decay: f64,
    amsgrad: bool,
    decoupled: bool,
) -> Vec<Vec<f64>> {
    let n = P0.len();
    let (mut m, mut v, mut v_max) = (vec![0.0f64; n], vec![0.0f64; n], vec![0.0f64; n]);
    reference(move |t, p, g| {
        for i in 0..n {
            let mut g_t = g[i];
            if decoupled {
                p[i] *= 1.0 - lr * weight_decay;
            } else if weight_decay != 0.0 {
                g_t += weight_decay * p[i];
            }
            m[i] = beta1 * m[i] + (1.0 - beta1) * g_t;
            v[i] = beta2 * v[i] + (1.0 - beta2) * g_t * g_t;
            let m_hat = m[i] / (1.0 - beta1.powi(t as i32));
            let v_hat = if amsgrad {
                v_max[i] = v_max[i].max(v[i]);
                v_max[i] / (1.0 - beta2.powi(t as i32))
            } else {
                v[i] / (1.0 - beta2.powi(t as i32))
            };
            p[i] -= lr * m_hat / (v_hat.sqrt() + eps);
        }
    })
}

/// torch.optim.RMSprop.
fn rmsprop_ref(
    lr: f64,
    alpha: f64,
    eps: f64,
    weight_decay: f64,
    momentum: f64,
    centered: bool,
) -> Vec<Vec<f64>> {
    let n = P0.len();
    let (mut v, mut b, mut g_ave) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    reference(move |_t, p, g| {
        for i in 0..n {
            let mut g_t = g[i];
            if weight_decay != 0.0 {
                g_t += weight_decay * p[i];
            }
            v[i] = alpha * v[i] + (1.0 - alpha) * g_t * g_t;
            let mut v_tilde = v[i];
            if centered {
                g_ave[i] = g_ave[i] * alpha + (1.0 - alpha) * g_t;
                v_tilde -= g_ave[i] * g_ave[i];
            }
            if momentum > 0.0 {
                b[i] = momentum * b[i] + g_t / (v_tilde.sqrt() + eps);
                p[i] -= lr * b[i];
            } else {
                p[i] -= lr * g_t / (v_tilde.sqrt() + eps);
            }
        }
    })
}

/// torch.optim.Adagrad.
fn adagrad_ref(lr: f64, lr_decay: f64, weight_decay: f64, init_acc: f64, eps: f64) -> Vec<Vec<f64>> {
    let mut state_sum = vec![init_acc; P0.len()];
    reference(move |t, p, g| {
        let gamma = lr / (1.0 + (t - 1) as f64 * lr_decay);
        for i in 0..p.len() {
            let mut g_t = g[i];
            if weight_decay != 0.0 {
                g_t += weight_decay * p[i];
            }
            state_sum[i] += g_t * g_t;
            p[i] -= gamma * g_t / (state_sum[i].sqrt() + eps);
        }
    })
}

// ---------------------------------------------------------------------------------------------
// SGD

fn sgd_run(cfg: SgdConfig) -> Vec<Vec<f64>> {
    let p = param("w", &P0);
    let mut opt = Sgd::from_params(vec![p.clone()], cfg).unwrap();
    let traj = run(&mut opt, &p);
    assert_eq!(opt.step_count(), STEPS);
    traj
}

#[test]
fn sgd_plain_matches_torch() {
    let got = sgd_run(SgdConfig {
        lr: 0.1,
        ..Default::default()
    });
    assert_close(&got, &sgd_ref(0.1, 0.0, 0.0, 0.0, false), TOL);
    assert_moves(&got);
    // The first step by hand: p - lr * g.
    let g0 = grad_fn(0, &P0);
    for i in 0..4 {
        assert_eq!(got[0][i], P0[i] - 0.1 * g0[i]);
    }
}

#[test]
fn sgd_momentum_with_dampening_matches_torch() {
    let got = sgd_run(SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        dampening: 0.3,
        ..Default::default()
    });
    let want = sgd_ref(0.05, 0.9, 0.3, 0.0, false);
    assert_close(&got, &want, TOL);
    assert_moves(&got);
    // Dampening matters from step 2 on (the first buffer is the raw gradient).
    let undamped = sgd_ref(0.05, 0.9, 0.0, 0.0, false);
    assert_eq!(got[0], undamped[0]);
    assert!((got[5][0] - undamped[5][0]).abs() > 1e-3);
}

#[test]
fn sgd_nesterov_matches_torch() {
    let got = sgd_run(SgdConfig {
        lr: 0.05,
        momentum: 0.8,
        nesterov: true,
        ..Default::default()
    });
    assert_close(&got, &sgd_ref(0.05, 0.8, 0.0, 0.0, true), TOL);
    assert_moves(&got);
    assert!((got[5][1] - sgd_ref(0.05, 0.8, 0.0, 0.0, false)[5][1]).abs() > 1e-3);
}

#[test]
fn sgd_weight_decay_matches_torch() {
    let got = sgd_run(SgdConfig {
        lr: 0.1,
        weight_decay: 0.05,
        ..Default::default()
    });
    assert_close(&got, &sgd_ref(0.1, 0.0, 0.0, 0.05, false), TOL);
    let got = sgd_run(SgdConfig {
        lr: 0.03,
        momentum: 0.9,
        dampening: 0.1,
        weight_decay: 0.2,
        ..Default::default()
    });
    assert_close(&got, &sgd_ref(0.03, 0.9, 0.1, 0.2, false), TOL);
    assert_moves(&got);
}

// ---------------------------------------------------------------------------------------------
// Adam / AdamW

#[test]
fn adam_matches_torch() {
    let p = param("w", &P0);
    let cfg = AdamConfig {
        lr: 0.05,
        ..Default::default()
    };
    let got = run(&mut Adam::from_params(vec![p.clone()], cfg).unwrap(), &p);
    assert_close(&got, &adam_ref(0.05, (0.9, 0.999), 1e-8, 0.0, false, false), TOL);
    assert_moves(&got);
    // Step 1 of Adam moves every element by ~lr (m_hat / sqrt(v_hat) = sign(g)).
    for i in 0..4 {
        assert!(((got[0][i] - P0[i]).abs() - 0.05).abs() < 1e-8);
    }
}

#[test]
fn adam_l2_weight_decay_matches_torch() {
    let p = param("w", &P0);
    let cfg = AdamConfig {
        lr: 0.02,
        betas: (0.8, 0.95),
        eps: 1e-6,
        weight_decay: 0.1,
        amsgrad: false,
    };
    let got = run(&mut Adam::from_params(vec![p.clone()], cfg).unwrap(), &p);
    assert_close(&got, &adam_ref(0.02, (0.8, 0.95), 1e-6, 0.1, false, false), TOL);
    assert_moves(&got);
}

#[test]
fn adam_amsgrad_matches_torch() {
    let p = param("w", &P0);
    // beta2 = 0.9 lets the second moment fall within the trajectory, so the running max matters.
    let cfg = AdamConfig {
        lr: 0.1,
        betas: (0.9, 0.9),
        amsgrad: true,
        ..Default::default()
    };
    let got = run(&mut Adam::from_params(vec![p.clone()], cfg).unwrap(), &p);
    let want = adam_ref(0.1, (0.9, 0.9), 1e-8, 0.0, true, false);
    assert_close(&got, &want, TOL);
    let plain = adam_ref(0.1, (0.9, 0.9), 1e-8, 0.0, false, false);
    assert!(
        want.last()
            .unwrap()
            .iter()
            .zip(plain.last().unwrap())
            .any(|(a, b)| (a - b).abs() > 1e-4),
        "the test trajectory must exercise the AMSGrad maximum"
    );
}

#[test]
fn adamw_matches_torch() {
    let p = param("w", &P0);
    let cfg = AdamWConfig {
        lr: 0.05,
        weight_decay: 0.1,
        ..Default::default()
    };
    let got = run(&mut AdamW::from_params(vec![p.clone()], cfg).unwrap(), &p);
    let want = adam_ref(0.05, (0.9, 0.999), 1e-8, 0.1, false, true);
    assert_close(&got, &want, TOL);
    // Decoupled decay differs from Adam's L2 decay.
    let l2 = adam_ref(0.05, (0.9, 0.999), 1e-8, 0.1, false, false);
    assert!((got[10][2] - l2[10][2]).abs() > 1e-4);

    let p = param("w", &P0);
    let cfg = AdamWConfig {
        lr: 0.05,
        betas: (0.9, 0.9),
        weight_decay: 0.3,
        amsgrad: true,
        ..Default::default()
    };
    let got = run(&mut AdamW::from_params(vec![p.clone()], cfg).unwrap(), &p);
    assert_close(&got, &adam_ref(0.05, (0.9, 0.9), 1e-8, 0.3, true, true), TOL);
}

// ---------------------------------------------------------------------------------------------
// RMSprop / Adagrad

#[test]
fn rmsprop_centered_momentum_matches_torch() {
    let p = param("w", &P0);
    let cfg = RmsPropConfig {
        lr: 0.01,
        alpha: 0.9,
        eps: 1e-6,
        weight_decay: 0.05,
        momentum: 0.7,
        centered: true,
    };
    let got = run(&mut RmsProp::from_params(vec![p.clone()], cfg).unwrap(), &p);
    assert_close(&got, &rmsprop_ref(0.01, 0.9, 1e-6, 0.05, 0.7, true), TOL);
    assert_moves(&got);
}

#[test]
fn rmsprop_plain_matches_torch() {
    let p = param("w", &P0);
    let cfg = RmsPropConfig::default();
    let got = run(&mut RmsProp::from_params(vec![p.clone()], cfg).unwrap(), &p);
    assert_close(&got, &rmsprop_ref(0.01, 0.99, 1e-8, 0.0, 0.0, false), TOL);
    assert_moves(&got);
}

#[test]
fn adagrad_lr_decay_matches_torch() {
    let p = param("w", &P0);
    let cfg = AdagradConfig {
        lr: 0.5,
        lr_decay: 0.1,
        weight_decay: 0.01,
        initial_accumulator_value: 0.25,
        eps: 1e-10,
    };
    let got = run(&mut Adagrad::from_params(vec![p.clone()], cfg).unwrap(), &p);
    assert_close(&got, &adagrad_ref(0.5, 0.1, 0.01, 0.25, 1e-10), TOL);
    assert_moves(&got);
}

// ---------------------------------------------------------------------------------------------
// Groups, frozen parameters, dtypes, errors

#[test]
fn frozen_and_gradless_params_are_untouched() {
    let trained = param("a", &P0);
    let frozen = param("b", &P0);
    frozen.set_requires_grad(false);
    let no_grad = param("c", &P0);
    let mut opt = Adam::from_params(
        vec![trained.clone(), frozen.clone(), no_grad.clone()],
        AdamConfig {
            lr: 0.05,
            ..Default::default()
        },
    )
    .unwrap();
    let mut traj = Vec::new();
    for t in 0..STEPS {
        let mut grads = grads_at(t, &[&trained]);
        // A gradient for the frozen parameter's (constant) leaf is ignored too.
        grads.insert(
            &frozen.var(),
            Tensor::ones([4], DType::F64, kiln_tensor::Device::Cpu).unwrap(),
        );
        opt.step(&grads).unwrap();
        traj.push(values(&trained));
    }
    assert_close(&traj, &adam_ref(0.05, (0.9, 0.999), 1e-8, 0.0, false, false), TOL);
    assert_eq!(values(&frozen), P0.to_vec());
    assert_eq!(values(&no_grad), P0.to_vec());
    let keys: Vec<String> = opt.state_tensors().unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "__step",
            "a.step",
            "a.exp_avg",
            "a.exp_avg_sq",
            "c.step",
            "c.exp_avg",
            "c.exp_avg_sq"
        ],
        "the frozen parameter has no state; the one without gradients keeps its initial state"
    );
    let state = opt.state_tensors().unwrap();
    assert_eq!(state[4].1.to_scalar::<i64>().unwrap(), 0, "c was never updated");
    assert_eq!(state[1].1.to_scalar::<i64>().unwrap(), STEPS as i64);
}

#[test]
fn param_groups_use_their_own_lr_and_weight_decay() {
    let a = param("layer.weight", &P0);
    let b = param("layer.bias", &P0);
    let c = param("head.weight", &P0);
    let groups = vec![
        ParamGroup::new(vec![a.clone()]),               // defaults: lr 0.1, wd 0.01
        ParamGroup::new(vec![b.clone()]).with_lr(0.02), // own lr, default wd
        ParamGroup::new(vec![c.clone()])
            .with_weight_decay(0.3)
            .with_lr(0.05),
    ];
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = Sgd::new(groups, cfg).unwrap();
    assert_eq!(opt.group_lrs(), vec![0.1, 0.02, 0.05]);
    let (mut ta, mut tb, mut tc) = (Vec::new(), Vec::new(), Vec::new());
    for t in 0..STEPS {
        opt.step(&grads_at(t, &[&a, &b, &c])).unwrap();
        ta.push(values(&a));
        tb.push(values(&b));
        tc.push(values(&c));
    }
    assert_close(&ta, &sgd_ref(0.1, 0.9, 0.0, 0.01, false), TOL);
    assert_close(&tb, &sgd_ref(0.02, 0.9, 0.0, 0.01, false), TOL);
    assert_close(&tc, &sgd_ref(0.05, 0.9, 0.0, 0.3, false), TOL);

    // AdamW with split_decay: the bias is not decayed.
    let w = Param::new("fc.weight", Tensor::from_vec(P0.to_vec(), [2, 2]).unwrap());
    let bias = param("fc.bias", &P0);
    let groups = ParamGroup::split_decay(vec![w.clone(), bias.clone()], 0.2);
    let cfg = AdamWConfig {
        lr: 0.05,
        ..Default::default()
    };
    let mut opt = AdamW::new(groups, cfg).unwrap();
    let (mut tw, mut tb) = (Vec::new(), Vec::new());
    for t in 0..STEPS {
        let mut grads = Gradients::new();
        grads.insert(
            &w.var(),
            Tensor::from_vec(grad_fn(t, &values(&w)), [2, 2]).unwrap(),
        );
        grads.insert(
            &bias.var(),
            Tensor::from_vec(grad_fn(t, &values(&bias)), [4]).unwrap(),
        );
        opt.step(&grads).unwrap();
        tw.push(values(&w));
        tb.push(values(&bias));
    }
    assert_close(&tw, &adam_ref(0.05, (0.9, 0.999), 1e-8, 0.2, false, true), TOL);
    assert_close(&tb, &adam_ref(0.05, (0.9, 0.999), 1e-8, 0.0, false, true), TOL);
}

#[test]
fn set_lr_sets_every_group_and_takes_effect() {
    let a = param("a", &P0);
    let b = param("b", &P0);
    let groups = vec![
        ParamGroup::new(vec![a.clone()]),
        ParamGroup::new(vec![b.clone()]).with_lr(0.5),
    ];
    let mut opt = Sgd::new(groups, SgdConfig::default()).unwrap();
    assert_eq!(opt.lr(), 1e-3);
    opt.set_lr(0.25);
    assert_eq!(opt.group_lrs(), vec![0.25, 0.25]);
    opt.set_group_lr(1, 0.125).unwrap();
    assert_eq!(opt.group_lrs(), vec![0.25, 0.125]);
    assert!(opt.set_group_lr(2, 0.1).is_err());
    opt.step(&grads_at(0, &[&a, &b])).unwrap();
    let g = grad_fn(0, &P0);
    for i in 0..4 {
        assert_eq!(values(&a)[i], P0[i] - 0.25 * g[i]);
        assert_eq!(values(&b)[i], P0[i] - 0.125 * g[i]);
    }
}

#[test]
fn f32_parameters_update_in_f32() {
    let p = Param::new(
        "w",
        Tensor::from_vec(P0.iter().map(|&x| x as f32).collect(), [4]).unwrap(),
    );
    let mut opt = AdamW::from_params(
        vec![p.clone()],
        AdamWConfig {
            lr: 0.05,
            ..Default::default()
        },
    )
    .unwrap();
    let mut traj = Vec::new();
    for t in 0..STEPS {
        let cur = p.value().to_f64_vec();
        let g: Vec<f32> = grad_fn(t, &cur).iter().map(|&x| x as f32).collect();
        let mut grads = Gradients::new();
        grads.insert(&p.var(), Tensor::from_vec(g, [4]).unwrap());
        opt.step(&grads).unwrap();
        assert_eq!(p.value().dtype(), DType::F32);
        traj.push(p.value().to_f64_vec());
    }
    assert_close(
        &traj,
        &adam_ref(0.05, (0.9, 0.999), 1e-8, 0.01, false, true),
        2e-5,
    );
    let state = opt.state_tensors().unwrap();
    assert!(state
        .iter()
        .filter(|(k, _)| k.starts_with("w.exp"))
        .all(|(_, t)| t.dtype() == DType::F32));
}

#[test]
fn a_misshaped_gradient_is_an_error_and_changes_nothing() {
    let a = param("a", &P0);
    let b = param("b", &P0);
    let mut opt = Sgd::from_params(
        vec![a.clone(), b.clone()],
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        },
    )
    .unwrap();
    opt.step(&grads_at(0, &[&a, &b])).unwrap();
    let before = (values(&a), values(&b), opt.state_tensors().unwrap());
    let mut grads = grads_at(1, &[&a]);
    grads.insert(&b.var(), Tensor::from_vec(vec![1.0f64, 2.0], [2]).unwrap());
    let err = opt.step(&grads).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Grad { .. }), "{msg}");
    assert!(
        msg.contains("'b'") && msg.contains("[2]") && msg.contains("[4]"),
        "{msg}"
    );
    assert_eq!(
        values(&a),
        before.0,
        "a was not updated although its gradient was fine"
    );
    assert_eq!(values(&b), before.1);
    assert_eq!(opt.step_count(), 1);
    let after = opt.state_tensors().unwrap();
    for ((k1, t1), (k2, t2)) in before.2.iter().zip(&after) {
        assert_eq!(k1, k2);
        assert_eq!(t1.to_f64_vec(), t2.to_f64_vec());
    }
}

#[test]
fn the_same_parameter_or_name_twice_is_rejected() {
    let a = param("a", &P0);
    let err = Sgd::new(
        vec![ParamGroup::new(vec![a.clone()]), ParamGroup::new(vec![a.clone()])],
        SgdConfig::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("groups[1].params"), "{err}");
    let other = param("a", &P0);
    let err = Adam::from_params(vec![a, other], AdamConfig::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("share this name"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Configs

#[test]
fn configs_default_to_pytorch_and_round_trip_through_serde() {
    assert_eq!(
        SgdConfig::default(),
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false
        }
    );
    let a = AdamConfig::default();
    assert_eq!(
        (a.lr, a.betas, a.eps, a.weight_decay, a.amsgrad),
        (1e-3, (0.9, 0.999), 1e-8, 0.0, false)
    );
    let w = AdamWConfig::default();
    assert_eq!(
        (w.lr, w.betas, w.eps, w.weight_decay, w.amsgrad),
        (1e-3, (0.9, 0.999), 1e-8, 1e-2, false)
    );
    let r = RmsPropConfig::default();
    assert_eq!(
        (r.lr, r.alpha, r.eps, r.weight_decay, r.momentum, r.centered),
        (1e-2, 0.99, 1e-8, 0.0, 0.0, false)
    );
    let g = AdagradConfig::default();
    assert_eq!(
        (
            g.lr,
            g.lr_decay,
            g.weight_decay,
            g.initial_accumulator_value,
            g.eps
        ),
        (1e-2, 0.0, 0.0, 0.0, 1e-10)
    );

    let cfg = AdamWConfig {
        lr: 3e-4,
        betas: (0.9, 0.95),
        weight_decay: 0.1,
        ..Default::default()
    };
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<AdamWConfig>(&json).unwrap(), cfg);
    // Missing fields take the defaults; unknown ones are rejected.
    let partial: SgdConfig = serde_json::from_str(r#"{"lr": 0.5, "momentum": 0.9}"#).unwrap();
    assert_eq!(
        partial,
        SgdConfig {
            lr: 0.5,
            momentum: 0.9,
            ..Default::default()
        }
    );
    assert!(serde_json::from_str::<SgdConfig>(r#"{"learning_rate": 0.5}"#).is_err());
    let r: RmsPropConfig = serde_json::from_str(r#"{"centered": true}"#).unwrap();
    assert!(r.centered && r.alpha == 0.99);
    let g: AdagradConfig =
        serde_json::from_str(&serde_json::to_string(&AdagradConfig::default()).unwrap()).unwrap();
    assert_eq!(g, AdagradConfig::default());
}

fn config_error(r: kiln_optim::Result<impl Sized>) -> String {
    match r {
        Err(e @ Error::InvalidConfig { .. }) => e.to_string(),
        Err(e) => panic!("expected InvalidConfig, got {e}"),
        Ok(_) => panic!("expected InvalidConfig, got Ok"),
    }
}

#[test]
fn invalid_configs_name_the_field_and_value() {
    let p = || vec![param("w", &P0)];
    let msg = config_error(Sgd::from_params(
        p(),
        SgdConfig {
            lr: -0.1,
            ..Default::default()
        },
    ));
    assert!(msg.contains("lr") && msg.contains("-0.1"), "{msg}");
    let msg = config_error(Sgd::from_params(
        p(),
        SgdConfig {
            nesterov: true,
            ..Default::default()
        },
    ));
    assert!(msg.contains("nesterov") && msg.contains("momentum = 0"), "{msg}");
    let msg = config_error(Sgd::from_params(
        p(),
        SgdConfig {
            nesterov: true,
            momentum: 0.9,
            dampening: 0.1,
            ..Default::default()
        },
    ));
    assert!(
        msg.contains("nesterov") && msg.contains("dampening = 0.1"),
        "{msg}"
    );
    let msg = config_error(Sgd::from_params(
        p(),
        SgdConfig {
            weight_decay: -1e-4,
            ..Default::default()
        },
    ));
    assert!(msg.contains("weight_decay") && msg.contains("-0.0001"), "{msg}");
    let msg = config_error(Adam::from_params(
        p(),
        AdamConfig {
            betas: (0.9, 1.0),
            ..Default::default()
        },
    ));
    assert!(msg.contains("betas.1") && msg.contains("= 1"), "{msg}");
    let msg = config_error(AdamW::from_params(
        p(),
        AdamWConfig {
            betas: (-0.1, 0.999),
            ..Default::default()
        },
    ));
    assert!(
        msg.contains("AdamW") && msg.contains("betas.0") && msg.contains("-0.1"),
        "{msg}"
    );
    let msg = config_error(Adam::from_params(
        p(),
        AdamConfig {
            eps: -1e-8,
            ..Default::default()
        },
    ));
    assert!(msg.contains("eps") && msg.contains("-0.00000001"), "{msg}");
    let msg = config_error(Adam::from_params(
        p(),
        AdamConfig {
            lr: f64::NAN,
            ..Default::default()
        },
    ));
    assert!(msg.contains("lr = NaN"), "{msg}");
    let msg = config_error(RmsProp::from_params(
        p(),
        RmsPropConfig {
            momentum: -0.5,
            ..Default::default()
        },
    ));
    assert!(msg.contains("momentum") && msg.contains("-0.5"), "{msg}");
    let msg = config_error(Adagrad::from_params(
        p(),
        AdagradConfig {
            lr_decay: -1.0,
            ..Default::default()
        },
    ));
    assert!(msg.contains("lr_decay") && msg.contains("-1"), "{msg}");
    let msg = config_error(Sgd::new(
        vec![ParamGroup::new(p()).with_lr(-2.0)],
        SgdConfig::default(),
    ));
    assert!(msg.contains("groups[0].lr") && msg.contains("-2"), "{msg}");
    let msg = config_error(AdamW::new(
        vec![ParamGroup::new(p()).with_weight_decay(-0.5)],
        AdamWConfig::default(),
    ));
    assert!(
        msg.contains("groups[0].weight_decay") && msg.contains("-0.5"),
        "{msg}"
    );
}

#[test]
fn split_decay_separates_biases_and_norm_weights() {
    let mat = |name: &str| {
        Param::new(
            name,
            Tensor::zeros([2, 2], DType::F32, kiln_tensor::Device::Cpu).unwrap(),
        )
    };
    let vecp = |name: &str| {
        Param::new(
            name,
            Tensor::zeros([2], DType::F32, kiln_tensor::Device::Cpu).unwrap(),
        )
    };
    let params = vec![
        mat("h.0.attn.c_attn.weight"),
        vecp("h.0.attn.c_attn.bias"),
        vecp("h.0.ln_1.weight"),
        mat("encoder.layer.0.attention.output.LayerNorm.weight"), // 2-D only to exercise the name rule
        mat("h.0.ln_f.weight"),
        mat("blocks.0.ln1.weight"),
        mat("kiln_block.linear.weight"),
        mat("embeddings.word_embeddings.weight"),
        mat("proj.bias"),
    ];
    let groups = ParamGroup::split_decay(params, 0.1);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].weight_decay, Some(0.1));
    assert_eq!(groups[1].weight_decay, Some(0.0));
    assert_eq!((groups[0].lr, groups[1].lr), (None, None));
    let names = |g: &ParamGroup| g.params.iter().map(|p| p.name().to_string()).collect::<Vec<_>>();
    assert_eq!(
        names(&groups[0]),
        [
            "h.0.attn.c_attn.weight",
            "kiln_block.linear.weight",
            "embeddings.word_embeddings.weight"
        ]
    );
    assert_eq!(
        names(&groups[1]),
        [
            "h.0.attn.c_attn.bias",
            "h.0.ln_1.weight",
            "encoder.layer.0.attention.output.LayerNorm.weight",
            "h.0.ln_f.weight",
            "blocks.0.ln1.weight",
            "proj.bias"
        ]
    );
}
