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
//! Every output is one weight row against one activation row, summed in a fixed order, so the
//! result depends neither on the thread count nor on the other rows of the batch.

mod activations;
mod dot;
mod formats;
mod matrix;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use activations::QuantizedActivations;
pub use formats::{dequantize, QuantFormat};
pub use matrix::{QBytes, QMatrix, QuantPath};
