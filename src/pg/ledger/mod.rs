//! The ledger: sessiondb's own record, in the target, of what it wrote there and of
//! each run. Every statement on its tables is in this module, each row read into a
//! type of its own:
//!
//! - `sessiondb_ledger`, one row a session (or a quarantined record): [`LedgerRow`] —
//!   the content hash sessiondb last wrote, the source stamp it was read with; read a
//!   batch at a time ([`rows`], [`known_stamps`]), written in the transaction of the
//!   batch it records ([`adopt`], [`restamp`], [`record_quarantined`], [`record_staged`],
//!   [`COPY_COLUMNS`]) or of the rollback round that exported it ([`record_exported`]);
//! - the row versions of the target rows it wrote ([`versions`]);
//! - the runs, verifications and cutovers ([`runs`]).
//!
//! The ledger is keyed by session id today; rows of other tables (SPEC §9) join it by
//! (table, key) in a ledger of their own.

pub mod runs;
pub mod tables;
pub mod versions;

use std::collections::{HashMap, HashSet};

use postgres::{GenericClient, Transaction};

use super::qualified;
use crate::error::{Error, Result};
use crate::source::{Invalid, Session};

/// The ledger's table.
pub const TABLE: &str = "sessiondb_ledger";
/// `status` of a session sessiondb wrote (its `content_hash` is what it wrote).
pub const MIGRATED: &str = "migrated";
/// `status` of an invalid record a run set aside (its `code` says why).
pub const QUARANTINED: &str = "quarantined";

/// The columns a fresh load's COPY fills, in order ([`crate::pg::load`] renders them).
pub const COPY_COLUMNS: &str =
    "session_id, status, content_hash, state_hash, run_id, source_stamp, sessions_xmin, state_xmin";

/// One ledger row, as the plan reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub status: String,
    pub content_hash: Option<String>,
    pub source_stamp: Option<String>,
}

impl LedgerRow {
    /// The content hash of what sessiondb last wrote, for a migrated session.
    pub fn written(&self) -> Option<&str> {
        (self.status == MIGRATED)
            .then_some(self.content_hash.as_deref())
            .flatten()
    }
}

/// `"schema"."sessiondb_ledger"`.
fn table(schema: &str) -> String {
    qualified(schema, TABLE)
}

/// Whether the ledger exists (a target sessiondb never wrote has none).
pub fn exists(c: &mut impl GenericClient, schema: &str) -> Result<bool> {
    super::schema::table_exists(c, schema, TABLE)
}

/// Whether the ledger holds any row at all.
pub fn any_row(c: &mut impl GenericClient, schema: &str) -> Result<bool> {
    c.query_one(
        &format!("SELECT EXISTS (SELECT 1 FROM {})", table(schema)),
        &[],
    )
    .map(|r| r.get(0))
    .map_err(|e| Error::pg("reading the target", "", e))
}

/// Whether the ledger records any session as migrated (`false` without a ledger).
pub fn any_migrated(c: &mut impl GenericClient, schema: &str) -> Result<bool> {
    if !exists(c, schema)? {
        return Ok(false);
    }
    c.query_one(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE status = '{MIGRATED}')",
            table(schema)
        ),
        &[],
    )
    .map(|r| r.get(0))
    .map_err(|e| Error::pg("reading the ledger", "", e))
}

/// The ledger rows of `ids`.
pub fn rows(
    c: &mut impl GenericClient,
    schema: &str,
    ids: &[&str],
) -> Result<HashMap<String, LedgerRow>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = c
        .query(
            &format!(
                "SELECT session_id, status, content_hash, source_stamp FROM {} WHERE session_id = ANY($1)",
                table(schema)
            ),
            &[&ids],
        )
        .map_err(|e| Error::pg("reading the ledger", "", e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                LedgerRow {
                    status: r.get(1),
                    content_hash: r.get(2),
                    source_stamp: r.get(3),
                },
            )
        })
        .collect())
}

