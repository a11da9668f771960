//! Parameter initialisers with PyTorch's definitions (`torch.nn.init`).

use kiln_tensor::{DType, Device, Shape, Tensor, TensorRng};

use crate::{Error, Result};

/// How a parameter is filled when it is not loaded from weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// A constant.
    Const(f64),
    /// Uniform in `[lo, hi)`.
    Uniform {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// Normal with mean and standard deviation.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// `kaiming_uniform_(a, mode="fan_in", nonlinearity="leaky_relu")`: bound `gain * sqrt(3 / fan_in)`
    /// with `gain = sqrt(2 / (1 + a²))`. PyTorch's Linear/Conv weights use `a = sqrt(5)`.
    KaimingUniform {
        /// The negative slope `a`.
        a: f64,
    },
    /// `kaiming_normal_(mode="fan_in", nonlinearity="relu")`: std `sqrt(2 / fan_in)`.
    KaimingNormal,
    /// `xavier_uniform_`: bound `gain * sqrt(6 / (fan_in + fan_out))`.
    XavierUniform {
        /// Gain.
        gain: f64,
    },
    /// `xavier_normal_`: std `gain * sqrt(2 / (fan_in + fan_out))`.
    XavierNormal {
        /// Gain.
        gain: f64,
    },
    /// `orthogonal_` (a QR of a normal matrix, sign-corrected), times `gain`.
    Orthogonal {
        /// Gain.
        gain: f64,
    },
}

/// `(fan_in, fan_out)` as PyTorch computes them: dims 1 and 0 times the receptive field size.
pub fn fans(shape: &Shape) -> (usize, usize) {
    let d = shape.dims();
    match d.len() {
        0 => (1, 1),
        1 => (d[0], d[0]),
        _ => {
            let rf: usize = d[2..].iter().product();
            (d[1] * rf, d[0] * rf)
        }
    }
}

impl Init {
    /// A tensor of `shape` filled by this initialiser from `rng`.
    pub fn make(self, shape: &Shape, dtype: DType, device: Device, rng: &mut TensorRng) -> Result<Tensor> {
        let (fan_in, fan_out) = fans(shape);
        let t = match self {
            Init::Zeros => Tensor::zeros(shape, dtype, device)?,
            Init::Ones => Tensor::ones(shape, dtype, device)?,
            Init::Const(v) => Tensor::full(v, shape, dtype, device)?,
            Init::Uniform { lo, hi } => Tensor::rand_uniform(shape, lo, hi, dtype, device, rng)?,
            Init::Normal { mean, std } => Tensor::randn(shape, mean, std, dtype, device, rng)?,
            Init::KaimingUniform { a } => {
                let bound = (2.0 / (1.0 + a * a)).sqrt() * (3.0 / fan_in.max(1) as f64).sqrt();
                Tensor::rand_uniform(shape, -bound, bound, dtype, device, rng)?
            }
            Init::KaimingNormal => Tensor::randn(
                shape,
                0.0,
                (2.0 / fan_in.max(1) as f64).sqrt(),
                dtype,
                device,
                rng,
            )?,
            Init::XavierUniform { gain } => {
                let bound = gain * (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
                Tensor::rand_uniform(shape, -bound, bound, dtype, device, rng)?
            }
            Init::XavierNormal { gain } => {
                let std = gain * (2.0 / (fan_in + fan_out).max(1) as f64).sqrt();
                Tensor::randn(shape, 0.0, std, dtype, device, rng)?
            }
            Init::Orthogonal { gain } => orthogonal(shape, gain, rng)?.to_dtype(dtype)?,
        };
        Ok(t)
    }
}

/// Orthogonal rows/columns by modified Gram-Schmidt on a normal matrix (flattened to 2-D as PyTorch).
fn orthogonal(shape: &Shape, gain: f64, rng: &mut TensorRng) -> Result<Tensor> {
    let d = shape.dims();
    if d.len() < 2 {
        return Err(Error::invalid(
            "orthogonal init",
            format!("needs at least 2 dimensions, got {d:?}"),
        ));
    }
    let rows = d[0];
    let cols: usize = d[1..].iter().product();
    // Orthonormalise the longer side's vectors: work on the transpose when rows > cols.
    let (n, m) = if rows < cols { (rows, cols) } else { (cols, rows) };
    let mut q: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..m).map(|_| rng.next_normal()).collect())
        .collect();
    for i in 0..n {
        let (done, rest) = q.split_at_mut(i);
        let qi = &mut rest[0];
        for qj in done.iter() {
            let dot: f64 = qi.iter().zip(qj).map(|(a, b)| a * b).sum();
            qi.iter_mut().zip(qj).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = q[i].iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        q[i].iter_mut().for_each(|x| *x *= gain / norm);
    }
    let flat: Vec<f64> = q.into_iter().flatten().collect();
    let t = Tensor::from_vec(flat, [n, m])?;
    let t = if rows < cols { t } else { t.t()?.contiguous()? };
    Ok(t.reshape(shape.clone())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaiming_uniform_bound_matches_pytorch_linear() {
        // nn.Linear(784, 256): bound = 1/sqrt(784) for a = sqrt(5)
        let mut r = TensorRng::new(0);
        let t = Init::KaimingUniform { a: 5f64.sqrt() }
            .make(&Shape::from([256, 784]), DType::F64, Device::Cpu, &mut r)
            .unwrap();
        let v = t.to_vec::<f64>().unwrap();
        let bound = 1.0 / 784f64.sqrt();
        assert!(v.iter().all(|x| x.abs() <= bound));
        assert!(v.iter().any(|x| x.abs() > 0.95 * bound));
    }

    #[test]
    fn orthogonal_rows_are_orthonormal() {
        let mut r = TensorRng::new(1);
        let t = Init::Orthogonal { gain: 1.0 }
            .make(&Shape::from([3, 5]), DType::F64, Device::Cpu, &mut r)
            .unwrap();
        let p = t.matmul(&t.t().unwrap()).unwrap().to_vec::<f64>().unwrap();
        for i in 0..3 {
            for j in 0..3 {
                assert!((p[i * 3 + j] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        let tall = Init::Orthogonal { gain: 1.0 }
            .make(&Shape::from([5, 3]), DType::F64, Device::Cpu, &mut r)
            .unwrap();
        let p = tall.t().unwrap().matmul(&tall).unwrap().to_vec::<f64>().unwrap();
        assert!((p[0] - 1.0).abs() < 1e-12 && p[1].abs() < 1e-12);
    }

    #[test]
    fn fans_follow_pytorch() {
        assert_eq!(fans(&Shape::from([6, 1, 5, 5])), (25, 150));
        assert_eq!(fans(&Shape::from([10, 20])), (20, 10));
    }
}
