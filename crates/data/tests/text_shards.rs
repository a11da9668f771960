//! Token shards (u16 and u32 round trips, truncated and corrupt files) and the language-model
//! datasets over them (targets are the inputs shifted by one; train/validation split).

use std::path::PathBuf;

use kiln_data::text::shard::{write_shard, SHARD_HEADER_LEN};
use kiln_data::text::{RandomWindows, SequentialBlocks, ShardWriter, TokenDType, TokenShard, TokenStream};
use kiln_data::{DataLoader, Dataset};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kiln-text-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A deterministic pseudo-random token sequence below `vocab`.
fn tokens(n: usize, vocab: u32) -> Vec<u32> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect()
}

#[test]
fn u16_shard_round_trips() {
    let d = TempDir::new("u16");
    let p = d.join("a.bin");
    let toks = tokens(10_001, 50257);
    let mut w = ShardWriter::create(&p, 50257).unwrap();
    w.write(&toks[..4000]).unwrap();
    w.write(&toks[4000..]).unwrap();
    assert_eq!(w.finish().unwrap(), 10_001);
    let s = TokenShard::open(&p).unwrap();
    assert_eq!(s.dtype(), TokenDType::U16);
    assert_eq!((s.len(), s.vocab_size()), (10_001, 50257));
    assert_eq!(
        std::fs::metadata(&p).unwrap().len(),
        (SHARD_HEADER_LEN + 2 * 10_001) as u64
    );
    assert_eq!(s.to_vec().unwrap(), toks);
    assert_eq!(s.get(17), Some(toks[17]));
    assert_eq!(s.get(10_001), None);
    let mut part = [0u32; 5];
    s.read_into(9_996, &mut part).unwrap();
    assert_eq!(part, toks[9_996..]);
    assert!(s.read_into(9_997, &mut part).is_err());
}

#[test]
fn u32_shard_round_trips_and_the_boundary_vocab_is_u16() {
    let d = TempDir::new("u32");
    let p = d.join("b.bin");
    let toks = tokens(3000, 100_000);
    assert!(toks.iter().any(|&t| t > 65_535));
    write_shard(&p, &toks, 100_000).unwrap();
    let s = TokenShard::open(&p).unwrap();
    assert_eq!(s.dtype(), TokenDType::U32);
    assert_eq!(s.to_vec().unwrap(), toks);
    assert_eq!(TokenDType::for_vocab(65_536), TokenDType::U16);
    assert_eq!(TokenDType::for_vocab(65_537), TokenDType::U32);
    // Empty shard.
    let e = d.join("empty.bin");
    write_shard(&e, &[], 65).unwrap();
    let s = TokenShard::open(&e).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.to_vec().unwrap(), Vec::<u32>::new());
}

#[test]
fn a_token_outside_the_vocabulary_is_refused_on_write() {
    let d = TempDir::new("oov");
    let mut w = ShardWriter::create(d.join("c.bin"), 65).unwrap();
    w.write(&[1, 2, 3]).unwrap();
    let e = w.write(&[4, 65]).unwrap_err().to_string();
    assert!(
        e.contains("c.bin") && e.contains("token 65") && e.contains("position 4"),
        "{e}"
    );
    assert!(ShardWriter::with_dtype(d.join("d.bin"), 70_000, TokenDType::U16).is_err());
}

#[test]
fn truncated_and_corrupt_shards_are_errors_naming_file_and_sizes() {
    let d = TempDir::new("trunc");
    let p = d.join("t.bin");
    write_shard(&p, &tokens(100, 1000), 1000).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let cut = d.join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let e = TokenShard::open(&cut).unwrap_err().to_string();
    assert!(
        e.contains("cut.bin")
            && e.contains("100 tokens")
            && e.contains("232 bytes")
            && e.contains("229 bytes")
            && e.contains("truncated"),
        "{e}"
    );
    let tiny = d.join("tiny.bin");
    std::fs::write(&tiny, &bytes[..10]).unwrap();
    let e = TokenShard::open(&tiny).unwrap_err().to_string();
    assert!(e.contains("tiny.bin") && e.contains("10 bytes"), "{e}");
    let mut bad = bytes.clone();
    bad[0] = b'X';
    let magic = d.join("magic.bin");
    std::fs::write(&magic, &bad).unwrap();
    let e = TokenShard::open(&magic).unwrap_err().to_string();
    assert!(e.contains("magic.bin") && e.contains("not a token shard"), "{e}");
    let mut bad = bytes.clone();
    bad[12] = 3;
    let width = d.join("width.bin");
    std::fs::write(&width, &bad).unwrap();
    let e = TokenShard::open(&width).unwrap_err().to_string();
    assert!(e.contains("3 bytes per token"), "{e}");
    let e = TokenShard::open(d.join("none.bin")).unwrap_err().to_string();
    assert!(e.contains("none.bin"), "{e}");
}

