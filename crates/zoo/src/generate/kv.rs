//! The one KV-cache interface of the zoo (DESIGN decision 11).
//!
//! A transformer's forward pass over a ragged batch ([`KvCausalLm::forward_cached`]) writes each
//! fed sequence's new keys and values and reads its whole cache through a [`KvStore`]. Two stores
//! implement it:
//!
//! - [`ContiguousKv`] over [`KvCache`]s: one growing buffer per sequence and layer (generate,
//!   chat, [`KvBatchDecoder`](super::KvBatchDecoder));
//! - [`PagedKv`] over a [`KvPool`]: fixed-size blocks shared by every sequence, each sequence
//!   reading its blocks through its block table (a server's paged cache, `kiln-serve`).
//!
//! Both hand attention the same [`KvBlocks`] view, and the attention kernel sums over positions
//! in order whatever the blocks, so a sequence gets the same logits from either store.

use std::collections::HashMap;

use kiln_tensor::ops::attention::attend_to_blocks;
pub use kiln_tensor::ops::attention::KvBlocks;
use rayon::prelude::*;

use super::CausalLm;
use crate::{Error, Result};

/// What a model caches per position: keys and values of `kv_heads × head_dim` per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    /// Transformer layers.
    pub layers: usize,
    /// Key/value heads (fewer than the query heads under grouped-query attention).
    pub kv_heads: usize,
    /// Features per head.
    pub head_dim: usize,
}

impl KvShape {
    /// `f32` values cached per position (keys and values of every layer).
    pub fn floats_per_position(&self) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim
    }

    /// Bytes cached per position.
    pub fn bytes_per_position(&self) -> usize {
        self.floats_per_position() * std::mem::size_of::<f32>()
    }

    /// Values of one layer's keys (or values) for one position.
    fn row(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Which logits a fed sequence wants back from [`KvCausalLm::forward_cached`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (a prompt chunk that does not end the prompt): the head is skipped.
    None,
    /// After its last token (`vocab` values).
    Last,
    /// After each of its tokens (`tokens × vocab` values, for scoring).
    All,
}

/// One sequence of a ragged batch: its new tokens and the logits it wants.
#[derive(Clone, Copy, Debug)]
pub struct CachedFeed<'a> {
    /// The tokens to append (at least one).
    pub tokens: &'a [u32],
    /// What to return.
    pub logits: Logits,
}

/// The keys and values of the sequences of one forward pass, by their index in the feed list.
pub trait KvStore: Send + Sync {
    /// Positions already cached for feed `feed`: its new tokens take the positions after them.
    fn cached(&self, feed: usize) -> usize;
    /// Room for positions `0..positions` of feed `feed` (called before the pass, once per feed);
    /// an error when the store cannot hold them.
    fn reserve(&mut self, feed: usize, positions: usize) -> Result<()>;
    /// Store the keys and values `[t, kv_heads × head_dim]` of the feed's `t` new positions at
    /// `layer`.
    fn write(&mut self, feed: usize, layer: usize, keys: &[f32], values: &[f32]);
    /// The feed's cache at `layer`, covering at least every position written so far.
    fn blocks(&self, feed: usize, layer: usize) -> KvBlocks<'_>;
}

