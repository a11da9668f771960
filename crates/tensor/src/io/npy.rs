//! NumPy's `.npy` format (versions 1.0, 2.0 and 3.0): the magic `\x93NUMPY`, a version, a
//! header length, a Python-literal header `{'descr': '<f4', 'fortran_order': False, 'shape': (2,
//! 3), }`, then the raw elements.
//!
//! Supported element types (little-endian): `<f2 <f4 <f8 <i8 <u4 |u1`, plus `|b1` (bool, loaded as
//! U8) and `<i4` (loaded as I64). Fortran-order arrays are loaded into row-major tensors.

use std::io::Write;
use std::path::Path;

use super::{format_error, io_error, row_major_bytes, tensor_from_bytes, tensor_from_map};
use crate::{DType, Error, Result, Shape, Tensor};

const FORMAT: &str = "npy";
const MAGIC: &[u8] = b"\x93NUMPY";

/// How the file stores its elements.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Elem {
    /// Bytes are the tensor's own dtype.
    Native(DType),
    /// Little-endian `i32`, widened to `i64`.
    I32,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::Native(d) => d.size_in_bytes(),
            Elem::I32 => 4,
        }
    }
}

/// A parsed header.
struct Header {
    elem: Elem,
    fortran_order: bool,
    shape: Vec<usize>,
    /// Where the data starts.
    data_offset: usize,
    /// Bytes of data the header promises.
    data_len: usize,
}

/// Map a `descr` string to an element type.
fn parse_descr(descr: &str) -> std::result::Result<Elem, String> {
    let unsupported = || {
        format!(
            "unsupported dtype descriptor '{descr}' (supported: <f2 <f4 <f8 <i8 <i4 <u4 |u1 |b1, little-endian)"
        )
    };
    let mut chars = descr.chars();
    let order = chars.next().ok_or_else(unsupported)?;
    let code = chars.as_str();
    let one_byte = matches!(code, "u1" | "b1");
    let little = match order {
        '<' => true,
        '=' => cfg!(target_endian = "little"),
        '|' => one_byte,
        '>' => one_byte,
        _ => return Err(unsupported()),
    };
    if !little {
        return Err(format!(
            "dtype descriptor '{descr}' is big-endian or has no byte order; only little-endian data is supported"
        ));
    }
    Ok(match code {
        "u1" | "b1" => Elem::Native(DType::U8),
        "u4" => Elem::Native(DType::U32),
        "i8" => Elem::Native(DType::I64),
        "i4" => Elem::I32,
        "f2" => Elem::Native(DType::F16),
        "f4" => Elem::Native(DType::F32),
        "f8" => Elem::Native(DType::F64),
        _ => return Err(unsupported()),
    })
}

/// A value of the header dictionary.
#[derive(Debug)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
    Other,
}

