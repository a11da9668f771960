//! The registry: model crates `inventory::submit!` a [`ModelEntry`]; users look them up by name.

use kiln_nn::Scope;

use crate::{Error, Model, Result, Task};

/// A registered architecture. Every field is const-constructible so plugins can submit it at their
/// crate root with `inventory::submit!`.
pub struct ModelEntry {
    /// Unique name users select it by (`lenet5`, `resnet20`, ...).
    pub name: &'static str,
    /// Family (`lenet`, `resnet`, `gpt`, ...).
    pub family: &'static str,
    /// The task it solves.
    pub task: Task,
    /// One line for `cargo xtask models`.
    pub description: &'static str,
    /// The default configuration as JSON.
    pub default_config: fn() -> serde_json::Value,
    /// Build from a configuration (the default, possibly overridden by the user), taking every
    /// parameter from `scope` (initialised or loaded).
    pub build: fn(&serde_json::Value, Scope) -> Result<Box<dyn Model>>,
}

inventory::collect!(ModelEntry);

/// Every registered entry sorted by name; two entries with one name are an error.
pub fn entries() -> Result<Vec<&'static ModelEntry>> {
    sorted_unique(inventory::iter::<ModelEntry>.into_iter().collect())
}

/// Sort entries by name; a name registered twice is an error rather than a silent overwrite.
fn sorted_unique(mut all: Vec<&ModelEntry>) -> Result<Vec<&ModelEntry>> {
    all.sort_by_key(|e| e.name);
    if let Some(w) = all.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(Error::DuplicateModel(w[0].name.to_string()));
    }
    Ok(all)
}

/// The entry called `name`; an unknown name is an error listing the known ones.
pub fn find(name: &str) -> Result<&'static ModelEntry> {
    let all = entries()?;
    all.iter()
        .find(|e| e.name == name)
        .copied()
        .ok_or_else(|| Error::UnknownModel {
            name: name.to_string(),
            known: all.iter().map(|e| e.name.to_string()).collect(),
        })
}

/// Merge user overrides into the default config (top-level keys replace defaults; unknown keys are
/// an error so typos do not pass silently).
pub fn merge_config(entry: &ModelEntry, overrides: Option<&serde_json::Value>) -> Result<serde_json::Value> {
    let mut cfg = (entry.default_config)();
    let Some(over) = overrides else { return Ok(cfg) };
    let (Some(base), Some(over)) = (cfg.as_object_mut(), over.as_object()) else {
        return Err(Error::Config {
            model: entry.name.into(),
            reason: "config overrides must be a JSON object".into(),
        });
    };
    for (k, v) in over {
        if !base.contains_key(k) {
            let known: Vec<&String> = base.keys().collect();
            return Err(Error::Config {
                model: entry.name.into(),
                reason: format!("unknown key {k:?}; known keys: {known:?}"),
            });
        }
        base.insert(k.clone(), v.clone());
    }
    Ok(cfg)
}

/// Parse a JSON config into a model's typed config, mapping errors to [`Error::Config`].
pub fn parse_config<T: serde::de::DeserializeOwned>(model: &str, cfg: &serde_json::Value) -> Result<T> {
    serde_json::from_value(cfg.clone()).map_err(|e| Error::Config {
        model: model.into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &'static str) -> ModelEntry {
        ModelEntry {
            name,
            family: "test",
            task: Task::ImageClassification,
            description: "",
            default_config: || serde_json::json!({"width": 4}),
            build: |_, _| {
                Err(Error::Config {
                    model: "test".into(),
                    reason: "not buildable".into(),
                })
            },
        }
    }

    #[test]
    fn duplicate_names_are_an_error() {
        let (a, b, c) = (entry("b"), entry("a"), entry("b"));
        let sorted = sorted_unique(vec![&a, &b]).unwrap();
        assert_eq!(sorted.iter().map(|e| e.name).collect::<Vec<_>>(), ["a", "b"]);
        assert!(matches!(sorted_unique(vec![&a, &b, &c]), Err(Error::DuplicateModel(n)) if n == "b"));
    }

    #[test]
    fn config_overrides_replace_known_keys_only() {
        let e = entry("m");
        let merged = merge_config(&e, Some(&serde_json::json!({"width": 8}))).unwrap();
        assert_eq!(merged["width"], 8);
        let err = merge_config(&e, Some(&serde_json::json!({"widht": 8})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("widht") && err.contains("width"), "{err}");
    }
}
