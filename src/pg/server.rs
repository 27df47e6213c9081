//! What `check` and `preflight` read of the server itself (not of sessiondb's tables):
//! its version and settings, the role, the session's TLS, extensions, invalid indexes
//! and load. Read-only, every built-in written `pg_catalog.`.

use postgres::Client;
use serde::Serialize;

use crate::error::{Error, Result};

/// The server and the session, as `check` and `preflight` report them.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub server_version: String,
    pub server_encoding: String,
    pub user: String,
    pub database: String,
    pub search_path: String,
    /// The session's TLS protocol (`pg_stat_ssl`), `None` when not encrypted.
    pub tls: Option<String>,
}

impl Info {
    pub fn read(c: &mut Client, target: &str) -> Result<Info> {
        let r = c
            .query_one(
                "SELECT pg_catalog.current_setting('server_version'), pg_catalog.current_setting('server_encoding'),
                        current_user::text, pg_catalog.current_database()::text, pg_catalog.current_setting('search_path')",
                &[],
            )
            .map_err(|e| Error::pg("reading server settings", target, e))?;
        Ok(Info {
            server_version: r.get(0),
            server_encoding: r.get(1),
            user: r.get(2),
            database: r.get(3),
            search_path: r.get(4),
            tls: session_tls(c)?,
        })
    }

    /// sessiondb stores text as it is: the server must be UTF8.
    pub fn utf8(&self) -> bool {
        self.server_encoding.eq_ignore_ascii_case("UTF8")
    }

    /// How the session is carried, for a summary: `over TLSv1.3`, `not encrypted`.
    pub fn carried(&self) -> String {
        self.tls
            .as_deref()
            .map_or("not encrypted".to_owned(), |v| format!("over {v}"))
    }
}

/// Whether this session is encrypted, and with which protocol (`pg_stat_ssl`).
pub fn session_tls(c: &mut Client) -> Result<Option<String>> {
    let row = c
        .query_opt(
            "SELECT version FROM pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid() AND ssl",
            &[],
        )
        .map_err(|e| Error::pg("reading pg_stat_ssl", "", e))?;
    Ok(row.map(|r| {
        r.get::<_, Option<String>>(0)
            .unwrap_or_else(|| "TLS".into())
    }))
}

/// The installed extensions, as `name version`.
pub fn extensions(c: &mut Client, target: &str) -> Result<Vec<String>> {
    Ok(c.query(
        "SELECT pg_catalog.format('%s %s', extname, extversion) FROM pg_extension ORDER BY 1",
        &[],
    )
    .map_err(|e| Error::pg("checking the server", target, e))?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// The indexes of `schema` that are not valid (a failed `CREATE INDEX CONCURRENTLY`).
pub fn invalid_indexes(c: &mut Client, schema: &str, target: &str) -> Result<Vec<String>> {
    Ok(c
        .query(
            "SELECT ci.relname::text FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ci.relnamespace
              WHERE n.nspname = $1 AND NOT (i.indisvalid AND i.indisready)",
            &[&schema],
        )
        .map_err(|e| Error::pg("checking indexes", target, e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The server's load: connections against `max_connections`, lock waits, and
/// queries running over five minutes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Health {
    pub connections: i64,
    pub max_connections: i64,
    pub lock_waits: i64,
    pub long_running: i64,
}

impl Health {
    pub fn read(c: &mut Client, target: &str) -> Result<Health> {
        let h = c
            .query_one(
                "SELECT (SELECT pg_catalog.count(*) FROM pg_stat_activity)::bigint,
                        pg_catalog.current_setting('max_connections')::bigint,
                        (SELECT pg_catalog.count(*) FROM pg_locks WHERE NOT granted)::bigint,
                        (SELECT pg_catalog.count(*) FROM pg_stat_activity WHERE state <> 'idle' AND pid <> pg_catalog.pg_backend_pid()
                            AND backend_type = 'client backend' AND pg_catalog.now() - query_start > interval '5 minutes')::bigint",
                &[],
            )
            .map_err(|e| Error::pg("checking the server", target, e))?;
        Ok(Health {
            connections: h.get(0),
            max_connections: h.get(1),
            lock_waits: h.get(2),
            long_running: h.get(3),
        })
    }

    /// Nine tenths of the connections in use, a lock wait, or a long query.
    pub fn strained(&self) -> bool {
        self.connections * 10 >= self.max_connections * 9
            || self.lock_waits > 0
            || self.long_running > 0
    }
}
