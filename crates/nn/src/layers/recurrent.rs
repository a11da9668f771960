//! Recurrent layers with PyTorch's semantics, parameter names and initialisation: [`Lstm`] and
//! [`Gru`] (multi-layer, bidirectional, `batch_first`, dropout between layers) and the single-step
//! [`LstmCell`] and [`GruCell`].
//!
//! Each layer and direction computes its input projection for all time steps with one matrix
//! product, then runs the recurrence as one fused graph node ([`lstm_recurrence`],
//! [`gru_recurrence`]) whose backward is backpropagation through time. A sequence of any length
//! therefore adds a handful of graph nodes, not a chain per time step.
//!
//! Gate layouts follow PyTorch: the LSTM stacks `[i, f, g, o]` along the first dimension of
//! `weight_ih_l{k}` (`[4H, in]`) and `weight_hh_l{k}` (`[4H, H]`); the GRU stacks `[r, z, n]`.
//! Keras stores the transposes (`kernel` `[in, 4H]`, `recurrent_kernel` `[H, 4H]`, gate order
//! `i, f, c, o`, the same as PyTorch's) and one bias: load it as `bias_ih` with a zero `bias_hh`.

use kiln_autograd::{Param, Var};
use kiln_tensor::Tensor;

use crate::layers::Dropout;
use crate::{Error, Init, Module, Result, Scope};

/// Constructor arguments shared by [`Lstm`] and [`Gru`], as those of `nn.LSTM` / `nn.GRU`.
///
/// ```
/// use kiln_nn::layers::RnnConfig;
/// let cfg = RnnConfig::new(100, 128).num_layers(2).bidirectional(true).batch_first(true);
/// assert_eq!((cfg.input_size, cfg.hidden_size, cfg.num_layers), (100, 128, 2));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RnnConfig {
    /// Features of the input at each time step.
    pub input_size: usize,
    /// Features of the hidden state `H`.
    pub hidden_size: usize,
    /// Stacked layers (default 1).
    pub num_layers: usize,
    /// Whether the layers have `bias_ih` / `bias_hh` (default true).
    pub bias: bool,
    /// Input and output are `[B, T, F]` instead of `[T, B, F]` (default false, as PyTorch). The
    /// states `h_0` / `h_n` are `[layers * directions, B, H]` either way.
    pub batch_first: bool,
    /// Dropout probability on the outputs of every layer but the last, in training mode only
    /// (default 0).
    pub dropout: f64,
    /// Run a second, reversed direction per layer and concatenate both outputs (default false).
    pub bidirectional: bool,
}

impl RnnConfig {
    /// One unidirectional layer with bias, time-major, no dropout.
    pub fn new(input_size: usize, hidden_size: usize) -> RnnConfig {
        RnnConfig {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            bidirectional: false,
        }
    }
    /// Set [`RnnConfig::num_layers`].
    pub fn num_layers(mut self, n: usize) -> Self {
        self.num_layers = n;
        self
    }
    /// Set [`RnnConfig::bias`].
    pub fn bias(mut self, on: bool) -> Self {
        self.bias = on;
        self
    }
    /// Set [`RnnConfig::batch_first`].
    pub fn batch_first(mut self, on: bool) -> Self {
        self.batch_first = on;
        self
    }
    /// Set [`RnnConfig::dropout`].
    pub fn dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }
    /// Set [`RnnConfig::bidirectional`].
    pub fn bidirectional(mut self, on: bool) -> Self {
        self.bidirectional = on;
        self
    }
    /// Number of directions: 2 when bidirectional, else 1.
    pub fn num_directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    fn validate(&self, op: &'static str) -> Result<()> {
        if self.input_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "input_size ({}), hidden_size ({}) and num_layers ({}) must all be > 0",
                    self.input_size, self.hidden_size, self.num_layers
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(
                op,
                format!("dropout must be in [0, 1), got {}", self.dropout),
            ));
        }
        Ok(())
    }
}

/// The parameters of one layer and direction (or of a cell).
struct RnnWeights {
    w_ih: Param,
    w_hh: Param,
    b_ih: Option<Param>,
    b_hh: Option<Param>,
}

impl RnnWeights {
    /// `weight_ih{suffix}` `[gates*H, in]`, `weight_hh{suffix}` `[gates*H, H]` and the biases,
    /// all U(±1/√H) as PyTorch's `reset_parameters`.
    fn new(
        scope: &Scope,
        suffix: &str,
        gates: usize,
        input: usize,
        hidden: usize,
        bias: bool,
    ) -> Result<Self> {
        let bound = 1.0 / (hidden as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            hi: bound,
        };
        let w_ih = scope.param(&format!("weight_ih{suffix}"), [gates * hidden, input], init)?;
        let w_hh = scope.param(&format!("weight_hh{suffix}"), [gates * hidden, hidden], init)?;
        let (b_ih, b_hh) = if bias {
            (
                Some(scope.param(&format!("bias_ih{suffix}"), [gates * hidden], init)?),
                Some(scope.param(&format!("bias_hh{suffix}"), [gates * hidden], init)?),
            )
        } else {
            (None, None)
        };
        Ok(RnnWeights {
            w_ih,
            w_hh,
            b_ih,
            b_hh,
        })
    }

