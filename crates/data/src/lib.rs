//! # kiln-data
//!
//! Datasets as kiln tensors. This first piece reads MNIST-format IDX files ([`mnist`]): MNIST
//! itself and Fashion-MNIST, gzip-compressed or not.
//!
//! ```no_run
//! use kiln_data::mnist::{Mnist, Split};
//! let test = Mnist::load("data/mnist", Split::Test)?;
//! assert_eq!(test.images.dims(), &[10_000, 28, 28]); // u8
//! assert_eq!(test.labels.dims(), &[10_000]); // i64
//! # Ok::<(), kiln_data::Error>(())
//! ```

mod dataset;
mod error;
pub mod loader;
pub mod mnist;

pub use dataset::{Batch, Dataset, TensorDataset, MNIST_MEAN, MNIST_STD};
pub use error::{Error, Result};
pub use loader::{epoch_permutation, Batches, DataLoader};
