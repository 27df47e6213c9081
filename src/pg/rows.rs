//! The target's session rows (`sessions`, `session_state`) as sessiondb reads them:
//! the six metadata columns through [`Fit::meta_select`] and decoded by one function,
//! [`meta_at`], whatever reads them — the plan's content hashes ([`Rows::hashes`]),
//! verify's comparison ([`Rows::compare`]), rollback's export ([`Rows::not_as_written`]),
//! the smoke probe ([`sample_status`], [`state_text`]).

use std::collections::HashMap;

use postgres::{GenericClient, Row, Transaction};

use super::constraints::Fit;
use super::ledger;
use super::qualified;
use crate::error::{Error, Result};
use crate::source::{self, META_FIELDS, Meta};

/// Decode column `i` of a row read from `table`, naming the column when it does not
/// decode (a type the shape check let through, a value out of range): a
/// `schema_mismatch`, never a panic.
pub fn get<'a, T: postgres::types::FromSql<'a>>(r: &'a Row, i: usize, table: &str) -> Result<T> {
    r.try_get(i).map_err(|e| Error::SchemaMismatch {
        table: table.to_owned(),
        column: Some(
            r.columns()
                .get(i)
                .map_or_else(|| i.to_string(), |c| c.name().to_owned()),
        ),
        message: format!("cannot read it: {}", crate::error::error_chain(&e)),
        fix: "preflight's constraints check says what the column must be".into(),
    })
}

/// The metadata read by [`Fit::meta_select`], in [`META_FIELDS`] order from column `at`.
pub fn meta_at(r: &Row, at: usize) -> Result<Meta> {
    let t = "sessions";
    debug_assert_eq!(META_FIELDS.len(), 6);
    Ok(Meta {
        user_id: get(r, at, t)?,
        status: get(r, at + 1, t)?,
        current_step: get(r, at + 2, t)?,
        cost: get(r, at + 3, t)?,
        created_at: get(r, at + 4, t)?,
        updated_at: get(r, at + 5, t)?,
    })
}

/// A session as the target holds it.
#[derive(Debug, Clone)]
pub struct TargetSession {
    pub id: String,
    pub meta: Meta,
    /// `session_state.state` as jsonb prints it (canonical).
    pub state: Option<String>,
    /// Its content hash, computed as the source's is.
    pub hash: String,
}

/// Why a target session is not as sessiondb last wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Not in the ledger: the application created it.
    Created,
    /// In the ledger with another content hash.
    Changed,
}

#[derive(Debug, Clone)]
pub struct TargetRow {
    pub meta: Meta,
    /// Hex SHA-256 of `state::text`, `None` without a state row.
    pub state_sha: Option<String>,
}

/// The session tables of one schema, as they are.
pub struct Rows {
    schema: String,
    meta_select: String,
    sessions_exist: bool,
    state_exists: bool,
}

impl Rows {
    pub fn new(schema: &str, fit: &Fit) -> Rows {
        Rows {
            schema: schema.to_owned(),
            meta_select: fit.meta_select("s"),
            sessions_exist: fit.sessions.is_some(),
            state_exists: fit.session_state.is_some(),
        }
    }

