//! The [`Optimizer`] trait, [`ParamGroup`], and the engine every optimizer is built on: parameter
//! groups, per-parameter state keyed by parameter name, atomic state loading.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use kiln_autograd::{Gradients, Param};
use kiln_tensor::Tensor;

use crate::error::check_non_negative;
use crate::{Error, Result};

/// The key of the optimizer-wide step counter in [`Optimizer::state_tensors`].
pub const STEP_KEY: &str = "__step";

/// An optimizer: owns handles to parameters (grouped into [`ParamGroup`]s) and their state, and
/// updates the parameters from a [`Gradients`].
///
/// State tensors are keyed by parameter name: `{param_name}.{buffer}` (`encoder.w.exp_avg`,
/// `fc.bias.momentum_buffer`...), `{param_name}.step` (how many updates that parameter has had, an
/// `i64` scalar) and [`STEP_KEY`] (`__step`, how many times [`Optimizer::step`] was called).
pub trait Optimizer {
    /// Update every parameter that requires grad and has a gradient in `grads`; frozen
    /// parameters and parameters without a gradient are left untouched (and their state too).
    /// The step counter advances by one even when nothing was updated.
    ///
    /// Every gradient is checked against its parameter (shape, dtype) before anything changes,
    /// so a step that fails on a bad gradient leaves parameters and state as they were.
    fn step(&mut self, grads: &Gradients) -> Result<()>;

    /// The learning rate of the first parameter group (the default lr when there is no group).
    fn lr(&self) -> f64;

    /// Set the learning rate of every parameter group (what an [`LrSchedule`](crate::LrSchedule)
    /// driver calls each step).
    fn set_lr(&mut self, lr: f64);

    /// The learning rate of each parameter group, in order.
    fn group_lrs(&self) -> Vec<f64>;

    /// Set the learning rate of one parameter group (to schedule groups with different lrs:
    /// `set_group_lr(i, base_i * schedule.lr(step) / base)`). Errors on a bad index.
    fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()>;

    /// How many times [`Optimizer::step`] has been called (restored by loading state).
    fn step_count(&self) -> usize;

    /// The optimizer's state as named tensors (see the trait docs for the keys).
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>>;

    /// Replace the optimizer's state with `map` (as produced by [`Optimizer::state_tensors`]).
    ///
    /// Every parameter that has state (all parameters that required grad when the optimizer was
    /// built, and any updated since) must find each of its keys with the parameter's shape; a
    /// parameter without state (frozen at construction) loads its keys when `{name}.step` is
    /// present. A missing key, a tensor of the wrong shape or a key that belongs to no parameter is
    /// an [`Error::State`] naming the key (and both shapes); on any error the optimizer is
    /// unchanged. Tensors of another float dtype are converted to the parameter's dtype.
    fn load_state_tensors(&mut self, map: &HashMap<String, Tensor>) -> Result<()>;

    /// Save [`Optimizer::state_tensors`] as a safetensors file (written atomically).
    fn save_state(&self, path: &Path) -> Result<()> {
        kiln_tensor::io::save_safetensors(self.state_tensors()?, path)?;
        Ok(())
    }

    /// Load a safetensors file written by [`Optimizer::save_state`]; see
    /// [`Optimizer::load_state_tensors`] for the checks.
    fn load_state(&mut self, path: &Path) -> Result<()> {
        let map = kiln_tensor::io::load_safetensors(path)?;
        self.load_state_tensors(&map)
    }
}

/// Parameters that share hyperparameters. `None` means the optimizer's default.
#[derive(Clone, Debug, Default)]
pub struct ParamGroup {
    /// The parameters (clones of the handles the model holds).
    pub params: Vec<Param>,
    /// The group's learning rate; `None` uses the optimizer config's.
    pub lr: Option<f64>,
    /// The group's weight decay; `None` uses the optimizer config's.
    pub weight_decay: Option<f64>,
}

impl ParamGroup {
    /// A group with the optimizer's default hyperparameters.
    pub fn new(params: Vec<Param>) -> ParamGroup {
        ParamGroup {
            params,
            lr: None,
            weight_decay: None,
        }
    }