    fn params(&self) -> Vec<Param> {
        [
            Some(&self.w_ih),
            Some(&self.w_hh),
            self.b_ih.as_ref(),
            self.b_hh.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// `x W_ihᵀ (+ b_ih) (+ b_hh)` for `x` `[T, B, in]`, in one matrix product: `[T, B, gates*H]`.
    fn input_projection(&self, x: &Var, with_b_hh: bool) -> Result<Var> {
        let (t, b, i) = (x.dims()[0], x.dims()[1], x.dims()[2]);
        let mut xp = x.reshape([t * b, i])?.matmul(&self.w_ih.var().t()?)?;
        let bias = match (&self.b_ih, &self.b_hh, with_b_hh) {
            (Some(bi), Some(bh), true) => Some(bi.var().add(&bh.var())?),
            (Some(bi), _, _) => Some(bi.var()),
            _ => None,
        };
        if let Some(bias) = bias {
            xp = xp.add(&bias)?;
        }
        let g = xp.dims()[1];
        Ok(xp.reshape([t, b, g])?)
    }
}

fn dims3(v: &Var, op: &'static str, what: &str) -> Result<[usize; 3]> {
    match *v.dims() {
        [a, b, c] => Ok([a, b, c]),
        _ => Err(Error::invalid(
            op,
            format!("{what} must be 3-D, got {:?}", v.shape()),
        )),
    }
}

fn check_shape(v: &Var, expected: &[usize], op: &'static str, what: &str) -> Result<()> {
    if v.dims() != expected {
        return Err(Error::invalid(
            op,
            format!("{what} must have shape {expected:?}, got {:?}", v.shape()),
        ));
    }
    Ok(())
}

/// `1 - x`.
fn one_minus(x: &Tensor) -> kiln_tensor::Result<Tensor> {
    x.affine(-1.0, 1.0)
}

/// `σ'(a)` from `s = σ(a)`: `s (1 - s)`.
fn dsigmoid(s: &Tensor) -> kiln_tensor::Result<Tensor> {
    s.mul(&one_minus(s)?)
}

/// `tanh'(a)` from `t = tanh(a)`: `1 - t²`.
fn dtanh(t: &Tensor) -> kiln_tensor::Result<Tensor> {
    one_minus(&t.sqr()?)
}

/// Time index of processing step `s` of `t_len`.
fn time_index(s: usize, t_len: usize, reverse: bool) -> usize {
    if reverse {
        t_len - 1 - s
    } else {
        s
    }
}

/// What one LSTM step saves for the backward pass.
struct LstmStep {
    /// The activated gates `σ(i), σ(f), tanh(g), σ(o)`, `[B, 4H]`.
    act: Tensor,
    tanh_c: Tensor,
    c_prev: Tensor,
    h_prev: Tensor,
}

/// The LSTM recurrence over a whole sequence as one graph node (PyTorch's equations):
///
/// ```text
/// [i, f, g, o] = xp_t + h_{t-1} W_hhᵀ        (xp: the input projection plus both biases)
/// c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ tanh(g)
/// h_t = σ(o) ⊙ tanh(c_t)
/// ```
///
/// `xp` is `[T, B, 4H]`, `w_hh` `[4H, H]`, `h0` and `c0` `[B, H]`; `reverse` runs from `t = T-1`
/// down to 0. Returns `[T, B, 2H]`: `h_t` in the first `H` features and `c_t` in the last `H`,
/// stored at each step's own time index. Its backward is backpropagation through time.
pub fn lstm_recurrence(xp: &Var, w_hh: &Var, h0: &Var, c0: &Var, reverse: bool) -> Result<Var> {
    const OP: &str = "lstm_recurrence";
    let [t_len, b, g4] = dims3(xp, OP, "the input projection xp")?;
    let hid = g4 / 4;
    if g4 == 0 || g4 % 4 != 0 || t_len == 0 {
        return Err(Error::invalid(
            OP,
            format!("xp must be [T > 0, B, 4H] with H > 0, got {:?}", xp.shape()),
        ));
    }
    check_shape(w_hh, &[g4, hid], OP, "w_hh")?;
    check_shape(h0, &[b, hid], OP, "h0")?;
    check_shape(c0, &[b, hid], OP, "c0")?;
    let record = Var::records(&[xp, w_hh, h0, c0]);
    let whh = w_hh.value().clone();
    // Packed once for the T products of the recurrence (and once more, untransposed, for
    // backpropagation through time).
    let whh_t = RecurrentWeight::new(whh.t()?, b, t_len)?;
    let xpv = xp.value();
    let (mut h, mut c) = (h0.value().clone(), c0.value().clone());
    let mut steps = Vec::with_capacity(if record { t_len } else { 0 });
    let mut outs: Vec<Tensor> = Vec::with_capacity(t_len);
    for s in 0..t_len {
        let t = time_index(s, t_len, reverse);
        let gates = xpv.narrow(0, t, 1)?.squeeze(0)?.add(&whh_t.times(&h)?)?;
        let (act, c_new, tanh_c, h_new) = super::lstm_cell_math::forward(&gates, &c)?;
        outs.push(Tensor::cat(&[h_new.clone(), c_new.clone()], 1)?);
        if record {
            steps.push(LstmStep {
                act,
                tanh_c,
                c_prev: c,
                h_prev: h,
            });
        }
        h = h_new;
        c = c_new;
    }
    if reverse {
        outs.reverse();
    }
    let y = Tensor::stack(&outs, 0)?;
    drop(outs);
    drop(whh_t);
    Ok(Var::from_op(OP, y, &[xp, w_hh, h0, c0], move |grad| {
        let whh = RecurrentWeight::new(whh.clone(), b, t_len)?;
        let (dt, dev) = (grad.dtype(), grad.device());
        let mut dh = Tensor::zeros([b, hid], dt, dev)?;
        let mut dc = Tensor::zeros([b, hid], dt, dev)?;
        let mut dgates_proc = Vec::with_capacity(t_len);
        for s in (0..t_len).rev() {
            let t = time_index(s, t_len, reverse);
            let st = &steps[s];
            let g_t = grad.narrow(0, t, 1)?.squeeze(0)?;
            let dh_tot = g_t.narrow(1, 0, hid)?.add(&dh)?;
            let dc_in = g_t.narrow(1, hid, hid)?.add(&dc)?;
            let (dgates, dc_prev) =
                super::lstm_cell_math::backward(&dh_tot, &dc_in, &st.act, &st.tanh_c, &st.c_prev)?;
            dh = whh.times(&dgates)?;
            dc = dc_prev;
            dgates_proc.push(dgates);
        }
        // dgates_proc runs from the last processing step to the first.
        dgates_proc.reverse();
        let h_prev: Vec<Tensor> = steps.iter().map(|st| st.h_prev.clone()).collect();
        let dg_all = Tensor::stack(&dgates_proc, 0)?.reshape([t_len * b, g4])?;
        let h_all = Tensor::stack(&h_prev, 0)?.reshape([t_len * b, hid])?;
        let dwhh = dg_all.t()?.matmul(&h_all)?;
        let mut dxp_steps = dgates_proc;
        if reverse {
            dxp_steps.reverse();
        }
        let dxp = Tensor::stack(&dxp_steps, 0)?;
        Ok(vec![Some(dxp), Some(dwhh), Some(dh), Some(dc)])
    }))
}

/// The right operand of a recurrence's `T` products of `B` rows each (`h W_hhᵀ` forward,
/// `dgates W_hh` backward): packed for the GEMM once when there are several products of at
/// least 12 rows, so each step skips the packing (LSTM 1x256 at batch 32: the per-step products
/// otherwise fall below the size where packing per call pays); as given otherwise (generation
/// one token at a time).
enum RecurrentWeight {
    Packed(kiln_tensor::PackedRhs),
    Plain(Tensor),
}

impl RecurrentWeight {
    fn new(w: Tensor, rows: usize, products: usize) -> kiln_tensor::Result<RecurrentWeight> {
        Ok(if products > 1 && rows >= 12 {
            RecurrentWeight::Packed(w.pack_rhs()?)
        } else {
            RecurrentWeight::Plain(w)
        })
    }

    /// `lhs @ w`.
    fn times(&self, lhs: &Tensor) -> kiln_tensor::Result<Tensor> {
        match self {
            RecurrentWeight::Packed(p) => lhs.matmul_packed(p, None),
            RecurrentWeight::Plain(w) => lhs.matmul(w),
        }
    }
}

/// What one GRU step saves for the backward pass.
struct GruStep {
    r: Tensor,
    z: Tensor,
    n: Tensor,
    hn: Tensor,
    h_prev: Tensor,
}

/// The GRU recurrence over a whole sequence as one graph node (PyTorch's equations):
///
/// ```text
/// [x_r, x_z, x_n] = xp_t                      (xp: the input projection plus b_ih)
/// [h_r, h_z, h_n] = h_{t-1} W_hhᵀ + b_hh
/// r = σ(x_r + h_r),  z = σ(x_z + h_z),  n = tanh(x_n + r ⊙ h_n)
/// h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
/// ```
///
/// `xp` is `[T, B, 3H]`, `w_hh` `[3H, H]`, `b_hh` `[3H]` (optional), `h0` `[B, H]`; `reverse` runs
/// from `t = T-1` down to 0. Returns the hidden states `[T, B, H]` at their own time indices.
pub fn gru_recurrence(xp: &Var, w_hh: &Var, b_hh: Option<&Var>, h0: &Var, reverse: bool) -> Result<Var> {
    const OP: &str = "gru_recurrence";
    let [t_len, b, g3] = dims3(xp, OP, "the input projection xp")?;
    let hid = g3 / 3;
    if g3 == 0 || g3 % 3 != 0 || t_len == 0 {
        return Err(Error::invalid(
            OP,
            format!("xp must be [T > 0, B, 3H] with H > 0, got {:?}", xp.shape()),
        ));
    }
    check_shape(w_hh, &[g3, hid], OP, "w_hh")?;
    if let Some(bh) = b_hh {
        check_shape(bh, &[g3], OP, "b_hh")?;
    }
    check_shape(h0, &[b, hid], OP, "h0")?;
    let mut inputs: Vec<&Var> = vec![xp, w_hh, h0];
    inputs.extend(b_hh);
    let record = Var::records(&inputs);
    let whh = w_hh.value().clone();
    // Packed once for the T products of the recurrence (as in `lstm_recurrence`).
    let whh_t = RecurrentWeight::new(whh.t()?, b, t_len)?;
    let bhh = b_hh.map(|v| v.value().clone());
    let xpv = xp.value();
    let mut h = h0.value().clone();
    let mut steps = Vec::with_capacity(if record { t_len } else { 0 });
    let mut outs: Vec<Tensor> = Vec::with_capacity(t_len);
    for s in 0..t_len {
        let t = time_index(s, t_len, reverse);
        let x_t = xpv.narrow(0, t, 1)?.squeeze(0)?;
        let mut hp = whh_t.times(&h)?;
        if let Some(bh) = &bhh {
            hp = hp.add(bh)?;
        }
        let r = x_t.narrow(1, 0, hid)?.add(&hp.narrow(1, 0, hid)?)?.sigmoid()?;
        let z = x_t
            .narrow(1, hid, hid)?
            .add(&hp.narrow(1, hid, hid)?)?
            .sigmoid()?;
        let hn = hp.narrow(1, 2 * hid, hid)?;
        let n = x_t.narrow(1, 2 * hid, hid)?.add(&r.mul(&hn)?)?.tanh()?;
        // h' = n + z (h - n)
        let h_new = n.add(&z.mul(&h.sub(&n)?)?)?;
        outs.push(h_new.clone());
        if record {
            steps.push(GruStep {
                r,
                z,
                n,
                hn,
                h_prev: h,
            });
        }
        h = h_new;
    }
    if reverse {
        outs.reverse();
    }
    let y = Tensor::stack(&outs, 0)?;
    drop(outs);
    let has_bias = b_hh.is_some();
    drop(whh_t);
    Ok(Var::from_op(OP, y, &inputs, move |grad| {
        let whh = RecurrentWeight::new(whh.clone(), b, t_len)?;
        let (dt, dev) = (grad.dtype(), grad.device());
        let mut dh = Tensor::zeros([b, hid], dt, dev)?;
        let mut dxp_proc = Vec::with_capacity(t_len);
        let mut dhp_proc = Vec::with_capacity(t_len);
        for s in (0..t_len).rev() {
            let t = time_index(s, t_len, reverse);
            let st = &steps[s];
            let dh_tot = grad.narrow(0, t, 1)?.squeeze(0)?.add(&dh)?;
            let dn = dh_tot.mul(&one_minus(&st.z)?)?;
            let dz = dh_tot.mul(&st.h_prev.sub(&st.n)?)?;
            let dan = dn.mul(&dtanh(&st.n)?)?;
            let dar = dan.mul(&st.hn)?.mul(&dsigmoid(&st.r)?)?;
            let daz = dz.mul(&dsigmoid(&st.z)?)?;
            let dhp = Tensor::cat(&[dar.clone(), daz.clone(), dan.mul(&st.r)?], 1)?;
            dh = whh.times(&dhp)?.add(&dh_tot.mul(&st.z)?)?;
            dxp_proc.push(Tensor::cat(&[dar, daz, dan], 1)?);
            dhp_proc.push(dhp);
        }
        dxp_proc.reverse();
        dhp_proc.reverse();
        let h_prev: Vec<Tensor> = steps.iter().map(|st| st.h_prev.clone()).collect();
        let dhp_all = Tensor::stack(&dhp_proc, 0)?.reshape([t_len * b, g3])?;
        let h_all = Tensor::stack(&h_prev, 0)?.reshape([t_len * b, hid])?;
        let dwhh = dhp_all.t()?.matmul(&h_all)?;
        if reverse {
            dxp_proc.reverse();
        }
        let dxp = Tensor::stack(&dxp_proc, 0)?;
        let mut grads = vec![Some(dxp), Some(dwhh), Some(dh)];
        if has_bias {
            grads.push(Some(dhp_all.sum(0, false)?));
        }
        Ok(grads)
    }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lstm,
    Gru,
}

impl Kind {
    fn gates(self) -> usize {
        match self {
            Kind::Lstm => 4,
            Kind::Gru => 3,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Lstm => "Lstm",
            Kind::Gru => "Gru",
        }
    }
}

/// The shared multi-layer, multi-direction driver of [`Lstm`] and [`Gru`].
struct Rnn {
    cfg: RnnConfig,
    kind: Kind,
    /// Index `layer * directions + direction`.
    weights: Vec<RnnWeights>,
    dropout: Option<Dropout>,
}

impl Rnn {
    fn new(scope: Scope, cfg: RnnConfig, kind: Kind) -> Result<Rnn> {
        cfg.validate(kind.name())?;
        let dirs = cfg.num_directions();
        let mut weights = Vec::with_capacity(cfg.num_layers * dirs);
        for layer in 0..cfg.num_layers {
            let input = if layer == 0 {
                cfg.input_size
            } else {
                cfg.hidden_size * dirs
            };
            for dir in 0..dirs {
                let suffix = format!("_l{layer}{}", if dir == 1 { "_reverse" } else { "" });
                weights.push(RnnWeights::new(
                    &scope,
                    &suffix,
                    kind.gates(),
                    input,
                    cfg.hidden_size,
                    cfg.bias,
                )?);
            }
        }
        let dropout = if cfg.dropout > 0.0 && cfg.num_layers > 1 {
            Some(Dropout::new(cfg.dropout, scope.next_seed())?)
        } else {
            None
        };
        Ok(Rnn {
            cfg,
            kind,
            weights,
            dropout,
        })
    }

    fn parameters(&self) -> Vec<Param> {
        self.weights.iter().flat_map(|w| w.params()).collect()
    }

    /// The input as `[T, B, in]`, and whether it was unbatched (`[T, in]`).
    fn time_major(&self, x: &Var) -> Result<(Var, bool)> {
        let op = self.kind.name();
        let (xt, unbatched) = match x.rank() {
            2 => (x.unsqueeze(1)?, true),
            3 if self.cfg.batch_first => (x.transpose(0, 1)?, false),
            3 => (x.clone(), false),
            _ => {
                return Err(Error::invalid(
                    op,
                    format!(
                        "input must be [T, B, {in}], [B, T, {in}] (batch_first) or unbatched [T, {in}], got {:?}",
                        x.shape(),
                        in = self.cfg.input_size
                    ),
                ))
            }
        };
        let d = xt.dims();
        if d[2] != self.cfg.input_size || d[0] == 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "input {:?} must have a non-empty time dimension and input_size = {} features",
                    x.shape(),
                    self.cfg.input_size
                ),
            ));
        }
        Ok((xt, unbatched))
    }