    /// The schema the tables are in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn sessions(&self) -> String {
        qualified(&self.schema, "sessions")
    }

    fn state(&self) -> String {
        qualified(&self.schema, "session_state")
    }

    /// Whether `sessions` holds any row (`false` when it does not exist).
    pub fn any(&self, c: &mut impl GenericClient) -> Result<bool> {
        if !self.sessions_exist {
            return Ok(false);
        }
        c.query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", self.sessions()),
            &[],
        )
        .map(|r| r.get(0))
        .map_err(|e| Error::pg("reading the target", "", e))
    }

    /// The current content hash of each of `ids` in the target (absent when no row),
    /// keyed by the id as text: a `character(n)` column's padding is not part of it.
    pub fn hashes(
        &self,
        c: &mut impl GenericClient,
        ids: &[&str],
    ) -> Result<HashMap<String, String>> {
        if !self.sessions_exist || ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = if self.state_exists {
            format!(
                "SELECT s.id::pg_catalog.text, {}, st.state::pg_catalog.text
                   FROM {} s LEFT JOIN {} st ON st.session_id OPERATOR(pg_catalog.=) s.id
                  WHERE s.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
                self.meta_select,
                self.sessions(),
                self.state()
            )
        } else {
            format!(
                "SELECT s.id::pg_catalog.text, {}, NULL::pg_catalog.text FROM {} s WHERE s.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
                self.meta_select,
                self.sessions()
            )
        };
        let rows = c
            .query(&sql, &[&ids])
            .map_err(|e| Error::pg("reading target rows", "", e))?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in &rows {
            let s = session(r)?;
            out.insert(s.id, s.hash);
        }
        Ok(out)
    }

    /// For each of `ids` the target holds: its row, the state by its SHA-256, in the
    /// caller's snapshot. The ledger is not read here: verify asks it only of the
    /// sessions that differ ([`ledger::rows`]), a third of this query's lookups saved.
    pub fn compare(
        &self,
        tx: &mut Transaction<'_>,
        ids: &[&str],
    ) -> Result<HashMap<String, TargetRow>> {
        // Keyed by the id asked for (`u.id`): the target's own may differ in its bytes
        // (a `character(n)` column pads it) and still be equal.
        let sql = format!(
            "SELECT s.id, {},
                    pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(st.state::text, 'UTF8')), 'hex'), u.id
               FROM pg_catalog.unnest($1::text[]) AS u(id)
               JOIN {} s ON s.id OPERATOR(pg_catalog.=) u.id
               LEFT JOIN {} st ON st.session_id OPERATOR(pg_catalog.=) u.id",
            self.meta_select,
            self.sessions(),
            self.state(),
        );
        let rows = tx
            .query(&sql, &[&ids])
            .map_err(|e| Error::pg("reading target rows", "", e))?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in &rows {
            let target = TargetRow {
                meta: meta_at(r, 1)?,
                state_sha: r.get(7),
            };
            out.insert(r.get(8), target);
        }
        Ok(out)
    }

    /// Whether PostgreSQL finds the state it holds for `id` equal to `raw` read as
    /// jsonb, and the text it holds.
    pub fn state_equals(
        &self,
        tx: &mut Transaction<'_>,
        id: &str,
        raw: &str,
    ) -> Result<(bool, String)> {
        let row = tx
            .query_one(
                &format!(
                    "SELECT ($1::text::jsonb)::text = state::text, state::text FROM {} WHERE session_id OPERATOR(pg_catalog.=) $2::text",
                    self.state()
                ),
                &[&raw, &id],
            )
            .map_err(|e| Error::pg("comparing a state", "", e))?;
        Ok((row.get(0), row.get(1)))
    }

    /// Every target session that the ledger does not say sessiondb wrote as it is
    /// now, read in one snapshot, a portal of 5,000 rows at a time.
    pub fn not_as_written(&self, c: &mut postgres::Client) -> Result<Vec<(TargetSession, Since)>> {
        let sql = format!(
            "SELECT s.id::pg_catalog.text, {}, st.state::text, l.content_hash
               FROM {} s LEFT JOIN {} st ON st.session_id OPERATOR(pg_catalog.=) s.id
                    LEFT JOIN {} l ON l.session_id OPERATOR(pg_catalog.=) s.id AND l.status = '{}'",
            self.meta_select,
            self.sessions(),
            self.state(),
            qualified(&self.schema, ledger::TABLE),
            ledger::MIGRATED
        );
        let err = |e| Error::pg("reading the target", "", e);
        let mut out = Vec::new();
        let mut tx = c.transaction().map_err(err)?;
        let portal = tx.bind(&sql, &[]).map_err(err)?;
        loop {
            let rows = tx.query_portal(&portal, 5000).map_err(err)?;
            if rows.is_empty() {
                break;
            }
            for r in rows {
                let s = session(&r)?;
                let since = match r.get::<_, Option<String>>(8) {
                    None => Since::Created,
                    Some(h) if h != s.hash => Since::Changed,
                    Some(_) => continue,
                };
                out.push((s, since));
            }
        }
        tx.commit().map_err(err)?;
        Ok(out)
    }

    /// Fresh statistics for both tables (after a load that changed much of them).
    pub fn analyze(&self, c: &mut impl GenericClient) {
        let _ = c.batch_execute(&format!("ANALYZE {}, {}", self.sessions(), self.state()));
    }

    /// Fresh statistics for `sessions` alone: run beside the GIN index build, which
    /// locks `session_state` against an ANALYZE of it. Whether it ran.
    pub fn analyze_sessions(&self, c: &mut impl GenericClient) -> bool {
        c.batch_execute(&format!("ANALYZE {}", self.sessions()))
            .is_ok()
    }

    /// Fresh statistics for `session_state` alone.
    pub fn analyze_state(&self, c: &mut impl GenericClient) {
        let _ = c.batch_execute(&format!("ANALYZE {}", self.state()));
    }
}

