//! Semantics of each pipeline combinator on small known inputs, collation, the cache file, and
//! errors for bad arguments.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kiln_data::pipeline::{collate, DatasetSource, Pipeline, PipelineState, Source};
use kiln_data::{Example, TensorDataset};
use kiln_tensor::Tensor;

fn collect<T: Send + 'static>(p: &Pipeline<T>, epoch: u64) -> Vec<T> {
    p.iter_epoch(epoch)
        .unwrap()
        .collect::<kiln_data::Result<Vec<T>>>()
        .unwrap()
}

fn range(n: usize) -> Pipeline<usize> {
    Pipeline::range(0..n)
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-pipeline-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn take_skip_filter_map() {
    assert_eq!(collect(&range(10).take(3), 0), vec![0, 1, 2]);
    assert_eq!(collect(&range(10).skip(7), 0), vec![7, 8, 9]);
    assert_eq!(collect(&range(3).take(10), 0), vec![0, 1, 2]);
    assert_eq!(collect(&range(3).skip(10), 0), Vec::<usize>::new());
    assert_eq!(collect(&range(10).skip(2).take(3), 0), vec![2, 3, 4]);
    let evens = range(10).filter(|x| x % 2 == 0);
    assert_eq!(collect(&evens, 0), vec![0, 2, 4, 6, 8]);
    assert_eq!(evens.len(0), None);
    let squares = range(5).map(|x| Ok(x * x));
    assert_eq!(collect(&squares, 0), vec![0, 1, 4, 9, 16]);
    assert_eq!(range(10).skip(2).take(3).len(0), Some(3));
}

#[test]
fn repeat_counts_and_reshuffles_each_pass() {
    assert_eq!(collect(&range(3).repeat(Some(2)), 0), vec![0, 1, 2, 0, 1, 2]);
    assert_eq!(collect(&range(3).repeat(Some(0)), 0), Vec::<usize>::new());
    assert_eq!(range(3).repeat(Some(4)).len(0), Some(12));
    let forever: Vec<usize> = range(3)
        .repeat(None)
        .iter()
        .unwrap()
        .take(7)
        .map(|x| x.unwrap())
        .collect();
    assert_eq!(forever, vec![0, 1, 2, 0, 1, 2, 0]);
    // An empty upstream repeated forever ends instead of spinning.
    assert_eq!(collect(&range(0).repeat(None), 0), Vec::<usize>::new());
    // Each pass of a shuffled pipeline is a new permutation.
    let r = collect(&range(20).shuffle(20, 3).unwrap().repeat(Some(3)), 0);
    let passes: Vec<&[usize]> = r.chunks(20).collect();
    for p in &passes {
        let mut s = p.to_vec();
        s.sort_unstable();
        assert_eq!(s, (0..20).collect::<Vec<_>>());
    }
    assert_ne!(passes[0], passes[1]);
    assert_ne!(passes[1], passes[2]);
}

#[test]
fn shuffle_is_seeded_per_epoch_and_buffered() {
    let p = range(50).shuffle(50, 11).unwrap();
    let (a, b) = (collect(&p, 0), collect(&p, 1));
    assert_eq!(a, collect(&p, 0), "same seed and epoch, same order");
    assert_ne!(a, b, "another epoch, another order");
    assert_ne!(a, (0..50).collect::<Vec<_>>());
    let mut s = a.clone();
    s.sort_unstable();
    assert_eq!(s, (0..50).collect::<Vec<_>>());
    assert_ne!(a, collect(&range(50).shuffle(50, 12).unwrap(), 0), "another seed");
    // With a buffer of k, element i cannot come out before position i - k + 1.
    let k = 4;
    let small = collect(&range(50).shuffle(k, 1).unwrap(), 0);
    for (pos, &x) in small.iter().enumerate() {
        assert!(x < pos + k, "{x} at {pos}");
    }
    // Buffer 1 is the identity.
    assert_eq!(
        collect(&range(9).shuffle(1, 5).unwrap(), 0),
        (0..9).collect::<Vec<_>>()
    );
    // The same order through a non-random-access upstream (filter) and a random-access one.
    let direct = collect(&range(30).shuffle(8, 2).unwrap(), 0);
    let through_filter = collect(&range(30).filter(|_| true).shuffle(8, 2).unwrap(), 0);
    let through_map = collect(&range(30).map(Ok).shuffle(8, 2).unwrap(), 0);
    assert_eq!(direct, through_filter);
    assert_eq!(direct, through_map);
}

#[test]
fn a_full_buffer_shuffle_is_uniform() {
    // Over 4000 epochs, each of 5 elements lands in each position about 800 times.
    let p = range(5).shuffle(5, 9).unwrap();
    let mut counts = [[0u32; 5]; 5];
    for e in 0..4000 {
        for (pos, x) in collect(&p, e).into_iter().enumerate() {
            counts[x][pos] += 1;
        }
    }
    for row in counts {
        for c in row {
            assert!((680..=920).contains(&c), "{counts:?}");
        }
    }
}

#[test]
fn batch_with_and_without_remainder() {
    let keep = range(7).batch(3, false, Ok).unwrap();
    assert_eq!(collect(&keep, 0), vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
    assert_eq!(keep.len(0), Some(3));
    let drop = range(7).batch(3, true, Ok).unwrap();
    assert_eq!(collect(&drop, 0), vec![vec![0, 1, 2], vec![3, 4, 5]]);
    assert_eq!(drop.len(0), Some(2));
}

#[test]
fn stack_examples_makes_batches() {
    let x = Tensor::from_vec((0..12).map(|i| i as f32).collect::<Vec<_>>(), [6, 2]).unwrap();
    let y = Tensor::from_vec((0..6).map(|i| i * 10).collect::<Vec<i64>>(), [6]).unwrap();
    let data = TensorDataset::new(x, y).unwrap();
    let p = Pipeline::from_source(data)
        .batch(4, false, collate::stack_examples)
        .unwrap();
    let b = collect(&p, 0);
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].inputs.dims(), &[4, 2]);
    assert_eq!(b[1].inputs.to_vec::<f32>().unwrap(), vec![8., 9., 10., 11.]);
    assert_eq!(
        b[1].targets.as_ref().unwrap().to_vec::<i64>().unwrap(),
        vec![40, 50]
    );
    // Mixed labelled and unlabelled examples are an error.
    let mixed = vec![
        Example::new(Tensor::scalar(1f32), Tensor::scalar(0i64)),
        Example {
            input: Tensor::scalar(2f32),
            target: None,
        },
    ];
    let e = collate::stack_examples(mixed).unwrap_err().to_string();
    assert!(e.contains("1 of the 2"), "{e}");
}

