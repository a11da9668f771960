//! Learning-rate schedules at hand-computed steps; gradient clipping and accumulation.

use std::f64::consts::PI;

use kiln_autograd::{Gradients, Param, Var};
use kiln_optim::{
    clip_grad_norm, clip_grad_value, grad_norm, Error, GradAccumulator, LrSchedule, Optimizer, Schedule, Sgd,
    SgdConfig,
};
use kiln_tensor::Tensor;

fn close(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
}

// ---------------------------------------------------------------------------------------------
// Schedules

#[test]
fn constant_step_multistep_exponential() {
    let c = Schedule::Constant { lr: 0.3 };
    assert_eq!((c.lr(0), c.lr(1000)), (0.3, 0.3));

    let s = Schedule::Step {
        lr: 0.1,
        step_size: 3,
        gamma: 0.5,
    };
    let got: Vec<f64> = (0..8).map(|t| s.lr(t)).collect();
    assert_eq!(got, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]);

    let m = Schedule::MultiStep {
        lr: 1.0,
        milestones: vec![2, 5],
        gamma: 0.1,
    };
    close(m.lr(0), 1.0);
    close(m.lr(1), 1.0);
    close(m.lr(2), 0.1);
    close(m.lr(4), 0.1);
    close(m.lr(5), 0.01);
    close(m.lr(100), 0.01);

    let e = Schedule::Exponential { lr: 0.2, gamma: 0.9 };
    close(e.lr(0), 0.2);
    close(e.lr(1), 0.18);
    close(e.lr(3), 0.2 * 0.729);
}

#[test]
fn linear_warmup() {
    let w = Schedule::LinearWarmup {
        lr: 0.4,
        start_factor: 0.25,
        warmup_steps: 4,
    };
    close(w.lr(0), 0.1);
    close(w.lr(1), 0.4 * (0.25 + 0.75 / 4.0));
    close(w.lr(2), 0.25);
    close(w.lr(4), 0.4);
    close(w.lr(50), 0.4);
}

#[test]
fn cosine_matches_the_closed_form() {
    let c = Schedule::Cosine {
        lr: 0.1,
        t_max: 100,
        eta_min: 0.02,
    };
    close(c.lr(0), 0.1);
    close(c.lr(50), (0.1 + 0.02) / 2.0);
    close(c.lr(100), 0.02);
    close(c.lr(25), 0.02 + 0.08 * (1.0 + (PI / 4.0).cos()) / 2.0);
    // Monotone on [0, t_max].
    assert!((1..=100).all(|t| c.lr(t) < c.lr(t - 1)));
}

#[test]
fn warmup_cosine() {
    let s = Schedule::warmup_cosine(6e-4, 10, 110, 6e-5);
    close(s.lr(0), 0.0);
    close(s.lr(5), 3e-4);
    close(s.lr(10), 6e-4);
    close(s.lr(60), (6e-4 + 6e-5) / 2.0);
    close(s.lr(110), 6e-5);
    close(s.lr(500), 6e-5);
    close(s.lr(35), 6e-5 + (6e-4 - 6e-5) * 0.5 * (1.0 + (PI * 0.25).cos()));
}

