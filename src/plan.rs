//! The plan: for each source session, what a load does to the target — insert,
//! update, leave unchanged, adopt, or stop at a conflict (the target row differs from
//! what sessiondb last wrote there, whether or not the source changed: SPEC §4).
//! Preflight, the dry run and the real run all classify through this one pure module,
//! so what a dry run says is what a real run does; the reads it needs — the ledger rows
//! of a batch, the target rows of the sessions that may differ — are
//! `crate::pg::classify`'s.
//!
//! [`decide`] is a function of three content hashes: the source's, the one the ledger
//! recorded when sessiondb last wrote the session, and the target's when it was read.
//! [`to_read`] says which target rows a batch must read; [`classify`] decides a batch.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::pg::ledger::LedgerRow;
use crate::source::Session;

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

/// A batch, classified.
#[derive(Debug, Default)]
pub struct Classified {
    /// One per session, in order.
    pub actions: Vec<Action>,
    pub conflicts: Vec<ConflictInfo>,
    /// Unchanged sessions whose stamp the ledger should learn: `(id, stamp)`.
    pub restamp: Vec<(String, String)>,
}

/// What the plan knows of a batch before it looks at the target: the sessions, their
/// content hashes, their ledger rows, and the sessions whose target rows moved.
pub struct Batch<'a> {
    pub sessions: &'a [Session],
    pub hashes: &'a [String],
    pub ledger: &'a HashMap<String, LedgerRow>,
    /// Sessions whose target rows hold other than what sessiondb last wrote.
    pub changed: &'a HashSet<String>,
    /// Read every target row (`--recheck`), whatever the ledger says.
    pub recheck: bool,
}

impl Batch<'_> {
    fn written(&self, id: &str) -> Option<&str> {
        self.ledger.get(id).and_then(LedgerRow::written)
    }
}

/// Which sessions of the batch need their target rows read: those that may differ
/// from what sessiondb wrote (the source changed, the rows moved, or `--recheck`).
pub fn to_read(b: &Batch<'_>) -> Vec<bool> {
    b.sessions
        .iter()
        .zip(b.hashes)
        .map(|(s, h)| {
            b.recheck || b.written(&s.id) != Some(h.as_str()) || b.changed.contains(&s.id)
        })
        .collect()
}

/// Classify a batch: `read` as [`to_read`] said, `target` the content hashes of the
/// target rows read (a session read and absent has no row).
pub fn classify(b: &Batch<'_>, read: &[bool], target: &HashMap<String, String>) -> Classified {
    let mut out = Classified {
        actions: Vec::with_capacity(b.sessions.len()),
        ..Classified::default()
    };
    for ((s, h), read) in b.sessions.iter().zip(b.hashes).zip(read) {
        let written = b.written(&s.id);
        if let (Some(w), Some(stamp)) = (written, &s.stamp) {
            if w == h && b.ledger[&s.id].source_stamp.as_ref() != Some(stamp) {
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
    out
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
