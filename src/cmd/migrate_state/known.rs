//! What a mapped plan knows of one copied table's rows before it writes (SPEC §9): the
//! ledger's `v2:` hash of each key and the target's, as read back. Both are held by the
//! server, in two temporary tables of the plan's connection, not in this process: the
//! plan and the load look a batch of keys up at a time, so memory stays flat in the
//! number of rows. The load runs on the connection that planned (temporary tables are
//! its own: no other role can plant or read them).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use postgres::GenericClient;

use crate::error::{Error, Result};
use crate::pg::app::{StatePlan, TablePlan};
use crate::pg::ledger::tables;
use crate::plan::TargetView;
use crate::progress::{Phase, Unit};

/// The ledger's and the target's hashes of one table, by key, in `pg_temp`.
pub(crate) struct Known {
    ledger: String,
    target: String,
}

/// The hashes of one batch of keys: the ledger's and the target's.
pub(crate) struct Looked(HashMap<String, (Option<String>, Option<String>)>);

impl Looked {
    /// The ledger's hash of `key`.
    pub fn ledger(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|(l, _)| l.as_deref())
    }

    /// What the target holds at `key`, for `plan::decide`.
    pub fn target(&self, key: &str) -> TargetView<'_> {
        match self.0.get(key).and_then(|(_, t)| t.as_deref()) {
            Some(h) => TargetView::Hash(h),
            None => TargetView::Absent,
        }
    }
}

impl Known {
    /// Gather what the ledger and (unless `creates`: then there is nothing to read) the
    /// target hold of table `t` (number `n` of the plan), read-only on both.
    pub fn gather(
        c: &mut impl GenericClient,
        schema: &str,
        n: usize,
        t: &TablePlan,
        state: Option<&StatePlan>,
        creates: bool,
    ) -> Result<Known> {
        let k = Known {
            ledger: format!("pg_temp.sessiondb_known_ledger_{n}"),
            target: format!("pg_temp.sessiondb_known_target_{n}"),
        };
        let err = |e| Error::pg("preparing the plan's temporary tables", "", e);
        for name in [&k.ledger, &k.target] {
            // A table left by an earlier plan on this connection is replaced.
            c.batch_execute(&format!(
                "DROP TABLE IF EXISTS {name};
                 CREATE TEMP TABLE {name} (key pg_catalog.text COLLATE pg_catalog.\"C\" NOT NULL, hash pg_catalog.text);
                 CREATE INDEX ON {name} (key)"
            ))
            .map_err(err)?;
        }
        if t.sessions {
            tables::hold_sessions(c, schema, &k.ledger)?;
        } else {
            tables::hold_rows(c, schema, &t.name, &k.ledger)?;
        }
        if !creates {
            let read_err = |e| Error::pg(&format!("reading {}", t.name), "", e);
            let mut tx = c.transaction().map_err(read_err)?;
            let insert = format!(
                "INSERT INTO {} (key, hash) SELECT u.k, u.h FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[])) AS u(k, h)",
                k.target
            );
            let phase = Phase::counter("read-target", Unit::Rows);
            t.read_batches(&mut tx, schema, state, |tx, rows| {
                phase.inc(rows.len() as u64);
                let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
                let hashes: Vec<&str> = rows.iter().map(|r| r.hash.as_str()).collect();
                tx.execute(&insert, &[&keys, &hashes]).map_err(read_err)?;
                Ok(())
            })?;
            tx.commit().map_err(read_err)?;
            phase.finish();
        }
        // Their statistics, so that each lookup goes by the index.
        c.batch_execute(&format!("ANALYZE {}; ANALYZE {}", k.ledger, k.target))
            .map_err(err)?;
        Ok(k)
    }

    /// The hashes of `keys`, in one round trip.
    pub fn look(&self, c: &mut impl GenericClient, keys: &[&str]) -> Result<Looked> {
        let mut out = HashMap::with_capacity(keys.len());
        if keys.is_empty() {
            return Ok(Looked(out));
        }
        let rows = c
            .query(
                &format!(
                    "SELECT k.key, l.hash, t.hash
                       FROM pg_catalog.unnest($1::pg_catalog.text[]) AS k(key)
                       LEFT JOIN {} l ON l.key OPERATOR(pg_catalog.=) k.key
                       LEFT JOIN {} t ON t.key OPERATOR(pg_catalog.=) k.key",
                    self.ledger, self.target
                ),
                &[&keys],
            )
            .map_err(|e| Error::pg("looking up what the target holds", "", e))?;
        for r in rows {
            let (key, ledger, target): (String, Option<String>, Option<String>) =
                (r.get(0), r.get(1), r.get(2));
            // Several target rows at one key text (a UNIQUE key with NULL parts): the
            // least hash, so that the plan and the load decide alike.
            match out.entry(key) {
                Entry::Vacant(v) => {
                    v.insert((ledger, target));
                }
                Entry::Occupied(mut o) => {
                    if target < o.get().1 {
                        o.get_mut().1 = target;
                    }
                }
            }
        }
        Ok(Looked(out))
    }
}
