//! Indexing ops: gradients scatter back to the positions that were read.

use kiln_tensor::{Dim, Tensor};

use crate::{Result, Var};

impl Var {
    /// Rows (or slices along `dim`) picked by a 1-D integer `indices` tensor; repeated indices
    /// accumulate their gradients.
    pub fn index_select(&self, dim: impl Dim, indices: &Tensor) -> Result<Var> {
        let d = dim.to_index(self.rank(), "index_select")?;
        let y = self.value().index_select(d, indices)?;
        let (idx, x) = (indices.clone(), self.value().clone());
        Ok(Var::from_op("index_select", y, &[self], move |g| {
            Ok(vec![Some(x.zeros_like()?.index_add(d, &idx, g)?)])
        }))
    }
    /// `torch.gather`.
    pub fn gather(&self, dim: impl Dim, index: &Tensor) -> Result<Var> {
        let d = dim.to_index(self.rank(), "gather")?;
        let y = self.value().gather(d, index)?;
        let (idx, x) = (index.clone(), self.value().clone());
        Ok(Var::from_op("gather", y, &[self], move |g| {
            Ok(vec![Some(x.zeros_like()?.scatter_add(d, &idx, g)?)])
        }))
    }
    /// `self.scatter_add(dim, index, src)`: gradients flow to both `self` and `src`.
    pub fn scatter_add(&self, dim: impl Dim, index: &Tensor, src: &Var) -> Result<Var> {
        let d = dim.to_index(self.rank(), "scatter_add")?;
        let y = self.value().scatter_add(d, index, src.value())?;
        let idx = index.clone();
        Ok(Var::from_op("scatter_add", y, &[self, src], move |g| {
            Ok(vec![Some(g.clone()), Some(g.gather(d, &idx)?)])
        }))
    }
    /// `self.index_add(dim, index, src)`: gradients flow to both `self` and `src`.
    pub fn index_add(&self, dim: impl Dim, index: &Tensor, src: &Var) -> Result<Var> {
        let d = dim.to_index(self.rank(), "index_add")?;
        let y = self.value().index_add(d, index, src.value())?;
        let idx = index.clone();
        Ok(Var::from_op("index_add", y, &[self, src], move |g| {
            Ok(vec![Some(g.clone()), Some(g.index_select(d, &idx)?)])
        }))
    }
    /// Embedding lookup: `ids` (any shape, integer) into `weight` `[V, D]` gives `ids.shape + [D]`.
    pub fn embedding(ids: &Tensor, weight: &Var) -> Result<Var> {
        Var::embedding_padded(ids, weight, None)
    }

    /// [`Var::embedding`] with PyTorch's `padding_idx`: the forward pass returns the stored row
    /// for every id (the padding row included, as loaded), and the gradient never reaches row
    /// `padding_idx`.
    pub fn embedding_padded(ids: &Tensor, weight: &Var, padding_idx: Option<usize>) -> Result<Var> {
        let y = Tensor::embedding(ids, weight.value())?;
        let flat = ids.flatten_all()?;
        let w = weight.value().clone();
        Ok(Var::from_op("embedding", y, &[weight], move |g| {
            let [v, d] = w.dims2("embedding backward")?;
            let g2 = g.reshape([flat.elem_count(), d])?;
            let grad = w.zeros_like()?.index_add(0, &flat, &g2)?;
            Ok(vec![Some(match padding_idx {
                Some(p) if p < v => {
                    let row = Tensor::arange(0.0, v as f64, 1.0, kiln_tensor::DType::I64, w.device())?
                        .cmp_scalar(p as f64, kiln_tensor::ops::binary::CmpOp::Eq)?
                        .unsqueeze(1)?;
                    grad.masked_fill(&row, 0.0)?
                }
                _ => grad,
            })])
        }))
    }
}
