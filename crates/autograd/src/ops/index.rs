//! Indexing ops (index_select, gather, scatter_add, index_add, embedding).
