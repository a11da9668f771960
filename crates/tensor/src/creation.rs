//! Constructors: constant fills, ranges, identity, and conversion from/to `ndarray`.

use crate::{DType, Device, Error, Result, Shape, Tensor, WithDType};

impl Tensor {
    /// A tensor filled with `value` (converted to `dtype`).
    pub fn full(value: f64, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        device.ensure_available()?;
        let shape = shape.into();
        let n = shape.elem_count();
        crate::with_dtype!(dtype, T => Tensor::from_vec(vec![T::from_f64(value); n], shape))?
            .to_device(device)
    }
    /// All zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Self::full(0.0, shape, dtype, device)
    }
    /// All ones.
    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Self::full(1.0, shape, dtype, device)
    }
    /// Zeros with this tensor's shape, dtype and device.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Self::zeros(self.shape(), self.dtype(), self.device())
    }
    /// Ones with this tensor's shape, dtype and device.
    pub fn ones_like(&self) -> Result<Tensor> {
        Self::ones(self.shape(), self.dtype(), self.device())
    }
    /// `value` with this tensor's shape, dtype and device.
    pub fn full_like(&self, value: f64) -> Result<Tensor> {
        Self::full(value, self.shape(), self.dtype(), self.device())
    }

    /// Values `start, start+step, ...` strictly below `end` (above, for a negative step).
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType, device: Device) -> Result<Tensor> {
        device.ensure_available()?;
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::invalid(
                "arange",
                format!("start {start}, end {end} and step {step} must be finite and step non-zero"),
            ));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        crate::with_dtype!(dtype, T => {
            let v: Vec<T> = (0..n).map(|i| T::from_f64(start + i as f64 * step)).collect();
            Tensor::from_vec(v, [n])
        })?
        .to_device(device)
    }

    /// `steps` evenly spaced values from `start` to `end` inclusive.
    pub fn linspace(start: f64, end: f64, steps: usize, dtype: DType, device: Device) -> Result<Tensor> {
        device.ensure_available()?;
        let v: Vec<f64> = match steps {
            0 => vec![],
            1 => vec![start],
            _ => {
                let step = (end - start) / (steps - 1) as f64;
                (0..steps).map(|i| start + i as f64 * step).collect()
            }
        };
        Tensor::from_vec(v, [steps])?.to_dtype(dtype)?.to_device(device)
    }

    /// The `n x n` identity matrix.
    pub fn eye(n: usize, dtype: DType, device: Device) -> Result<Tensor> {
        device.ensure_available()?;
        crate::with_dtype!(dtype, T => {
            let mut v = vec![T::ZERO; n * n];
            for i in 0..n {
                v[i * n + i] = T::ONE;
            }
            Tensor::from_vec(v, [n, n])
        })?
        .to_device(device)
    }

    /// Copy an `ndarray` array (any layout) into a tensor.
    pub fn from_ndarray<T: WithDType, D: ndarray::Dimension>(a: &ndarray::Array<T, D>) -> Result<Tensor> {
        let shape = a.shape().to_vec();
        Tensor::from_vec(a.iter().copied().collect(), shape)
    }

    /// Copy into an `ndarray` array with dynamic rank.
    pub fn to_ndarray<T: WithDType>(&self) -> Result<ndarray::ArrayD<T>> {
        let v = self.to_vec::<T>()?;
        ndarray::ArrayD::from_shape_vec(self.dims().to_vec(), v)
            .map_err(|e| Error::invalid("to_ndarray", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_identity() {
        let a = Tensor::arange(0.0, 1.0, 0.25, DType::F32, Device::Cpu).unwrap();
        assert_eq!(a.to_vec::<f32>().unwrap(), vec![0.0, 0.25, 0.5, 0.75]);
        let d = Tensor::arange(5.0, 0.0, -2.0, DType::I64, Device::Cpu).unwrap();
        assert_eq!(d.to_vec::<i64>().unwrap(), vec![5, 3, 1]);
        let l = Tensor::linspace(-1.0, 1.0, 5, DType::F64, Device::Cpu).unwrap();
        assert_eq!(l.to_vec::<f64>().unwrap(), vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
        let e = Tensor::eye(2, DType::U8, Device::Cpu).unwrap();
        assert_eq!(e.to_vec::<u8>().unwrap(), vec![1, 0, 0, 1]);
        assert!(Tensor::arange(0.0, 1.0, 0.0, DType::F32, Device::Cpu).is_err());
    }

    #[test]
    #[cfg(not(feature = "cuda"))]
    fn cuda_without_feature_is_an_error() {
        let e = Tensor::zeros([2], DType::F32, Device::Cuda(0)).unwrap_err();
        assert!(matches!(e, Error::NotCompiledWithCuda(_)));
        assert!(e.to_string().contains("cuda"));
    }

    #[test]
    fn ndarray_round_trip() {
        let a = ndarray::arr2(&[[1.0f32, 2.0], [3.0, 4.0]]);
        let t = Tensor::from_ndarray(&a.t().to_owned()).unwrap();
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.0, 3.0, 2.0, 4.0]);
        assert_eq!(
            t.to_ndarray::<f32>()
                .unwrap()
                .into_dimensionality::<ndarray::Ix2>()
                .unwrap(),
            a.t()
        );
        assert!(Tensor::from_vec(vec![1.0f32; 3], [2, 2]).is_err());
    }
}