/// A causal LM whose forward pass runs over a ragged batch and a [`KvStore`]: what batched
/// decoding and paged serving need from a transformer.
pub trait KvCausalLm: CausalLm {
    /// What the model caches per position.
    fn kv_shape(&self) -> KvShape;
    /// One forward pass: feed `i`'s tokens take positions `kv.cached(i)..` (after the tokens its
    /// cache holds); their keys and values are written through `kv`. Returns, per feed, the
    /// logits it asked for (empty for [`Logits::None`]). A feed's logits do not depend on the
    /// other feeds. The caller advances its store's lengths afterwards.
    fn forward_cached(&self, feeds: &[CachedFeed<'_>], kv: &mut dyn KvStore) -> Result<Vec<Vec<f32>>>;
}

/// Checks a ragged batch before a forward pass touches any cache — every feed non-empty, its ids
/// below `vocab`, its sequence within `context` positions — and reserves the store's room. The
/// errors name `model`.
pub fn check_feeds(
    model: &str,
    vocab: usize,
    context: usize,
    feeds: &[CachedFeed<'_>],
    kv: &mut dyn KvStore,
) -> Result<()> {
    let err = |reason: String| Error::Generation(format!("{model}: {reason}"));
    for (i, f) in feeds.iter().enumerate() {
        if f.tokens.is_empty() {
            return Err(err(format!("feed {i} has no tokens")));
        }
        if let Some(&bad) = f.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(err(format!(
                "token {bad} is not below the vocabulary size {vocab}"
            )));
        }
        let total = kv.cached(i) + f.tokens.len();
        if total > context {
            return Err(err(format!(
                "a sequence would hold {total} tokens, beyond the context of {context} positions"
            )));
        }
    }
    for (i, f) in feeds.iter().enumerate() {
        kv.reserve(i, kv.cached(i) + f.tokens.len())?;
    }
    Ok(())
}

/// One layer's attention over a ragged batch: stores each feed's new keys and values (`k`, `v`:
/// `[rows, kv_heads × head_dim]`, feed `i` from row `row_of[i]`), then lets each feed's queries
/// (`q`: `[rows, heads × head_dim]`) attend over its whole cache, writing `attn` like `q`. Feeds
/// run side by side on the thread pool; each one's result is the same alone or in a batch.
#[allow(clippy::too_many_arguments)]
pub fn attend_feeds(
    kv: &mut dyn KvStore,
    layer: usize,
    feeds: &[CachedFeed<'_>],
    row_of: &[usize],
    shape: KvShape,
    heads: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    attn: &mut [f32],
) {
    let (row, qd) = (shape.row(), heads * shape.head_dim);
    for (i, feed) in feeds.iter().enumerate() {
        let (r0, t) = (row_of[i], feed.tokens.len());
        kv.write(
            i,
            layer,
            &k[r0 * row..(r0 + t) * row],
            &v[r0 * row..(r0 + t) * row],
        );
    }
    let store: &dyn KvStore = kv;
    let attend = |i: usize| -> Vec<f32> {
        let (r0, t) = (row_of[i], feeds[i].tokens.len());
        let mut out = vec![0f32; t * qd];
        attend_to_blocks(
            &q[r0 * qd..(r0 + t) * qd],
            &store.blocks(i, layer),
            heads,
            shape.kv_heads,
            shape.head_dim,
            store.cached(i),
            t,
            &mut out,
        );
        out
    };
    let attended: Vec<Vec<f32>> = if feeds.len() > 1 {
        (0..feeds.len()).into_par_iter().map(attend).collect()
    } else {
        (0..feeds.len()).map(attend).collect()
    };
    for (i, a) in attended.iter().enumerate() {
        attn[row_of[i] * qd..row_of[i] * qd + a.len()].copy_from_slice(a);
    }
}

/// The keys and values of one sequence, per layer `[kv_heads, capacity, head_dim]`. The capacity
/// grows by doubling (from 256 positions) up to the context length, so a short chat does not hold
/// memory for the whole context and no token pays for a reallocation beyond the amortised
/// doubling.
#[derive(Clone, Debug)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
    capacity: usize,
    limit: usize,
    shape: KvShape,
}

/// Positions a fresh cache holds before its first growth.
const INITIAL_POSITIONS: usize = 256;

impl KvCache {
    /// An empty cache for up to `limit` positions.
    pub fn new(shape: KvShape, limit: usize) -> KvCache {
        KvCache {
            keys: vec![Vec::new(); shape.layers],
            values: vec![Vec::new(); shape.layers],
            len: 0,
            capacity: 0,
            limit,
            shape,
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

    /// The most positions the cache can hold.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts `n` more positions as filled (after a forward pass wrote them).
    pub fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.capacity);
    }

    fn reserve(&mut self, positions: usize) -> Result<()> {
        if positions > self.limit {
            return Err(Error::Generation(format!(
                "a sequence would hold {positions} tokens, beyond the context of {} positions",
                self.limit
            )));
        }
        if positions <= self.capacity {
            return Ok(());
        }
        let cap = positions
            .max(2 * self.capacity)
            .max(INITIAL_POSITIONS)
            .min(self.limit);
        let (old, len, dh) = (self.capacity, self.len, self.shape.head_dim);
        for buf in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let mut grown = vec![0f32; self.shape.kv_heads * cap * dh];
            for g in 0..self.shape.kv_heads {
                grown[g * cap * dh..(g * cap + len) * dh]
                    .copy_from_slice(&buf[g * old * dh..(g * old + len) * dh]);
            }
            *buf = grown;
        }
        self.capacity = cap;
        Ok(())
    }
}

/// Writes `t` rows `[t, kv_heads × dh]` into a block laid out `[kv_heads, block_len, dh]` from
/// offset `at` on.
fn scatter_rows(dst: &mut [f32], rows: &[f32], shape: KvShape, block_len: usize, at: usize) {
    let dh = shape.head_dim;
    for (j, row) in rows.chunks_exact(shape.row()).enumerate() {
        for g in 0..shape.kv_heads {
            let o = (g * block_len + at + j) * dh;
            dst[o..o + dh].copy_from_slice(&row[g * dh..(g + 1) * dh]);
        }
    }
}

/// A [`KvStore`] over one contiguous [`KvCache`] per feed.
pub struct ContiguousKv<'a> {
    caches: Vec<&'a mut KvCache>,
}

