//! Log-probabilities in OpenAI's two formats: the legacy completions object and chat's list.

use serde_json::{json, Map, Value};

use super::generation::TokenLogprob;

/// Completions' `logprobs`: `{tokens, token_logprobs, top_logprobs: [{token: logprob}],
/// text_offset}`; offsets count characters from `offset` (where this piece of text starts in
/// the completion). Returns the offset after the last token.
pub(crate) fn completion(tokens: &[TokenLogprob], mut offset: usize) -> (Value, usize) {
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        text_offset.push(offset);
        offset += t.token.chars().count();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut m = Map::new();
            for (tok, lp) in &t.top {
                // Two ids may decode to the same text: keep the likelier (listed first).
                m.entry(tok.clone()).or_insert(json!(lp));
            }
            Value::Object(m)
        })
        .collect();
    let value = json!({
        "tokens": tokens.iter().map(|t| t.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    });
    (value, offset)
}

/// Chat's `logprobs`: `{content: [{token, logprob, bytes, top_logprobs: [{token, logprob,
/// bytes}]}], refusal: null}`.
pub(crate) fn chat(tokens: &[TokenLogprob]) -> Value {
    let entry =
        |token: &str, logprob: f64| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(&t.token, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|(tok, lp)| entry(tok, *lp)).collect();
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let t = vec![
            TokenLogprob {
                token: "Hé".into(),
                logprob: -0.5,
                top: vec![("Hé".into(), -0.5), ("x".into(), -1.0)],
            },
            TokenLogprob {
                token: "y".into(),
                logprob: -0.1,
                top: vec![],
            },
        ];
        let (c, end) = completion(&t, 3);
        assert_eq!(end, 6);
        assert_eq!(c["text_offset"], json!([3, 5]));
        assert_eq!(c["tokens"], json!(["Hé", "y"]));
        assert_eq!(c["top_logprobs"][0]["x"], json!(-1.0));
        let ch = chat(&t);
        assert_eq!(ch["content"][0]["bytes"], json!([72, 195, 169]));
        assert_eq!(ch["content"][0]["top_logprobs"][1]["token"], json!("x"));
    }
}
