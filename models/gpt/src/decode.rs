//! Inference with a KV cache: [`Gpt`] implements [`KvCausalLm`], one forward pass over a ragged
//! batch of sequences (each its own new tokens, positions and cache) through the zoo's
//! [`KvStore`] — contiguous caches for generate and chat, a paged pool for kiln-serve.
//!
//! The dense products of the single-token rows (decode steps) run through
//! `kiln_tensor::ops::rowwise`, which reads each weight once for all of them and sums every output
//! in a fixed order; a multi-token feed (a prompt) runs through GEMM on its own rows. Attention,
//! norms and activations are per row. So a sequence's logits never depend on its batch-mates.

use std::sync::Arc;

use kiln_tensor::ops::rowwise::matmul_rows_nk;
use kiln_tensor::quant::{QWeight, QuantPath, QuantScheme};
use kiln_tensor::{DType, Tensor};
use kiln_zoo::generate::{
    attend_feeds, check_feeds, CachedFeed, CausalLm, KvCausalLm, KvShape, KvStore, Logits,
};
use kiln_zoo::Result;

use crate::model::{Conv1D, Gpt, Norm};

/// A dense layer for decoding: the weight transposed to `[out, in]` (contiguous f32), so each
/// output is a dot product over one contiguous row and a decode step streams the matrix once,
/// front to back; and the bias.
struct Dense {
    /// The weight quantized `[out, in]`, when the model's generation is quantized.
    quant: Option<QWeight>,
    /// `[out, in]`, for the row kernel.
    weight_t: Tensor,
    /// `[in, out]` as stored (shares the parameter's storage when it is f32), for prefill GEMMs,
    /// whose packing reads it row by row.
    weight: Tensor,
    bias: Tensor,
    input: usize,
    output: usize,
}

fn f32_contiguous(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?.contiguous()?)
}

impl Dense {
    fn new(c: &Conv1D, quant: Option<QuantScheme>) -> Result<Dense> {
        let weight = c.weight.value();
        let (input, output) = (weight.dims()[0], weight.dims()[1]);
        let weight_t = f32_contiguous(&weight.t()?)?;
        let quant = match quant {
            Some(s) => Some(s.quantize(&weight_t.contiguous_slice::<f32>()?, output, input)?),
            None => None,
        };
        Ok(Dense {
            quant,
            weight_t,
            weight: f32_contiguous(&weight)?,
            bias: f32_contiguous(&c.bias.value())?,
            input,
            output,
        })
    }

    /// `out = x @ W + b` for `rows` rows, by the row kernel (`rowwise`) or GEMM.
    fn apply(&self, x: &[f32], rows: usize, rowwise: bool, out: &mut [f32]) -> Result<()> {
        let w = self.weight_t.contiguous_slice::<f32>()?;
        let b = self.bias.contiguous_slice::<f32>()?;
        if let Some(q) = &self.quant {
            q.matmul(x, rows, QuantPath::Int8Activations, out)?;
            for row in out.chunks_exact_mut(self.output) {
                for (o, &bv) in row.iter_mut().zip(b.iter()) {
                    *o += bv;
                }
            }
        } else if rowwise {
            matmul_rows_nk(x, rows, self.input, &w, self.output, out);
            for row in out.chunks_exact_mut(self.output) {
                for (o, &bv) in row.iter_mut().zip(b.iter()) {
                    *o += bv;
                }
            }
        } else {
            let y = Tensor::from_slice(x, [rows, self.input])?.matmul(&self.weight)?;
            let y = y.contiguous_slice::<f32>()?;
            for (dst, src) in out.chunks_exact_mut(self.output).zip(y.chunks_exact(self.output)) {
                for ((o, &v), &bv) in dst.iter_mut().zip(src).zip(b.iter()) {
                    *o = v + bv;
                }
            }
        }
        Ok(())
    }
}

struct NormWeights {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl NormWeights {
    fn new(n: &Norm) -> Result<NormWeights> {
        Ok(NormWeights {
            weight: n.weight.value().to_dtype(DType::F32)?.to_vec()?,
            bias: n.bias.value().to_dtype(DType::F32)?.to_vec()?,
        })
    }

    /// LayerNorm of each row of `x` into `out` (statistics in f64).
    fn apply(&self, x: &[f32], eps: f64, out: &mut [f32]) {
        let d = self.weight.len();
        for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            for (((o, &v), &w), &b) in o.iter_mut().zip(row).zip(&self.weight).zip(&self.bias) {
                *o = ((v as f64 - mean) * rstd) as f32 * w + b;
            }
        }
    }
}

