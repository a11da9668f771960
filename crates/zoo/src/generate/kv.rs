//! The one KV-cache interface of the zoo (DESIGN decision 11).
//!
//! A transformer's forward pass over a ragged batch ([`KvCausalLm::forward_cached`]) writes each
//! fed sequence's new keys and values and reads its whole cache through a [`KvStore`]. Two stores
//! implement it:
//!
//! - [`ContiguousKv`] over [`KvCache`]s: one growing buffer per sequence and layer (generate,
//!   chat, [`KvBatchDecoder`](super::KvBatchDecoder));
//! - [`PagedKv`] over a [`KvPool`]: fixed-size blocks shared by every sequence, each sequence
//!   reading its blocks through its block table (a server's paged cache, `kiln-serve`), in `f32`
//!   or `f16` ([`KvDtype`]).
//!
//! Both hand attention the same [`KvBlocks`] view ([`KvView`] says which number type), and the
//! attention kernel sums over positions in order whatever the blocks, so a sequence gets the same
//! logits from either store when both hold `f32`.

use std::collections::HashMap;

use kiln_tensor::f16;
use kiln_tensor::ops::attention::attend_to_blocks;
pub use kiln_tensor::ops::attention::{KvBlocks, KvElement};
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
    /// Values cached per position (keys and values of every layer).
    pub fn values_per_position(&self) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim
    }

    /// Bytes cached per position when the cache stores `dtype`.
    pub fn bytes_per_position(&self, dtype: KvDtype) -> usize {
        self.values_per_position() * dtype.bytes()
    }

    /// Values of one layer's keys (or values) for one position.
    fn row(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// The number type a block pool stores keys and values in. Attention computes in `f32` either
/// way; `f16` (llama.cpp's default cache type) halves the memory per position and the bytes
/// each decode step reads, at the cost of rounding every cached value to 11 significant bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// 32-bit floats: the values the model computed, exactly.
    F32,
    /// 16-bit IEEE floats.
    #[default]
    F16,
}

impl KvDtype {
    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }

    /// The name the command line and the logs use (`f32`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => f32::NAME,
            KvDtype::F16 => f16::NAME,
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<KvDtype> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(KvDtype::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(KvDtype::F16),
            _ => Err(Error::Generation(format!(
                "unknown KV cache dtype {s:?}: expected f32 or f16"
            ))),
        }
    }
}

