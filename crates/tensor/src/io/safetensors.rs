//! The [safetensors](https://github.com/huggingface/safetensors) format: an 8-byte little-endian
//! header length, a JSON header (`name -> {dtype, shape, data_offsets}`), then the raw
//! little-endian tensor data.
//!
//! [`load`] memory-maps the file: every tensor whose data is aligned for its dtype (all of them in
//! files written by [`save`] or by the reference Python implementation) shares the mapping
//! through [`Buffer::Mapped`](crate::storage::Buffer::Mapped) without copying.

use std::borrow::{Borrow, Cow};
use std::collections::{HashMap, HashSet};
use std::path::Path;

use ::safetensors::{Dtype, SafeTensorError, SafeTensors, View};

use super::{format_error, io_error, map_file, tensor_from_bytes, tensor_from_map};
use crate::{DType, Error, Result, Shape, Tensor};

const FORMAT: &str = "safetensors";

/// A `(name, tensor)` pair that [`save`] accepts: `(&str, &Tensor)`, `(String, Tensor)`, a
/// reference to either, or the items of a `&HashMap<String, Tensor>`.
pub trait NamedTensor {
    /// The tensor's name in the file.
    fn name(&self) -> &str;
    /// The tensor.
    fn tensor(&self) -> &Tensor;
}

impl<K: AsRef<str>, V: Borrow<Tensor>> NamedTensor for (K, V) {
    fn name(&self) -> &str {
        self.0.as_ref()
    }
    fn tensor(&self) -> &Tensor {
        self.1.borrow()
    }
}

impl<N: NamedTensor + ?Sized> NamedTensor for &N {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn tensor(&self) -> &Tensor {
        (**self).tensor()
    }
}

fn to_kiln(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I64 => DType::I64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        _ => return None,
    })
}

fn to_safetensors(dtype: DType) -> Dtype {
    match dtype {
        DType::U8 => Dtype::U8,
        DType::U32 => Dtype::U32,
        DType::I64 => Dtype::I64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
    }
}

/// A readable explanation of a parse failure.
fn describe(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => "shorter than the 8-byte header length".into(),
        SafeTensorError::HeaderTooLarge => "the header length is implausibly large (over 100 MB)".into(),
        SafeTensorError::InvalidHeaderLength => {
            "the header length exceeds the file size (truncated or not a safetensors file)".into()
        }
        SafeTensorError::InvalidHeader => "the header is not valid UTF-8".into(),
        SafeTensorError::InvalidHeaderStart | SafeTensorError::InvalidHeaderDeserialization => {
            "the header is not a valid safetensors JSON header".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "the tensor data does not match the header's offsets (truncated or padded file)".into()
        }
        SafeTensorError::InvalidOffset(name) => format!("tensor '{name}' has invalid data offsets"),
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's byte size does not match its shape and dtype".into()
        }
        SafeTensorError::ValidationOverflow => "a tensor's shape overflows the address space".into(),
        other => other.to_string(),
    }
}

/// Cheap structural checks the parser relies on (it may overflow on hostile offsets): the header
/// is JSON whose every `data_offsets` lies within the `data_len` bytes that follow it.
fn precheck(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.len() < 8 {
        return Err(format!(
            "the file is {} bytes, shorter than the 8-byte header length",
            bytes.len()
        ));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(n);
    let rest = (bytes.len() - 8) as u64;
    if n > rest {
        return Err(format!(
            "the header length {n} exceeds the {rest} bytes after it (truncated or not a safetensors file)"
        ));
    }
    let header = &bytes[8..8 + n as usize];
    let data_len = rest - n;
    let json: serde_json::Value = serde_json::from_slice(header)
        .map_err(|e| format!("the header is not valid JSON ({e}); not a safetensors file?"))?;
    let obj = json
        .as_object()
        .ok_or_else(|| "the header is not a JSON object".to_string())?;
    for (name, info) in obj.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let offsets = info.get("data_offsets").and_then(|o| o.as_array());
        let ends = offsets.map(|o| o.iter().map(|v| v.as_u64()).collect::<Vec<_>>());
        match ends.as_deref() {
            Some(&[Some(a), Some(b)]) if a <= b && b <= data_len => {}
            Some(&[Some(a), Some(b)]) => {
                return Err(format!(
                    "tensor '{name}' has data offsets [{a}, {b}] outside the {data_len} data bytes \
                     (truncated or corrupt file)"
                ))
            }
            _ => return Err(format!("tensor '{name}' has no valid data_offsets")),
        }
    }
    Ok(())
}

