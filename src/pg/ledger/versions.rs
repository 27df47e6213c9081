//! The ledger's record of the target rows as sessiondb last wrote them (schema
//! version 2): the `xmin` of each session's `sessions` and `session_state` rows, taken
//! in the transaction that wrote them, so that a catch-up finds every row someone else
//! wrote since — in one query, reading no state and no unchanged source file.
//!
//! `xmin` is the 32-bit id of the transaction that wrote a row version; it is stored as
//! a bigint (`xmin::text::int8`, 0 to 2³²−1) and only ever compared for equality. It
//! survives freezing (PostgreSQL 9.4 and later keep the raw value), `VACUUM FULL` and
//! `pg_upgrade`; a dump and restore rewrites every row, and then every session is
//! judged again by its content hash, once. A row rewritten by another transaction whose
//! id is the very same modulo 2³² (at least four billion transactions later) would go
//! unseen: `migrate-state --recheck` compares every session, for who trusts nothing.

use postgres::GenericClient;

use crate::error::{Error, Result};
use crate::pg::{ident, qualified};

/// A target table whose rows the ledger watches, one row per session: the column that
/// keys it by session id, and the ledger column holding the row version sessiondb last
/// wrote (NULL when it wrote no row there). The first is the session's own row.
/// Parent tables join by adding a row here with a ledger of their own keys.
pub struct Watched {
    pub table: &'static str,
    pub key: &'static str,
    pub ledger_column: &'static str,
}

pub const WATCHED: [Watched; 2] = [
    Watched {
        table: "sessions",
        key: "id",
        ledger_column: "sessions_xmin",
    },
    Watched {
        table: "session_state",
        key: "session_id",
        ledger_column: "state_xmin",
    },
];

/// A row's version as a bigint: `xmin` cast through text (there is no xid → int8 cast).
fn version(alias: &str) -> String {
    format!("{alias}.xmin::pg_catalog.text::pg_catalog.int8")
}

/// The low 32 bits of the current transaction's id: the `xmin` of every row it writes.
pub const CURRENT_XID: &str =
    "SELECT pg_catalog.mod(pg_catalog.txid_current(), 4294967296::pg_catalog.int8)";

/// A session whose target rows are not the versions sessiondb recorded (or whose own
/// row is gone), with the versions they have now and the content hash the ledger holds.
#[derive(Debug, Clone)]
pub struct Moved {
    pub id: String,
    pub ledger_hash: Option<String>,
    /// The current version of each [`WATCHED`] row (None: no row).
    pub versions: [Option<i64>; 2],
}

/// Whether the ledger has the row-version columns (schema version 2 applied).
pub fn tracked(c: &mut impl GenericClient, schema: &str) -> Result<bool> {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                          JOIN pg_catalog.pg_class t ON t.oid = a.attrelid
                          JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
                         WHERE n.nspname = $1 AND t.relname = 'sessiondb_ledger'
                           AND a.attname = 'sessions_xmin' AND NOT a.attisdropped)",
        &[&schema],
    )
    .map(|r| r.get(0))
    .map_err(|e| Error::pg("reading the catalog", "", e))
}

/// Every migrated session whose target rows moved since sessiondb wrote them: one
/// query over the ledger and the watched tables. Ledger rows whose versions are not
/// known yet (see [`unknown`]) are included only when their session's row is gone.
pub fn moved(c: &mut impl GenericClient, schema: &str) -> Result<Vec<Moved>> {
    let ledger = qualified(schema, "sessiondb_ledger");
    let mut joins = String::new();
    let mut cols = Vec::new();
    let mut differs = Vec::new();
    for (i, w) in WATCHED.iter().enumerate() {
        let a = format!("w{i}");
        joins.push_str(&format!(
            " LEFT JOIN {} {a} ON {a}.{} OPERATOR(pg_catalog.=) l.session_id",
            qualified(schema, w.table),
            ident(w.key)
        ));
        cols.push(version(&a));
        differs.push(format!(
            "l.{} IS DISTINCT FROM {}",
            w.ledger_column,
            version(&a)
        ));
    }
    let own = format!("w0.{}", ident(WATCHED[0].key));
    let sql = format!(
        "SELECT l.session_id, l.content_hash, {} FROM {ledger} l{joins}
          WHERE l.status = 'migrated'
            AND ({own} IS NULL OR (l.{} IS NOT NULL AND ({})))",
        cols.join(", "),
        WATCHED[0].ledger_column,
        differs.join(" OR ")
    );
    let rows = c
        .query(&sql, &[])
        .map_err(|e| Error::pg("comparing the target's row versions with the ledger", "", e))?;
    Ok(rows
        .iter()
        .map(|r| Moved {
            id: r.get(0),
            ledger_hash: r.get(1),
            versions: [r.get(2), r.get(3)],
        })
        .collect())
}