#[test]
fn sequential_blocks_targets_are_inputs_shifted_by_one() {
    let d = TempDir::new("seq");
    let p = d.join("s.bin");
    let toks = tokens(1001, 50257);
    write_shard(&p, &toks, 50257).unwrap();
    let stream = TokenStream::open(&p).unwrap();
    let t = 16;
    let ds = SequentialBlocks::new(stream, t).unwrap();
    assert_eq!(ds.len(), 1000 / 16); // 62 blocks
    let b = ds.get_batch(&[0, 61, 5]).unwrap();
    assert_eq!(b.inputs.dims(), &[3, t]);
    let x = b.inputs.to_vec2::<i64>().unwrap();
    let y = b.targets.unwrap().to_vec2::<i64>().unwrap();
    for (row, &i) in [0usize, 61, 5].iter().enumerate() {
        let want: Vec<i64> = toks[i * t..i * t + t + 1].iter().map(|&v| v as i64).collect();
        assert_eq!(x[row], want[..t]);
        assert_eq!(y[row], want[1..]);
        assert_eq!(x[row][1..], y[row][..t - 1]);
    }
    let e = ds.get_batch(&[62]).unwrap_err().to_string();
    assert!(e.contains("index 62") && e.contains("62 examples"), "{e}");
    // Through the DataLoader: every block once per epoch.
    let loader = DataLoader::new(&ds, 8).unwrap().shuffle(3);
    let mut firsts = Vec::new();
    for batch in loader.iter_epoch(0) {
        let x = batch.unwrap().inputs.to_vec2::<i64>().unwrap();
        firsts.extend(x.iter().map(|row| row[0]));
    }
    let mut want: Vec<i64> = (0..62).map(|i| toks[i * t] as i64).collect();
    want.sort_unstable();
    firsts.sort_unstable();
    assert_eq!(firsts, want);
}

#[test]
fn random_windows_are_seeded_by_seed_and_index() {
    let toks = tokens(5000, 65);
    let stream = TokenStream::from_tokens(toks.clone(), 65).unwrap();
    let a = RandomWindows::new(stream.clone(), 32, 100, 7).unwrap();
    let b = RandomWindows::new(stream.clone(), 32, 100, 7).unwrap();
    let c = RandomWindows::new(stream, 32, 100, 8).unwrap();
    let starts: Vec<usize> = (0..100).map(|i| a.start(i)).collect();
    assert_eq!(starts, (0..100).map(|i| b.start(i)).collect::<Vec<_>>());
    assert_ne!(starts, (0..100).map(|i| c.start(i)).collect::<Vec<_>>());
    assert!(starts.iter().all(|&s| s + 33 <= 5000));
    // Starts spread over the stream.
    assert!(starts.iter().any(|&s| s < 1000) && starts.iter().any(|&s| s > 4000));
    // The batch is independent of which other indices are asked with it.
    let one = a.get_batch(&[42]).unwrap();
    let many = a.get_batch(&[3, 42, 9]).unwrap();
    assert_eq!(
        one.inputs.to_vec2::<i64>().unwrap()[0],
        many.inputs.to_vec2::<i64>().unwrap()[1]
    );
    let x = many.inputs.to_vec2::<i64>().unwrap();
    let y = many.targets.unwrap().to_vec2::<i64>().unwrap();
    for (row, &i) in [3usize, 42, 9].iter().enumerate() {
        let s = a.start(i);
        let want: Vec<i64> = toks[s..s + 33].iter().map(|&v| v as i64).collect();
        assert_eq!(x[row], want[..32]);
        assert_eq!(y[row], want[1..]);
    }
}

#[test]
fn validation_split_takes_the_last_fraction() {
    let toks = tokens(1000, 300);
    let stream = TokenStream::from_tokens(toks.clone(), 300).unwrap();
    let (train, val) = stream.split_validation(0.1).unwrap();
    assert_eq!((train.len(), val.len()), (900, 100));
    assert_eq!(train.to_vec().unwrap(), toks[..900]);
    assert_eq!(val.to_vec().unwrap(), toks[900..]);
    let (all, none) = stream.split_validation(0.0).unwrap();
    assert_eq!((all.len(), none.len()), (1000, 0));
    assert!(stream.split_validation(1.0).is_err());
    assert!(stream.split_validation(-0.1).is_err());
    // Blocks over the validation part read the right tokens.
    let ds = SequentialBlocks::new(val, 9).unwrap();
    assert_eq!(ds.len(), 11);
    let x = ds.get_batch(&[1]).unwrap().inputs.to_vec::<i64>().unwrap();
    assert_eq!(x, toks[909..918].iter().map(|&v| v as i64).collect::<Vec<_>>());
    // Too short a stream for one block.
    let short = TokenStream::from_tokens(vec![1, 2, 3], 300).unwrap();
    let e = SequentialBlocks::new(short, 3).unwrap_err().to_string();
    assert!(e.contains("needs 4 tokens") && e.contains("has 3"), "{e}");
    assert!(TokenStream::from_tokens(vec![300], 300).is_err());
}
