//! A small GGUF writer for the tests: builds valid files in memory and records where each field
//! lies, so corruption tests can patch exactly the field they mean to break.
#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;

use kiln_gguf::{MetadataArray, MetadataValue};

/// A tensor to write.
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
}

/// A file to write.
pub struct Builder {
    pub version: u32,
    pub alignment: usize,
    pub kvs: Vec<(Vec<u8>, MetadataValue)>,
    pub tensors: Vec<TensorSpec>,
}

/// A written file and where its fields are.
pub struct Built {
    pub bytes: Vec<u8>,
    pub tensor_count_at: usize,
    pub kv_count_at: usize,
    /// Start of each key (its u64 length).
    pub key_at: Vec<usize>,
    /// Start of each value (after its type id).
    pub value_at: Vec<usize>,
    /// Start of each tensor info (its name's u64 length).
    pub info_at: Vec<usize>,
    /// Each tensor info's n_dims field.
    pub n_dims_at: Vec<usize>,
    /// Each tensor info's type field.
    pub type_at: Vec<usize>,
    /// Each tensor info's offset field.
    pub offset_at: Vec<usize>,
    /// Each tensor's offset relative to the data section.
    pub rel_offsets: Vec<u64>,
    pub data_offset: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            version: 3,
            alignment: 32,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl Builder {
    pub fn kv(mut self, key: &str, value: MetadataValue) -> Self {
        self.kvs.push((key.as_bytes().to_vec(), value));
        self
    }

    pub fn raw_kv(mut self, key: &[u8], value: MetadataValue) -> Self {
        self.kvs.push((key.to_vec(), value));
        self
    }

    /// Adds `general.alignment` and lays the data out with it.
    pub fn alignment(mut self, alignment: u32) -> Self {
        self.alignment = alignment as usize;
        self.kv("general.alignment", MetadataValue::U32(alignment))
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> Self {
        self.tensors.push(TensorSpec {
            name: name.to_string(),
            dims: dims.to_vec(),
            type_id,
            data,
        });
        self
    }

    pub fn build(&self) -> Built {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        let tensor_count_at = out.len();
        out.extend((self.tensors.len() as u64).to_le_bytes());
        let kv_count_at = out.len();
        out.extend((self.kvs.len() as u64).to_le_bytes());
        let (mut key_at, mut value_at) = (Vec::new(), Vec::new());
        for (key, value) in &self.kvs {
            key_at.push(out.len());
            write_bytes_string(&mut out, key);
            out.extend(value.value_type().id().to_le_bytes());
            value_at.push(out.len());
            write_value(&mut out, value);
        }
        let mut rel_offsets = Vec::new();
        let mut next = 0u64;
        for t in &self.tensors {
            rel_offsets.push(next);
            next = (next + t.data.len() as u64).next_multiple_of(self.alignment as u64);
        }
        let (mut info_at, mut n_dims_at, mut type_at, mut offset_at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (t, rel) in self.tensors.iter().zip(&rel_offsets) {
            info_at.push(out.len());
            write_bytes_string(&mut out, t.name.as_bytes());
            n_dims_at.push(out.len());
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            type_at.push(out.len());
            out.extend(t.type_id.to_le_bytes());
            offset_at.push(out.len());
            out.extend(rel.to_le_bytes());
        }
        let data_offset = out.len().next_multiple_of(self.alignment);
        out.resize(data_offset, 0);
        for (t, rel) in self.tensors.iter().zip(&rel_offsets) {
            out.resize(data_offset + *rel as usize, 0);
            out.extend(&t.data);
        }
        Built {
            bytes: out,
            tensor_count_at,
            kv_count_at,
            key_at,
            value_at,
            info_at,
            n_dims_at,
            type_at,
            offset_at,
            rel_offsets,
            data_offset,
        }
    }
}

fn write_bytes_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

/// Writes a value without its type id.
pub fn write_value(out: &mut Vec<u8>, v: &MetadataValue) {
    match v {
        MetadataValue::U8(x) => out.extend(x.to_le_bytes()),
        MetadataValue::I8(x) => out.extend(x.to_le_bytes()),
        MetadataValue::U16(x) => out.extend(x.to_le_bytes()),
        MetadataValue::I16(x) => out.extend(x.to_le_bytes()),
        MetadataValue::U32(x) => out.extend(x.to_le_bytes()),
        MetadataValue::I32(x) => out.extend(x.to_le_bytes()),
        MetadataValue::U64(x) => out.extend(x.to_le_bytes()),
        MetadataValue::I64(x) => out.extend(x.to_le_bytes()),
        MetadataValue::F32(x) => out.extend(x.to_le_bytes()),
        MetadataValue::F64(x) => out.extend(x.to_le_bytes()),
        MetadataValue::Bool(x) => out.push(*x as u8),
        MetadataValue::String(s) => write_bytes_string(out, s.as_bytes()),
        MetadataValue::Array(a) => write_array(out, a),
    }
}

fn write_array(out: &mut Vec<u8>, a: &MetadataArray) {
    out.extend(a.element_type().id().to_le_bytes());
    out.extend((a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr, $variant:ident) => {
            for x in $v {
                write_value(out, &MetadataValue::$variant(*x));
            }
        };
    }
    match a {
        MetadataArray::U8(v) => each!(v, U8),
        MetadataArray::I8(v) => each!(v, I8),
        MetadataArray::U16(v) => each!(v, U16),
        MetadataArray::I16(v) => each!(v, I16),
        MetadataArray::U32(v) => each!(v, U32),
        MetadataArray::I32(v) => each!(v, I32),
        MetadataArray::U64(v) => each!(v, U64),
        MetadataArray::I64(v) => each!(v, I64),
        MetadataArray::F32(v) => each!(v, F32),
        MetadataArray::F64(v) => each!(v, F64),
        MetadataArray::Bool(v) => each!(v, Bool),
        MetadataArray::String(v) => v.iter().for_each(|s| write_bytes_string(out, s.as_bytes())),
        MetadataArray::Array(v) => v.iter().for_each(|a| write_array(out, a)),
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Q8_0 blocks: scale `d` then the codes, block by block.
pub fn q8_0_bytes(blocks: &[(f32, [i8; 32])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (d, q) in blocks {
        out.extend(half::f16::from_f32(*d).to_le_bytes());
        out.extend(q.iter().map(|&x| x as u8));
    }
    out
}

/// Q4_1 blocks from 32 nibbles each (element j and j + 16 share byte j).
pub fn q4_1_bytes(blocks: &[(f32, f32, [u8; 32])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (d, m, q) in blocks {
        out.extend(half::f16::from_f32(*d).to_le_bytes());
        out.extend(half::f16::from_f32(*m).to_le_bytes());
        out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
    }
    out
}

/// Metadata of every value type, nested arrays included.
pub fn every_metadata_type() -> Vec<(&'static str, MetadataValue)> {
    use MetadataValue as V;
    vec![
        ("general.architecture", V::String("llama".into())),
        ("t.u8", V::U8(200)),
        ("t.i8", V::I8(-100)),
        ("t.u16", V::U16(60_000)),
        ("t.i16", V::I16(-30_000)),
        ("t.u32", V::U32(4_000_000_000)),
        ("t.i32", V::I32(-2_000_000_000)),
        ("t.u64", V::U64(u64::MAX)),
        ("t.i64", V::I64(i64::MIN)),
        ("t.f32", V::F32(1e-5)),
        ("t.f64", V::F64(-2.5e300)),
        ("t.bool", V::Bool(true)),
        ("t.string", V::String("héllo ✓".into())),
        ("t.empty_string", V::String(String::new())),
        ("t.arr.u8", V::Array(MetadataArray::U8(vec![0, 1, 255]))),
        ("t.arr.i8", V::Array(MetadataArray::I8(vec![-128, 127]))),
        ("t.arr.u16", V::Array(MetadataArray::U16(vec![1, 65535]))),
        ("t.arr.i16", V::Array(MetadataArray::I16(vec![-1]))),
        ("t.arr.u32", V::Array(MetadataArray::U32(vec![7, 8, 9]))),
        ("t.arr.i32", V::Array(MetadataArray::I32(vec![-1, 0, 1]))),
        ("t.arr.u64", V::Array(MetadataArray::U64(vec![u64::MAX]))),
        ("t.arr.i64", V::Array(MetadataArray::I64(vec![i64::MIN, 3]))),
        ("t.arr.f32", V::Array(MetadataArray::F32(vec![0.5, -0.25]))),
        ("t.arr.f64", V::Array(MetadataArray::F64(vec![1e-300]))),
        ("t.arr.bool", V::Array(MetadataArray::Bool(vec![true, false]))),
        (
            "t.arr.string",
            V::Array(MetadataArray::String(vec!["a".into(), "".into(), "ü".into()])),
        ),
        ("t.arr.empty", V::Array(MetadataArray::U32(vec![]))),
        (
            "t.arr.nested",
            V::Array(MetadataArray::Array(vec![
                MetadataArray::I32(vec![1, 2]),
                MetadataArray::String(vec!["x".into()]),
                MetadataArray::Array(vec![MetadataArray::U8(vec![9])]),
            ])),
        ),
    ]
}

/// The F32 tensor of [`sample`]: dims [3, 2] (2 rows of 3).
pub const SAMPLE_F32: [f32; 6] = [1.0, -2.0, 3.5, 0.0, 1e-3, -7.25];

/// A valid file with metadata of every type and one tensor of each of F32, F16, BF16, Q8_0 and
/// Q4_1; the file ends exactly where the last tensor's data does.
pub fn sample() -> Builder {
    let mut b = Builder::default();
    for (k, v) in every_metadata_type() {
        b = b.kv(k, v);
    }
    let f16: Vec<u8> = [0.5f32, -1.0, 65504.0, 2f32.powi(-14)]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = [1.0f32, -3.0, 1e30, 0.15625]
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    let q8 = q8_0_bytes(&[
        (0.5, std::array::from_fn(|i| i as i8 - 16)),
        (-0.125, std::array::from_fn(|i| (i as i8) * 4 - 64)),
    ]);
    let q41 = q4_1_bytes(&[
        (0.25, -1.0, std::array::from_fn(|i| (i % 16) as u8)),
        (2.0, 0.5, std::array::from_fn(|i| (15 - i % 16) as u8)),
    ]);
    b.tensor("a.f32", &[3, 2], 0, f32_bytes(&SAMPLE_F32))
        .tensor("b.f16", &[4], 1, f16)
        .tensor("c.bf16", &[2, 2], 30, bf16)
        .tensor("d.q8_0", &[32, 2], 8, q8)
        .tensor("e.q4_1", &[64], 3, q41)
}

/// The registry directory: `$KILN_REGISTRY_MODELS`, default `<workspace>/data/registry`.
pub fn registry_dir() -> PathBuf {
    match std::env::var_os("KILN_REGISTRY_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("data/registry"),
    }
}

/// `registry_dir()/relative` when it exists; otherwise prints why the test is skipped and returns
/// `None`, or panics when `KILN_REQUIRE_WEIGHTS=1`.
pub fn weights(test: &str, relative: &str) -> Option<PathBuf> {
    let path = registry_dir().join(relative);
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "{test}: {} is absent (set KILN_REGISTRY_MODELS to the directory holding {relative})",
        path.display()
    );
    if std::env::var("KILN_REQUIRE_WEIGHTS").as_deref() == Ok("1") {
        panic!("{why}, and KILN_REQUIRE_WEIGHTS=1 forbids skipping");
    }
    println!("skipped {why}");
    None
}
