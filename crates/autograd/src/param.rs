//! [`Param`]: a named, trainable tensor whose value optimizers replace between steps.

use std::sync::{Arc, Mutex, PoisonError};

use kiln_tensor::{PackedRhs, Tensor};

use crate::{Gradients, Var};

struct ParamInner {
    name: String,
    state: Mutex<ParamState>,
}

struct ParamState {
    value: Tensor,
    requires_grad: bool,
    /// The leaf handed out by [`Param::var`] since the value last changed, so every use of the
    /// parameter within a step (tied weights) is the same leaf and its gradients add up.
    leaf: Option<Var>,
    /// Whether to keep [`Param::packed_transpose`] between uses ([`Param::set_keep_packed`]).
    keep_packed: bool,
    /// The transposed value packed as a GEMM operand, until the value changes.
    packed: Option<Arc<PackedRhs>>,
}

/// A named trainable tensor (as `torch.nn.Parameter`). Clones share the parameter: a clone is
/// how a module and an optimizer both hold it. The name is the full dotted PyTorch / Hugging Face
/// path (`encoder.layer.0.attention.self.query.weight`).
#[derive(Clone)]
pub struct Param(Arc<ParamInner>);

impl Param {
    /// A parameter that requires grad.
    pub fn new(name: impl Into<String>, value: Tensor) -> Param {
        Param(Arc::new(ParamInner {
            name: name.into(),
            state: Mutex::new(ParamState {
                value,
                requires_grad: true,
                leaf: None,
                keep_packed: false,
                packed: None,
            }),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ParamState> {
        // A panic while holding the lock cannot leave the state half-written (all writes are
        // single assignments), so a poisoned lock is still safe to use.
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The full dotted name.
    pub fn name(&self) -> &str {
        &self.0.name
    }
    /// The current value.
    pub fn value(&self) -> Tensor {
        self.state().value.clone()
    }
    /// The leaf to use in a forward pass: the same `Var` until the value changes, a constant when frozen.
    pub fn var(&self) -> Var {
        let mut s = self.state();
        if let Some(v) = &s.leaf {
            return v.clone();
        }
        let v = Var::leaf(s.value.clone(), s.requires_grad);
        s.leaf = Some(v.clone());
        v
    }
    /// Replace the value (an optimizer step, a checkpoint load). The next [`Param::var`] is a new leaf.
    pub fn set_value(&self, value: Tensor) {
        let mut s = self.state();
        s.value = value;
        s.leaf = None;
        s.packed = None;
    }
    /// Whether the parameter trains.
    pub fn requires_grad(&self) -> bool {
        self.state().requires_grad
    }
    /// Freeze (`false`) or unfreeze (`true`) the parameter.
    pub fn set_requires_grad(&self, on: bool) {
        let mut s = self.state();
        s.requires_grad = on;
        s.leaf = None;
    }
    /// Keep (`true`) or drop (`false`) a packed copy of this matrix's transpose for
    /// inference: a Linear layer's `x Wᵀ` then skips packing `W` on every call (see
    /// [`Var::matmul_param_t`]), for as much memory again as the weight. Like preparing a model
    /// for inference in PyTorch (`torch.jit.freeze`, oneDNN weight prepacking): opt-in, and
    /// refreshed whenever the value changes.
    pub fn set_keep_packed(&self, on: bool) {
        let mut s = self.state();
        s.keep_packed = on;
        if !on {
            s.packed = None;
        }
    }
    /// The transposed value packed as a GEMM operand, if [`Param::set_keep_packed`] asked for it
    /// (packed on first use, kept until the value changes).
    pub fn packed_transpose(&self) -> kiln_tensor::Result<Option<Arc<PackedRhs>>> {
        let value = {
            let s = self.state();
            if !s.keep_packed {
                return Ok(None);
            }
            if let Some(p) = &s.packed {
                return Ok(Some(p.clone()));
            }
            // Packing is a CPU GEMM layout; a device weight takes the plain product.
            if s.value.device() != kiln_tensor::Device::Cpu {
                return Ok(None);
            }
            s.value.clone()
        };
        // Packed without the lock (it runs on the thread pool); kept only if the value is still
        // the one packed (same storage) and packing is still wanted.
        let packed = Arc::new(value.t()?.pack_rhs()?);
        let mut s = self.state();
        if s.keep_packed && s.value.same_storage(&value) {
            s.packed.get_or_insert(packed.clone());
        }
        Ok(Some(packed))
    }
    /// The gradient of this parameter's current leaf in `grads`, if any reached it.
    pub fn grad(&self, grads: &Gradients) -> Option<Tensor> {
        let s = self.state();
        s.leaf.as_ref().and_then(|v| grads.get(v).cloned())
    }
    /// Whether two handles are the same parameter (tied weights).
    pub fn same_as(&self, other: &Param) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state();
        write!(
            f,
            "Param({}, {:?}, {}, requires_grad={})",
            self.0.name,
            s.value.shape(),
            s.value.dtype(),
            s.requires_grad
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tied_uses_share_one_leaf_and_updates_make_a_new_one() {
        let p = Param::new("w", Tensor::from_vec(vec![2.0f32], [1]).unwrap());
        let (a, b) = (p.var(), p.var());
        assert_eq!(a.id(), b.id());
        let g = a.mul(&b).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(p.grad(&g).unwrap().to_vec::<f32>().unwrap(), vec![4.0]);
        p.set_value(Tensor::from_vec(vec![1.0f32], [1]).unwrap());
        assert_ne!(p.var().id(), a.id());
        assert!(
            p.grad(&g).is_none(),
            "a gradient of the old value is not the new value's"
        );
        p.set_requires_grad(false);
        assert!(!p.var().requires_grad());
    }
}
