//! Properties of the pipeline: the output does not depend on the number of map workers, and
//! shards partition the data.

use std::collections::BTreeSet;

use kiln_data::pipeline::{collate, Pipeline};
use kiln_data::vision::transforms::{
    Compose, Normalize, RandomCrop, RandomHorizontalFlip, ToTensor, Transform,
};
use kiln_data::{Batch, Example, TensorDataset};
use kiln_tensor::{Tensor, TensorRng};
use proptest::prelude::*;

/// `n` random 1x6x6 u8 images with labels 0..n.
fn images(n: usize, seed: u64) -> TensorDataset {
    let mut rng = TensorRng::new(seed);
    let px: Vec<u8> = (0..n * 36).map(|_| rng.next_below(256) as u8).collect();
    let x = Tensor::from_vec(px, [n, 1, 6, 6]).unwrap();
    let y = Tensor::from_vec((0..n as i64).collect::<Vec<_>>(), [n]).unwrap();
    TensorDataset::new(x, y).unwrap()
}

/// Shuffle, a random augmentation on `workers` threads, a deterministic map, batches.
fn pipeline(data: TensorDataset, workers: usize, buffer: usize, batch: usize, seed: u64) -> Pipeline<Batch> {
    let augment = Compose::new()
        .then(RandomCrop::new((6, 6), 2))
        .then(RandomHorizontalFlip::new(0.5).unwrap())
        .then(ToTensor::chw())
        .then(Normalize::new(vec![0.5], vec![0.25]).unwrap());
    Pipeline::from_source(data)
        .shuffle(buffer, seed)
        .unwrap()
        .map_seeded(workers, seed ^ 0xabc, move |ex: Example, rng| {
            augment.apply_example(ex, rng)
        })
        .unwrap()
        .par_map(workers, |ex: Example| ex.map_input(|x| x.mul_scalar(2.0)))
        .unwrap()
        .batch(batch, false, collate::stack_examples)
        .unwrap()
}

fn flatten(batches: &[Batch]) -> (Vec<f32>, Vec<i64>) {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for b in batches {
        x.extend(b.inputs.to_vec::<f32>().unwrap());
        y.extend(b.targets.as_ref().unwrap().to_vec::<i64>().unwrap());
    }
    (x, y)
}

fn run(p: &Pipeline<Batch>, epoch: u64) -> (Vec<f32>, Vec<i64>) {
    let batches: Vec<Batch> = p.iter_epoch(epoch).unwrap().map(|b| b.unwrap()).collect();
    flatten(&batches)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn same_seed_same_batches_for_1_2_and_4_workers(
        n in 1usize..90, buffer in 1usize..100, batch in 1usize..20, seed in any::<u64>(), epoch in 0u64..5,
    ) {
        let data = images(n, seed);
        let one = run(&pipeline(data.clone(), 1, buffer, batch, seed), epoch);
        let two = run(&pipeline(data.clone(), 2, buffer, batch, seed), epoch);
        let four = run(&pipeline(data.clone(), 4, buffer, batch, seed), epoch);
        prop_assert_eq!(&one, &two);
        prop_assert_eq!(&one, &four);
        // Every example once, and the augmentation really is random: another epoch differs.
        let mut labels = one.1.clone();
        labels.sort_unstable();
        prop_assert_eq!(labels, (0..n as i64).collect::<Vec<_>>());
        if n >= 8 {
            let other = run(&pipeline(data, 2, buffer, batch, seed), epoch + 1);
            prop_assert_ne!(one.0, other.0);
        }
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_data_once(
        n in 0usize..200, shards in 1usize..7, buffer in 1usize..300, seed in any::<u64>(), epoch in 0u64..4,
    ) {
        // Sharding after a shuffle: every replica shuffles the same way (same seed) and keeps
        // its own positions.
        let base = Pipeline::range(0..n).shuffle(buffer, seed).unwrap();
        let mut all = Vec::new();
        let mut sizes = Vec::new();
        for index in 0..shards {
            let shard = base.clone().shard(shards, index).unwrap();
            let items: Vec<usize> = shard.iter_epoch(epoch).unwrap().map(|x| x.unwrap()).collect();
            prop_assert_eq!(shard.len(epoch), Some(items.len() as u64));
            sizes.push(items.len());
            all.extend(items);
        }
        prop_assert_eq!(all.len(), n, "every element exactly once");
        let set: BTreeSet<usize> = all.into_iter().collect();
        prop_assert_eq!(set, (0..n).collect::<BTreeSet<_>>());
        // Balanced: sizes differ by at most one.
        let (lo, hi) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
        prop_assert!(hi - lo <= 1, "{:?}", sizes);
    }

    #[test]
    fn shuffle_reads_its_upstream_three_ways_with_one_order(
        n in 0usize..120, buffer in 1usize..130, seed in any::<u64>(), epoch in 0u64..4, stop_frac in 0.0f64..1.0,
    ) {
        // Random access (a source), known length (after a map: read in order, skipped where
        // possible) and unknown length (after a filter: read eagerly) give the same order.
        let fetch = Pipeline::range(0..n).shuffle(buffer, seed).unwrap();
        let lazy = Pipeline::range(0..n).par_map(3, Ok).unwrap().shuffle(buffer, seed).unwrap();
        let eager = Pipeline::range(0..n).filter(|_| true).shuffle(buffer, seed).unwrap();
        let order = |p: &Pipeline<usize>| -> Vec<usize> {
            p.iter_epoch(epoch).unwrap().map(|x| x.unwrap()).collect()
        };
        let want = order(&fetch);
        prop_assert_eq!(&order(&lazy), &want);
        prop_assert_eq!(&order(&eager), &want);
        // Restoring in each mode gives the tail.
        let stop = (n as f64 * stop_frac) as usize;
        for p in [&fetch, &lazy, &eager] {
            let mut it = p.iter_epoch(epoch).unwrap();
            for _ in 0..stop {
                it.next().unwrap().unwrap();
            }
            let tail: Vec<usize> = p.iter_from(&it.state()).unwrap().map(|x| x.unwrap()).collect();
            prop_assert_eq!(&tail[..], &want[stop..]);
        }
    }

    #[test]
    fn sharding_before_a_shuffle_partitions_too(n in 0usize..150, shards in 1usize..5, seed in any::<u64>()) {
        let mut all = Vec::new();
        for index in 0..shards {
            let p = Pipeline::range(0..n).shard(shards, index).unwrap().shuffle(16, seed).unwrap();
            all.extend(p.iter().unwrap().map(|x| x.unwrap()));
        }
        all.sort_unstable();
        prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
    }
}