/// One layer of one sequence's cache as a [`KvStore`] holds it: `f32` or `f16` blocks.
#[derive(Clone, Debug)]
pub enum KvView<'a> {
    /// Blocks of `f32`.
    F32(KvBlocks<'a, f32>),
    /// Blocks of `f16`.
    F16(KvBlocks<'a, f16>),
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
    fn blocks(&self, feed: usize, layer: usize) -> KvView<'_>;
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
        let (q, kvh, dh, start) = (
            &q[r0 * qd..(r0 + t) * qd],
            shape.kv_heads,
            shape.head_dim,
            store.cached(i),
        );
        match store.blocks(i, layer) {
            KvView::F32(b) => attend_to_blocks(q, &b, heads, kvh, dh, start, t, &mut out),
            KvView::F16(b) => attend_to_blocks(q, &b, heads, kvh, dh, start, t, &mut out),
        }
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
/// offset `at` on (rounded to `E`).
fn scatter_rows<E: KvElement>(dst: &mut [E], rows: &[f32], shape: KvShape, block_len: usize, at: usize) {
    let dh = shape.head_dim;
    for (j, row) in rows.chunks_exact(shape.row()).enumerate() {
        for g in 0..shape.kv_heads {
            let o = (g * block_len + at + j) * dh;
            E::narrow(&row[g * dh..(g + 1) * dh], &mut dst[o..o + dh]);
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
    fn blocks(&self, feed: usize, layer: usize) -> KvView<'_> {
        let c = &*self.caches[feed];
        KvView::F32(KvBlocks {
            keys: vec![&c.keys[layer]],
            values: vec![&c.values[layer]],
            block_len: c.capacity.max(1),
        })
    }
}

/// A block pool: `num_blocks` blocks of `block_size` positions for every layer, shared by all
/// the sequences of a server. Block `b` of a layer is `[kv_heads, block_size, head_dim]` keys and
/// as many values, stored as [`KvDtype`] says. Which block belongs to which sequence is the
/// owner's business (a block manager with block tables); the pool only stores.
pub struct KvPool {
    shape: KvShape,
    block_size: usize,
    num_blocks: usize,
    data: PoolData,
}

/// Every layer's keys and values, one buffer each.
struct Layers<E> {
    keys: Vec<Vec<E>>,
    values: Vec<Vec<E>>,
}

impl<E: KvElement> Layers<E> {
    /// `layers` zeroed buffers of `size` values each, for keys and for values.
    fn new(layers: usize, size: usize) -> Layers<E> {
        // Written once now, so the whole budget is resident from the start (as vLLM reserves
        // its cache) and no decode step pays for first-touch page faults.
        let touched = || {
            let mut v = vec![E::default(); size];
            v.fill(E::default());
            v
        };
        Layers {
            keys: (0..layers).map(|_| touched()).collect(),
            values: (0..layers).map(|_| touched()).collect(),
        }
    }

    fn copy_block(&mut self, n: usize, src: usize, dst: usize) {
        for buf in self.keys.iter_mut().chain(self.values.iter_mut()) {
            buf.copy_within(src * n..(src + 1) * n, dst * n);
        }
    }

    /// Stores the rows of one layer's keys and values from position `seq.cached` on.
    fn write(
        &mut self,
        pool: (KvShape, usize),
        seq: PagedSeq<'_>,
        layer: usize,
        keys: &[f32],
        values: &[f32],
    ) {
        let (shape, bs) = pool;
        let (row, n) = (shape.row(), bs * shape.row());
        let (mut pos, mut j, t) = (seq.cached, 0, keys.len() / row);
        while j < t {
            let (b, at) = (seq.blocks[pos / bs] as usize, pos % bs);
            let m = (bs - at).min(t - j);
            let rows = j * row..(j + m) * row;
            let block = b * n..(b + 1) * n;
            scatter_rows(
                &mut self.keys[layer][block.clone()],
                &keys[rows.clone()],
                shape,
                bs,
                at,
            );
            scatter_rows(&mut self.values[layer][block], &values[rows], shape, bs, at);
            pos += m;
            j += m;
        }
    }

    /// The blocks of `table` at `layer`.
    fn blocks<'a>(&'a self, n: usize, bs: usize, table: &[u32], layer: usize) -> KvBlocks<'a, E> {
        let (k, v) = (&self.keys[layer], &self.values[layer]);
        let block = |b: u32| b as usize * n..(b as usize + 1) * n;
        KvBlocks {
            keys: table.iter().map(|&b| &k[block(b)]).collect(),
            values: table.iter().map(|&b| &v[block(b)]).collect(),
            block_len: bs,
        }
    }
}

/// The pool's buffers in its dtype.
enum PoolData {
    F32(Layers<f32>),
    F16(Layers<f16>),
}

impl KvPool {
    /// A pool of `num_blocks` zeroed blocks storing `dtype`.
    pub fn new(shape: KvShape, dtype: KvDtype, block_size: usize, num_blocks: usize) -> Result<KvPool> {
        if block_size == 0 || num_blocks == 0 {
            return Err(Error::Generation(format!(
                "a KV pool needs at least one block of at least one position (got {num_blocks} blocks of {block_size})"
            )));
        }
        let size = num_blocks * block_size * shape.row();
        let data = match dtype {
            KvDtype::F32 => PoolData::F32(Layers::new(shape.layers, size)),
            KvDtype::F16 => PoolData::F16(Layers::new(shape.layers, size)),
        };
        Ok(KvPool {
            shape,
            block_size,
            num_blocks,
            data,
        })
    }

    /// The blocks of `block_size` positions of `dtype` that fit in `bytes`.
    pub fn blocks_for_bytes(shape: KvShape, dtype: KvDtype, block_size: usize, bytes: usize) -> usize {
        bytes / (block_size * shape.bytes_per_position(dtype)).max(1)
    }

    /// What the pool stores.
    pub fn dtype(&self) -> KvDtype {
        match self.data {
            PoolData::F32(_) => KvDtype::F32,
            PoolData::F16(_) => KvDtype::F16,
        }
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
        self.num_blocks * self.block_size * self.shape.bytes_per_position(self.dtype())
    }

    /// Values of one layer's keys (or values) in one block.
    fn block_len(&self) -> usize {
        self.block_size * self.shape.row()
    }

    /// Copies block `src` into block `dst` in every layer (copy-on-write of a shared partial
    /// block).
    pub fn copy_block(&mut self, src: u32, dst: u32) {
        let n = self.block_len();
        let (s, d) = (src as usize, dst as usize);
        match &mut self.data {
            PoolData::F32(l) => l.copy_block(n, s, d),
            PoolData::F16(l) => l.copy_block(n, s, d),
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
        let pool = (self.pool.shape, self.pool.block_size);
        let seq = self.seqs[feed];
        match &mut self.pool.data {
            PoolData::F32(l) => l.write(pool, seq, layer, keys, values),
            PoolData::F16(l) => l.write(pool, seq, layer, keys, values),
        }
    }
    fn blocks(&self, feed: usize, layer: usize) -> KvView<'_> {
        let (n, bs) = (self.pool.block_len(), self.pool.block_size);
        let table = self.seqs[feed].blocks;
        match &self.pool.data {
            PoolData::F32(l) => KvView::F32(l.blocks(n, bs, table, layer)),
            PoolData::F16(l) => KvView::F16(l.blocks(n, bs, table, layer)),
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