/// A parser for the tiny subset of Python literals `.npy` headers use.
struct Lit<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Lit<'_> {
    fn ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.pos).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "expected '{}' at byte {} of the header",
                c as char, self.pos
            ))
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let q = self.peek().filter(|&c| c == b'\'' || c == b'"');
        let q = q.ok_or_else(|| format!("expected a string at byte {} of the header", self.pos))?;
        self.pos += 1;
        let start = self.pos;
        while self.pos < self.s.len() && self.s[self.pos] != q {
            self.pos += 1;
        }
        if self.pos >= self.s.len() {
            return Err("unterminated string in the header".into());
        }
        let text = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
        self.pos += 1;
        Ok(text)
    }
    fn int(&mut self) -> std::result::Result<u64, String> {
        self.ws();
        let start = self.pos;
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
            self.pos += 1;
        }
        let v = std::str::from_utf8(&self.s[start..self.pos])
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| format!("expected a non-negative integer at byte {start} of the header"))?;
        // Python 2 headers write longs as `3L`.
        if self.s.get(self.pos) == Some(&b'L') {
            self.pos += 1;
        }
        Ok(v)
    }
    fn value(&mut self) -> std::result::Result<Value, String> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Value::Str(self.string()?)),
            Some(b'(') => {
                self.pos += 1;
                let mut dims = Vec::new();
                while !self.eat(b')') {
                    dims.push(self.int()?);
                    if !self.eat(b',') {
                        self.expect(b')')?;
                        break;
                    }
                }
                Ok(Value::Tuple(dims))
            }
            Some(b'T') if self.s[self.pos..].starts_with(b"True") => {
                self.pos += 4;
                Ok(Value::Bool(true))
            }
            Some(b'F') if self.s[self.pos..].starts_with(b"False") => {
                self.pos += 5;
                Ok(Value::Bool(false))
            }
            Some(b'[') => Ok(Value::Other),
            _ => Err(format!("unexpected token at byte {} of the header", self.pos)),
        }
    }
    /// The `{key: value, ...}` dictionary.
    fn dict(&mut self) -> std::result::Result<Vec<(String, Value)>, String> {
        self.expect(b'{')?;
        let mut items = Vec::new();
        while !self.eat(b'}') {
            let k = self.string()?;
            self.expect(b':')?;
            let v = self.value()?;
            if matches!(v, Value::Other) {
                return Err(format!(
                    "'{k}' is a structured or nested value, which is not supported"
                ));
            }
            items.push((k, v));
            if !self.eat(b',') {
                self.expect(b'}')?;
                break;
            }
        }
        Ok(items)
    }
}

/// Parse the preamble and header of a `.npy` file of `file_len` bytes.
fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        return Err("missing the \\x93NUMPY magic: not a .npy file".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated preamble".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        _ => return Err(format!("unsupported format version {major}.{minor}")),
    };
    let end = start + header_len;
    if end > bytes.len() {
        return Err(format!(
            "the header claims {header_len} bytes but the file has only {} after the preamble (truncated)",
            bytes.len() - start
        ));
    }
    let mut lit = Lit {
        s: &bytes[start..end],
        pos: 0,
    };
    let items = lit.dict()?;
    let get = |key: &str| {
        items
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("the header has no '{key}' entry"))
    };
    let elem = match get("descr")? {
        Value::Str(d) => parse_descr(d)?,
        v => return Err(format!("'descr' must be a string, found {v:?}")),
    };
    let fortran_order = match get("fortran_order")? {
        Value::Bool(b) => *b,
        v => return Err(format!("'fortran_order' must be True or False, found {v:?}")),
    };
    let shape = match get("shape")? {
        Value::Tuple(t) => t
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} is too large")))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        v => return Err(format!("'shape' must be a tuple, found {v:?}")),
    };
    let data_len = shape
        .iter()
        .try_fold(elem.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows the address space"))?;
    Ok(Header {
        elem,
        fortran_order,
        shape,
        data_offset: end,
        data_len,
    })
}

/// Build the tensor described by `h` from the data `bytes[h.data_offset..]`; `from_native` turns
/// a byte range holding elements of the tensor's own dtype into a contiguous tensor.
fn build(
    bytes: &[u8],
    path: &str,
    h: Header,
    from_native: impl FnOnce(usize, DType, Shape) -> Tensor,
) -> Result<Tensor> {
    let available = bytes.len() - h.data_offset;
    if available != h.data_len {
        let what = if available < h.data_len {
            "truncated file"
        } else {
            "trailing bytes"
        };
        return Err(format_error(
            path,
            FORMAT,
            format!(
                "shape {:?} needs {} data bytes but the file holds {available} ({what})",
                h.shape, h.data_len
            ),
        ));
    }
    // Fortran order: the data is the row-major layout of the reversed shape.
    let stored: Vec<usize> = if h.fortran_order {
        h.shape.iter().rev().copied().collect()
    } else {
        h.shape.clone()
    };
    let t = match h.elem {
        Elem::Native(dtype) => from_native(h.data_offset, dtype, Shape::new(stored)),
        Elem::I32 => {
            let v: Vec<i32> = bytemuck::pod_collect_to_vec(&bytes[h.data_offset..]);
            Tensor::from_vec(v.into_iter().map(i64::from).collect::<Vec<i64>>(), stored)?
        }
    };
    if h.fortran_order && t.rank() > 1 {
        let perm: Vec<usize> = (0..t.rank()).rev().collect();
        t.permute(&perm)?.contiguous()
    } else {
        Ok(t)
    }
}

