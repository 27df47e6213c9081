//! The reads the plan needs (`crate::plan` decides): whether the target is empty, which
//! sessions' rows moved since sessiondb wrote them (once per run, from the ledger's row
//! versions), and for each batch its ledger rows and the target rows of the sessions
//! that may differ. Preflight, the dry run and the real run classify through
//! [`Classifier::classify`].

use std::collections::HashSet;

use postgres::{Client, GenericClient};

use super::constraints::Fit;
use super::ledger::{self, versions};
use super::rows::Rows;
use crate::error::{Error, Result};
use crate::plan::{self, Classified};
use crate::source::Session;

/// What the ledger's row versions say about the target, gathered once per run.
#[derive(Debug, Default)]
pub struct TargetChanges {
    /// Whether the ledger records row versions (schema version 2 applied).
    pub tracked: bool,
    /// Sessions whose target rows hold other than what sessiondb last wrote.
    pub changed: HashSet<String>,
    /// Rows rewritten by someone as they were (their versions moved, their content did
    /// not): not conflicts; a real run records their versions.
    pub rewritten: Vec<versions::Moved>,
    /// Migrated sessions whose row versions the ledger does not know yet.
    pub unknown: u64,
}

/// Classifies sessions against the ledger and the target, a batch at a time.
pub struct Classifier {
    schema: String,
    rows: Rows,
    /// Whether the target had no sessions and no ledger when planning began: then
    /// nothing can conflict and the target is not read.
    pub target_empty: bool,
    /// Whether the bookkeeping tables exist (else nothing is in the ledger).
    ledger_exists: bool,
    /// Read every session's target rows (`--recheck`), whatever the versions say.
    recheck: bool,
    pub changes: TargetChanges,
}

impl Classifier {
    /// Look at the target as it is: whether it is empty, and which sessions' rows
    /// moved since sessiondb wrote them (read in one snapshot, with their content, so
    /// that a row rewritten as it was is told from one changed).
    pub fn new(c: &mut Client, schema: &str, fit: &Fit, recheck: bool) -> Result<Classifier> {
        let rows = Rows::new(schema, fit);
        let ledger_exists = ledger::exists(c, schema)?;
        let empty = !(rows.any(c)? || (ledger_exists && ledger::any_row(c, schema)?));
        let mut p = Classifier {
            schema: schema.to_owned(),
            rows,
            target_empty: empty,
            ledger_exists,
            recheck,
            changes: TargetChanges::default(),
        };
        if !empty && ledger_exists && fit.sessions.is_some() && fit.session_state.is_some() {
            let mut tx = super::read_only_snapshot(c)?;
            p.changes = p.target_changes(&mut tx)?;
            tx.commit()
                .map_err(|e| Error::pg("reading the target", "", e))?;
        }
        Ok(p)
    }

    fn target_changes(&self, c: &mut impl GenericClient) -> Result<TargetChanges> {
        let mut out = TargetChanges {
            tracked: versions::tracked(c, &self.schema)?,
            ..TargetChanges::default()
        };
        if !out.tracked {
            return Ok(out);
        }
        out.unknown = versions::unknown(c, &self.schema)?;
        let moved = versions::moved(c, &self.schema)?;
        for chunk in moved.chunks(1000) {
            let ids: Vec<&str> = chunk.iter().map(|m| m.id.as_str()).collect();
            let now = self.rows.hashes(c, &ids)?;
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

    /// Classify a batch: its ledger rows, then the target rows of the sessions that
    /// may differ from what sessiondb wrote, then [`plan::classify`].
    pub fn classify(&self, c: &mut impl GenericClient, batch: &[Session]) -> Result<Classified> {
        let ids: Vec<&str> = batch.iter().map(|s| s.id.as_str()).collect();
        let ledger = if self.ledger_exists && !self.target_empty {
            ledger::rows(c, &self.schema, &ids)?
        } else {
            Default::default()
        };
        let hashes: Vec<String> = batch.iter().map(Session::content_hash).collect();
        let b = plan::Batch {
            sessions: batch,
            hashes: &hashes,
            ledger: &ledger,
            changed: &self.changes.changed,
            recheck: self.recheck,
        };
        let read = plan::to_read(&b);
        let need: Vec<&str> = ids
            .iter()
            .zip(&read)
            .filter_map(|(id, r)| r.then_some(*id))
            .collect();
        let target = if self.target_empty {
            Default::default()
        } else {
            self.rows.hashes(c, &need)?
        };
        Ok(plan::classify(&b, &read, &target))
    }
}
