//! Typed errors. Each variant names what failed and carries its context; `code()` is the
//! stable snake_case code of the report (SPEC §6) and `exit_code()` its exit code (SPEC §4).
//! Messages are lowercase fragments. A connection string is redacted where it is built
//! into a variant (`Target.display`), a driver's error text through `redact::text`, and
//! `report::emit` masks every secret the configuration holds in the report's values.

use std::path::PathBuf;

use crate::exit;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("usage: {0}")]
    Usage(String),

    #[error("{step} is not implemented yet")]
    NotImplemented { step: &'static str },

    #[error("config file not found: {path} ({how})")]
    ConfigNotFound { path: PathBuf, how: String },

    #[error("config file {path} is invalid: {message}")]
    ConfigInvalid { path: PathBuf, message: String },

    #[error("invalid setting {name}: {message}")]
    SettingInvalid { name: String, message: String },

    #[error(
        "no PostgreSQL target configured: set {url_env}, postgres.url in {config}, or the libpq PG* variables"
    )]
    NoTarget { url_env: String, config: String },

    #[error("postgres_unreachable: cannot connect to {target}: {message}")]
    PostgresUnreachable { target: String, message: String },

    /// The TLS handshake failed, or the server does not speak TLS under an `sslmode`
    /// that needs it. `reason` says why in plain words.
    #[error("tls_failed: cannot connect to {target} over TLS (sslmode={sslmode}{}): {reason}", root_cert.as_ref().map(|p| format!(", sslrootcert {}", p.display())).unwrap_or_default())]
    TlsFailed {
        target: String,
        sslmode: String,
        root_cert: Option<PathBuf>,
        reason: String,
    },

    #[error("permission denied on {target}: {message}")]
    PermissionDenied { target: String, message: String },

    #[error("database error while {context}: {message}")]
    Database { context: String, message: String },

    #[error("lock held: another sessiondb writer is running ({holder})")]
    LockHeld { holder: String },

    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A configured path (the config file, `sqlite.path`, `json.path`,
    /// `sqlite.sessions_dir`) is a FIFO, a device, a socket or a file of a kernel
    /// pseudo-filesystem: refused before anything was read from it.
    #[error("{path} is {what}")]
    NotRegularFile {
        path: PathBuf,
        what: crate::fsutil::NotRegular,
    },

    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("not enough disk space in {path}: need {need} bytes, {available} available")]
    DiskSpace {
        path: PathBuf,
        need: u64,
        available: u64,
    },

    #[error("{path} is not a SQLite database: {message}")]
    NotSqlite { path: PathBuf, message: String },

    #[error("SQLite database {path} is corrupt: {message}")]
    SqliteCorrupt { path: PathBuf, message: String },

    #[error("SQLite database {path}: {message}")]
    Sqlite { path: PathBuf, message: String },

    #[error("invalid source: {message}")]
    InvalidSource { code: &'static str, message: String },

    /// The deprecated JSON store is read at load time and again, record by record, on
    /// demand; between the two it must not change.
    #[error(
        "the JSON store {path} changed while it was being read ({what}); it is deprecated and read-only, so nothing should write to it: find what does, then run again"
    )]
    SourceChanged { path: PathBuf, what: String },

    #[error("conflict: {message}")]
    Conflict { message: String },

    #[error("{message}")]
    Refused { code: &'static str, message: String },

    /// A target column whose values sessiondb cannot read as the type it expects.
    #[error(
        "schema_mismatch: cannot read {table}.{column}: {message} (preflight's constraints check says what the column must be)"
    )]
    ColumnDecode {
        table: String,
        column: String,
        message: String,
    },

    /// A path a write would go through is not what it must be: a symlink, or a path
    /// leading outside the store (`symlink_outside_root`), or a special file where a
    /// folder or a regular file belongs (`not_regular_file`). Nothing was written there.
    #[error("{message}")]
    UnsafePath {
        code: &'static str,
        path: PathBuf,
        message: String,
    },

    #[error("backup {dir} failed its self-check (it keeps its INCOMPLETE marker): {message}")]
    BackupSelfCheck { dir: PathBuf, message: String },

    #[error("{code} while {context}: {message}")]
    Timeout {
        code: &'static str,
        context: String,
        message: String,
    },

    /// A config that maps the application's own schema (SPEC §9), given to a step that
    /// reads only the default table so far: refused rather than read the wrong columns.
    #[error(
        "{step} cannot read this store yet: {config} maps the application's own schema ({keys}), and reading a mapped store is not wired into {step} yet (issue 17); `sessiondb init` and `sessiondb check` read it. Nothing was done"
    )]
    SchemaNotWired {
        step: String,
        config: PathBuf,
        keys: String,
    },

    /// The config names a table or column that the SQLite database does not have, or
    /// maps its fields in a way the table cannot satisfy.
    #[error("{config}: {key}: {message}")]
    MappingInvalid {
        config: PathBuf,
        key: String,
        message: String,
    },

    /// The source's schema cannot be read as SPEC §9 needs (a cycle of foreign keys, a
    /// copied table without a primary key...).
    #[error("SQLite database {path}: {message}")]
    SourceSchema { path: PathBuf, message: String },

    /// The target cannot hold the source as it is (SPEC §9): names the table, the
    /// column and the fix.
    #[error("schema_mismatch: {table}{}: {message}; fix: {fix}", column.as_ref().map(|c| format!(".{c}")).unwrap_or_default())]
    SchemaMismatch {
        table: String,
        column: Option<String>,
        message: String,
        fix: String,
    },

    /// `init` found a config already at its destination and was not given `--force`,
    /// or the destination is not a regular file.
    #[error("{path} {why}; nothing was written")]
    ConfigExists { path: PathBuf, why: String },

    #[error("step {step} failed (exit {exit}): {message}")]
    StepFailed {
        step: String,
        exit: i32,
        message: String,
    },
}