/// Load a NumPy `.npy` file (format versions 1.0-3.0) as a row-major tensor.
///
/// Element types: little-endian `<f2 <f4 <f8 <i8 <u4 |u1` map to F16, F32, F64, I64, U32, U8;
/// `|b1` (bool) loads as U8 and `<i4` as I64. C-order data is memory-mapped (zero-copy when
/// aligned, which NumPy guarantees); Fortran-order data is transposed into a row-major copy.
/// Anything else (big-endian or structured dtypes, a truncated or foreign file) is an
/// [`Error::Format`] naming the path; an unreadable file is an [`Error::Io`].
pub fn load_npy(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let map = super::map_file(path)?;
    let h = parse_header(&map).map_err(|r| format_error(&name, FORMAT, r))?;
    build(&map, &name, h, |off, dtype, shape| {
        tensor_from_map(&map, off, dtype, shape)
    })
}

/// Load a tensor from the bytes of a `.npy` file (copied). Errors as [`load_npy`], with
/// `<memory>` as the path.
pub fn load_npy_from_bytes(bytes: &[u8]) -> Result<Tensor> {
    let path = super::IN_MEMORY;
    let h = parse_header(bytes).map_err(|r| format_error(path, FORMAT, r))?;
    build(bytes, path, h, |off, dtype, shape| {
        let n = shape.elem_count() * dtype.size_in_bytes();
        tensor_from_bytes(&bytes[off..off + n], dtype, shape)
    })
}

/// The `.npy` preamble and header for `t` (version 1.0, or 2.0 for huge headers), padded so the
/// data starts on a 64-byte boundary.
fn header_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let descr = match t.dtype() {
        DType::U8 => "|u1",
        DType::U32 => "<u4",
        DType::I64 => "<i8",
        DType::F16 => "<f2",
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::BF16 => {
            return Err(Error::UnsupportedDType {
                op: "save_npy",
                dtype: DType::BF16,
                expected: "a dtype NumPy has (u8, u32, i64, f16, f32, f64); cast bf16 to f32 first",
            })
        }
    };
    let shape = match t.dims() {
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let (version, preamble) = if dict.len() + 11 < 65536 {
        (1u8, 10)
    } else {
        (2, 12)
    };
    let total = (preamble + dict.len() + 1).div_ceil(64) * 64;
    dict.push_str(&" ".repeat(total - preamble - dict.len() - 1));
    dict.push('\n');
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    Ok(out)
}

/// Save `tensor` as a NumPy `.npy` file (C order; non-contiguous tensors are written in row-major
/// order). BF16 has no NumPy dtype and is an [`Error::UnsupportedDType`]. The file is written to
/// a temporary file in the same directory, synced and renamed into place.
pub fn save_npy(tensor: &Tensor, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let header = header_bytes(tensor)?;
    let data = row_major_bytes(tensor)?;
    super::write_atomically(path, |tmp| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(|e| io_error(tmp, e))?;
        let mut w = std::io::BufWriter::new(f);
        w.write_all(&header)
            .and_then(|()| w.write_all(&data))
            .and_then(|()| w.flush())
            .map_err(|e| io_error(tmp, e))
    })
}

