//! Vision datasets and transforms: [`Cifar`] (CIFAR-10/100 binary files), [`ImageFolder`]
//! (PNG/JPEG files in class folders) and seeded [`transforms`]. MNIST and Fashion-MNIST live in
//! [`crate::mnist`]. Every dataset is a [`Source`](crate::Source) of [`Example`](crate::Example)s
//! (a `[C, H, W]` image and an `i64` label) for a [`Pipeline`](crate::Pipeline).
//!
//! ```no_run
//! use kiln_data::pipeline::{collate, Pipeline};
//! use kiln_data::vision::transforms::{Compose, Normalize, RandomCrop, RandomHorizontalFlip, ToTensor, Transform};
//! use kiln_data::vision::{Cifar, CifarKind, CIFAR10_MEAN, CIFAR10_STD};
//! use kiln_data::mnist::Split;
//! let train = Cifar::load("cifar-10-batches-bin", CifarKind::Cifar10, Split::Train)?;
//! let augment = Compose::new()
//!     .then(RandomCrop::new((32, 32), 4))
//!     .then(RandomHorizontalFlip::new(0.5)?)
//!     .then(ToTensor::chw())
//!     .then(Normalize::new(CIFAR10_MEAN.to_vec(), CIFAR10_STD.to_vec())?);
//! let batches = Pipeline::from_source(train)
//!     .shuffle(50_000, 0)?
//!     .map_seeded(4, 1, move |ex, rng| augment.apply_example(ex, rng))?
//!     .batch(128, true, collate::stack_examples)?
//!     .prefetch(4)?;
//! for batch in batches.iter_epoch(0)? {
//!     let batch = batch?; // inputs f32 [128, 3, 32, 32], targets i64 [128]
//! }
//! # Ok::<(), kiln_data::Error>(())
//! ```

pub mod cifar;
pub mod image_folder;
pub mod transforms;

pub use cifar::{Cifar, CifarKind, CIFAR100_MEAN, CIFAR100_STD, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD};
pub use image_folder::{decode_image, BadFile, ColorMode, ImageFolder, ImageFolderOptions};
pub use transforms::Transform;
