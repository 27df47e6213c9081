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

    #[error(
        "config file not found: {} ({how}; the working folder is {}). A step reads --config PATH, else $SESSIONDB_CONFIG, else ./sessiondb.toml in the working folder; `sessiondb init` writes one for an existing store",
        absolute(path).display(),
        working_folder()
    )]
    ConfigNotFound { path: PathBuf, how: String },

    #[error("config file {path} is invalid: {message}")]
    ConfigInvalid { path: PathBuf, message: String },

    #[error("invalid setting {name}: {message}")]
    SettingInvalid { name: String, message: String },

    #[error(
        "no PostgreSQL target configured: set {url_env}, postgres.url in {config}, or the libpq PG* variables"
    )]
    NoTarget { url_env: String, config: String },

    #[error("cannot connect to {target}: {message}")]
    PostgresUnreachable { target: String, message: String },

    /// PostgreSQL refused the login (SQLSTATE 28P01 invalid_password, 28000
    /// invalid_authorization_specification: a wrong password or user, or pg_hba.conf).
    #[error(
        "authentication failed for {target}: {message}; check the user and password of the URL (or the libpq PG* variables) and pg_hba.conf"
    )]
    AuthFailed { target: String, message: String },

    /// The TLS handshake failed, or the server does not speak TLS under an `sslmode`
    /// that needs it. `reason` says why in plain words.
    #[error("cannot connect to {target} over TLS (sslmode={sslmode}{}): {reason}", root_cert.as_ref().map(|p| format!(", sslrootcert {}", p.display())).unwrap_or_default())]
    TlsFailed {
        target: String,
        sslmode: String,
        root_cert: Option<PathBuf>,
        reason: String,
    },

    #[error("permission denied on {target}: {message}")]
    PermissionDenied { target: String, message: String },

    /// A relation sessiondb would use carries another role's code (SPEC §2, a hostile
    /// database): see `pg::trust`.
    #[error("untrusted object in the target: {message}")]
    UntrustedObject { message: String },

    #[error("database error while {context}: {message}")]
    Database { context: String, message: String },

    /// The writers' lock is held. `pid` is the PostgreSQL backend pid of the session that
    /// holds it, when known (a rollback journal's file lock has none).
    #[error("{}", lock_held_message(holder, *pid))]
    LockHeld { holder: String, pid: Option<i32> },

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

    #[error(
        "not enough disk space in {path}: need {}, {} available",
        crate::progress::human_bytes(*need),
        crate::progress::human_bytes(*available)
    )]
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
    /// `quarantine` says whether `--quarantine` could set them aside (not on a mapped
    /// store, nor for rows that do not convert to their column).
    #[error("invalid source: {message}")]
    InvalidRecords { message: String, quarantine: bool },

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

    #[error("a lock wait timed out while {context}: {message}")]
    LockTimeout { context: String, message: String },

    #[error("a statement timed out while {context}: {message}")]
    StatementTimeout { context: String, message: String },

    /// A config that maps the application's own schema (SPEC §9), given to a step that
    /// reads only the default table so far: refused rather than read the wrong columns.
    #[error(
        "{step} cannot do this on a mapped store yet: {config} maps the application's own schema, and {keys} is not supported there yet. Nothing was done"
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
    #[error("the target cannot take the data: {table}{}: {message}; fix: {fix}", column.as_ref().map(|c| format!(".{c}")).unwrap_or_default())]
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
            Error::AuthFailed { .. } => "auth_failed",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::UntrustedObject { .. } => "untrusted_object",
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
            | Error::UntrustedObject { .. }
            | Error::UnsafePath { .. } => exit::PROBLEMS,
            Error::StepFailed { exit, .. } => *exit,
            Error::PostgresUnreachable { .. }
            | Error::TlsFailed { .. }
            | Error::AuthFailed { .. }
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

    /// What to do about this error: what to check, then the command to run next (the
    /// table [`CODES`]); a held lock names its backend pid in both.
    pub fn next_steps(&self) -> Vec<String> {
        match self {
            Error::LockHeld { pid: Some(pid), .. } => vec![
                format!("check who holds the lock: SELECT * FROM pg_stat_activity WHERE pid = {pid} (a PostgreSQL backend pid, on the database server)"),
                format!("wait for that run to end; only once it is sure to be dead (not merely slow), end it with SELECT pg_terminate_backend({pid}), then run this step again"),
            ],
            Error::InvalidRecords {
                quarantine: false, ..
            } => vec![
                "check the records the report names (all are in `--report-dir`'s `*-invalid.jsonl`)".to_owned(),
                "then: fix them in the source and run again (`--quarantine` cannot set them aside here)".to_owned(),
            ],
            Error::ConfigNotFound { .. } => vec![
                format!(
                    "check the working folder ({}), --config PATH and $SESSIONDB_CONFIG",
                    working_folder()
                ),
                "sessiondb init (writes a commented sessiondb.toml for an existing store), or pass --config PATH".to_owned(),
            ],
            e => next_steps_for(e.code()),
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
            if is_auth_failure(db.code()) {
                return Error::AuthFailed {
                    target: target.to_owned(),
                    message,
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

/// SQLSTATE 28P01 (invalid_password) and 28000 (invalid_authorization_specification):
/// the server refused the login.
pub fn is_auth_failure(code: &postgres::error::SqlState) -> bool {
    code == &postgres::error::SqlState::INVALID_PASSWORD
        || code == &postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
}

/// `p` made absolute against the working folder (as it was given if that fails).
fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn working_folder() -> String {
    std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|e| format!("unknown: {e}"))
}

fn lock_held_message(holder: &str, pid: Option<i32>) -> String {
    match pid {
        Some(pid) => format!(
            "another sessiondb writer holds the writers' lock: {holder}. {pid} is a PostgreSQL backend pid (a session on the database server, not a process on this machine): see it with SELECT * FROM pg_stat_activity WHERE pid = {pid}; once sure that run is dead, end it with SELECT pg_terminate_backend({pid})"
        ),
        None => format!("another sessiondb writer is running: {holder}"),
    }
}

/// The report's `next_steps` for an error of `code`: what to check, then what to run.
pub fn next_steps_for(code: &str) -> Vec<String> {
    CODES
        .iter()
        .find(|c| c.code == code)
        .map(|c| vec![format!("check {}", c.check), format!("then: {}", c.next)])
        .unwrap_or_default()
}

/// One row of [`CODES`].
#[derive(Debug, Clone, Copy)]
pub struct CodeHelp {
    pub code: &'static str,
    pub means: &'static str,
    pub check: &'static str,
    pub next: &'static str,
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

/// What each error code means, what to check and what to run next: the report's
/// `next_steps` for an error ([`Error::next_steps`]) and the table of
/// runbooks/incident.md (a test keeps the two and [`Error::code`] together).
pub const CODES: &[CodeHelp] = &[
    CodeHelp {
        code: "usage",
        means: "the command line is wrong: an unknown flag, a missing value, `--dry-run false` with a space",
        check: "the message and the step's `--help`; flag values take `=` (`--dry-run=false`)",
        next: "`sessiondb <step> --help`",
    },
    CodeHelp {
        code: "not_implemented",
        means: "this step cannot do that yet (e.g. a mapped store given to a step not wired for it)",
        check: "the message: it names what is missing; nothing was done",
        next: "`sessiondb check` (reads any store), then report it to the maintainers",
    },
    CodeHelp {
        code: "config_not_found",
        means: "no config file where the step looked",
        check: "the message: the working folder, `--config`, `$SESSIONDB_CONFIG`, `./sessiondb.toml`",
        next: "`sessiondb init` (writes one), or pass `--config PATH`",
    },
    CodeHelp {
        code: "config_invalid",
        means: "the config file does not parse, or a setting has a bad value; or no PostgreSQL target is set",
        check: "the file and line the message names; `$DATABASE_URL` (or `postgres.url_env`) for the target",
        next: "fix the file, then `sessiondb check`",
    },
    CodeHelp {
        code: "config_exists",
        means: "`init` found a config already at its destination",
        check: "whether the existing config is still wanted",
        next: "`sessiondb init --print` to compare, or `sessiondb init --force` (the old one is kept as a .bak)",
    },
    CodeHelp {
        code: "config_read_only",
        means: "the config cannot be rewritten where it is (read-only filesystem, a ConfigMap mount)",
        check: "the mount; where the application reads its config",
        next: "edit the config at its source (the ConfigMap), or rerun where the file is writable",
    },
    CodeHelp {
        code: "config_changed",
        means: "the config changed between the plan of an edit and the edit",
        check: "who else edits the config",
        next: "rerun the same step: it plans on the file as it is now",
    },
    CodeHelp {
        code: "postgres_unreachable",
        means: "no connection to PostgreSQL: host, port or database wrong, server down, network",
        check: "the report's `target` (password masked): host, port, database; is the server up",
        next: "`sessiondb check --backend postgres`",
    },
    CodeHelp {
        code: "tls_failed",
        means: "the TLS handshake failed, or the server has no SSL under an sslmode that needs it",
        check: "`sslmode`, `sslrootcert`, the host name the certificate was issued for",
        next: "`sessiondb check --backend postgres` after fixing the URL's TLS settings",
    },
    CodeHelp {
        code: "auth_failed",
        means: "PostgreSQL refused the login: wrong password or user, or pg_hba.conf rejects this client (SQLSTATE 28P01 / 28000)",
        check: "the user and password in `$DATABASE_URL` (or `postgres.url_env`), and pg_hba.conf for this host",
        next: "fix the credentials, then `sessiondb check --backend postgres`",
    },
    CodeHelp {
        code: "permission_denied",
        means: "logged in, but the role lacks a privilege (CREATE on the schema, SELECT/INSERT/UPDATE on a table), or a file or folder cannot be written",
        check: "the privilege or path the message names; `sessiondb check --backend postgres` lists the role's privileges",
        next: "`GRANT` what is missing (or fix the file's owner/mode), then rerun",
    },
    CodeHelp {
        code: "untrusted_object",
        means: "a table sessiondb would read or write carries code of a role it does not trust (a trigger, rule, default, CHECK or index expression calling that role's function), is a view where a table belongs, or is one of sessiondb's own tables created by another role: writing would run that code with sessiondb's privileges",
        check: "the relation, function and owner the message names (`\\d+ schema.table`, `\\df+ function`); who created them and why",
        next: "drop what was planted (or have its owner `ALTER ... OWNER TO` a trusted role, or run sessiondb as that owner), then rerun",
    },
    CodeHelp {
        code: "database_error",
        means: "PostgreSQL returned an error this tool does not expect",
        check: "the SQLSTATE and message; the server log",
        next: "fix the cause, then rerun the same step (it is safe to rerun)",
    },
    CodeHelp {
        code: "lock_held",
        means: "another sessiondb writer holds the writers' lock on this schema",
        check: "the PostgreSQL backend pid the message names: `SELECT * FROM pg_stat_activity WHERE pid = N`",
        next: "wait for that run; only once it is sure to be dead, `SELECT pg_terminate_backend(N)`, then rerun",
    },
    CodeHelp {
        code: "lock_timeout",
        means: "another session held a lock on the rows or tables being written past lock_timeout",
        check: "`SELECT * FROM pg_locks WHERE NOT granted` and who holds what",
        next: "rerun once that session is done (committed batches are kept)",
    },
    CodeHelp {
        code: "statement_timeout",
        means: "a statement ran longer than the role's statement_timeout",
        check: "the role's statement_timeout; the batch size",
        next: "raise statement_timeout for the role, or rerun with a smaller `--batch-size`",
    },
    CodeHelp {
        code: "unreadable",
        means: "a file or folder cannot be read (permissions, a missing volume, an I/O error)",
        check: "the path the message names: its owner, mode, and the mount",
        next: "fix access, then rerun",
    },
    CodeHelp {
        code: "not_regular_file",
        means: "a configured path or a state file is a FIFO, a device, a socket or another special file: refused, never read",
        check: "the path the message names (`ls -l`)",
        next: "point the config at the real file, or remove the special file, then rerun",
    },
    CodeHelp {
        code: "symlink_outside_root",
        means: "a path is a symlink, or leads outside the store: not followed, nothing written through it",
        check: "the link the message names (`ls -l`)",
        next: "replace the link with the real file or folder, then rerun",
    },
    CodeHelp {
        code: "io_error",
        means: "a write failed for another reason than space or permission",
        check: "the path and the OS error in the message",
        next: "fix the cause, then rerun",
    },
    CodeHelp {
        code: "disk_space",
        means: "not enough free space where the step writes (the backup folder, the target)",
        check: "`df -h` on the folder the message names",
        next: "free space or set `backup.dir` elsewhere, then rerun (`sessiondb preflight` checks the room)",
    },
    CodeHelp {
        code: "not_sqlite",
        means: "the configured SQLite path is not a SQLite database",
        check: "`sqlite.path` in the config",
        next: "point `sqlite.path` at the application's database, then `sessiondb check`",
    },
    CodeHelp {
        code: "sqlite_corrupt",
        means: "the SQLite database is damaged",
        check: "`sqlite3 PATH 'PRAGMA integrity_check'`",
        next: "restore the database from the application's own backup, then rerun",
    },
    CodeHelp {
        code: "sqlite_error",
        means: "SQLite returned an error (locked, busy, I/O)",
        check: "the message; whether the application holds a long write transaction",
        next: "rerun once the application's write is done",
    },
    CodeHelp {
        code: "sqlite_schema",
        means: "the SQLite schema cannot be read as needed (a cycle of foreign keys, a table without a primary key)",
        check: "the table the message names",
        next: "fix the mapping in the config (`sessiondb init --print` proposes one), then `sessiondb check`",
    },
    CodeHelp {
        code: "invalid_json",
        means: "a state file or a JSON store record is not valid JSON",
        check: "the file or session the message names",
        next: "fix the file, or rerun with `--quarantine` to set it aside (raw bytes kept)",
    },
    CodeHelp {
        code: "invalid_utf8",
        means: "a state file or a record is not UTF-8 text",
        check: "the file or session the message names",
        next: "fix the file, or rerun with `--quarantine`",
    },
    CodeHelp {
        code: "jsonb_incompatible_nul",
        means: "a state holds `\\u0000`, which PostgreSQL's jsonb cannot store",
        check: "the session the message names",
        next: "remove the NUL from the state, or rerun with `--quarantine`",
    },
    CodeHelp {
        code: "invalid_timestamp",
        means: "a timestamp column holds something that is not a time",
        check: "the session and column the message names",
        next: "fix the row, or rerun with `--quarantine`",
    },
    CodeHelp {
        code: "invalid_cost",
        means: "`cost` is not a number",
        check: "the session the message names",
        next: "fix the row, or rerun with `--quarantine`",
    },
    CodeHelp {
        code: "invalid_id",
        means: "a session id is empty or not text",
        check: "the row the message names",
        next: "fix the row, or rerun with `--quarantine`",
    },
    CodeHelp {
        code: "too_large",
        means: "a state is larger than the limit",
        check: "the session and size in the message",
        next: "shrink the state, or rerun with `--quarantine`",
    },
    CodeHelp {
        code: "unsupported_version",
        means: "the deprecated JSON store declares a `version` this tool does not read",
        check: "the file's `version` field; which application version wrote it",
        next: "nothing was read: report it with the file's first lines; do not edit the store",
    },
    CodeHelp {
        code: "state_changing",
        means: "a state file kept being rewritten in place while it was read: never loaded torn",
        check: "what writes that file (the application still running?)",
        next: "once the application has settled, rerun `migrate-state --dry-run=false`",
    },
    CodeHelp {
        code: "invalid_records",
        means: "invalid records in the source and no `--quarantine`: nothing was written",
        check: "the list in `--report-dir`'s `*-invalid.jsonl`",
        next: "fix the records, or `migrate-state --dry-run=false --quarantine`",
    },
    CodeHelp {
        code: "source_changed",
        means: "the deprecated JSON store (or a file being replaced) changed while it was read",
        check: "what writes the JSON store: it should be read-only",
        next: "stop that writer, then rerun",
    },
    CodeHelp {
        code: "conflict",
        means: "target rows differ from what sessiondb last wrote there",
        check: "`details.conflicts` (all in `migrate-state-conflicts.jsonl`): which side is right",
        next: "`migrate-state --on-conflict source-wins` or `--on-conflict skip` (dry run first), or `migrate-state --recheck`",
    },
    CodeHelp {
        code: "schema_mismatch",
        means: "the target's tables cannot take the data (a missing column, a type too narrow, a NOT NULL without a value), or the applied schema versions are not this tool's",
        check: "the table, column and fix the message names",
        next: "`ALTER TABLE` as the message says, then rerun (nothing was written)",
    },
    CodeHelp {
        code: "schema_pending",
        means: "schema versions the runtime store needs are not applied",
        check: "`sessiondb check --backend postgres` (postgres_schema)",
        next: "`migrate-state --dry-run=false` applies them",
    },
    CodeHelp {
        code: "constraint",
        means: "the data breaks a constraint of the target (NOT NULL, length, unique, foreign key)",
        check: "the example sessions in the message; `sessiondb preflight` lists them all",
        next: "fix the data or the constraint, then rerun (nothing was written)",
    },
    CodeHelp {
        code: "backup_incomplete",
        means: "the backup folder never finished (its INCOMPLETE marker, or no manifest.json): it is not a backup",
        check: "the folder the message names",
        next: "`sessiondb backup` (a new one; the next backup removes the leftover)",
    },
    CodeHelp {
        code: "backup_damaged",
        means: "the backup lacks a file its manifest lists, or holds it changed",
        check: "`sessiondb backup --verify DIR` lists every problem",
        next: "do not restore from it: `sessiondb backup`, or leave out `--backup` and the real run takes one",
    },
    CodeHelp {
        code: "backup_missing_file",
        means: "the backup taken for a rollback does not hold a file the export would replace",
        check: "whether the file changed since the backup",
        next: "rerun `rollback --dry-run=false` (it takes a fresh backup)",
    },
    CodeHelp {
        code: "backup_self_check_failed",
        means: "a backup just written did not read back as written (it keeps its INCOMPLETE marker)",
        check: "the disk (`dmesg`, `df -h`) and the files the message names",
        next: "`sessiondb backup` again, on a sound disk",
    },
    CodeHelp {
        code: "verify_required",
        means: "set-default needs a passed verify of the current source",
        check: "the last verify's report",
        next: "`sessiondb verify`, then `set-default --dry-run=false`",
    },
    CodeHelp {
        code: "no_cutover",
        means: "the config says postgres but the target records no cutover, so the previous backend is unknown",
        check: "whether set-default was run against this database",
        next: "edit the config's backend by hand",
    },
    CodeHelp {
        code: "json_backend_deprecated",
        means: "the previous backend was the deprecated JSON store, which is read-only",
        check: "that the application can run on sqlite",
        next: "roll back to sqlite by hand: set `backend = \"sqlite\"`",
    },
    CodeHelp {
        code: "nothing_migrated",
        means: "the target has no sessiondb ledger: nothing was migrated, nothing to export",
        check: "the database in `$DATABASE_URL`",
        next: "nothing to roll back; check the URL if you expected a migration",
    },
    CodeHelp {
        code: "still_writing",
        means: "sessions kept changing in PostgreSQL through every round of the export",
        check: "that the application has stopped writing to PostgreSQL",
        next: "stop the application's writes, then `rollback --dry-run=false` again",
    },
    CodeHelp {
        code: "rollback_journal_conflict",
        means: "a rollback journal does not agree with the legacy store",
        check: "the journal and the files it names",
        next: "see runbooks/rollback.md before rerunning `rollback --dry-run=false`",
    },
    CodeHelp {
        code: "cancelled",
        means: "this part stopped because another part failed first (that error is reported)",
        check: "the other error in the report",
        next: "fix that error, then rerun",
    },
    CodeHelp {
        code: "internal_error",
        means: "a bug (a panic)",
        check: "the message; the report",
        next: "rerun with `SESSIONDB_LOG=debug` and report it with the report attached",
    },
    CodeHelp {
        code: "step_failed",
        means: "a step of `migrate to postgres` failed",
        check: "the nested step's report in `details`",
        next: "fix that step's error (its own next steps), then rerun `sessiondb migrate to postgres`",
    },
];

pub type Result<T, E = Error> = std::result::Result<T, E>;
