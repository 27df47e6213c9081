//! Writing sessions into the target: one transaction per batch holding the data and
//! its ledger rows, so a run killed at any moment leaves whole batches or nothing.
//! An empty target takes COPY straight into its tables; otherwise rows go through a
//! COPY into a temporary staging table and set-based upserts.

use std::io::Write;

use postgres::Transaction;

use super::qualified;
use crate::error::{Error, Result};
use crate::source::{Invalid, Session, fields};

/// Append `s` to a COPY text-format line, escaped.
fn field(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend_from_slice(b"\\N"),
        Some(s) => {
            for &b in s.as_bytes() {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
        }
    }
}

fn sep(out: &mut Vec<u8>) {
    out.push(b'\t');
}

/// The original state text (valid UTF-8: the reader validated it).
fn state_text(s: &Session) -> Option<&str> {
    s.state
        .as_ref()
        .map(|st| std::str::from_utf8(&st.raw).expect("validated state is UTF-8"))
}

fn meta_fields(out: &mut Vec<u8>, s: &Session) {
    field(out, Some(&s.id));
    sep(out);
    field(out, s.meta.user_id.as_deref());
    sep(out);
    field(out, s.meta.status.as_deref());
    sep(out);
    field(out, s.meta.current_step.as_deref());
    sep(out);
    field(out, s.meta.cost.map(|c| format!("{c:?}")).as_deref());
    sep(out);
    field(
        out,
        s.meta.created_at.as_ref().map(fields::fmt_ts).as_deref(),
    );
    sep(out);
    field(
        out,
        s.meta.updated_at.as_ref().map(fields::fmt_ts).as_deref(),
    );
}

fn copy_in(tx: &mut Transaction<'_>, sql: &str, data: &[u8]) -> Result<()> {
    let mut w = tx
        .copy_in(sql)
        .map_err(|e| Error::pg("starting COPY", "", e))?;
    w.write_all(data).map_err(|e| Error::Database {
        context: "sending COPY data".into(),
        message: e.to_string(),
    })?;
    w.finish()
        .map_err(|e| Error::pg("loading a batch (COPY)", "", e))?;
    Ok(())
}

/// One batch to write: sessions with their content hashes.
pub struct Batch<'a> {
    pub sessions: Vec<(&'a Session, String)>,
}

/// Insert a batch into an empty target straight with COPY (no staging, no upsert).
pub fn copy_fresh(
    tx: &mut Transaction<'_>,
    schema: &str,
    run_id: &uuid::Uuid,
    batch: &Batch<'_>,
) -> Result<()> {
    let mut sessions = Vec::with_capacity(batch.sessions.len() * 128);
    let mut states = Vec::with_capacity(batch.sessions.len() * 4096);
    let mut ledger = Vec::with_capacity(batch.sessions.len() * 160);
    let run = run_id.to_string();
    for (s, hash) in &batch.sessions {
        meta_fields(&mut sessions, s);
        sessions.push(b'\n');
        if let Some(text) = state_text(s) {
            field(&mut states, Some(&s.id));
            sep(&mut states);
            field(&mut states, Some(text));
            sep(&mut states);
            field(&mut states, Some(&state_updated_at(s)));
            states.push(b'\n');
        }
        field(&mut ledger, Some(&s.id));
        sep(&mut ledger);
        field(&mut ledger, Some("migrated"));
        sep(&mut ledger);
        field(&mut ledger, Some(hash));
        sep(&mut ledger);
        field(&mut ledger, s.state.as_ref().map(|st| st.hash()).as_deref());
        sep(&mut ledger);
        field(&mut ledger, Some(&run));
        sep(&mut ledger);
        field(&mut ledger, s.stamp.as_deref());
        ledger.push(b'\n');
    }
    copy_in(
        tx,
        &format!(
            "COPY {} (id, user_id, status, current_step, cost, created_at, updated_at) FROM STDIN",
            qualified(schema, "sessions")
        ),
        &sessions,
    )?;
    if !states.is_empty() {
        copy_in(
            tx,
            &format!(
                "COPY {} (session_id, state, updated_at) FROM STDIN",
                qualified(schema, "session_state")
            ),
            &states,
        )?;
    }
    copy_in(
        tx,
        &format!(
            "COPY {} (session_id, status, content_hash, state_hash, run_id, source_stamp) FROM STDIN",
            qualified(schema, "sessiondb_ledger")
        ),
        &ledger,
    )?;
    Ok(())
}

/// `session_state.updated_at` is NOT NULL: the session's updated_at, else created_at, else now.
fn state_updated_at(s: &Session) -> String {
    s.meta
        .updated_at
        .or(s.meta.created_at)
        .map(|t| fields::fmt_ts(&t))
        .unwrap_or_else(|| "now".to_owned())
}

