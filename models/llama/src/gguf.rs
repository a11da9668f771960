//! Loading a Llama-architecture GGUF file: the config from its metadata, quantized matrices kept
//! as blocks over the memory-mapped file, and the tokenizer and chat template it carries.

use std::collections::BTreeSet;
use std::path::Path;

use kiln_autograd::Param;
use kiln_data::text::{ChatTemplate, Tokenizer};
use kiln_gguf::{GgmlType, GgufFile};
use kiln_tensor::quant::{QMatrix, QWeight};
use kiln_zoo::{Error, Result};

use crate::config::LlamaConfig;
use crate::model::{Llama, WeightSource};
use crate::weights::{Linear, Vector};

/// What [`load_gguf`] did not use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GgufLoadReport {
    /// Tensors of the file the model does not read.
    pub unused: Vec<String>,
}

fn data_err(e: kiln_data::Error) -> Error {
    Error::Config {
        model: "llama".into(),
        reason: e.to_string(),
    }
}

fn gg(e: kiln_gguf::GgufError) -> Error {
    Error::Config {
        model: "llama".into(),
        reason: e.to_string(),
    }
}

/// The GGUF name of a Hugging Face parameter name.
fn gguf_name(hf: &str) -> String {
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        let (i, part) = rest.split_once('.').unwrap_or((rest, ""));
        let part = match part {
            "input_layernorm.weight" => "attn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            other => other,
        };
        return format!("blk.{i}.{part}");
    }
    match hf {
        "model.embed_tokens.weight" => "token_embd.weight".into(),
        "model.norm.weight" => "output_norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        other => other.into(),
    }
}

struct GgufSource<'f> {
    file: &'f GgufFile,
    used: BTreeSet<String>,
    params: Vec<Param>,
}

impl GgufSource<'_> {
    fn info(&mut self, hf: &str, want: &[usize]) -> Result<(String, GgmlType, usize)> {
        let name = gguf_name(hf);
        let info = self.file.tensor(&name).map_err(gg)?;
        if info.dims != want {
            return Err(Error::Config {
                model: "llama".into(),
                reason: format!(
                    "GGUF tensor {name} has dims {:?}; the config needs {want:?} (ggml order)",
                    info.dims
                ),
            });
        }
        self.used.insert(name.clone());
        Ok((name, info.dtype, info.offset))
    }
}

impl WeightSource for GgufSource<'_> {
    fn matrix(&mut self, hf: &str, rows: usize, cols: usize) -> Result<Linear> {
        let (name, dtype, offset) = self.info(hf, &[cols, rows])?;
        match dtype {
            GgmlType::Quant(format) => Ok(Linear::Quant(QWeight::Blocks(QMatrix::new(
                format,
                rows,
                cols,
                self.file.backing(),
                offset,
            )?))),
            _ => {
                let t = self.file.tensor_to_f32(&name).map_err(gg)?;
                let p = Param::new(hf, t);
                self.params.push(p.clone());
                Ok(Linear::Dense(p))
            }
        }
    }
    fn vector(&mut self, hf: &str, len: usize) -> Result<Vector> {
        let (name, _, _) = self.info(hf, &[len])?;
        let t = self.file.tensor_to_f32(&name).map_err(gg)?;
        Ok(Vector::Owned(t.to_vec::<f32>()?))
    }
    fn params(&self) -> Vec<Param> {
        self.params.clone()
    }
}

/// Loads a Llama-architecture GGUF file as model `name`: config from the metadata, quantized
/// matrices left in the memory-mapped file, f32/f16/bf16 tensors converted to f32.
pub fn load_gguf(path: &Path, name: &str) -> Result<(Llama, GgufLoadReport)> {
    let file = GgufFile::open(path).map_err(gg)?;
    from_gguf_file(&file, name)
}

/// [`load_gguf`] over an opened file.
pub fn from_gguf_file(file: &GgufFile, name: &str) -> Result<(Llama, GgufLoadReport)> {
    let cfg = LlamaConfig::from_gguf(file)?;
    let mut src = GgufSource {
        file,
        used: BTreeSet::new(),
        params: Vec::new(),
    };
    let model = Llama::from_parts(name, cfg, &mut src)?;
    let unused = file
        .tensors()
        .iter()
        .filter(|t| !src.used.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    Ok((model, GgufLoadReport { unused }))
}

/// The tokenizer a GGUF file carries (`tokenizer.ggml.*`), as a Hugging Face byte-level BPE
/// tokenizer: vocabulary, merges, control tokens as special tokens, and the pre-tokenizer of
/// `tokenizer.ggml.pre` (`smollm`: single digits then byte-level; `gpt2`/`default`: byte-level).
pub fn gguf_tokenizer(file: &GgufFile, source: &Path) -> Result<Tokenizer> {
    let cfg_err = |reason: String| Error::Config {
        model: "llama".into(),
        reason: format!("{}: {reason}", source.display()),
    };
    let model = file.get_str("tokenizer.ggml.model").map_err(gg)?;
    if model != "gpt2" {
        return Err(cfg_err(format!(
            "tokenizer.ggml.model is {model:?}; kiln builds byte-level BPE (\"gpt2\") tokenizers from GGUF metadata; put a tokenizer.json beside the file"
        )));
    }
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre {
        "smollm" => serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        "gpt2" | "default" => byte_level,
        other => {
            return Err(cfg_err(format!(
                "tokenizer.ggml.pre {other:?} is not one kiln knows (smollm, gpt2, default); put a tokenizer.json beside the file"
            )))
        }
    };
    let tokens = file.get_string_array("tokenizer.ggml.tokens").map_err(gg)?;
    let merges = file.get_string_array("tokenizer.ggml.merges").map_err(gg)?;
    let types = file.get_i32_array("tokenizer.ggml.token_type").ok();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i.into()))
        .collect();
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .map(|m| {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| cfg_err(format!("merge {m:?} is not two tokens separated by a space")))?;
            Ok(serde_json::json!([a, b]))
        })
        .collect::<Result<_>>()?;
    // ggml token types: 3 = control, 4 = user-defined; both match as whole tokens.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types.is_some_and(|t| matches!(t.get(*i), Some(3) | Some(4))))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let unk = file
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.as_u32())
        .and_then(|i| tokens.get(i as usize).cloned());
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    });
    let bytes = serde_json::to_vec(&json).map_err(|e| cfg_err(format!("building tokenizer JSON: {e}")))?;
    let mut tok = Tokenizer::from_bytes(&bytes, source).map_err(data_err)?;
    if let Some(eos) = file
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.as_u32())
        .and_then(|i| tokens.get(i as usize))
    {
        tok.set_eos_token(eos).map_err(data_err)?;
    }
    Ok(tok)
}

/// The chat template a GGUF file carries (`tokenizer.chat_template`), with its BOS/EOS tokens;
/// `None` when it has none.
pub fn gguf_chat_template(file: &GgufFile) -> Result<Option<ChatTemplate>> {
    let Some(src) = file.get("tokenizer.chat_template").and_then(|v| v.as_str()) else {
        return Ok(None);
    };
    let tokens = file.get_string_array("tokenizer.ggml.tokens").map_err(gg)?;
    let token = |key: &str| {
        file.get(key)
            .and_then(|v| v.as_u32())
            .and_then(|i| tokens.get(i as usize).cloned())
            .unwrap_or_default()
    };
    Ok(Some(
        ChatTemplate::new(src).map_err(data_err)?.with_special_tokens(
            token("tokenizer.ggml.bos_token_id"),
            token("tokenizer.ggml.eos_token_id"),
        ),
    ))
}
