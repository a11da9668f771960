//! The [`Dataset`] trait, [`Batch`] and [`Example`], the in-memory [`TensorDataset`], and MNIST as a
//! dataset.
//!
//! A dataset hands out whole batches (`get_batch(&[indices])`) rather than single examples, so an
//! in-memory dataset answers with one gather per tensor instead of stacking many small tensors.

use std::sync::Arc;

use kiln_tensor::{DType, Tensor};

use crate::mnist::Mnist;
use crate::{Error, Result};

/// The mean pixel value of the MNIST training images (pixels scaled to `[0, 1]`).
pub const MNIST_MEAN: f32 = 0.1307;
/// The standard deviation of the MNIST training pixels (pixels scaled to `[0, 1]`).
pub const MNIST_STD: f32 = 0.3081;

/// One batch of examples: model inputs and, for labelled data, the targets.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The inputs, batch first (`[B, ...]`).
    pub inputs: Tensor,
    /// The targets, batch first (`[B, ...]`), when the dataset is labelled.
    pub targets: Option<Tensor>,
}

/// A fingerprint of a dataset's content: its length and a 64-bit FNV-1a hash of the inputs and
/// targets of up to 64 evenly spaced examples (first and last included). Two datasets with the
/// same length but other examples (MNIST and Fashion-MNIST) differ; reading it costs 64 examples.
pub fn content_fingerprint(ds: &dyn Dataset) -> Result<String> {
    let n = ds.len();
    let picks: Vec<usize> = match n {
        0 => Vec::new(),
        1..=64 => (0..n).collect(),
        _ => (0..64).map(|i| i * (n - 1) / 63).collect(),
    };
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut feed = |t: &Tensor| -> Result<()> {
        for v in t.to_dtype(DType::F64)?.flatten_all()?.to_vec::<f64>()? {
            for b in v.to_bits().to_le_bytes() {
                hash = (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        Ok(())
    };
    if !picks.is_empty() {
        let batch = ds.get_batch(&picks)?;
        feed(&batch.inputs)?;
        if let Some(t) = &batch.targets {
            feed(t)?;
        }
    }
    Ok(format!("{n} examples, content {hash:016x}"))
}

impl Batch {
    /// The number of examples (the first dimension of the inputs; 0 for a scalar input).
    pub fn len(&self) -> usize {
        self.inputs.dims().first().copied().unwrap_or(0)
    }

    /// Whether the batch holds no example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One example: a model input and, for labelled data, its target. The element type of the
/// vision sources and of pipelines that end in [`collate::stack_examples`](crate::pipeline::collate::stack_examples),
/// which turns a `Vec<Example>` into a [`Batch`].
#[derive(Clone, Debug)]
pub struct Example {
    /// The input (an image `[C, H, W]`, a feature vector, a token sequence, ...).
    pub input: Tensor,
    /// The target (a scalar class index, a vector, ...), when the data is labelled.
    pub target: Option<Tensor>,
}

impl Example {
    /// A labelled example.
    pub fn new(input: Tensor, target: Tensor) -> Example {
        Example {
            input,
            target: Some(target),
        }
    }

    /// The example with its input replaced by `f(input)` (which may fail with a kiln-data or a
    /// kiln-tensor error).
    pub fn map_input<E: Into<Error>>(
        self,
        f: impl FnOnce(Tensor) -> std::result::Result<Tensor, E>,
    ) -> Result<Example> {
        Ok(Example {
            input: f(self.input).map_err(Into::into)?,
            target: self.target,
        })
    }
}

/// A collection of examples addressed by index `0..len()`.
///
/// Implementations must be `Send + Sync`: a [`DataLoader`](crate::DataLoader) assembles the next
/// batches on a background thread.
pub trait Dataset: Send + Sync {
    /// The number of examples.
    fn len(&self) -> usize;

    /// Whether the dataset holds no example.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices`, in that order, as one batch. An index `>= len()` is an error.
    fn get_batch(&self, indices: &[usize]) -> Result<Batch>;
}

impl<D: Dataset + ?Sized> Dataset for &D {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get_batch(&self, indices: &[usize]) -> Result<Batch> {
        (**self).get_batch(indices)
    }
}

impl<D: Dataset + ?Sized> Dataset for Box<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get_batch(&self, indices: &[usize]) -> Result<Batch> {
        (**self).get_batch(indices)
    }
}

impl<D: Dataset + ?Sized> Dataset for Arc<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get_batch(&self, indices: &[usize]) -> Result<Batch> {
        (**self).get_batch(indices)
    }
}

/// An in-memory dataset: example `i` is row `i` (along the first dimension) of `inputs` and of
/// `targets`. Cloning is cheap (tensors are shared handles).
#[derive(Clone, Debug)]
pub struct TensorDataset {
    inputs: Tensor,
    targets: Option<Tensor>,
}

fn invalid(op: &'static str, reason: impl Into<String>) -> Error {
    Error::Tensor(kiln_tensor::Error::invalid(op, reason))
}

impl TensorDataset {
    /// A labelled dataset. `inputs` and `targets` must have at least one dimension and the same
    /// first dimension (the number of examples).
    pub fn new(inputs: Tensor, targets: Tensor) -> Result<TensorDataset> {
        const OP: &str = "TensorDataset::new";
        if inputs.rank() == 0 || targets.rank() == 0 {
            return Err(invalid(
                OP,
                format!(
                    "inputs and targets need a first (example) dimension; got shapes {:?} and {:?}",
                    inputs.dims(),
                    targets.dims()
                ),
            ));
        }
        if inputs.dims()[0] != targets.dims()[0] {
            return Err(invalid(
                OP,
                format!(
                    "inputs hold {} examples (shape {:?}) but targets hold {} (shape {:?})",
                    inputs.dims()[0],
                    inputs.dims(),
                    targets.dims()[0],
                    targets.dims()
                ),
            ));
        }
        Ok(TensorDataset {
            inputs,
            targets: Some(targets),
        })
    }

    /// A dataset without targets (for prediction). `inputs` needs a first (example) dimension.
    pub fn unlabeled(inputs: Tensor) -> Result<TensorDataset> {
        if inputs.rank() == 0 {
            return Err(invalid(
                "TensorDataset::unlabeled",
                "inputs need a first (example) dimension; got a scalar",
            ));
        }
        Ok(TensorDataset {
            inputs,
            targets: None,
        })
    }

    /// The number of examples (also [`Dataset::len`] and [`Source::len`](crate::Source::len);
    /// inherent so that having both traits in scope is not ambiguous).
    pub fn len(&self) -> usize {
        self.inputs.dims()[0]
    }

    /// Whether there is no example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All inputs.
    pub fn inputs(&self) -> &Tensor {
        &self.inputs
    }

    /// All targets, if labelled.
    pub fn targets(&self) -> Option<&Tensor> {
        self.targets.as_ref()
    }

    /// The examples `start..start + len` as a new dataset (views, no copy).
    pub fn slice(&self, start: usize, len: usize) -> Result<TensorDataset> {
        Ok(TensorDataset {
            inputs: self.inputs.narrow(0, start, len)?,
            targets: self
                .targets
                .as_ref()
                .map(|t| t.narrow(0, start, len))
                .transpose()?,
        })
    }
}

impl Dataset for TensorDataset {
    fn len(&self) -> usize {
        self.inputs.dims()[0]
    }

    fn get_batch(&self, indices: &[usize]) -> Result<Batch> {
        let n = self.len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return Err(invalid(
                "TensorDataset::get_batch",
                format!("index {bad} out of range for a dataset of {n} examples"),
            ));
        }
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_vec(idx, [indices.len()])?;
        Ok(Batch {
            inputs: self.inputs.index_select(0, &idx)?,
            targets: self
                .targets
                .as_ref()
                .map(|t| t.index_select(0, &idx))
                .transpose()?,
        })
    }
}

impl Mnist {
    /// The split as a [`TensorDataset`]: `f32` images `[N, 1, rows, columns]` holding pixels / 255,
    /// then, with `normalize`, standardised with the MNIST training mean and standard deviation
    /// (`(x - 0.1307) / 0.3081`, as torchvision's usual transform), and the `i64` labels `[N]`.
    pub fn to_dataset(&self, normalize: bool) -> Result<TensorDataset> {
        let dims = self.images.dims();
        if dims.len() != 3 {
            return Err(invalid(
                "Mnist::to_dataset",
                format!("expected images [N, rows, columns], found shape {dims:?}"),
            ));
        }
        let (n, r, c) = (dims[0], dims[1], dims[2]);
        let images = self.images.to_dtype(DType::U8)?;
        let pixels = images.contiguous_slice::<u8>()?;
        let (shift, scale) = if normalize {
            (MNIST_MEAN, 1.0 / MNIST_STD)
        } else {
            (0.0, 1.0)
        };
        let values: Vec<f32> = pixels
            .iter()
            .map(|&p| (p as f32 / 255.0 - shift) * scale)
            .collect();
        let inputs = Tensor::from_vec(values, [n, 1, r, c])?;
        TensorDataset::new(inputs, self.labels.to_dtype(DType::I64)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same content, same fingerprint; one changed value among the sampled examples, or another
    /// length, a different one.
    #[test]
    fn content_fingerprints_tell_datasets_apart() {
        let make = |n: usize, bump: usize| {
            let x: Vec<f32> = (0..n * 3)
                .map(|i| if i == bump { -1.0 } else { (i % 7) as f32 })
                .collect();
            let y: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
            TensorDataset::new(
                Tensor::from_vec(x, [n, 3]).unwrap(),
                Tensor::from_vec(y, [n]).unwrap(),
            )
            .unwrap()
        };
        let fp = |d: &TensorDataset| content_fingerprint(d).unwrap();
        let base = fp(&make(500, usize::MAX));
        assert_eq!(base, fp(&make(500, usize::MAX)));
        assert_ne!(base, fp(&make(500, 0)));
        assert_ne!(base, fp(&make(500, 3 * 499 + 1)));
        assert_ne!(base, fp(&make(501, usize::MAX)));
    }

    fn toy(n: usize) -> TensorDataset {
        let x: Vec<f32> = (0..n * 3).map(|i| i as f32).collect();
        let y: Vec<i64> = (0..n as i64).collect();
        TensorDataset::new(
            Tensor::from_vec(x, [n, 3]).unwrap(),
            Tensor::from_vec(y, [n]).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn get_batch_gathers_rows_in_order() {
        let d = toy(5);
        assert_eq!(d.len(), 5);
        let b = d.get_batch(&[4, 0, 2]).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.inputs.dims(), &[3, 3]);
        assert_eq!(
            b.inputs.to_vec::<f32>().unwrap(),
            vec![12., 13., 14., 0., 1., 2., 6., 7., 8.]
        );
        assert_eq!(b.targets.unwrap().to_vec::<i64>().unwrap(), vec![4, 0, 2]);
        let e = d.get_batch(&[1, 5]).unwrap_err().to_string();
        assert!(e.contains("index 5") && e.contains("5 examples"), "{e}");
        // Through a reference and an Arc.
        let arc: Arc<dyn Dataset> = Arc::new(d.clone());
        assert_eq!(arc.get_batch(&[1]).unwrap().len(), 1);
        let by_ref: &dyn Dataset = &&d;
        assert_eq!(by_ref.len(), 5);
    }

    #[test]
    fn mismatched_counts_are_an_error() {
        let x = Tensor::zeros([4, 2], DType::F32, kiln_tensor::Device::Cpu).unwrap();
        let y = Tensor::zeros([3], DType::I64, kiln_tensor::Device::Cpu).unwrap();
        let e = TensorDataset::new(x, y).unwrap_err().to_string();
        assert!(e.contains("4 examples") && e.contains("targets hold 3"), "{e}");
        let s = Tensor::scalar(1.0f32);
        assert!(TensorDataset::unlabeled(s).is_err());
    }

    #[test]
    fn unlabeled_and_slices() {
        let d = toy(6).slice(2, 3).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(
            d.get_batch(&[0])
                .unwrap()
                .targets
                .unwrap()
                .to_vec::<i64>()
                .unwrap(),
            vec![2]
        );
        let u = TensorDataset::unlabeled(d.inputs().clone()).unwrap();
        assert!(u.get_batch(&[2, 1]).unwrap().targets.is_none());
    }

    #[test]
    fn mnist_to_dataset_scales_and_normalises() {
        let m = Mnist {
            images: Tensor::from_vec(vec![0u8, 255, 51, 102, 0, 0, 0, 0], [2, 2, 2]).unwrap(),
            labels: Tensor::from_vec(vec![3i64, 7], [2]).unwrap(),
        };
        let d = m.to_dataset(false).unwrap();
        assert_eq!(d.inputs().dims(), &[2, 1, 2, 2]);
        assert_eq!(d.inputs().dtype(), DType::F32);
        assert_eq!(d.inputs().to_vec::<f32>().unwrap()[..4], [0.0, 1.0, 0.2, 0.4]);
        assert_eq!(d.targets().unwrap().to_vec::<i64>().unwrap(), vec![3, 7]);
        let n = m.to_dataset(true).unwrap().inputs().to_vec::<f32>().unwrap();
        assert!((n[0] - (-0.1307 / 0.3081)).abs() < 1e-6);
        assert!((n[1] - (1.0 - 0.1307) / 0.3081).abs() < 1e-6);
    }
}
