//! Tensor descriptions: the ggml element type and [`TensorInfo`].

use kiln_tensor::quant::QuantFormat;

/// The most dimensions a ggml tensor has (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// A tensor's ggml element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 0: f32.
    F32,
    /// 1: f16.
    F16,
    /// 30: bf16.
    BF16,
    /// A block-quantized format kiln dequantizes (ids 2, 3, 8, 12, 14).
    Quant(QuantFormat),
    /// Any other id: the file opens, but reading the tensor is an error.
    Unsupported(u32),
}

impl GgmlType {
    /// The type for a ggml type id.
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Quant(QuantFormat::Q4_0),
            3 => GgmlType::Quant(QuantFormat::Q4_1),
            8 => GgmlType::Quant(QuantFormat::Q8_0),
            12 => GgmlType::Quant(QuantFormat::Q4K),
            14 => GgmlType::Quant(QuantFormat::Q6K),
            30 => GgmlType::BF16,
            other => GgmlType::Unsupported(other),
        }
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::BF16 => 30,
            GgmlType::Quant(QuantFormat::Q4_0) => 2,
            GgmlType::Quant(QuantFormat::Q4_1) => 3,
            GgmlType::Quant(QuantFormat::Q8_0) => 8,
            GgmlType::Quant(QuantFormat::Q4K) => 12,
            GgmlType::Quant(QuantFormat::Q6K) => 14,
            GgmlType::Unsupported(id) => id,
        }
    }

    /// ggml's name for the type (`F32`, `Q4_K`, `Q5_K`, ...), `unknown` for ids ggml does not
    /// define.
    pub fn name(self) -> &'static str {
        ggml_type_name(self.id())
    }

    /// Elements per block: 1 for plain floats, the block length for quant formats, `None` for
    /// unsupported types.
    pub fn block_len(self) -> Option<usize> {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Some(1),
            GgmlType::Quant(q) => Some(q.block_len()),
            GgmlType::Unsupported(_) => None,
        }
    }

    /// Bytes per block, `None` for unsupported types.
    pub fn block_bytes(self) -> Option<usize> {
        match self {
            GgmlType::F32 => Some(4),
            GgmlType::F16 | GgmlType::BF16 => Some(2),
            GgmlType::Quant(q) => Some(q.block_bytes()),
            GgmlType::Unsupported(_) => None,
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GgmlType::Unsupported(id) => write!(f, "{} (type {id})", self.name()),
            t => f.write_str(t.name()),
        }
    }
}

/// ggml's name for a type id (from `ggml.h`; removed ids and unknown ones are `unknown`).
pub(crate) fn ggml_type_name(id: u32) -> &'static str {
    match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        _ => "unknown",
    }
}

/// One tensor of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` (ne0) is the innermost, contiguous one.
    pub dims: Vec<usize>,
    /// Element type.
    pub dtype: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Bytes of data (0 for [`GgmlType::Unsupported`], whose size kiln does not know).
    pub n_bytes: usize,
    /// Number of elements (the product of `dims`).
    pub n_elements: usize,
}

impl TensorInfo {
    /// The row-major (PyTorch-style) shape: `dims` reversed, so `[576, 49152]` in ggml order is
    /// a `[49152, 576]` matrix of 49152 rows.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}
