//! Layers, one family per file, with PyTorch's semantics, parameter names and initialisation.

mod activation;
mod attention;
mod batchnorm;
mod conv;
mod dropout;
mod embedding;
mod groupnorm;
mod linear;
mod lstm_cell_math;
mod norm;
mod pool;
mod position;
mod recurrent;
mod sequential;
mod transformer;

pub use activation::{Activation, Flatten};
pub use attention::{causal_mask, split_packed_attention_weights, AttentionConfig, MultiHeadAttention};
pub use batchnorm::{BatchNorm1d, BatchNorm2d, BatchNormConfig};
pub use conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use groupnorm::GroupNorm;
pub use linear::Linear;
pub use norm::{LayerNorm, RmsNorm};
pub use pool::{AdaptiveAvgPool2d, AvgPool2d, MaxPool2d};
pub use position::{
    sinusoidal_table, LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEncoding,
};
pub use recurrent::{gru_recurrence, lstm_recurrence, Gru, GruCell, Lstm, LstmCell, RnnConfig};
pub use sequential::Sequential;
pub use transformer::{DecoderMasks, TransformerConfig, TransformerDecoderLayer, TransformerEncoderLayer};
