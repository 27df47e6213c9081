//! PostgreSQL, the target: the one room for it. Connecting (every connection's
//! `search_path`, TLS, errors named with the redacted URL), quoting, the permissions
//! probe; and in its modules the writers' lock (`lock`), the versioned schema
//! (`schema`), the target's catalog (`catalog`, `constraints`), the session rows as
//! sessiondb reads them (`rows`), the classification reads (`classify`), the ledger and
//! the run records (`ledger`), the load (`load`), the server's own facts (`server`).
//! Every statement on sessiondb's own tables is here; the runtime store (`crate::store`)
//! keeps its own queries on the application's tables, through the same connection
//! setup.

pub mod app;
pub mod catalog;
pub mod classify;
pub mod constraints;
pub mod ledger;
pub mod load;
pub mod lock;
pub mod rows;
pub mod schema;
pub mod server;
pub mod tls;
pub mod trust;

pub use lock::{WriterLock, lock_key};

use postgres::Client;

use crate::config::{Target, ToastCompression};
use crate::error::{Error, Result};

/// Connect to the target, over TLS as its `sslmode` says. Every error names the
/// redacted URL, never the password.
pub fn connect(t: &Target) -> Result<Client> {
    let tls = tls::connector(t)?;
    t.pg.connect(tls).map_err(|e| connect_error(t, e))
}

/// A connection whose waits for row and table locks are bounded by `lock_timeout`
/// (`30s` unless `SESSIONDB_LOCK_TIMEOUT` says): a writer fails with `lock_timeout`
/// rather than wait behind the application for ever.
///
/// Large values it writes are compressed as `toast` says (`postgres.toast_compression`,
/// lz4 unless the config says otherwise): a server that cannot (before PostgreSQL 14, or
/// built without lz4) keeps its own `default_toast_compression`, said once on stderr.
pub fn connect_writer(t: &Target, lock_timeout: &str, toast: ToastCompression) -> Result<Client> {
    let mut c = connect(t)?;
    c.execute(
        "SELECT pg_catalog.set_config('lock_timeout', $1, false)",
        &[&lock_timeout],
    )
    .map_err(|e| Error::pg("setting lock_timeout", &t.display, e))?;
    if let Some(method) = toast.setting() {
        let set = c.execute(
            "SELECT pg_catalog.set_config('default_toast_compression', $1, false)",
            &[&method],
        );
        if let Err(e) = set {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "postgres.toast_compression = {method:?} is not available on this server ({}): \
                     the server's own default_toast_compression is used",
                    crate::redact::text(&crate::error::error_chain(&e))
                )
            });
        }
    }
    Ok(c)
}

/// A read-only, repeatable-read transaction on `c`: every read in it sees one snapshot.
pub fn read_only_snapshot(c: &mut Client) -> Result<postgres::Transaction<'_>> {
    c.build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| Error::pg("starting a transaction", "", e))
}

/// The typed error of a failed connection to `t` (the blocking client's or the pool's):
/// `tls_failed`, `auth_failed`, `postgres_unreachable`, or a database error.
pub fn connect_error(t: &Target, e: postgres::Error) -> Error {
    if let Some(reason) = tls::failure(&e, t) {
        return Error::TlsFailed {
            target: t.display.clone(),
            sslmode: t.tls.mode.to_string(),
            root_cert: t.tls.root_cert.as_ref().map(|r| r.path.clone()),
            reason: crate::redact::text(&reason),
        };
    }
    let message = crate::redact::text(&crate::error::error_chain(&e));
    match e.as_db_error() {
        Some(db) if crate::error::is_auth_failure(db.code()) => Error::AuthFailed {
            target: t.display.clone(),
            message,
        },
        Some(db) if db.code() == &postgres::error::SqlState::INVALID_CATALOG_NAME => {
            Error::PostgresUnreachable {
                target: t.display.clone(),
                message,
            }
        }
        Some(_) => Error::Database {
            context: format!("connecting to {}", t.display),
            message,
        },
        None => Error::PostgresUnreachable {
            target: t.display.clone(),
            message,
        },
    }
}

