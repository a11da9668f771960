//! TensorBoard event files, written (and read back) without TensorFlow or a protobuf library.
//!
//! A file `events.out.tfevents.<unix time>.<host>` is a sequence of TFRecords:
//!
//! ```text
//! u64 length (little-endian) | u32 masked_crc32c(length bytes) | data | u32 masked_crc32c(data)
//! ```
//!
//! with `masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8` over CRC-32C (Castagnoli).
//! Each record is an `Event` protocol buffer, encoded here by hand: the first carries
//! `file_version = "brain.Event:2"`, the others a `Summary` of scalar values:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
//!           SessionLog session_log = 6; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; }
//! SessionLog { SessionStatus status = 1; }   // START = 1
//! ```
//!
//! A resumed run starts its new file with a `SessionLog` START at the first step it will log:
//! TensorBoard then drops the earlier files' events from that step on (logged after the
//! checkpoint the run resumed from), so the curve has no duplicate steps.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The `file_version` of the first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";

const MASK_DELTA: u32 = 0xa282_ead8;

/// TFRecord's masked CRC-32C of `data`.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A field key: `(field number << 3) | wire type`.
fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, ((field as u64) << 3) | wire as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An `Event` with `wall_time`, `step` and either a file version or scalar values.
fn encode_event(wall_time: f64, step: i64, file_version: Option<&str>, scalars: &[(&str, f32)]) -> Vec<u8> {
    let mut ev = Vec::with_capacity(32 + scalars.len() * 24);
    put_key(&mut ev, 1, 1);
    ev.extend_from_slice(&wall_time.to_le_bytes());
    put_key(&mut ev, 2, 0);
    put_varint(&mut ev, step as u64);
    if let Some(v) = file_version {
        put_bytes(&mut ev, 3, v.as_bytes());
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut val = Vec::with_capacity(tag.len() + 8);
            put_bytes(&mut val, 1, tag.as_bytes());
            put_key(&mut val, 2, 5);
            val.extend_from_slice(&value.to_le_bytes());
            put_bytes(&mut summary, 1, &val);
        }
        put_bytes(&mut ev, 5, &summary);
    }
    ev
}

/// The `SessionLog.status` of a (re)started run.
const SESSION_START: u64 = 1;

/// An `Event` at `step` holding a `SessionLog` START.
fn encode_session_start(wall_time: f64, step: i64) -> Vec<u8> {
    let mut ev = encode_event(wall_time, step, None, &[]);
    let mut log = Vec::with_capacity(2);
    put_key(&mut log, 1, 0);
    put_varint(&mut log, SESSION_START);
    put_bytes(&mut ev, 6, &log);
    ev
}

/// One record with TFRecord framing.
fn frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The host name for file names (`/proc/sys/kernel/hostname`, `$HOSTNAME`, or `localhost`),
/// restricted to characters safe in a file name.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Writes scalar summaries to a TensorBoard event file in a directory (`tensorboard --logdir DIR`).
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Create `dir/events.out.tfevents.<unix seconds>.<host>` (a numeric suffix is added if that
    /// name exists) and write the file-version event.
    pub fn create(dir: impl AsRef<Path>) -> Result<EventWriter> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let base = format!("events.out.tfevents.{}.{}", now_secs() as u64, host_name());
        let mut path = dir.join(&base);
        let mut n = 1;
        let file = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => {
                    path = dir.join(format!("{base}.{n}"));
                    n += 1;
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        };
        let mut w = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        w.write_record(&encode_event(now_secs(), 0, Some(FILE_VERSION), &[]))?;
        w.flush()?;
        Ok(w)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        self.out
            .write_all(&frame(data))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Write one event holding scalar values (`tag`, value) at `step`.
    pub fn add_scalars(&mut self, step: usize, scalars: &[(&str, f32)]) -> Result<()> {
        self.write_record(&encode_event(now_secs(), step as i64, None, scalars))
    }

    /// Write a `SessionLog` START at `step`: TensorBoard drops the events of earlier files at
    /// and after `step` (written by an interrupted run after the checkpoint it resumes from).
    pub fn add_session_start(&mut self, step: usize) -> Result<()> {
        self.write_record(&encode_session_start(now_secs(), step as i64))
    }

    /// Write one scalar value at `step`.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: usize) -> Result<()> {
        self.add_scalars(step, &[(tag, value)])
    }

    /// Push buffered events to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

/// An event read back from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    /// The step.
    pub step: i64,
    /// The file version (the first event of a file).
    pub file_version: Option<String>,
    /// Scalar summary values, `(tag, value)`.
    pub scalars: Vec<(String, f32)>,
    /// Whether the event is a `SessionLog` START (a resumed run's purge point).
    pub session_start: bool,
}

