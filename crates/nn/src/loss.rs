//! Loss functions with `torch.nn.functional` semantics.

use kiln_autograd::Var;
use kiln_tensor::ops::binary::CmpOp;
use kiln_tensor::{DType, Tensor};

use crate::{Error, Result};

/// How per-element losses are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The (weighted) mean.
    #[default]
    Mean,
    /// The sum.
    Sum,
    /// No reduction: one loss per sample (or element).
    None,
    /// Sum divided by the batch size (for `kl_div`, as PyTorch's `batchmean`).
    BatchMean,
}

/// Options of [`cross_entropy`] and [`nll_loss`], as in PyTorch (the default ignores targets
/// equal to -100, like PyTorch's `ignore_index=-100`).
#[derive(Clone, Debug)]
pub struct CrossEntropyOptions {
    /// Per-class weights `[C]`.
    pub weight: Option<Tensor>,
    /// Samples with this target contribute nothing (default `Some(-100)`, as in PyTorch; `None`
    /// makes every target count).
    pub ignore_index: Option<i64>,
    /// Mix the target with the uniform distribution by this amount (0 = off).
    pub label_smoothing: f64,
    /// How to combine per-sample losses.
    pub reduction: Reduction,
}

/// PyTorch's default `ignore_index`.
pub const DEFAULT_IGNORE_INDEX: i64 = -100;

impl Default for CrossEntropyOptions {
    fn default() -> Self {
        CrossEntropyOptions {
            weight: None,
            ignore_index: Some(DEFAULT_IGNORE_INDEX),
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
        }
    }
}

/// Class targets for [`cross_entropy`].
#[derive(Clone, Debug)]
pub enum Target {
    /// Integer class indices `[N]`.
    Indices(Tensor),
    /// Class probabilities `[N, C]`.
    Probs(Tensor),
}

fn reduce(per_sample: Var, reduction: Reduction, denom: f64) -> Result<Var> {
    Ok(match reduction {
        Reduction::None => per_sample,
        Reduction::Sum => per_sample.sum_all()?,
        Reduction::Mean | Reduction::BatchMean => per_sample.sum_all()?.mul_scalar(1.0 / denom)?,
    })
}

/// `F.cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction)` for
/// logits `[N, C]`.
pub fn cross_entropy(logits: &Var, target: &Target, opts: &CrossEntropyOptions) -> Result<Var> {
    let [_, c] = logits.value().dims2("cross_entropy")?;
    // The common case (plain mean over class indices, none of them ignored) takes the fused node.
    if let (Target::Indices(t), None, 0.0, Reduction::Mean) =
        (target, &opts.weight, opts.label_smoothing, opts.reduction)
    {
        let v = check_indices(t, logits.dims()[0], c, opts.ignore_index, "cross_entropy")?;
        if opts.ignore_index.is_none_or(|ig| !v.contains(&ig)) {
            return Ok(logits.log_softmax_nll(t)?);
        }
    }
    nll_impl(&logits.log_softmax(1)?, target, opts, "cross_entropy")
}

/// `F.nll_loss(log_probs, target, weight, ignore_index, reduction)` for log-probabilities `[N, C]`.
pub fn nll_loss(log_probs: &Var, target: &Tensor, opts: &CrossEntropyOptions) -> Result<Var> {
    nll_impl(log_probs, &Target::Indices(target.clone()), opts, "nll_loss")
}

fn check_indices(t: &Tensor, n: usize, c: usize, ignore: Option<i64>, op: &'static str) -> Result<Vec<i64>> {
    if t.dims() != [n] || t.dtype().is_float() {
        return Err(Error::invalid(
            op,
            format!(
                "targets must be integer class indices of shape [{n}], got {:?} {}",
                t.shape(),
                t.dtype()
            ),
        ));
    }
    let v = t.to_dtype(DType::I64)?.to_vec::<i64>()?;
    if let Some(&bad) = v
        .iter()
        .find(|&&x| Some(x) != ignore && (x < 0 || x as usize >= c))
    {
        return Err(Error::invalid(
            op,
            format!("target class {bad} is outside 0..{c}"),
        ));
    }
    Ok(v)
}