impl<'a> ContiguousKv<'a> {
    /// The store of a pass whose feed `i` uses `caches[i]`.
    pub fn new(caches: Vec<&'a mut KvCache>) -> ContiguousKv<'a> {
        ContiguousKv { caches }
    }
}

impl KvStore for ContiguousKv<'_> {
    fn cached(&self, feed: usize) -> usize {
        self.caches[feed].len
    }
    fn reserve(&mut self, feed: usize, positions: usize) -> Result<()> {
        self.caches[feed].reserve(positions)
    }
    fn write(&mut self, feed: usize, layer: usize, keys: &[f32], values: &[f32]) {
        let c = &mut *self.caches[feed];
        let (shape, cap, at) = (c.shape, c.capacity, c.len);
        scatter_rows(&mut c.keys[layer], keys, shape, cap, at);
        scatter_rows(&mut c.values[layer], values, shape, cap, at);
    }
    fn blocks(&self, feed: usize, layer: usize) -> KvBlocks<'_> {
        let c = &*self.caches[feed];
        KvBlocks {
            keys: vec![&c.keys[layer]],
            values: vec![&c.values[layer]],
            block_len: c.capacity.max(1),
        }
    }
}

/// A block pool: `num_blocks` blocks of `block_size` positions for every layer, shared by all
/// the sequences of a server. Block `b` of a layer is `[kv_heads, block_size, head_dim]` keys and
/// as many values. Which block belongs to which sequence is the owner's business (a block manager
/// with block tables); the pool only stores.
pub struct KvPool {
    shape: KvShape,
    block_size: usize,
    num_blocks: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl KvPool {
    /// A pool of `num_blocks` zeroed blocks.
    pub fn new(shape: KvShape, block_size: usize, num_blocks: usize) -> Result<KvPool> {
        if block_size == 0 || num_blocks == 0 {
            return Err(Error::Generation(format!(
                "a KV pool needs at least one block of at least one position (got {num_blocks} blocks of {block_size})"
            )));
        }
        let size = num_blocks * block_size * shape.row();
        // Written once now, so the whole budget is resident from the start (as vLLM reserves
        // its cache) and no decode step pays for first-touch page faults.
        let touched = || {
            let mut v = vec![0f32; size];
            v.fill(0.0);
            v
        };
        Ok(KvPool {
            shape,
            block_size,
            num_blocks,
            keys: (0..shape.layers).map(|_| touched()).collect(),
            values: (0..shape.layers).map(|_| touched()).collect(),
        })
    }

    /// The blocks that fit in `bytes`.
    pub fn blocks_for_bytes(shape: KvShape, block_size: usize, bytes: usize) -> usize {
        bytes / (block_size * shape.bytes_per_position()).max(1)
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Bytes the pool holds.
    pub fn bytes(&self) -> usize {
        self.num_blocks * self.block_size * self.shape.bytes_per_position()
    }

    fn block_len(&self) -> usize {
        self.block_size * self.shape.row()
    }

    /// Copies block `src` into block `dst` in every layer (copy-on-write of a shared partial
    /// block).
    pub fn copy_block(&mut self, src: u32, dst: u32) {
        let n = self.block_len();
        let (s, d) = (src as usize * n, dst as usize * n);
        for buf in self.keys.iter_mut().chain(self.values.iter_mut()) {
            buf.copy_within(s..s + n, d);
        }
    }
}

/// One sequence of a paged pass: the positions it has cached and its block table.
#[derive(Clone, Copy, Debug)]
pub struct PagedSeq<'a> {
    /// Positions already cached (its new tokens follow them).
    pub cached: usize,
    /// Its blocks in position order; they must cover the positions of this pass.
    pub blocks: &'a [u32],
}

/// A [`KvStore`] over a [`KvPool`] and one block table per feed.
pub struct PagedKv<'a> {
    pool: &'a mut KvPool,
    seqs: Vec<PagedSeq<'a>>,
}