#[test]
fn one_cycle_matches_torch_defaults() {
    let s = Schedule::one_cycle(0.1, 100);
    let initial = 0.1 / 25.0;
    let min_lr = initial / 1e4;
    close(s.lr(0), initial);
    // torch: the first phase ends at step pct_start * total - 1 = 29, where the lr peaks.
    close(s.lr(29), 0.1);
    assert!(s.lr(28) < 0.1 && s.lr(30) < 0.1);
    close(s.lr(99), min_lr);
    close(s.lr(1000), min_lr);
    // Step 64 is halfway down (pct = (64 - 29) / (99 - 29) = 0.5): the mean of max_lr and min_lr.
    close(s.lr(64), (0.1 + min_lr) / 2.0);
    // Step 10 by torch's formula: pct = 10 / 29, cosine from initial to max.
    close(
        s.lr(10),
        0.1 + (initial - 0.1) / 2.0 * ((PI * 10.0 / 29.0).cos() + 1.0),
    );

    // Explicit fields, serde defaults.
    let parsed: Schedule =
        serde_json::from_str(r#"{"kind": "one_cycle", "max_lr": 0.1, "total_steps": 100}"#).unwrap();
    assert_eq!(parsed, s);
}

#[test]
fn schedules_round_trip_through_serde_and_validate() {
    let all = vec![
        Schedule::Constant { lr: 0.1 },
        Schedule::Step {
            lr: 0.1,
            step_size: 10,
            gamma: 0.5,
        },
        Schedule::MultiStep {
            lr: 0.1,
            milestones: vec![30, 80],
            gamma: 0.1,
        },
        Schedule::Exponential { lr: 0.1, gamma: 0.99 },
        Schedule::LinearWarmup {
            lr: 0.1,
            start_factor: 1.0 / 3.0,
            warmup_steps: 5,
        },
        Schedule::Cosine {
            lr: 0.1,
            t_max: 50,
            eta_min: 0.0,
        },
        Schedule::warmup_cosine(3e-4, 100, 1000, 3e-5),
        Schedule::one_cycle(0.01, 500),
    ];
    for s in &all {
        s.validate().unwrap();
        let json = serde_json::to_string(s).unwrap();
        let back: Schedule = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, s, "{json}");
    }
    assert_eq!(
        serde_json::to_string(&Schedule::Constant { lr: 0.5 }).unwrap(),
        r#"{"kind":"constant","lr":0.5}"#
    );
    assert!(serde_json::from_str::<Schedule>(r#"{"kind":"constant","lr":0.5,"oops":1}"#).is_err());

    let bad = [
        (
            Schedule::Step {
                lr: 0.1,
                step_size: 0,
                gamma: 0.5,
            },
            "step_size",
        ),
        (
            Schedule::Cosine {
                lr: 0.1,
                t_max: 0,
                eta_min: 0.0,
            },
            "t_max",
        ),
        (Schedule::warmup_cosine(0.1, 10, 5, 0.0), "total_steps"),
        (Schedule::Exponential { lr: -0.1, gamma: 0.9 }, "lr"),
        (
            Schedule::LinearWarmup {
                lr: 0.1,
                start_factor: 0.0,
                warmup_steps: 3,
            },
            "start_factor",
        ),
    ];
    for (s, field) in bad {
        let err = s.validate().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }));
        assert!(err.to_string().contains(field), "{err}");
        // lr() still answers without panicking.
        assert!(s.lr(3).is_finite());
    }
}

#[test]
fn a_schedule_drives_the_optimizer() {
    let p = Param::new("w", Tensor::from_vec(vec![1.0f64], [1]).unwrap());
    let mut opt = Sgd::from_params(vec![p.clone()], SgdConfig::default()).unwrap();
    let s = Schedule::Step {
        lr: 0.1,
        step_size: 2,
        gamma: 0.5,
    };
    let mut expected = 1.0f64;
    for t in 0..6 {
        s.apply(&mut opt);
        assert_eq!(opt.lr(), s.lr(t));
        let mut g = Gradients::new();
        g.insert(&p.var(), Tensor::from_vec(vec![1.0f64], [1]).unwrap());
        opt.step(&g).unwrap();
        expected -= s.lr(t);
        close(p.value().to_vec::<f64>().unwrap()[0], expected);
    }
    // A closure is a schedule too.
    let half = |step: usize| 1.0 / (step + 1) as f64;
    half.apply(&mut opt);
    close(opt.lr(), 1.0 / 7.0);
}

// ---------------------------------------------------------------------------------------------
// Clipping and accumulation

fn grads_of(pairs: &[(&Param, Vec<f64>)]) -> Gradients {
    let mut g = Gradients::new();
    for (p, v) in pairs {
        g.insert(
            &p.var(),
            Tensor::from_vec(v.clone(), p.value().shape().clone()).unwrap(),
        );
    }
    g
}

fn grad(p: &Param, g: &Gradients) -> Vec<f64> {
    p.grad(g).unwrap().to_vec::<f64>().unwrap()
}

