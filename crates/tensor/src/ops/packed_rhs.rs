//! [`PackedRhs`]: the right operand of many products (a layer's weight at inference) packed
//! once into the GEMM's panel layout, so each product skips the packing pass — about 5% of a
//! BERT-base forward, whose weights are read from memory and re-laid on every call otherwise.

use super::matmul::mat_ref;
use super::sgemm::{self, PackedB};
use crate::{DType, Error, Result, Tensor};

/// A `k × n` `f32` matrix kept together with its packed panels (built by [`Tensor::pack_rhs`]).
/// The panels cost as much memory again as the matrix; on a machine without kiln's AVX-512
/// GEMM nothing is packed and [`Tensor::matmul_packed`] is a plain [`Tensor::matmul`].
pub struct PackedRhs {
    rhs: Tensor,
    panels: Option<PackedB>,
}

impl std::fmt::Debug for PackedRhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedRhs({:?}, {} packed bytes)",
            self.rhs.dims(),
            self.packed_bytes()
        )
    }
}

impl PackedRhs {
    /// The matrix as given (a view sharing its storage).
    pub fn rhs(&self) -> &Tensor {
        &self.rhs
    }
    /// Bytes of the packed panels (0 when nothing was packed).
    pub fn packed_bytes(&self) -> usize {
        self.panels.as_ref().map_or(0, PackedB::bytes)
    }
}

impl Tensor {
    /// This `[k, n]` matrix packed as the right operand of [`Tensor::matmul_packed`] (any
    /// strides: `weight.t()?.pack_rhs()` packs a Linear layer's `[out, in]` weight).
    pub fn pack_rhs(&self) -> Result<PackedRhs> {
        if self.rank() != 2 {
            return Err(Error::ShapeMismatch {
                op: "pack_rhs",
                lhs: self.shape().clone(),
                rhs: self.shape().clone(),
                reason: "the packed operand must be a matrix".into(),
            });
        }
        let [k, n] = [self.dims()[0], self.dims()[1]];
        let panels = (self.dtype() == DType::F32 && sgemm::available() && k * n > 0)
            .then(|| {
                let data = self.storage_slice::<f32>()?;
                Ok::<_, Error>(PackedB::new(
                    data,
                    mat_ref(self.layout(), self.layout().offset()),
                    k,
                    n,
                ))
            })
            .transpose()?;
        Ok(PackedRhs {
            rhs: self.clone(),
            panels,
        })
    }

    /// `self @ rhs (+ bias)` for `self` `[m, k]`: the same values as [`Tensor::matmul`] (and
    /// [`Tensor::matmul_bias`]), with `rhs`'s packing done beforehand; bit for bit from 48 rows
    /// on (where `matmul` packs too). From 12 to 47 rows, where `matmul` would not pay for
    /// packing, the packed kernel still runs (a recurrent layer's small batch): the same
    /// products, summed in another order. Smaller products, and bf16 precision
    /// ([`crate::MatmulPrecision`]), take the ordinary path.
    pub fn matmul_packed(&self, rhs: &PackedRhs, bias: Option<&Tensor>) -> Result<Tensor> {
        let b = &rhs.rhs;
        let (m, k, n) = (
            self.dims().first().copied().unwrap_or(0),
            b.dims()[0],
            b.dims()[1],
        );
        let usable = rhs.panels.as_ref().filter(|_| {
            self.rank() == 2
                && self.dtype() == DType::F32
                && self.dims()[1] == k
                && m > 0
                && sgemm::worthwhile_packed(m, n, k)
                // The panels hold f32 operands: bf16 products take the ordinary path.
                && crate::matmul_precision() == crate::MatmulPrecision::F32
                && bias.is_none_or(|t| t.dtype() == DType::F32 && t.dims() == [n])
        });
        let Some(panels) = usable else {
            // Shapes, dtypes and small products: the ordinary path checks and computes them.
            return match bias {
                Some(bias) => self.matmul_bias(b, bias),
                None => self.matmul(b),
            };
        };
        let mut out = match bias {
            Some(bias) => bias.contiguous_slice::<f32>()?.repeat(m),
            None => vec![0f32; m * n],
        };
        let data = self.storage_slice::<f32>()?;
        let l = mat_ref(self.layout(), self.layout().offset());
        sgemm::sgemm_packed(m, &mut out, data, l, panels, bias.is_some(), true);
        Tensor::from_vec(out, [m, n])
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Tensor, TensorRng};

    #[test]
    fn packed_products_equal_the_ordinary_ones_bit_for_bit() {
        let mut rng = TensorRng::new(3);
        let randn = |dims: [usize; 2], rng: &mut TensorRng| {
            Tensor::randn(dims, 0.0, 1.0, DType::F32, Device::Cpu, rng).unwrap()
        };
        // A Linear layer's weight [out, in], used transposed; a ragged m; a tiny product.
        let w = randn([70, 96], &mut rng);
        let bias = randn([1, 70], &mut rng).reshape([70]).unwrap();
        let packed = w.t().unwrap().pack_rhs().unwrap();
        for m in [100, 60, 3, 20] {
            let x = randn([m, 96], &mut rng);
            let want = x.matmul(&w.t().unwrap()).unwrap().to_vec::<f32>().unwrap();
            let got = x.matmul_packed(&packed, None).unwrap().to_vec::<f32>().unwrap();
            if m == 20 {
                // The packed kernel below `matmul`'s threshold: the same sums up to rounding.
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "m = 20: {g} vs {w}");
                }
                continue;
            }
            assert_eq!(got, want, "m = {m}");
            let want = x
                .matmul_bias(&w.t().unwrap(), &bias)
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            let got = x
                .matmul_packed(&packed, Some(&bias))
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            assert_eq!(got, want, "m = {m}, with bias");
        }
        // Wrong inner dimension: the ordinary path's error.
        let err = randn([50, 95], &mut rng)
            .matmul_packed(&packed, None)
            .unwrap_err();
        assert!(err.to_string().contains("inner dimensions differ"), "{err}");
        assert!(randn([4, 4], &mut rng).reshape([16]).unwrap().pack_rhs().is_err());
    }
}