    /// An initial state `[L*D, B, H]` (or `[L*D, H]` unbatched) checked and lifted to 3-D, or zeros.
    fn initial_state(
        &self,
        s: Option<&Var>,
        batch: usize,
        unbatched: bool,
        like: &Var,
        what: &str,
    ) -> Result<Var> {
        let n = self.cfg.num_layers * self.cfg.num_directions();
        let h = self.cfg.hidden_size;
        match s {
            None => Ok(Var::constant(Tensor::zeros(
                [n, batch, h],
                like.dtype(),
                like.value().device(),
            )?)),
            Some(s) => {
                let expected: Vec<usize> = if unbatched { vec![n, h] } else { vec![n, batch, h] };
                if s.dims() != expected.as_slice() {
                    return Err(Error::invalid(
                        self.kind.name(),
                        format!(
                            "{what} must have shape {expected:?} (layers * directions, batch, hidden), got {:?}",
                            s.shape()
                        ),
                    ));
                }
                if unbatched {
                    Ok(s.unsqueeze(1)?)
                } else {
                    Ok(s.clone())
                }
            }
        }
    }

    /// Run every layer. Returns the output in the caller's layout and the final states
    /// `[L*D, B, H]` (`h_n`, and `c_n` for the LSTM).
    fn run(&self, x: &Var, h0: Option<&Var>, c0: Option<&Var>) -> Result<(Var, Var, Option<Var>)> {
        let (xt, unbatched) = self.time_major(x)?;
        let (t_len, batch) = (xt.dims()[0], xt.dims()[1]);
        let hid = self.cfg.hidden_size;
        let dirs = self.cfg.num_directions();
        let h0 = self.initial_state(h0, batch, unbatched, x, "h_0")?;
        let c0 = match self.kind {
            Kind::Lstm => Some(self.initial_state(c0, batch, unbatched, x, "c_0")?),
            Kind::Gru => None,
        };
        let mut layer_in = xt;
        let (mut h_n, mut c_n) = (Vec::new(), Vec::new());
        for layer in 0..self.cfg.num_layers {
            if layer > 0 {
                if let Some(d) = &self.dropout {
                    layer_in = d.forward(&layer_in)?;
                }
            }
            let mut outs = Vec::with_capacity(dirs);
            for dir in 0..dirs {
                let k = layer * dirs + dir;
                let w = &self.weights[k];
                let reverse = dir == 1;
                let last_t = if reverse { 0 } else { t_len - 1 };
                let h_init = h0.narrow(0, k, 1)?.squeeze(0)?;
                match (self.kind, &c0) {
                    (Kind::Lstm, Some(c0)) => {
                        let c_init = c0.narrow(0, k, 1)?.squeeze(0)?;
                        let xp = w.input_projection(&layer_in, true)?;
                        let y = lstm_recurrence(&xp, &w.w_hh.var(), &h_init, &c_init, reverse)?;
                        let last = y.narrow(0, last_t, 1)?;
                        h_n.push(last.narrow(2, 0, hid)?);
                        c_n.push(last.narrow(2, hid, hid)?);
                        outs.push(y.narrow(2, 0, hid)?);
                    }
                    _ => {
                        let xp = w.input_projection(&layer_in, false)?;
                        let b_hh = w.b_hh.as_ref().map(|b| b.var());
                        let y = gru_recurrence(&xp, &w.w_hh.var(), b_hh.as_ref(), &h_init, reverse)?;
                        h_n.push(y.narrow(0, last_t, 1)?);
                        outs.push(y);
                    }
                }
            }
            layer_in = if outs.len() == 1 {
                outs.pop().unwrap_or(layer_in)
            } else {
                Var::cat(&outs, 2)?
            };
        }
        let finish_state = |v: Vec<Var>| -> Result<Var> {
            let s = Var::cat(&v, 0)?;
            Ok(if unbatched { s.squeeze(1)? } else { s })
        };
        let h_n = finish_state(h_n)?;
        let c_n = match self.kind {
            Kind::Lstm => Some(finish_state(c_n)?),
            Kind::Gru => None,
        };
        let out = if unbatched {
            layer_in.squeeze(1)?
        } else if self.cfg.batch_first {
            layer_in.transpose(0, 1)?
        } else {
            layer_in
        };
        Ok((out, h_n, c_n))
    }

