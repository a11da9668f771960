//! [`Llama`]: the model, built from a [`Scope`] (Hugging Face names, dense f32) or from GGUF
//! tensors (quantized blocks kept as they are), and its place in the zoo.

use kiln_autograd::{Param, Var};
use kiln_nn::{Init, Scope};
use kiln_tensor::{DType, Tensor};
use kiln_zoo::generate::{BatchDecoder, CausalLm, DecodeState, KvBatchDecoder, KvCausalLm, KvState, Logits};
use kiln_zoo::{Batch, Error, Model, Output, QuantReport, Result, Task};

use crate::config::LlamaConfig;
use crate::weights::{Linear, Vector};

/// Targets with this value are not learned (PyTorch's default `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// One decoder block's weights.
pub struct LlamaLayer {
    pub(crate) attn_norm: Vector,
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
    pub(crate) ffn_norm: Vector,
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

impl LlamaLayer {
    fn linears(&self) -> [&Linear; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
    }

    fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        [
            ("self_attn.q_proj", &mut self.q),
            ("self_attn.k_proj", &mut self.k),
            ("self_attn.v_proj", &mut self.v),
            ("self_attn.o_proj", &mut self.o),
            ("mlp.gate_proj", &mut self.gate),
            ("mlp.up_proj", &mut self.up),
            ("mlp.down_proj", &mut self.down),
        ]
    }
}

/// A Llama-family causal LM (inference: generation with a KV cache, batched decoding, logits
/// and loss of a batch). Dense weights are parameters with Hugging Face names; quantized ones
/// are read block by block and never dequantized as a whole.
pub struct Llama {
    pub(crate) name: String,
    pub(crate) cfg: LlamaConfig,
    pub(crate) embed: Linear,
    pub(crate) layers: Vec<LlamaLayer>,
    pub(crate) norm: Vector,
    /// `None` when the head is the token embedding.
    pub(crate) head: Option<Linear>,
    params: Vec<Param>,
    /// Set by `Model::set_training`: training is refused (inference-only model).
    training: std::sync::atomic::AtomicBool,
}

/// Where a [`Llama`]'s tensors come from: what [`Llama::from_parts`] asks for by Hugging Face
/// name (`model.layers.3.self_attn.q_proj.weight`, ...).
pub(crate) trait WeightSource {
    /// A matrix `[rows, cols]`.
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear>;
    /// A vector of `len` values, initialised to ones when the source makes new weights.
    fn vector(&mut self, name: &str, len: usize) -> Result<Vector>;
    /// Dense parameters handed out so far.
    fn params(&self) -> Vec<Param>;
}

/// Fresh or loaded dense parameters from a [`Scope`].
struct ScopeSource {
    scope: Scope,
    params: Vec<Param>,
}

impl WeightSource for ScopeSource {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        let p = self
            .scope
            .param(name, [rows, cols], Init::Normal { mean: 0.0, std: 0.02 })?;
        self.params.push(p.clone());
        Ok(Linear::Dense(p))
    }
    fn vector(&mut self, name: &str, len: usize) -> Result<Vector> {
        let p = self.scope.param(name, [len], Init::Ones)?;
        self.params.push(p.clone());
        Ok(Vector::Param(p))
    }
    fn params(&self) -> Vec<Param> {
        self.params.clone()
    }
}

impl Llama {
    /// A model of `cfg` whose dense weights come from `scope` (new, or loaded by name).
    pub fn new(name: &str, cfg: LlamaConfig, scope: Scope) -> Result<Llama> {
        Llama::from_parts(
            name,
            cfg,
            &mut ScopeSource {
                scope,
                params: Vec::new(),
            },
        )
    }