#[test]
fn any_dataset_is_a_source_of_examples() {
    let x = Tensor::from_vec((0..8).map(|i| i as f32).collect::<Vec<_>>(), [4, 2]).unwrap();
    let y = Tensor::from_vec(vec![5i64, 6, 7, 8], [4]).unwrap();
    let data = TensorDataset::new(x, y).unwrap();
    assert_eq!(data.len(), 4);
    let via_dataset = Pipeline::from_source(DatasetSource(data.clone()))
        .batch(3, false, collate::stack_examples)
        .unwrap();
    let direct = Pipeline::from_source(data)
        .batch(3, false, collate::stack_examples)
        .unwrap();
    let (a, b) = (collect(&via_dataset, 0), collect(&direct, 0));
    assert_eq!(a.len(), 2);
    for (p, q) in a.iter().zip(&b) {
        assert_eq!(
            p.inputs.to_vec::<f32>().unwrap(),
            q.inputs.to_vec::<f32>().unwrap()
        );
        assert_eq!(
            p.targets.as_ref().unwrap().to_vec::<i64>().unwrap(),
            q.targets.as_ref().unwrap().to_vec::<i64>().unwrap()
        );
    }
    assert_eq!(a[1].inputs.to_vec::<f32>().unwrap(), vec![6.0, 7.0]);
    let e = DatasetSource(dataset_of(2)).get(2).unwrap_err().to_string();
    assert!(e.contains("index 2"), "{e}");
}

fn dataset_of(n: usize) -> TensorDataset {
    let x = Tensor::zeros([n, 1], kiln_tensor::DType::F32, kiln_tensor::Device::Cpu).unwrap();
    TensorDataset::unlabeled(x).unwrap()
}

