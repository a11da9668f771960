//! [`Gpt`]: GPT-2 with Hugging Face's parameter names, and its training forward pass.

use kiln_autograd::{Param, Var};
use kiln_nn::{Init, Scope};
use kiln_tensor::{DType, Tensor};
use kiln_zoo::generate::{CausalLm, DecodeState, KvBatchDecoder, KvCausalLm, KvState};
use kiln_zoo::{Batch, Error, Model, Output, Result, Task};

use crate::config::GptConfig;

/// GPT-2's `Conv1D`: `y = x W + b` with `weight` `[in, out]` (transposed against `nn.Linear`).
pub(crate) struct Conv1D {
    pub(crate) weight: Param,
    pub(crate) bias: Param,
}

impl Conv1D {
    fn new(scope: Scope, input: usize, output: usize, std: f64) -> Result<Conv1D> {
        Ok(Conv1D {
            weight: scope.param("weight", [input, output], Init::Normal { mean: 0.0, std })?,
            bias: scope.param("bias", [output], Init::Zeros)?,
        })
    }

    /// `x` `[N, in]` → `[N, out]`.
    fn forward(&self, x: &Var) -> Result<Var> {
        Ok(x.matmul_bias(&self.weight.var(), &self.bias.var())?)
    }

    fn params(&self) -> [Param; 2] {
        [self.weight.clone(), self.bias.clone()]
    }
}

/// A LayerNorm's `weight` and `bias`.
pub(crate) struct Norm {
    pub(crate) weight: Param,
    pub(crate) bias: Param,
}

impl Norm {
    fn new(scope: Scope, dim: usize) -> Result<Norm> {
        Ok(Norm {
            weight: scope.param("weight", [dim], Init::Ones)?,
            bias: scope.param("bias", [dim], Init::Zeros)?,
        })
    }

    fn forward(&self, x: &Var, eps: f64) -> Result<Var> {
        Ok(x.layer_norm(&self.weight.var(), &self.bias.var(), eps)?)
    }

    fn params(&self) -> [Param; 2] {
        [self.weight.clone(), self.bias.clone()]
    }
}

/// One pre-LN transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
pub(crate) struct Block {
    pub(crate) ln_1: Norm,
    pub(crate) c_attn: Conv1D,
    pub(crate) attn_proj: Conv1D,
    pub(crate) ln_2: Norm,
    pub(crate) c_fc: Conv1D,
    pub(crate) mlp_proj: Conv1D,
}

impl Block {
    fn new(scope: Scope, cfg: &GptConfig) -> Result<Block> {
        let (d, std) = (cfg.n_embd, cfg.initializer_range);
        // GPT-2 scales the residual projections down with depth.
        let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
        let attn = scope.sub("attn");
        let mlp = scope.sub("mlp");
        Ok(Block {
            ln_1: Norm::new(scope.sub("ln_1"), d)?,
            c_attn: Conv1D::new(attn.sub("c_attn"), d, 3 * d, std)?,
            attn_proj: Conv1D::new(attn.sub("c_proj"), d, d, proj_std)?,
            ln_2: Norm::new(scope.sub("ln_2"), d)?,
            c_fc: Conv1D::new(mlp.sub("c_fc"), d, cfg.inner(), std)?,
            mlp_proj: Conv1D::new(mlp.sub("c_proj"), cfg.inner(), d, proj_std)?,
        })
    }

