//! `cache`: the upstream's elements kept after the first complete pass, in memory or in a file.
//!
//! The cached content is always the upstream's **epoch 0** pass, whichever epoch first reads it
//! to the end, so the output does not depend on when the cache filled (a restored run sees
//! what the uninterrupted one saw). Everything before a cache therefore runs once: put
//! shuffles and random transforms after it. The first pass fills the cache, even one that
//! starts by skipping to a restored position (it reads the skipped elements to store them); a
//! pass that stops early or meets an error does not, and the next pass tries again.
//!
//! A cache file is `KILNCACH`, a `u32` version, the upstream's description (length-prefixed),
//! the records (each length-prefixed, [`Record`] encoding), then a table of record offsets, the
//! record count and `KILNDONE`. It is written to a temporary file renamed into place when the
//! pass completes, so a file at the path is always complete. A file written by a differently
//! built pipeline is an error (delete it to rebuild the cache).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::record::Record;
use super::stream::{Stage, Stream};
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Memory

pub(crate) struct MemoryCacheStage<T> {
    pub(crate) upstream: Arc<dyn Stage<T>>,
    pub(crate) data: Arc<Mutex<Option<Arc<Vec<T>>>>>,
}

impl<T: Clone + Send + Sync + 'static> Stage<T> for MemoryCacheStage<T> {
    fn open(&self, _epoch: u64) -> Result<Box<dyn Stream<T>>> {
        let filled = self.data.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Ok(match filled {
            Some(items) => Box::new(VecStream { items, next: 0 }),
            None => Box::new(FillStream {
                upstream: self.upstream.open(0)?,
                items: Vec::new(),
                complete: true,
                slot: Arc::clone(&self.data),
            }),
        })
    }
    fn len(&self, _epoch: u64) -> Option<u64> {
        match &*self.data.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(items) => Some(items.len() as u64),
            None => self.upstream.len(0),
        }
    }
    fn describe(&self) -> String {
        format!("{} -> cache", self.upstream.describe())
    }
}

/// Reads a filled memory cache.
struct VecStream<T> {
    items: Arc<Vec<T>>,
    next: usize,
}

impl<T: Clone + Send + Sync> Stream<T> for VecStream<T> {
    fn next(&mut self) -> Option<Result<T>> {
        let x = self.items.get(self.next)?.clone();
        self.next += 1;
        Some(Ok(x))
    }
    fn skip(&mut self, n: u64) -> Result<u64> {
        let k = (self.items.len() - self.next).min(usize::try_from(n).unwrap_or(usize::MAX));
        self.next += k;
        Ok(k as u64)
    }
    fn remaining(&self) -> Option<u64> {
        Some((self.items.len() - self.next) as u64)
    }
    fn can_fetch(&self) -> bool {
        true
    }
    fn fetch(&mut self, k: u64) -> Option<Result<T>> {
        let i = usize::try_from(k).ok()?.checked_add(self.next)?;
        self.items.get(i).cloned().map(Ok)
    }
}

/// A pass that records what it reads and fills the cache when it completes.
struct FillStream<T> {
    upstream: Box<dyn Stream<T>>,
    items: Vec<T>,
    complete: bool,
    slot: Arc<Mutex<Option<Arc<Vec<T>>>>>,
}

impl<T: Clone + Send + Sync> FillStream<T> {
    fn store(&mut self) {
        if self.complete {
            self.complete = false;
            let items = Arc::new(std::mem::take(&mut self.items));
            let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
            slot.get_or_insert(items);
        }
    }
}

