//! Inference with a KV cache: [`GptBatchDecoder`] advances a ragged batch of sequences (each its
//! own new tokens, positions and cache) in one forward pass; [`GptState`] is the one-sequence
//! [`DecodeState`] built on it.
//!
//! The dense products of the single-token rows (decode steps) run through
//! `kiln_tensor::ops::rowwise`, which reads each weight once for all of them and sums every output
//! in a fixed order; a multi-token feed (a prompt) runs through GEMM on its own rows. Attention,
//! norms and activations are per row. So a sequence's logits never depend on its batch-mates.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_tensor::ops::attention::attend_to_cache;
use kiln_tensor::ops::rowwise::matmul_rows_nk;
use kiln_tensor::quant::{QWeight, QuantPath, QuantScheme};
use kiln_tensor::{DType, Tensor};
use kiln_zoo::generate::{BatchDecoder, DecodeState, SeqId};
use kiln_zoo::{Error, Result};

use crate::model::{Conv1D, Gpt, Norm};

/// The keys and values of one sequence, per layer `[n_head, capacity, head_dim]`, preallocated to
/// the context length.
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    fn new(layers: usize, heads: usize, capacity: usize, head_dim: usize) -> KvCache {
        let size = heads * capacity * head_dim;
        KvCache {
            keys: (0..layers).map(|_| vec![0f32; size]).collect(),
            values: (0..layers).map(|_| vec![0f32; size]).collect(),
            len: 0,
            capacity,
        }
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

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

/// The batched decoder of [`Gpt`]: a KV cache per open sequence.
pub struct GptBatchDecoder<'a> {
    model: &'a Gpt,
    weights: Arc<DecodeWeights>,
    caches: BTreeMap<SeqId, KvCache>,
    next: SeqId,
}

impl<'a> GptBatchDecoder<'a> {
    /// A decoder over `model`'s current weights (as f32; the transposed copies are made once and
    /// kept by the model until its parameters change).
    pub fn new(model: &'a Gpt) -> Result<GptBatchDecoder<'a>> {
        Ok(GptBatchDecoder {
            model,
            weights: DecodeWeights::of(model)?,
            caches: BTreeMap::new(),
            next: 0,
        })
    }

    fn err(&self, reason: String) -> Error {
        Error::Generation(format!("{}: {reason}", self.model.name))
    }

    /// Check every feed before touching any cache: known sequence, non-empty, ids in the
    /// vocabulary, room in the context.
    fn check(&self, feeds: &[(SeqId, &[u32])]) -> Result<()> {
        let cfg = &self.model.cfg;
        for (i, &(id, ids)) in feeds.iter().enumerate() {
            let cache = self
                .caches
                .get(&id)
                .ok_or_else(|| self.err(format!("sequence {id} is not open")))?;
            if feeds[..i].iter().any(|f| f.0 == id) {
                return Err(self.err(format!("sequence {id} is fed twice in one step")));
            }
            if ids.is_empty() {
                return Err(self.err(format!("sequence {id} is fed no tokens")));
            }
            if let Some(&bad) = ids.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(self.err(format!(
                    "token {bad} is not below the vocabulary size {}",
                    cfg.vocab_size
                )));
            }
            if cache.len + ids.len() > cache.capacity {
                return Err(self.err(format!(
                    "sequence {id} would hold {} tokens, beyond the context of {} positions",
                    cache.len + ids.len(),
                    cache.capacity
                )));
            }
        }
        Ok(())
    }