/// A cursor over protobuf bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("field of {n} bytes runs past the end"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    /// The next field: (number, wire type, payload for length-delimited / fixed, value for varint).
    fn field(&mut self) -> std::result::Result<(u64, u8, &'a [u8], u64), String> {
        let key = self.varint()?;
        let (num, wire) = (key >> 3, (key & 7) as u8);
        match wire {
            0 => Ok((num, wire, &[], self.varint()?)),
            1 => Ok((num, wire, self.take(8)?, 0)),
            2 => {
                let n = self.varint()? as usize;
                Ok((num, wire, self.take(n)?, 0))
            }
            5 => Ok((num, wire, self.take(4)?, 0)),
            w => Err(format!("unsupported wire type {w}")),
        }
    }
}

fn decode_event(data: &[u8]) -> std::result::Result<Event, String> {
    let mut ev = Event {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        scalars: Vec::new(),
        session_start: false,
    };
    let mut r = Reader { buf: data, pos: 0 };
    while !r.done() {
        match r.field()? {
            (1, 1, b, _) => ev.wall_time = f64::from_le_bytes(b.try_into().map_err(|_| "bad double")?),
            (2, 0, _, v) => ev.step = v as i64,
            (3, 2, b, _) => ev.file_version = Some(String::from_utf8_lossy(b).into_owned()),
            (5, 2, summary, _) => {
                let mut s = Reader { buf: summary, pos: 0 };
                while !s.done() {
                    if let (1, 2, value, _) = s.field()? {
                        let mut v = Reader { buf: value, pos: 0 };
                        let (mut tag, mut x) = (String::new(), None);
                        while !v.done() {
                            match v.field()? {
                                (1, 2, b, _) => tag = String::from_utf8_lossy(b).into_owned(),
                                (2, 5, b, _) => {
                                    x = Some(f32::from_le_bytes(b.try_into().map_err(|_| "bad float")?))
                                }
                                _ => {}
                            }
                        }
                        if let Some(x) = x {
                            ev.scalars.push((tag, x));
                        }
                    }
                }
            }
            (6, 2, log, _) => {
                let mut l = Reader { buf: log, pos: 0 };
                while !l.done() {
                    if let (1, 0, _, status) = l.field()? {
                        ev.session_start = status == SESSION_START;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(ev)
}

/// Read every event of a file, checking the framing and both CRCs of every record. A truncated
/// record or a CRC mismatch is an [`Error::EventFile`] giving the record's offset.
pub fn read_events(path: impl AsRef<Path>) -> Result<Vec<Event>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |offset: usize, reason: String| Error::EventFile {
        path: path.to_path_buf(),
        reason: format!("record at byte {offset}: {reason}"),
    };
    let mut events = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        if bytes.len() - pos < 12 {
            return Err(bad(start, "truncated header".into()));
        }
        let len_bytes = &bytes[pos..pos + 8];
        let len_crc = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap_or_default());
        if masked_crc32c(len_bytes) != len_crc {
            return Err(bad(start, "length CRC mismatch".into()));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default()) as usize;
        pos += 12;
        if bytes.len() - pos < len.saturating_add(4) {
            return Err(bad(start, format!("truncated data ({len} bytes announced)")));
        }
        let data = &bytes[pos..pos + len];
        let data_crc = u32::from_le_bytes(bytes[pos + len..pos + len + 4].try_into().unwrap_or_default());
        if masked_crc32c(data) != data_crc {
            return Err(bad(start, "data CRC mismatch".into()));
        }
        pos += len + 4;
        events.push(decode_event(data).map_err(|e| bad(start, format!("malformed Event: {e}")))?);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        // The masked CRC of an empty string, as TensorFlow computes it.
        let crc = crc32c::crc32c(b"");
        let rotated = ((crc as u64 >> 15) | ((crc as u64) << 17 & 0xffff_ffff)) as u32;
        assert_eq!(masked_crc32c(b""), rotated.wrapping_add(0xa282_ead8));
    }

    #[test]
    fn writes_and_reads_back_events() {
        let dir = std::env::temp_dir().join(format!("kiln-train-tb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = EventWriter::create(&dir).unwrap();
        w.add_scalars(10, &[("train/loss", 0.5), ("train/accuracy", 0.875)])
            .unwrap();
        w.add_scalar("val/loss", 1.25, 300).unwrap();
        w.flush().unwrap();
        let path = w.path().to_path_buf();
        assert!(path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("events.out.tfevents."));
        let ev = read_events(&path).unwrap();
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].file_version.as_deref(), Some(FILE_VERSION));
        assert_eq!(ev[1].step, 10);
        assert_eq!(
            ev[1].scalars,
            vec![
                ("train/loss".to_string(), 0.5),
                ("train/accuracy".to_string(), 0.875)
            ]
        );
        assert_eq!(ev[2].step, 300);
        assert!(ev[2].wall_time > 1.0e9);
        // A second writer in the same second gets a distinct file.
        let w2 = EventWriter::create(&dir).unwrap();
        assert_ne!(w2.path(), path);

        // Corruption is detected.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = read_events(&path).unwrap_err().to_string();
        assert!(e.contains("CRC"), "{e}");
        std::fs::write(&path, &bytes[..n - 2]).unwrap();
        let e = read_events(&path).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
