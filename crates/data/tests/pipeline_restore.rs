//! Saving a pipeline's position and restoring it in a new pipeline: the next items equal those
//! of the uninterrupted run, and restoring skips the expensive work where it can.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kiln_data::pipeline::{collate, Pipeline, PipelineState};
use kiln_data::{Batch, DataLoader, Example, TensorDataset};
use kiln_tensor::{Tensor, TensorRng};
use proptest::prelude::*;

fn dataset(n: usize) -> TensorDataset {
    let x = Tensor::from_vec((0..n * 3).map(|i| i as f32).collect::<Vec<_>>(), [n, 3]).unwrap();
    let y = Tensor::from_vec((0..n as i64).collect::<Vec<_>>(), [n]).unwrap();
    TensorDataset::new(x, y).unwrap()
}

/// The training-style pipeline; `calls` counts map invocations.
fn build(n: usize, workers: usize, repeat: Option<u64>, calls: Arc<AtomicUsize>) -> Pipeline<Batch> {
    let p = Pipeline::from_source(dataset(n))
        .shuffle(n.max(1), 21)
        .unwrap()
        .map_seeded(workers, 5, move |ex: Example, rng: &mut TensorRng| {
            calls.fetch_add(1, Ordering::SeqCst);
            let noise = rng.next_f64();
            ex.map_input(|x| x.add_scalar(noise))
        })
        .unwrap()
        .batch(4, false, collate::stack_examples)
        .unwrap()
        .prefetch(2)
        .unwrap();
    match repeat {
        Some(times) => p.repeat(Some(times)),
        None => p,
    }
}

fn key(b: &Batch) -> (Vec<f32>, Vec<i64>) {
    (
        b.inputs.to_vec::<f32>().unwrap(),
        b.targets.as_ref().unwrap().to_vec::<i64>().unwrap(),
    )
}

#[test]
fn restore_mid_epoch_continues_exactly_without_mapping_the_skipped_elements() {
    let calls = Arc::new(AtomicUsize::new(0));
    let p = build(30, 2, None, Arc::clone(&calls));
    let straight: Vec<_> = p.iter_epoch(3).unwrap().map(|b| key(&b.unwrap())).collect();
    assert_eq!(straight.len(), 8);
    // Stop after 3 batches, save the position through JSON.
    let mut it = p.iter_epoch(3).unwrap();
    for _ in 0..3 {
        it.next().unwrap().unwrap();
    }
    let json = serde_json::to_string(&it.state()).unwrap();
    drop(it);
    let state: PipelineState = serde_json::from_str(&json).unwrap();
    assert_eq!((state.epoch, state.offset), (3, 3));
    // A new pipeline, built the same way but with another worker count.
    let fresh_calls = Arc::new(AtomicUsize::new(0));
    let q = build(30, 4, None, Arc::clone(&fresh_calls));
    let resumed: Vec<_> = q.iter_from(&state).unwrap().map(|b| key(&b.unwrap())).collect();
    assert_eq!(resumed, straight[3..]);
    assert_eq!(
        fresh_calls.load(Ordering::SeqCst),
        30 - 12,
        "the 12 skipped elements were not mapped"
    );
}

#[test]
fn restore_across_an_epoch_boundary_with_repeat() {
    let calls = Arc::new(AtomicUsize::new(0));
    // 10 examples in batches of 4: 3 batches per pass, 3 passes.
    let p = build(10, 1, Some(3), Arc::clone(&calls));
    let straight: Vec<_> = p.iter_epoch(0).unwrap().map(|b| key(&b.unwrap())).collect();
    assert_eq!(straight.len(), 9);
    assert_ne!(straight[0], straight[3], "each pass reshuffles");
    for stop in [2, 3, 4, 7, 9] {
        let mut it = p.iter_epoch(0).unwrap();
        for _ in 0..stop {
            it.next().unwrap().unwrap();
        }
        let state = it.state();
        let q = build(10, 3, Some(3), Arc::new(AtomicUsize::new(0)));
        let resumed: Vec<_> = q.iter_from(&state).unwrap().map(|b| key(&b.unwrap())).collect();
        assert_eq!(resumed, straight[stop..], "stopped after {stop}");
    }
}