#[test]
fn padding_collation_values_lengths_and_mask() {
    let seqs: Vec<Tensor> = [vec![1i64, 2, 3], vec![4], vec![], vec![5, 6]]
        .into_iter()
        .map(|v| {
            let n = v.len();
            Tensor::from_vec(v, [n]).unwrap()
        })
        .collect();
    let p = Pipeline::from_vec(seqs)
        .batch(4, false, collate::pad(-1.0))
        .unwrap();
    let b = collect(&p, 0).remove(0);
    assert_eq!(b.values.dims(), &[4, 3]);
    assert_eq!(
        b.values.to_vec::<i64>().unwrap(),
        vec![1, 2, 3, 4, -1, -1, -1, -1, -1, 5, 6, -1]
    );
    assert_eq!(b.lengths.to_vec::<i64>().unwrap(), vec![3, 1, 0, 2]);
    assert_eq!(
        b.mask.to_vec::<u8>().unwrap(),
        vec![1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0]
    );
    // Trailing dimensions are kept: sequences of 2-vectors.
    let a = Tensor::from_vec(vec![1f32, 2., 3., 4.], [2, 2]).unwrap();
    let c = Tensor::from_vec(vec![5f32, 6.], [1, 2]).unwrap();
    let b = collate::pad(0.5)(vec![a, c.clone()]).unwrap();
    assert_eq!(b.values.dims(), &[2, 2, 2]);
    assert_eq!(
        b.values.to_vec::<f32>().unwrap(),
        vec![1., 2., 3., 4., 5., 6., 0.5, 0.5]
    );
    // Mismatched trailing dimensions or dtypes are errors naming the element.
    let e = collate::pad(0.0)(vec![c.clone(), Tensor::from_vec(vec![1f32; 3], [1, 3]).unwrap()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("element 1"), "{e}");
    let e = collate::pad(0.0)(vec![c, Tensor::from_vec(vec![1i64; 2], [1, 2]).unwrap()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("dtype"), "{e}");
    // Vectors of token ids.
    let b = collate::pad_vecs(0u32)(vec![vec![7, 8], vec![9, 10, 11]]).unwrap();
    assert_eq!(b.values.to_vec::<u32>().unwrap(), vec![7, 8, 0, 9, 10, 11]);
    assert_eq!(b.mask.to_vec::<u8>().unwrap(), vec![1, 1, 0, 1, 1, 1]);
}

#[test]
fn interleave_matches_tf_data() {
    // tf.data's documented example: range(1, 6).interleave(lambda x: from_tensors(x).repeat(6),
    // cycle_length=2, block_length=4).
    let p = Pipeline::range(1..6)
        .interleave(2, 4, |x| Ok(Pipeline::from_vec(vec![x; 6])))
        .unwrap();
    let want = vec![
        1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 3, 3, 4, 4, 5, 5, 5, 5, 5, 5,
    ];
    assert_eq!(collect(&p, 0), want);
    // Cycle 1 is a flat map; inner pipelines of different lengths.
    let flat = Pipeline::range(0..4)
        .interleave(1, 2, |n| Ok(Pipeline::range(0..n)))
        .unwrap();
    assert_eq!(collect(&flat, 0), vec![0, 0, 1, 0, 1, 2]);
    let mixed = Pipeline::range(1..4)
        .interleave(3, 1, |n| Ok(Pipeline::range(10 * n..10 * n + n)))
        .unwrap();
    assert_eq!(collect(&mixed, 0), vec![10, 20, 30, 21, 31, 32]);
    // An error opening an inner pipeline is an item.
    let failing = Pipeline::range(0..3)
        .interleave(2, 1, |n| {
            if n == 1 {
                Err(kiln_data::Error::Tensor(kiln_tensor::Error::invalid(
                    "test", "no one",
                )))
            } else {
                Ok(Pipeline::range(0..2))
            }
        })
        .unwrap();
    let items: Vec<_> = failing.iter().unwrap().collect();
    assert!(items
        .last()
        .unwrap()
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("no one"));
}

#[test]
fn par_map_keeps_order_and_reports_errors_and_panics() {
    let p = range(200).par_map(4, |x| Ok(x * 3)).unwrap();
    assert_eq!(collect(&p, 0), (0..200).map(|x| x * 3).collect::<Vec<_>>());
    let failing = range(100)
        .par_map(3, |x| {
            if x == 37 {
                Err(kiln_data::Error::Tensor(kiln_tensor::Error::invalid(
                    "test", "bad 37",
                )))
            } else {
                Ok(x)
            }
        })
        .unwrap();
    let items: Vec<_> = failing.iter().unwrap().collect();
    assert_eq!(items.len(), 38, "the iterator ends after the first error");
    assert!(items[36].is_ok());
    assert!(items[37].as_ref().unwrap_err().to_string().contains("bad 37"));
    let panicking = range(20)
        .par_map(2, |x| if x == 5 { panic!("boom at five") } else { Ok(x) })
        .unwrap();
    let items: Vec<_> = panicking.iter().unwrap().collect();
    let e = items[5].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("panicked") && e.contains("boom at five") && e.contains("element 5"),
        "{e}"
    );
}

#[test]
fn prefetch_yields_the_same_items_and_stops_when_dropped() {
    let base = range(100).map(|x| Ok(x + 1)).batch(7, false, Ok).unwrap();
    let fetched = base.clone().prefetch(3).unwrap();
    assert_eq!(collect(&fetched, 0), collect(&base, 0));
    // Dropping a half-read iterator joins the thread (the test would hang otherwise).
    let mut it = range(1_000_000).prefetch(2).unwrap().iter().unwrap();
    assert_eq!(it.next().unwrap().unwrap(), 0);
    drop(it);
}

#[test]
fn memory_cache_runs_the_upstream_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let p = range(10)
        .map(move |x| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(x * 2)
        })
        .cache()
        .shuffle(10, 4)
        .unwrap();
    let a = collect(&p, 0);
    let b = collect(&p, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 10, "the map ran once per element");
    let (mut sa, mut sb) = (a.clone(), b.clone());
    sa.sort_unstable();
    sb.sort_unstable();
    assert_eq!(sa, (0..10).map(|x| x * 2).collect::<Vec<_>>());
    assert_eq!(sa, sb);
    assert_ne!(a, b, "shuffled after the cache, so each epoch differs");
}