/// Upsert a batch through a staging table: new rows inserted, changed rows updated,
/// the ledger rows written in the same transaction.
pub fn upsert(
    tx: &mut Transaction<'_>,
    schema: &str,
    run_id: &uuid::Uuid,
    batch: &Batch<'_>,
) -> Result<()> {
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS sessiondb_stage (
            id text, user_id text, status text, current_step text, cost float8,
            created_at timestamptz, updated_at timestamptz, state text, state_updated_at timestamptz,
            content_hash text, state_hash text, source_stamp text) ON COMMIT DELETE ROWS",
    )
    .map_err(|e| Error::pg("creating the staging table", "", e))?;
    let mut data = Vec::with_capacity(batch.sessions.len() * 4096);
    for (s, hash) in &batch.sessions {
        meta_fields(&mut data, s);
        sep(&mut data);
        field(&mut data, state_text(s));
        sep(&mut data);
        field(&mut data, Some(&state_updated_at(s)));
        sep(&mut data);
        field(&mut data, Some(hash));
        sep(&mut data);
        field(&mut data, s.state.as_ref().map(|st| st.hash()).as_deref());
        sep(&mut data);
        field(&mut data, s.stamp.as_deref());
        data.push(b'\n');
    }
    copy_in(tx, "COPY sessiondb_stage FROM STDIN", &data)?;
    let sessions = qualified(schema, "sessions");
    let state = qualified(schema, "session_state");
    let ledger = qualified(schema, "sessiondb_ledger");
    let sql = format!(
        "INSERT INTO {sessions} AS t (id, user_id, status, current_step, cost, created_at, updated_at)
              SELECT id, user_id, status, current_step, cost, created_at, updated_at FROM sessiondb_stage
         ON CONFLICT (id) DO UPDATE SET user_id = EXCLUDED.user_id, status = EXCLUDED.status,
              current_step = EXCLUDED.current_step, cost = EXCLUDED.cost,
              created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at;
         INSERT INTO {state} AS t (session_id, state, updated_at)
              SELECT id, state::jsonb, state_updated_at FROM sessiondb_stage WHERE state IS NOT NULL
         ON CONFLICT (session_id) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
              WHERE t.state::text IS DISTINCT FROM EXCLUDED.state::text OR t.updated_at IS DISTINCT FROM EXCLUDED.updated_at;
         DELETE FROM {state} WHERE session_id IN (SELECT id FROM sessiondb_stage WHERE state IS NULL);"
    );
    tx.batch_execute(&sql)
        .map_err(|e| Error::pg("upserting a batch", "", e))?;
    tx.execute(
        &format!(
            "INSERT INTO {ledger} (session_id, status, content_hash, state_hash, code, run_id, migrated_at, source_stamp)
                  SELECT id, 'migrated', content_hash, state_hash, NULL, $1, now(), source_stamp FROM sessiondb_stage
             ON CONFLICT (session_id) DO UPDATE SET status = 'migrated', content_hash = EXCLUDED.content_hash,
                  state_hash = EXCLUDED.state_hash, code = NULL, run_id = EXCLUDED.run_id, migrated_at = now(),
                  source_stamp = EXCLUDED.source_stamp"
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
            "INSERT INTO {} (session_id, status, content_hash, state_hash, run_id, source_stamp)
                  SELECT i, 'migrated', h, sh, $4, st FROM unnest($1::text[], $2::text[], $3::text[], $5::text[]) AS u(i, h, sh, st)
             ON CONFLICT (session_id) DO UPDATE SET status = 'migrated', content_hash = EXCLUDED.content_hash,
                  state_hash = EXCLUDED.state_hash, code = NULL, run_id = EXCLUDED.run_id, migrated_at = now(),
                  source_stamp = EXCLUDED.source_stamp",
            qualified(schema, "sessiondb_ledger")
        ),
        &[&ids, &hashes, &state_hashes, run_id, &stamps],
    )
    .map_err(|e| Error::pg("recording adopted sessions", "", e))?;
    Ok(())
}

/// Record quarantined records (those with an id) so that verify counts them.
pub fn record_quarantined(
    tx: &mut Transaction<'_>,
    schema: &str,
    run_id: &uuid::Uuid,
    invalid: &[&Invalid],
) -> Result<()> {
    let with_id: Vec<&&Invalid> = invalid.iter().filter(|i| i.id.is_some()).collect();
    if with_id.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = with_id
        .iter()
        .map(|i| i.id.as_deref().unwrap_or_default())
        .collect();
    let codes: Vec<&str> = with_id.iter().map(|i| i.code).collect();
    tx.execute(
        &format!(
            "INSERT INTO {} (session_id, status, code, run_id)
                  SELECT i, 'quarantined', c, $3 FROM unnest($1::text[], $2::text[]) AS u(i, c)
             ON CONFLICT (session_id) DO UPDATE SET status = 'quarantined',
                  code = EXCLUDED.code, run_id = EXCLUDED.run_id, migrated_at = now()",
            qualified(schema, "sessiondb_ledger")
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
            "UPDATE {} l SET source_stamp = u.s FROM unnest($1::text[], $2::text[]) AS u(i, s) WHERE l.session_id = u.i",
            qualified(schema, "sessiondb_ledger")
        ),
        &[&ids, &stamps],
    )
    .map_err(|e| Error::pg("recording source stamps", "", e))?;
    Ok(())
}
