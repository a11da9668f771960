//! [`Subset`] and [`random_split`]: part of a dataset by index, and a seeded hold-out split (as
//! PyTorch's `torch.utils.data.Subset` and `random_split`).

use std::sync::Arc;

use crate::dataset::{Batch, Dataset};
use crate::error::{Error, Result};

fn invalid(op: &'static str, reason: String) -> Error {
    Error::Tensor(kiln_tensor::Error::invalid(op, reason))
}
use crate::loader::epoch_permutation;

/// The examples `indices` of a dataset, in that order.
#[derive(Clone)]
pub struct Subset {
    data: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// Examples `indices` of `data`; an index `>= data.len()` is an error.
    pub fn new(data: Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Subset> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= data.len()) {
            return Err(invalid(
                "Subset",
                format!(
                    "index {bad} is out of range for a dataset of {} examples",
                    data.len()
                ),
            ));
        }
        Ok(Subset { data, indices })
    }

    /// The indices into the underlying dataset.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn get_batch(&self, indices: &[usize]) -> Result<Batch> {
        let mapped = indices
            .iter()
            .map(|&i| {
                self.indices.get(i).copied().ok_or_else(|| {
                    invalid(
                        "Subset",
                        format!(
                            "index {i} is out of range for a subset of {} examples",
                            self.indices.len()
                        ),
                    )
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        self.data.get_batch(&mapped)
    }
}

/// Splits `data` into `(rest, held_out)` with `round(fraction · len)` examples held out (at least
/// one, and one left), chosen by a permutation seeded with `seed`; each part keeps the dataset's
/// order. `fraction` must lie strictly between 0 and 1.
pub fn random_split(data: Arc<dyn Dataset>, fraction: f64, seed: u64) -> Result<(Subset, Subset)> {
    let n = data.len();
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(invalid(
            "random_split",
            format!("the held-out fraction must lie strictly between 0 and 1, got {fraction}"),
        ));
    }
    if n < 2 {
        return Err(invalid(
            "random_split",
            format!("a dataset of {n} examples cannot be split"),
        ));
    }
    let held = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let order = epoch_permutation(n, seed, u64::MAX);
    let mut out: Vec<usize> = order[..held].to_vec();
    let mut rest: Vec<usize> = order[held..].to_vec();
    out.sort_unstable();
    rest.sort_unstable();
    Ok((Subset::new(data.clone(), rest)?, Subset::new(data, out)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TensorDataset;
    use kiln_tensor::Tensor;

    fn toy(n: usize) -> Arc<dyn Dataset> {
        let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let y: Vec<i64> = (0..n as i64).collect();
        Arc::new(
            TensorDataset::new(
                Tensor::from_vec(x, [n, 1]).unwrap(),
                Tensor::from_vec(y, [n]).unwrap(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn a_split_partitions_the_dataset_reproducibly() {
        let (rest, held) = random_split(toy(50), 0.1, 7).unwrap();
        assert_eq!((rest.len(), held.len()), (45, 5));
        let mut all: Vec<usize> = rest.indices().iter().chain(held.indices()).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        assert_eq!(random_split(toy(50), 0.1, 7).unwrap().1.indices(), held.indices());
        assert_ne!(random_split(toy(50), 0.1, 8).unwrap().1.indices(), held.indices());
        // The subset reads the examples it names.
        let b = held.get_batch(&[0, 4]).unwrap();
        let want: Vec<i64> = [0, 4].iter().map(|&i| held.indices()[i] as i64).collect();
        assert_eq!(b.targets.unwrap().to_vec::<i64>().unwrap(), want);
        assert!(held.get_batch(&[5]).is_err());
        assert!(random_split(toy(50), 1.0, 7).is_err());
        assert!(random_split(toy(1), 0.5, 7).is_err());
    }
}
