//! Typed reading of a request's JSON fields: every error names the parameter, what it must be
//! and what it was. A field that is absent or `null` takes its default; unknown fields are ignored
//! (OpenAI clients send fields of newer API versions).

use serde_json::{Map, Value};

use super::error::ApiError;

/// How a JSON value's type is named in messages ("a string", "an array", ...).
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON number as an integer, when it is one (`3` or `3.0`; not `3.5` nor `1e30`).
pub(crate) fn as_integer(v: &Value) -> Option<i128> {
    let n = v.as_number()?;
    if let Some(u) = n.as_u64() {
        return Some(u as i128);
    }
    if let Some(i) = n.as_i64() {
        return Some(i as i128);
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() <= 9.0e15).then_some(f as i128)
}

/// A short rendering of `v` for messages (long values cut).
pub(crate) fn show(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// The fields of one request object.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// The fields of `map`.
    pub fn new(map: &'a Map<String, Value>) -> Fields<'a> {
        Fields { map }
    }

    /// The value of `name`, unless absent or `null`.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// A string field.
    pub fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::invalid_type(
                name,
                format!("{name} must be a string, got {}", type_name(v)),
            )),
        }
    }

    /// A boolean field.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::invalid_type(
                name,
                format!("{name} must be a boolean, got {}", type_name(v)),
            )),
        }
    }

    /// A number field in `[lo, hi]`.
    pub fn number(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let x = v.as_f64().ok_or_else(|| {
            ApiError::invalid_type(name, format!("{name} must be a number, got {}", type_name(v)))
        })?;
        if !(x.is_finite() && (lo..=hi).contains(&x)) {
            return Err(ApiError::invalid_value(
                name,
                format!("{name} must be a number between {lo} and {hi}, got {}", show(v)),
            ));
        }
        Ok(Some(x))
    }

    /// An integer field in `[lo, hi]`.
    pub fn integer(&self, name: &str, lo: i128, hi: i128) -> Result<Option<i128>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        if !v.is_number() {
            return Err(ApiError::invalid_type(
                name,
                format!("{name} must be an integer, got {}", type_name(v)),
            ));
        }
        match as_integer(v) {
            Some(i) if (lo..=hi).contains(&i) => Ok(Some(i)),
            _ => Err(ApiError::invalid_value(
                name,
                format!("{name} must be an integer between {lo} and {hi}, got {}", show(v)),
            )),
        }
    }

    /// An unsigned integer field in `[lo, hi]`, as a `usize`.
    pub fn count(&self, name: &str, lo: usize, hi: usize) -> Result<Option<usize>, ApiError> {
        Ok(self.integer(name, lo as i128, hi as i128)?.map(|i| i as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_field() {
        let v = json!({"a": "x", "b": 1e30, "c": 18446744073709551616.0, "d": 2.5, "e": 7, "f": null});
        let f = Fields::new(v.as_object().unwrap());
        let e = f.count("a", 1, 10).unwrap_err();
        assert!(e.message.starts_with("a must be an integer"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("a"));
        for name in ["b", "c", "d"] {
            let e = f.count(name, 1, 10).unwrap_err();
            assert_eq!(e.code, Some("invalid_value"), "{name}");
        }
        assert_eq!(f.count("e", 1, 10).unwrap(), Some(7));
        assert_eq!(f.count("f", 1, 10).unwrap(), None);
        assert_eq!(f.count("missing", 1, 10).unwrap(), None);
        assert!(f.number("e", 0.0, 2.0).is_err());
        assert!(f.bool("e").is_err());
        assert!(f.string("e").is_err());
    }
}
