//! # kiln-gguf
//!
//! A reader for [GGUF](https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) files, the
//! model format of llama.cpp: the typed metadata, the tensor infos, each tensor's raw bytes
//! (borrowed from a memory map) and its values as an f32 [`kiln_tensor::Tensor`] (F16/BF16
//! converted, Q4_0/Q4_1/Q8_0/Q4_K/Q6_K dequantized bit-exactly as ggml does).
//!
//! A truncated, misaligned or lying file is a [`GgufError`] naming the field and the byte
//! offset, never an out-of-bounds read, a panic, or an allocation sized by a declared count.
//!
//! ```no_run
//! use kiln_gguf::{GgmlType, GgufFile};
//! let file = GgufFile::open("data/registry/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! assert_eq!(file.get_u32("llama.block_count")?, 30);
//! let vocab = file.get_string_array("tokenizer.ggml.tokens")?;
//! let embd = file.tensor("token_embd.weight")?;
//! assert_eq!(embd.dims, [576, 49152]); // ggml order, ne0 first
//! assert_eq!(embd.shape(), [49152, 576]); // row-major
//! assert!(matches!(embd.dtype, GgmlType::Quant(_)));
//! let raw: &[u8] = file.tensor_bytes("token_embd.weight")?;
//! let norm = file.tensor_to_f32("blk.0.attn_norm.weight")?;
//! # let _ = (vocab, raw, norm);
//! # Ok::<(), kiln_gguf::GgufError>(())
//! ```

mod error;
mod file;
mod metadata;
mod parse;
mod reader;
mod tensor_info;

pub use error::{GgufError, Result};
pub use file::{Backing, GgufFile, DEFAULT_ALIGNMENT};
pub use kiln_tensor::quant::QuantFormat;
pub use metadata::{MetadataArray, MetadataValue, ValueType, MAX_ARRAY_DEPTH};
pub use tensor_info::{GgmlType, TensorInfo, MAX_DIMS};
