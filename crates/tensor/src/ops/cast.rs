//! Casts between dtypes.

use crate::backend::DeviceStorage;
use crate::{DType, Result, Tensor, WithDType};

impl Tensor {
    /// Convert every element to `dtype`. Float → integer truncates toward zero and saturates
    /// (as Rust's `as`); integer → float rounds to nearest. Same dtype returns a cheap clone.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        if let Some(s) = self.cuda() {
            return Ok(Tensor::from_cuda_contiguous(
                s.cast(self.layout(), dtype)?,
                self.shape().clone(),
            ));
        }
        crate::with_dtype!(self.dtype(), S => crate::with_dtype!(dtype, D => cast_kernel::<S, D>(self)))
    }
}

fn cast_kernel<S: WithDType, D: WithDType>(t: &Tensor) -> Result<Tensor> {
    use half::{bf16, f16};
    use std::any::TypeId;
    // Direct conversions for the hot pairs (mixed precision); everything else goes through f64,
    // which represents every value of every supported type exactly except large i64.
    let (s, d) = (TypeId::of::<S>(), TypeId::of::<D>());
    macro_rules! direct {
        ($from:ty, $to:ty, $f:expr) => {
            if s == TypeId::of::<$from>() && d == TypeId::of::<$to>() {
                let src = t.contiguous_slice::<$from>()?;
                let out: Vec<$to> = src.iter().map($f).collect();
                return Tensor::from_vec(out, t.shape().clone());
            }
        };
    }
    direct!(f32, f16, |&x| f16::from_f32(x));
    direct!(f16, f32, |&x| x.to_f32());
    direct!(f32, bf16, |&x| bf16::from_f32(x));
    direct!(bf16, f32, |&x| x.to_f32());
    direct!(i64, f32, |&x| x as f32);
    direct!(u8, f32, |&x| x as f32);
    direct!(u32, i64, |&x| x as i64);
    direct!(i64, u32, |&x| x as u32);
    direct!(i64, f64, |&x| x as f64);
    super::map_elements::<S, D>(t, |x| D::from_f64(x.to_f64()))
}

#[cfg(test)]
mod tests {
    use crate::{DType, Tensor};

    #[test]
    fn casts_round_and_truncate() {
        let t = Tensor::from_vec(vec![1.7f32, -2.5, 300.0], [3]).unwrap();
        assert_eq!(
            t.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(),
            vec![1, -2, 300]
        );
        assert_eq!(
            t.to_dtype(DType::U8).unwrap().to_vec::<u8>().unwrap(),
            vec![1, 0, 255]
        );
        let h = t.to_dtype(DType::F16).unwrap().to_dtype(DType::F64).unwrap();
        assert_eq!(h.to_vec::<f64>().unwrap(), vec![1.7001953125, -2.5, 300.0]);
        for dt in DType::ALL {
            let back = t.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(back.dims(), &[3]);
        }
    }
}