/// Parse `bytes` and build every tensor with `make(dtype, shape, data)`.
fn parse(
    bytes: &[u8],
    path: &str,
    mut make: impl FnMut(DType, Shape, &[u8]) -> Tensor,
) -> Result<HashMap<String, Tensor>> {
    precheck(bytes).map_err(|r| format_error(path, FORMAT, r))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| format_error(path, FORMAT, describe(&e)))?;
    let mut out = HashMap::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let dtype = to_kiln(view.dtype()).ok_or_else(|| {
            format_error(
                path,
                FORMAT,
                format!(
                    "tensor '{name}' has dtype {:?}, which kiln does not support \
                     (supported: U8, U32, I64, F16, BF16, F32, F64)",
                    view.dtype()
                ),
            )
        })?;
        let shape = Shape::new(view.shape().to_vec());
        let t = make(dtype, shape, view.data());
        out.insert(name, t);
    }
    Ok(out)
}

/// Load every tensor of a safetensors file, by name.
///
/// The file is memory-mapped; tensors whose data is aligned for their dtype borrow the mapping
/// (no copy, and the mapping lives as long as any of them), others are copied. Dtypes other than
/// U8, U32, I64, F16, BF16, F32 and F64, and truncated, corrupt or foreign files are an
/// [`Error::Format`] naming the path; an unreadable file is an [`Error::Io`].
pub fn load(path: impl AsRef<Path>) -> Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    let map = map_file(path)?;
    let base = map.as_ptr() as usize;
    parse(&map, &path.display().to_string(), |dtype, shape, data| {
        tensor_from_map(&map, data.as_ptr() as usize - base, dtype, shape)
    })
}

/// Load every tensor from the bytes of a safetensors file (copied into owned storage). Errors as
/// [`load`], with `<memory>` as the path.
pub fn load_from_bytes(bytes: &[u8]) -> Result<HashMap<String, Tensor>> {
    parse(bytes, super::IN_MEMORY, |dtype, shape, data| {
        tensor_from_bytes(data, dtype, shape)
    })
}

/// A tensor prepared for serialization: its contiguous form, safetensors dtype and the byte range
/// of its elements in the storage.
struct Prepared {
    tensor: Tensor,
    dtype: Dtype,
    bytes: std::ops::Range<usize>,
}