/// A row of `id, <meta_select>, state text`.
fn session(r: &Row) -> Result<TargetSession> {
    let id: String = get(r, 0, "sessions")?;
    let meta = meta_at(r, 1)?;
    let state: Option<String> = get(r, 7, "session_state")?;
    let hash = source::content_hash(&id, &meta, state.as_deref());
    Ok(TargetSession {
        id,
        meta,
        state,
        hash,
    })
}

/// verify's set of the source's ids, a temporary table of this transaction: the target
/// sessions not in it are `extra`. Filled by COPY, a batch at a time, with no index: the
/// one search at the end sorts it once (a merge anti-join), where a primary key and an
/// `INSERT ... ON CONFLICT` a batch cost the server four times as much (1.5 s against
/// 0.4 s at 200,000 sessions). An id the source holds twice is harmless.
pub struct IdSet;

impl IdSet {
    pub fn create(tx: &mut Transaction<'_>) -> Result<IdSet> {
        tx.batch_execute("CREATE TEMP TABLE pg_temp.sessiondb_verify_ids (id text) ON COMMIT DROP")
            .map_err(|e| Error::pg("preparing verify", "", e))?;
        Ok(IdSet)
    }

    pub fn add(&self, tx: &mut Transaction<'_>, ids: &[&str]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut data = Vec::with_capacity(ids.iter().map(|i| i.len() + 1).sum());
        for id in ids {
            super::load::field(&mut data, Some(id));
            data.push(b'\n');
        }
        super::load::copy_in(
            tx,
            "COPY pg_temp.sessiondb_verify_ids (id) FROM STDIN",
            &data,
            "recording source ids",
        )
    }

    /// The target's sessions whose ids are not in the set, by id.
    pub fn extra(&self, tx: &mut Transaction<'_>, schema: &str) -> Result<Vec<String>> {
        Ok(tx
            .query(
                &format!(
                    "SELECT s.id::pg_catalog.text FROM {} s WHERE NOT EXISTS (SELECT 1 FROM pg_temp.sessiondb_verify_ids v WHERE v.id OPERATOR(pg_catalog.=) s.id) ORDER BY s.id",
                    qualified(schema, "sessions")
                ),
                &[],
            )
            .map_err(|e| Error::pg("looking for extra sessions", "", e))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}

/// What the smoke probe compares with the service: status, current step and cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub id: String,
    pub status: Option<String>,
    pub current_step: Option<String>,
    pub cost: Option<f64>,
}

/// Up to `n` random sessions of the target.
pub fn sample_status(c: &mut impl GenericClient, schema: &str, n: usize) -> Result<Vec<Status>> {
    let rows = c
        .query(
            &format!(
                "SELECT id::pg_catalog.text, status, current_step, cost FROM {} ORDER BY pg_catalog.random() LIMIT {n}",
                qualified(schema, "sessions")
            ),
            &[],
        )
        .map_err(|e| Error::pg("sampling sessions", "", e))?;
    Ok(rows
        .iter()
        .map(|r| Status {
            id: r.get(0),
            status: r.get(1),
            current_step: r.get(2),
            cost: r.get(3),
        })
        .collect())
}

/// The state the target holds for `id` now, as jsonb prints it.
pub fn state_text(c: &mut impl GenericClient, schema: &str, id: &str) -> Result<Option<String>> {
    let row = c
        .query_opt(
            &format!(
                "SELECT state::text FROM {} WHERE session_id OPERATOR(pg_catalog.=) $1::text",
                qualified(schema, "session_state")
            ),
            &[&id],
        )
        .map_err(|e| Error::pg("reading session_state", "", e))?;
    Ok(row.map(|r| r.get(0)))
}