    /// Set the group's learning rate.
    pub fn with_lr(mut self, lr: f64) -> ParamGroup {
        self.lr = Some(lr);
        self
    }

    /// Set the group's weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> ParamGroup {
        self.weight_decay = Some(weight_decay);
        self
    }

    /// The usual transformer recipe: two groups, `[decayed, not decayed]`. The first has weight
    /// decay `decay`; the second (weight decay 0) gets every parameter for which
    /// [`ParamGroup::is_no_decay`] holds — biases and normalisation weights. Both groups are
    /// always returned (possibly empty), in that order, and keep the parameters' order.
    pub fn split_decay(params: Vec<Param>, decay: f64) -> Vec<ParamGroup> {
        let (no_decay, decayed): (Vec<Param>, Vec<Param>) = params.into_iter().partition(Self::is_no_decay);
        vec![
            ParamGroup::new(decayed).with_weight_decay(decay),
            ParamGroup::new(no_decay).with_weight_decay(0.0),
        ]
    }

    /// The GPT recipe: like [`ParamGroup::split_decay`], but embedding tables (names containing
    /// `wte`, `wpe` or `embed`) are not decayed either, so only weight matrices are.
    pub fn split_decay_matrices(params: Vec<Param>, decay: f64) -> Vec<ParamGroup> {
        let (no_decay, decayed): (Vec<Param>, Vec<Param>) = params
            .into_iter()
            .partition(|p| Self::is_no_decay(p) || Self::is_embedding(p));
        vec![
            ParamGroup::new(decayed).with_weight_decay(decay),
            ParamGroup::new(no_decay).with_weight_decay(0.0),
        ]
    }

    /// Whether `param` is an embedding table by its name (`wte`, `wpe`, or containing `embed`).
    pub fn is_embedding(param: &Param) -> bool {
        let name = param.name().to_ascii_lowercase();
        name.contains("embed") || name.split('.').any(|part| part == "wte" || part == "wpe")
    }

    /// Whether [`ParamGroup::split_decay`] exempts `param` from weight decay: it has at most one
    /// dimension, its name ends in `bias`, its name contains `norm` (any case: `LayerNorm`,
    /// `norm1`, `rmsnorm`), or a dotted component of its name is `ln`, `ln_…` or `ln<digit>…`
    /// (GPT-2's `ln_1`, `ln_f`).
    pub fn is_no_decay(param: &Param) -> bool {
        if param.value().rank() <= 1 {
            return true;
        }
        let name = param.name().to_ascii_lowercase();
        name.ends_with("bias")
            || name.contains("norm")
            || name.split('.').any(|part| match part.strip_prefix("ln") {
                Some(rest) => {
                    rest.is_empty() || rest.starts_with('_') || rest.starts_with(|c: char| c.is_ascii_digit())
                }
                None => false,
            })
    }
}

impl From<Vec<Param>> for ParamGroup {
    fn from(params: Vec<Param>) -> ParamGroup {
        ParamGroup::new(params)
    }
}

// ---------------------------------------------------------------------------------------------
// The engine.

/// Hyperparameters of one parameter's update.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hyper {
    /// The group's learning rate.
    pub lr: f64,
    /// The group's weight decay.
    pub weight_decay: f64,
    /// This parameter's update count, including the update being made (1 on the first).
    pub step: u64,
}

/// An update rule: the per-parameter buffers it keeps and how it changes a parameter.
pub(crate) trait Rule {
    /// The optimizer's name, for errors.
    const NAME: &'static str;
    /// The names of the per-parameter buffers, in the order `init` builds them and `update`
    /// receives them. Each has the parameter's shape and dtype.
    fn buffers(&self) -> Vec<&'static str>;
    /// The buffers of a parameter that has not been updated yet.
    fn init(&self, value: &Tensor) -> Result<Vec<Tensor>> {
        self.buffers().iter().map(|_| Ok(value.zeros_like()?)).collect()
    }
    /// The new value of parameter `p` with gradient `g`, updating `bufs` in place.
    fn update(&self, h: Hyper, p: &Tensor, g: &Tensor, bufs: &mut [Tensor]) -> Result<Tensor>;
}

