//! # kiln
//!
//! The facade of the kiln deep-learning framework: one dependency that re-exports every kiln
//! crate under a short name and links every model plugin into the registry. Depend on the single
//! crates (`kiln-tensor`, `kiln-nn`, ...) when you need only part of the stack.
//!
//! ```
//! use kiln::tensor::{Tensor, DType, Device};
//! let x = Tensor::ones([2, 2], DType::F32, Device::Cpu)?;
//! assert_eq!(x.sum_all()?.to_scalar::<f32>()?, 4.0);
//! let names: Vec<&str> = kiln::models().unwrap().iter().map(|e| e.name).collect();
//! assert!(names.contains(&"lenet5"));
//! # Ok::<(), kiln::tensor::Error>(())
//! ```

pub use kiln_autograd as autograd;
pub use kiln_data as data;
pub use kiln_gguf as gguf;
pub use kiln_nn as nn;
pub use kiln_optim as optim;
pub use kiln_serve as serve;
pub use kiln_tensor as tensor;
pub use kiln_train as train;
pub use kiln_zoo as zoo;

/// The model plugin crates.
pub mod model_crates {
    pub use kiln_bert as bert;
    pub use kiln_gpt as gpt;
    pub use kiln_lenet as lenet;
    pub use kiln_llama as llama;
    pub use kiln_lstm as lstm;
    pub use kiln_resnet as resnet;
}

/// The kiln crates this facade re-exports, for `cargo xtask info`.
pub const CRATES: &[&str] = &[
    "kiln-tensor",
    "kiln-autograd",
    "kiln-nn",
    "kiln-optim",
    "kiln-data",
    "kiln-zoo",
    "kiln-gguf",
    "kiln-serve",
    "kiln-bert",
    "kiln-gpt",
    "kiln-llama",
    "kiln-lenet",
    "kiln-lstm",
    "kiln-resnet",
];

/// Reference one item of every model crate so the linker keeps their `inventory` registrations
/// (a plugin in a crate nothing references is silently dropped).
fn link_model_crates() {
    std::hint::black_box(kiln_bert::BertModel::new as fn(_, _, _) -> _);
    std::hint::black_box(kiln_gpt::Gpt::new as fn(_, _, _) -> _);
    std::hint::black_box(kiln_lenet::LeNet5::new as fn(_, _) -> _);
    std::hint::black_box(kiln_llama::Llama::new as fn(_, _, _) -> _);
    std::hint::black_box(kiln_lstm::LstmLm::new as fn(_, _) -> _);
    std::hint::black_box(kiln_resnet::ResNet::<kiln_resnet::BasicBlock>::new as fn(_, _, _, _) -> _);
}

/// Every registered model, sorted by name (an error if two plugins share a name).
pub fn models() -> zoo::Result<Vec<&'static zoo::ModelEntry>> {
    link_model_crates();
    zoo::entries()
}

/// The registered model called `name`; an unknown name is an error that lists the known ones.
pub fn find_model(name: &str) -> zoo::Result<&'static zoo::ModelEntry> {
    link_model_crates();
    zoo::find(name)
}
