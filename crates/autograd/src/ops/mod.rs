//! Differentiable ops on [`Var`](crate::Var). Each op's forward call and backward formula sit
//! side by side; backward formulas are written with tensor ops so they run on any device.

mod binary;
mod conv;
mod fused;
mod index;
mod matmul;
mod reduce;
mod shape;
mod unary;

use kiln_tensor::{Shape, Tensor};

use crate::Result;

/// Sum a broadcast gradient back down to `shape` (the inverse of broadcasting).
pub fn sum_to_shape(g: &Tensor, shape: &Shape) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let lead = g.rank() - shape.rank();
    let mut axes: Vec<usize> = (0..lead).collect();
    for (i, &d) in shape.dims().iter().enumerate() {
        if d == 1 && g.dims()[lead + i] != 1 {
            axes.push(lead + i);
        }
    }
    let summed = if axes.is_empty() {
        g.clone()
    } else {
        g.sum(axes, true)?
    };
    Ok(summed.reshape(shape.clone())?)
}