/// State of one parameter.
#[derive(Clone)]
struct ParamState {
    step: u64,
    bufs: Vec<Tensor>,
}

struct Slot {
    param: Param,
    state: Option<ParamState>,
}

struct Group {
    slots: Vec<Slot>,
    lr: f64,
    weight_decay: f64,
}

/// Parameter groups + per-parameter state + the step counter, driven by a [`Rule`].
pub(crate) struct Core<R: Rule> {
    pub rule: R,
    groups: Vec<Group>,
    default_lr: f64,
    step: u64,
}

fn state_key(param: &str, buffer: &str) -> String {
    format!("{param}.{buffer}")
}

/// A scalar `i64` tensor holding a counter.
fn count_tensor(n: u64) -> Tensor {
    Tensor::scalar(n as i64)
}

/// Read a counter saved by [`count_tensor`] (any numeric dtype, one element, non-negative integer).
fn read_count(key: &str, t: &Tensor) -> Result<u64> {
    if t.elem_count() != 1 {
        return Err(Error::state(
            key,
            format!("expected a scalar (shape []), found shape {:?}", t.shape()),
        ));
    }
    let v = t.to_f64_vec()[0];
    if !(v >= 0.0 && v.fract() == 0.0 && v < 9.0e15) {
        return Err(Error::state(
            key,
            format!("expected a non-negative integer count, found {v}"),
        ));
    }
    Ok(v as u64)
}

impl<R: Rule> Core<R> {
    /// Build from groups, resolving `None`s to the defaults and validating them. A parameter may
    /// appear only once, and parameter names must be unique (they key the state).
    pub fn new(rule: R, groups: Vec<ParamGroup>, default_lr: f64, default_wd: f64) -> Result<Self> {
        let mut names = HashSet::new();
        let mut seen: Vec<Param> = Vec::new();
        let mut out = Vec::with_capacity(groups.len());
        for (i, g) in groups.into_iter().enumerate() {
            let lr = g.lr.unwrap_or(default_lr);
            let weight_decay = g.weight_decay.unwrap_or(default_wd);
            check_non_negative(R::NAME, &format!("groups[{i}].lr"), lr)?;
            check_non_negative(R::NAME, &format!("groups[{i}].weight_decay"), weight_decay)?;
            let mut slots = Vec::with_capacity(g.params.len());
            for p in g.params {
                if seen.iter().any(|q| q.same_as(&p)) {
                    return Err(Error::config(
                        R::NAME,
                        format!("groups[{i}].params"),
                        p.name(),
                        "the parameter appears more than once (in this group or an earlier one)",
                    ));
                }
                if !names.insert(p.name().to_string()) {
                    return Err(Error::config(
                        R::NAME,
                        format!("groups[{i}].params"),
                        p.name(),
                        "two different parameters share this name; names key the optimizer state",
                    ));
                }
                let value = p.value();
                if p.requires_grad() && !value.dtype().is_float() {
                    return Err(Error::config(
                        R::NAME,
                        format!("groups[{i}].params"),
                        p.name(),
                        format!(
                            "a trainable parameter must be a float tensor, found {}",
                            value.dtype()
                        ),
                    ));
                }
                let state = if p.requires_grad() {
                    Some(ParamState {
                        step: 0,
                        bufs: rule.init(&value)?,
                    })
                } else {
                    None
                };
                seen.push(p.clone());
                slots.push(Slot { param: p, state });
            }
            out.push(Group {
                slots,
                lr,
                weight_decay,
            });
        }
        Ok(Core {
            rule,
            groups: out,
            default_lr,
            step: 0,
        })
    }

