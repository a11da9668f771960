//! The one error type of kiln-gguf: every malformed, truncated or lying file is a structured
//! variant naming what was wrong, what was expected and (while parsing) the byte offset.

use std::path::PathBuf;

/// `Result` with [`GgufError`].
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// Everything that can go wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened or memory-mapped.
    #[error("cannot read GGUF file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The file ends before a field that the header says is there.
    #[error("truncated or corrupt GGUF: {what} at byte offset {offset} needs {need} bytes, only {available} remain")]
    Truncated {
        /// The field being read.
        what: String,
        /// Where the field starts.
        offset: usize,
        /// Bytes the field needs.
        need: u64,
        /// Bytes left in the file from `offset`.
        available: usize,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: magic bytes {found:02x?} at byte offset 0, expected \"GGUF\" (47 47 55 46)")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// A GGUF version other than 2 or 3.
    #[error(
        "unsupported GGUF version {version} at byte offset 4: expected 2 or 3 (version 1 files are \
         obsolete; a huge number is a big-endian file)"
    )]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// A declared element count cannot fit in the bytes that remain, so the file lies about it.
    #[error(
        "{what} at byte offset {offset}: declared count {count} needs at least {min_bytes} bytes, \
         only {available} remain"
    )]
    CountTooLarge {
        /// What is being counted.
        what: String,
        /// Where the count field starts.
        offset: usize,
        /// The declared count.
        count: u64,
        /// The fewest bytes `count` items can take.
        min_bytes: u128,
        /// Bytes left in the file after the count.
        available: usize,
    },
    /// A string (key, value or tensor name) is not UTF-8.
    #[error("{what} at byte offset {offset} is not valid UTF-8 (lossy: {lossy:?})")]
    InvalidUtf8 {
        /// Which string.
        what: String,
        /// Where the string's length prefix starts.
        offset: usize,
        /// The bytes with invalid sequences replaced.
        lossy: String,
    },
    /// A metadata value type id outside 0..=12.
    #[error("{what} at byte offset {offset}: unknown metadata value type {type_id}, expected 0..=12")]
    UnknownValueType {
        /// The value whose type is unknown.
        what: String,
        /// Where the type id starts.
        offset: usize,
        /// The type id found.
        type_id: u32,
    },
    /// A bool value other than 0 or 1.
    #[error("{what} at byte offset {offset}: bool byte {value}, expected 0 or 1")]
    InvalidBool {
        /// The value.
        what: String,
        /// Where the byte is.
        offset: usize,
        /// The byte found.
        value: u8,
    },
    /// Arrays nested deeper than [`crate::MAX_ARRAY_DEPTH`].
    #[error("{what} at byte offset {offset}: arrays nested {depth} deep, at most {max} allowed")]
    NestingTooDeep {
        /// The value.
        what: String,
        /// Where the too-deep array starts.
        offset: usize,
        /// Its depth.
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// The same metadata key twice.
    #[error("duplicate metadata key `{key}` at byte offset {offset}")]
    DuplicateKey {
        /// The key.
        key: String,
        /// Where the second occurrence starts.
        offset: usize,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("invalid general.alignment {value}: expected a nonzero power of two")]
    InvalidAlignment {
        /// The value found.
        value: u64,
    },
    /// A tensor info whose dimensions are unacceptable.
    #[error("tensor `{name}` (info at byte offset {offset}): {reason}")]
    InvalidTensorInfo {
        /// The tensor.
        name: String,
        /// Where its info starts.
        offset: usize,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// The same tensor name twice.
    #[error("duplicate tensor name `{name}` at byte offset {offset}")]
    DuplicateTensor {
        /// The name.
        name: String,
        /// Where the second info starts.
        offset: usize,
    },
    /// A tensor offset that is not a multiple of the alignment.
    #[error("tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// The tensor.
        name: String,
        /// Its offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: usize,
    },
    /// A tensor's bytes do not lie inside the file.
    #[error("tensor `{name}`: bytes {start}..{end} lie outside the file of {file_len} bytes")]
    TensorOutOfBounds {
        /// The tensor.
        name: String,
        /// Absolute start (saturated at `u128` if it overflowed).
        start: u128,
        /// Absolute end.
        end: u128,
        /// The file's length.
        file_len: usize,
    },
    /// Two tensors share bytes.
    #[error("tensors `{first}` (bytes {first_start}..{first_end}) and `{second}` (from byte {second_start}) overlap")]
    OverlappingTensors {
        /// The tensor that starts first.
        first: String,
        /// Its absolute start.
        first_start: usize,
        /// Its absolute end.
        first_end: usize,
        /// The tensor that starts inside it.
        second: String,
        /// Its absolute start.
        second_start: usize,
    },
    /// A metadata key the caller asked for is absent.
    #[error("metadata key `{key}` is missing")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata value has another type than the caller asked for.
    #[error("metadata key `{key}` holds {actual}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The type asked for.
        expected: &'static str,
        /// The type found.
        actual: String,
    },
    /// No tensor of that name.
    #[error("no tensor named `{name}` in the file (it has {count} tensors)")]
    TensorNotFound {
        /// The name asked for.
        name: String,
        /// How many tensors the file has.
        count: usize,
    },
    /// The tensor's ggml type is not one kiln reads.
    #[error(
        "unsupported tensor type {type_id} ({name}, ggml type {ggml_name}): kiln reads F32, F16, \
         BF16, Q4_0, Q4_1, Q8_0, Q4_K and Q6_K"
    )]
    UnsupportedTensorType {
        /// The tensor.
        name: String,
        /// The ggml type id.
        type_id: u32,
        /// ggml's name for the id, or `unknown`.
        ggml_name: &'static str,
    },
    /// Building the tensor or dequantizing failed.
    #[error(transparent)]
    Tensor(#[from] kiln_tensor::Error),
}
