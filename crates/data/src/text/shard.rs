//! Token shards: a tokenized corpus on disk, memory-mapped for reading.
//!
//! Format (all integers little-endian), a 32-byte header then the tokens:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `KILNTOKS` |
//! | 8 | 4 | version (`1`) |
//! | 12 | 4 | bytes per token: 2 (`u16`) or 4 (`u32`) |
//! | 16 | 8 | token count |
//! | 24 | 8 | vocabulary size (every token is below it) |
//! | 32 | count x width | the tokens |
//!
//! Tokens are `u16` when the vocabulary has at most 65536 ids (GPT-2's 50257 fits), `u32`
//! otherwise. The header is 32 bytes so the tokens of a memory-mapped file are aligned.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{format_error, invalid, io_error};
use crate::Result;

/// The magic bytes at the start of every shard.
pub const SHARD_MAGIC: [u8; 8] = *b"KILNTOKS";
/// The format version this code writes and reads.
pub const SHARD_VERSION: u32 = 1;
/// The header size in bytes.
pub const SHARD_HEADER_LEN: usize = 32;

/// The on-disk type of the tokens of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenDType {
    /// 2 bytes per token (vocabularies of at most 65536 ids).
    U16,
    /// 4 bytes per token.
    U32,
}

impl TokenDType {
    /// The smallest type holding every id of a vocabulary of `vocab_size` ids.
    pub fn for_vocab(vocab_size: usize) -> TokenDType {
        if vocab_size <= 1 << 16 {
            TokenDType::U16
        } else {
            TokenDType::U32
        }
    }

    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            TokenDType::U16 => 2,
            TokenDType::U32 => 4,
        }
    }

    fn from_width(width: u32) -> Option<TokenDType> {
        match width {
            2 => Some(TokenDType::U16),
            4 => Some(TokenDType::U32),
            _ => None,
        }
    }
}