    fn set_training(&self, training: bool) {
        if let Some(d) = &self.dropout {
            d.set_training(training);
        }
    }
}

/// `nn.LSTM`: a multi-layer long short-term memory network.
///
/// Parameters (PyTorch names): `weight_ih_l{k}` `[4H, in_k]`, `weight_hh_l{k}` `[4H, H]`,
/// `bias_ih_l{k}` and `bias_hh_l{k}` `[4H]`, gate order `i, f, g, o`, plus the same with a
/// `_reverse` suffix for the backward direction; `in_0 = input_size`, `in_k = H * directions`.
/// All are initialised U(±1/√H).
///
/// ```
/// use kiln_nn::layers::{Lstm, RnnConfig};
/// use kiln_nn::{Scope, Var};
/// use kiln_tensor::{DType, Device, Tensor};
/// let lstm = Lstm::new(Scope::init(0, DType::F32, Device::Cpu), RnnConfig::new(3, 5).batch_first(true))?;
/// let x = Var::constant(Tensor::ones([2, 7, 3], DType::F32, Device::Cpu)?);
/// let (out, (h_n, c_n)) = lstm.forward_with_state(&x, None)?;
/// assert_eq!((out.dims(), h_n.dims(), c_n.dims()), (&[2, 7, 5][..], &[1, 2, 5][..], &[1, 2, 5][..]));
/// # Ok::<(), kiln_nn::Error>(())
/// ```
pub struct Lstm {
    rnn: Rnn,
}

