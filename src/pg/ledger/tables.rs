//! The ledger of a mapped store's rows (SPEC §9): `sessiondb_row_ledger`, one row per
//! (table, primary key) of the tables copied with the sessions, with the content hash
//! (`v2:`) sessiondb last wrote; and the mapped sessions' rows of `sessiondb_ledger`
//! (their `v2:` hash over every column and the state). Written in the transaction of
//! the batch they record.

use postgres::GenericClient;

use super::{MIGRATED, TABLE};
use crate::error::{Error, Result};
use crate::pg::qualified;

pub const ROW_TABLE: &str = "sessiondb_row_ledger";

/// Whether the row ledger exists (schema version 3 applied).
pub fn exists(c: &mut impl GenericClient, schema: &str) -> Result<bool> {
    crate::pg::schema::table_exists(c, schema, ROW_TABLE)
}

/// Copy every recorded row of `table` (key, content hash) into `into`, a table of
/// `(key, hash)` of the caller's: server-side, nothing held here.
pub fn hold_rows(c: &mut impl GenericClient, schema: &str, table: &str, into: &str) -> Result<()> {
    if !exists(c, schema)? {
        return Ok(());
    }
    c.execute(
        &format!(
            "INSERT INTO {into} (key, hash) SELECT row_key, content_hash FROM {} WHERE table_name OPERATOR(pg_catalog.=) $1",
            qualified(schema, ROW_TABLE)
        ),
        &[&table],
    )
    .map_err(|e| Error::pg("reading the row ledger", "", e))?;
    Ok(())
}

/// Record `rows` (key, hash) of `table` as written by `run_id`.
pub fn record(
    c: &mut impl GenericClient,
    schema: &str,
    table: &str,
    run_id: &uuid::Uuid,
    rows: &[(&str, &str)],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let hashes: Vec<&str> = rows.iter().map(|r| r.1).collect();
    c.execute(
        &format!(
            "INSERT INTO {} (table_name, row_key, content_hash, run_id)
                  SELECT $1, u.k, u.h, $4
                    FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.text[])) AS u(k, h)
             ON CONFLICT (table_name, row_key) DO UPDATE SET content_hash = EXCLUDED.content_hash,
                  run_id = EXCLUDED.run_id, migrated_at = pg_catalog.now()",
            qualified(schema, ROW_TABLE)
        ),
        &[&table, &keys, &hashes, run_id],
    )
    .map_err(|e| Error::pg("recording rows in the row ledger", "", e))?;
    Ok(())
}

/// Copy the mapped sessions sessiondb recorded as migrated (id, content hash) into
/// `into`, a table of `(key, hash)` of the caller's: server-side, nothing held here.
pub fn hold_sessions(c: &mut impl GenericClient, schema: &str, into: &str) -> Result<()> {
    if !super::exists(c, schema)? {
        return Ok(());
    }
    c.execute(
        &format!(
            "INSERT INTO {into} (key, hash) SELECT session_id, content_hash FROM {} WHERE status OPERATOR(pg_catalog.=) '{MIGRATED}' AND content_hash IS NOT NULL",
            qualified(schema, TABLE)
        ),
        &[],
    )
    .map_err(|e| Error::pg("reading the ledger", "", e))?;
    Ok(())
}

/// Record mapped sessions (id, content hash, state hash) as written by `run_id`. Their
/// row versions are left unknown (NULL): the mapped load does not track them yet.
pub fn record_sessions(
    c: &mut impl GenericClient,
    schema: &str,
    run_id: &uuid::Uuid,
    rows: &[(&str, &str, Option<String>)],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let hashes: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let states: Vec<Option<String>> = rows.iter().map(|r| r.2.clone()).collect();
    c.execute(
        &format!(
            "INSERT INTO {} (session_id, status, content_hash, state_hash, run_id)
                  SELECT u.i, '{MIGRATED}', u.h, u.sh, $4
                    FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.text[])) AS u(i, h, sh)
             ON CONFLICT (session_id) DO UPDATE SET status = '{MIGRATED}', content_hash = EXCLUDED.content_hash,
                  state_hash = EXCLUDED.state_hash, code = NULL, run_id = EXCLUDED.run_id, migrated_at = pg_catalog.now(),
                  source_stamp = NULL, sessions_xmin = NULL, state_xmin = NULL",
            qualified(schema, TABLE)
        ),
        &[&ids, &hashes, &states, run_id],
    )
    .map_err(|e| Error::pg("recording sessions in the ledger", "", e))?;
    Ok(())
}