struct LayerWeights {
    ln_1: NormWeights,
    c_attn: Dense,
    attn_proj: Dense,
    ln_2: NormWeights,
    c_fc: Dense,
    mlp_proj: Dense,
}

/// A contiguous run of rows in the batch and how its products run.
struct Segment {
    start: usize,
    rows: usize,
    rowwise: bool,
}

/// The weights in decoding layout, prepared once per set of parameter values and shared by every
/// decoder of the model (the model keeps the last one; changed parameters make a new one).
pub(crate) struct DecodeWeights {
    /// The parameter values these were made from.
    sources: Vec<Tensor>,
    /// The quantization they were made with.
    quant: Option<QuantScheme>,
    layers: Vec<LayerWeights>,
    ln_f: NormWeights,
    wte: Tensor,
    wpe: Tensor,
}

impl DecodeWeights {
    /// Bytes the blocks' matrices take as generation reads them (quantized or f32).
    pub(crate) fn matrix_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.c_attn, &l.attn_proj, &l.c_fc, &l.mlp_proj])
            .map(|d| {
                d.quant
                    .as_ref()
                    .map_or(4 * d.input * d.output, QWeight::size_bytes)
            })
            .sum()
    }

    /// Whether these were made from the model's current parameter values.
    fn is_current(&self, model: &Gpt) -> bool {
        let now = model.param_values();
        self.quant == model.decode_quant
            && now.len() == self.sources.len()
            && now
                .iter()
                .zip(&self.sources)
                .all(|(a, b)| a.same_storage(b) && a.layout() == b.layout())
    }

    fn prepare(model: &Gpt) -> Result<DecodeWeights> {
        let layers = model
            .blocks
            .iter()
            .map(|b| {
                Ok(LayerWeights {
                    ln_1: NormWeights::new(&b.ln_1)?,
                    c_attn: Dense::new(&b.c_attn, model.decode_quant)?,
                    attn_proj: Dense::new(&b.attn_proj, model.decode_quant)?,
                    ln_2: NormWeights::new(&b.ln_2)?,
                    c_fc: Dense::new(&b.c_fc, model.decode_quant)?,
                    mlp_proj: Dense::new(&b.mlp_proj, model.decode_quant)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecodeWeights {
            quant: model.decode_quant,
            sources: model.param_values(),
            layers,
            ln_f: NormWeights::new(&model.ln_f)?,
            wte: f32_contiguous(&model.wte.value())?,
            wpe: f32_contiguous(&model.wpe.value())?,
        })
    }

    /// The model's decoding weights: the kept ones while the parameters are unchanged.
    pub(crate) fn of(model: &Gpt) -> Result<Arc<DecodeWeights>> {
        let mut kept = model
            .decode_weights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(w) = kept.as_ref().filter(|w| w.is_current(model)) {
            return Ok(w.clone());
        }
        let fresh = Arc::new(DecodeWeights::prepare(model)?);
        *kept = Some(fresh.clone());
        Ok(fresh)
    }
}

impl KvCausalLm for Gpt {
    fn kv_shape(&self) -> KvShape {
        KvShape {
            layers: self.cfg.n_layer,
            kv_heads: self.cfg.n_head,
            head_dim: self.cfg.head_dim(),
        }
    }

    fn forward_cached(&self, feeds: &[CachedFeed<'_>], kv: &mut dyn KvStore) -> Result<Vec<Vec<f32>>> {
        check_feeds(
            self.name,
            self.cfg.vocab_size,
            self.context_len().unwrap_or(usize::MAX),
            feeds,
            kv,
        )?;
        let weights = DecodeWeights::of(self)?;
        self.forward_with(&weights, feeds, kv)
    }
}

impl Gpt {
    /// The forward pass over a ragged batch with the decoding weights.
    fn forward_with(
        &self,
        weights: &DecodeWeights,
        feeds: &[CachedFeed<'_>],
        kv: &mut dyn KvStore,
    ) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.cfg;
        let (d, h, eps) = (cfg.n_embd, cfg.n_head, cfg.layer_norm_epsilon);
        // Single-token feeds first (one row-kernel segment), then each prompt on its own.
        let mut order: Vec<usize> = (0..feeds.len()).filter(|&i| feeds[i].tokens.len() == 1).collect();
        let singles = order.len();
        order.extend((0..feeds.len()).filter(|&i| feeds[i].tokens.len() > 1));
        let mut segments = Vec::new();
        let mut row_of = vec![0usize; feeds.len()];
        let mut rows = 0;
        if singles > 0 {
            segments.push(Segment {
                start: 0,
                rows: singles,
                rowwise: true,
            });
        }
        for (k, &i) in order.iter().enumerate() {
            row_of[i] = rows;
            let t = feeds[i].tokens.len();
            if k >= singles {
                segments.push(Segment {
                    start: rows,
                    rows: t,
                    rowwise: false,
                });
            }
            rows += t;
        }
        // Embeddings.
        let wte = weights.wte.contiguous_slice::<f32>()?;
        let wpe = weights.wpe.contiguous_slice::<f32>()?;
        let mut x = vec![0f32; rows * d];
        for &i in &order {
            let start = kv.cached(i);
            for (j, &tok) in feeds[i].tokens.iter().enumerate() {
                let r = row_of[i] + j;
                let (te, pe) = (tok as usize * d, (start + j) * d);
                for (c, o) in x[r * d..(r + 1) * d].iter_mut().enumerate() {
                    *o = wte[te + c] + wpe[pe + c];
                }
            }
        }
        let inner = cfg.inner();
        let mut hbuf = vec![0f32; rows * d];
        let mut qkv = vec![0f32; rows * 3 * d];
        let mut q = vec![0f32; rows * d];
        let mut k = vec![0f32; rows * d];
        let mut v = vec![0f32; rows * d];
        let mut attn = vec![0f32; rows * d];
        let mut proj = vec![0f32; rows * d];
        let mut fc = vec![0f32; rows * inner];
        let dense = |layer: &Dense,
                     input: &[f32],
                     width_in: usize,
                     out: &mut [f32],
                     width_out: usize|
         -> Result<()> {
            for s in &segments {
                layer.apply(
                    &input[s.start * width_in..(s.start + s.rows) * width_in],
                    s.rows,
                    s.rowwise,
                    &mut out[s.start * width_out..(s.start + s.rows) * width_out],
                )?;
            }
            Ok(())
        };
        for (l, w) in weights.layers.iter().enumerate() {
            w.ln_1.apply(&x, eps, &mut hbuf);
            dense(&w.c_attn, &hbuf, d, &mut qkv, 3 * d)?;
            for (r, row) in qkv.chunks_exact(3 * d).enumerate() {
                q[r * d..(r + 1) * d].copy_from_slice(&row[..d]);
                k[r * d..(r + 1) * d].copy_from_slice(&row[d..2 * d]);
                v[r * d..(r + 1) * d].copy_from_slice(&row[2 * d..]);
            }
            attend_feeds(kv, l, feeds, &row_of, self.kv_shape(), h, &q, &k, &v, &mut attn);
            dense(&w.attn_proj, &attn, d, &mut proj, d)?;
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
            w.ln_2.apply(&x, eps, &mut hbuf);
            dense(&w.c_fc, &hbuf, d, &mut fc, inner)?;
            kiln_tensor::fast_math::gelu_tanh_in_place(&mut fc);
            dense(&w.mlp_proj, &fc, inner, &mut proj, d)?;
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
        }
        // The head on the rows that need logits, all in one pass over the embedding table.
        let picked: Vec<usize> = feeds
            .iter()
            .enumerate()
            .flat_map(|(i, feed)| {
                let (first, t) = (row_of[i], feed.tokens.len());
                match feed.logits {
                    Logits::None => first..first,
                    Logits::Last => first + t - 1..first + t,
                    Logits::All => first..first + t,
                }
            })
            .collect();
        let mut last = vec![0f32; picked.len() * d];
        for (n, &r) in picked.iter().enumerate() {
            weights
                .ln_f
                .apply(&x[r * d..(r + 1) * d], eps, &mut last[n * d..(n + 1) * d]);
        }
        let vocab = cfg.vocab_size;
        let mut logits = vec![0f32; picked.len() * vocab];
        if !picked.is_empty() {
            matmul_rows_nk(&last, picked.len(), d, &wte, vocab, &mut logits);
        }
        let mut out = Vec::with_capacity(feeds.len());
        let mut at = 0;
        for feed in feeds {
            let n = match feed.logits {
                Logits::None => 0,
                Logits::Last => 1,
                Logits::All => feed.tokens.len(),
            };
            out.push(logits[at * vocab..(at + n) * vocab].to_vec());
            at += n;
        }
        Ok(out)
    }
}