/// The bytes of a `.npy` file holding `tensor` (see [`save_npy`]).
pub fn save_npy_to_bytes(tensor: &Tensor) -> Result<Vec<u8>> {
    let mut out = header_bytes(tensor)?;
    out.extend_from_slice(&row_major_bytes(tensor)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.npy` file with a hand-written header (as NumPy writes it) and raw data.
    fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
        let pad = (64 - (10 + dict.len() + 1) % 64) % 64;
        let h = format!("{dict}{}\n", " ".repeat(pad));
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_numpy_headers() {
        let data: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &data,
        );
        let t = load_npy_from_bytes(&c).unwrap();
        assert_eq!((t.dtype(), t.dims()), (DType::F32, &[2usize, 3][..]));
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        // np.asfortranarray(np.arange(1, 7).reshape(2, 3)) stores columns: 1 4 2 5 3 6.
        let data: Vec<u8> = [1f32, 4., 2., 5., 3., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f = npy(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
            &data,
        );
        let t = load_npy_from_bytes(&f).unwrap();
        assert!(t.is_contiguous());
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        // int32 widens to i64; bool loads as u8; scalars have shape ().
        let data: Vec<u8> = [-1i32, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = load_npy_from_bytes(&npy(
            "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }",
            &data,
        ))
        .unwrap();
        assert_eq!(t.to_vec::<i64>().unwrap(), vec![-1, 7]);
        let t = load_npy_from_bytes(&npy(
            "{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }",
            &[1, 0, 1],
        ))
        .unwrap();
        assert_eq!((t.dtype(), t.to_vec::<u8>().unwrap()), (DType::U8, vec![1, 0, 1]));
        let t = load_npy_from_bytes(&npy(
            "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (), }",
            &2.5f64.to_le_bytes(),
        ))
        .unwrap();
        assert_eq!((t.rank(), t.to_scalar::<f64>().unwrap()), (0, 2.5));
        // Python 2 longs and an empty array.
        let t = load_npy_from_bytes(&npy(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (0L, 3L)}",
            &[],
        ))
        .unwrap();
        assert_eq!(t.dims(), &[0, 3]);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                npy(
                    "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
                    &[0; 4],
                ),
                "big-endian",
            ),
            (
                npy(
                    "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }",
                    &[0; 8],
                ),
                "<c8",
            ),
            (
                npy(
                    "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                    &[0; 4],
                ),
                "structured",
            ),
            (
                npy(
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                    &[0; 4],
                ),
                "truncated",
            ),
            (
                npy(
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
                    &[0; 8],
                ),
                "trailing",
            ),
            (npy("{'descr': '<f4', 'shape': (1,), }", &[0; 4]), "fortran_order"),
            (
                npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,", &[0; 4]),
                "header",
            ),
            (b"PK\x03\x04 not numpy at all".to_vec(), "magic"),
        ];
        for (bytes, needle) in cases {
            let e = load_npy_from_bytes(&bytes).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, Error::Format { .. }), "{msg}");
            assert!(
                msg.contains(needle) && msg.contains("<memory>"),
                "{needle}: {msg}"
            );
        }
        let mut big = npy("{'descr': '<u1', 'fortran_order': False, 'shape': (1,), }", &[0]);
        big[8] = 0xff;
        big[9] = 0xff;
        assert!(load_npy_from_bytes(&big).is_err());
        let huge = npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
            &[],
        );
        assert!(matches!(
            load_npy_from_bytes(&huge).unwrap_err(),
            Error::Format { .. }
        ));
    }

    #[test]
    fn writes_aligned_headers_numpy_can_read() {
        let t = Tensor::from_vec(vec![1u32, 2, 3], [3]).unwrap();
        let b = save_npy_to_bytes(&t).unwrap();
        assert!(b.starts_with(b"\x93NUMPY\x01\x00"));
        let header_len = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + header_len]).unwrap();
        assert!(header.starts_with("{'descr': '<u4', 'fortran_order': False, 'shape': (3,), }"));
        assert!(header.ends_with('\n'));
        assert_eq!(
            load_npy_from_bytes(&b).unwrap().to_vec::<u32>().unwrap(),
            vec![1, 2, 3]
        );
        let bf = Tensor::from_vec(vec![half::bf16::ONE], [1]).unwrap();
        assert!(matches!(
            save_npy_to_bytes(&bf).unwrap_err(),
            Error::UnsupportedDType { .. }
        ));
    }
}
