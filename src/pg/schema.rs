//! The versioned target schema (SPEC §2). Each version is applied once, in a
//! transaction, and recorded with its checksum; an applied version is never edited
//! (add a new one). Tables the application created already are used as they are.

use postgres::{Client, GenericClient};
use serde::Serialize;
use sha2::Digest;

use super::{ident, qualified};
use crate::config::IndexBuildTiming;
use crate::error::{Error, Result};

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    /// SQL with `{schema}` standing for the quoted schema name.
    pub sql: &'static str,
    /// Whether the runtime store needs it (else it is sessiondb's own bookkeeping: the
    /// application runs on a target where it is still pending).
    pub store_needs: bool,
}

pub const VERSIONS_TABLE: &str = "sessiondb_schema_versions";
pub const GIN_INDEX: &str = "session_state_state_gin";

/// The versions' SQL calls no function but `now()` in column defaults (resolved once,
/// when the table is created, with pg_catalog first in the search_path: see
/// [`super::search_path`]). An applied version is never edited, so new SQL that calls
/// built-ins goes in a new version, written `pg_catalog.name(...)`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "sessions, session_state and bookkeeping",
        store_needs: true,
        sql: r#"
CREATE TABLE IF NOT EXISTS {schema}.sessions (
    id text PRIMARY KEY,
    user_id text,
    status text,
    current_step text,
    cost double precision,
    created_at timestamptz,
    updated_at timestamptz,
    state jsonb
);
CREATE TABLE IF NOT EXISTS {schema}.session_state (
    session_id text PRIMARY KEY REFERENCES {schema}.sessions(id) ON DELETE CASCADE,
    state jsonb NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.sessiondb_runs (
    run_id uuid PRIMARY KEY,
    step text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status text NOT NULL DEFAULT 'running',
    host text,
    pid integer,
    tool_version text,
    source_fingerprint text,
    backup text,
    counts jsonb
);
CREATE TABLE IF NOT EXISTS {schema}.sessiondb_ledger (
    session_id text PRIMARY KEY,
    status text NOT NULL,
    content_hash text,
    state_hash text,
    code text,
    source_stamp text,
    run_id uuid NOT NULL,
    migrated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {schema}.sessiondb_verifications (
    run_id uuid PRIMARY KEY,
    verified_at timestamptz NOT NULL DEFAULT now(),
    source_fingerprint text NOT NULL,
    passed boolean NOT NULL,
    sample integer,
    counts jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.sessiondb_cutovers (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,
    from_backend text NOT NULL,
    to_backend text NOT NULL,
    config_path text NOT NULL,
    config_sha256 text NOT NULL,
    verify_run_id uuid,
    run_id uuid NOT NULL
);
"#,
    },
    Migration {
        version: 2,
        name: "ledger: the row versions sessiondb last wrote",
        store_needs: false,
        // The `xmin` of the `sessions` and `session_state` rows as sessiondb committed
        // them (32-bit transaction ids, as bigint): a row whose xmin moved was rewritten
        // by someone. NULL: not known yet (ledgers written before this version), learned
        // by the next run (`pg::ledger::learn_unknown`).
        sql: r#"
ALTER TABLE {schema}.sessiondb_ledger
    ADD COLUMN IF NOT EXISTS sessions_xmin bigint,
    ADD COLUMN IF NOT EXISTS state_xmin bigint;
"#,
    },
    Migration {
        version: 3,
        name: "ledger of the rows of copied tables (application schemas)",
        store_needs: false,
        // SPEC §9: the rows of the tables copied with the sessions (parents by foreign
        // key, `copy_tables`), keyed by (table, primary key as text), with the content
        // hash (`v2:`) of what sessiondb last wrote there, so that a catch-up writes
        // only the rows that changed.
        sql: r#"
CREATE TABLE IF NOT EXISTS {schema}.sessiondb_row_ledger (
    table_name text NOT NULL,
    row_key text NOT NULL,
    content_hash text NOT NULL,
    run_id uuid NOT NULL,
    migrated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (table_name, row_key)
);
"#,
    },
];

pub fn checksum(m: &Migration) -> String {
    hex::encode(sha2::Sha256::digest(m.sql.as_bytes()))
}

fn render(m: &Migration, schema: &str) -> String {
    m.sql.replace("{schema}", &ident(schema))
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Status {
    pub applied: Vec<i32>,
    pub pending: Vec<i32>,
    /// Applied with a checksum other than this tool's: someone edited a version.
    pub mismatched: Vec<i32>,
    /// Applied by a newer tool.
    pub unknown: Vec<i32>,
}

impl Status {
    /// The pending versions that the runtime store needs (the others are sessiondb's
    /// own bookkeeping, applied by the next `migrate-state --dry-run=false`).
    pub fn pending_for_store(&self) -> Vec<i32> {
        self.pending
            .iter()
            .copied()
            .filter(|v| MIGRATIONS.iter().any(|m| m.version == *v && m.store_needs))
            .collect()
    }

    pub fn problems(&self) -> Option<String> {
        if !self.mismatched.is_empty() {
            return Some(format!(
                "schema version(s) {:?} were applied with a different checksum than this tool's: an applied version was edited; restore it or add a new version",
                self.mismatched
            ));
        }
        if !self.unknown.is_empty() {
            return Some(format!(
                "schema version(s) {:?} were applied by a newer sessiondb; use that version",
                self.unknown
            ));
        }
        None
    }
}

pub fn table_exists(c: &mut impl GenericClient, schema: &str, table: &str) -> Result<bool> {
    c.query_one(
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        &[&qualified(schema, table)],
    )
    .map(|r| r.get(0))
    .map_err(|e| Error::pg("reading the catalog", "", e))
}

/// What is applied and what is pending.
pub fn status(c: &mut impl GenericClient, schema: &str) -> Result<Status> {
    // Nothing of the schema is read before it is known to run no planted code.
    crate::pg::trust::check(c, schema, &["sessions", "session_state"])?;
    let mut s = Status::default();
    let applied: Vec<(i32, String)> = if table_exists(c, schema, VERSIONS_TABLE)? {
        c.query(
            &format!(
                "SELECT version, checksum FROM {} ORDER BY version",
                qualified(schema, VERSIONS_TABLE)
            ),
            &[],
        )
        .map_err(|e| Error::pg("reading schema versions", "", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    } else {
        Vec::new()
    };
    for (v, sum) in &applied {
        match MIGRATIONS.iter().find(|m| m.version == *v) {
            Some(m) if &checksum(m) == sum => s.applied.push(*v),
            Some(_) => s.mismatched.push(*v),
            None => s.unknown.push(*v),
        }
    }
    for m in MIGRATIONS {
        if !applied.iter().any(|(v, _)| *v == m.version) {
            s.pending.push(m.version);
        }
    }
    Ok(s)
}

/// Apply every pending version inside the caller's transaction. Returns what was applied.
pub fn apply(tx: &mut impl GenericClient, schema: &str, run_id: &str) -> Result<Vec<i32>> {
    crate::pg::trust::check(tx, schema, &["sessions", "session_state"])?;
    let schema_exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .map_err(|e| Error::pg("reading the catalog", "", e))?
        .get(0);
    if !schema_exists {
        tx.batch_execute(&format!("CREATE SCHEMA {}", ident(schema)))
            .map_err(|e| Error::pg("creating the schema", "", e))?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT pg_catalog.now(), run_id uuid)",
        qualified(schema, VERSIONS_TABLE)
    ))
    .map_err(|e| Error::pg("creating the schema versions table", "", e))?;
    let st = status(tx, schema)?;
    if let Some(p) = st.problems() {
        return Err(Error::SchemaVersions { message: p });
    }
    let run = uuid::Uuid::parse_str(run_id).ok();
    let mut done = Vec::new();
    for m in MIGRATIONS
        .iter()
        .filter(|m| st.pending.contains(&m.version))
    {
        tx.batch_execute(&render(m, schema)).map_err(|e| {
            Error::pg(
                &format!("applying schema version {} ({})", m.version, m.name),
                "",
                e,
            )
        })?;
        tx.execute(
            &format!(
                "INSERT INTO {} (version, name, checksum, run_id) VALUES ($1, $2, $3, $4)",
                qualified(schema, VERSIONS_TABLE)
            ),
            &[&m.version, &m.name, &checksum(m), &run],
        )
        .map_err(|e| Error::pg("recording a schema version", "", e))?;
        done.push(m.version);
    }
    Ok(done)
}

/// How the GIN index of a load into an empty target is built, and the memory its work
/// gets, for the report (`details.index_build`).
#[derive(Debug, Clone, Serialize)]
pub struct IndexBuild {
    /// `during_load` (the COPY streams fill the empty index's pending list, moved into
    /// the index as it fills and at the end) or `after_load` (one `CREATE INDEX`):
    /// `postgres.index_build`.
    pub strategy: IndexBuildTiming,
    /// `maintenance_work_mem` of the build, or of the final move of the pending list, as
    /// PostgreSQL writes it.
    pub maintenance_work_mem: String,
    /// Each COPY stream's `gin_pending_list_limit` and `work_mem` (which its moves of
    /// the pending list use), during the load: the memory shared between the streams.
    pub writer_memory: Option<String>,
    /// `postgres.index_build_memory` (or its default), as PostgreSQL writes it.
    pub configured: String,
    /// The server machine's memory when this role may read it (`/proc/meminfo`
    /// through `pg_read_file`), as PostgreSQL writes it; the index work never gets
    /// more than a quarter of it.
    pub server_memory: Option<String>,
    /// The index's size on disk once built (`pg_relation_size`).
    pub index_bytes: Option<i64>,
    /// Why the pending list was left for autovacuum to move into the index (the load's
    /// rows are committed and found through it either way), when the final move failed.
    pub pending_list_left: Option<String>,
}

impl IndexBuild {
    /// The memory for the index work of a load by `writers` COPY streams:
    /// `configured_kb` (`postgres.index_build_memory`), never more than a quarter of the
    /// server's memory when that can be read; split between the streams during the
    /// load (at least 1 MB each), whole for the build or the final move.
    pub fn plan(
        c: &mut Client,
        configured_kb: u64,
        strategy: IndexBuildTiming,
        writers: u32,
    ) -> IndexBuild {
        let server = server_memory_kb(c);
        let kb = match server {
            Some(total) => configured_kb.min((total / 4).max(1024)),
            None => configured_kb,
        };
        let writer_kb = (strategy == IndexBuildTiming::DuringLoad)
            .then(|| (kb / u64::from(writers.max(1))).max(1024));
        IndexBuild {
            strategy,
            maintenance_work_mem: size_text(kb),
            writer_memory: writer_kb.map(size_text),
            configured: size_text(configured_kb),
            server_memory: server.map(|kb| size_text(kb / 1024 * 1024)),
            index_bytes: None,
            pending_list_left: None,
        }
    }

    /// Whether the index is created before the load, for the COPY streams to fill.
    pub fn during_load(&self) -> bool {
        self.strategy == IndexBuildTiming::DuringLoad
    }

    /// A COPY stream's session, before it writes: its pending-list limit and the
    /// `work_mem` that a move of the list into the index uses (session settings).
    pub fn set_writer_memory(&self, c: &mut Client) -> Result<()> {
        let Some(value) = &self.writer_memory else {
            return Ok(());
        };
        c.execute(
            "SELECT pg_catalog.set_config('gin_pending_list_limit', $1, false),
                    pg_catalog.set_config('work_mem', $1, false)",
            &[value],
        )
        .map_err(|e| {
            Error::pg(
                "setting gin_pending_list_limit and work_mem for the load",
                "",
                e,
            )
        })?;
        Ok(())
    }

    /// The build, or the final move of the pending list, on `c`: `maintenance_work_mem`
    /// set for it, then the index created (`after_load`) or its pending list moved
    /// into it (`during_load`), and its size noted.
    pub fn finish(&mut self, c: &mut Client, schema: &str, opclass: &str) -> Result<()> {
        c.execute(
            "SELECT pg_catalog.set_config('maintenance_work_mem', $1, false)",
            &[&self.maintenance_work_mem],
        )
        .map_err(|e| Error::pg("setting maintenance_work_mem for the index build", "", e))?;
        // The index there (filled during the load, or left by a run killed after its
        // build), else the one created now.
        let name = match index_state(c, schema)? {
            Some((name, _, _)) => {
                if self.during_load() {
                    // Not the load's failure: its rows are committed, and a query reads
                    // the pending list too (as autovacuum will move it) — said, not
                    // refused.
                    if let Err(e) = c.execute(
                        "SELECT pg_catalog.gin_clean_pending_list($1::text::pg_catalog.regclass)",
                        &[&qualified(schema, &name)],
                    ) {
                        self.pending_list_left =
                            Some(crate::redact::text(&crate::error::error_chain(&e)));
                    }
                }
                name
            }
            None => {
                ensure_gin_index(c, schema, opclass)?;
                GIN_INDEX.to_owned()
            }
        };
        self.index_bytes = c
            .query_one(
                "SELECT pg_catalog.pg_relation_size($1::text::pg_catalog.regclass)",
                &[&qualified(schema, &name)],
            )
            .ok()
            .map(|r| r.get(0));
        Ok(())
    }
}

/// A size in kB as PostgreSQL writes memory settings (`8MB`, `1GB`, `1536kB`).
pub fn size_text(kb: u64) -> String {
    if kb % (1024 * 1024) == 0 {
        format!("{}GB", kb / (1024 * 1024))
    } else if kb % 1024 == 0 {
        format!("{}MB", kb / 1024)
    } else {
        format!("{kb}kB")
    }
}

/// The server machine's total memory in kB, when this role may read `/proc/meminfo`
/// (a superuser, or a member of `pg_read_server_files` with `pg_read_file` granted);
/// `None` otherwise, also on a server without that file. Asked outside any
/// transaction: a refusal aborts nothing.
fn server_memory_kb(c: &mut Client) -> Option<u64> {
    let may: bool = c
        .query_one(
            "SELECT pg_catalog.has_function_privilege('pg_catalog.pg_read_file(text, bigint, bigint, boolean)', 'EXECUTE')
                AND pg_catalog.pg_has_role(current_user, 'pg_read_server_files', 'USAGE')",
            &[],
        )
        .ok()?
        .get(0);
    if !may {
        return None;
    }
    let text: Option<String> = c
        .query_one(
            "SELECT pg_catalog.pg_read_file('/proc/meminfo', 0, 4096, true)",
            &[],
        )
        .ok()?
        .get(0);
    meminfo_total_kb(&text?)
}

/// `MemTotal` of a `/proc/meminfo` text, in kB.
fn meminfo_total_kb(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n = words.next()?.parse::<u64>().ok()?;
    (words.next() == Some("kB")).then_some(n)
}

/// Create the GIN index on `session_state.state` if it is missing.
pub fn ensure_gin_index(c: &mut impl GenericClient, schema: &str, opclass: &str) -> Result<bool> {
    if index_state(c, schema)?.is_some() {
        return Ok(false);
    }
    c.batch_execute(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {} USING gin (state pg_catalog.{})",
        ident(GIN_INDEX),
        qualified(schema, "session_state"),
        opclass
    ))
    .map_err(|e| Error::pg("building the GIN index", "", e))?;
    Ok(true)
}

/// The GIN index on session_state.state: `Some((name, valid, opclass))` when one exists.
pub fn index_state(
    c: &mut impl GenericClient,
    schema: &str,
) -> Result<Option<(String, bool, String)>> {
    let rows = c
        .query(
            "SELECT ci.relname::text, i.indisvalid AND i.indisready, coalesce(oc.opcname::text, '')
               FROM pg_index i
               JOIN pg_class ci ON ci.oid = i.indexrelid
               JOIN pg_class ct ON ct.oid = i.indrelid
               JOIN pg_namespace n ON n.oid = ct.relnamespace
               JOIN pg_am am ON am.oid = ci.relam
               LEFT JOIN pg_opclass oc ON oc.oid = i.indclass[0]
              WHERE n.nspname = $1 AND ct.relname = 'session_state' AND am.amname = 'gin'
              ORDER BY 2 DESC LIMIT 1",
            &[&schema],
        )
        .map_err(|e| Error::pg("reading indexes", "", e))?;
    Ok(rows.first().map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// Every whole-column GIN index on `session_state.state` (not partial, not on an
/// expression): `(name, opclass)`, by name.
pub fn gin_indexes(c: &mut impl GenericClient, schema: &str) -> Result<Vec<(String, String)>> {
    let rows = c
        .query(
            "SELECT ci.relname::pg_catalog.text, coalesce(oc.opcname::pg_catalog.text, '')
               FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_class ci ON ci.oid = i.indexrelid
               JOIN pg_catalog.pg_class ct ON ct.oid = i.indrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = ct.relnamespace
               JOIN pg_catalog.pg_am am ON am.oid = ci.relam
               JOIN pg_catalog.pg_attribute a ON a.attrelid = ct.oid AND a.attname = 'state'
               LEFT JOIN pg_catalog.pg_opclass oc ON oc.oid = i.indclass[0]
              WHERE n.nspname = $1 AND ct.relname = 'session_state' AND am.amname = 'gin'
                AND i.indnatts = 1 AND i.indkey[0] = a.attnum AND i.indpred IS NULL
              ORDER BY 1",
            &[&schema],
        )
        .map_err(|e| Error::pg("reading indexes", "", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The `duplicate_gin_index` warning when `session_state.state` has more than one GIN
/// index (say the application's and sessiondb's): every write updates each, and one
/// serves the queries.
pub fn duplicate_gin(
    c: &mut impl GenericClient,
    schema: &str,
) -> Result<Option<crate::report::Finding>> {
    let all = gin_indexes(c, schema)?;
    if all.len() < 2 {
        return Ok(None);
    }
    let names: Vec<String> = all.iter().map(|(n, o)| format!("{n} ({o})")).collect();
    let keep = all
        .iter()
        .find(|(n, _)| n != GIN_INDEX)
        .map_or(all[0].0.as_str(), |(n, _)| n.as_str());
    Ok(Some(crate::report::Finding::new(
        "duplicate_gin_index",
        format!(
            "session_state.state has {} GIN indexes: {}; each slows every write and one serves the queries: keep the one your queries use (say {keep}) and drop the others (DROP INDEX CONCURRENTLY), checking their opclass first (jsonb_path_ops serves only @>)",
            all.len(),
            names.join(", ")
        ),
    )))
}

/// Apply the schema in a transaction that is rolled back: DDL errors surface, nothing changes.
pub fn rehearse(c: &mut Client, schema: &str, run_id: &str) -> Result<Vec<i32>> {
    let mut tx = c
        .transaction()
        .map_err(|e| Error::pg("starting a transaction", "", e))?;
    tx.batch_execute("SET LOCAL lock_timeout = '5s'")
        .map_err(|e| Error::pg("setting lock_timeout", "", e))?;
    let r = apply(&mut tx, schema, run_id);
    let _ = tx.rollback();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_and_written_as_postgresql_does() {
        assert_eq!(size_text(8 * 1024), "8MB");
        assert_eq!(size_text(2 * 1024 * 1024), "2GB");
        assert_eq!(size_text(1536), "1536kB");
        let meminfo = "MemTotal:       24568236 kB\nMemFree:          712908 kB\n";
        assert_eq!(meminfo_total_kb(meminfo), Some(24568236));
        assert_eq!(meminfo_total_kb("MemFree: 1 kB\n"), None);
        assert_eq!(meminfo_total_kb("MemTotal: 12 MB\n"), None);
        assert_eq!(meminfo_total_kb("MemTotal: x kB\n"), None);
    }
}