#[test]
fn cache_file_round_trips_and_is_reused() {
    let dir = scratch("cache");
    let path = dir.join("examples.cache");
    let calls = Arc::new(AtomicUsize::new(0));
    let build = |calls: Arc<AtomicUsize>| {
        Pipeline::range(0..25)
            .map(move |i| {
                calls.fetch_add(1, Ordering::SeqCst);
                let x = Tensor::from_vec(vec![i as f32, -(i as f32)], [2]).unwrap();
                Ok(Example::new(x, Tensor::scalar(i as i64)))
            })
            .cache_file(&path)
    };
    let p = build(Arc::clone(&calls));
    // A pass that stops early leaves no file behind.
    let mut it = p.iter().unwrap();
    it.next().unwrap().unwrap();
    drop(it);
    assert!(!path.exists());
    let first = collect(&p, 0);
    assert!(path.exists());
    assert_eq!(calls.load(Ordering::SeqCst), 26);
    // A new pipeline (a new run) reads the file instead of running the map.
    let again = build(Arc::clone(&calls));
    let second = collect(&again, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 26);
    assert_eq!(second.len(), 25);
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.input.to_vec::<f32>().unwrap(), b.input.to_vec::<f32>().unwrap());
        assert_eq!(
            a.target.as_ref().unwrap().to_scalar::<i64>().unwrap(),
            b.target.as_ref().unwrap().to_scalar::<i64>().unwrap()
        );
    }
    assert_eq!(second[7].input.to_vec::<f32>().unwrap(), vec![7.0, -7.0]);
    // Skipping and shuffling over the file use random access.
    let shuffled = collect(&again.clone().shuffle(25, 1).unwrap(), 0);
    let mut ids: Vec<i64> = shuffled
        .iter()
        .map(|e| e.target.as_ref().unwrap().to_scalar::<i64>().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..25).collect::<Vec<i64>>());
    // A file from a differently built pipeline is an error naming it.
    let other = Pipeline::range(0..3)
        .map(|i| Ok(Example::new(Tensor::scalar(i as f32), Tensor::scalar(0i64))))
        .cache_file(&path);
    let e = other.iter().err().expect("a stale cache is an error").to_string();
    assert!(
        e.contains("examples.cache") && e.contains("different pipeline"),
        "{e}"
    );
    // A damaged file is an error naming it and what is wrong.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let e = build(Arc::clone(&calls)).iter().err().unwrap().to_string();
    assert!(e.contains("examples.cache") && e.contains("KILNDONE"), "{e}");
    let mut flipped = bytes.clone();
    let at = flipped.len() / 2;
    flipped[at - 40..at + 40].fill(0xff);
    std::fs::write(&path, &flipped).unwrap();
    let items: Vec<_> = build(Arc::clone(&calls)).iter().unwrap().collect();
    let e = items.last().unwrap().as_ref().unwrap_err().to_string();
    assert!(e.contains("examples.cache") && e.contains("record"), "{e}");
}

#[test]
fn bad_arguments_are_errors() {
    let msg = |r: kiln_data::Result<Pipeline<usize>>| r.err().expect("an error").to_string();
    assert!(msg(range(3).shard(0, 0)).contains("0 shards"));
    assert!(msg(range(3).shard(2, 2)).contains("shard index 2 of 2"));
    assert!(msg(range(3).shuffle(0, 1)).contains("buffer_size = 0"));
    assert!(msg(range(3).prefetch(0)).contains("depth = 0"));
    assert!(msg(range(3).par_map(0, Ok)).contains("workers = 0"));
    assert!(range(3)
        .batch(0, false, Ok)
        .err()
        .unwrap()
        .to_string()
        .contains("batch size 0"));
    let e = range(3)
        .interleave(0, 1, |_| Ok(Pipeline::range(0..1)))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cycle_length 0"), "{e}");
    // A position past the end of the epoch, or from another pipeline.
    let p = range(10).batch(3, false, Ok).unwrap();
    let mut state = p.iter().unwrap().state();
    state.offset = 5;
    let e = p.iter_from(&state).err().unwrap().to_string();
    assert!(e.contains("offset 5") && e.contains("4 items"), "{e}");
    let foreign = PipelineState {
        epoch: 0,
        offset: 1,
        fingerprint: range(10).fingerprint(),
    };
    let e = p.iter_from(&foreign).err().unwrap().to_string();
    assert!(e.contains("another pipeline"), "{e}");
}
