//! The three models are registered, build from their (overridden) default configs and say which
//! of them generate text.

use kiln_nn::Scope;
use kiln_tensor::{DType, Device};
use kiln_zoo::Task;

fn entry(name: &str) -> &'static kiln_zoo::ModelEntry {
    // Reference the crate so the linker keeps its registrations (as the facade does).
    std::hint::black_box(kiln_lstm::LstmLm::new as fn(_, _) -> _);
    kiln_zoo::find(name).unwrap()
}

#[test]
fn registered_with_tasks_and_generation() {
    for (name, task, generates) in [
        ("lstm-lm", Task::CausalLm, true),
        ("lstm-classifier", Task::SequenceClassification, false),
        ("textgenrnn", Task::CausalLm, true),
    ] {
        let e = entry(name);
        assert_eq!((e.task, e.family), (task, "lstm"));
        let m = (e.build)(&(e.default_config)(), Scope::init(0, DType::F32, Device::Cpu)).unwrap();
        assert_eq!((m.name(), m.task()), (name, task));
        assert_eq!(m.as_causal_lm().is_some(), generates, "{name}");
        // The config round-trips through JSON.
        assert_eq!(m.config(), (e.default_config)(), "{name}");
    }
    let tg = entry("textgenrnn");
    let m = (tg.build)(&(tg.default_config)(), Scope::init(0, DType::F32, Device::Cpu)).unwrap();
    assert_eq!(m.as_causal_lm().unwrap().vocab_size(), 465);
}

#[test]
fn config_overrides_apply_and_typos_fail() {
    let e = entry("lstm-lm");
    let cfg =
        kiln_zoo::merge_config(e, Some(&serde_json::json!({"vocab_size": 30, "num_layers": 1}))).unwrap();
    let m = (e.build)(&cfg, Scope::init(0, DType::F32, Device::Cpu)).unwrap();
    assert_eq!(m.as_causal_lm().unwrap().vocab_size(), 30);
    assert_eq!(m.config()["num_layers"], 1);
    let err = kiln_zoo::merge_config(e, Some(&serde_json::json!({"hiden_size": 3})))
        .unwrap_err()
        .to_string();
    assert!(err.contains("hiden_size"), "{err}");
    let err = (e.build)(
        &serde_json::json!({"vocab_size": 3}),
        Scope::init(0, DType::F32, Device::Cpu),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("lstm-lm") && err.contains("missing field"), "{err}");
}
