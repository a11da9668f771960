//! Chat formatting with Jinja chat templates (`minijinja`), as Hugging Face's
//! `tokenizer_config.json` `chat_template`.
//!
//! A template sees `messages` (a list of `{role, content}`), `add_generation_prompt`,
//! `bos_token` and `eos_token`, and can call `raise_exception(message)`. As in
//! `transformers`, blocks are rendered with `trim_blocks` and `lstrip_blocks`, and the Python
//! string methods templates use (`.strip()`, `.startswith()`, ...) are available
//! (`minijinja-contrib`'s `pycompat`).
//!
//! # The built-in template
//!
//! [`BUILTIN_CHAT_TEMPLATE`] (the Zephyr style) renders each message as
//! `<|{role}|>\n{content}{eos_token}\n` with `eos_token` = `</s>` by default, and with
//! `add_generation_prompt` appends `<|assistant|>\n`. So a system, a user and an assistant
//! message give exactly
//!
//! ```text
//! <|system|>\n{system}</s>\n<|user|>\n{user}</s>\n<|assistant|>\n{assistant}</s>\n
//! ```
//!
//! Roles other than `system`, `user` and `assistant` are an error.

use std::path::Path;

use minijinja::{context, Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use super::{format_error, invalid, io_error};
use crate::Result;

/// The built-in template (see the [module documentation](self)).
pub const BUILTIN_CHAT_TEMPLATE: &str = "{% for message in messages %}\
{% if message.role not in ['system', 'user', 'assistant'] %}\
{{ raise_exception('unknown role ' ~ message.role ~ ': expected system, user or assistant') }}\
{% endif %}\
<|{{ message.role }}|>\n{{ message.content }}{{ eos_token }}\n\
{% endfor %}\
{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (or whatever the template accepts).
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> ChatMessage {
        Self::new("system", content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> ChatMessage {
        Self::new("user", content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        Self::new("assistant", content)
    }
}

const NAME: &str = "chat_template";

/// A compiled chat template with its `bos_token` and `eos_token`.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn environment(source: String) -> std::result::Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template_owned(NAME, source)?;
    Ok(env)
}

/// A minijinja error with its detail and the template line.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    if let Some(line) = e.line() {
        s.push_str(&format!(" (template line {line})"));
    }
    s
}

impl ChatTemplate {
    /// Compile a Jinja chat template (a syntax error is an error naming it), with `bos_token`
    /// `<s>` and `eos_token` `</s>`.
    pub fn new(source: impl Into<String>) -> Result<ChatTemplate> {
        let env = environment(source.into()).map_err(|e| {
            invalid(
                "ChatTemplate::new",
                format!("the chat template does not compile: {}", describe(&e)),
            )
        })?;
        Ok(ChatTemplate {
            env,
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        })
    }

    /// The built-in template ([`BUILTIN_CHAT_TEMPLATE`]).
    pub fn builtin() -> ChatTemplate {
        // The built-in template is a constant known to compile (tested).
        Self::new(BUILTIN_CHAT_TEMPLATE).unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// The `chat_template` of a Hugging Face `tokenizer_config.json` (a string, or a list of
    /// `{name, template}` from which `default` is taken), with its `bos_token` and `eos_token`
    /// when given (as strings or `{"content": ...}` objects).
    pub fn from_tokenizer_config(path: impl AsRef<Path>) -> Result<ChatTemplate> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        let config: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format_error(path, format!("not valid JSON: {e}")))?;
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    format_error(path, "chat_template is a list without a \"default\" template")
                })?,
            _ => {
                return Err(format_error(
                    path,
                    "no \"chat_template\" string in this tokenizer config",
                ))
            }
        };
        let token = |key: &str| -> Option<String> {
            match config.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                v => v.get("content")?.as_str().map(str::to_string),
            }
        };
        let mut t = Self::new(source).map_err(|e| format_error(path, e.to_string()))?;
        if let Some(bos) = token("bos_token") {
            t.bos_token = bos;
        }
        if let Some(eos) = token("eos_token") {
            t.eos_token = eos;
        }
        Ok(t)
    }

    /// Set the `bos_token` and `eos_token` the template sees.
    pub fn with_special_tokens(
        mut self,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> ChatTemplate {
        self.bos_token = bos_token.into();
        self.eos_token = eos_token.into();
        self
    }

    /// Render `messages`; with `add_generation_prompt` the template opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let err = |e: minijinja::Error| {
            invalid(
                "ChatTemplate::render",
                format!("rendering the chat template failed: {}", describe(&e)),
            )
        };
        let tmpl = self.env.get_template(NAME).map_err(err)?;
        tmpl.render(context! {
            messages => minijinja::value::Serde(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(err)
    }
}
