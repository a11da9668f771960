//! Language-modelling datasets over a token stream.
//!
//! A [`TokenStream`] is a window of a memory-mapped [`TokenShard`] (or of tokens in memory).
//! Two [`Dataset`]s cut it into training examples of `T` tokens, each example's targets being its
//! inputs shifted by one token (next-token prediction):
//!
//! - [`SequentialBlocks`]: example `i` is tokens `[i*T, i*T + T + 1)`: inputs the first `T`,
//!   targets the last `T` (consecutive blocks share one token). Every token is seen once per
//!   epoch; shuffle with the [`DataLoader`](crate::DataLoader).
//! - [`RandomWindows`]: example `i` starts at a position drawn from a generator seeded by
//!   `(seed, i)`, so the example depends only on the seed and the index, not on the order of
//!   requests or on threads.
//!
//! A batch has `inputs` and `targets`, both `i64` `[B, T]`.
//! [`TokenStream::split_validation`] keeps the last fraction of the stream for validation.

use std::path::Path;
use std::sync::Arc;

use kiln_tensor::{Tensor, TensorRng};

use super::{invalid, TokenShard};
use crate::{Batch, Dataset, Result};

#[derive(Clone, Debug)]
enum Source {
    Shard(Arc<TokenShard>),
    Memory(Arc<[u32]>),
}

/// A contiguous run of tokens: all or part of a shard, or tokens in memory. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct TokenStream {
    source: Source,
    start: usize,
    len: usize,
    vocab_size: usize,
}

impl TokenStream {
    /// Open the shard at `path` (see [`TokenShard::open`]) as a stream.
    pub fn open(path: impl AsRef<Path>) -> Result<TokenStream> {
        Ok(Self::from_shard(TokenShard::open(path)?))
    }

    /// All tokens of `shard`.
    pub fn from_shard(shard: TokenShard) -> TokenStream {
        TokenStream {
            start: 0,
            len: shard.len(),
            vocab_size: shard.vocab_size(),
            source: Source::Shard(Arc::new(shard)),
        }
    }

    /// Tokens in memory. A token `>= vocab_size` is an error.
    pub fn from_tokens(tokens: Vec<u32>, vocab_size: usize) -> Result<TokenStream> {
        if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= vocab_size) {
            return Err(invalid(
                "TokenStream::from_tokens",
                format!("token {t} at position {i} is not below the vocabulary size {vocab_size}"),
            ));
        }
        Ok(TokenStream {
            start: 0,
            len: tokens.len(),
            vocab_size,
            source: Source::Memory(tokens.into()),
        })
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the stream holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The vocabulary size (every token is below it).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The tokens `start..start + len` as a new stream (no copy).
    pub fn slice(&self, start: usize, len: usize) -> Result<TokenStream> {
        if start.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(invalid(
                "TokenStream::slice",
                format!(
                    "tokens {start}..{} are out of range of a stream of {} tokens",
                    start.saturating_add(len),
                    self.len
                ),
            ));
        }
        Ok(TokenStream {
            start: self.start + start,
            len,
            ..self.clone()
        })
    }

    /// Copy the tokens `start..start + out.len()` into `out`.
    pub fn read_into(&self, start: usize, out: &mut [u32]) -> Result<()> {
        if start.checked_add(out.len()).is_none_or(|e| e > self.len) {
            return Err(invalid(
                "TokenStream::read_into",
                format!(
                    "tokens {start}..{} are out of range of a stream of {} tokens",
                    start.saturating_add(out.len()),
                    self.len
                ),
            ));
        }
        match &self.source {
            Source::Shard(s) => s.read_into(self.start + start, out),
            Source::Memory(m) => {
                let from = self.start + start;
                out.copy_from_slice(&m[from..from + out.len()]);
                Ok(())
            }
        }
    }

    /// All tokens of the stream.
    pub fn to_vec(&self) -> Result<Vec<u32>> {
        let mut v = vec![0; self.len];
        self.read_into(0, &mut v)?;
        Ok(v)
    }

    /// Split into (train, validation): validation is the last `round(len * val_fraction)` tokens,
    /// train everything before. `val_fraction` must be in `[0, 1)`.
    pub fn split_validation(&self, val_fraction: f64) -> Result<(TokenStream, TokenStream)> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(invalid(
                "TokenStream::split_validation",
                format!("the validation fraction must be in [0, 1), got {val_fraction}"),
            ));
        }
        let n_val = split_point(self.len, val_fraction);
        let n_train = self.len - n_val;
        Ok((self.slice(0, n_train)?, self.slice(n_train, n_val)?))
    }
}