    /// `x` `[B*T, D]` of `b` sequences of `t` tokens.
    fn forward(&self, x: &Var, b: usize, t: usize, cfg: &GptConfig) -> Result<Var> {
        let (d, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        let qkv = self.c_attn.forward(&self.ln_1.forward(x, eps)?)?;
        let attn = qkv.reshape([b, t, 3 * d])?.causal_self_attention(cfg.n_head)?;
        let x = x.add(&self.attn_proj.forward(&attn.reshape([b * t, d])?)?)?;
        let h = self.c_fc.forward(&self.ln_2.forward(&x, eps)?)?.gelu_tanh()?;
        Ok(x.add(&self.mlp_proj.forward(&h)?)?)
    }

    fn params(&self) -> Vec<Param> {
        let mut p = Vec::with_capacity(12);
        p.extend(self.ln_1.params());
        p.extend(self.c_attn.params());
        p.extend(self.attn_proj.params());
        p.extend(self.ln_2.params());
        p.extend(self.c_fc.params());
        p.extend(self.mlp_proj.params());
        p
    }
}

/// GPT-2: token embeddings `wte` `[V, D]` plus learned positions `wpe` `[P, D]`, `n_layer` pre-LN
/// blocks `h.{i}` (causal self-attention `attn.c_attn` / `attn.c_proj`, tanh-GELU MLP `mlp.c_fc` /
/// `mlp.c_proj`, `Conv1D` weights `[in, out]`), a final `ln_f`, and the language-model head tied
/// to `wte`. Parameter names and layouts are Hugging Face's `GPT2Model`, so `model.safetensors`
/// of a GPT-2 checkpoint loads unchanged.
///
/// `forward` takes token ids `[B, T]` (`T <= n_positions`) and returns logits `[B, T, V]`; with
/// targets `[B, T]` the loss is the mean cross-entropy over the positions whose target is not
/// -100 (prompt tokens and padding in instruction tuning).
pub struct Gpt {
    pub(crate) name: &'static str,
    pub(crate) cfg: GptConfig,
    pub(crate) wte: Param,
    pub(crate) wpe: Param,
    pub(crate) blocks: Vec<Block>,
    pub(crate) ln_f: Norm,
    /// Weights in decoding layout, kept between generations (see `decode::DecodeWeights`).
    pub(crate) decode_weights: std::sync::Mutex<Option<std::sync::Arc<crate::decode::DecodeWeights>>>,
    /// How generation quantizes the blocks' matrices (`Model::quantize`); `None`: dense f32.
    pub(crate) decode_quant: Option<kiln_tensor::quant::QuantScheme>,
}

impl Gpt {
    /// Build with parameters from `scope` (initialised as GPT-2, or loaded by name); `name` is the
    /// registered name it reports.
    pub fn new(name: &'static str, cfg: GptConfig, scope: Scope) -> Result<Gpt> {
        cfg.validate(name)?;
        let std = cfg.initializer_range;
        let wte = scope.param(
            "wte.weight",
            [cfg.vocab_size, cfg.n_embd],
            Init::Normal { mean: 0.0, std },
        )?;
        let wpe = scope.param(
            "wpe.weight",
            [cfg.n_positions, cfg.n_embd],
            Init::Normal { mean: 0.0, std },
        )?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(scope.sub("h").sub(i), &cfg))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = Norm::new(scope.sub("ln_f"), cfg.n_embd)?;
        Ok(Gpt {
            name,
            cfg,
            wte,
            wpe,
            blocks,
            ln_f,
            decode_weights: std::sync::Mutex::new(None),
            decode_quant: None,
        })
    }

    /// The current value of every parameter, in `parameters()` order.
    pub(crate) fn param_values(&self) -> Vec<Tensor> {
        self.parameters().iter().map(|p| p.value()).collect()
    }

    /// The configuration.
    pub fn cfg(&self) -> &GptConfig {
        &self.cfg
    }

    fn input_err(&self, reason: String) -> Error {
        Error::Input {
            model: self.name.into(),
            reason,
        }
    }

    /// Check token ids `[B, T]`: integers below the vocabulary, `T` within the context.
    fn check_ids(&self, ids: &Tensor) -> Result<[usize; 2]> {
        let &[b, t] = ids.dims() else {
            return Err(self.input_err(format!(
                "expected token ids [batch, time], got shape {:?}",
                ids.shape()
            )));
        };
        if ids.dtype().is_float() || b == 0 || t == 0 {
            return Err(self.input_err(format!(
                "expected a non-empty integer tensor of token ids [batch, time], got {:?} {}",
                ids.shape(),
                ids.dtype()
            )));
        }
        if t > self.cfg.n_positions {
            return Err(self.input_err(format!(
                "sequences of {t} tokens are longer than the context of {} positions",
                self.cfg.n_positions
            )));
        }
        let v = ids.to_dtype(DType::I64)?.to_vec::<i64>()?;
        if let Some(i) = v.iter().position(|&x| x < 0 || x as usize >= self.cfg.vocab_size) {
            return Err(self.input_err(format!(
                "token id {} at [{}, {}] is outside 0..{}",
                v[i],
                i / t,
                i % t,
                self.cfg.vocab_size
            )));
        }
        Ok([b, t])
    }

