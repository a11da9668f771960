//! [`Var`]: a tensor plus the record of how it was made.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use kiln_tensor::{DType, Shape, Tensor};

use crate::{is_grad_enabled, Result};

/// The backward formula of one recorded op: maps the gradient of the output to one optional
/// gradient per input (`None` where an input gets no gradient, e.g. an integer index).
pub type BackwardFn = Box<dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// How a non-leaf value was made: the op, its inputs and its backward formula.
pub(crate) struct Node {
    pub(crate) op: &'static str,
    pub(crate) inputs: Vec<Var>,
    pub(crate) backward: BackwardFn,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static LIVE_NODES: AtomicUsize = AtomicUsize::new(0);

/// Number of recorded graph nodes alive in this process (for leak tests).
pub fn live_graph_nodes() -> usize {
    LIVE_NODES.load(Ordering::Relaxed)
}

impl Node {
    fn new(op: &'static str, inputs: Vec<Var>, backward: BackwardFn) -> Node {
        LIVE_NODES.fetch_add(1, Ordering::Relaxed);
        Node { op, inputs, backward }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        LIVE_NODES.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct VarInner {
    pub(crate) id: u64,
    pub(crate) value: Tensor,
    pub(crate) requires_grad: bool,
    pub(crate) node: Option<Node>,
}

impl Drop for VarInner {
    // Free the graph iteratively: dropping a long chain (an unrolled LSTM, a deep GPT) through
    // nested `Arc` drops would recurse once per node and overflow the stack.
    fn drop(&mut self) {
        let Some(mut node) = self.node.take() else { return };
        let mut stack = std::mem::take(&mut node.inputs);
        drop(node);
        while let Some(v) = stack.pop() {
            if let Ok(mut inner) = Arc::try_unwrap(v.0) {
                if let Some(mut n) = inner.node.take() {
                    stack.append(&mut n.inputs);
                }
            }
        }
    }
}

/// A differentiable value: a [`Tensor`] and, when it was computed from values that require grad
/// while recording was on, the op that made it.
///
/// Leaves are made with [`Var::parameter`] (requires grad) or [`Var::constant`]. Cloning is cheap.
#[derive(Clone)]
pub struct Var(pub(crate) Arc<VarInner>);

impl Var {
    fn make(value: Tensor, requires_grad: bool, node: Option<Node>) -> Var {
        Var(Arc::new(VarInner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            value,
            requires_grad,
            node,
        }))
    }

    /// A leaf that requires grad (a trainable parameter or an input to differentiate by).
    pub fn parameter(value: Tensor) -> Var {
        Self::make(value, true, None)
    }
    /// A leaf that does not require grad (data, targets, masks).
    pub fn constant(value: Tensor) -> Var {
        Self::make(value, false, None)
    }
    /// A leaf with the given `requires_grad` flag.
    pub fn leaf(value: Tensor, requires_grad: bool) -> Var {
        Self::make(value, requires_grad, None)
    }

    /// Record the result of an op. `backward` maps the output gradient to one gradient per input.
    /// Nothing is recorded under `no_grad` or when no input requires grad.
    pub fn from_op(
        op: &'static str,
        value: Tensor,
        inputs: &[&Var],
        backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    ) -> Var {
        if is_grad_enabled() && inputs.iter().any(|v| v.requires_grad()) {
            let node = Node::new(
                op,
                inputs.iter().map(|&v| v.clone()).collect(),
                Box::new(backward),
            );
            Self::make(value, true, Some(node))
        } else {
            Self::make(value, false, None)
        }
    }

    /// Whether a recorded op would produce a graph node for these inputs (lets ops skip work
    /// that only the backward pass needs).
    pub fn records(inputs: &[&Var]) -> bool {
        is_grad_enabled() && inputs.iter().any(|v| v.requires_grad())
    }

    /// The value.
    pub fn value(&self) -> &Tensor {
        &self.0.value
    }
    /// A unique id (the key of [`Gradients`](crate::Gradients)).
    pub fn id(&self) -> u64 {
        self.0.id
    }
    /// Whether gradients flow into this value.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }
    /// Whether this is a leaf (not made by a recorded op).
    pub fn is_leaf(&self) -> bool {
        self.0.node.is_none()
    }
    /// The name of the op that made this value, if recorded.
    pub fn op_name(&self) -> Option<&'static str> {
        self.0.node.as_ref().map(|n| n.op)
    }
    /// A new leaf with the same value that is cut from the graph and requires no grad.
    pub fn detach(&self) -> Var {
        Var::constant(self.0.value.clone())
    }
    /// The shape of the value.
    pub fn shape(&self) -> &Shape {
        self.0.value.shape()
    }
    /// The dimension sizes of the value.
    pub fn dims(&self) -> &[usize] {
        self.0.value.dims()
    }
    /// The rank of the value.
    pub fn rank(&self) -> usize {
        self.0.value.rank()
    }
    /// The dtype of the value.
    pub fn dtype(&self) -> DType {
        self.0.value.dtype()
    }
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Var#{}({:?}, requires_grad={}, op={:?})",
            self.id(),
            self.value(),
            self.requires_grad(),
            self.op_name()
        )
    }
}
