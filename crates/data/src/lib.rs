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
//!
//! ## Text
//!
//! [`text`] holds tokenizers and text datasets: [`text::Tokenizer`] loads any Hugging Face
//! `tokenizer.json` (GPT-2, BERT WordPiece, SmolLM2; batch encoding with truncation and padding)
//! and trains BPE / WordPiece ones; [`text::CharTokenizer`] is character-level; both implement
//! [`text::TextTokenizer`]. Token shards ([`text::shard`], memory-mapped) feed the language-model
//! datasets [`text::SequentialBlocks`] and [`text::RandomWindows`]; [`text::mlm`] and
//! [`text::nsp`] collate BERT pre-training batches; [`text::instruct`] reads instruction JSONL
//! with labels masked on the prompt, and [`text::chat`] renders Jinja chat templates.
//! `cargo xtask prepare-data` writes the shards.
//!
//! ```no_run
//! use kiln_data::text::{SequentialBlocks, TokenStream, Tokenizer};
//! use kiln_data::Dataset;
//! let gpt2 = Tokenizer::from_file("data/tokenizers/gpt2/tokenizer.json")?;
//! assert_eq!(gpt2.encode("Hello world", false)?, vec![15496, 995]);
//! // After `cargo xtask prepare-data --corpus data/text/tinyshakespeare.txt --tokenizer gpt2 --out prep`:
//! let train = SequentialBlocks::new(TokenStream::open("prep/train.bin")?, 256)?;
//! let batch = train.get_batch(&[0, 1])?; // inputs and next-token targets, i64 [2, 256]
//! # let _ = batch;
//! # Ok::<(), kiln_data::Error>(())
//! ```
//!
//! ## Pipelines and vision
//!
//! [`pipeline`] is an element-level input pipeline in the style of `tf.data`: a [`Pipeline`]
//! starts at a random-access [`Source`] and chains `map` / `par_map` / `map_seeded` (worker
//! threads, order-preserving), `filter`, `shuffle` (buffered, reshuffled each epoch), `batch` with
//! a [`pipeline::collate`] function (stacking, or padding variable-length sequences with lengths
//! and a mask), `prefetch`, `cache` (memory or file), `repeat`, `take` / `skip`, `shard` and
//! `interleave`. Every random draw derives from `(seed, epoch, element index)`, so the output
//! does not depend on the number of workers, and a position ([`PipelineState`], serde) restores
//! exactly, skipping cheaply instead of replaying the work ([`DataLoader`] positions use the same
//! type, and kiln-train's checkpoints store it). [`vision`] reads CIFAR-10/100 binary files and
//! image folders (PNG/JPEG) as sources of [`Example`]s, with seeded transforms (to-tensor,
//! normalize, random crop, random flip, resize); MNIST and Fashion-MNIST are sources too.
//!
//! ```no_run
//! use kiln_data::mnist::{Mnist, Split};
//! use kiln_data::pipeline::{collate, Pipeline};
//! use kiln_data::vision::transforms::{Compose, Normalize, ToTensor, Transform};
//! let normalize = Compose::new()
//!     .then(ToTensor::chw())
//!     .then(Normalize::new(vec![kiln_data::MNIST_MEAN], vec![kiln_data::MNIST_STD])?);
//! let train = Pipeline::from_source(Mnist::load("data/mnist", Split::Train)?)
//!     .shuffle(60_000, 0)?
//!     .map_seeded(2, 1, move |ex, rng| normalize.apply_example(ex, rng))?
//!     .batch(64, true, collate::stack_examples)?
//!     .prefetch(8)?;
//! let mut batches = train.iter_epoch(0)?;
//! let first = batches.next().unwrap()?; // inputs f32 [64, 1, 28, 28], targets i64 [64]
//! let position = batches.state(); // serialisable; `train.iter_from(&position)` continues here
//! # let _ = (first, position);
//! # Ok::<(), kiln_data::Error>(())
//! ```

mod dataset;
mod error;
pub mod json;
pub mod loader;
pub mod mnist;
pub mod pipeline;
mod subset;
pub mod text;
pub mod vision;

pub use dataset::Example;
pub use dataset::{content_fingerprint, Batch, Dataset, TensorDataset, MNIST_MEAN, MNIST_STD};
pub use error::{Error, Result};
pub use loader::{epoch_permutation, Batches, DataLoader};
pub use pipeline::{Pipeline, PipelineIter, PipelineState, Source};
pub use subset::{random_split, Subset};