impl<'a> PagedKv<'a> {
    /// The store of a pass whose feed `i` is `seqs[i]`.
    pub fn new(pool: &'a mut KvPool, seqs: Vec<PagedSeq<'a>>) -> PagedKv<'a> {
        PagedKv { pool, seqs }
    }
}

impl KvStore for PagedKv<'_> {
    fn cached(&self, feed: usize) -> usize {
        self.seqs[feed].cached
    }
    fn reserve(&mut self, feed: usize, positions: usize) -> Result<()> {
        let s = &self.seqs[feed];
        let room = s.blocks.len() * self.pool.block_size;
        if positions > room {
            return Err(Error::Generation(format!(
                "a block table of {} blocks holds {room} positions, {positions} needed",
                s.blocks.len()
            )));
        }
        if let Some(&b) = s.blocks.iter().find(|&&b| b as usize >= self.pool.num_blocks) {
            return Err(Error::Generation(format!(
                "block {b} is outside the pool of {} blocks",
                self.pool.num_blocks
            )));
        }
        Ok(())
    }
    fn write(&mut self, feed: usize, layer: usize, keys: &[f32], values: &[f32]) {
        let (bs, n, shape) = (self.pool.block_size, self.pool.block_len(), self.pool.shape);
        let s = self.seqs[feed];
        let row = shape.row();
        let mut pos = s.cached;
        let mut j = 0;
        let t = keys.len() / row;
        while j < t {
            let (b, at) = (s.blocks[pos / bs] as usize, pos % bs);
            let m = (bs - at).min(t - j);
            let rows = j * row..(j + m) * row;
            scatter_rows(
                &mut self.pool.keys[layer][b * n..(b + 1) * n],
                &keys[rows.clone()],
                shape,
                bs,
                at,
            );
            scatter_rows(
                &mut self.pool.values[layer][b * n..(b + 1) * n],
                &values[rows],
                shape,
                bs,
                at,
            );
            pos += m;
            j += m;
        }
    }
    fn blocks(&self, feed: usize, layer: usize) -> KvBlocks<'_> {
        let n = self.pool.block_len();
        let table = self.seqs[feed].blocks;
        let (k, v) = (&self.pool.keys[layer], &self.pool.values[layer]);
        KvBlocks {
            keys: table
                .iter()
                .map(|&b| &k[b as usize * n..(b as usize + 1) * n])
                .collect(),
            values: table
                .iter()
                .map(|&b| &v[b as usize * n..(b as usize + 1) * n])
                .collect(),
            block_len: self.pool.block_size,
        }
    }
}

/// Picks `&mut` entries of a map in the order of `ids` (each id at most once).
pub(crate) fn pick_mut<'m, K: std::hash::Hash + Ord + Copy, V>(
    map: &'m mut std::collections::BTreeMap<K, V>,
    ids: &[K],
) -> Vec<&'m mut V> {
    let mut by_id: HashMap<K, &'m mut V> = map
        .iter_mut()
        .filter(|(k, _)| ids.contains(k))
        .map(|(k, v)| (*k, v))
        .collect();
    ids.iter().filter_map(|k| by_id.remove(k)).collect()
}
