//! Inference with a KV cache: [`LlamaBatchDecoder`] advances a ragged batch of sequences (each
//! its own new tokens, positions and cache) in one forward pass; [`LlamaState`] is the
//! one-sequence [`DecodeState`] built on it.
//!
//! A quantized product computes each output from one weight row and one activation row, and a
//! dense one runs single-token rows through the row kernel and each prompt through GEMM on its
//! own rows; attention, norms and activations are per row. So a sequence's logits never depend
//! on its batch-mates or on the thread count.

use std::collections::BTreeMap;

use kiln_tensor::fast_math::swiglu_in_place;
use kiln_tensor::ops::attention::attend_to_cache;
use kiln_zoo::generate::{BatchDecoder, DecodeState, SeqId};
use kiln_zoo::{Error, Result};

use crate::model::Llama;
use crate::rope::RopeTable;
use crate::weights::{rms_norm, Input, Segment};

/// The keys and values of one sequence, per layer `[kv_heads, capacity, head_dim]`. The
/// capacity grows by doubling (from 256 positions) up to the context length, so a short chat
/// does not hold memory for 8192 positions and no token ever pays for a reallocation beyond the
/// amortised doubling.
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
    capacity: usize,
    limit: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Positions a fresh cache holds before its first growth.
const INITIAL_POSITIONS: usize = 256;

impl KvCache {
    fn new(layers: usize, kv_heads: usize, limit: usize, head_dim: usize) -> KvCache {
        KvCache {
            keys: vec![Vec::new(); layers],
            values: vec![Vec::new(); layers],
            len: 0,
            capacity: 0,
            limit,
            kv_heads,
            head_dim,
        }
    }

    /// Makes room for `positions` positions (at most the context length).
    fn reserve(&mut self, positions: usize) {
        if positions <= self.capacity {
            return;
        }
        let cap = positions
            .max(2 * self.capacity)
            .max(INITIAL_POSITIONS)
            .min(self.limit);
        let (old, len, dh) = (self.capacity, self.len, self.head_dim);
        for buf in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let mut grown = vec![0f32; self.kv_heads * cap * dh];
            for g in 0..self.kv_heads {
                grown[g * cap * dh..(g * cap + len) * dh]
                    .copy_from_slice(&buf[g * old * dh..(g * old + len) * dh]);
            }
            *buf = grown;
        }
        self.capacity = cap;
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

/// The batched decoder of [`Llama`]: a KV cache per open sequence.
pub struct LlamaBatchDecoder<'a> {
    model: &'a Llama,
    caches: BTreeMap<SeqId, KvCache>,
    next: SeqId,
}

impl<'a> LlamaBatchDecoder<'a> {
    /// A decoder with no sequence open.
    pub fn new(model: &'a Llama) -> LlamaBatchDecoder<'a> {
        LlamaBatchDecoder {
            model,
            caches: BTreeMap::new(),
            next: 0,
        }
    }

    fn err(&self, reason: String) -> Error {
        Error::Generation(format!("{}: {reason}", self.model.name))
    }

    /// Checks every feed before touching any cache: known sequence, fed once, non-empty, ids in
    /// the vocabulary, room in the context.
    fn check(&self, feeds: &[(SeqId, &[u32])]) -> Result<()> {
        let v = self.model.cfg.vocab_size;
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
            if let Some(&bad) = ids.iter().find(|&&t| t as usize >= v) {
                return Err(self.err(format!("token {bad} is not below the vocabulary size {v}")));
            }
            if cache.len + ids.len() > cache.limit {
                return Err(self.err(format!(
                    "sequence {id} would hold {} tokens, beyond the context of {} positions",
                    cache.len + ids.len(),
                    cache.limit
                )));
            }
        }
        Ok(())
    }

