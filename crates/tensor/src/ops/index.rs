//! Indexing ops.
