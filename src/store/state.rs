//! A session's state document: validated exactly as PostgreSQL's jsonb would, and kept
//! in jsonb's canonical text, so every backend stores and returns the same text.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::canon::{self, JsonError};

/// A valid state document in jsonb's canonical text (what `state::text` prints on
/// PostgreSQL). Cheap to clone.
///
/// ```
/// use sessiondb::store::State;
///
/// let s = State::parse(r#"{"step": 2, "a": [1.50]}"#).unwrap();
/// assert_eq!(s.as_str(), r#"{"a": [1.50], "step": 2}"#);
/// // jsonb refuses NUL characters, and so does the store.
/// assert_eq!(State::parse(r#"{"x": "\u0000"}"#).unwrap_err().code(), "jsonb_incompatible_nul");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct State(Arc<str>);

impl State {
    /// Validate JSON text (as bytes or a string) and canonicalise it.
    pub fn parse(raw: impl AsRef<[u8]>) -> Result<State, JsonError> {
        canon::canonicalize(raw.as_ref()).map(|t| State(t.into()))
    }

    /// Validate a `serde_json::Value` (a string holding `\u{0}` is refused, as jsonb does).
    pub fn from_value(v: &Value) -> Result<State, JsonError> {
        let text = serde_json::to_string(v).expect("a Value always serialises");
        State::parse(text)
    }

    /// Text that is canonical already (read back from jsonb).
    pub(crate) fn from_canonical(text: String) -> State {
        State(text.into())
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The document as a `serde_json::Value`. Numbers beyond what an `f64`/`i64`/`u64`
    /// holds fail here (they are kept exactly in [`State::as_str`]).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// Deserialize into an application type.
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The value, only when turning it into a `Value` and back changes nothing (merge
    /// mode patches values, and must not round numbers on the way).
    pub(crate) fn to_value_lossless(&self) -> Result<Value, String> {
        let v = self.to_value().map_err(|e| e.to_string())?;
        let back = State::from_value(&v).map_err(|e| e.to_string())?;
        if back != *self {
            return Err(
                "it holds numbers that serde_json cannot represent exactly (very large, very precise, or with trailing zeros)"
                    .into(),
            );
        }
        Ok(v)
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOW: usize = 120;
        match self.0.char_indices().nth(SHOW) {
            Some((i, _)) => write!(f, "State({}… {} bytes)", &self.0[..i], self.0.len()),
            None => write!(f, "State({})", &self.0),
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A state as an application hands it over: a `serde_json::Value`, raw JSON text
/// (`&str`/`String`: the text is parsed, not taken as a JSON string), or a [`State`].
#[derive(Debug, Clone)]
pub enum StateInput {
    Value(Value),
    Text(String),
    State(State),
}

impl StateInput {
    /// Validate into a [`State`].
    pub fn into_state(self) -> Result<State, JsonError> {
        match self {
            StateInput::Value(v) => State::from_value(&v),
            StateInput::Text(t) => State::parse(t),
            StateInput::State(s) => Ok(s),
        }
    }
}

impl From<Value> for StateInput {
    fn from(v: Value) -> Self {
        StateInput::Value(v)
    }
}

impl From<&Value> for StateInput {
    fn from(v: &Value) -> Self {
        StateInput::Value(v.clone())
    }
}

impl From<String> for StateInput {
    fn from(t: String) -> Self {
        StateInput::Text(t)
    }
}

impl From<&str> for StateInput {
    fn from(t: &str) -> Self {
        StateInput::Text(t.to_owned())
    }
}

impl From<State> for StateInput {
    fn from(s: State) -> Self {
        StateInput::State(s)
    }
}

/// Apply a JSON merge patch (RFC 7396) to `target` in place.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(t) = target else {
        unreachable!("made an object above")
    };
    for (k, v) in members {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // The example of RFC 7396 section 3.
        let mut t = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
                           "tags": ["example", "sample"], "content": "This will be unchanged"});
        merge_patch(
            &mut t,
            &json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
                    "author": {"familyName": null}, "tags": ["example"]}),
        );
        assert_eq!(
            t,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
                   "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
        let mut t = json!([1]);
        merge_patch(&mut t, &json!({"a": {"b": null, "c": 1}}));
        assert_eq!(t, json!({"a": {"c": 1}}));
    }

    #[test]
    fn lossless_values_only() {
        assert!(
            State::parse("{\"a\": 1.5}")
                .unwrap()
                .to_value_lossless()
                .is_ok()
        );
        assert!(
            State::parse("12345678901234567890123")
                .unwrap()
                .to_value_lossless()
                .is_err()
        );
        assert!(State::parse("1.50").unwrap().to_value_lossless().is_err());
    }

    #[test]
    fn value_with_nul_is_refused() {
        let e = State::from_value(&json!({"a": "x\u{0}y"})).unwrap_err();
        assert_eq!(e.code(), "jsonb_incompatible_nul");
    }
}