impl Lstm {
    /// An LSTM with parameters from `scope`.
    pub fn new(scope: Scope, cfg: RnnConfig) -> Result<Lstm> {
        Ok(Lstm {
            rnn: Rnn::new(scope, cfg, Kind::Lstm)?,
        })
    }
    /// The configuration.
    pub fn config(&self) -> &RnnConfig {
        &self.rnn.cfg
    }
    /// The dropout between layers (present when `dropout > 0` and `num_layers > 1`), e.g. to
    /// save and restore its generator for an exact resume.
    pub fn dropout(&self) -> Option<&Dropout> {
        self.rnn.dropout.as_ref()
    }
    /// Run over a sequence, as `nn.LSTM.forward(x, (h_0, c_0))`. `x` is `[T, B, in]`
    /// (`[B, T, in]` when `batch_first`, `[T, in]` unbatched); the states are
    /// `[layers * directions, B, H]` (`[layers * directions, H]` unbatched), zeros when `None`.
    /// Returns `(output, (h_n, c_n))`: `output` holds the last layer's `h_t` for every `t`
    /// (`[T, B, directions * H]`, forward then backward direction), `h_n` / `c_n` the final states.
    pub fn forward_with_state(&self, x: &Var, state: Option<(&Var, &Var)>) -> Result<(Var, (Var, Var))> {
        let (out, h_n, c_n) = self.rnn.run(x, state.map(|s| s.0), state.map(|s| s.1))?;
        let c_n = c_n.ok_or_else(|| Error::invalid("Lstm", "internal: no cell state"))?;
        Ok((out, (h_n, c_n)))
    }
}

