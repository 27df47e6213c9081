//! Writing sessions into the target: one transaction per batch holding the data and
//! its ledger rows, so a run killed at any moment leaves whole batches or nothing.
//! An empty target takes COPY straight into its tables; otherwise rows go through a
//! COPY into a temporary staging table and set-based upserts.

use std::io::Write;

use postgres::Transaction;

use super::{ledger, qualified};
use crate::error::{Error, Result};
use crate::source::{META_FIELDS, Session, fields};

/// Append `s` to a COPY text-format line, escaped. Runs without a special byte are
/// copied whole: state texts are megabytes a batch and rarely need escaping.
pub(super) fn field(out: &mut Vec<u8>, s: Option<&str>) {
    let Some(s) = s else {
        out.extend_from_slice(b"\\N");
        return;
    };
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
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

/// The `sessions` row of `s`: its id and [`META_FIELDS`], in that order (the order of
/// [`SESSION_COLUMNS`]).
fn meta_fields(out: &mut Vec<u8>, s: &Session) {
    field(out, Some(&s.id));
    for v in &s.meta.texts() {
        sep(out);
        field(out, v.as_deref());
    }
}

/// The columns of a `sessions` row sessiondb writes, in [`meta_fields`]' order.
const SESSION_COLUMNS: &str = "id, user_id, status, current_step, cost, created_at, updated_at";

/// What a batch's COPY is called in its error.
const BATCH_COPY: &str = "loading a batch (COPY)";

/// The most bytes one COPY message carries ([`copy_in`]).
const COPY_MESSAGE: usize = 64 << 10;

/// One COPY of `data` by `sql`; `what` names it in the error should the server refuse it.
/// Sent a [`COPY_MESSAGE`] at a time: the driver buffers what one write hands it, then
/// encodes it into the connection's buffer, which keeps its size; a batch's states in
/// one write were two more copies of them per writer for the rest of the load.
pub(super) fn copy_in(tx: &mut Transaction<'_>, sql: &str, data: &[u8], what: &str) -> Result<()> {
    let mut w = tx
        .copy_in(sql)
        .map_err(|e| Error::pg("starting COPY", "", e))?;
    for part in data.chunks(COPY_MESSAGE) {
        w.write_all(part).map_err(|e| Error::Database {
            context: "sending COPY data".into(),
            message: e.to_string(),
        })?;
    }
    w.finish().map_err(|e| Error::pg(what, "", e))?;
    Ok(())
}

/// One batch to write: sessions with their content hashes.
pub struct Batch<'a> {
    pub sessions: Vec<(&'a Session, String)>,
}

/// A batch for an empty target, rendered as COPY text for its three tables. Rendering
/// (hashing included) happens off the connection, in parallel, so that PostgreSQL is
/// never left waiting for the client between batches.
#[derive(Default)]
pub struct Rendered {
    pub sessions: Vec<u8>,
    pub states: Vec<u8>,
    /// Ledger lines without their last two fields, the row versions, which only the
    /// writing transaction knows ([`copy_rendered`] adds them).
    pub ledger: Vec<u8>,
    /// Whether each ledger line's session has a state row.
    pub ledger_state: Vec<bool>,
    pub state_bytes: u64,
}

/// Render `sessions` (all to be inserted) for [`copy_rendered`], in parallel.
pub fn render_fresh(sessions: &[Session], run_id: &uuid::Uuid) -> Rendered {
    use rayon::prelude::*;
    let run = run_id.to_string();
    let parts: Vec<Rendered> = sessions
        .par_chunks(64)
        .map(|chunk| {
            let mut r = Rendered {
                sessions: Vec::with_capacity(chunk.len() * 160),
                states: Vec::with_capacity(chunk.len() * 4200),
                ledger: Vec::with_capacity(chunk.len() * 240),
                ledger_state: Vec::with_capacity(chunk.len()),
                state_bytes: 0,
            };
            for s in chunk {
                render_one(&mut r, s, &run);
            }
            r
        })
        .collect();
    let mut out = Rendered {
        sessions: Vec::with_capacity(parts.iter().map(|p| p.sessions.len()).sum()),
        states: Vec::with_capacity(parts.iter().map(|p| p.states.len()).sum()),
        ledger: Vec::with_capacity(parts.iter().map(|p| p.ledger.len()).sum()),
        ledger_state: Vec::with_capacity(sessions.len()),
        state_bytes: 0,
    };
    for p in parts {
        out.sessions.extend_from_slice(&p.sessions);
        out.states.extend_from_slice(&p.states);
        out.ledger.extend_from_slice(&p.ledger);
        out.ledger_state.extend_from_slice(&p.ledger_state);
        out.state_bytes += p.state_bytes;
    }
    out
}

fn render_one(r: &mut Rendered, s: &Session, run: &str) {
    meta_fields(&mut r.sessions, s);
    r.sessions.push(b'\n');
    if let Some(text) = state_text(s) {
        field(&mut r.states, Some(&s.id));
        sep(&mut r.states);
        field(&mut r.states, Some(text));
        sep(&mut r.states);
        field(&mut r.states, Some(&state_updated_at(s)));
        r.states.push(b'\n');
        r.state_bytes += text.len() as u64;
    }
    let ledger = &mut r.ledger;
    field(ledger, Some(&s.id));
    sep(ledger);
    field(ledger, Some("migrated"));
    sep(ledger);
    field(ledger, Some(&s.content_hash()));
    sep(ledger);
    field(ledger, s.state.as_ref().map(|st| st.hash()).as_deref());
    sep(ledger);
    field(ledger, Some(run));
    sep(ledger);
    field(ledger, s.stamp.as_deref());
    ledger.push(b'\n');
    r.ledger_state.push(s.state.is_some());
}

/// The rendered ledger lines with their row versions: every row of the batch was
/// written by the transaction whose id is `xid` (see [`ledger::versions::CURRENT_XID`]).
fn ledger_with_versions(r: &Rendered, xid: i64) -> Vec<u8> {
    let xid = xid.to_string();
    let mut out = Vec::with_capacity(r.ledger.len() + r.ledger_state.len() * 24);
    // COPY text escapes newlines inside fields: a raw newline ends a line.
    for (line, has_state) in r
        .ledger
        .split_inclusive(|b| *b == b'\n')
        .zip(&r.ledger_state)
    {
        out.extend_from_slice(&line[..line.len() - 1]);
        sep(&mut out);
        field(&mut out, Some(&xid));
        sep(&mut out);
        field(&mut out, has_state.then_some(xid.as_str()));
        out.push(b'\n');
    }
    out
}

/// Insert a rendered batch into an empty target straight with COPY (no staging, no
/// upsert): sessions, their states, and their ledger rows with the row versions, in the
/// caller's transaction.
pub fn copy_rendered(tx: &mut Transaction<'_>, schema: &str, r: &Rendered) -> Result<()> {
    if r.ledger.is_empty() {
        return Ok(());
    }
    let xid: i64 = tx
        .query_one(ledger::versions::CURRENT_XID, &[])
        .map_err(|e| Error::pg("reading the transaction id", "", e))?
        .get(0);
    copy_in(
        tx,
        &format!(
            "COPY {} ({SESSION_COLUMNS}) FROM STDIN",
            qualified(schema, "sessions")
        ),
        &r.sessions,
        BATCH_COPY,
    )?;
    if !r.states.is_empty() {
        copy_in(
            tx,
            &format!(
                "COPY {} (session_id, state, updated_at) FROM STDIN",
                qualified(schema, "session_state")
            ),
            &r.states,
            BATCH_COPY,
        )?;
    }
    copy_in(
        tx,
        &format!(
            "COPY {} ({}) FROM STDIN",
            qualified(schema, ledger::TABLE),
            ledger::COPY_COLUMNS
        ),
        &ledger_with_versions(r, xid),
        BATCH_COPY,
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
        "CREATE TEMP TABLE IF NOT EXISTS pg_temp.sessiondb_stage (
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
    copy_in(
        tx,
        "COPY pg_temp.sessiondb_stage FROM STDIN",
        &data,
        BATCH_COPY,
    )?;
    let sessions = qualified(schema, "sessions");
    let state = qualified(schema, "session_state");
    let set: Vec<String> = META_FIELDS
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let set = set.join(", ");
    let sql = format!(
        "INSERT INTO {sessions} AS t ({SESSION_COLUMNS})
              SELECT {SESSION_COLUMNS} FROM pg_temp.sessiondb_stage
         ON CONFLICT (id) DO UPDATE SET {set};
         INSERT INTO {state} AS t (session_id, state, updated_at)
              SELECT id, state::jsonb, state_updated_at FROM pg_temp.sessiondb_stage WHERE state IS NOT NULL
         ON CONFLICT (session_id) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
              WHERE t.state::text IS DISTINCT FROM EXCLUDED.state::text OR t.updated_at IS DISTINCT FROM EXCLUDED.updated_at;
         DELETE FROM {state} WHERE session_id OPERATOR(pg_catalog.=) ANY (SELECT id FROM pg_temp.sessiondb_stage WHERE state IS NULL);"
    );
    tx.batch_execute(&sql)
        .map_err(|e| Error::pg("upserting a batch", "", e))?;
    ledger::record_staged(tx, schema, run_id)
}

/// One batch for the [`Writers`]: rendered rows, and the ids and codes of the batch's
/// quarantined records (their raw bytes are already saved).
pub struct Job {
    pub rendered: Rendered,
    pub sessions: u64,
    /// Invalid records set aside in this batch (with or without an id).
    pub invalid: u64,
    pub quarantined: Vec<(String, &'static str)>,
}

/// What the writers committed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub sessions: u64,
    pub state_bytes: u64,
    pub invalid: u64,
}

/// Writer threads for a load into an empty target. Each owns a connection and commits
/// whole batches — data, ledger rows and quarantine records in one transaction — so a
/// run killed at any moment leaves whole batches or nothing, in whatever order they
/// committed; the rerun finds the rest missing from the ledger. Several writers keep
/// several PostgreSQL backends parsing jsonb at once.
pub struct Writers<'scope> {
    send: Option<std::sync::mpsc::SyncSender<Job>>,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::ScopedJoinHandle<'scope, Result<Written>>>,
}

impl<'scope> Writers<'scope> {
    /// One writer thread per client.
    pub fn start<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        clients: Vec<postgres::Client>,
        schema: &str,
        run_id: uuid::Uuid,
    ) -> Writers<'scope> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let (send, recv) = std::sync::mpsc::sync_channel::<Job>(clients.len().max(1));
        let recv = Arc::new(Mutex::new(recv));
        let failed = Arc::new(AtomicBool::new(false));
        let handles = clients
            .into_iter()
            .map(|mut client| {
                let recv = recv.clone();
                let failed = failed.clone();
                let schema = schema.to_owned();
                scope.spawn(move || {
                    let mut done = Written::default();
                    loop {
                        let job = {
                            let r = recv.lock().unwrap_or_else(|p| p.into_inner());
                            r.recv()
                        };
                        let Ok(job) = job else { return Ok(done) };
                        if let Err(e) = write_job(&mut client, &schema, &run_id, &job) {
                            failed.store(true, Ordering::SeqCst);
                            return Err(e);
                        }
                        done.sessions += job.sessions;
                        done.state_bytes += job.rendered.state_bytes;
                        done.invalid += job.invalid;
                    }
                })
            })
            .collect();
        Writers {
            send: Some(send),
            failed,
            handles,
        }
    }

    /// Queue a batch (blocks while every writer is busy). Fails once a writer has failed:
    /// [`Writers::finish`] then returns that writer's error.
    pub fn send(&self, job: Job) -> Result<()> {
        let stopped = || Error::Cancelled {
            message: "a writer failed; the load stopped".into(),
        };
        if self.failed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(stopped());
        }
        match &self.send {
            Some(s) => s.send(job).map_err(|_| stopped()),
            None => Err(stopped()),
        }
    }

    /// Let the writers commit what is queued, wait for them, and add up what they
    /// committed; the first writer error, if any.
    pub fn finish(mut self) -> (Written, Option<Error>) {
        drop(self.send.take());
        let mut total = Written::default();
        let mut first = None;
        for h in self.handles.drain(..) {
            match h.join() {
                Ok(Ok(w)) => {
                    total.sessions += w.sessions;
                    total.state_bytes += w.state_bytes;
                    total.invalid += w.invalid;
                }
                Ok(Err(e)) => {
                    first.get_or_insert(e);
                }
                Err(panic) => {
                    first.get_or_insert(Error::Internal {
                        message: format!(
                            "a writer thread panicked ({}); committed batches are kept",
                            crate::error::panic_message(panic.as_ref())
                        ),
                    });
                }
            }
        }
        (total, first)
    }
}

fn write_job(
    client: &mut postgres::Client,
    schema: &str,
    run_id: &uuid::Uuid,
    job: &Job,
) -> Result<()> {
    let mut tx = client
        .transaction()
        .map_err(|e| Error::pg("starting a batch", "", e))?;
    copy_rendered(&mut tx, schema, &job.rendered)?;
    // Quarantined ids of this batch are not in its COPY: no ledger key collides.
    ledger::record_quarantined_keys(&mut tx, schema, run_id, &job.quarantined)?;
    tx.commit()
        .map_err(|e| Error::pg("committing a batch", "", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::field;

    fn esc(s: Option<&str>) -> String {
        let mut out = Vec::new();
        field(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn copy_text_escapes_only_what_copy_reads_specially() {
        assert_eq!(esc(None), "\\N");
        assert_eq!(esc(Some("")), "");
        assert_eq!(esc(Some("plain {\"a\": 1}")), "plain {\"a\": 1}");
        assert_eq!(esc(Some("a\\b\tc\nd\re\\")), "a\\\\b\\tc\\nd\\re\\\\");
        assert_eq!(esc(Some("\\N")), "\\\\N");
        assert_eq!(esc(Some("é\u{7f}\u{1}")), "é\u{7f}\u{1}");
    }
}