    /// The forward pass over a ragged batch. Returns, per feed, the logits after its last token
    /// (`vocab` values) or, with `all_positions`, after each of its tokens (`len × vocab`).
    pub(crate) fn forward(
        &mut self,
        feeds: &[(SeqId, &[u32])],
        all_positions: bool,
    ) -> Result<Vec<Vec<f32>>> {
        self.check(feeds)?;
        // Inside the pool, the products' parallel loops start on this worker: called from outside
        // it, each of the ~240 loops of a token would hand over to the pool and back (two context
        // switches each).
        rayon::scope(|_| self.forward_in_pool(feeds, all_positions))
    }

    fn forward_in_pool(&mut self, feeds: &[(SeqId, &[u32])], all_positions: bool) -> Result<Vec<Vec<f32>>> {
        let model = self.model;
        let cfg = &model.cfg;
        let (d, f, kv, dh) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.kv_dim(),
            cfg.head_dim(),
        );
        let (heads, kv_heads, eps, path) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.rms_norm_eps,
            cfg.quant_path,
        );
        // Single-token feeds first (one row-kernel segment), then each prompt on its own.
        let mut order: Vec<usize> = (0..feeds.len()).filter(|&i| feeds[i].1.len() == 1).collect();
        let singles = order.len();
        order.extend((0..feeds.len()).filter(|&i| feeds[i].1.len() > 1));
        let mut segments = Vec::new();
        if singles > 0 {
            segments.push(Segment {
                start: 0,
                rows: singles,
                rowwise: true,
            });
        }
        let mut row_of = vec![0usize; feeds.len()];
        let mut positions = Vec::new();
        for (n, &i) in order.iter().enumerate() {
            row_of[i] = positions.len();
            let (id, ids) = feeds[i];
            if n >= singles {
                segments.push(Segment {
                    start: positions.len(),
                    rows: ids.len(),
                    rowwise: false,
                });
            }
            let start = self.caches[&id].len;
            positions.extend(start..start + ids.len());
        }
        let rows = positions.len();
        for &(id, ids) in feeds {
            if let Some(c) = self.caches.get_mut(&id) {
                c.reserve(c.len + ids.len());
            }
        }
        let rope = RopeTable::new(positions.iter().copied(), dh, cfg.rope_theta, cfg.rope_layout);
        let mut x = vec![0f32; rows * d];
        for &i in &order {
            for (j, &tok) in feeds[i].1.iter().enumerate() {
                let r = row_of[i] + j;
                model.embed.row(tok as usize, &mut x[r * d..(r + 1) * d])?;
            }
        }
        let mut h = vec![0f32; rows * d];
        let mut q = vec![0f32; rows * d];
        let mut k = vec![0f32; rows * kv];
        let mut v = vec![0f32; rows * kv];
        let mut attn = vec![0f32; rows * d];
        let mut proj = vec![0f32; rows * d];
        let mut gate = vec![0f32; rows * f];
        let mut up = vec![0f32; rows * f];
        for (l, layer) in model.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm.values()?, eps, &mut h);
            let input = Input::new(&h, d);
            layer.q.apply(&input, &segments, path, &mut q)?;
            layer.k.apply(&input, &segments, path, &mut k)?;
            layer.v.apply(&input, &segments, path, &mut v)?;
            for r in 0..rows {
                rope.rotate(r, &mut q[r * d..(r + 1) * d]);
                rope.rotate(r, &mut k[r * kv..(r + 1) * kv]);
            }
            for &i in &order {
                let (id, ids) = feeds[i];
                let cache = self
                    .caches
                    .get_mut(&id)
                    .ok_or_else(|| Error::Generation(format!("sequence {id} is not open")))?;
                let (start, t, cap, r0) = (cache.len, ids.len(), cache.capacity, row_of[i]);
                for j in 0..t {
                    let (kr, vr) = (
                        &k[(r0 + j) * kv..(r0 + j + 1) * kv],
                        &v[(r0 + j) * kv..(r0 + j + 1) * kv],
                    );
                    for g in 0..kv_heads {
                        let at = (g * cap + start + j) * dh;
                        cache.keys[l][at..at + dh].copy_from_slice(&kr[g * dh..(g + 1) * dh]);
                        cache.values[l][at..at + dh].copy_from_slice(&vr[g * dh..(g + 1) * dh]);
                    }
                }
                attend_to_cache(
                    &q[r0 * d..(r0 + t) * d],
                    &cache.keys[l],
                    &cache.values[l],
                    heads,
                    kv_heads,
                    dh,
                    cap,
                    start,
                    t,
                    &mut attn[r0 * d..(r0 + t) * d],
                );
            }
            layer.o.apply(&Input::new(&attn, d), &segments, path, &mut proj)?;
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
            rms_norm(&x, &layer.ffn_norm.values()?, eps, &mut h);
            let input = Input::new(&h, d);
            layer.gate.apply(&input, &segments, path, &mut gate)?;
            layer.up.apply(&input, &segments, path, &mut up)?;
            swiglu_in_place(&mut gate, &up);
            layer
                .down
                .apply(&Input::new(&gate, f), &segments, path, &mut proj)?;
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
        }
        for &(id, ids) in feeds {
            if let Some(c) = self.caches.get_mut(&id) {
                c.len += ids.len();
            }
        }
        // The head on the rows that need logits, all in one row-kernel segment.
        let picked: Vec<usize> = feeds
            .iter()
            .enumerate()
            .flat_map(|(i, &(_, ids))| {
                let last = row_of[i] + ids.len() - 1;
                let first = if all_positions { row_of[i] } else { last };
                first..=last
            })
            .collect();
        let norm = model.norm.values()?;
        let mut last = vec![0f32; picked.len() * d];
        for (n, &r) in picked.iter().enumerate() {
            rms_norm(&x[r * d..(r + 1) * d], &norm, eps, &mut last[n * d..(n + 1) * d]);
        }
        let vocab = cfg.vocab_size;
        let mut logits = vec![0f32; picked.len() * vocab];
        let all = [Segment {
            start: 0,
            rows: picked.len(),
            rowwise: true,
        }];
        model
            .head()
            .apply(&Input::new(&last, d), &all, path, &mut logits)?;
        let mut out = Vec::with_capacity(feeds.len());
        let mut at = 0;
        for &(_, ids) in feeds {
            let n = if all_positions { ids.len() } else { 1 };
            out.push(logits[at * vocab..(at + n) * vocab].to_vec());
            at += n;
        }
        Ok(out)
    }
}