impl Module for Lstm {
    /// The output sequence for zero initial states.
    fn forward(&self, x: &Var) -> Result<Var> {
        Ok(self.forward_with_state(x, None)?.0)
    }
    fn parameters(&self) -> Vec<Param> {
        self.rnn.parameters()
    }
    fn set_training(&self, training: bool) {
        self.rnn.set_training(training)
    }
}

/// `nn.GRU`: a multi-layer gated recurrent unit network.
///
/// Parameters (PyTorch names): `weight_ih_l{k}` `[3H, in_k]`, `weight_hh_l{k}` `[3H, H]`,
/// `bias_ih_l{k}` and `bias_hh_l{k}` `[3H]`, gate order `r, z, n`, plus `_reverse` for the
/// backward direction; all U(±1/√H). `b_hn` stays inside the reset gate: `n = tanh(W_in x + b_in
/// + r ⊙ (W_hn h + b_hn))`.
pub struct Gru {
    rnn: Rnn,
}

impl Gru {
    /// A GRU with parameters from `scope`.
    pub fn new(scope: Scope, cfg: RnnConfig) -> Result<Gru> {
        Ok(Gru {
            rnn: Rnn::new(scope, cfg, Kind::Gru)?,
        })
    }
    /// The configuration.
    pub fn config(&self) -> &RnnConfig {
        &self.rnn.cfg
    }
    /// Run over a sequence, as `nn.GRU.forward(x, h_0)`; shapes as [`Lstm::forward_with_state`].
    /// Returns `(output, h_n)`.
    pub fn forward_with_state(&self, x: &Var, h0: Option<&Var>) -> Result<(Var, Var)> {
        let (out, h_n, _) = self.rnn.run(x, h0, None)?;
        Ok((out, h_n))
    }
}

