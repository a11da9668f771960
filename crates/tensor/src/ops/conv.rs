//! Convolutions (im2col + GEMM). Filled in by the convolution work.
