//! `embeddings.*`: word + absolute position + token-type embeddings, then LayerNorm.

use kiln_autograd::{Param, Var};
use kiln_nn::{Init, Scope};
use kiln_tensor::Tensor;
use kiln_zoo::Result;

use crate::config::BertConfig;
use crate::layers::{Norm, INIT_STD};

/// The embedding tables and their LayerNorm.
pub(crate) struct Embeddings {
    pub(crate) word: Param,
    position: Param,
    token_type: Param,
    norm: Norm,
}

impl Embeddings {
    /// The tables under `scope` (`embeddings.`): `word_embeddings.weight` `[V, D]`,
    /// `position_embeddings.weight` `[P, D]`, `token_type_embeddings.weight` `[T, D]`, `LayerNorm`.
    pub(crate) fn new(scope: Scope, cfg: &BertConfig) -> Result<Embeddings> {
        let d = cfg.hidden_size;
        let init = Init::Normal {
            mean: 0.0,
            std: INIT_STD,
        };
        let table = |name: &str, rows: usize| scope.sub(name).param("weight", [rows, d], init);
        Ok(Embeddings {
            word: table("word_embeddings", cfg.vocab_size)?,
            position: table("position_embeddings", cfg.max_position_embeddings)?,
            token_type: table("token_type_embeddings", cfg.type_vocab_size)?,
            norm: Norm::new(scope.sub("LayerNorm"), d, cfg.layer_norm_eps)?,
        })
    }

    /// `ids` and `type_ids` (`u32` `[B, L]`, positions `0..L`) → `[B·L, D]`. An id outside its
    /// table is an error naming it.
    pub(crate) fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> Result<Var> {
        let (b, l) = (ids.dims()[0], ids.dims()[1]);
        let words = Var::embedding(ids, &self.word.var())?;
        let types = Var::embedding(type_ids, &self.token_type.var())?;
        let positions = self.position.var().narrow(0usize, 0, l)?;
        let x = words.add(&types)?.add(&positions)?;
        let d = x.dims()[2];
        self.norm.forward(&x.reshape([b * l, d])?)
    }
}