    /// Logits `[B, T, V]` of token ids `[B, T]`.
    pub fn logits(&self, ids: &Tensor) -> Result<Var> {
        let [b, t] = self.check_ids(ids)?;
        let d = self.cfg.n_embd;
        let tok = Var::embedding(&ids.reshape([b * t])?, &self.wte.var())?;
        let pos = self.wpe.var().narrow(0, 0, t)?;
        let mut x = tok.reshape([b, t, d])?.add(&pos)?.reshape([b * t, d])?;
        for block in &self.blocks {
            x = block.forward(&x, b, t, &self.cfg)?;
        }
        let x = self.ln_f.forward(&x, self.cfg.layer_norm_epsilon)?;
        let logits = x.matmul(&self.wte.var().t()?)?;
        Ok(logits.reshape([b, t, self.cfg.vocab_size])?)
    }

    /// The mean next-token cross-entropy of `logits` `[B, T, V]` against `targets` `[B, T]`
    /// (-100 = ignored).
    fn loss(&self, logits: &Var, targets: &Tensor) -> Result<Var> {
        let (b, t, v) = (logits.dims()[0], logits.dims()[1], self.cfg.vocab_size);
        if targets.dims() != [b, t] || targets.dtype().is_float() {
            return Err(self.input_err(format!(
                "expected integer targets of shape [{b}, {t}], got {:?} {}",
                targets.shape(),
                targets.dtype()
            )));
        }
        let flat = targets.reshape([b * t])?.to_dtype(DType::I64)?;
        let values = flat.to_vec::<i64>()?;
        if let Some(bad) = values
            .iter()
            .find(|&&x| x != IGNORE_INDEX && (x < 0 || x as usize >= v))
        {
            return Err(self.input_err(format!(
                "target {bad} is outside 0..{v} (and is not the ignore index -100)"
            )));
        }
        let logits = logits.reshape([b * t, v])?;
        if !values.contains(&IGNORE_INDEX) {
            return Ok(logits.log_softmax_nll(&flat)?);
        }
        if values.iter().all(|&x| x == IGNORE_INDEX) {
            return Err(
                self.input_err("every target is -100 (ignored): the batch has nothing to learn".into())
            );
        }
        let opts = kiln_nn::loss::CrossEntropyOptions {
            ignore_index: Some(IGNORE_INDEX),
            ..Default::default()
        };
        Ok(kiln_nn::loss::cross_entropy(
            &logits,
            &kiln_nn::loss::Target::Indices(flat),
            &opts,
        )?)
    }
}

/// Targets with this value are not learned (PyTorch's default `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

impl Model for Gpt {
    fn name(&self) -> &str {
        self.name
    }
    fn task(&self) -> Task {
        Task::CausalLm
    }
    fn forward(&self, batch: &Batch) -> Result<Output> {
        let logits = self.logits(&batch.inputs)?;
        let loss = match &batch.targets {
            None => None,
            Some(t) => Some(self.loss(&logits, t)?),
        };
        Ok(Output::new(logits, loss))
    }
    fn parameters(&self) -> Vec<Param> {
        let mut p = vec![self.wte.clone(), self.wpe.clone()];
        for b in &self.blocks {
            p.extend(b.params());
        }
        p.extend(self.ln_f.params());
        p
    }
    fn set_training(&self, _training: bool) {
        // No dropout and no batch statistics: training and evaluation compute the same thing.
    }
    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).unwrap_or_default()
    }
    fn as_causal_lm(&self) -> Option<&dyn CausalLm> {
        Some(self)
    }
    /// Generation reads the four matrices of every block quantized; training and `forward`
    /// keep the f32 parameters.
    fn quantize(&mut self, scheme: kiln_tensor::quant::QuantScheme) -> Result<kiln_zoo::QuantReport> {
        let before = crate::decode::DecodeWeights::of(self)?.matrix_bytes();
        self.decode_quant = Some(scheme);
        let after = crate::decode::DecodeWeights::of(self)?;
        Ok(kiln_zoo::QuantReport {
            matrices: 4 * self.blocks.len(),
            bytes_before: before,
            bytes_after: after.matrix_bytes(),
        })
    }
}

impl CausalLm for Gpt {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn context_len(&self) -> Option<usize> {
        Some(self.cfg.n_positions)
    }
    fn start(&self) -> Result<Box<dyn DecodeState + '_>> {
        Ok(Box::new(KvState::new(self)?))
    }
    fn batch_decoder(&self) -> Result<Box<dyn kiln_zoo::generate::BatchDecoder + '_>> {
        Ok(Box::new(KvBatchDecoder::new(self)))
    }
    fn as_kv(&self) -> Option<&dyn KvCausalLm> {
        Some(self)
    }
}
