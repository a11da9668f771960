//! # kiln-resnet
//!
//! Residual networks (He et al. 2015) registered in kiln's model zoo:
//! - `resnet18`, `resnet34` (basic blocks) and `resnet50`, `resnet101` (bottlenecks, stride on the 3×3
//!   convolution as torchvision's v1.5) with torchvision's layout and parameter names, so a
//!   torchvision `state_dict` saved as safetensors loads unchanged (strictly: every weight and every
//!   batch-norm buffer, `num_batches_tracked` included);
//! - `resnet20`, `resnet32`, `resnet56`: the CIFAR ResNets (3×3 stem, three stages of 16/32/64
//!   channels, `6n + 2` layers). Shortcuts that change shape are 1×1 projections (option B of the
//!   paper), named `downsample.0/1` like torchvision's.
//!
//! Input channels, image size and class count are configurable (`in_channels`, `image_size`,
//! `num_classes`), so 1-channel 28×28 images work. Every variant is a [`ResNet`] of a [`Block`] type
//! wrapped as a zoo [`ImageClassifier`](kiln_zoo::vision::ImageClassifier).
//!
//! ```no_run
//! use kiln_nn::Scope;
//! use kiln_tensor::{DType, Device};
//! let entry = kiln_zoo::find("resnet20")?;
//! let cfg = kiln_zoo::merge_config(entry, Some(&serde_json::json!({"in_channels": 1, "image_size": 28})))?;
//! let model = (entry.build)(&cfg, Scope::init(0, DType::F32, Device::Cpu))?;
//! println!("{} parameters", model.num_parameters());
//! # Ok::<(), kiln_zoo::Error>(())
//! ```

mod block;
mod net;
mod variants;

pub use block::{BasicBlock, Block, Bottleneck};
pub use net::{Architecture, ResNet, Stem};