    pub fn step(&mut self, grads: &Gradients) -> Result<()> {
        // Pass 1: find the work and check every gradient and state against its parameter.
        let names = self.rule.buffers();
        let mut work = Vec::new();
        for (gi, group) in self.groups.iter().enumerate() {
            for (si, slot) in group.slots.iter().enumerate() {
                let p = &slot.param;
                if !p.requires_grad() {
                    continue;
                }
                let Some(g) = p.grad(grads) else { continue };
                let value = p.value();
                let bad = |reason: String| Error::Grad {
                    optimizer: R::NAME,
                    param: p.name().to_string(),
                    reason,
                };
                if g.shape() != value.shape() || g.dtype() != value.dtype() {
                    return Err(bad(format!(
                        "the gradient has shape {:?} and dtype {}, the parameter shape {:?} and dtype {}",
                        g.shape(),
                        g.dtype(),
                        value.shape(),
                        value.dtype()
                    )));
                }
                if let Some(st) = &slot.state {
                    for (b, name) in st.bufs.iter().zip(&names) {
                        if b.shape() != value.shape() || b.dtype() != value.dtype() {
                            return Err(bad(format!(
                                "state '{}' has shape {:?} and dtype {}, but the parameter now has shape {:?} and dtype {} (was it replaced after the optimizer was built?)",
                                state_key(p.name(), name),
                                b.shape(),
                                b.dtype(),
                                value.shape(),
                                value.dtype()
                            )));
                        }
                    }
                }
                work.push((gi, si, value, g));
            }
        }
        // Pass 2: update.
        for (gi, si, value, g) in work {
            let group = &mut self.groups[gi];
            let (lr, weight_decay) = (group.lr, group.weight_decay);
            let slot = &mut group.slots[si];
            let mut state = match slot.state.take() {
                Some(s) => s,
                None => ParamState {
                    step: 0,
                    bufs: self.rule.init(&value)?,
                },
            };
            let h = Hyper {
                lr,
                weight_decay,
                step: state.step + 1,
            };
            let mut bufs = state.bufs.clone();
            match self.rule.update(h, &value, &g, &mut bufs) {
                Ok(new_value) => {
                    state.step += 1;
                    state.bufs = bufs;
                    slot.param.set_value(new_value);
                    slot.state = Some(state);
                }
                Err(e) => {
                    slot.state = Some(state);
                    return Err(e);
                }
            }
        }
        self.step += 1;
        Ok(())
    }

    pub fn lr(&self) -> f64 {
        self.groups.first().map_or(self.default_lr, |g| g.lr)
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.default_lr = lr;
        for g in &mut self.groups {
            g.lr = lr;
        }
    }

    pub fn group_lrs(&self) -> Vec<f64> {
        self.groups.iter().map(|g| g.lr).collect()
    }

