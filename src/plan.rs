//! The plan: for each source session, what a load would do to the target — insert,
//! update, leave unchanged, or stop at a conflict (the target row differs from what
//! sessiondb last wrote there). Preflight, the dry run and the real run all classify
//! through [`Planner::classify`], so what a dry run says is what a real run does.

use std::collections::HashMap;

use postgres::Client;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::source::{self, Meta, Session};
use crate::target::qualified;

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
}

impl Planner {
    pub fn new(c: &mut Client, schema: &str) -> Result<Planner> {
        let ledger_exists = crate::target::schema::table_exists(c, schema, "sessiondb_ledger")?;
        let sessions_exists = crate::target::schema::table_exists(c, schema, "sessions")?;
        let mut empty = true;
        if sessions_exists {
            let any: bool = c
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM {})",
                        qualified(schema, "sessions")
                    ),
                    &[],
                )
                .map_err(|e| Error::pg("reading the target", "", e))?
                .get(0);
            empty &= !any;
        }
        if ledger_exists {
            let any: bool = c
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM {})",
                        qualified(schema, "sessiondb_ledger")
                    ),
                    &[],
                )
                .map_err(|e| Error::pg("reading the ledger", "", e))?
                .get(0);
            empty &= !any;
        }
        Ok(Planner {
            schema: schema.to_owned(),
            target_empty: empty,
            ledger_exists,
            sessions_exists,
        })
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
        let has_state = crate::target::schema::table_exists(c, &self.schema, "session_state")?;
        let sql = if has_state {
            format!(
                "SELECT s.id, s.user_id, s.status, s.current_step, s.cost, s.created_at, s.updated_at, st.state::text
                   FROM {} s LEFT JOIN {} st ON st.session_id OPERATOR(pg_catalog.=) s.id
                  WHERE s.id OPERATOR(pg_catalog.=) ANY ($1::text[])",
                qualified(&self.schema, "sessions"),
                qualified(&self.schema, "session_state")
            )
        } else {
            format!(
                "SELECT s.id, s.user_id, s.status, s.current_step, s.cost, s.created_at, s.updated_at, NULL::text FROM {} s WHERE s.id OPERATOR(pg_catalog.=) ANY ($1::text[])",
                qualified(&self.schema, "sessions")
            )
        };
        let rows = c
            .query(&sql, &[&ids])
            .map_err(|e| Error::pg("reading target rows", "", e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let id: String = r.get(0);
                let state: Option<String> = r.get(7);
                let meta = Meta {
                    user_id: r.get(1),
                    status: r.get(2),
                    current_step: r.get(3),
                    cost: r.get(4),
                    created_at: r.get(5),
                    updated_at: r.get(6),
                };
                let h = source::content_hash(&id, &meta, state.as_deref());
                (id, h)
            })
            .collect())
    }

    /// Classify a batch. Returns one action per session, and the conflicts explained.
    pub fn classify(
        &self,
        c: &mut impl postgres::GenericClient,
        batch: &[Session],
    ) -> Result<Classified> {
        let ids: Vec<&str> = batch.iter().map(|s| s.id.as_str()).collect();
        let ledger = self.ledger(c, &ids)?;
        // Read the target only for sessions that may be written.
        let mut need: Vec<&str> = Vec::new();
        let hashes: Vec<String> = batch.iter().map(Session::content_hash).collect();
        for (s, h) in batch.iter().zip(&hashes) {
            match ledger.get(&s.id) {
                Some(l)
                    if l.status == "migrated" && l.content_hash.as_deref() == Some(h.as_str()) => {}
                _ => need.push(s.id.as_str()),
            }
        }
        let target = self.target_hashes(c, &need)?;
        let mut actions = Vec::with_capacity(batch.len());
        let mut conflicts = Vec::new();
        let mut restamp = Vec::new();
        for (s, h) in batch.iter().zip(&hashes) {
            let led = ledger.get(&s.id).filter(|l| l.status == "migrated");
            if let (Some(l), Some(stamp)) = (led, &s.stamp) {
                if l.content_hash.as_deref() == Some(h.as_str())
                    && l.source_stamp.as_ref() != Some(stamp)
                {
                    restamp.push((s.id.clone(), stamp.clone()));
                }
            }
            let tgt = target.get(&s.id);
            let action = match (led, tgt) {
                (Some(l), _) if l.content_hash.as_deref() == Some(h.as_str()) => Action::Unchanged,
                (Some(l), Some(t)) if l.content_hash.as_deref() == Some(t.as_str()) => {
                    Action::Update
                }
                (Some(_), Some(_)) => {
                    conflicts.push(ConflictInfo {
                        session: s.id.clone(),
                        reason: "the target row was changed since sessiondb wrote it".into(),
                    });
                    Action::Conflict
                }
                (Some(_), None) => {
                    conflicts.push(ConflictInfo {
                        session: s.id.clone(),
                        reason: "the target row was deleted since sessiondb wrote it".into(),
                    });
                    Action::Conflict
                }
                (None, None) => Action::Insert,
                (None, Some(t)) if t == h => Action::Adopt,
                (None, Some(_)) => {
                    conflicts.push(ConflictInfo { session: s.id.clone(), reason: "the target already holds this id with other content, not written by sessiondb".into() });
                    Action::Conflict
                }
            };
            actions.push(action);
        }
        Ok(Classified {
            actions,
            conflicts,
            restamp,
        })
    }
}
