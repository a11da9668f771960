//! The block manager: which KV blocks are free, who holds each block, and the prefix cache.
//!
//! A block is free, held (a reference count of sequences using it), or cached-free: full, keyed
//! by the hash chain of its tokens, held by nobody, kept for a later sequence with the same
//! prefix until a fresh block is needed and it is evicted, least recently used first.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The key of a full block: the hash of its parent's key and of its own tokens. Equal keys mean
/// equal prefixes (the tokens are compared too, so a hash collision is never a wrong hit).
pub(crate) fn chain_hash(parent: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// What a cached block holds, to confirm a hash hit.
struct CachedContent {
    parent: Option<u64>,
    tokens: Vec<u32>,
}

/// Reference counts, the free list and the prefix cache of a pool of `num_blocks` blocks.
pub(crate) struct BlockManager {
    refs: Vec<u32>,
    /// Blocks never filled or whose content was dropped, ready to hand out.
    free: Vec<u32>,
    /// The key of each block registered in the prefix cache.
    key_of: Vec<Option<u64>>,
    /// Registered blocks by key, with their content.
    by_key: HashMap<u64, (u32, CachedContent)>,
    /// Cached blocks nobody holds, by the tick they were last released (LRU order).
    evictable: BTreeMap<u64, u32>,
    /// The tick each evictable block was released at.
    released_at: Vec<u64>,
    tick: u64,
    /// Prompt tokens looked up / found in the cache.
    pub(crate) queried_tokens: u64,
    pub(crate) hit_tokens: u64,
}

impl BlockManager {
    /// A manager of `num_blocks` free blocks.
    pub(crate) fn new(num_blocks: usize) -> BlockManager {
        BlockManager {
            refs: vec![0; num_blocks],
            free: (0..num_blocks as u32).rev().collect(),
            key_of: vec![None; num_blocks],
            by_key: HashMap::new(),
            evictable: BTreeMap::new(),
            released_at: vec![0; num_blocks],
            tick: 0,
            queried_tokens: 0,
            hit_tokens: 0,
        }
    }

    /// Blocks in the pool.
    pub(crate) fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be handed out now (free, or cached and evictable).
    pub(crate) fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks held by at least one sequence.
    pub(crate) fn in_use(&self) -> usize {
        self.total() - self.available()
    }

    /// A fresh block for one holder: a free one, else the least recently used cached one (whose
    /// prefix is forgotten); `None` when every block is held.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (&tick, &b) = self.evictable.iter().next()?;
                self.evictable.remove(&tick);
                if let Some(key) = self.key_of[b as usize].take() {
                    self.by_key.remove(&key);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// One more holder of a held block (a forked sample sharing its prompt's full blocks).
    pub(crate) fn share(&mut self, b: u32) {
        self.refs[b as usize] += 1;
    }

    /// Drops one holder; a block nobody holds becomes evictable (if cached) or free.
    pub(crate) fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        if *r == 0 {
            // Releasing a free block twice would put it on a free list twice (and hand it to
            // two sequences): refuse, loudly.
            tracing::error!("KV block {b} released more often than it was held; ignored");
            return;
        }
        *r -= 1;
        if *r == 0 {
            if self.key_of[b as usize].is_some() {
                self.tick += 1;
                self.released_at[b as usize] = self.tick;
                self.evictable.insert(self.tick, b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// Releases every block of a table.
    pub(crate) fn release_all(&mut self, blocks: &mut Vec<u32>) {
        for b in blocks.drain(..) {
            self.release(b);
        }
    }

    /// Takes a hold on the cached block with `key` and content `(parent, tokens)`, if there is
    /// one.
    pub(crate) fn lookup(&mut self, key: u64, parent: Option<u64>, tokens: &[u32]) -> Option<u32> {
        let (b, content) = self.by_key.get(&key)?;
        if content.parent != parent || content.tokens != tokens {
            return None;
        }
        let b = *b;
        if self.refs[b as usize] == 0 {
            self.evictable.remove(&self.released_at[b as usize]);
        }
        self.refs[b as usize] += 1;
        Some(b)
    }

    /// Registers a held, now full block under `key` (unless another block already holds that
    /// prefix: then this one stays private and is freed normally).
    pub(crate) fn register(&mut self, b: u32, key: u64, parent: Option<u64>, tokens: &[u32]) {
        if self.key_of[b as usize].is_some() || self.by_key.contains_key(&key) {
            return;
        }
        self.key_of[b as usize] = Some(key);
        self.by_key.insert(
            key,
            (
                b,
                CachedContent {
                    parent,
                    tokens: tokens.to_vec(),
                },
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_blocks_are_reused_then_evicted_least_recently_used_first() {
        let mut m = BlockManager::new(3);
        let toks = [[1u32, 2], [3, 4], [5, 6]];
        let keys: Vec<u64> = toks.iter().map(|t| chain_hash(None, t)).collect();
        let blocks: Vec<u32> = (0..3).map(|_| m.allocate().unwrap()).collect();
        assert_eq!(m.available(), 0);
        assert_eq!(m.allocate(), None);
        for i in 0..3 {
            m.register(blocks[i], keys[i], None, &toks[i]);
        }
        // Released in the order 1, 0, 2: block 1 is the least recently used.
        for i in [1, 0, 2] {
            m.release(blocks[i]);
        }
        assert_eq!((m.available(), m.in_use()), (3, 0));
        // A hit takes the block back out of the evictable set.
        assert_eq!(m.lookup(keys[0], None, &toks[0]), Some(blocks[0]));
        // Same key, other content: no hit.
        assert_eq!(m.lookup(keys[2], None, &[9, 9]), None);
        assert_eq!(m.available(), 2);
        // Allocation evicts block 1 first, then block 2; their prefixes are forgotten.
        assert_eq!(m.allocate(), Some(blocks[1]));
        assert_eq!(m.lookup(keys[1], None, &toks[1]), None);
        assert_eq!(m.allocate(), Some(blocks[2]));
        assert_eq!(m.allocate(), None);
        assert_eq!(m.in_use(), 3);
    }

    #[test]
    fn shared_blocks_free_after_the_last_holder() {
        let mut m = BlockManager::new(2);
        let b = m.allocate().unwrap();
        m.share(b);
        m.release(b);
        assert_eq!(m.available(), 1);
        assert_eq!(m.available(), 1);
        m.release(b);
        assert_eq!(m.available(), 2);
    }

    #[test]
    fn the_hash_chain_depends_on_the_whole_prefix() {
        let a = chain_hash(None, &[1, 2]);
        let b = chain_hash(Some(a), &[3, 4]);
        let c = chain_hash(Some(chain_hash(None, &[1, 9])), &[3, 4]);
        assert_ne!(b, c);
        assert_eq!(b, chain_hash(Some(chain_hash(None, &[1, 2])), &[3, 4]));
    }
}