    pub fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        let n = self.groups.len();
        match self.groups.get_mut(group) {
            Some(g) => {
                g.lr = lr;
                Ok(())
            }
            None => Err(Error::config(
                R::NAME,
                "group",
                group,
                format!("the optimizer has {n} parameter groups"),
            )),
        }
    }

    pub fn step_count(&self) -> usize {
        self.step as usize
    }

    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let names = self.rule.buffers();
        let mut out = vec![(STEP_KEY.to_string(), count_tensor(self.step))];
        for slot in self.groups.iter().flat_map(|g| &g.slots) {
            let Some(st) = &slot.state else { continue };
            let name = slot.param.name();
            out.push((state_key(name, "step"), count_tensor(st.step)));
            for (b, buf) in names.iter().zip(&st.bufs) {
                out.push((state_key(name, b), buf.clone()));
            }
        }
        Ok(out)
    }

    pub fn load_state_tensors(&mut self, map: &HashMap<String, Tensor>) -> Result<()> {
        let names = self.rule.buffers();
        let mut used: HashSet<&str> = HashSet::new();
        let step_t = map
            .get(STEP_KEY)
            .ok_or_else(|| Error::state(STEP_KEY, "missing (expected an i64 scalar, shape [])"))?;
        let step = read_count(STEP_KEY, step_t)?;
        used.insert(STEP_KEY);

        // Stage every parameter's new state; commit only when all of it checks out.
        let mut staged: Vec<Vec<Option<ParamState>>> = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let mut gs = Vec::with_capacity(group.slots.len());
            for slot in &group.slots {
                let name = slot.param.name();
                let value = slot.param.value();
                let step_key = state_key(name, "step");
                let Some((step_k, step_t)) = map.get_key_value(&step_key) else {
                    if slot.state.is_some() {
                        return Err(Error::state(
                            step_key,
                            "missing (expected an i64 scalar, shape []): the parameter has optimizer state",
                        ));
                    }
                    gs.push(None);
                    continue;
                };
                let pstep = read_count(&step_key, step_t)?;
                used.insert(step_k.as_str());
                let mut bufs = Vec::with_capacity(names.len());
                for b in &names {
                    let key = state_key(name, b);
                    let Some((k, t)) = map.get_key_value(&key) else {
                        return Err(Error::state(
                            key,
                            format!(
                                "missing (expected shape {:?}, the shape of parameter '{name}'; found no tensor)",
                                value.shape()
                            ),
                        ));
                    };
                    if t.shape() != value.shape() {
                        return Err(Error::state(
                            key,
                            format!(
                                "wrong shape: expected {:?} (the shape of parameter '{name}'), found {:?}",
                                value.shape(),
                                t.shape()
                            ),
                        ));
                    }
                    let t = if t.dtype() == value.dtype() {
                        t.clone()
                    } else if t.dtype().is_float() {
                        t.to_dtype(value.dtype())?
                    } else {
                        return Err(Error::state(
                            key,
                            format!(
                                "expected a float tensor ({}), found dtype {}",
                                value.dtype(),
                                t.dtype()
                            ),
                        ));
                    };
                    used.insert(k.as_str());
                    bufs.push(t);
                }
                gs.push(Some(ParamState { step: pstep, bufs }));
            }
            staged.push(gs);
        }
        if used.len() != map.len() {
            let mut extra: Vec<&String> = map.keys().filter(|k| !used.contains(k.as_str())).collect();
            extra.sort();
            return Err(Error::state(
                extra[0].as_str(),
                format!(
                    "unexpected: no parameter of this {} optimizer has this state ({} unexpected key(s): {})",
                    R::NAME,
                    extra.len(),
                    extra
                        .iter()
                        .take(8)
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        for (group, gs) in self.groups.iter_mut().zip(staged) {
            for (slot, st) in group.slots.iter_mut().zip(gs) {
                slot.state = st;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Implement [`Optimizer`] for a type with a `core: Core<_>` field.
macro_rules! impl_optimizer {
    ($ty:ty) => {
        impl $crate::Optimizer for $ty {
            fn step(&mut self, grads: &kiln_autograd::Gradients) -> $crate::Result<()> {
                self.core.step(grads)
            }
            fn lr(&self) -> f64 {
                self.core.lr()
            }
            fn set_lr(&mut self, lr: f64) {
                self.core.set_lr(lr)
            }
            fn group_lrs(&self) -> Vec<f64> {
                self.core.group_lrs()
            }
            fn set_group_lr(&mut self, group: usize, lr: f64) -> $crate::Result<()> {
                self.core.set_group_lr(group, lr)
            }
            fn step_count(&self) -> usize {
                self.core.step_count()
            }
            fn state_tensors(&self) -> $crate::Result<Vec<(String, kiln_tensor::Tensor)>> {
                self.core.state_tensors()
            }
            fn load_state_tensors(
                &mut self,
                map: &std::collections::HashMap<String, kiln_tensor::Tensor>,
            ) -> $crate::Result<()> {
                self.core.load_state_tensors(map)
            }
        }
    };
}
pub(crate) use impl_optimizer;

/// Tensor helpers shared by the update rules (scalars are applied in the tensor's dtype).
pub(crate) mod ops {
    use kiln_tensor::Tensor;

    use crate::Result;

    /// `a * x + b * y` (element-wise, scalars `a`, `b`).
    pub fn lin(x: &Tensor, a: f64, y: &Tensor, b: f64) -> Result<Tensor> {
        Ok(x.mul_scalar(a)?.add(&y.mul_scalar(b)?)?)
    }

    /// `x + a * y`.
    pub fn axpy(x: &Tensor, a: f64, y: &Tensor) -> Result<Tensor> {
        Ok(x.add(&y.mul_scalar(a)?)?)
    }

    /// `x / s` for a scalar `s` (a true division, as PyTorch's `tensor / float`).
    pub fn div_scalar(x: &Tensor, s: f64) -> Result<Tensor> {
        let s = Tensor::full(s, (), x.dtype(), x.device())?;
        Ok(x.div(&s)?)
    }
}
