//! The store's errors: what an application can match on, each with a stable code.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::canon::JsonError;

use super::progress::ProgressFailure;

/// An error of the runtime store. [`Error::code`] is the stable snake_case code
/// (SPEC §6 where one applies); messages never hold a password.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured backend is the deprecated JSON store: it is read-only.
    #[error(
        "json_backend_deprecated: the JSON store {path} is deprecated and read-only; {op} refused (migrate with `sessiondb migrate to postgres`, or set sessiondb.backend = \"sqlite\")"
    )]
    ReadOnly { path: PathBuf, op: &'static str },

    #[error("session {id:?} not found")]
    NotFound { id: String },

    #[error("session {id:?} already exists")]
    AlreadyExists { id: String },

    #[error("invalid session id {id:?}: {message}")]
    InvalidId { id: String, message: String },

    /// A metadata field the target cannot store (`invalid_text`, `invalid_cost`).
    #[error("session {id:?}: {message}")]
    InvalidField {
        id: String,
        code: &'static str,
        message: String,
    },

    /// A column the session's table does not have or the store does not write: an extra
    /// column not in the table, a field given a value where the mapping has no column
    /// for it (`[sqlite.columns] status = ""`), a mapped column given as an extra, a
    /// parent table the sessions table does not reference.
    #[error("session {id:?}: {message}")]
    UnknownColumn {
        id: String,
        table: String,
        column: String,
        message: String,
    },

    /// A NOT NULL column that no value, `[postgres.fill]` constant or default fills.
    #[error("session {id:?}: {message}")]
    MissingValue {
        id: String,
        table: String,
        column: String,
        message: String,
    },

    /// The session references a parent row (its user) that does not exist, and the
    /// caller did not ask for it to be created (`NewSession::parents`).
    #[error(
        "session {id:?}: {table} has no row {value:?} (referenced by {column}); create it first, or pass it in NewSession::parents (\"parents\" over HTTP) to have it created"
    )]
    ParentNotFound {
        id: String,
        table: String,
        column: String,
        value: String,
    },

    /// A state that PostgreSQL's jsonb would refuse (the code is the JSON error's:
    /// `invalid_json`, `jsonb_incompatible_nul`, `too_large`...).
    #[error("session {id:?}: invalid state: {source}")]
    InvalidState {
        id: String,
        #[source]
        source: JsonError,
    },

    /// What the store holds for a session cannot be read as a session (a legacy row with
    /// a bad timestamp, a state file that is not JSON...).
    #[error("session {id:?}: stored record is invalid ({code}): {message}")]
    InvalidRecord {
        id: String,
        code: &'static str,
        message: String,
    },

    /// A session's place in the sessions folder is not one the store writes into: its
    /// `<id>/` or its `state.json` is a symlink (`symlink_outside_root`), or a special
    /// file (`not_regular_file`). Nothing was written there; final, not retried.
    #[error("{message}")]
    UnsafePath {
        id: String,
        code: &'static str,
        path: PathBuf,
        message: String,
    },

    /// Merge mode could not patch a state without changing it (numbers serde_json cannot
    /// hold exactly).
    #[error("session {id:?}: cannot merge-patch this state without loss: {message}")]
    MergeUnsupported { id: String, message: String },

    /// Every connection of the pool stayed busy for the whole acquire timeout.
    #[error(
        "pool_exhausted: no PostgreSQL connection to {target} came free within {waited:?}: all {max} are in use (pool_size {pool_size} + max_overflow {max_overflow}); raise DB_POOL_SIZE / DB_MAX_OVERFLOW or look for slow queries"
    )]
    PoolExhausted {
        target: String,
        waited: Duration,
        max: usize,
        pool_size: u32,
        max_overflow: u32,
    },

    #[error("the session store is closed")]
    Closed,

    /// Progress writes that failed after their retries; the states they carried are in
    /// the failures.
    #[error("{} progress write(s) failed: {}", failures.len(), summary(failures))]
    ProgressFailed { failures: Vec<Arc<ProgressFailure>> },

    /// Configuration, SQLite, file system and PostgreSQL errors, typed as elsewhere in
    /// sessiondb.
    #[error(transparent)]
    Backend(#[from] crate::error::Error),
}

fn summary(failures: &[Arc<ProgressFailure>]) -> String {
    let mut s = failures
        .iter()
        .take(3)
        .map(|f| format!("session {:?}: {}", f.session, f.error))
        .collect::<Vec<_>>()
        .join("; ");
    if failures.len() > 3 {
        s.push_str(&format!("; and {} more", failures.len() - 3));
    }
    s
}

impl Error {
    /// The stable code naming this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::ReadOnly { .. } => "json_backend_deprecated",
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "conflict",
            Error::InvalidId { .. } => "invalid_id",
            Error::InvalidField { code, .. } => code,
            Error::UnknownColumn { .. } => "unknown_column",
            Error::MissingValue { .. } => "missing_value",
            Error::ParentNotFound { .. } => "parent_not_found",
            Error::InvalidState { source, .. } => source.code(),
            Error::InvalidRecord { code, .. } => code,
            Error::UnsafePath { code, .. } => code,
            Error::MergeUnsupported { .. } => "merge_unsupported",
            Error::PoolExhausted { .. } => "pool_exhausted",
            Error::Closed => "closed",
            Error::ProgressFailed { .. } => "progress_write_failed",
            Error::Backend(e) => e.code(),
        }
    }

    /// Whether trying the same write again may succeed (a connection, a lock, a
    /// privilege an operator can restore). Refusals about the data itself are final.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::ReadOnly { .. }
            | Error::NotFound { .. }
            | Error::AlreadyExists { .. }
            | Error::InvalidId { .. }
            | Error::InvalidField { .. }
            | Error::InvalidState { .. }
            | Error::UnknownColumn { .. }
            | Error::MissingValue { .. }
            | Error::ParentNotFound { .. }
            | Error::InvalidRecord { .. }
            | Error::UnsafePath { .. }
            | Error::MergeUnsupported { .. }
            | Error::Closed
            | Error::ProgressFailed { .. } => false,
            Error::PoolExhausted { .. } | Error::Backend(_) => true,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
