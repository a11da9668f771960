//! f32 convolution throughput on typical layer shapes (LeNet-5's first layer, ResNet-20's three
//! stages, a wider 3x3): the forward pass and both backward passes (`grad_input`, `grad_weight`).
//!
//! Criterion's throughput column reads as GFLOP/s: one "element" is one floating-point operation
//! (`2 · N · C_out · H_out · W_out · C_in/groups · kH · kW` per call, the same for each pass).
//! First a quick timing of a few calls of every case and pass is printed as
//! `conv2d <pass> <case>: <ms> ms/call, <x> GFLOP/s`, a summary to compare before and after a change
//! (`cargo bench -p kiln-tensor --bench conv -- summary-only` prints just that).

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln_tensor::ops::conv::Conv2dParams;
use kiln_tensor::{DType, Device, Tensor, TensorRng};
use std::time::{Duration, Instant};

/// One benchmark shape: batch, channels in/out, square input size, square kernel, padding.
struct Case {
    name: &'static str,
    n: usize,
    cin: usize,
    cout: usize,
    hw: usize,
    k: usize,
    pad: usize,
}

const CASES: [Case; 5] = [
    Case {
        name: "lenet_n64_1to6_28x28_k5",
        n: 64,
        cin: 1,
        cout: 6,
        hw: 28,
        k: 5,
        pad: 2,
    },
    Case {
        name: "resnet_n32_16to16_32x32_k3",
        n: 32,
        cin: 16,
        cout: 16,
        hw: 32,
        k: 3,
        pad: 1,
    },
    Case {
        name: "resnet_n32_32to32_16x16_k3",
        n: 32,
        cin: 32,
        cout: 32,
        hw: 16,
        k: 3,
        pad: 1,
    },
    Case {
        name: "resnet_n32_64to64_8x8_k3",
        n: 32,
        cin: 64,
        cout: 64,
        hw: 8,
        k: 3,
        pad: 1,
    },
    Case {
        name: "n8_64to64_56x56_k3",
        n: 8,
        cin: 64,
        cout: 64,
        hw: 56,
        k: 3,
        pad: 1,
    },
];

/// The three passes of a convolution layer.
const PASSES: [&str; 3] = ["forward", "grad_input", "grad_weight"];

fn bench_conv2d(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d_f32");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut rng = TensorRng::new(0);
    for case in &CASES {
        let randn = |dims: [usize; 4], std: f64, rng: &mut TensorRng| {
            Tensor::randn(dims, 0.0, std, DType::F32, Device::Cpu, rng).unwrap()
        };
        let x = randn([case.n, case.cin, case.hw, case.hw], 1.0, &mut rng);
        let w_dims = [case.cout, case.cin, case.k, case.k];
        let w = randn(w_dims, 0.1, &mut rng);
        let b = Tensor::zeros([case.cout], DType::F32, Device::Cpu).unwrap();
        let p = Conv2dParams {
            padding: (case.pad, case.pad),
            ..Default::default()
        };
        let out = case.hw + 2 * case.pad - case.k + 1;
        let dy = randn([case.n, case.cout, out, out], 1.0, &mut rng);
        let flops = 2 * case.n * case.cout * out * out * case.cin * case.k * case.k;
        for pass in PASSES {
            let run = || match pass {
                "forward" => x.conv2d(&w, Some(&b), p).unwrap(),
                "grad_input" => Tensor::conv2d_grad_input(&dy, &w, (case.hw, case.hw), p).unwrap(),
                _ => Tensor::conv2d_grad_weight(&x, &dy, w_dims, p).unwrap(),
            };
            // A quick standalone measurement for the printed summary line.
            run();
            let start = Instant::now();
            let mut iters = 0u32;
            while iters < 3 || start.elapsed() < Duration::from_millis(500) {
                std::hint::black_box(run());
                iters += 1;
            }
            let secs = start.elapsed().as_secs_f64() / iters as f64;
            println!(
                "conv2d {pass} {}: {:.3} ms/call, {:.2} GFLOP/s",
                case.name,
                secs * 1e3,
                flops as f64 / secs / 1e9
            );
            group.throughput(Throughput::Elements(flops as u64));
            group.bench_with_input(BenchmarkId::new(pass, case.name), &(), |bch, _| bch.iter(run));
        }
    }
    group.finish();
}

criterion_group!(benches, bench_conv2d);
criterion_main!(benches);
