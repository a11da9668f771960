//! f32 `conv2d` forward throughput (im2col + GEMM) on three typical layer shapes.
//!
//! Criterion's throughput column reads as GFLOP/s: one "element" is one floating-point operation
//! (`2 · N · C_out · H_out · W_out · C_in/groups · kH · kW` per call). Before each criterion group a
//! quick timing of a few calls is printed as `conv2d <case>: <x> GFLOP/s` for a one-line summary.

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

const CASES: [Case; 3] = [
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
        name: "n8_64to64_56x56_k3",
        n: 8,
        cin: 64,
        cout: 64,
        hw: 56,
        k: 3,
        pad: 1,
    },
];

fn bench_conv2d(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d_f32");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut rng = TensorRng::new(0);
    for case in &CASES {
        let x = Tensor::randn(
            [case.n, case.cin, case.hw, case.hw],
            0.0,
            1.0,
            DType::F32,
            Device::Cpu,
            &mut rng,
        )
        .unwrap();
        let w = Tensor::randn(
            [case.cout, case.cin, case.k, case.k],
            0.0,
            0.1,
            DType::F32,
            Device::Cpu,
            &mut rng,
        )
        .unwrap();
        let b = Tensor::zeros([case.cout], DType::F32, Device::Cpu).unwrap();
        let p = Conv2dParams {
            padding: (case.pad, case.pad),
            ..Default::default()
        };
        let out = case.hw + 2 * case.pad - case.k + 1;
        let flops = 2 * case.n * case.cout * out * out * case.cin * case.k * case.k;

        // A quick standalone measurement for the printed summary line.
        let run = || x.conv2d(&w, Some(&b), p).unwrap();
        run();
        let start = Instant::now();
        let mut iters = 0u32;
        while iters < 3 || start.elapsed() < Duration::from_millis(500) {
            std::hint::black_box(run());
            iters += 1;
        }
        let secs = start.elapsed().as_secs_f64() / iters as f64;
        println!(
            "conv2d {}: {:.2} ms/call, {:.2} GFLOP/s",
            case.name,
            secs * 1e3,
            flops as f64 / secs / 1e9
        );

        group.throughput(Throughput::Elements(flops as u64));
        group.bench_with_input(BenchmarkId::new("kiln", case.name), &(), |bch, _| bch.iter(run));
    }
    group.finish();
}

criterion_group!(benches, bench_conv2d);
criterion_main!(benches);