#[test]
fn restore_through_filter_interleave_shard_take_and_cache() {
    let build = || {
        Pipeline::range(0..12)
            .interleave(3, 2, |i| Ok(Pipeline::range(i * 100..i * 100 + 1 + i % 4)))
            .unwrap()
            .filter(|x| x % 3 != 1)
            .cache()
            .shuffle(5, 8)
            .unwrap()
            .shard(2, 1)
            .unwrap()
            .repeat(Some(2))
            .take(13)
            .batch(2, false, Ok)
            .unwrap()
    };
    let p = build();
    let straight: Vec<Vec<usize>> = p.iter_epoch(1).unwrap().map(|b| b.unwrap()).collect();
    assert!(straight.len() >= 5, "{straight:?}");
    for stop in 0..=straight.len() {
        let mut it = p.iter_epoch(1).unwrap();
        for _ in 0..stop {
            it.next().unwrap().unwrap();
        }
        let state = it.state();
        let resumed: Vec<Vec<usize>> = build().iter_from(&state).unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(resumed, straight[stop..], "stopped after {stop}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_stop_point_restores_exactly(
        n in 1usize..60, buffer in 1usize..70, batch in 1usize..9, drop in any::<bool>(),
        times in 1u64..4, seed in any::<u64>(), epoch in 0u64..3, stop_frac in 0.0f64..1.0,
    ) {
        let build = || {
            Pipeline::range(0..n)
                .shuffle(buffer, seed)
                .unwrap()
                .map_seeded(2, seed, |x, rng| Ok((x, rng.next_below(1000))))
                .unwrap()
                .batch(batch, drop, Ok)
                .unwrap()
                .repeat(Some(times))
        };
        let p = build();
        let straight: Vec<_> = p.iter_epoch(epoch).unwrap().map(|b| b.unwrap()).collect();
        prop_assert_eq!(p.len(epoch), Some(straight.len() as u64));
        let stop = ((straight.len() as f64) * stop_frac) as usize;
        let mut it = p.iter_epoch(epoch).unwrap();
        for _ in 0..stop {
            it.next().unwrap().unwrap();
        }
        let resumed: Vec<_> = build().iter_from(&it.state()).unwrap().map(|b| b.unwrap()).collect();
        prop_assert_eq!(&resumed[..], &straight[stop..]);
    }
}

#[test]
fn data_loader_positions_round_trip_and_are_checked() {
    let data = dataset(23);
    let loader = DataLoader::new(&data, 5).unwrap().shuffle(3);
    let straight: Vec<Vec<i64>> = loader
        .iter_epoch(2)
        .map(|b| b.unwrap().targets.unwrap().to_vec::<i64>().unwrap())
        .collect();
    let mut it = loader.iter_epoch(2);
    it.next().unwrap().unwrap();
    it.next().unwrap().unwrap();
    let state = it.state();
    assert_eq!((state.epoch, state.offset), (2, 2));
    assert_eq!(state, loader.state(2, 2));
    let json = serde_json::to_string(&state).unwrap();
    let back: PipelineState = serde_json::from_str(&json).unwrap();
    let resumed: Vec<Vec<i64>> = loader
        .iter_from_state(&back)
        .unwrap()
        .map(|b| b.unwrap().targets.unwrap().to_vec::<i64>().unwrap())
        .collect();
    assert_eq!(resumed, straight[2..]);
    // Another seed, another batch size or another dataset length: refused.
    let other_seed = DataLoader::new(&data, 5).unwrap().shuffle(4);
    let e = other_seed.iter_from_state(&back).err().unwrap().to_string();
    assert!(e.contains("seed 3") && e.contains("seed 4"), "{e}");
    let smaller = dataset(20);
    let e = DataLoader::new(&smaller, 5)
        .unwrap()
        .shuffle(3)
        .iter_from_state(&back)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("examples=23") && e.contains("examples=20"), "{e}");
    // Replicas share positions: replica 0's state restores replica 1 at the same batch of its
    // own shard.
    let r0 = DataLoader::new(&data, 3).unwrap().shuffle(3).shard(0, 2).unwrap();
    let r1 = DataLoader::new(&data, 3).unwrap().shuffle(3).shard(1, 2).unwrap();
    let r1_straight: Vec<Vec<i64>> = r1
        .iter_epoch(1)
        .map(|b| b.unwrap().targets.unwrap().to_vec::<i64>().unwrap())
        .collect();
    let r1_resumed: Vec<Vec<i64>> = r1
        .iter_from_state(&r0.state(1, 2))
        .unwrap()
        .map(|b| b.unwrap().targets.unwrap().to_vec::<i64>().unwrap())
        .collect();
    assert_eq!(r1_resumed, r1_straight[2..]);
    assert!(DataLoader::new(&data, 3)
        .unwrap()
        .shuffle(3)
        .iter_from_state(&r0.state(1, 2))
        .is_err());
    // A state without a fingerprint (an old checkpoint) is taken as is.
    let bare: PipelineState = serde_json::from_str(r#"{"epoch": 2, "offset": 4}"#).unwrap();
    assert_eq!(loader.iter_from_state(&bare).unwrap().count(), 1);
}
