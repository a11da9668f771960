//! Convolution and pooling ops.