    /// The forward pass over a ragged batch; returns the next-token logits of every feed.
    fn forward(&mut self, feeds: &[(SeqId, &[u32])]) -> Result<Vec<Vec<f32>>> {
        self.check(feeds)?;
        let cfg = &self.model.cfg;
        let (d, h, dh, eps) = (cfg.n_embd, cfg.n_head, cfg.head_dim(), cfg.layer_norm_epsilon);
        // Single-token feeds first (one row-kernel segment), then each prompt on its own.
        let mut order: Vec<usize> = (0..feeds.len()).filter(|&i| feeds[i].1.len() == 1).collect();
        let singles = order.len();
        order.extend((0..feeds.len()).filter(|&i| feeds[i].1.len() > 1));
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
            let t = feeds[i].1.len();
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
        let weights = self.weights.clone();
        let wte = weights.wte.contiguous_slice::<f32>()?;
        let wpe = weights.wpe.contiguous_slice::<f32>()?;
        let mut x = vec![0f32; rows * d];
        for &i in &order {
            let (id, ids) = feeds[i];
            let start = self.caches[&id].len;
            for (j, &tok) in ids.iter().enumerate() {
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
            for &i in &order {
                let (id, ids) = feeds[i];
                let cache = self
                    .caches
                    .get_mut(&id)
                    .ok_or_else(|| Error::Generation(format!("sequence {id} is not open")))?;
                let (start, t, cap, r0) = (cache.len, ids.len(), cache.capacity, row_of[i]);
                let mut q = vec![0f32; t * d];
                for j in 0..t {
                    let row = &qkv[(r0 + j) * 3 * d..(r0 + j + 1) * 3 * d];
                    q[j * d..(j + 1) * d].copy_from_slice(&row[..d]);
                    for head in 0..h {
                        let at = (head * cap + start + j) * dh;
                        cache.keys[l][at..at + dh].copy_from_slice(&row[d + head * dh..d + (head + 1) * dh]);
                        cache.values[l][at..at + dh]
                            .copy_from_slice(&row[2 * d + head * dh..2 * d + (head + 1) * dh]);
                    }
                }
                attend_to_cache(
                    &q,
                    &cache.keys[l],
                    &cache.values[l],
                    h,
                    h,
                    dh,
                    cap,
                    start,
                    t,
                    &mut attn[r0 * d..(r0 + t) * d],
                );
            }
            dense(&w.attn_proj, &attn, d, &mut proj, d)?;
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
            w.ln_2.apply(&x, eps, &mut hbuf);
            dense(&w.c_fc, &hbuf, d, &mut fc, inner)?;
            kiln_tensor::fast_math::gelu_tanh_in_place(&mut fc);
            dense(&w.mlp_proj, &fc, inner, &mut proj, d)?;
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
        }
        for &(id, ids) in feeds {
            if let Some(c) = self.caches.get_mut(&id) {
                c.len += ids.len();
            }
        }
        // The head on each feed's last row only, all rows in one pass over the embedding table.
        let mut last = vec![0f32; feeds.len() * d];
        for (i, &(_, ids)) in feeds.iter().enumerate() {
            let r = row_of[i] + ids.len() - 1;
            weights
                .ln_f
                .apply(&x[r * d..(r + 1) * d], eps, &mut last[i * d..(i + 1) * d]);
        }
        let v = cfg.vocab_size;
        let mut logits = vec![0f32; feeds.len() * v];
        matmul_rows_nk(&last, feeds.len(), d, &wte, v, &mut logits);
        Ok(logits.chunks_exact(v).map(|c| c.to_vec()).collect())
    }
}

impl BatchDecoder for GptBatchDecoder<'_> {
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }
    fn add_sequence(&mut self) -> Result<SeqId> {
        let cfg = &self.model.cfg;
        let id = self.next;
        self.next += 1;
        self.caches.insert(
            id,
            KvCache::new(cfg.n_layer, cfg.n_head, cfg.n_positions, cfg.head_dim()),
        );
        Ok(id)
    }
    fn remove_sequence(&mut self, id: SeqId) -> Result<()> {
        self.caches
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| self.err(format!("sequence {id} is not open")))
    }
    fn fork_sequence(&mut self, id: SeqId) -> Result<Option<SeqId>> {
        let src = self
            .caches
            .get(&id)
            .ok_or_else(|| self.err(format!("sequence {id} is not open")))?;
        let copy = KvCache {
            keys: src.keys.clone(),
            values: src.values.clone(),
            len: src.len,
            capacity: src.capacity,
        };
        let new = self.next;
        self.next += 1;
        self.caches.insert(new, copy);
        Ok(Some(new))
    }
    fn step(&mut self, feeds: &[(SeqId, &[u32])]) -> Result<Vec<Vec<f32>>> {
        self.forward(feeds)
    }
}

/// One sequence's generation state: a [`GptBatchDecoder`] holding a single KV cache.
pub struct GptState<'a> {
    decoder: GptBatchDecoder<'a>,
    seq: SeqId,
}

impl<'a> GptState<'a> {
    /// A fresh state (an empty cache preallocated to the context length).
    pub fn new(model: &'a Gpt) -> Result<GptState<'a>> {
        let mut decoder = GptBatchDecoder::new(model)?;
        let seq = decoder.add_sequence()?;
        Ok(GptState { decoder, seq })
    }

    /// Tokens held in the cache.
    pub fn len(&self) -> usize {
        self.decoder.caches.get(&self.seq).map_or(0, KvCache::len)
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DecodeState for GptState<'_> {
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = self.decoder.forward(&[(self.seq, ids)])?;
        Ok(out.pop().unwrap_or_default())
    }
}
