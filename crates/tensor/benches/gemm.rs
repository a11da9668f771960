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

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
