//! The backward pass: an iterative reverse topological walk that frees each gradient once used.

use std::collections::HashMap;

use kiln_tensor::Tensor;

use crate::{Error, Result, Var};

/// Gradients of leaves, keyed by the leaf's identity ([`Var::id`]).
#[derive(Default, Clone)]
pub struct Gradients {
    map: HashMap<u64, Tensor>,
}

impl Gradients {
    /// An empty container.
    pub fn new() -> Self {
        Self::default()
    }
    /// The gradient of `v`, if one reached it.
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.map.get(&v.id())
    }
    /// The gradient of `v`, or an error if `v` does not require grad; a leaf that requires grad but
    /// had no path to the output gets zeros.
    pub fn require(&self, v: &Var) -> Result<Tensor> {
        if !v.requires_grad() {
            return Err(Error::NotRequiringGrad {
                op: "Gradients::require",
                id: v.id(),
            });
        }
        match self.map.get(&v.id()) {
            Some(g) => Ok(g.clone()),
            None => Ok(v.value().zeros_like()?),
        }
    }
    /// Remove and return the gradient of `v`.
    pub fn remove(&mut self, v: &Var) -> Option<Tensor> {
        self.map.remove(&v.id())
    }
    /// Set the gradient of `v`.
    pub fn insert(&mut self, v: &Var, g: Tensor) {
        self.map.insert(v.id(), g);
    }
    /// Add `g` to the gradient stored for `id`.
    fn add_to(&mut self, id: u64, g: Tensor) -> Result<()> {
        match self.map.remove(&id) {
            Some(prev) => self.map.insert(id, prev.add(&g)?),
            None => self.map.insert(id, g),
        };
        Ok(())
    }
    /// Add every gradient of `other` into this container (gradient accumulation over backward passes).
    pub fn accumulate(&mut self, other: Gradients) -> Result<()> {
        for (id, g) in other.map {
            self.add_to(id, g)?;
        }
        Ok(())
    }
    /// Multiply every gradient by `s` (e.g. 1/N after accumulating N micro-batches).
    pub fn scale(&mut self, s: f64) -> Result<()> {
        for g in self.map.values_mut() {
            *g = g.mul_scalar(s)?;
        }
        Ok(())
    }
    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Whether no gradient is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Var {
    /// Gradients of every leaf that requires grad with respect to this scalar.
    pub fn backward(&self) -> Result<Gradients> {
        if self.value().elem_count() != 1 {
            return Err(Error::NonScalarLoss(self.shape().clone()));
        }
        self.backward_with(&self.value().ones_like()?)
    }

    /// Backward with an explicit seed gradient of the output's shape and dtype (a vector-Jacobian product).
    pub fn backward_with(&self, seed: &Tensor) -> Result<Gradients> {
        self.backward_streaming(seed, &mut |_, _| Ok(()))
    }

    /// [`Var::backward_with`], calling `on_leaf(leaf, gradient)` as soon as a leaf's gradient is
    /// complete — while the walk goes on to the layers below — so that work on finished
    /// gradients (all-reducing them across data-parallel replicas, as PyTorch DDP's hooks do)
    /// overlaps the rest of the backward pass. Leaves complete in the reverse topological order
    /// of the graph: the output layer's parameters first. An error from `on_leaf` ends the pass.
    pub fn backward_streaming(
        &self,
        seed: &Tensor,
        on_leaf: &mut dyn FnMut(&Var, &Tensor) -> Result<()>,
    ) -> Result<Gradients> {
        if !self.requires_grad() {
            return Err(Error::NoGraph);
        }
        if seed.shape() != self.shape() || seed.dtype() != self.dtype() {
            return Err(Error::SeedMismatch {
                seed: seed.shape().clone(),
                seed_dtype: seed.dtype(),
                out: self.shape().clone(),
                out_dtype: self.dtype(),
            });
        }
        let order = topo_order(self);
        let mut pending = Gradients::new();
        let mut leaves = Gradients::new();
        pending.map.insert(self.id(), seed.clone());
        for v in order.iter().rev() {
            // Taking the gradient out frees it as soon as it has been propagated.
            let Some(g) = pending.map.remove(&v.id()) else {
                continue;
            };
            let Some(node) = &v.0.node else {
                // Every consumer of a leaf comes after it in the topological order, so its
                // gradient is complete when the reverse walk reaches it.
                on_leaf(v, &g)?;
                leaves.add_to(v.id(), g)?;
                continue;
            };
            let grads = (node.backward)(&g)?;
            drop(g);
            for (input, gi) in node.inputs.iter().zip(grads) {
                if let Some(gi) = gi {
                    if input.requires_grad() {
                        pending.add_to(input.id(), gi)?;
                    }
                }
            }
        }
        Ok(leaves)
    }
}

/// Nodes reachable from `root` through inputs that require grad, inputs before outputs.
fn topo_order(root: &Var) -> Vec<Var> {
    use std::collections::HashSet;
    let mut order = Vec::new();
    let mut visited = HashSet::new();
    // (var, children pushed?) — an explicit stack instead of recursion.
    let mut stack = vec![(root.clone(), false)];
    while let Some((v, expanded)) = stack.pop() {
        if expanded {
            order.push(v);
            continue;
        }
        if !visited.insert(v.id()) {
            continue;
        }
        stack.push((v.clone(), true));
        if let Some(node) = &v.0.node {
            for input in &node.inputs {
                if input.requires_grad() && !visited.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order
}
