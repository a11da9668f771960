//! Parsing and validating a GGUF header: the metadata, the tensor infos, and where the tensors
//! lie (inside the file, aligned, not overlapping).

use std::collections::{BTreeMap, HashSet};

use crate::error::{GgufError, Result};
use crate::file::DEFAULT_ALIGNMENT;
use crate::metadata::{read_type, read_value, MetadataValue};
use crate::reader::Reader;
use crate::tensor_info::{GgmlType, TensorInfo, MAX_DIMS};

/// The fewest bytes a metadata pair takes: key length (8), value type (4), a 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// The fewest bytes a tensor info takes: name length (8), n_dims (4), one dim (8), type (4),
/// offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// What [`parse`] finds.
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) metadata: BTreeMap<String, MetadataValue>,
    pub(crate) alignment: usize,
    pub(crate) data_offset: usize,
    pub(crate) tensors: Vec<TensorInfo>,
}

/// Parses and validates the header, the tensor infos and the tensors' placement.
pub(crate) fn parse(bytes: &[u8]) -> Result<Header> {
    let mut r = Reader::new(bytes);
    let magic = r.take(4, "magic")?;
    if magic != b"GGUF" {
        let mut found = [0u8; 4];
        found.copy_from_slice(magic);
        return Err(GgufError::BadMagic { found });
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let tensor_count_at = r.pos();
    let tensor_count = r.u64("tensor count")?;
    let kv_count = r.count(MIN_KV_BYTES, "metadata key-value count")?;

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key_at = r.pos();
        let key = r.string(&format!("metadata key #{i}"))?;
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key, offset: key_at });
        }
        let what = format!("value of metadata key `{key}`");
        let ty = read_type(&mut r, &what)?;
        let value = read_value(&mut r, ty, &what)?;
        metadata.insert(key, value);
    }
    let alignment = alignment(&metadata)?;

    // Checked now that the metadata has been read past: each info takes at least 32 bytes, so
    // the infos preallocated for below are bounded by the file's size.
    let available = r.remaining();
    let min_bytes = tensor_count as u128 * MIN_TENSOR_INFO_BYTES as u128;
    let tensor_count = match usize::try_from(tensor_count) {
        Ok(n) if min_bytes <= available as u128 => n,
        _ => {
            return Err(GgufError::CountTooLarge {
                what: "tensor count".to_string(),
                offset: tensor_count_at,
                count: tensor_count,
                min_bytes,
                available,
            })
        }
    };

    // The count is bounded by the bytes left, which include the tensor data (gigabytes for a
    // real model): grow with the infos actually read instead of reserving for the declared count.
    let reserve = tensor_count.min(1024);
    let mut tensors = Vec::with_capacity(reserve);
    let mut relative_offsets = Vec::with_capacity(reserve);
    let mut names = HashSet::with_capacity(reserve);
    for i in 0..tensor_count {
        let at = r.pos();
        let (info, rel_offset) = read_tensor_info(&mut r, i, alignment)?;
        if !names.insert(info.name.clone()) {
            return Err(GgufError::DuplicateTensor {
                name: info.name,
                offset: at,
            });
        }
        tensors.push(info);
        relative_offsets.push(rel_offset);
    }

    let file_len = bytes.len();
    let data_offset = r
        .pos()
        .checked_next_multiple_of(alignment)
        .ok_or(GgufError::InvalidAlignment {
            value: alignment as u64,
        })?;
    for (t, &rel) in tensors.iter_mut().zip(&relative_offsets) {
        let start = data_offset as u128 + rel as u128;
        let end = start + t.n_bytes as u128;
        if end > file_len as u128 {
            return Err(GgufError::TensorOutOfBounds {
                name: t.name.clone(),
                start,
                end,
                file_len,
            });
        }
        // `end <= file_len`, so `start` fits in usize.
        t.offset = start as usize;
    }

    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| (t.offset, t.n_bytes));
    for pair in by_offset.windows(2) {
        if let [a, b] = pair {
            if a.offset + a.n_bytes > b.offset {
                return Err(GgufError::OverlappingTensors {
                    first: a.name.clone(),
                    first_start: a.offset,
                    first_end: a.offset + a.n_bytes,
                    second: b.name.clone(),
                    second_start: b.offset,
                });
            }
        }
    }

    Ok(Header {
        version,
        metadata,
        alignment,
        data_offset,
        tensors,
    })
}

/// `general.alignment`, checked to be a nonzero power of two.
fn alignment(metadata: &BTreeMap<String, MetadataValue>) -> Result<usize> {
    const KEY: &str = "general.alignment";
    let Some(value) = metadata.get(KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let a = value.as_u64().ok_or_else(|| GgufError::WrongType {
        key: KEY.to_string(),
        expected: "u32",
        actual: value.type_description(),
    })?;
    match usize::try_from(a) {
        Ok(a) if a.is_power_of_two() => Ok(a),
        _ => Err(GgufError::InvalidAlignment { value: a }),
    }
}

/// Reads tensor info `i`; returns it (with `offset` still 0) and its offset relative to the
/// data section.
fn read_tensor_info(r: &mut Reader<'_>, i: usize, alignment: usize) -> Result<(TensorInfo, u64)> {
    let at = r.pos();
    let name = r.string(&format!("name of tensor #{i}"))?;
    let invalid = |reason: String| GgufError::InvalidTensorInfo {
        name: name.clone(),
        offset: at,
        reason,
    };
    let what = format!("info of tensor `{name}`");
    let n_dims = r.u32(&what)?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(invalid(format!("{n_dims} dimensions, expected 1..={MAX_DIMS}")));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    let mut n_elements: usize = 1;
    for d in 0..n_dims {
        let dim = r.u64(&what)?;
        if dim == 0 {
            return Err(invalid(format!("dimension {d} is 0, expected at least 1")));
        }
        match usize::try_from(dim)
            .ok()
            .and_then(|dim| n_elements.checked_mul(dim))
        {
            Some(n) => n_elements = n,
            None => {
                return Err(invalid(format!(
                    "dimension {d} = {dim} overflows the element count"
                )))
            }
        }
        dims.push(dim as usize);
    }
    let dtype = GgmlType::from_id(r.u32(&what)?);
    let rel_offset = r.u64(&what)?;
    let n_bytes = match (dtype.block_len(), dtype.block_bytes()) {
        (Some(block_len), Some(block_bytes)) => {
            // As ggml: each row (dims[0] elements) is a whole number of blocks.
            if !dims[0].is_multiple_of(block_len) {
                return Err(invalid(format!(
                    "rows of {} elements (dims {dims:?}) are not a whole number of {dtype} blocks \
                     of {block_len}",
                    dims[0]
                )));
            }
            (n_elements / block_len)
                .checked_mul(block_bytes)
                .ok_or_else(|| invalid(format!("{n_elements} {dtype} elements overflow the byte count")))?
        }
        _ => 0,
    };
    if !rel_offset.is_multiple_of(alignment as u64) {
        return Err(GgufError::MisalignedTensor {
            name,
            offset: rel_offset,
            alignment,
        });
    }
    let info = TensorInfo {
        name,
        dims,
        dtype,
        offset: 0,
        n_bytes,
        n_elements,
    };
    Ok((info, rel_offset))
}
