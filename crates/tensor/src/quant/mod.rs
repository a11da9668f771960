//! Block-quantized weights that stay quantized in memory, and the matrix products that read the
//! blocks directly (ggml's formats: Q4_0, Q4_1, Q8_0, Q4_K, Q6_K).
//!
//! - [`QuantFormat`] and [`dequantize`]: the block layouts and ggml's reference dequantization,
//!   bit for bit.
//! - [`QuantizedActivations`]: the activations of a product, quantized per block of 32 to 8 bits
//!   (a scale per block and the sums the formats with offsets need), as llama.cpp does.
//! - [`QMatrix`]: a `[rows, cols]` weight matrix of blocks (owned or borrowed from a memory map)
//!   and its products with f32 rows: integer dot products per block (AVX-512 VNNI or AVX2 chosen
//!   at run time, portable code elsewhere), f32 accumulation; or, for checks, f32 activations
//!   against the dequantized blocks.
//!
//! - [`Nf4Matrix`] and [`Int8Matrix`]: quantization of any dense weight at load time, as
//!   bitsandbytes defines NF4 (with double quantization) and LLM.int8(); [`QWeight`] is the one
//!   entry point for every kind, [`QuantScheme`] the choice (`--quantize`).
//!
//! Every output is one weight row against one activation row, summed in a fixed order, so the
//! result depends neither on the thread count nor on the other rows of the batch.

mod activations;
mod dot;
mod formats;
mod int8;
mod matrix;
mod nf4;
#[cfg(target_arch = "x86_64")]
mod packed;
mod weight;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use activations::QuantizedActivations;
pub use formats::{dequantize, QuantFormat};
pub use int8::Int8Matrix;
pub use matrix::{QBytes, QMatrix, QuantPath};
pub use nf4::{dynamic_map, nf4_code, Nf4Matrix, Nf4Scales, DOUBLE_QUANT_BLOCK, NF4_BLOCK, NF4_CODEBOOK};
pub use weight::{QWeight, QuantScheme};
