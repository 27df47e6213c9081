//! The plan: for each source session, what a load would do to the target — insert,
//! update, leave unchanged, adopt, or stop at a conflict (the target row differs from
//! what sessiondb last wrote there, whether or not the source changed: SPEC §4).
//! Preflight, the dry run and the real run all classify through [`Planner::classify`],
//! so what a dry run says is what a real run does.
//!
//! The decision itself is [`decide`], a pure function of three content hashes: the
//! source's, the one the ledger recorded when sessiondb last wrote the session, and
//! the target's when it was read. The [`Planner`] gathers them at the edges: the ledger
//! rows of a batch, and the target rows of the sessions that may differ — those the
//! source changed, those whose row versions moved since sessiondb wrote them
//! ([`crate::pg::ledger::moved`], one query per run), or every one with
//! `--recheck`.

use std::collections::{HashMap, HashSet};

use postgres::Client;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::pg::constraints::{Fit, get};
use crate::pg::{ledger, qualified};
use crate::source::{self, Meta, Session};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Insert,
    Update,
    Unchanged,
    /// Not in the ledger but already in the target with the same content: adopt it.
    Adopt,
    Conflict,
}

/// Why a session is a conflict.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictInfo {
    pub session: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub sessions: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub conflicts: u64,
    pub invalid: u64,
    pub bytes: u64,
}

impl Counts {
    pub fn add(&mut self, a: Action) {
        match a {
            Action::Insert => self.inserted += 1,
            Action::Update => self.updated += 1,
            Action::Unchanged | Action::Adopt => self.unchanged += 1,
            Action::Conflict => self.conflicts += 1,
        }
    }
    pub fn to_report(&self, r: &mut crate::report::Report) {
        for (k, v) in [
            ("sessions", self.sessions),
            ("inserted", self.inserted),
            ("updated", self.updated),
            ("unchanged", self.unchanged),
            ("conflicts", self.conflicts),
            ("invalid", self.invalid),
            ("bytes", self.bytes),
        ] {
            r.count(k, v);
        }
    }
}

/// A ledger row.
#[derive(Debug, Clone)]
pub struct LedgerEntry {
    pub status: String,
    pub content_hash: Option<String>,
    pub source_stamp: Option<String>,
}

impl LedgerEntry {
    /// The content hash of what sessiondb last wrote, for a migrated session.
    fn written(&self) -> Option<&str> {
        (self.status == "migrated")
            .then_some(self.content_hash.as_deref())
            .flatten()
    }
}

/// What is known of a session's target rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetView<'a> {
    /// Not read: its row versions say it is as sessiondb last wrote it.
    AsWritten,
    /// No row.
    Absent,
    /// Read: the content hash of what it holds.
    Hash(&'a str),
}

/// What a load does with one session, and why when it is a conflict: the source's
/// content hash, the hash sessiondb recorded when it last wrote the session (`None`:
/// it never did), and what the target holds.
pub fn decide(
    source: &str,
    written: Option<&str>,
    target: TargetView<'_>,
) -> (Action, Option<&'static str>) {
    use TargetView::*;
    match (written, target) {
        (Some(w), AsWritten) => (
            if w == source {
                Action::Unchanged
            } else {
                Action::Update
            },
            None,
        ),
        (Some(w), Hash(t)) if t == w => (
            if w == source {
                Action::Unchanged
            } else {
                Action::Update
            },
            None,
        ),
        // Changed in the target to what the source holds now (e.g. exported back by a
        // rollback): nothing to write, the ledger learns it.
        (Some(_), Hash(t)) if t == source => (Action::Adopt, None),
        (Some(_), Hash(_)) => (
            Action::Conflict,
            Some("the target row was changed since sessiondb wrote it"),
        ),
        (Some(_), Absent) => (
            Action::Conflict,
            Some("the target row was deleted since sessiondb wrote it"),
        ),
        (None, Absent | AsWritten) => (Action::Insert, None),
        (None, Hash(t)) if t == source => (Action::Adopt, None),
        (None, Hash(_)) => (
            Action::Conflict,
            Some("the target already holds this id with other content, not written by sessiondb"),
        ),
    }
}

/// What the ledger's row versions say about the target, gathered once per run.
#[derive(Debug, Default)]
pub struct TargetChanges {
    /// Whether the ledger records row versions (schema version 2 applied).
    pub tracked: bool,
    /// Sessions whose target rows hold other than what sessiondb last wrote.
    pub changed: HashSet<String>,
    /// Rows rewritten by someone as they were (their versions moved, their content did
    /// not): not conflicts; a real run records their versions.
    pub rewritten: Vec<ledger::Moved>,
    /// Migrated sessions whose row versions the ledger does not know yet.
    pub unknown: u64,
}

