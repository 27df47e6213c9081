//! The target: PostgreSQL. Connecting (errors named with the redacted URL), quoting,
//! the versioned schema, the writers' advisory lock, and health queries.

pub mod catalog;
pub mod load;
pub mod schema;
pub mod tls;

use postgres::Client;

use crate::config::Target;
use crate::error::{Error, Result};

/// Connect to the target, over TLS as its `sslmode` says. Every error names the
/// redacted URL, never the password.
pub fn connect(t: &Target) -> Result<Client> {
    let tls = tls::connector(t)?;
    t.pg.connect(tls).map_err(|e| connect_error(t, e))
}

/// The typed error of a failed connection to `t` (the blocking client's or the pool's):
/// `tls_failed`, `permission_denied`, `postgres_unreachable`, or a database error.
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
        Some(db)
            if db.code() == &postgres::error::SqlState::INVALID_PASSWORD
                || db.code() == &postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            Error::PermissionDenied {
                target: t.display.clone(),
                message,
            }
        }
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

/// Whether this session is encrypted, and with which protocol (`pg_stat_ssl`).
pub fn session_tls(c: &mut Client) -> Result<Option<String>> {
    let row = c
        .query_opt(
            "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
            &[],
        )
        .map_err(|e| Error::pg("reading pg_stat_ssl", "", e))?;
    Ok(row.map(|r| {
        r.get::<_, Option<String>>(0)
            .unwrap_or_else(|| "TLS".into())
    }))
}

/// Quote an identifier for SQL (`"a""b"`): names from config never reach SQL unquoted.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

/// The advisory lock key of writers on this schema.
pub fn lock_key(schema: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("sessiondb-writer:{schema}").as_bytes());
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Who holds the writers' lock, as a sentence: pid, application (it carries the run id),
/// client, and since when. Advisory locks belong to one database: a writer on another
/// database of the same server holds another lock. A role without `pg_read_all_stats`
/// sees only the pid and role of other roles' sessions; the sentence then says so.
pub fn lock_holder(c: &mut Client, schema: &str) -> Result<Option<String>> {
    let key = lock_key(schema);
    let classid = ((key as u64) >> 32) as u32 as i64;
    let objid = (key as u64 & 0xffff_ffff) as i64;
    let rows = c
        .query(
            "SELECT a.pid, a.usename::text, a.application_name,
                    coalesce(a.client_hostname, host(a.client_addr), CASE WHEN a.backend_start IS NOT NULL THEN 'local socket' END),
                    to_char(coalesce(a.xact_start, a.backend_start) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.classid::bigint = $1 AND l.objid::bigint = $2",
            &[&classid, &objid],
        )
        .map_err(|e| Error::pg("looking up the lock holder", "", e))?;
    Ok(rows.first().map(|r| {
        let pid: i32 = r.get(0);
        let role: Option<String> = r.get(1);
        let app: Option<String> = r.get(2);
        let host: Option<String> = r.get(3);
        let since: Option<String> = r.get(4);
        let role = role.unwrap_or_else(|| "?".into());
        match (host, since) {
            (Some(host), Some(since)) => {
                let app = app.unwrap_or_default();
                let run = app
                    .strip_prefix("sessiondb:")
                    .map(|s| format!(", run {s}"))
                    .unwrap_or_else(|| format!(", application {app:?}"));
                format!("pid {pid} (role {role}) on {host}{run}, connected since {since}")
            }
            _ => format!("pid {pid} (role {role}; its other details are not visible to this role)"),
        }
    }))
}

/// The writers' lock, held on a dedicated connection for the whole run and released
/// when dropped (or when the process dies: the server ends the session).
pub struct WriterLock {
    client: Client,
    key: i64,
}

impl WriterLock {
    /// Take the lock or fail at once with `lock_held`, naming the holder.
    pub fn acquire(t: &Target, schema: &str, run_id: &str) -> Result<WriterLock> {
        let mut cfg = t.clone();
        cfg.pg.application_name(&format!("sessiondb:{run_id}"));
        let mut client = connect(&cfg)?;
        let key = lock_key(schema);
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .map_err(|e| Error::pg("taking the writer lock", &t.display, e))?
            .get(0);
        if !got {
            let holder = lock_holder(&mut client, schema)?
                .unwrap_or_else(|| "a session that just ended; retry".into());
            return Err(Error::LockHeld { holder });
        }
        Ok(WriterLock { client, key })
    }

    /// Whether the lock's connection is still alive.
    pub fn alive(&mut self) -> bool {
        self.client.simple_query("SELECT 1").is_ok()
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&self.key]);
    }
}

/// Whether the writers' lock is free right now (preflight, check).
pub fn lock_free(c: &mut Client, schema: &str) -> Result<Option<String>> {
    lock_holder(c, schema)
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
            "SELECT a.attname::text, format_type(a.atttypid, NULL), a.attnotnull, a.atthasdef,
                    CASE WHEN a.atttypmod > 4 AND a.atttypid IN ('varchar'::regtype, 'bpchar'::regtype) THEN a.atttypmod - 4 END
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
            "SELECT con.conname::text, a.attname::text, format('%I.%I', pn.nspname, pc.relname), pa.attname::text
               FROM pg_constraint con
               JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = con.conkey[1]
               JOIN pg_class pc ON pc.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
               JOIN pg_attribute pa ON pa.attrelid = pc.oid AND pa.attnum = con.confkey[1]
              WHERE n.nspname = $1 AND c.relname = $2 AND con.contype = 'f' AND array_length(con.conkey, 1) = 1",
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
