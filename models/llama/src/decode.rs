//! Inference with a KV cache: [`Llama`] implements [`KvCausalLm`], one forward pass over a ragged
//! batch (each sequence its own new tokens, positions and cache) that reads and writes keys and
//! values through a [`KvStore`] — a contiguous cache per sequence (generate, chat) or a paged
//! block pool (kiln-serve).
//!
//! A quantized product computes each output from one weight row and one activation row, and a
//! dense one runs single-token rows through the row kernel and each prompt through GEMM on its
//! own rows; attention, norms and activations are per row. So a sequence's logits never depend
//! on its batch-mates or on the thread count.

use kiln_tensor::fast_math::swiglu_in_place;
use kiln_zoo::generate::{
    attend_feeds, check_feeds, CachedFeed, CausalLm, KvCausalLm, KvShape, KvStore, Logits,
};
use kiln_zoo::Result;

use crate::model::Llama;
use crate::rope::RopeTable;
use crate::weights::{rms_norm, Input, Linear, Segment};

impl KvCausalLm for Llama {
    fn kv_shape(&self) -> KvShape {
        KvShape {
            layers: self.cfg.num_hidden_layers,
            kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim(),
        }
    }

    fn forward_cached(&self, feeds: &[CachedFeed<'_>], kv: &mut dyn KvStore) -> Result<Vec<Vec<f32>>> {
        check_feeds(
            &self.name,
            self.cfg.vocab_size,
            self.context_len().unwrap_or(usize::MAX),
            feeds,
            kv,
        )?;
        // Inside the pool, the products' parallel loops start on this worker: called from outside
        // it, each of the ~240 loops of a token would hand over to the pool and back (two context
        // switches each).
        rayon::scope(|_| self.forward_in_pool(feeds, kv))
    }
}

impl Llama {
    fn forward_in_pool(&self, feeds: &[CachedFeed<'_>], kv: &mut dyn KvStore) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.cfg;
        let (d, f, kvd, dh) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.kv_dim(),
            cfg.head_dim(),
        );
        let (heads, eps, path) = (cfg.num_attention_heads, cfg.rms_norm_eps, cfg.quant_path);
        // Single-token feeds first (one row-kernel segment), then each prompt on its own.
        let mut order: Vec<usize> = (0..feeds.len()).filter(|&i| feeds[i].tokens.len() == 1).collect();
        let singles = order.len();
        order.extend((0..feeds.len()).filter(|&i| feeds[i].tokens.len() > 1));
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
            let t = feeds[i].tokens.len();
            if n >= singles {
                segments.push(Segment {
                    start: positions.len(),
                    rows: t,
                    rowwise: false,
                });
            }
            let start = kv.cached(i);
            positions.extend(start..start + t);
        }
        let rows = positions.len();
        let rope = RopeTable::new(positions.iter().copied(), dh, cfg.rope_theta, cfg.rope_layout);
        let mut x = vec![0f32; rows * d];
        for &i in &order {
            for (j, &tok) in feeds[i].tokens.iter().enumerate() {
                let r = row_of[i] + j;
                self.embed.row(tok as usize, &mut x[r * d..(r + 1) * d])?;
            }
        }
        let mut h = vec![0f32; rows * d];
        let mut q = vec![0f32; rows * d];
        let mut k = vec![0f32; rows * kvd];
        let mut v = vec![0f32; rows * kvd];
        let mut attn = vec![0f32; rows * d];
        let mut proj = vec![0f32; rows * d];
        let mut gate = vec![0f32; rows * f];
        let mut up = vec![0f32; rows * f];
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm.values()?, eps, &mut h);
            let input = Input::new(&h, d);
            Linear::apply_shared(
                &[&layer.q, &layer.k, &layer.v],
                &input,
                &segments,
                path,
                &mut [&mut q, &mut k, &mut v],
            )?;
            for r in 0..rows {
                rope.rotate(r, &mut q[r * d..(r + 1) * d]);
                rope.rotate(r, &mut k[r * kvd..(r + 1) * kvd]);
            }
            attend_feeds(
                kv,
                l,
                feeds,
                &row_of,
                self.kv_shape(),
                heads,
                &q,
                &k,
                &v,
                &mut attn,
            );
            layer.o.apply(&Input::new(&attn, d), &segments, path, &mut proj)?;
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
            rms_norm(&x, &layer.ffn_norm.values()?, eps, &mut h);
            let input = Input::new(&h, d);
            Linear::apply_shared(
                &[&layer.gate, &layer.up],
                &input,
                &segments,
                path,
                &mut [&mut gate, &mut up],
            )?;
            swiglu_in_place(&mut gate, &up);
            layer
                .down
                .apply(&Input::new(&gate, f), &segments, path, &mut proj)?;
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
        }
        // The head on the rows that need logits, all in one row-kernel segment.
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
        let vocab = cfg.vocab_size;
        let mut logits = vec![0f32; picked.len() * vocab];
        if !picked.is_empty() {
            let norm = self.norm.values()?;
            let mut last = vec![0f32; picked.len() * d];
            for (n, &r) in picked.iter().enumerate() {
                rms_norm(&x[r * d..(r + 1) * d], &norm, eps, &mut last[n * d..(n + 1) * d]);
            }
            let all = [Segment {
                start: 0,
                rows: picked.len(),
                rowwise: true,
            }];
            self.head()
                .apply(&Input::new(&last, d), &all, path, &mut logits)?;
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
