//! [`KvBatchDecoder`]: the [`BatchDecoder`] of every [`KvCausalLm`], a contiguous [`KvCache`]
//! per open sequence; [`KvState`]: the one-sequence [`DecodeState`] built on it.

use std::collections::BTreeMap;

use super::kv::{pick_mut, CachedFeed, ContiguousKv, KvCache, KvCausalLm, Logits};
use super::{BatchDecoder, DecodeState, SeqId};
use crate::{Error, Result};

/// A batched decoder over any [`KvCausalLm`]: sequences join and leave between steps, each with
/// its own cache.
pub struct KvBatchDecoder<'a> {
    model: &'a dyn KvCausalLm,
    caches: BTreeMap<SeqId, KvCache>,
    next: SeqId,
}

impl<'a> KvBatchDecoder<'a> {
    /// A decoder with no sequence open.
    pub fn new(model: &'a dyn KvCausalLm) -> KvBatchDecoder<'a> {
        KvBatchDecoder {
            model,
            caches: BTreeMap::new(),
            next: 0,
        }
    }

    /// Tokens cached for sequence `id` (0 when it is not open).
    pub fn len(&self, id: SeqId) -> usize {
        self.caches.get(&id).map_or(0, KvCache::len)
    }

    fn unknown(id: SeqId) -> Error {
        Error::Generation(format!("sequence {id} is not open in this decoder"))
    }

    /// Checks every feed before touching any cache: known sequence, fed once, non-empty, ids in
    /// the vocabulary, room in the context.
    fn check(&self, feeds: &[(SeqId, &[u32])]) -> Result<()> {
        let v = self.model.vocab_size();
        for (i, &(id, ids)) in feeds.iter().enumerate() {
            let cache = self.caches.get(&id).ok_or_else(|| Self::unknown(id))?;
            if feeds[..i].iter().any(|f| f.0 == id) {
                return Err(Error::Generation(format!(
                    "sequence {id} is fed twice in one step"
                )));
            }
            if ids.is_empty() {
                return Err(Error::Generation(format!("sequence {id} is fed no tokens")));
            }
            if let Some(&bad) = ids.iter().find(|&&t| t as usize >= v) {
                return Err(Error::Generation(format!(
                    "token {bad} is not below the vocabulary size {v}"
                )));
            }
            if cache.len() + ids.len() > cache.limit() {
                return Err(Error::Generation(format!(
                    "sequence {id} would hold {} tokens, beyond the context of {} positions",
                    cache.len() + ids.len(),
                    cache.limit()
                )));
            }
        }
        Ok(())
    }

    /// One forward pass over the feeds; returns each feed's logits after its last token or,
    /// with [`Logits::All`], after each of its tokens.
    pub fn forward(&mut self, feeds: &[(SeqId, &[u32])], logits: Logits) -> Result<Vec<Vec<f32>>> {
        self.check(feeds)?;
        let ids: Vec<SeqId> = feeds.iter().map(|f| f.0).collect();
        let cached: Vec<CachedFeed> = feeds
            .iter()
            .map(|&(_, tokens)| CachedFeed { tokens, logits })
            .collect();
        let mut store = ContiguousKv::new(pick_mut(&mut self.caches, &ids));
        let out = self.model.forward_cached(&cached, &mut store)?;
        for (cache, &(_, tokens)) in pick_mut(&mut self.caches, &ids).into_iter().zip(feeds) {
            cache.advance(tokens.len());
        }
        Ok(out)
    }
}

impl BatchDecoder for KvBatchDecoder<'_> {
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }
    fn add_sequence(&mut self) -> Result<SeqId> {
        let id = self.next;
        self.next += 1;
        let limit = self.model.context_len().unwrap_or(usize::MAX);
        self.caches.insert(id, KvCache::new(self.model.kv_shape(), limit));
        Ok(id)
    }
    fn remove_sequence(&mut self, id: SeqId) -> Result<()> {
        self.caches
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| Self::unknown(id))
    }
    fn fork_sequence(&mut self, id: SeqId) -> Result<Option<SeqId>> {
        let copy = self.caches.get(&id).ok_or_else(|| Self::unknown(id))?.clone();
        let new = self.next;
        self.next += 1;
        self.caches.insert(new, copy);
        Ok(Some(new))
    }
    fn step(&mut self, feeds: &[(SeqId, &[u32])]) -> Result<Vec<Vec<f32>>> {
        self.forward(feeds, Logits::Last)
    }
}

/// One sequence's generation state: a [`KvBatchDecoder`] holding a single cache.
pub struct KvState<'a> {
    decoder: KvBatchDecoder<'a>,
    seq: SeqId,
}

impl<'a> KvState<'a> {
    /// A fresh state (an empty cache).
    pub fn new(model: &'a dyn KvCausalLm) -> Result<KvState<'a>> {
        let mut decoder = KvBatchDecoder::new(model);
        let seq = decoder.add_sequence()?;
        Ok(KvState { decoder, seq })
    }

    /// Tokens held in the cache.
    pub fn len(&self) -> usize {
        self.decoder.len(self.seq)
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DecodeState for KvState<'_> {
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = self.decoder.forward(&[(self.seq, ids)], Logits::Last)?;
        Ok(out.pop().unwrap_or_default())
    }
}