/// Quote an identifier for SQL (`"a""b"`): names from config never reach SQL unquoted.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The `search_path` of every connection: `pg_catalog` first, so that no function,
/// operator, type or table another role created in the configured schema can stand in
/// for a built-in of the same name and argument types; then the configured schema;
/// `pg_temp` last, so that a temporary table never shadows anything (sessiondb names its
/// own as `pg_temp.name`).
///
/// search_path alone does not stop a function whose argument types match a call *better*
/// than the built-in's (`public.convert_to(text, text)` beats
/// `pg_catalog.convert_to(text, name)` for a literal): every built-in the tool's SQL
/// calls is written `pg_catalog.name(...)`, and every operator has operands of the exact
/// types of a pg_catalog operator or is written `OPERATOR(pg_catalog.=)`.
pub fn search_path(schema: &str) -> String {
    format!("pg_catalog, {}, pg_temp", ident(schema))
}

/// The startup `options` that set [`search_path`] for `schema` from the connection's
/// first statement on, after whatever `options` the connection string gave (the last
/// `-c` of a setting wins, so the URL cannot undo it). The server splits `options` at
/// whitespace unless escaped with a backslash: a schema name may hold spaces, quotes,
/// commas or backslashes.
pub fn startup_options(given: Option<&str>, schema: &str) -> String {
    let mut value = String::new();
    for c in format!("search_path={}", search_path(schema)).chars() {
        if c == '\\' || c.is_ascii_whitespace() || c == '\u{b}' {
            value.push('\\');
        }
        value.push(c);
    }
    match given.map(str::trim).filter(|g| !g.is_empty()) {
        Some(g) => format!("{g} -c {value}"),
        None => format!("-c {value}"),
    }
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

/// What the connected role may do with the session tables in a schema: the one probe
/// behind `postgres_permissions` in both `check` and `preflight`, so that they agree.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Permissions {
    pub schema: String,
    pub schema_exists: bool,
    /// How many of `sessions` and `session_state` exist already.
    pub existing_tables: i32,
    /// SELECT, INSERT and UPDATE on every one of them that exists.
    pub read_write: bool,
    /// CREATE in the schema (in the database when the schema does not exist yet).
    pub create: bool,
    /// The database, and TEMPORARY on it: the load stages each batch, `verify` holds
    /// its ids (a mapped store's, its rows) and a mapped store's plan its hashes in
    /// temporary tables.
    pub database: String,
    pub temporary: bool,
    /// The session's transactions are read-only (`default_transaction_read_only`, for
    /// the role or the database, or a standby): nothing can be written, whatever the
    /// grants say.
    pub read_only: bool,
    /// The server is a standby.
    pub in_recovery: bool,
}

impl Permissions {
    pub fn probe(c: &mut Client, schema: &str) -> Result<Permissions> {
        let r = c
            .query_one(
                "WITH t AS (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE n.nspname = $1 AND c.relname IN ('sessions', 'session_state') AND c.relkind IN ('r', 'p'))
                 SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
                        (SELECT pg_catalog.count(*) FROM t)::int,
                        (SELECT coalesce(pg_catalog.bool_and(pg_catalog.has_table_privilege(oid, 'SELECT')
                                 AND pg_catalog.has_table_privilege(oid, 'INSERT')
                                 AND pg_catalog.has_table_privilege(oid, 'UPDATE')), true) FROM t),
                        CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)
                             THEN pg_catalog.has_schema_privilege($1, 'CREATE')
                             ELSE pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE') END,
                        pg_catalog.current_setting('transaction_read_only')::bool,
                        pg_catalog.pg_is_in_recovery(),
                        pg_catalog.current_database()::pg_catalog.text,
                        pg_catalog.has_database_privilege(pg_catalog.current_database(), 'TEMPORARY')",
                &[&schema],
            )
            .map_err(|e| Error::pg("checking permissions", "", e))?;
        Ok(Permissions {
            schema: schema.to_owned(),
            schema_exists: r.get(0),
            existing_tables: r.get(1),
            read_write: r.get(2),
            create: r.get(3),
            read_only: r.get(4),
            in_recovery: r.get(5),
            database: r.get(6),
            temporary: r.get(7),
        })
    }

    /// Why `user` cannot migrate into the schema, and what to do; `None` when it can.
    pub fn problem(&self, user: &str) -> Option<String> {
        let schema = &self.schema;
        if self.in_recovery {
            return Some(
                "the server is a standby (in recovery): every session is read-only; point the URL at the primary"
                    .into(),
            );
        }
        if self.read_only {
            return Some(format!(
                "the session is read-only (default_transaction_read_only = on, set for role {user} or its database): \
                 nothing can be written; run `ALTER ROLE {} SET default_transaction_read_only = off` (or ALTER DATABASE), or use a role that may write",
                ident(user)
            ));
        }
        if !self.read_write {
            return Some(format!(
                "missing SELECT/INSERT/UPDATE on the session tables in schema {schema}"
            ));
        }
        if self.existing_tables < 2 && !self.create {
            return Some(format!(
                "no CREATE privilege in schema {schema}, and the tables do not exist yet"
            ));
        }
        None
    }

    /// Why `user` cannot run the migration's steps for want of TEMPORARY (the load
    /// stages its batches, verify its ids, a mapped plan its hashes in temporary
    /// tables); the runtime store does not need it.
    pub fn temporary_problem(&self, user: &str) -> Option<String> {
        (!self.temporary).then(|| {
            format!(
                "no TEMPORARY privilege on database {db}: migrate-state, verify and a mapped store's plan use temporary tables; \
                 run `GRANT TEMPORARY ON DATABASE {} TO {}`",
                ident(&self.database),
                ident(user),
                db = self.database
            )
        })
    }

    /// The check's summary when there is no problem.
    pub fn summary(&self) -> String {
        format!(
            "can {} in schema {}",
            if self.existing_tables < 2 {
                "create the tables"
            } else {
                "read and write the tables"
            },
            self.schema
        )
    }
}