impl Module for Gru {
    /// The output sequence for a zero initial state.
    fn forward(&self, x: &Var) -> Result<Var> {
        Ok(self.forward_with_state(x, None)?.0)
    }
    fn parameters(&self) -> Vec<Param> {
        self.rnn.parameters()
    }
    fn set_training(&self, training: bool) {
        self.rnn.set_training(training)
    }
}

/// A cell's input as `[1, B, in]` plus whether it was unbatched (`[in]`).
fn cell_input(x: &Var, input_size: usize, op: &'static str) -> Result<(Var, bool)> {
    let (x2, unbatched) = match x.rank() {
        1 => (x.unsqueeze(0)?, true),
        2 => (x.clone(), false),
        _ => {
            return Err(Error::invalid(
                op,
                format!(
                    "input must be [B, {input_size}] or [{input_size}], got {:?}",
                    x.shape()
                ),
            ))
        }
    };
    if x2.dims()[1] != input_size {
        return Err(Error::invalid(
            op,
            format!(
                "input {:?} must have input_size = {input_size} features",
                x.shape()
            ),
        ));
    }
    Ok((x2.unsqueeze(0)?, unbatched))
}

/// A cell's state: given (`[B, H]`, or `[H]` unbatched) or zeros, as `[B, H]`.
fn cell_state(
    s: Option<&Var>,
    batch: usize,
    hidden: usize,
    unbatched: bool,
    like: &Var,
    op: &'static str,
) -> Result<Var> {
    match s {
        None => Ok(Var::constant(Tensor::zeros(
            [batch, hidden],
            like.dtype(),
            like.value().device(),
        )?)),
        Some(s) => {
            let expected: Vec<usize> = if unbatched {
                vec![hidden]
            } else {
                vec![batch, hidden]
            };
            if s.dims() != expected.as_slice() {
                return Err(Error::invalid(
                    op,
                    format!("state must have shape {expected:?}, got {:?}", s.shape()),
                ));
            }
            if unbatched {
                Ok(s.unsqueeze(0)?)
            } else {
                Ok(s.clone())
            }
        }
    }
}