    /// Builds the model by asking `src` for each tensor by its Hugging Face name.
    pub(crate) fn from_parts(name: &str, cfg: LlamaConfig, src: &mut dyn WeightSource) -> Result<Llama> {
        cfg.validate(name)?;
        let (d, f, kv) = (cfg.hidden_size, cfg.intermediate_size, cfg.kv_dim());
        let embed = src.matrix("model.embed_tokens.weight", cfg.vocab_size, d)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(LlamaLayer {
                attn_norm: src.vector(&format!("{p}.input_layernorm.weight"), d)?,
                q: src.matrix(&format!("{p}.self_attn.q_proj.weight"), d, d)?,
                k: src.matrix(&format!("{p}.self_attn.k_proj.weight"), kv, d)?,
                v: src.matrix(&format!("{p}.self_attn.v_proj.weight"), kv, d)?,
                o: src.matrix(&format!("{p}.self_attn.o_proj.weight"), d, d)?,
                ffn_norm: src.vector(&format!("{p}.post_attention_layernorm.weight"), d)?,
                gate: src.matrix(&format!("{p}.mlp.gate_proj.weight"), f, d)?,
                up: src.matrix(&format!("{p}.mlp.up_proj.weight"), f, d)?,
                down: src.matrix(&format!("{p}.mlp.down_proj.weight"), d, f)?,
            });
        }
        let norm = src.vector("model.norm.weight", d)?;
        let head = match cfg.tie_word_embeddings {
            true => None,
            false => Some(src.matrix("lm_head.weight", cfg.vocab_size, d)?),
        };
        Ok(Llama {
            name: name.to_string(),
            cfg,
            embed,
            layers,
            norm,
            head,
            params: src.params(),
            training: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The configuration.
    pub fn cfg(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Changes how quantized products treat the activations (8-bit, or f32 for checks).
    pub fn set_quant_path(&mut self, path: kiln_tensor::quant::QuantPath) {
        self.cfg.quant_path = path;
    }

    /// Bytes the weights take in memory (quantized matrices at their stored size).
    pub fn weight_bytes(&self) -> usize {
        let vectors = (self.norm.len()
            + self
                .layers
                .iter()
                .map(|l| l.attn_norm.len() + l.ffn_norm.len())
                .sum::<usize>())
            * 4;
        let matrices: usize = self
            .layers
            .iter()
            .flat_map(|l| l.linears())
            .chain(std::iter::once(&self.embed))
            .chain(self.head.as_ref())
            .map(Linear::size_bytes)
            .sum();
        vectors + matrices
    }

    /// The output head (the embedding when tied).
    pub(crate) fn head(&self) -> &Linear {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    fn input_err(&self, reason: String) -> Error {
        Error::Input {
            model: self.name.clone(),
            reason,
        }
    }

    /// Logits `[B, T, vocab]` of token ids `[B, T]`, each row decoded as its own sequence.
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        if ids.rank() != 2 || ids.dtype().is_float() {
            return Err(self.input_err(format!(
                "expected integer token ids of shape [batch, time], got {:?} {}",
                ids.shape(),
                ids.dtype()
            )));
        }
        let (b, t) = (ids.dims()[0], ids.dims()[1]);
        let flat = ids.to_dtype(DType::I64)?.to_vec::<i64>()?;
        let v = self.cfg.vocab_size;
        if let Some(bad) = flat.iter().find(|&&x| x < 0 || x as usize >= v) {
            return Err(self.input_err(format!("token {bad} is outside 0..{v}")));
        }
        let rows: Vec<Vec<u32>> = flat
            .chunks(t.max(1))
            .map(|r| r.iter().map(|&x| x as u32).collect())
            .collect();
        let mut dec = KvBatchDecoder::new(self);
        let seqs = (0..b).map(|_| dec.add_sequence()).collect::<Result<Vec<_>>>()?;
        let feeds: Vec<_> = seqs.iter().zip(&rows).map(|(&s, r)| (s, r.as_slice())).collect();
        let logits = dec.forward(&feeds, Logits::All)?;
        Ok(Tensor::from_vec(logits.concat(), [b, t, v])?)
    }

    fn loss(&self, logits: &Tensor, targets: &Tensor) -> Result<Var> {
        let (b, t, v) = (logits.dims()[0], logits.dims()[1], self.cfg.vocab_size);
        if targets.dims() != [b, t] || targets.dtype().is_float() {
            return Err(self.input_err(format!(
                "expected integer targets of shape [{b}, {t}], got {:?} {}",
                targets.shape(),
                targets.dtype()
            )));
        }
        let flat = targets.reshape([b * t])?.to_dtype(DType::I64)?;
        if let Some(bad) = flat
            .to_vec::<i64>()?
            .iter()
            .find(|&&x| x != IGNORE_INDEX && (x < 0 || x as usize >= v))
        {
            return Err(self.input_err(format!(
                "target {bad} is outside 0..{v} (and is not the ignore index -100)"
            )));
        }
        let opts = kiln_nn::loss::CrossEntropyOptions {
            ignore_index: Some(IGNORE_INDEX),
            ..Default::default()
        };
        Ok(kiln_nn::loss::cross_entropy(
            &Var::constant(logits.reshape([b * t, v])?),
            &kiln_nn::loss::Target::Indices(flat),
            &opts,
        )?)
    }
}

impl Model for Llama {
    fn name(&self) -> &str {
        &self.name
    }
    fn task(&self) -> Task {
        Task::CausalLm
    }
    /// Logits (and the next-token loss) with the inference kernels; no gradients flow through
    /// them (kiln trains Llama models not yet: the result is a constant).
    fn forward(&self, batch: &Batch) -> Result<Output> {
        if self.training.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(self.input_err(
                "kiln runs Llama models for inference only (generate, chat, perplexity); training them is not supported yet"
                    .into(),
            ));
        }
        let logits = self.logits(&batch.inputs)?;
        let loss = match &batch.targets {
            None => None,
            Some(t) => Some(self.loss(&logits, t)?),
        };
        Ok(Output::new(Var::constant(logits), loss))
    }
    fn parameters(&self) -> Vec<Param> {
        self.params.clone()
    }
    fn set_training(&self, training: bool) {
        // No dropout; the flag only lets `forward` refuse training.
        self.training
            .store(training, std::sync::atomic::Ordering::Relaxed);
    }
    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).unwrap_or_default()
    }
    fn as_causal_lm(&self) -> Option<&dyn CausalLm> {
        Some(self)
    }
    /// Quantizes the seven matrices of every block; the embedding (and the tied or separate
    /// head) stay as they are, as bitsandbytes leaves embeddings and `lm_head`.
    fn quantize(&mut self, scheme: kiln_tensor::quant::QuantScheme) -> Result<QuantReport> {
        let before = self.weight_bytes();
        let mut matrices = 0;
        for layer in &mut self.layers {
            for (_, lin) in layer.linears_mut() {
                *lin = lin.quantized(scheme)?;
                matrices += 1;
            }
        }
        Ok(QuantReport {
            matrices,
            bytes_before: before,
            bytes_after: self.weight_bytes(),
        })
    }
    fn dequantize_weights(&mut self) -> Result<QuantReport> {
        let before = self.weight_bytes();
        let mut matrices = 0;
        let mut fresh = Vec::new();
        let mut densify = |lin: &mut Linear, name: String| -> Result<()> {
            if matches!(lin, Linear::Quant(_)) {
                *lin = lin.densified(&name)?;
                if let Linear::Dense(p) = lin {
                    fresh.push(p.clone());
                }
                matrices += 1;
            }
            Ok(())
        };
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (part, lin) in layer.linears_mut() {
                densify(lin, format!("model.layers.{i}.{part}.weight"))?;
            }
        }
        densify(&mut self.embed, "model.embed_tokens.weight".into())?;
        if let Some(head) = self.head.as_mut() {
            densify(head, "lm_head.weight".into())?;
        }
        self.params.extend(fresh);
        Ok(QuantReport {
            matrices,
            bytes_before: before,
            bytes_after: self.weight_bytes(),
        })
    }
}

impl CausalLm for Llama {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn context_len(&self) -> Option<usize> {
        Some(self.cfg.max_position_embeddings)
    }
    fn start(&self) -> Result<Box<dyn DecodeState + '_>> {
        Ok(Box::new(KvState::new(self)?))
    }
    fn batch_decoder(&self) -> Result<Box<dyn BatchDecoder + '_>> {
        Ok(Box::new(KvBatchDecoder::new(self)))
    }
    fn as_kv(&self) -> Option<&dyn KvCausalLm> {
        Some(self)
    }
}
