//! Input throughput on the real MNIST training set (`data/mnist`): batches of 64 with shuffling
//! and normalisation, in images per second (criterion's throughput column: one element is one
//! image; one iteration is a whole epoch of 937 batches).
//!
//! - `pipeline/workers=N`: `Mnist` source → `shuffle(60000)` → `map_seeded(N workers,
//!   ToTensor + Normalize)` → `batch(64, drop_remainder)` with `stack_examples` → `prefetch(8)`:
//!   every image converted from `u8` and normalised per element, per epoch.
//! - `data_loader`: `DataLoader` (shuffle, batch 64, drop_last, prefetch 2) over the dataset
//!   normalised once at load (`Mnist::to_dataset(true)`), which gathers each batch with one
//!   `index_select`.
//!
//! LeNet-5 training consumes about 5,000 images/s on this machine (12.8 ms per batch of 64), so
//! the target is ≥ 100,000 images/s. Before the criterion groups a one-epoch timing of each
//! variant is printed as `<variant>: <x> images/s`.
//!
//! `cargo bench -p kiln-data --bench pipeline`

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_data::mnist::{Mnist, Split};
use kiln_data::pipeline::{collate, Pipeline};
use kiln_data::vision::transforms::{Compose, Normalize, ToTensor, Transform};
use kiln_data::{Batch, DataLoader, MNIST_MEAN, MNIST_STD};

const BATCH: usize = 64;

fn pipeline(train: &Mnist, workers: usize) -> Pipeline<Batch> {
    let normalize = Compose::new()
        .then(ToTensor::chw())
        .then(Normalize::new(vec![MNIST_MEAN], vec![MNIST_STD]).expect("valid normalisation"));
    Pipeline::from_source(train.clone())
        .shuffle(train.len(), 0)
        .expect("shuffle")
        .map_seeded(workers, 1, move |ex, rng| normalize.apply_example(ex, rng))
        .expect("map")
        .batch(BATCH, true, collate::stack_examples)
        .expect("batch")
        .prefetch(8)
        .expect("prefetch")
}

/// Read one epoch; the number of images.
fn epoch(p: &Pipeline<Batch>, e: u64) -> usize {
    p.iter_epoch(e)
        .expect("open")
        .map(|b| b.expect("batch").len())
        .sum()
}

fn loader_epoch(loader: &DataLoader<'_>, e: usize) -> usize {
    loader.iter_epoch(e).map(|b| b.expect("batch").len()).sum()
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let train = match Mnist::load(&dir, Split::Train) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("skipping the pipeline benchmark: {e}");
            return;
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut worker_counts = vec![1, 2];
    if cores > 2 {
        worker_counts.push(cores);
    }
    let images = (train.len() / BATCH * BATCH) as u64;

    let dataset = train.to_dataset(true).expect("dataset");
    let loader = DataLoader::new(&dataset, BATCH)
        .expect("loader")
        .shuffle(0)
        .drop_last(true);

    // One-line summaries.
    for &w in &worker_counts {
        let p = pipeline(&train, w);
        let t = Instant::now();
        let n = epoch(&p, 0);
        println!(
            "pipeline workers={w}: {:.0} images/s",
            n as f64 / t.elapsed().as_secs_f64()
        );
    }
    let t = Instant::now();
    let n = loader_epoch(&loader, 0);
    println!(
        "data_loader: {:.0} images/s",
        n as f64 / t.elapsed().as_secs_f64()
    );

    let mut g = c.benchmark_group("mnist_batches64_shuffle_normalize");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(images));
    for &w in &worker_counts {
        let p = pipeline(&train, w);
        let mut e = 0;
        g.bench_function(format!("pipeline/workers={w}"), |b| {
            b.iter(|| {
                e += 1;
                epoch(&p, e)
            })
        });
    }
    let mut e = 0;
    g.bench_function("data_loader", |b| {
        b.iter(|| {
            e += 1;
            loader_epoch(&loader, e)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
