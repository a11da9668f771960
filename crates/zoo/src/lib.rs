//! # kiln-zoo
//!
//! The contract between kiln's models and everything that uses them: the [`Model`] trait, the
//! [`Task`] kinds, and a registry of [`ModelEntry`]s that model crates submit with `inventory`.
//! Training and serving know models only through this crate.
//!
//! A plugin registers itself at its crate root:
//!
//! ```text
//! inventory::submit! {
//!     kiln_zoo::ModelEntry { name: "lenet5", family: "lenet", task: kiln_zoo::Task::ImageClassification,
//!         description: "LeNet-5", default_config, build }
//! }
//! ```
//!
//! The linker drops plugins in crates nothing references, so the facade crate `kiln` references every
//! model crate and a test asserts each one is in the registry.

mod error;
pub mod generate;
mod model;
mod registry;
pub mod vision;

pub use error::{Error, Result};
pub use generate::{CausalLm, DecodeState, SamplingParams};
pub use inventory;
pub use model::{Batch, Model, Output, QuantReport, Tally, Task};
pub use registry::{entries, find, merge_config, parse_config, ModelEntry};
