// TEMPORARY placeholder (not committed): replaced by the canon branch.
use std::ops::Range;
pub const MAX_STATE_BYTES: usize = 255 * 1024 * 1024;
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("invalid utf8 at {offset}")]
    InvalidUtf8 { offset: usize },
    #[error("syntax")]
    Syntax {
        offset: usize,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("nul")]
    Nul { offset: usize },
}
impl JsonError {
    pub fn code(&self) -> &'static str {
        match self {
            JsonError::InvalidUtf8 { .. } => "invalid_utf8",
            JsonError::Syntax { .. } => "invalid_json",
            JsonError::Nul { .. } => "jsonb_incompatible_nul",
        }
    }
}
pub fn canonicalize(raw: &[u8]) -> Result<String, JsonError> {
    let s = std::str::from_utf8(raw).map_err(|_| JsonError::InvalidUtf8 { offset: 0 })?;
    if s.contains("\\u0000") {
        return Err(JsonError::Nul { offset: 0 });
    }
    let v: serde_json::Value = serde_json::from_str(s).map_err(|e| JsonError::Syntax {
        offset: 0,
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    Ok(v.to_string())
}
pub fn hash_canonical(c: &str) -> String {
    use sha2::Digest;
    format!("v1:{}", hex::encode(sha2::Sha256::digest(c.as_bytes())))
}
pub enum Node {
    Null,
    Bool(bool),
    Number { text_span: Range<usize> },
    String(String),
    Array(Vec<Spanned>),
    Object(Vec<(String, Spanned)>),
}
pub struct Spanned {
    pub node: Node,
    pub span: Range<usize>,
}
pub fn parse(_raw: &[u8]) -> Result<Spanned, JsonError> {
    unimplemented!()
}
