//! A Keras `LSTM` layer in Keras' own parameter layout, on kiln-nn's fused recurrence.

use kiln_autograd::{Param, Var};
use kiln_nn::layers::lstm_recurrence;
use kiln_nn::{Init, Scope};
use kiln_tensor::Tensor;
use kiln_zoo::Result;

/// `keras.layers.LSTM(units, return_sequences=True)` with Keras' parameters: `kernel` `[in, 4H]`,
/// `recurrent_kernel` `[H, 4H]` and one `bias` `[4H]`, gates `i, f, c, o` (PyTorch's `i, f, g,
/// o`), logistic-sigmoid gates and tanh cell. `z_t = x_t kernel + h_{t-1} recurrent_kernel +
/// bias`; the recurrence is [`lstm_recurrence`] with `w_hh = recurrent_kernelᵀ` (a view, no copy).
///
/// Fresh weights: Glorot-uniform kernels and a zero bias (Keras' `unit_forget_bias` and
/// orthogonal recurrent initialisation are not reproduced; textgenrnn is used with its trained
/// weights).
pub(crate) struct KerasLstm {
    kernel: Param,
    recurrent: Param,
    bias: Param,
    units: usize,
}

impl KerasLstm {
    pub(crate) fn new(scope: Scope, input: usize, units: usize) -> Result<KerasLstm> {
        let glorot = Init::XavierUniform { gain: 1.0 };
        Ok(KerasLstm {
            kernel: scope.param("kernel", [input, 4 * units], glorot)?,
            recurrent: scope.param("recurrent_kernel", [units, 4 * units], glorot)?,
            bias: scope.param("bias", [4 * units], Init::Zeros)?,
            units,
        })
    }

    pub(crate) fn parameters(&self) -> Vec<Param> {
        vec![self.kernel.clone(), self.recurrent.clone(), self.bias.clone()]
    }

    /// Hidden states `[B, T, H]` for inputs `[B, T, in]`, from zero states.
    pub(crate) fn forward(&self, x: &Var) -> Result<Var> {
        let (b, t, i) = (x.dims()[0], x.dims()[1], x.dims()[2]);
        let h = self.units;
        let xp = x
            .reshape([b * t, i])?
            .matmul(&self.kernel.var())?
            .add(&self.bias.var())?
            .reshape([b, t, 4 * h])?
            .transpose(0, 1)?;
        let zeros = Var::constant(Tensor::zeros([b, h], x.dtype(), x.value().device())?);
        let y = lstm_recurrence(&xp, &self.recurrent.var().t()?, &zeros, &zeros, false)?;
        Ok(y.narrow(2, 0, h)?.transpose(0, 1)?)
    }
}
