//! Collate functions for [`Pipeline::batch`](super::Pipeline::batch): how a `Vec` of elements
//! becomes one batch value.
//!
//! - [`stack`]: tensors of one shape → one tensor with a new first dimension.
//! - [`stack_examples`]: [`Example`]s → a [`Batch`] (inputs and targets stacked).
//! - [`pad`] / [`pad_vecs`]: variable-length sequences → a [`Padded`] batch, padded to the
//!   longest sequence of the batch, with the lengths and a mask.
//!
//! ```
//! use kiln_data::pipeline::{collate, Pipeline};
//! let seqs = vec![vec![1i64, 2, 3], vec![4], vec![5, 6]];
//! let batches: Vec<_> = Pipeline::from_vec(seqs)
//!     .batch(3, false, collate::pad_vecs(0i64))?
//!     .iter()?
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(batches[0].values.to_vec::<i64>()?, vec![1, 2, 3, 4, 0, 0, 5, 6, 0]);
//! assert_eq!(batches[0].lengths.to_vec::<i64>()?, vec![3, 1, 2]);
//! assert_eq!(batches[0].mask.to_vec::<u8>()?, vec![1, 1, 1, 1, 0, 0, 1, 1, 0]);
//! # Ok::<(), kiln_data::Error>(())
//! ```

use kiln_tensor::{DType, Tensor, WithDType};

use super::invalid;
use crate::{Batch, Example, Result};

/// Stack tensors of one shape and dtype along a new first dimension: `B` tensors `[...]` →
/// `[B, ...]`. Differing shapes or dtypes are an error naming the element.
pub fn stack(items: Vec<Tensor>) -> Result<Tensor> {
    let first = items
        .first()
        .ok_or_else(|| invalid("collate::stack", "an empty batch"))?;
    for (i, t) in items.iter().enumerate() {
        if t.dims() != first.dims() || t.dtype() != first.dtype() {
            return Err(invalid(
                "collate::stack",
                format!(
                    "element {i} is {} {:?}, element 0 is {} {:?}: all must have one shape and dtype",
                    t.dtype(),
                    t.dims(),
                    first.dtype(),
                    first.dims()
                ),
            ));
        }
    }
    let mut dims = Vec::with_capacity(first.rank() + 1);
    dims.push(items.len());
    dims.extend_from_slice(first.dims());
    // One copy into the output buffer (no per-element views).
    fn join<T: WithDType>(items: &[Tensor], dims: Vec<usize>) -> Result<Tensor> {
        let mut out: Vec<T> = Vec::with_capacity(dims.iter().product());
        for t in items {
            out.extend_from_slice(&t.contiguous_slice::<T>()?);
        }
        Ok(Tensor::from_vec(out, dims)?)
    }
    match first.dtype() {
        DType::U8 => join::<u8>(&items, dims),
        DType::U32 => join::<u32>(&items, dims),
        DType::I64 => join::<i64>(&items, dims),
        DType::F16 => join::<kiln_tensor::f16>(&items, dims),
        DType::BF16 => join::<kiln_tensor::bf16>(&items, dims),
        DType::F32 => join::<f32>(&items, dims),
        DType::F64 => join::<f64>(&items, dims),
    }
}

/// Stack the inputs and the targets of [`Example`]s into a [`Batch`]. Either every example has a
/// target or none has.
pub fn stack_examples(items: Vec<Example>) -> Result<Batch> {
    let labelled = items.iter().filter(|e| e.target.is_some()).count();
    if labelled != 0 && labelled != items.len() {
        return Err(invalid(
            "collate::stack_examples",
            format!(
                "{labelled} of the {} examples have a target: all or none must",
                items.len()
            ),
        ));
    }
    let mut inputs = Vec::with_capacity(items.len());
    let mut targets = Vec::with_capacity(labelled);
    for e in items {
        inputs.push(e.input);
        targets.extend(e.target);
    }
    Ok(Batch {
        inputs: stack(inputs)?,
        targets: if targets.is_empty() {
            None
        } else {
            Some(stack(targets)?)
        },
    })
}

/// A batch of variable-length sequences padded to the longest one.
#[derive(Clone, Debug)]
pub struct Padded {
    /// The sequences, `[B, L_max, ...]`, padded at the end of each sequence with the pad value.
    pub values: Tensor,
    /// The length of each sequence, `i64` `[B]`.
    pub lengths: Tensor,
    /// `u8` `[B, L_max]`: 1 at real positions, 0 at padding.
    pub mask: Tensor,
}

