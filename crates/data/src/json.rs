//! Small helpers for reading JSON written by users (configs, instruction records).

/// The kind of a JSON value other than an object, as an error message names it ("an array",
/// "a string", ...); `None` for an object, the shape configs and records must have.
pub fn non_object_kind(value: &serde_json::Value) -> Option<&'static str> {
    match value {
        serde_json::Value::Object(_) => None,
        serde_json::Value::Array(_) => Some("an array"),
        serde_json::Value::String(_) => Some("a string"),
        serde_json::Value::Number(_) => Some("a number"),
        serde_json::Value::Bool(_) => Some("a boolean"),
        serde_json::Value::Null => Some("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_have_no_kind_to_complain_about() {
        let kind = |s: &str| non_object_kind(&serde_json::from_str(s).unwrap());
        assert_eq!(kind("{}"), None);
        assert_eq!(kind("[1]"), Some("an array"));
        assert_eq!(kind("\"x\""), Some("a string"));
        assert_eq!(kind("1.5"), Some("a number"));
        assert_eq!(kind("true"), Some("a boolean"));
        assert_eq!(kind("null"), Some("null"));
    }
}
