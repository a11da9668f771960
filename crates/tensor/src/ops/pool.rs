//! Pooling and upsampling.