/// Build the lengths and mask tensors.
fn lengths_and_mask(lengths: &[usize], longest: usize) -> Result<(Tensor, Tensor)> {
    let mut mask = vec![0u8; lengths.len() * longest];
    for (row, &len) in mask.chunks_mut(longest.max(1)).zip(lengths) {
        row[..len].fill(1);
    }
    let lens: Vec<i64> = lengths.iter().map(|&l| l as i64).collect();
    Ok((
        Tensor::from_vec(lens, [lengths.len()])?,
        Tensor::from_vec(mask, [lengths.len(), longest])?,
    ))
}

/// A collate function padding `Vec<T>` sequences with `pad_value` into a [`Padded`] batch
/// (`values` `[B, L_max]` of `T`'s dtype).
pub fn pad_vecs<T: WithDType>(pad_value: T) -> impl Fn(Vec<Vec<T>>) -> Result<Padded> + Send + Sync + Clone {
    move |items: Vec<Vec<T>>| {
        if items.is_empty() {
            return Err(invalid("collate::pad_vecs", "an empty batch"));
        }
        let longest = items.iter().map(Vec::len).max().unwrap_or(0);
        let lengths: Vec<usize> = items.iter().map(Vec::len).collect();
        let mut values = Vec::with_capacity(items.len() * longest);
        for seq in &items {
            values.extend_from_slice(seq);
            values.extend(std::iter::repeat_n(pad_value, longest - seq.len()));
        }
        let (lengths, mask) = lengths_and_mask(&lengths, longest)?;
        Ok(Padded {
            values: Tensor::from_vec(values, [items.len(), longest])?,
            lengths,
            mask,
        })
    }
}

fn pad_typed<T: WithDType>(items: &[Tensor], longest: usize, inner: usize, pad: f64) -> Result<Tensor> {
    let pad = T::from_f64(pad);
    let mut out: Vec<T> = Vec::with_capacity(items.len() * longest * inner);
    for t in items {
        let v = t.contiguous_slice::<T>()?;
        out.extend_from_slice(&v);
        out.extend(std::iter::repeat_n(pad, (longest - t.dims()[0]) * inner));
    }
    let mut dims = vec![items.len(), longest];
    dims.extend_from_slice(&items[0].dims()[1..]);
    Ok(Tensor::from_vec(out, dims)?)
}

/// A collate function padding tensors `[L_i, ...]` (same trailing dimensions and dtype) along
/// their first dimension with `pad_value` (converted to the dtype) into a [`Padded`] batch
/// (`values` `[B, L_max, ...]`).
pub fn pad(pad_value: f64) -> impl Fn(Vec<Tensor>) -> Result<Padded> + Send + Sync + Clone {
    move |items: Vec<Tensor>| {
        const OP: &str = "collate::pad";
        let first = items.first().ok_or_else(|| invalid(OP, "an empty batch"))?;
        if first.rank() == 0 {
            return Err(invalid(
                OP,
                "sequences need a first (length) dimension; got a scalar",
            ));
        }
        for (i, t) in items.iter().enumerate() {
            if t.rank() == 0 || t.dims()[1..] != first.dims()[1..] || t.dtype() != first.dtype() {
                return Err(invalid(
                    OP,
                    format!(
                        "element {i} is {:?} {:?}, element 0 is {:?} {:?}: all but the first dimension and the dtype must match",
                        t.dtype(),
                        t.dims(),
                        first.dtype(),
                        first.dims()
                    ),
                ));
            }
        }
        let longest = items.iter().map(|t| t.dims()[0]).max().unwrap_or(0);
        let inner: usize = first.dims()[1..].iter().product();
        let values = match first.dtype() {
            DType::U8 => pad_typed::<u8>(&items, longest, inner, pad_value)?,
            DType::U32 => pad_typed::<u32>(&items, longest, inner, pad_value)?,
            DType::I64 => pad_typed::<i64>(&items, longest, inner, pad_value)?,
            DType::F16 => pad_typed::<kiln_tensor::f16>(&items, longest, inner, pad_value)?,
            DType::BF16 => pad_typed::<kiln_tensor::bf16>(&items, longest, inner, pad_value)?,
            DType::F32 => pad_typed::<f32>(&items, longest, inner, pad_value)?,
            DType::F64 => pad_typed::<f64>(&items, longest, inner, pad_value)?,
        };
        let lengths: Vec<usize> = items.iter().map(|t| t.dims()[0]).collect();
        let (lengths, mask) = lengths_and_mask(&lengths, longest)?;
        Ok(Padded {
            values,
            lengths,
            mask,
        })
    }
}