/// One formula for every option: `loss_i = -Σ_c W[i,c] · logp[i,c]`, where `W` holds the (smoothed,
/// class-weighted, ignore-masked) target distribution.
fn nll_impl(logp: &Var, target: &Target, opts: &CrossEntropyOptions, op: &'static str) -> Result<Var> {
    let [n, c] = logp.value().dims2(op)?;
    let w: Vec<f64> = match &opts.weight {
        Some(w) if w.dims() != [c] => {
            return Err(Error::invalid(
                op,
                format!("class weights have shape {:?}, expected [{c}]", w.shape()),
            ))
        }
        Some(w) => w.to_dtype(DType::F64)?.to_vec::<f64>()?,
        None => vec![1.0; c],
    };
    let eps = opts.label_smoothing;
    if !(0.0..=1.0).contains(&eps) {
        return Err(Error::invalid(
            op,
            format!("label_smoothing must be in [0, 1], got {eps}"),
        ));
    }
    let mut wm = vec![0f64; n * c];
    let denom;
    match target {
        Target::Indices(t) => {
            let t = check_indices(t, n, c, opts.ignore_index, op)?;
            let mut total = 0.0;
            for (i, &ti) in t.iter().enumerate() {
                if Some(ti) == opts.ignore_index {
                    continue;
                }
                let ti = ti as usize;
                for k in 0..c {
                    wm[i * c + k] = eps / c as f64 * w[k];
                }
                wm[i * c + ti] += (1.0 - eps) * w[ti];
                total += w[ti];
            }
            denom = total;
        }
        Target::Probs(p) => {
            if p.dims() != [n, c] {
                return Err(Error::invalid(
                    op,
                    format!(
                        "probability targets have shape {:?}, expected [{n}, {c}]",
                        p.shape()
                    ),
                ));
            }
            let p = p.to_dtype(DType::F64)?.to_vec::<f64>()?;
            for i in 0..n {
                for k in 0..c {
                    wm[i * c + k] = w[k] * ((1.0 - eps) * p[i * c + k] + eps / c as f64);
                }
            }
            denom = n as f64;
        }
    }
    let wm = Var::constant(Tensor::from_vec(wm, [n, c])?.to_dtype(logp.dtype())?);
    let per_sample = logp.mul(&wm)?.sum(1, false)?.neg()?;
    reduce(per_sample, opts.reduction, denom)
}

/// `F.binary_cross_entropy_with_logits(x, y)`, computed stably:
/// `max(x, 0) - x·y + log(1 + exp(-|x|))`.
pub fn binary_cross_entropy_with_logits(logits: &Var, target: &Tensor, reduction: Reduction) -> Result<Var> {
    same_shape(logits, target, "binary_cross_entropy_with_logits")?;
    let y = Var::constant(target.clone());
    let soft = logits.abs()?.neg()?.exp()?.add_scalar(1.0)?.log()?;
    let per = logits.relu()?.sub(&logits.mul(&y)?)?.add(&soft)?;
    let n = per.value().elem_count() as f64;
    reduce(per, reduction, n)
}

fn same_shape(x: &Var, t: &Tensor, op: &'static str) -> Result<()> {
    if x.shape() != t.shape() {
        return Err(Error::invalid(
            op,
            format!(
                "input {:?} and target {:?} must have the same shape",
                x.shape(),
                t.shape()
            ),
        ));
    }
    Ok(())
}

/// `F.mse_loss`.
pub fn mse_loss(x: &Var, target: &Tensor, reduction: Reduction) -> Result<Var> {
    same_shape(x, target, "mse_loss")?;
    let per = x.sub(&Var::constant(target.clone()))?.sqr()?;
    let n = per.value().elem_count() as f64;
    reduce(per, reduction, n)
}

/// `F.l1_loss`.
pub fn l1_loss(x: &Var, target: &Tensor, reduction: Reduction) -> Result<Var> {
    same_shape(x, target, "l1_loss")?;
    let per = x.sub(&Var::constant(target.clone()))?.abs()?;
    let n = per.value().elem_count() as f64;
    reduce(per, reduction, n)
}

/// `F.smooth_l1_loss(beta)`: `0.5 d²/β` where `|d| < β`, else `|d| - β/2`.
pub fn smooth_l1_loss(x: &Var, target: &Tensor, beta: f64, reduction: Reduction) -> Result<Var> {
    same_shape(x, target, "smooth_l1_loss")?;
    if beta <= 0.0 {
        return l1_loss(x, target, reduction);
    }
    let d = x.sub(&Var::constant(target.clone()))?;
    let small = d.value().abs()?.cmp_scalar(beta, CmpOp::Lt)?;
    let quad = d.sqr()?.mul_scalar(0.5 / beta)?;
    let lin = d.abs()?.add_scalar(-0.5 * beta)?;
    let per = Var::where_cond(&small, &quad, &lin)?;
    let n = per.value().elem_count() as f64;
    reduce(per, reduction, n)
}

/// `F.kl_div(input, target, reduction, log_target=false)`: `input` holds log-probabilities,
/// `target` probabilities; elements with `target == 0` contribute 0.
pub fn kl_div(log_input: &Var, target: &Tensor, reduction: Reduction) -> Result<Var> {
    same_shape(log_input, target, "kl_div")?;
    let zero = target.cmp_scalar(0.0, CmpOp::Le)?;
    // t·log t with the 0·log 0 = 0 convention, a constant.
    let safe_t = target.masked_fill(&zero, 1.0)?;
    let tlogt = target.mul(&safe_t.log()?)?;
    let per = Var::constant(tlogt).sub(&log_input.mul(&Var::constant(target.clone()))?)?;
    let n = match reduction {
        Reduction::BatchMean => log_input.dims().first().copied().unwrap_or(1) as f64,
        _ => per.value().elem_count() as f64,
    };
    reduce(per, reduction, n)
}
