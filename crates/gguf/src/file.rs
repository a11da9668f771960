//! [`GgufFile`]: the parsed header of a GGUF file over its (memory-mapped) bytes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use kiln_tensor::Tensor;

use crate::error::{GgufError, Result};
use crate::metadata::MetadataValue;
use crate::parse::parse;
use crate::tensor_info::{ggml_type_name, GgmlType, TensorInfo};

/// The bytes a [`GgufFile`] reads from: a memory map, a `Vec<u8>`, ...
pub type Backing = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// The data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;

/// A parsed GGUF file (version 2 or 3): metadata, tensor infos, and access to each tensor's
/// bytes. Every offset and size in it has been checked against the file, so reading a tensor
/// never goes out of bounds.
pub struct GgufFile {
    data: Backing,
    version: u32,
    metadata: BTreeMap<String, MetadataValue>,
    alignment: usize,
    data_offset: usize,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("len", &self.bytes().len())
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps `path` and parses its header.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only and private to this process. As with every
        // memory-mapped loader, the file must not be truncated or modified by another process
        // while the mapping (or a slice borrowed from it) is alive.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        GgufFile::from_bytes(Arc::new(map))
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(data: Backing) -> Result<GgufFile> {
        let header = parse((*data).as_ref())?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            data,
            version: header.version,
            metadata: header.metadata,
            alignment: header.alignment,
            data_offset: header.data_offset,
            tensors: header.tensors,
            index,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata pair, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    /// The value of `key` through `convert`, or an error naming the key and the types.
    fn get_as<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl FnOnce(&'a MetadataValue) -> Option<T>,
    ) -> Result<T> {
        let value = self
            .get(key)
            .ok_or_else(|| GgufError::MissingKey { key: key.to_string() })?;
        convert(value).ok_or_else(|| GgufError::WrongType {
            key: key.to_string(),
            expected,
            actual: value.type_description(),
        })
    }

    /// The integer at `key` as a u32 (any integer type whose value fits).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_as(key, "an integer that fits in u32", MetadataValue::as_u32)
    }

    /// The integer at `key` as a u64 (any unsigned or non-negative integer).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_as(key, "a non-negative integer", MetadataValue::as_u64)
    }

    /// The float at `key` (f32, or f64 rounded).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get_as(key, "f32", MetadataValue::as_f32)
    }

    /// The bool at `key`.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.get_as(key, "bool", MetadataValue::as_bool)
    }

    /// The string at `key`.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get_as(key, "string", MetadataValue::as_str)
    }

    /// The array of strings at `key`.
    pub fn get_string_array(&self, key: &str) -> Result<&[String]> {
        self.get_as(key, "array of string", MetadataValue::as_string_array)
    }

    /// The array of i32 at `key`.
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        self.get_as(key, "array of i32", MetadataValue::as_i32_array)
    }

    /// The data-section alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Absolute byte offset of the data section.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
            .ok_or_else(|| GgufError::TensorNotFound {
                name: name.to_string(),
                count: self.tensors.len(),
            })
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        (*self.data).as_ref()
    }

    /// The backing bytes (the memory map for [`GgufFile::open`]), to keep them alive while
    /// holding byte ranges of tensors beyond the life of this `GgufFile`.
    pub fn backing(&self) -> Backing {
        Arc::clone(&self.data)
    }

    /// The raw bytes of tensor `name`, borrowed from the file (no copy).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.tensor(name)?;
        if let GgmlType::Unsupported(type_id) = info.dtype {
            return Err(GgufError::UnsupportedTensorType {
                name: info.name.clone(),
                type_id,
                ggml_name: ggml_type_name(type_id),
            });
        }
        let bytes = self.bytes();
        info.offset
            .checked_add(info.n_bytes)
            .and_then(|end| bytes.get(info.offset..end))
            .ok_or_else(|| GgufError::TensorOutOfBounds {
                name: info.name.clone(),
                start: info.offset as u128,
                end: info.offset as u128 + info.n_bytes as u128,
                file_len: bytes.len(),
            })
    }

    /// Tensor `name` as an f32 [`Tensor`] of shape [`TensorInfo::shape`]: F16 and BF16
    /// converted, quant formats dequantized exactly as ggml does.
    pub fn tensor_to_f32(&self, name: &str) -> Result<Tensor> {
        let info = self.tensor(name)?;
        let bytes = self.tensor_bytes(name)?;
        let values: Vec<f32> = match info.dtype {
            GgmlType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            GgmlType::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            GgmlType::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            GgmlType::Quant(format) => {
                let mut out = vec![0f32; info.n_elements];
                kiln_tensor::quant::dequantize(format, bytes, &mut out)?;
                out
            }
            // `tensor_bytes` already refused it.
            GgmlType::Unsupported(_) => Vec::new(),
        };
        Ok(Tensor::from_vec(values, info.shape())?)
    }
}
