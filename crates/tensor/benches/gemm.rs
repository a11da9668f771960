//! f32 GEMM throughput: kiln's matmul (the `gemm` crate) against ndarray's `general_mat_mul`
//! (matrixmultiply, threaded; OpenBLAS when built with `--features blas`), same inputs, same run.
//!
//! Criterion's throughput column reads as GFLOP/s: one "element" is one floating-point operation
//! (2·n³ per product). Compare with numpy/OpenBLAS via `benches/reference/gemm_numpy.py`.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln_tensor::{DType, Device, Tensor, TensorRng};
use std::time::Duration;

fn bench_gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm_f32");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut rng = TensorRng::new(0);
    for n in [256usize, 512, 1024, 2048] {
        let a = Tensor::randn([n, n], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        let b = Tensor::randn([n, n], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        group.bench_with_input(BenchmarkId::new("kiln", n), &n, |bch, _| {
            bch.iter(|| a.matmul(&b).unwrap())
        });
        let an = a
            .to_ndarray::<f32>()
            .unwrap()
            .into_dimensionality::<ndarray::Ix2>()
            .unwrap();
        let bn = b
            .to_ndarray::<f32>()
            .unwrap()
            .into_dimensionality::<ndarray::Ix2>()
            .unwrap();
        let mut cn = ndarray::Array2::<f32>::zeros((n, n));
        group.bench_with_input(BenchmarkId::new("ndarray", n), &n, |bch, _| {
            bch.iter(|| ndarray::linalg::general_mat_mul(1.0, &an, &bn, 0.0, &mut cn))
        });
    }
    group.finish();
}

/// The same f32 products under `MatmulPrecision::Bf16` (bf16 operands, f32 accumulation) beside
/// f32: square sizes and the shapes of a gpt-tiny training step (tokens x width x width, the
/// MLP's 4x expansion) and of LeNet-5's fully connected layers at batch 64.
fn bench_bf16(c: &mut Criterion) {
    use kiln_tensor::{set_matmul_precision, MatmulPrecision};
    let mut group = c.benchmark_group("gemm_bf16_vs_f32");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut rng = TensorRng::new(1);
    let shapes: [(usize, usize, usize); 7] = [
        (256, 256, 256),
        (512, 512, 512),
        (1024, 1024, 1024),
        (2048, 2048, 2048),
        (2048, 384, 384),
        (2048, 1536, 384),
        (64, 120, 400),
    ];
    for (m, n, k) in shapes {
        let a = Tensor::randn([m, k], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        let b = Tensor::randn([k, n], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        let label = format!("{m}x{n}x{k}");
        for precision in [MatmulPrecision::F32, MatmulPrecision::Bf16] {
            group.bench_with_input(BenchmarkId::new(precision.name(), &label), &label, |bch, _| {
                let _mode = set_matmul_precision(precision);
                bch.iter(|| a.matmul(&b).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_gemm, bench_bf16);
criterion_main!(benches);