/// A batch, classified.
#[derive(Debug, Default)]
pub struct Classified {
    /// One per session, in order.
    pub actions: Vec<Action>,
    pub conflicts: Vec<ConflictInfo>,
    /// Unchanged sessions whose stamp the ledger should learn: `(id, stamp)`.
    pub restamp: Vec<(String, String)>,
}

/// Classifies sessions against the ledger and the target, a batch at a time.
pub struct Planner {
    schema: String,
    /// Whether the target had no sessions and no ledger when planning began: then
    /// nothing can conflict and the target is not read.
    pub target_empty: bool,
    /// Whether the bookkeeping tables exist (else nothing is in the ledger).
    ledger_exists: bool,
    sessions_exists: bool,
    state_exists: bool,
    /// The metadata columns of `sessions`, as read ([`Fit::meta_select`]).
    meta_select: String,
    /// Read every session's target rows (`--recheck`), whatever the versions say.
    recheck: bool,
    pub changes: TargetChanges,
}

impl Planner {
    /// Look at the target as it is: whether it is empty, and which sessions' rows
    /// moved since sessiondb wrote them (read in one snapshot, with their content, so
    /// that a row rewritten as it was is told from one changed).
    pub fn new(c: &mut Client, schema: &str, fit: &Fit, recheck: bool) -> Result<Planner> {
        let ledger_exists = crate::pg::schema::table_exists(c, schema, "sessiondb_ledger")?;
        let sessions_exists = fit.sessions.is_some();
        let state_exists = fit.session_state.is_some();
        let mut empty = true;
        for (exists, table) in [
            (sessions_exists, "sessions"),
            (ledger_exists, "sessiondb_ledger"),
        ] {
            if exists {
                let any: bool = c
                    .query_one(
                        &format!("SELECT EXISTS (SELECT 1 FROM {})", qualified(schema, table)),
                        &[],
                    )
                    .map_err(|e| Error::pg("reading the target", "", e))?
                    .get(0);
                empty &= !any;
            }
        }
        let mut p = Planner {
            schema: schema.to_owned(),
            target_empty: empty,
            ledger_exists,
            sessions_exists,
            state_exists,
            meta_select: fit.meta_select("s"),
            recheck,
            changes: TargetChanges::default(),
        };
        if !empty && ledger_exists && sessions_exists && state_exists {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(|e| Error::pg("starting a transaction", "", e))?;
            p.changes = p.target_changes(&mut tx)?;
            tx.commit()
                .map_err(|e| Error::pg("reading the target", "", e))?;
        }
        Ok(p)
    }

    fn target_changes(&self, c: &mut impl postgres::GenericClient) -> Result<TargetChanges> {
        let mut out = TargetChanges {
            tracked: ledger::tracked(c, &self.schema)?,
            ..TargetChanges::default()
        };
        if !out.tracked {
            return Ok(out);
        }
        out.unknown = ledger::unknown(c, &self.schema)?;
        let moved = ledger::moved(c, &self.schema)?;
        for chunk in moved.chunks(1000) {
            let ids: Vec<&str> = chunk.iter().map(|m| m.id.as_str()).collect();
            let now = self.target_hashes(c, &ids)?;
            for m in chunk {
                match (now.get(&m.id), &m.ledger_hash) {
                    (Some(t), Some(w)) if t == w => out.rewritten.push(m.clone()),
                    _ => {
                        out.changed.insert(m.id.clone());
                    }
                }
            }
        }
        Ok(out)
    }

