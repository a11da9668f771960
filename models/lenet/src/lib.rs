//! # kiln-lenet
//!
//! Two small image classifiers registered in the zoo:
//! - `lenet5`: LeNet-5 (LeCun et al. 1998) as it is usually trained today — ReLU and max pooling,
//!   `conv1` 6@5×5 (padding 2 so 28×28 inputs keep the classic 32×32 geometry), `conv2` 16@5×5,
//!   `fc1` 120, `fc2` 84, `fc3` classes.
//! - `mnist-cnn`: the Keras example `Conv2D 32 3×3 → MaxPool → Conv2D 64 → MaxPool → Conv2D 64 →
//!   Flatten → Dense 64 → Dense 10` (`conv1..3`, `fc1`, `fc2`).

mod cnn;
mod lenet5;

pub use cnn::MnistCnn;
pub use lenet5::LeNet5;

use kiln_zoo::vision::ImageClassifierConfig;
use kiln_zoo::{ModelEntry, Task};

inventory::submit! {
    ModelEntry {
        name: "lenet5",
        family: "lenet",
        task: Task::ImageClassification,
        description: "LeNet-5 (ReLU, max pooling) for 28x28 grey images, 61.7k parameters",
        default_config: ImageClassifierConfig::default_json,
        build: lenet5::build,
    }
}

inventory::submit! {
    ModelEntry {
        name: "mnist-cnn",
        family: "lenet",
        task: Task::ImageClassification,
        description: "The Keras MNIST CNN: 3 conv layers (32/64/64) + dense 64, 93.3k parameters",
        default_config: ImageClassifierConfig::default_json,
        build: cnn::build,
    }
}

use kiln_zoo::inventory;