impl BatchDecoder for LlamaBatchDecoder<'_> {
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }
    fn add_sequence(&mut self) -> Result<SeqId> {
        let cfg = &self.model.cfg;
        let id = self.next;
        self.next += 1;
        self.caches.insert(
            id,
            KvCache::new(
                cfg.num_hidden_layers,
                cfg.num_key_value_heads,
                cfg.max_position_embeddings,
                cfg.head_dim(),
            ),
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
            limit: src.limit,
            kv_heads: src.kv_heads,
            head_dim: src.head_dim,
        };
        let new = self.next;
        self.next += 1;
        self.caches.insert(new, copy);
        Ok(Some(new))
    }
    fn step(&mut self, feeds: &[(SeqId, &[u32])]) -> Result<Vec<Vec<f32>>> {
        self.forward(feeds, false)
    }
}

/// One sequence's generation state: a [`LlamaBatchDecoder`] holding a single KV cache.
pub struct LlamaState<'a> {
    decoder: LlamaBatchDecoder<'a>,
    seq: SeqId,
}

impl<'a> LlamaState<'a> {
    /// A fresh state (an empty cache for the whole context).
    pub fn new(model: &'a Llama) -> Result<LlamaState<'a>> {
        let mut decoder = LlamaBatchDecoder::new(model);
        let seq = decoder.add_sequence()?;
        Ok(LlamaState { decoder, seq })
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

impl DecodeState for LlamaState<'_> {
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = self.decoder.forward(&[(self.seq, ids)], false)?;
        Ok(out.pop().unwrap_or_default())
    }
}