    /// The ledger rows of `ids`.
    pub fn ledger(
        &self,
        c: &mut impl postgres::GenericClient,
        ids: &[&str],
    ) -> Result<HashMap<String, LedgerEntry>> {
        if !self.ledger_exists || self.target_empty || ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = c
            .query(
                &format!(
                    "SELECT session_id, status, content_hash, source_stamp FROM {} WHERE session_id = ANY($1)",
                    qualified(&self.schema, "sessiondb_ledger")
                ),
                &[&ids],
            )
            .map_err(|e| Error::pg("reading the ledger", "", e))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    LedgerEntry {
                        status: r.get(1),
                        content_hash: r.get(2),
                        source_stamp: r.get(3),
                    },
                )
            })
            .collect())
    }

    /// The current content hash of each of `ids` in the target (absent when no row).
    pub fn target_hashes(
        &self,
        c: &mut impl postgres::GenericClient,
        ids: &[&str],
    ) -> Result<HashMap<String, String>> {
        if !self.sessions_exists || self.target_empty || ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = if self.state_exists {
            format!(
                "SELECT s.id, {}, st.state::pg_catalog.text
                   FROM {} s LEFT JOIN {} st ON st.session_id OPERATOR(pg_catalog.=) s.id
                  WHERE s.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
                self.meta_select,
                qualified(&self.schema, "sessions"),
                qualified(&self.schema, "session_state")
            )
        } else {
            format!(
                "SELECT s.id, {}, NULL::pg_catalog.text FROM {} s WHERE s.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
                self.meta_select,
                qualified(&self.schema, "sessions")
            )
        };
        let rows = c
            .query(&sql, &[&ids])
            .map_err(|e| Error::pg("reading target rows", "", e))?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in &rows {
            let t = "sessions";
            let id: String = get(r, 0, t)?;
            let state: Option<String> = get(r, 7, "session_state")?;
            let meta = Meta {
                user_id: get(r, 1, t)?,
                status: get(r, 2, t)?,
                current_step: get(r, 3, t)?,
                cost: get(r, 4, t)?,
                created_at: get(r, 5, t)?,
                updated_at: get(r, 6, t)?,
            };
            let h = source::content_hash(&id, &meta, state.as_deref());
            out.insert(id, h);
        }
        Ok(out)
    }

    /// Classify a batch. Returns one action per session, and the conflicts explained.
    pub fn classify(
        &self,
        c: &mut impl postgres::GenericClient,
        batch: &[Session],
    ) -> Result<Classified> {
        let ids: Vec<&str> = batch.iter().map(|s| s.id.as_str()).collect();
        let ledger = self.ledger(c, &ids)?;
        let hashes: Vec<String> = batch.iter().map(Session::content_hash).collect();
        // Read the target of the sessions that may differ from what sessiondb wrote.
        let read: Vec<bool> = batch
            .iter()
            .zip(&hashes)
            .map(|(s, h)| {
                let written = ledger.get(&s.id).and_then(LedgerEntry::written);
                self.recheck || written != Some(h.as_str()) || self.changes.changed.contains(&s.id)
            })
            .collect();
        let need: Vec<&str> = ids
            .iter()
            .zip(&read)
            .filter_map(|(id, r)| r.then_some(*id))
            .collect();
        let target = self.target_hashes(c, &need)?;
        let mut out = Classified {
            actions: Vec::with_capacity(batch.len()),
            ..Classified::default()
        };
        for ((s, h), read) in batch.iter().zip(&hashes).zip(read) {
            let written = ledger.get(&s.id).and_then(LedgerEntry::written);
            if let (Some(w), Some(stamp)) = (written, &s.stamp) {
                let l = &ledger[&s.id];
                if w == h && l.source_stamp.as_ref() != Some(stamp) {
                    out.restamp.push((s.id.clone(), stamp.clone()));
                }
            }
            let view = match (read, target.get(&s.id)) {
                (false, _) => TargetView::AsWritten,
                (true, Some(t)) => TargetView::Hash(t),
                (true, None) => TargetView::Absent,
            };
            let (action, why) = decide(h, written, view);
            if let Some(reason) = why {
                out.conflicts.push(ConflictInfo {
                    session: s.id.clone(),
                    reason: reason.into(),
                });
            }
            out.actions.push(action);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::TargetView::*;
    use super::*;

    #[test]
    fn decide_covers_every_case() {
        let cases: &[(&str, Option<&str>, TargetView<'_>, Action)] = &[
            // Written, and the target as written: the source decides.
            ("a", Some("a"), AsWritten, Action::Unchanged),
            ("b", Some("a"), AsWritten, Action::Update),
            ("a", Some("a"), Hash("a"), Action::Unchanged),
            ("b", Some("a"), Hash("a"), Action::Update),
            // The target changed behind sessiondb's back: a conflict whether or not
            // the source changed, unless it now holds what the source holds.
            ("a", Some("a"), Hash("x"), Action::Conflict),
            ("b", Some("a"), Hash("x"), Action::Conflict),
            ("b", Some("a"), Hash("b"), Action::Adopt),
            ("a", Some("a"), Absent, Action::Conflict),
            // Never written by sessiondb.
            ("a", None, Absent, Action::Insert),
            ("a", None, Hash("a"), Action::Adopt),
            ("a", None, Hash("x"), Action::Conflict),
        ];
        for (src, written, target, want) in cases {
            let (got, why) = decide(src, *written, *target);
            assert_eq!(got, *want, "{src} {written:?} {target:?}");
            assert_eq!(why.is_some(), *want == Action::Conflict);
        }
    }
}