fn header(dtype: TokenDType, count: u64, vocab_size: u64) -> [u8; SHARD_HEADER_LEN] {
    let mut h = [0u8; SHARD_HEADER_LEN];
    h[..8].copy_from_slice(&SHARD_MAGIC);
    h[8..12].copy_from_slice(&SHARD_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(dtype.width() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    h[24..32].copy_from_slice(&vocab_size.to_le_bytes());
    h
}

/// Writes a shard token by token (buffered); [`ShardWriter::finish`] writes the final count.
#[derive(Debug)]
pub struct ShardWriter {
    out: BufWriter<File>,
    path: PathBuf,
    dtype: TokenDType,
    vocab_size: usize,
    count: u64,
}

impl ShardWriter {
    /// Create (or truncate) `path` for tokens of a vocabulary of `vocab_size` ids, stored as the
    /// smallest type that holds them.
    pub fn create(path: impl AsRef<Path>, vocab_size: usize) -> Result<ShardWriter> {
        Self::with_dtype(path, vocab_size, TokenDType::for_vocab(vocab_size))
    }

    /// Like [`ShardWriter::create`] with an explicit token type (`U16` needs `vocab_size <=
    /// 65536`).
    pub fn with_dtype(path: impl AsRef<Path>, vocab_size: usize, dtype: TokenDType) -> Result<ShardWriter> {
        let path = path.as_ref();
        if vocab_size == 0 || (dtype == TokenDType::U16 && vocab_size > 1 << 16) {
            return Err(invalid(
                "ShardWriter::create",
                format!("a vocabulary of {vocab_size} ids cannot be stored as {dtype:?}"),
            ));
        }
        if vocab_size as u64 > u64::from(u32::MAX) + 1 {
            return Err(invalid(
                "ShardWriter::create",
                format!("a vocabulary of {vocab_size} ids does not fit in u32 tokens"),
            ));
        }
        let file = File::create(path).map_err(|e| io_error(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header(dtype, 0, vocab_size as u64))
            .map_err(|e| io_error(path, e))?;
        Ok(ShardWriter {
            out,
            path: path.to_path_buf(),
            dtype,
            vocab_size,
            count: 0,
        })
    }

    /// Append `tokens`. A token `>= vocab_size` is an error naming its position in the shard.
    pub fn write(&mut self, tokens: &[u32]) -> Result<()> {
        if let Some((i, &t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.vocab_size)
        {
            return Err(format_error(
                &self.path,
                format!(
                    "token {t} at position {} is not below the vocabulary size {}",
                    self.count + i as u64,
                    self.vocab_size
                ),
            ));
        }
        let mut buf = Vec::with_capacity(tokens.len() * self.dtype.width());
        match self.dtype {
            TokenDType::U16 => tokens
                .iter()
                .for_each(|&t| buf.extend_from_slice(&(t as u16).to_le_bytes())),
            TokenDType::U32 => tokens
                .iter()
                .for_each(|&t| buf.extend_from_slice(&t.to_le_bytes())),
        }
        self.out.write_all(&buf).map_err(|e| io_error(&self.path, e))?;
        self.count += tokens.len() as u64;
        Ok(())
    }

    /// The number of tokens written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Write the header's token count, flush and sync; returns the token count.
    pub fn finish(self) -> Result<u64> {
        let ShardWriter {
            out,
            path,
            dtype,
            vocab_size,
            count,
        } = self;
        let mut file = out.into_inner().map_err(|e| io_error(&path, e.into_error()))?;
        let io = |e| io_error(&path, e);
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header(dtype, count, vocab_size as u64))
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(count)
    }
}

/// Write `tokens` as a shard at `path` (see [`ShardWriter`]).
pub fn write_shard(path: impl AsRef<Path>, tokens: &[u32], vocab_size: usize) -> Result<()> {
    let mut w = ShardWriter::create(path, vocab_size)?;
    w.write(tokens)?;
    w.finish()?;
    Ok(())
}

/// A memory-mapped shard. Opening validates the header and that the file length matches it.
#[derive(Debug)]
pub struct TokenShard {
    map: Mmap,
    path: PathBuf,
    dtype: TokenDType,
    len: usize,
    vocab_size: usize,
}

impl TokenShard {
    /// Open and validate the shard at `path`: magic, version, token width, and a file length
    /// equal to the header plus the header's token count (a truncated file is an error naming
    /// both sizes).
    pub fn open(path: impl AsRef<Path>) -> Result<TokenShard> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
        if file_len < SHARD_HEADER_LEN as u64 {
            return Err(format_error(
                path,
                format!(
                    "the file is {file_len} bytes, shorter than the {SHARD_HEADER_LEN}-byte token shard header"
                ),
            ));
        }
        // SAFETY: the map is read-only and private to this value; like every memory-mapped
        // reader we rely on the file not being truncated or rewritten while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, e))?;
        let h = &map[..SHARD_HEADER_LEN];
        if h[..8] != SHARD_MAGIC {
            return Err(format_error(
                path,
                format!(
                    "not a token shard: magic {:?}, expected {:?}",
                    String::from_utf8_lossy(&h[..8]),
                    String::from_utf8_lossy(&SHARD_MAGIC)
                ),
            ));
        }
        let word = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&h[r]);
            u32::from_le_bytes(b)
        };
        let dword = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[r]);
            u64::from_le_bytes(b)
        };
        let version = word(8..12);
        if version != SHARD_VERSION {
            return Err(format_error(
                path,
                format!("token shard version {version}; this build reads version {SHARD_VERSION}"),
            ));
        }
        let width = word(12..16);
        let dtype = TokenDType::from_width(width).ok_or_else(|| {
            format_error(
                path,
                format!("{width} bytes per token; expected 2 (u16) or 4 (u32)"),
            )
        })?;
        let count = dword(16..24);
        let vocab_size = dword(24..32);
        let expected = count
            .checked_mul(dtype.width() as u64)
            .and_then(|b| b.checked_add(SHARD_HEADER_LEN as u64));
        if expected != Some(file_len) {
            return Err(format_error(
                path,
                format!(
                    "the header says {count} tokens of {} bytes ({} bytes with the header) but the file is {file_len} bytes{}",
                    dtype.width(),
                    expected.map_or("more than 2^64".to_string(), |e| e.to_string()),
                    if expected.is_some_and(|e| e > file_len) { " (truncated)" } else { "" }
                ),
            ));
        }
        Ok(TokenShard {
            map,
            path: path.to_path_buf(),
            dtype,
            len: count as usize,
            vocab_size: vocab_size as usize,
        })
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the shard holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The on-disk token type.
    pub fn dtype(&self) -> TokenDType {
        self.dtype
    }

    /// The vocabulary size recorded in the header.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The shard's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token at `index`, if in range.
    pub fn get(&self, index: usize) -> Option<u32> {
        (index < self.len).then(|| self.token(index))
    }

    fn token(&self, index: usize) -> u32 {
        let w = self.dtype.width();
        let at = SHARD_HEADER_LEN + index * w;
        let b = &self.map[at..at + w];
        match self.dtype {
            TokenDType::U16 => u16::from_le_bytes([b[0], b[1]]) as u32,
            TokenDType::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }

    /// Copy the tokens `start..start + out.len()` into `out`. Out of range, or a token not below
    /// the recorded vocabulary size, is an error naming the file and position.
    pub fn read_into(&self, start: usize, out: &mut [u32]) -> Result<()> {
        let end = start.checked_add(out.len()).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(format_error(
                &self.path,
                format!(
                    "tokens {start}..{} are out of range of a shard of {} tokens",
                    start.saturating_add(out.len()),
                    self.len
                ),
            ));
        }
        let w = self.dtype.width();
        let bytes = &self.map[SHARD_HEADER_LEN + start * w..SHARD_HEADER_LEN + (start + out.len()) * w];
        match self.dtype {
            TokenDType::U16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = u16::from_le_bytes([b[0], b[1]]) as u32;
                }
            }
            TokenDType::U32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
        if let Some((i, &t)) = out
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.vocab_size)
        {
            return Err(format_error(
                &self.path,
                format!(
                    "token {t} at position {} is not below the vocabulary size {}",
                    start + i,
                    self.vocab_size
                ),
            ));
        }
        Ok(())
    }

    /// All tokens.
    pub fn to_vec(&self) -> Result<Vec<u32>> {
        let mut v = vec![0; self.len];
        self.read_into(0, &mut v)?;
        Ok(v)
    }
}