fn cell_output(v: Var, unbatched: bool) -> Result<Var> {
    Ok(if unbatched { v.squeeze(0)? } else { v })
}

/// `nn.LSTMCell`: one LSTM step. Parameters `weight_ih` `[4H, in]`, `weight_hh` `[4H, H]`,
/// `bias_ih`, `bias_hh` `[4H]` (gate order `i, f, g, o`), U(±1/√H).
pub struct LstmCell {
    w: RnnWeights,
    input_size: usize,
    hidden_size: usize,
}

impl LstmCell {
    /// A cell with parameters from `scope`.
    pub fn new(scope: Scope, input_size: usize, hidden_size: usize, bias: bool) -> Result<LstmCell> {
        RnnConfig::new(input_size, hidden_size).validate("LstmCell")?;
        Ok(LstmCell {
            w: RnnWeights::new(&scope, "", 4, input_size, hidden_size, bias)?,
            input_size,
            hidden_size,
        })
    }
    /// One step, as `nn.LSTMCell.forward(x, (h, c))`: `x` `[B, in]` (or `[in]`), states `[B, H]`
    /// (zeros when `None`). Returns `(h', c')`.
    pub fn forward_with_state(&self, x: &Var, state: Option<(&Var, &Var)>) -> Result<(Var, Var)> {
        const OP: &str = "LstmCell";
        let (x3, unbatched) = cell_input(x, self.input_size, OP)?;
        let (b, h) = (x3.dims()[1], self.hidden_size);
        let h0 = cell_state(state.map(|s| s.0), b, h, unbatched, x, OP)?;
        let c0 = cell_state(state.map(|s| s.1), b, h, unbatched, x, OP)?;
        let xp = self.w.input_projection(&x3, true)?;
        let y = lstm_recurrence(&xp, &self.w.w_hh.var(), &h0, &c0, false)?.squeeze(0)?;
        Ok((
            cell_output(y.narrow(1, 0, h)?, unbatched)?,
            cell_output(y.narrow(1, h, h)?, unbatched)?,
        ))
    }
}

impl Module for LstmCell {
    /// `h'` for zero states.
    fn forward(&self, x: &Var) -> Result<Var> {
        Ok(self.forward_with_state(x, None)?.0)
    }
    fn parameters(&self) -> Vec<Param> {
        self.w.params()
    }
}

/// `nn.GRUCell`: one GRU step. Parameters `weight_ih` `[3H, in]`, `weight_hh` `[3H, H]`,
/// `bias_ih`, `bias_hh` `[3H]` (gate order `r, z, n`), U(±1/√H).
pub struct GruCell {
    w: RnnWeights,
    input_size: usize,
    hidden_size: usize,
}

impl GruCell {
    /// A cell with parameters from `scope`.
    pub fn new(scope: Scope, input_size: usize, hidden_size: usize, bias: bool) -> Result<GruCell> {
        RnnConfig::new(input_size, hidden_size).validate("GruCell")?;
        Ok(GruCell {
            w: RnnWeights::new(&scope, "", 3, input_size, hidden_size, bias)?,
            input_size,
            hidden_size,
        })
    }
    /// One step, as `nn.GRUCell.forward(x, h)`: `x` `[B, in]` (or `[in]`), `h` `[B, H]` (zeros when
    /// `None`). Returns `h'`.
    pub fn forward_with_state(&self, x: &Var, h: Option<&Var>) -> Result<Var> {
        const OP: &str = "GruCell";
        let (x3, unbatched) = cell_input(x, self.input_size, OP)?;
        let b = x3.dims()[1];
        let h0 = cell_state(h, b, self.hidden_size, unbatched, x, OP)?;
        let xp = self.w.input_projection(&x3, false)?;
        let b_hh = self.w.b_hh.as_ref().map(|b| b.var());
        let y = gru_recurrence(&xp, &self.w.w_hh.var(), b_hh.as_ref(), &h0, false)?.squeeze(0)?;
        cell_output(y, unbatched)
    }
}

impl Module for GruCell {
    /// `h'` for a zero state.
    fn forward(&self, x: &Var) -> Result<Var> {
        self.forward_with_state(x, None)
    }
    fn parameters(&self) -> Vec<Param> {
        self.w.params()
    }
}