/// A column of an existing target table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Column {
    pub name: String,
    pub data_type: String,
    pub not_null: bool,
    pub has_default: bool,
    pub max_len: Option<i32>,
}

/// A foreign key of `sessions`: `column` references `parent(parent_column)`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ForeignKey {
    pub name: String,
    pub column: String,
    pub parent: String,
    pub parent_column: String,
}

/// What the application's existing `sessions` table requires of the data.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableShape {
    pub columns: Vec<Column>,
    /// Single-column unique constraints and unique indexes.
    pub unique: Vec<String>,
    pub foreign_keys: Vec<ForeignKey>,
}

/// The shape of `schema.table` if it exists.
pub fn table_shape(c: &mut Client, schema: &str, table: &str) -> Result<Option<TableShape>> {
    let err = |e| Error::pg("reading the target table", "", e);
    let cols = c
        .query(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, NULL::integer), a.attnotnull, a.atthasdef,
                    CASE WHEN a.atttypmod > 4 AND a.atttypid IN ('pg_catalog.varchar'::pg_catalog.regtype::oid, 'pg_catalog.bpchar'::pg_catalog.regtype::oid) THEN a.atttypmod - 4 END
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&schema, &table],
        )
        .map_err(err)?;
    if cols.is_empty() {
        return Ok(None);
    }
    let columns = cols
        .iter()
        .map(|r| Column {
            name: r.get(0),
            data_type: r.get(1),
            not_null: r.get(2),
            has_default: r.get(3),
            max_len: r.get(4),
        })
        .collect();
    let unique = c
        .query(
            "SELECT a.attname::text FROM pg_index i
               JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
              WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indnatts = 1 AND i.indpred IS NULL",
            &[&schema, &table],
        )
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let foreign_keys = c
        .query(
            "SELECT con.conname::text, a.attname::text, pg_catalog.format('%I.%I', pn.nspname, pc.relname), pa.attname::text
               FROM pg_constraint con
               JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = con.conkey[1]
               JOIN pg_class pc ON pc.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
               JOIN pg_attribute pa ON pa.attrelid = pc.oid AND pa.attnum = con.confkey[1]
              WHERE n.nspname = $1 AND c.relname = $2 AND con.contype = 'f' AND pg_catalog.array_length(con.conkey, 1) = 1",
            &[&schema, &table],
        )
        .map_err(err)?
        .iter()
        .map(|r| ForeignKey { name: r.get(0), column: r.get(1), parent: r.get(2), parent_column: r.get(3) })
        .collect();
    Ok(Some(TableShape {
        columns,
        unique,
        foreign_keys,
    }))
}
