//! The deprecated JSON SessionDB: `{"version": 1, "sessions": [...]}`, a bare array, or
//! `{"sessions": [...], ...}` with other keys. Read-only, and read whole (it is one file).

use std::path::{Path, PathBuf};

use super::fields::{self, FieldError, Raw};
use super::{Meta, parse_meta};
use crate::canon::{self, Node, Spanned};
use crate::error::{Error, Result};
use crate::report::Finding;

/// One record of the JSON store, parsed as far as it goes.
#[derive(Debug, Clone)]
pub struct JsonRecord {
    pub id: std::result::Result<String, FieldError>,
    pub meta: std::result::Result<Meta, FieldError>,
    /// The original text of `state`, when present and not null.
    pub state: Option<Vec<u8>>,
    /// The record's original bytes.
    pub raw: Vec<u8>,
    pub path: Option<PathBuf>,
}

fn invalid(path: &Path, code: &'static str, message: String) -> Error {
    Error::InvalidSource {
        code,
        message: format!("JSON store {}: {message}", path.display()),
    }
}

pub fn load(path: &Path) -> Result<(Vec<JsonRecord>, Vec<Finding>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::Unreadable {
        path: path.to_path_buf(),
        source: e,
    })?;
    let root = canon::parse(&bytes).map_err(|e| invalid(path, e.code(), e.to_string()))?;
    let mut warnings = Vec::new();
    let list = match &root.node {
        Node::Array(items) => items,
        Node::Object(members) => {
            let get = |k: &str| {
                members
                    .iter()
                    .rev()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v)
            };
            if let Some(v) = get("version") {
                let ok = matches!(&v.node, Node::Number { text_span } if &bytes[text_span.clone()] == b"1");
                if !ok {
                    return Err(invalid(
                        path,
                        "unsupported_version",
                        format!(
                            "version {} is not supported (expected 1)",
                            String::from_utf8_lossy(&bytes[v.span.clone()])
                        ),
                    ));
                }
            }
            match get("sessions") {
                Some(Spanned {
                    node: Node::Array(items),
                    ..
                }) => items,
                Some(_) => {
                    return Err(invalid(
                        path,
                        "invalid_json",
                        "`sessions` is not an array".into(),
                    ));
                }
                None => {
                    return Err(invalid(
                        path,
                        "invalid_json",
                        "no `sessions` array (expected {\"version\": 1, \"sessions\": [...]})"
                            .into(),
                    ));
                }
            }
        }
        _ => {
            return Err(invalid(
                path,
                "invalid_json",
                "expected an object with `sessions` or an array of records".into(),
            ));
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (n, rec) in list.iter().enumerate() {
        let raw = bytes[rec.span.clone()].to_vec();
        let Node::Object(members) = &rec.node else {
            out.push(JsonRecord {
                id: Err(FieldError {
                    code: "invalid_id",
                    message: format!("JSON store {} record {n} is not an object", path.display()),
                }),
                meta: Ok(Meta::default()),
                state: None,
                raw,
                path: Some(path.to_path_buf()),
            });
            continue;
        };
        let get = |k: &str| {
            members
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v)
        };
        let field = |k: &str| get(k).map(|v| to_raw(v, &bytes)).unwrap_or(Raw::Null);
        let id = fields::id(&field("id")).map_err(|e| FieldError {
            code: e.code,
            message: format!("JSON store {} record {n}: {}", path.display(), e.message),
        });
        let meta = parse_meta(
            &field("user_id"),
            &field("status"),
            &field("current_step"),
            &field("cost"),
            &field("created_at"),
            &field("updated_at"),
        );
        let state = match get("state") {
            None => None,
            Some(Spanned {
                node: Node::Null, ..
            }) => None,
            Some(v) => Some(bytes[v.span.clone()].to_vec()),
        };
        if members.iter().filter(|(k, _)| k == "id").count() > 1 {
            warnings.push(Finding::new(
                "duplicate_key",
                format!(
                    "JSON store {} record {n} has `id` more than once; the last is used",
                    path.display()
                ),
            ));
        }
        out.push(JsonRecord {
            id,
            meta,
            state,
            raw,
            path: Some(path.to_path_buf()),
        });
    }
    Ok((out, warnings))
}

fn to_raw(v: &Spanned, bytes: &[u8]) -> Raw {
    match &v.node {
        Node::Null => Raw::Null,
        Node::Bool(b) => Raw::Text(b.to_string()),
        Node::String(s) => Raw::Text(s.clone()),
        Node::Number { text_span } => {
            let t = String::from_utf8_lossy(&bytes[text_span.clone()]).into_owned();
            if let Ok(i) = t.parse::<i64>() {
                Raw::Integer(i)
            } else if let Ok(f) = t.parse::<f64>() {
                Raw::Real(f)
            } else {
                Raw::Text(t)
            }
        }
        Node::Array(_) | Node::Object(_) => Raw::Blob(bytes[v.span.clone()].to_vec()),
    }
}