/// Of the `(id, stamp)` pairs, the ids the ledger records as migrated with that very
/// source stamp: their sources are as sessiondb last read them. One index scan over the
/// ids (`= ANY` sorts them first), the stamps compared here: a join on both columns had
/// the planner probe the index once per pair, 15 times slower at 50,000 sessions.
pub fn known_stamps(
    c: &mut impl GenericClient,
    schema: &str,
    pairs: &[(&str, &str)],
) -> Result<Vec<String>> {
    let ids: Vec<&str> = pairs.iter().map(|p| p.0).collect();
    let sql = format!(
        "SELECT session_id, source_stamp FROM {}
          WHERE session_id OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])
            AND status OPERATOR(pg_catalog.=) '{MIGRATED}' AND source_stamp IS NOT NULL",
        table(schema)
    );
    let recorded: HashMap<String, String> = c
        .query(&sql, &[&ids])
        .map_err(|e| Error::pg("reading the ledger's stamps", "", e))?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    Ok(pairs
        .iter()
        .filter(|(id, stamp)| recorded.get(*id).is_some_and(|s| s == stamp))
        .map(|(id, _)| (*id).to_owned())
        .collect())
}

/// Of the ledger keys ([`Invalid::ledger_key`]), those recorded as quarantined.
pub fn quarantined(
    c: &mut impl GenericClient,
    schema: &str,
    keys: &[String],
) -> Result<HashSet<String>> {
    let rows = c
        .query(
            &format!(
                "SELECT session_id FROM {} WHERE session_id OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[]) AND status OPERATOR(pg_catalog.=) '{QUARANTINED}'",
                table(schema)
            ),
            &[&keys],
        )
        .map_err(|e| Error::pg("reading the ledger", "", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The ON CONFLICT clause of every write of a migrated row: the row is sessiondb's
/// record of what it last wrote, so the newest write replaces it whole.
const MIGRATED_UPSERT: &str = "ON CONFLICT (session_id) DO UPDATE SET status = 'migrated', content_hash = EXCLUDED.content_hash,
                  state_hash = EXCLUDED.state_hash, code = NULL, run_id = EXCLUDED.run_id, migrated_at = pg_catalog.now(),
                  source_stamp = EXCLUDED.source_stamp, sessions_xmin = EXCLUDED.sessions_xmin, state_xmin = EXCLUDED.state_xmin";

/// Record the batch staged in `pg_temp.sessiondb_stage` as written by `run_id`, with
/// the row versions this transaction left (a state row left as it was, being equal,
/// keeps its version).
pub fn record_staged(tx: &mut Transaction<'_>, schema: &str, run_id: &uuid::Uuid) -> Result<()> {
    tx.execute(
        &format!(
            "INSERT INTO {} (session_id, status, content_hash, state_hash, code, run_id, migrated_at, source_stamp, sessions_xmin, state_xmin)
                  SELECT k.id, '{MIGRATED}', k.content_hash, k.state_hash, NULL, $1, pg_catalog.now(), k.source_stamp, {}
                    FROM pg_temp.sessiondb_stage k{}
             {MIGRATED_UPSERT}",
            table(schema),
            versions::versions_select(),
            versions::versions_from(schema, "k.id")
        ),
        &[run_id],
    )
    .map_err(|e| Error::pg("recording the batch in the ledger", "", e))?;
    Ok(())
}

/// Record sessions adopted as they are (already in the target with the same content).
pub fn adopt(
    tx: &mut Transaction<'_>,
    schema: &str,
    run_id: &uuid::Uuid,
    sessions: &[(&Session, String)],
) -> Result<()> {
    if sessions.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = sessions.iter().map(|(s, _)| s.id.as_str()).collect();
    let hashes: Vec<&str> = sessions.iter().map(|(_, h)| h.as_str()).collect();
    let state_hashes: Vec<Option<String>> = sessions
        .iter()
        .map(|(s, _)| s.state.as_ref().map(|st| st.hash()))
        .collect();
    let stamps: Vec<Option<&str>> = sessions.iter().map(|(s, _)| s.stamp.as_deref()).collect();
    tx.execute(
        &format!(
            "INSERT INTO {} (session_id, status, content_hash, state_hash, run_id, source_stamp, sessions_xmin, state_xmin)
                  SELECT u.i, '{MIGRATED}', u.h, u.sh, $4, u.st, {}
                    FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($5::pg_catalog.text[])) AS u(i, h, sh, st){}
             {MIGRATED_UPSERT}",
            table(schema),
            versions::versions_select(),
            versions::versions_from(schema, "u.i")
        ),
        &[&ids, &hashes, &state_hashes, run_id, &stamps],
    )
    .map_err(|e| Error::pg("recording adopted sessions", "", e))?;
    Ok(())
}

/// Record quarantined records, each under its [`Invalid::ledger_key`] (records without
/// a usable id too), so that verify counts them as quarantined.
pub fn record_quarantined(
    tx: &mut Transaction<'_>,
    schema: &str,
    run_id: &uuid::Uuid,
    invalid: &[&Invalid],
) -> Result<()> {
    let keys: Vec<(String, &'static str)> =
        invalid.iter().map(|i| (i.ledger_key(), i.code)).collect();
    record_quarantined_keys(tx, schema, run_id, &keys)
}

/// [`record_quarantined`] of `(ledger key, code)` pairs (a fresh load's writers get
/// the keys, the raw bytes being saved already).
pub fn record_quarantined_keys(
    tx: &mut Transaction<'_>,
    schema: &str,
    run_id: &uuid::Uuid,
    keys: &[(String, &'static str)],
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let (ids, codes): (Vec<&str>, Vec<&str>) = keys.iter().map(|(i, c)| (i.as_str(), *c)).unzip();
    tx.execute(
        &format!(
            "INSERT INTO {} (session_id, status, code, run_id)
                  SELECT DISTINCT ON (i) i, '{QUARANTINED}', c, $3
                    FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[])) AS u(i, c)
             ON CONFLICT (session_id) DO UPDATE SET status = '{QUARANTINED}',
                  code = EXCLUDED.code, run_id = EXCLUDED.run_id, migrated_at = pg_catalog.now()",
            table(schema)
        ),
        &[&ids, &codes, run_id],
    )
    .map_err(|e| Error::pg("recording quarantined records", "", e))?;
    Ok(())
}

/// Teach the ledger the current stamps of sessions found unchanged (e.g. a file touched
/// without a change), so the next catch-up skips them.
pub fn restamp(tx: &mut Transaction<'_>, schema: &str, list: &[(String, String)]) -> Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = list.iter().map(|(i, _)| i.as_str()).collect();
    let stamps: Vec<&str> = list.iter().map(|(_, s)| s.as_str()).collect();
    tx.execute(
        &format!(
            "UPDATE {} l SET source_stamp = u.s FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS u(i, s)
              WHERE l.session_id = u.i",
            table(schema)
        ),
        &[&ids, &stamps],
    )
    .map_err(|e| Error::pg("recording source stamps", "", e))?;
    Ok(())
}

/// A session exported back into the legacy store by a rollback: now the same on both
/// sides, as PostgreSQL holds it.
pub struct Exported<'a> {
    pub id: &'a str,
    pub content_hash: &'a str,
    pub state_hash: Option<String>,
}

/// Record sessions a rollback round exported (they are the same on both sides now), with
/// the target rows' versions, so that a later catch-up sees a change made after it.
pub fn record_exported(
    c: &mut impl GenericClient,
    schema: &str,
    run_id: &uuid::Uuid,
    list: &[Exported<'_>],
) -> Result<()> {
    let ids: Vec<&str> = list.iter().map(|s| s.id).collect();
    let hashes: Vec<&str> = list.iter().map(|s| s.content_hash).collect();
    let state_hashes: Vec<Option<&str>> = list.iter().map(|s| s.state_hash.as_deref()).collect();
    c.execute(
        &format!(
            "INSERT INTO {} (session_id, status, content_hash, state_hash, run_id, sessions_xmin, state_xmin)
                  SELECT u.i, '{MIGRATED}', u.h, u.sh, $4, {}
                    FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.text[])) AS u(i, h, sh){}
             ON CONFLICT (session_id) DO UPDATE SET status = '{MIGRATED}', content_hash = EXCLUDED.content_hash,
                  state_hash = EXCLUDED.state_hash, code = NULL, run_id = EXCLUDED.run_id, migrated_at = pg_catalog.now(),
                  sessions_xmin = EXCLUDED.sessions_xmin, state_xmin = EXCLUDED.state_xmin",
            table(schema),
            versions::versions_select(),
            versions::versions_from(schema, "u.i")
        ),
        &[&ids, &hashes, &state_hashes, run_id],
    )
    .map_err(|e| Error::pg("recording the export in the ledger", "", e))?;
    Ok(())
}