impl View for &Prepared {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.tensor.dims()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // `prepare` moved every tensor to the host.
        let host = self
            .tensor
            .cpu_storage()
            .map(|s| s.as_bytes())
            .unwrap_or_default();
        Cow::Borrowed(&host[self.bytes.clone()])
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn prepare<I>(tensors: I, op: &'static str) -> Result<Vec<(String, Prepared)>>
where
    I: IntoIterator,
    I::Item: NamedTensor,
{
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for item in tensors {
        let name = item.name();
        if name == "__metadata__" {
            return Err(Error::invalid(
                op,
                "'__metadata__' is reserved and cannot name a tensor",
            ));
        }
        if !seen.insert(name.to_string()) {
            return Err(Error::invalid(op, format!("tensor name '{name}' appears twice")));
        }
        let tensor = item.tensor().to_device(crate::Device::Cpu)?.contiguous()?;
        let size = tensor.dtype().size_in_bytes();
        let range = tensor.layout().contiguous_range().unwrap_or(0..0);
        let bytes = range.start * size..range.end * size;
        let dtype = to_safetensors(tensor.dtype());
        out.push((name.to_string(), Prepared { tensor, dtype, bytes }));
    }
    Ok(out)
}

/// Save named tensors as a safetensors file. Non-contiguous tensors are written in row-major
/// order. Accepts anything iterable over [`NamedTensor`]s: `[("w", &w)]`, `&[(&str, &Tensor)]`,
/// `&HashMap<String, Tensor>`, `Vec<(String, Tensor)>`...
///
/// The data goes to a temporary file in the same directory, which is synced and then renamed over
/// `path`: a crash never leaves a torn file. Duplicate names are an [`Error::InvalidArgument`].
pub fn save<I>(tensors: I, path: impl AsRef<Path>) -> Result<()>
where
    I: IntoIterator,
    I::Item: NamedTensor,
{
    let path = path.as_ref();
    let prepared = prepare(tensors, "save_safetensors")?;
    super::write_atomically(path, |tmp| {
        let views = prepared.iter().map(|(n, p)| (n.as_str(), p));
        ::safetensors::serialize_to_file(views, &None, tmp).map_err(|e| match e {
            SafeTensorError::IoError(source) => io_error(tmp, source),
            e => format_error(&path.display().to_string(), FORMAT, describe(&e)),
        })
    })
}

/// Serialize named tensors to the bytes of a safetensors file (see [`save`]).
pub fn save_to_bytes<I>(tensors: I) -> Result<Vec<u8>>
where
    I: IntoIterator,
    I::Item: NamedTensor,
{
    let prepared = prepare(tensors, "save_safetensors")?;
    let views = prepared.iter().map(|(n, p)| (n.as_str(), p));
    ::safetensors::serialize(views, &None).map_err(|e| format_error(super::IN_MEMORY, FORMAT, describe(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Buffer, CpuStorage};

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-st-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_is_zero_copy_and_atomic() {
        let dir = tmpdir("rt");
        let path = dir.join("m.safetensors");
        let a = Tensor::from_vec((0..6).map(|x| x as f32).collect(), [2, 3]).unwrap();
        let b = Tensor::from_vec(vec![7u8, 8, 9], [3]).unwrap();
        let c = Tensor::from_vec(vec![1i64, -2], [2]).unwrap();
        save([("a", &a.t().unwrap()), ("b", &b), ("c", &c)], &path).unwrap();
        let m = load(&path).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m["a"].dims(), &[3, 2]);
        assert_eq!(m["a"].to_vec::<f32>().unwrap(), vec![0., 3., 1., 4., 2., 5.]);
        assert_eq!(m["b"].to_vec::<u8>().unwrap(), vec![7, 8, 9]);
        assert_eq!(m["c"].to_vec::<i64>().unwrap(), vec![1, -2]);
        for t in m.values() {
            let mapped =
                crate::map_storage!(t.cpu_storage().unwrap(), b => matches!(b, Buffer::Mapped { .. }));
            assert!(mapped, "aligned tensors are zero-copy");
        }
        assert!(matches!(
            m["c"].cpu_storage().unwrap(),
            CpuStorage::I64(Buffer::Mapped { .. })
        ));
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // Overwriting while the old file is mapped keeps the old tensors valid.
        save([("a", &b)], &path).unwrap();
        assert_eq!(m["a"].to_vec::<f32>().unwrap(), vec![0., 3., 1., 4., 2., 5.]);
        assert_eq!(load(&path).unwrap()["a"].to_vec::<u8>().unwrap(), vec![7, 8, 9]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn misaligned_data_is_copied() {
        // One U8 tensor of 1 byte, then an F32: offsets [0,1] and [1,5] put the F32 off alignment.
        let header = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}}"#;
        let mut h = header.to_vec();
        h.resize(h.len().div_ceil(8) * 8, b' ');
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&h);
        bytes.push(42);
        bytes.extend_from_slice(&1.5f32.to_le_bytes());
        let dir = tmpdir("mis");
        let path = dir.join("m.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let m = load(&path).unwrap();
        assert_eq!(m["a"].to_vec::<u8>().unwrap(), vec![42]);
        assert_eq!(m["b"].to_vec::<f32>().unwrap(), vec![1.5]);
        assert!(matches!(
            m["b"].cpu_storage().unwrap(),
            CpuStorage::F32(Buffer::Owned(_))
        ));
        assert_eq!(
            load_from_bytes(&bytes).unwrap()["b"].to_vec::<f32>().unwrap(),
            vec![1.5]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsupported_dtype_names_tensor_and_dtype() {
        let header = br#"{"weird":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 8]);
        let e = load_from_bytes(&bytes).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Format { .. }), "{msg}");
        assert!(msg.contains("weird") && msg.contains("I32"), "{msg}");
    }

    #[test]
    fn hostile_offsets_are_format_errors() {
        for header in [
            &br#"{"x":{"dtype":"U8","shape":[18446744073709551611],"data_offsets":[0,18446744073709551611]}}"#[..],
            br#"{"x":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            br#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            br#"{"x":{"dtype":"F32","shape":[2]}}"#,
            br#"[1, 2]"#,
            br#"{"x":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}}"#,
        ] {
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header);
            bytes.extend_from_slice(&[0; 8]);
            let e = load_from_bytes(&bytes).unwrap_err();
            assert!(matches!(e, Error::Format { .. }), "{e}");
        }
        let e = load_from_bytes(&[1, 2, 3]).unwrap_err();
        assert!(e.to_string().contains("<memory>"), "{e}");
    }

    #[test]
    fn missing_file_and_bad_names() {
        let e = load("/nonexistent/kiln/x.safetensors").unwrap_err();
        assert!(
            matches!(e, Error::Io { .. }) && e.to_string().contains("x.safetensors"),
            "{e}"
        );
        let a = Tensor::from_vec(vec![1f32], [1]).unwrap();
        assert!(save_to_bytes([("a", &a), ("a", &a)]).is_err());
        assert!(save_to_bytes([("__metadata__", &a)]).is_err());
        let map: HashMap<String, Tensor> = [("a".to_string(), a.clone())].into_iter().collect();
        let bytes = save_to_bytes(&map).unwrap();
        let items: &[(&str, &Tensor)] = &[("a", &a)];
        assert_eq!(bytes, save_to_bytes(items).unwrap());
        let e = save([("a", &a)], "/nonexistent/kiln/x.safetensors").unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }
}