/// The number of validation tokens of a stream of `len` tokens: `round(len * val_fraction)`.
pub fn split_point(len: usize, val_fraction: f64) -> usize {
    ((len as f64 * val_fraction).round() as usize).min(len)
}

/// Build a batch from windows of `block_len + 1` tokens starting at `starts`.
fn windows_batch(
    stream: &TokenStream,
    block_len: usize,
    starts: impl ExactSizeIterator<Item = usize>,
) -> Result<Batch> {
    let b = starts.len();
    let mut inputs = Vec::with_capacity(b * block_len);
    let mut targets = Vec::with_capacity(b * block_len);
    let mut buf = vec![0u32; block_len + 1];
    for start in starts {
        stream.read_into(start, &mut buf)?;
        inputs.extend(buf[..block_len].iter().map(|&t| t as i64));
        targets.extend(buf[1..].iter().map(|&t| t as i64));
    }
    Ok(Batch {
        inputs: Tensor::from_vec(inputs, [b, block_len])?,
        targets: Some(Tensor::from_vec(targets, [b, block_len])?),
    })
}

fn check_indices(op: &'static str, indices: &[usize], len: usize) -> Result<()> {
    match indices.iter().find(|&&i| i >= len) {
        Some(bad) => Err(invalid(
            op,
            format!("index {bad} out of range for a dataset of {len} examples"),
        )),
        None => Ok(()),
    }
}

fn check_block(op: &'static str, stream: &TokenStream, block_len: usize) -> Result<()> {
    if block_len == 0 {
        return Err(invalid(op, "the block length must be at least 1"));
    }
    if stream.len() < block_len + 1 {
        return Err(invalid(
            op,
            format!(
                "a block of {block_len} tokens needs {} tokens (inputs and the next token); the stream has {}",
                block_len + 1,
                stream.len()
            ),
        ));
    }
    Ok(())
}

/// Consecutive blocks: example `i` covers tokens `[i*T, i*T + T + 1)` (see the
/// [module documentation](self)).
#[derive(Clone, Debug)]
pub struct SequentialBlocks {
    stream: TokenStream,
    block_len: usize,
}

impl SequentialBlocks {
    /// Blocks of `block_len` tokens over `stream` (which needs at least `block_len + 1` tokens).
    pub fn new(stream: TokenStream, block_len: usize) -> Result<SequentialBlocks> {
        check_block("SequentialBlocks::new", &stream, block_len)?;
        Ok(SequentialBlocks { stream, block_len })
    }

    /// The block length `T`.
    pub fn block_len(&self) -> usize {
        self.block_len
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TokenStream {
        &self.stream
    }
}

impl Dataset for SequentialBlocks {
    /// `(tokens - 1) / T`: the blocks whose next-token targets lie inside the stream.
    fn len(&self) -> usize {
        (self.stream.len() - 1) / self.block_len
    }

    fn get_batch(&self, indices: &[usize]) -> Result<Batch> {
        check_indices("SequentialBlocks::get_batch", indices, self.len())?;
        windows_batch(
            &self.stream,
            self.block_len,
            indices.iter().map(|&i| i * self.block_len),
        )
    }
}

/// Windows at seeded random positions (see the [module documentation](self)).
#[derive(Clone, Debug)]
pub struct RandomWindows {
    stream: TokenStream,
    block_len: usize,
    num_windows: usize,
    seed: u64,
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl RandomWindows {
    /// `num_windows` examples of `block_len` tokens whose starts are drawn from `seed`.
    pub fn new(
        stream: TokenStream,
        block_len: usize,
        num_windows: usize,
        seed: u64,
    ) -> Result<RandomWindows> {
        check_block("RandomWindows::new", &stream, block_len)?;
        Ok(RandomWindows {
            stream,
            block_len,
            num_windows,
            seed,
        })
    }

    /// The first token of example `index`: uniform in `0..=len - T - 1`, from a ChaCha8
    /// generator seeded with a hash of `(seed, index)`.
    pub fn start(&self, index: usize) -> usize {
        let mut rng = TensorRng::new(mix(self.seed ^ mix(index as u64)));
        let positions = (self.stream.len() - self.block_len) as u64;
        rng.next_below(positions) as usize
    }

    /// The block length `T`.
    pub fn block_len(&self) -> usize {
        self.block_len
    }
}

impl Dataset for RandomWindows {
    fn len(&self) -> usize {
        self.num_windows
    }

    fn get_batch(&self, indices: &[usize]) -> Result<Batch> {
        check_indices("RandomWindows::get_batch", indices, self.num_windows)?;
        windows_batch(
            &self.stream,
            self.block_len,
            indices.iter().map(|&i| self.start(i)),
        )
    }
}