#[test]
fn clip_grad_norm_returns_the_global_norm_and_rescales() {
    let a = Param::new("a", Tensor::from_vec(vec![0.0f64, 0.0], [2]).unwrap());
    let b = Param::new("b", Tensor::from_vec(vec![0.0f64], [1]).unwrap());
    let mut g = grads_of(&[(&a, vec![3.0, 4.0]), (&b, vec![12.0])]);
    let params = vec![a.clone(), b.clone()];
    assert_eq!(grad_norm(&params, &g).unwrap(), 13.0);
    let norm = clip_grad_norm(&params, &mut g, 6.5).unwrap();
    assert_eq!(norm, 13.0);
    let coef = 6.5 / (13.0 + 1e-6);
    assert_eq!(grad(&a, &g), vec![3.0 * coef, 4.0 * coef]);
    assert_eq!(grad(&b, &g), vec![12.0 * coef]);
    close(grad_norm(&params, &g).unwrap(), 6.5 * 13.0 / (13.0 + 1e-6));

    // Under the limit: untouched (and the norm is still reported).
    let mut g = grads_of(&[(&a, vec![3.0, 4.0]), (&b, vec![12.0])]);
    assert_eq!(clip_grad_norm(&params, &mut g, 20.0).unwrap(), 13.0);
    assert_eq!(grad(&a, &g), vec![3.0, 4.0]);
    assert_eq!(grad(&b, &g), vec![12.0]);

    // A parameter listed twice (tied) counts once; one without a gradient is skipped.
    let c = Param::new("c", Tensor::from_vec(vec![0.0f64], [1]).unwrap());
    let mut g = grads_of(&[(&a, vec![3.0, 4.0]), (&b, vec![12.0])]);
    let listed = vec![a.clone(), b.clone(), a.clone(), c.clone()];
    assert_eq!(clip_grad_norm(&listed, &mut g, 1.0).unwrap(), 13.0);
    close(grad_norm(&listed, &g).unwrap(), 13.0 / (13.0 + 1e-6));
    assert!(c.grad(&g).is_none());

    assert!(matches!(
        clip_grad_norm(&params, &mut g, -1.0),
        Err(Error::InvalidConfig { .. })
    ));
}

#[test]
fn clip_grad_norm_on_f32_gradients_from_backward() {
    let w = Param::new("w", Tensor::from_vec(vec![3.0f32, 4.0], [2]).unwrap());
    // loss = sum(w^2) / 2 -> grad = w = [3, 4], norm 5.
    let v = w.var();
    let mut g = v.mul(&v).unwrap().sum_all().unwrap().backward().unwrap();
    g.scale(0.5).unwrap();
    let norm = clip_grad_norm(std::slice::from_ref(&w), &mut g, 1.0).unwrap();
    assert_eq!(norm, 5.0);
    let clipped = w.grad(&g).unwrap();
    assert_eq!(clipped.dtype(), kiln_tensor::DType::F32);
    let c = clipped.to_vec::<f32>().unwrap();
    assert!((c[0] - 0.6).abs() < 1e-6 && (c[1] - 0.8).abs() < 1e-6, "{c:?}");
}

#[test]
fn clip_grad_value_clamps() {
    let a = Param::new("a", Tensor::from_vec(vec![0.0f64; 4], [4]).unwrap());
    let mut g = grads_of(&[(&a, vec![-3.0, 0.5, 2.0, -0.25])]);
    clip_grad_value(std::slice::from_ref(&a), &mut g, 1.0).unwrap();
    assert_eq!(grad(&a, &g), vec![-1.0, 0.5, 1.0, -0.25]);
    assert!(clip_grad_value(&[a], &mut g, -1.0).is_err());
}

#[test]
fn grad_accumulator_averages_micro_batches() {
    let w = Param::new("w", Tensor::from_vec(vec![1.0f64, 2.0], [2]).unwrap());
    let mut acc = GradAccumulator::new();
    // Micro-batch k has loss sum(x_k * w), gradient x_k.
    let xs = [vec![1.0, 0.0], vec![2.0, 4.0], vec![3.0, -1.0]];
    for x in &xs {
        let x = Var::constant(Tensor::from_vec(x.clone(), [2]).unwrap());
        acc.add(w.var().mul(&x).unwrap().sum_all().unwrap().backward().unwrap())
            .unwrap();
    }
    assert_eq!(acc.count(), 3);
    assert_eq!(grad(&w, acc.sum()), vec![6.0, 3.0]);
    let avg = acc.finish().unwrap();
    assert_eq!(grad(&w, &avg), vec![2.0, 1.0]);
    assert!(GradAccumulator::new().finish().unwrap().is_empty());
}