impl<T: Clone + Send + Sync> Stream<T> for FillStream<T> {
    fn next(&mut self) -> Option<Result<T>> {
        let item = self.upstream.next();
        match &item {
            Some(Ok(x)) if self.complete => {
                self.items.push(x.clone());
                // A consumer that knows the length stops without asking past the end.
                if self.upstream.remaining() == Some(0) {
                    self.store();
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => self.complete = false,
            None => self.store(),
        }
        item
    }
    // Skipping reads (the default): the pass still fills the cache.
    fn remaining(&self) -> Option<u64> {
        self.upstream.remaining()
    }
}

// ---------------------------------------------------------------------------------------------
// File

const MAGIC: &[u8; 8] = b"KILNCACH";
const END_MAGIC: &[u8; 8] = b"KILNDONE";
const VERSION: u32 = 1;

pub(crate) struct FileCacheStage<T> {
    pub(crate) upstream: Arc<dyn Stage<T>>,
    pub(crate) path: PathBuf,
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The record offsets of a complete cache file, checked against `description`.
/// The record offsets of a complete cache file, checked against `description`, and where the
/// record data ends.
fn read_index(path: &Path, file: &mut File, description: &str) -> Result<(Vec<u64>, u64)> {
    let size = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut head = [0u8; 16];
    let header_len = 16u64;
    if size < header_len + 16 {
        return Err(format_err(
            path,
            format!("not a complete kiln cache file: {size} bytes, the header and footer alone take 32"),
        ));
    }
    file.read_exact(&mut head).map_err(|e| io_err(path, e))?;
    if &head[..8] != MAGIC {
        return Err(format_err(
            path,
            "not a kiln cache file (no KILNCACH magic at byte 0)",
        ));
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version != VERSION {
        return Err(format_err(
            path,
            format!("cache file version {version}, this kiln reads version {VERSION}"),
        ));
    }
    let desc_len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as u64;
    if header_len + desc_len + 16 > size {
        return Err(format_err(
            path,
            format!("truncated: the header announces a {desc_len}-byte description in a {size}-byte file"),
        ));
    }
    let mut desc = vec![0u8; desc_len as usize];
    file.read_exact(&mut desc).map_err(|e| io_err(path, e))?;
    if desc != description.as_bytes() {
        return Err(format_err(
            path,
            format!(
                "the cache was written by a different pipeline ({}); this one is ({description}); delete the file to rebuild it",
                String::from_utf8_lossy(&desc)
            ),
        ));
    }
    let mut foot = [0u8; 16];
    file.seek(SeekFrom::Start(size - 16))
        .map_err(|e| io_err(path, e))?;
    file.read_exact(&mut foot).map_err(|e| io_err(path, e))?;
    if &foot[8..] != END_MAGIC {
        return Err(format_err(
            path,
            format!(
                "incomplete or corrupt cache file: no KILNDONE marker at byte {}",
                size - 8
            ),
        ));
    }
    let count = u64::from_le_bytes(foot[..8].try_into().unwrap_or_default());
    let data_start = header_len + desc_len;
    let table_bytes = count.checked_mul(8).filter(|&b| b <= size - 16 - data_start);
    let Some(table_bytes) = table_bytes else {
        return Err(format_err(
            path,
            format!("corrupt cache file: {count} records do not fit in {size} bytes"),
        ));
    };
    let table_start = size - 16 - table_bytes;
    file.seek(SeekFrom::Start(table_start))
        .map_err(|e| io_err(path, e))?;
    let mut table = vec![0u8; table_bytes as usize];
    file.read_exact(&mut table).map_err(|e| io_err(path, e))?;
    let offsets: Vec<u64> = table
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    let mut prev = data_start;
    for (i, &o) in offsets.iter().enumerate() {
        if o < prev || o.checked_add(8).is_none_or(|end| end > table_start) {
            return Err(format_err(
                path,
                format!("corrupt cache file: record {i} at byte {o} is outside the data ({data_start}..{table_start})"),
            ));
        }
        prev = o + 8;
    }
    Ok((offsets, table_start))
}

impl<T: Record> Stage<T> for FileCacheStage<T> {
    fn open(&self, _epoch: u64) -> Result<Box<dyn Stream<T>>> {
        let description = self.upstream.describe();
        match File::open(&self.path) {
            Ok(mut file) => {
                let (offsets, data_end) = read_index(&self.path, &mut file, &description)?;
                Ok(Box::new(FileReadStream {
                    path: self.path.clone(),
                    file: BufReader::new(file),
                    file_pos: None,
                    offsets: Arc::new(offsets),
                    data_end,
                    next: 0,
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let writer = CacheWriter::create(&self.path, &description)?;
                Ok(Box::new(FileFillStream {
                    upstream: self.upstream.open(0)?,
                    writer: Some(writer),
                }))
            }
            Err(e) => Err(io_err(&self.path, e)),
        }
    }
    fn len(&self, _epoch: u64) -> Option<u64> {
        self.upstream.len(0)
    }
    fn describe(&self) -> String {
        format!("{} -> cache_file", self.upstream.describe())
    }
}

struct FileReadStream {
    path: PathBuf,
    file: BufReader<File>,
    /// Where the reader stands, when known (to avoid seeking on sequential reads).
    file_pos: Option<u64>,
    offsets: Arc<Vec<u64>>,
    /// Where the records end (the offset table starts).
    data_end: u64,
    next: usize,
}

impl FileReadStream {
    fn read_record<T: Record>(&mut self, i: usize) -> Result<T> {
        let at = self.offsets[i];
        if self.file_pos != Some(at) {
            self.file
                .seek(SeekFrom::Start(at))
                .map_err(|e| io_err(&self.path, e))?;
        }
        self.file_pos = None;
        let mut len = [0u8; 8];
        self.file
            .read_exact(&mut len)
            .map_err(|e| io_err(&self.path, e))?;
        let len = u64::from_le_bytes(len);
        let limit = self.offsets.get(i + 1).copied().unwrap_or(self.data_end);
        if (at + 8).checked_add(len).is_none_or(|end| end > limit) {
            return Err(format_err(
                &self.path,
                format!("corrupt cache file: record {i} at byte {at} claims {len} bytes, overlapping the next one"),
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        self.file
            .read_exact(&mut bytes)
            .map_err(|e| io_err(&self.path, e))?;
        self.file_pos = Some(at + 8 + len);
        let mut input = bytes.as_slice();
        let x = T::decode(&mut input)
            .map_err(|e| format_err(&self.path, format!("record {i} at byte {at}: {e}")))?;
        if !input.is_empty() {
            return Err(format_err(
                &self.path,
                format!(
                    "record {i} at byte {at}: {} bytes left after decoding",
                    input.len()
                ),
            ));
        }
        Ok(x)
    }
}

impl<T: Record> Stream<T> for FileReadStream {
    fn next(&mut self) -> Option<Result<T>> {
        if self.next >= self.offsets.len() {
            return None;
        }
        self.next += 1;
        Some(self.read_record(self.next - 1))
    }
    fn skip(&mut self, n: u64) -> Result<u64> {
        let k = (self.offsets.len() - self.next).min(usize::try_from(n).unwrap_or(usize::MAX));
        self.next += k;
        Ok(k as u64)
    }
    fn remaining(&self) -> Option<u64> {
        Some((self.offsets.len() - self.next) as u64)
    }
    fn can_fetch(&self) -> bool {
        true
    }
    fn fetch(&mut self, k: u64) -> Option<Result<T>> {
        let i = usize::try_from(k).ok()?.checked_add(self.next)?;
        (i < self.offsets.len()).then(|| self.read_record(i))
    }
}

/// Writes a cache file under a temporary name; `finish` renames it into place, dropping an
/// unfinished writer removes it.
struct CacheWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    pos: u64,
    offsets: Vec<u64>,
    buf: Vec<u8>,
}

impl CacheWriter {
    fn create(path: &Path, description: &str) -> Result<CacheWriter> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cache".into());
        let tmp = path.with_file_name(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        let mut w = CacheWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::new(file)),
            pos: 0,
            offsets: Vec::new(),
            buf: Vec::new(),
        };
        let mut head = MAGIC.to_vec();
        head.extend(VERSION.to_le_bytes());
        head.extend((description.len() as u32).to_le_bytes());
        head.extend(description.as_bytes());
        w.write(&head)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| format_err(&self.tmp, "cache writer closed"))?;
        out.write_all(bytes).map_err(|e| io_err(&self.tmp, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn append<T: Record>(&mut self, x: &T) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        x.encode(&mut buf)?;
        self.offsets.push(self.pos);
        let r = self
            .write(&(buf.len() as u64).to_le_bytes())
            .and_then(|()| self.write(&buf));
        self.buf = buf;
        r
    }

    fn finish(mut self) -> Result<()> {
        let mut foot = Vec::with_capacity(8 * self.offsets.len() + 16);
        for o in &self.offsets {
            foot.extend(o.to_le_bytes());
        }
        foot.extend((self.offsets.len() as u64).to_le_bytes());
        foot.extend(END_MAGIC);
        self.write(&foot)?;
        let out = self
            .out
            .take()
            .ok_or_else(|| format_err(&self.tmp, "cache writer closed"))?;
        let done = out
            .into_inner()
            .map_err(|e| io_err(&self.tmp, e.into_error()))
            .and_then(|file| file.sync_all().map_err(|e| io_err(&self.tmp, e)))
            .and_then(|()| std::fs::rename(&self.tmp, &self.path).map_err(|e| io_err(&self.path, e)));
        if done.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        done
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A pass that writes what it reads to the cache file, completing it at the end.
struct FileFillStream<T> {
    upstream: Box<dyn Stream<T>>,
    writer: Option<CacheWriter>,
}

impl<T> FileFillStream<T> {
    fn finish(&mut self) -> Result<()> {
        match self.writer.take() {
            Some(w) => w.finish(),
            None => Ok(()),
        }
    }
}

impl<T: Record> Stream<T> for FileFillStream<T> {
    fn next(&mut self) -> Option<Result<T>> {
        let item = self.upstream.next();
        match &item {
            Some(Ok(x)) => {
                if let Some(w) = self.writer.as_mut() {
                    if let Err(e) = w.append(x) {
                        self.writer = None;
                        return Some(Err(e));
                    }
                }
                // A consumer that knows the length stops without asking past the end.
                if self.upstream.remaining() == Some(0) {
                    if let Err(e) = self.finish() {
                        return Some(Err(e));
                    }
                }
            }
            Some(Err(_)) => self.writer = None,
            None => {
                if let Err(e) = self.finish() {
                    return Some(Err(e));
                }
            }
        }
        item
    }
    // Skipping reads (the default): the pass still fills the cache.
    fn remaining(&self) -> Option<u64> {
        self.upstream.remaining()
    }
}
