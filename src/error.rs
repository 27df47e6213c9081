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

    /// The config names neither a SQLite store nor a JSON store.
    #[error("the config names no legacy store: neither [sqlite] nor [json]")]
    NoLegacyStore,

    /// The deprecated JSON store does not load: `code` is what is wrong with it
    /// (`invalid_json`, `invalid_utf8`...), as for one of its records.
    #[error("invalid source: {message}")]
    JsonStoreInvalid { code: &'static str, message: String },

    /// Invalid records in the source and no `--quarantine`: nothing was written.
    #[error("invalid source: {message}")]
    InvalidRecords { message: String },

    /// A file `init` was pointed at is not a regular file: it was not read.
    #[error("invalid source: {message}")]
    NotInspectable { message: String },

    /// The deprecated JSON store is read at load time and again, record by record, on
    /// demand; between the two it must not change.
    #[error(
        "the JSON store {path} changed while it was being read ({what}); it is deprecated and read-only, so nothing should write to it: find what does, then run again"
    )]
    SourceChanged { path: PathBuf, what: String },

    /// A state file or a legacy row changed while rollback wrote beside it: nothing
    /// was written there.
    #[error("{message}")]
    ChangedDuringWrite { message: String },

    #[error("conflict: {message}")]
    Conflict { message: String },

    /// The applied schema versions are not this tool's: one was edited, or a newer
    /// sessiondb applied more.
    #[error("{message}")]
    SchemaVersions { message: String },

    /// Schema versions the runtime store needs are not applied (and it may not apply them).
    #[error("{message}")]
    SchemaPending { message: String },

    /// The target's tables cannot take the data as they are shaped (SPEC §9): every
    /// problem named, nothing written.
    #[error("the target cannot take the data, nothing written: {message}")]
    TablesUnfit { message: String },

    /// The data breaks a constraint of the target's tables (NOT NULL, length, unique,
    /// foreign key): every problem named, nothing written.
    #[error("the target cannot take the data, nothing written: {message}")]
    ConstraintViolated { message: String },

    /// The legacy table cannot take what rollback would write into it (a NOT NULL
    /// column without a value, a STRICT column's type): nothing written.
    #[error("{message}")]
    LegacyTableUnfit { message: String },

    /// The backup a run would stand on is not one (no manifest, still `INCOMPLETE`).
    #[error("{message}")]
    BackupIncomplete { message: String },

    /// The backup a run would stand on lacks listed files, or holds them changed.
    #[error("{message}")]
    BackupDamaged { message: String },

    /// The backup taken for a rollback does not hold a file the export replaces.
    #[error("{message}")]
    BackupMissingFile { message: String },

    /// set-default without a passed verify of the current source (and no `--force`).
    #[error("set-default needs a passed verify of the current source: {why}")]
    VerifyRequired { why: String },

    /// The config cannot be rewritten where it is (a read-only filesystem, a
    /// Kubernetes ConfigMap mount): refused when planned, by the dry run too.
    #[error("{message}")]
    ConfigReadOnly { message: String },

    /// The config changed between the plan of an edit and the edit.
    #[error("{message}")]
    ConfigChanged { message: String },

    /// rollback: the config says postgres but the target records no cutover.
    #[error(
        "{config} says postgres but no cutover is recorded in the target, so the previous backend is unknown: edit the file by hand"
    )]
    NoCutover { config: PathBuf },

    #[error(
        "the previous backend was the deprecated JSON store, which is read-only: roll back to sqlite by hand"
    )]
    JsonBackendDeprecated,

    #[error("the target has no sessiondb ledger: nothing was migrated, nothing to export")]
    NothingMigrated,

    /// rollback: PostgreSQL kept changing through every round.
    #[error("{message}")]
    StillWriting { message: String },

    /// A rollback journal that does not agree with the legacy store.
    #[error("{message}")]
    JournalConflict { message: String },

    /// A pipeline stopped because another part of it failed first (that part's error is
    /// the one reported).
    #[error("{message}")]
    Cancelled { message: String },

    /// A bug: a panic, on the main thread or on a worker (a scan stage, a writer).
    #[error("internal error (a bug): {message}")]
    Internal { message: String },

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

    #[error("lock_timeout while {context}: {message}")]
    LockTimeout { context: String, message: String },

    #[error("statement_timeout while {context}: {message}")]
    StatementTimeout { context: String, message: String },

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
            Error::NoLegacyStore => "config_invalid",
            Error::JsonStoreInvalid { code, .. } => code,
            Error::InvalidRecords { .. } => "invalid_records",
            Error::NotInspectable { .. } => "not_regular_file",
            Error::SourceChanged { .. } | Error::ChangedDuringWrite { .. } => "source_changed",
            Error::Conflict { .. } => "conflict",
            Error::SchemaVersions { .. }
            | Error::TablesUnfit { .. }
            | Error::LegacyTableUnfit { .. }
            | Error::SchemaMismatch { .. } => "schema_mismatch",
            Error::SchemaPending { .. } => "schema_pending",
            Error::ConstraintViolated { .. } => "constraint",
            Error::BackupIncomplete { .. } => "backup_incomplete",
            Error::BackupDamaged { .. } => "backup_damaged",
            Error::BackupMissingFile { .. } => "backup_missing_file",
            Error::VerifyRequired { .. } => "verify_required",
            Error::ConfigReadOnly { .. } => "config_read_only",
            Error::ConfigChanged { .. } => "config_changed",
            Error::NoCutover { .. } => "no_cutover",
            Error::JsonBackendDeprecated => "json_backend_deprecated",
            Error::NothingMigrated => "nothing_migrated",
            Error::StillWriting { .. } => "still_writing",
            Error::JournalConflict { .. } => "rollback_journal_conflict",
            Error::Cancelled { .. } => "cancelled",
            Error::Internal { .. } => "internal_error",
            Error::UnsafePath { code, .. } => code,
            Error::BackupSelfCheck { .. } => "backup_self_check_failed",
            Error::StepFailed { .. } => "step_failed",
            Error::SchemaNotWired { .. } => "not_implemented",
            Error::MappingInvalid { .. } => "config_invalid",
            Error::SourceSchema { .. } => "sqlite_schema",
            Error::ConfigExists { .. } => "config_exists",
            Error::LockTimeout { .. } => "lock_timeout",
            Error::StatementTimeout { .. } => "statement_timeout",
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
            | Error::NoLegacyStore
            | Error::ConfigExists { .. } => exit::USAGE,
            Error::JsonStoreInvalid { .. }
            | Error::InvalidRecords { .. }
            | Error::NotInspectable { .. }
            | Error::ChangedDuringWrite { .. }
            | Error::Conflict { .. }
            | Error::SchemaVersions { .. }
            | Error::SchemaPending { .. }
            | Error::TablesUnfit { .. }
            | Error::ConstraintViolated { .. }
            | Error::LegacyTableUnfit { .. }
            | Error::BackupIncomplete { .. }
            | Error::BackupDamaged { .. }
            | Error::BackupMissingFile { .. }
            | Error::VerifyRequired { .. }
            | Error::ConfigReadOnly { .. }
            | Error::ConfigChanged { .. }
            | Error::NoCutover { .. }
            | Error::JsonBackendDeprecated
            | Error::NothingMigrated
            | Error::StillWriting { .. }
            | Error::JournalConflict { .. }
            | Error::SourceSchema { .. }
            | Error::SchemaMismatch { .. }
            | Error::UnsafePath { .. } => exit::PROBLEMS,
            Error::StepFailed { exit, .. } => *exit,
            Error::PostgresUnreachable { .. }
            | Error::TlsFailed { .. }
            | Error::PermissionDenied { .. }
            | Error::Database { .. }
            | Error::LockHeld { .. }
            | Error::Unreadable { .. }
            | Error::Write { .. }
            | Error::DiskSpace { .. }
            | Error::NotSqlite { .. }
            | Error::SqliteCorrupt { .. }
            | Error::Sqlite { .. }
            | Error::SourceChanged { .. }
            | Error::BackupSelfCheck { .. }
            | Error::LockTimeout { .. }
            | Error::StatementTimeout { .. }
            | Error::Cancelled { .. }
            | Error::Internal { .. } => exit::OPERATIONAL,
        }
    }

    /// The report's finding for this error: its code, its message with every cause,
    /// and the path it is about.
    pub fn finding(&self) -> crate::report::Finding {
        let f = crate::report::Finding::new(self.code(), error_chain(self));
        match self.path() {
            Some(p) => f.path(p),
            None => f,
        }
    }

    /// The file or folder this error is about, when it names one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Unreadable { path, .. }
            | Error::NotRegularFile { path, .. }
            | Error::Write { path, .. }
            | Error::UnsafePath { path, .. }
            | Error::BackupSelfCheck { dir: path, .. } => Some(path),
            _ => None,
        }
    }

    /// A panic caught at the edge of a step, as [`Error::Internal`].
    pub fn panicked(payload: &(dyn std::any::Any + Send)) -> Error {
        Error::Internal {
            message: panic_message(payload),
        }
    }

    /// Map a PostgreSQL client error met while doing `context`.
    pub fn pg(context: &str, target: &str, err: postgres::Error) -> Error {
        if let Some(db) = err.as_db_error() {
            let message = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if db.code() == &postgres::error::SqlState::LOCK_NOT_AVAILABLE {
                return Error::LockTimeout {
                    context: context.to_owned(),
                    message: format!(
                        "{message}: another session holds a lock on the rows or tables being written (lock_timeout; see pg_locks); nothing of this batch was written"
                    ),
                };
            }
            if db.code() == &postgres::error::SqlState::QUERY_CANCELED {
                return Error::StatementTimeout {
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

/// What a panic said (its payload, when it is text).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
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
