//! [`Scope`]: the one construction path for parameters — initialise for training, or load by
//! dotted name from weights — so `Linear::new(scope.sub("fc1"), 784, 256)` serves both.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use kiln_autograd::Param;
use kiln_tensor::{DType, Device, Shape, Tensor, TensorRng};

use crate::{Error, Init, Result};

/// Every parameter a model created, by full name, plus where new ones come from.
struct Store {
    params: Mutex<BTreeMap<String, Param>>,
    /// Insertion order, so `parameters()` lists them as the model declared them (like PyTorch).
    order: Mutex<Vec<String>>,
    /// Weights to load from; `None` means initialise everything.
    source: Option<HashMap<String, Tensor>>,
    /// With a source: error on a parameter the weights lack (strict) or initialise it (non-strict).
    strict: bool,
    rng: Mutex<TensorRng>,
    dtype: DType,
    device: Device,
}

/// A handle on a parameter store at a dotted prefix. Cheap to clone; `sub` descends one level.
#[derive(Clone)]
pub struct Scope {
    prefix: String,
    store: Arc<Store>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Scope {
    fn with_store(store: Store) -> Scope {
        Scope {
            prefix: String::new(),
            store: Arc::new(store),
        }
    }

    /// A scope whose parameters are initialised from a seeded generator (training from scratch).
    pub fn init(seed: u64, dtype: DType, device: Device) -> Scope {
        Self::with_store(Store {
            params: Mutex::new(BTreeMap::new()),
            order: Mutex::new(Vec::new()),
            source: None,
            strict: false,
            rng: Mutex::new(TensorRng::new(seed)),
            dtype,
            device,
        })
    }

    /// A scope whose parameters are loaded by name from `weights` (cast to `dtype`). Strict: a
    /// parameter missing from the weights is an error naming it; non-strict: it is initialised
    /// from `seed` instead. Check for unused weights afterwards with [`Scope::unused_weights`].
    pub fn from_tensors(
        weights: HashMap<String, Tensor>,
        strict: bool,
        seed: u64,
        dtype: DType,
        device: Device,
    ) -> Scope {
        Self::with_store(Store {
            params: Mutex::new(BTreeMap::new()),
            order: Mutex::new(Vec::new()),
            source: Some(weights),
            strict,
            rng: Mutex::new(TensorRng::new(seed)),
            dtype,
            device,
        })
    }

    /// [`Scope::from_tensors`] over a safetensors file (memory-mapped).
    pub fn from_safetensors(
        path: impl AsRef<Path>,
        strict: bool,
        dtype: DType,
        device: Device,
    ) -> Result<Scope> {
        let weights = kiln_tensor::io::load_safetensors(path)?;
        Ok(Self::from_tensors(weights, strict, 0, dtype, device))
    }

    /// The scope one level down: `scope.sub("fc1")` names parameters `fc1.weight`, ...
    pub fn sub(&self, name: impl std::fmt::Display) -> Scope {
        Scope {
            prefix: format!("{}{}.", self.prefix, name),
            store: self.store.clone(),
        }
    }

    /// The full name a parameter called `name` gets in this scope.
    pub fn full_name(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// The parameter dtype of this store.
    pub fn dtype(&self) -> DType {
        self.store.dtype
    }
    /// The device of this store.
    pub fn device(&self) -> Device {
        self.store.device
    }

    /// The parameter `name` of `shape`: the existing one if this scope already made it (tied
    /// weights), else loaded from the weights (shape-checked), else initialised with `init`.
    pub fn param(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Param> {
        let shape = shape.into();
        let full = self.full_name(name);
        if let Some(p) = lock(&self.store.params).get(&full) {
            let got = p.value().shape().clone();
            if got != shape {
                return Err(Error::ShapeMismatch {
                    name: full,
                    expected: shape,
                    got,
                });
            }
            return Ok(p.clone());
        }
        let value = match self.store.source.as_ref().and_then(|s| s.get(&full)) {
            Some(t) if t.shape() != &shape => {
                return Err(Error::ShapeMismatch {
                    name: full,
                    expected: shape,
                    got: t.shape().clone(),
                })
            }
            Some(t) => t.to_dtype(self.store.dtype)?.to_device(self.store.device)?,
            None if self.store.source.is_some() && self.store.strict => {
                return Err(Error::MissingKey {
                    name: full,
                    expected: shape,
                })
            }
            None => init.make(
                &shape,
                self.store.dtype,
                self.store.device,
                &mut lock(&self.store.rng),
            )?,
        };
        let p = Param::new(full.clone(), value);
        lock(&self.store.params).insert(full.clone(), p.clone());
        lock(&self.store.order).push(full);
        Ok(p)
    }

    /// A non-trainable buffer (e.g. BatchNorm running statistics): a frozen parameter that is
    /// still saved and loaded with the state dict.
    pub fn buffer(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Param> {
        let p = self.param(name, shape, init)?;
        p.set_requires_grad(false);
        Ok(p)
    }

    /// Every parameter created through this store, in creation order.
    pub fn all_params(&self) -> Vec<Param> {
        let params = lock(&self.store.params);
        lock(&self.store.order)
            .iter()
            .filter_map(|n| params.get(n).cloned())
            .collect()
    }

    /// Names in the loaded weights that no parameter asked for (empty without weights).
    pub fn unused_weights(&self) -> Vec<String> {
        let params = lock(&self.store.params);
        let mut unused: Vec<String> = self
            .store
            .source
            .iter()
            .flat_map(|s| s.keys())
            .filter(|k| !params.contains_key(*k))
            .cloned()
            .collect();
        unused.sort();
        unused
    }

    /// Error if strict loading left weights unused.
    pub fn check_all_used(&self) -> Result<()> {
        let unused = self.unused_weights();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(Error::UnexpectedKeys(unused))
        }
    }

    /// Draw a seed for a layer's own generator (dropout), from the store's generator.
    pub fn next_seed(&self) -> u64 {
        lock(&self.store.rng).next_u64()
    }
}

/// What [`load_state_dict`] found: names the parameters lacked or the weights had in excess.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Parameters with no tensor in the weights.
    pub missing: Vec<String>,
    /// Tensors no parameter matched.
    pub unexpected: Vec<String>,
    /// Tensors converted to their parameter's float dtype (name, stored dtype, parameter dtype),
    /// e.g. f16 or bf16 weights into f32 parameters; each is also logged to stderr.
    pub converted: Vec<(String, kiln_tensor::DType, kiln_tensor::DType)>,
}

/// The state dict of `params`: name → value.
pub fn state_dict(params: &[Param]) -> Vec<(String, Tensor)> {
    params.iter().map(|p| (p.name().to_string(), p.value())).collect()
}

/// Save parameters as safetensors with their dotted names (atomically: temporary file, then rename).
pub fn save_state_dict(params: &[Param], path: impl AsRef<Path>) -> Result<()> {
    let sd = state_dict(params);
    kiln_tensor::io::save_safetensors(sd.iter().map(|(n, t)| (n.as_str(), t)), path)?;
    Ok(())
}

/// Load `weights` into existing parameters by name. Every shape is checked before any value is
/// changed, so a failed load leaves the model untouched. Strict: missing or unexpected names are
/// an error; non-strict: they are reported.
pub fn load_state_dict(
    params: &[Param],
    weights: &HashMap<String, Tensor>,
    strict: bool,
) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let names: BTreeSet<&str> = params.iter().map(|p| p.name()).collect();
    for p in params {
        match weights.get(p.name()) {
            None => report.missing.push(p.name().to_string()),
            Some(t) if t.shape() != p.value().shape() => {
                return Err(Error::ShapeMismatch {
                    name: p.name().to_string(),
                    expected: p.value().shape().clone(),
                    got: t.shape().clone(),
                })
            }
            // Between floats a conversion keeps the values (logged below); integer or boolean
            // data in a float parameter (or the reverse) is a wrong file, not a conversion.
            Some(t) if t.dtype().is_float() != p.value().dtype().is_float() => {
                return Err(Error::DTypeMismatch {
                    name: p.name().to_string(),
                    expected: p.value().dtype(),
                    got: t.dtype(),
                })
            }
            Some(t) if t.dtype() != p.value().dtype() => {
                report
                    .converted
                    .push((p.name().to_string(), t.dtype(), p.value().dtype()))
            }
            Some(_) => {}
        }
    }
    report.unexpected = weights
        .keys()
        .filter(|k| !names.contains(k.as_str()))
        .cloned()
        .collect();
    report.unexpected.sort();
    if strict {
        if let Some(name) = report.missing.first() {
            let p = params
                .iter()
                .find(|p| p.name() == name)
                .map(|p| p.value().shape().clone());
            return Err(Error::MissingKey {
                name: name.clone(),
                expected: p.unwrap_or_default(),
            });
        }
        if !report.unexpected.is_empty() {
            return Err(Error::UnexpectedKeys(report.unexpected));
        }
    }
    if let Some((name, from, to)) = report.converted.first() {
        eprintln!(
            "loading weights: {} tensor(s) converted to the parameters' dtype (first: {name} {from} -> {to})",
            report.converted.len()
        );
    }
    for p in params {
        if let Some(t) = weights.get(p.name()) {
            let v = p.value();
            p.set_value(t.to_dtype(v.dtype())?.to_device(v.device())?);
        }
    }
    Ok(report)
}

/// [`load_state_dict`] from a safetensors file.
pub fn load_state_dict_file(params: &[Param], path: impl AsRef<Path>, strict: bool) -> Result<LoadReport> {
    let weights = kiln_tensor::io::load_safetensors(path)?;
    load_state_dict(params, &weights, strict)
}