impl Error {
    /// The error of reading `path`: [`Error::NotRegularFile`] when the read was refused
    /// because `path` is not a regular file (see [`crate::fsutil::open_regular`]), else
    /// [`Error::Unreadable`].
    pub fn read(path: &std::path::Path, e: std::io::Error) -> Error {
        match crate::fsutil::not_regular(&e) {
            Some(what) => Error::NotRegularFile {
                path: path.to_path_buf(),
                what,
            },
            None => Error::Unreadable {
                path: path.to_path_buf(),
                source: e,
            },
        }
    }

    /// The stable code that names this error in a report.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage",
            Error::NotImplemented { .. } => "not_implemented",
            Error::ConfigNotFound { .. } => "config_not_found",
            Error::ConfigInvalid { .. } | Error::SettingInvalid { .. } => "config_invalid",
            Error::NoTarget { .. } => "config_invalid",
            Error::PostgresUnreachable { .. } => "postgres_unreachable",
            Error::TlsFailed { .. } => "tls_failed",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::Database { .. } => "database_error",
            Error::LockHeld { .. } => "lock_held",
            Error::Unreadable { .. } => "unreadable",
            Error::NotRegularFile { .. } => "not_regular_file",
            Error::Write { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                "disk_space"
            }
            Error::Write { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                "permission_denied"
            }
            Error::Write { .. } => "io_error",
            Error::DiskSpace { .. } => "disk_space",
            Error::NotSqlite { .. } => "not_sqlite",
            Error::SqliteCorrupt { .. } => "sqlite_corrupt",
            Error::Sqlite { .. } => "sqlite_error",
            Error::InvalidSource { code, .. } => code,
            Error::SourceChanged { .. } => "source_changed",
            Error::Conflict { .. } => "conflict",
            Error::Refused { code, .. } => code,
            Error::ColumnDecode { .. } => "schema_mismatch",
            Error::UnsafePath { code, .. } => code,
            Error::BackupSelfCheck { .. } => "backup_self_check_failed",
            Error::StepFailed { .. } => "step_failed",
            Error::SchemaNotWired { .. } => "not_implemented",
            Error::MappingInvalid { .. } => "config_invalid",
            Error::SourceSchema { .. } => "sqlite_schema",
            Error::SchemaMismatch { .. } => "schema_mismatch",
            Error::ConfigExists { .. } => "config_exists",
            Error::Timeout { code, .. } => code,
        }
    }

    /// The exit code this error ends a step with.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_)
            | Error::NotImplemented { .. }
            | Error::ConfigNotFound { .. }
            | Error::ConfigInvalid { .. }
            | Error::SettingInvalid { .. }
            | Error::NoTarget { .. }
            | Error::NotRegularFile { .. }
            | Error::SchemaNotWired { .. }
            | Error::MappingInvalid { .. }
            | Error::ConfigExists { .. } => exit::USAGE,
            Error::InvalidSource { .. }
            | Error::Conflict { .. }
            | Error::Refused { .. }
            | Error::ColumnDecode { .. }
            | Error::SourceSchema { .. }
            | Error::SchemaMismatch { .. } => exit::PROBLEMS,
            Error::UnsafePath { .. } => exit::PROBLEMS,
            Error::StepFailed { exit, .. } => *exit,
            _ => exit::OPERATIONAL,
        }
    }

    /// Map a PostgreSQL client error met while doing `context`.
    pub fn pg(context: &str, target: &str, err: postgres::Error) -> Error {
        if let Some(db) = err.as_db_error() {
            let message = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if db.code() == &postgres::error::SqlState::LOCK_NOT_AVAILABLE {
                return Error::Timeout {
                    code: "lock_timeout",
                    context: context.to_owned(),
                    message: format!(
                        "{message}: another session holds a lock on the rows or tables being written (lock_timeout; see pg_locks); nothing of this batch was written"
                    ),
                };
            }
            if db.code() == &postgres::error::SqlState::QUERY_CANCELED {
                return Error::Timeout {
                    code: "statement_timeout",
                    context: context.to_owned(),
                    message: format!(
                        "{message}: a statement ran longer than the role's statement_timeout; nothing of this batch was written (raise it, or lower --batch-size)"
                    ),
                };
            }
            if db.code() == &postgres::error::SqlState::INSUFFICIENT_PRIVILEGE {
                return Error::PermissionDenied {
                    target: target.to_owned(),
                    message,
                };
            }
            return Error::Database {
                context: context.to_owned(),
                message,
            };
        }
        if err.is_closed() || is_connection_error(&err) {
            return Error::PostgresUnreachable {
                target: target.to_owned(),
                message: error_chain(&err),
            };
        }
        Error::Database {
            context: context.to_owned(),
            message: error_chain(&err),
        }
    }
}

fn is_connection_error(err: &postgres::Error) -> bool {
    let text = format!("{err:?}");
    text.contains("Connect") || text.contains("Io") || text.contains("Timeout")
}

/// The message of an error and of every cause below it, joined with ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