/// How many migrated sessions the ledger holds without their row versions (written
/// before schema version 2, or by a step that does not record them).
pub fn unknown(c: &mut impl GenericClient, schema: &str) -> Result<u64> {
    let n: i64 = c
        .query_one(
            &format!(
                "SELECT pg_catalog.count(*) FROM {} WHERE status = 'migrated' AND {} IS NULL",
                qualified(schema, "sessiondb_ledger"),
                WATCHED[0].ledger_column
            ),
            &[],
        )
        .map_err(|e| Error::pg("reading the ledger", "", e))?
        .get(0);
    Ok(n as u64)
}

/// Record the current row versions of the sessions whose versions are not known yet,
/// taking the target as it is now for what sessiondb wrote (the one-time pass after
/// schema version 2; what changed in the target before it cannot be seen, and the
/// report says so). Returns how many ledger rows learned them.
pub fn learn_unknown(c: &mut impl GenericClient, schema: &str) -> Result<u64> {
    let sets: Vec<String> = WATCHED
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{} = {}", w.ledger_column, version(&format!("w{i}"))))
        .collect();
    let sql = format!(
        "UPDATE {} l SET {} FROM {} w0 LEFT JOIN {} w1 ON w1.{} OPERATOR(pg_catalog.=) w0.{}
          WHERE w0.{} OPERATOR(pg_catalog.=) l.session_id AND l.status = 'migrated' AND l.{} IS NULL",
        qualified(schema, "sessiondb_ledger"),
        sets.join(", "),
        qualified(schema, WATCHED[0].table),
        qualified(schema, WATCHED[1].table),
        ident(WATCHED[1].key),
        ident(WATCHED[0].key),
        ident(WATCHED[0].key),
        WATCHED[0].ledger_column
    );
    c.execute(&sql, &[])
        .map_err(|e| Error::pg("recording the target's row versions", "", e))
}

/// Record the versions of rows that moved but hold what sessiondb wrote (rewritten
/// identically): they are not conflicts, and the next catch-up need not judge them.
/// The versions are those seen when their content was read, so a row that moved again
/// since is judged again next time.
pub fn relearn(c: &mut impl GenericClient, schema: &str, list: &[Moved]) -> Result<u64> {
    if list.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = list.iter().map(|m| m.id.as_str()).collect();
    let v0: Vec<Option<i64>> = list.iter().map(|m| m.versions[0]).collect();
    let v1: Vec<Option<i64>> = list.iter().map(|m| m.versions[1]).collect();
    c.execute(
        &format!(
            "UPDATE {} l SET {} = u.v0, {} = u.v1
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.int8[]),
                               pg_catalog.unnest($3::pg_catalog.int8[])) AS u(i, v0, v1)
              WHERE l.session_id = u.i",
            qualified(schema, "sessiondb_ledger"),
            WATCHED[0].ledger_column,
            WATCHED[1].ledger_column
        ),
        &[&ids, &v0, &v1],
    )
    .map_err(|e| Error::pg("recording the target's row versions", "", e))
}

/// `SELECT` list items giving, for the staging table `stage` (column `id`), the
/// current version of each watched row: for ledger writes after the rows were written
/// in the same transaction. Joins are in [`versions_from`].
pub fn versions_select() -> String {
    (0..WATCHED.len())
        .map(|i| version(&format!("w{i}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The joins behind [`versions_select`], from the relation aliased `k` with the
/// session id in column `key`.
pub fn versions_from(schema: &str, key: &str) -> String {
    WATCHED
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!(
                " LEFT JOIN {} w{i} ON w{i}.{} OPERATOR(pg_catalog.=) {key}",
                qualified(schema, w.table),
                ident(w.key)
            )
        })
        .collect()
}
