//! Chat templates: the built-in `<|system|>/<|user|>/<|assistant|>` template's exact output, a
//! ChatML template whose prompt tokenizes to SmolLM2's reference ids, tokenizer_config.json
//! loading, Jinja whitespace control as in `transformers`, and errors.

use std::path::Path;

use kiln_data::text::chat::BUILTIN_CHAT_TEMPLATE;
use kiln_data::text::{ChatMessage, ChatTemplate, Tokenizer};

/// A ChatML template written in the style of Hugging Face configs.
const CHATML: &str = r#"{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"#;

fn fixture(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text")
        .join(rel)
}

#[test]
fn builtin_template_exact_output() {
    let t = ChatTemplate::builtin();
    let conv = [
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user("What is 2 + 2?"),
        ChatMessage::assistant("2 + 2 = 4."),
    ];
    assert_eq!(
        t.render(&conv, false).unwrap(),
        "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nWhat is 2 + 2?</s>\n<|assistant|>\n2 + 2 = 4.</s>\n"
    );
    assert_eq!(
        t.render(&conv[..2], true).unwrap(),
        "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nWhat is 2 + 2?</s>\n<|assistant|>\n"
    );
    assert_eq!(t.render(&[], true).unwrap(), "<|assistant|>\n");
    let t = ChatTemplate::new(BUILTIN_CHAT_TEMPLATE)
        .unwrap()
        .with_special_tokens("<s>", "<|end|>");
    assert_eq!(
        t.render(&conv[1..2], false).unwrap(),
        "<|user|>\nWhat is 2 + 2?<|end|>\n"
    );
}

#[test]
fn unknown_roles_and_bad_templates_are_errors() {
    let e = ChatTemplate::builtin()
        .render(&[ChatMessage::new("tool", "{}")], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown role tool"), "{e}");
    let e = ChatTemplate::new("{% for m in messages %}{{ m.content }}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not compile"), "{e}");
}

#[test]
fn chatml_prompt_tokenizes_to_the_smollm2_reference_ids() {
    let refs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("smollm2/smollm2_refs.json")).unwrap()).unwrap();
    let t = ChatTemplate::new(CHATML).unwrap();
    let prompt = t
        .render(&[ChatMessage::user("  What is the capital of France?\n")], true)
        .unwrap();
    assert_eq!(prompt, refs["prompt"].as_str().unwrap());
    let tok = Tokenizer::from_file(fixture("smollm2/tokenizer.json")).unwrap();
    let want: Vec<u32> = refs["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(tok.encode(&prompt, false).unwrap(), want);
}

#[test]
fn template_from_a_tokenizer_config() {
    let dir = std::env::temp_dir().join(format!("kiln-text-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("tokenizer_config.json");
    let config = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "special": true},
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}",
    });
    std::fs::write(&p, config.to_string()).unwrap();
    let t = ChatTemplate::from_tokenizer_config(&p).unwrap();
    assert_eq!(
        t.render(&[ChatMessage::user("a"), ChatMessage::assistant("b")], false)
            .unwrap(),
        "<|im_start|>a<|im_end|>b<|im_end|>"
    );
    // A config without a template (BERT's) is an error naming the file.
    let e = ChatTemplate::from_tokenizer_config(fixture("bert/tokenizer_config.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("chat_template"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn block_whitespace_is_trimmed_as_in_transformers() {
    let t = ChatTemplate::new(
        "{% for message in messages %}\n    {% if message.role == 'user' %}\nU: {{ message.content }}\n    {% else %}\nA: {{ message.content }}\n    {% endif %}\n{% endfor %}\n",
    )
    .unwrap();
    let out = t
        .render(&[ChatMessage::user("hi"), ChatMessage::assistant("hello")], false)
        .unwrap();
    assert_eq!(out, "U: hi\nA: hello\n");
}
