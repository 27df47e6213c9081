//! `rollback` (SPEC §4): the way back. Names every session created or changed in
//! PostgreSQL since sessiondb last wrote it (the ledger says what it wrote); with
//! `--dry-run=false` it backs up the legacy store, exports those sessions into it
//! (SQLite row upserted; `state.json` written atomically, or the SQLite `state` column
//! for an id that is not a safe path component), checks again until PostgreSQL stops
//! changing, and only then sets the config's backend back. PostgreSQL keeps its data.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;
use serde_json::json;

use crate::cli::{Common, Ctx, DryRun, Step};
use crate::config::{Backend, Config};
use crate::cutover;
use crate::error::{Error, Result};
use crate::report::{CheckStatus, INLINE_LIMIT};
use crate::source::{Meta, fields, sqlite};
use crate::target::{self, WriterLock, qualified};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub dry: DryRun,
}

impl Step for Args {
    const NAME: &'static str = "rollback";
    fn common(&self) -> &Common {
        &self.common
    }
    fn dry_run(&self) -> Option<bool> {
        Some(self.dry.dry_run)
    }
    fn run(&self, ctx: &mut Ctx) -> Result<()> {
        run(ctx, self.dry.dry_run)
    }
}

/// A session to export back.
#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub session: String,
    /// `created` (not written by sessiondb) or `changed` (differs from what it wrote).
    pub kind: &'static str,
    #[serde(skip)]
    meta: Meta,
    #[serde(skip)]
    state: Option<String>,
    #[serde(skip)]
    hash: String,
}

/// Rounds of export-and-check before concluding the application is still writing.
const ROUNDS: usize = 3;

pub fn run(ctx: &mut Ctx, dry_run: bool) -> Result<()> {
    let cfg = ctx.config()?;
    // The store this writes back into: a FIFO or a device at one of its paths is refused
    // before anything else, in the dry run too.
    crate::source::Source::from_config(&cfg).check_paths()?;
    let t = ctx.target(Some(&cfg))?;
    let schema_name = cfg.postgres.schema.clone();
    let mut c = target::connect(&t)?;
    let cut = cutover::latest(&mut c, &schema_name, "set_default")?;
    let back_to = match (&cut, cfg.backend) {
        (Some(cu), _) => parse_backend(&cu.from_backend),
        (None, Backend::Postgres) => {
            return Err(Error::Refused {
                code: "no_cutover",
                message: format!(
                    "{} says postgres but no cutover is recorded in the target, so the previous backend is unknown: edit the file by hand",
                    cfg.path.display()
                ),
            });
        }
        (None, b) => b,
    };
    if back_to == Backend::Json {
        return Err(Error::Refused { code: "json_backend_deprecated", message: "the previous backend was the deprecated JSON store, which is read-only: roll back to sqlite by hand".into() });
    }
    ctx.report.detail("cutover", &cut);
    ctx.report.detail("back_to", back_to);
    if !crate::target::schema::table_exists(&mut c, &schema_name, "sessiondb_ledger")? {
        return Err(Error::Refused {
            code: "nothing_migrated",
            message: "the target has no sessiondb ledger: nothing was migrated, nothing to export"
                .into(),
        });
    }
    let changed = find_changed(&mut c, &schema_name)?;
    let created = changed.iter().filter(|x| x.kind == "created").count() as u64;
    ctx.report.count("created", created);
    ctx.report.count("changed", changed.len() as u64 - created);
    ctx.report.detail(
        "sessions",
        changed.iter().take(INLINE_LIMIT).collect::<Vec<_>>(),
    );
    if let Some(Ok(p)) =
        crate::report::write_list(ctx.report_dir(), "rollback-sessions.jsonl", &changed)
    {
        ctx.report.artifact("sessions", &p);
    }
    let edit = cutover::plan_edit(&cfg.path, back_to)?;
    ctx.report.detail(
        "diff",
        edit.as_ref().map(|e| e.diff.clone()).unwrap_or_default(),
    );
    ctx.report.check(
        "plan",
        CheckStatus::Pass,
        format!(
            "{} session(s) to export ({created} created, {} changed in PostgreSQL); config: {}",
            changed.len(),
            changed.len() as u64 - created,
            match &edit {
                Some(e) => format!("backend {} → {}", e.from, e.to),
                None => format!("already {back_to}"),
            }
        ),
        json!({}),
    );
    if dry_run {
        ctx.report.count("exported", 0);
        ctx.report
            .next_steps
            .push("stop the application's writes, then rollback --dry-run=false".into());
        return Ok(());
    }
    if changed.is_empty() && edit.is_none() {
        ctx.report.count("exported", 0);
        ctx.report.next_steps.push(
            "nothing to do: the legacy store already holds everything and the config says so"
                .into(),
        );
        return Ok(());
    }

    let run_id = ctx.run_id();
    let _lock = WriterLock::acquire(&t, &schema_name, &run_id)?;
    let sq = cfg.sqlite.clone().ok_or_else(|| Error::ConfigInvalid {
        path: cfg.path.clone(),
        message: "rollback exports into [sqlite]; there is none".into(),
    })?;
    // Back up what the export replaces.
    let backup = crate::backup::take(&cfg, &crate::backup::Options::default(), &run_id)?.dir;
    ctx.report.artifact("backup", &backup);
    let mut exported = 0u64;
    let mut pending = changed;
    for round in 1..=ROUNDS {
        if pending.is_empty() {
            break;
        }
        export(&cfg, &sq.path, &sq.sessions_dir, &pending)?;
        mark_exported(&mut c, &schema_name, &run_id, &pending)?;
        exported += pending.len() as u64;
        pending = find_changed(&mut c, &schema_name)?;
        if !pending.is_empty() {
            tracing::warn!(
                "round {round}: {} session(s) changed in PostgreSQL during the export",
                pending.len()
            );
        }
    }
    ctx.report.count("exported", exported);
    if !pending.is_empty() {
        ctx.report.detail(
            "still_changing",
            pending.iter().take(INLINE_LIMIT).collect::<Vec<_>>(),
        );
        ctx.report.next_steps.push(
            "stop the application's writes to PostgreSQL, then run rollback --dry-run=false again"
                .into(),
        );
        return Err(Error::Refused {
            code: "still_writing",
            message: format!(
                "sessions keep changing in PostgreSQL ({} after {ROUNDS} rounds, e.g. {}): the application is still writing; the config was NOT switched back",
                pending.len(),
                pending[0].session
            ),
        });
    }
    if let Some(e) = &edit {
        let saved = cutover::apply_edit(e, &cfg.backup_dir, &run_id)?;
        ctx.report.artifact("previous_config", &saved);
        cutover::record(
            &mut c,
            &schema_name,
            "rollback",
            &e.from,
            &e.to,
            &cfg.path,
            &cutover::sha256_hex(e.new_text.as_bytes()),
            None,
            &run_id,
        )?;
    }
    ctx.report.next_steps.push(format!(
        "restart the application on {back_to} (unset {} or point it at the SQLite URL)",
        cfg.postgres.url_env
    ));
    ctx.report.next_steps.push(
        "PostgreSQL keeps its data: a later migrate-state catch-up and set-default re-cut over"
            .into(),
    );
    Ok(())
}

fn parse_backend(s: &str) -> Backend {
    match s {
        "postgres" => Backend::Postgres,
        "json" => Backend::Json,
        _ => Backend::Sqlite,
    }
}

/// Every target session that the ledger does not say sessiondb wrote as it is now.
pub fn find_changed(c: &mut postgres::Client, schema: &str) -> Result<Vec<Changed>> {
    let sql = format!(
        "SELECT s.id, s.user_id, s.status, s.current_step, s.cost, s.created_at, s.updated_at, st.state::text, l.content_hash
           FROM {} s LEFT JOIN {} st ON st.session_id = s.id LEFT JOIN {} l ON l.session_id = s.id AND l.status = 'migrated'",
        qualified(schema, "sessions"),
        qualified(schema, "session_state"),
        qualified(schema, "sessiondb_ledger")
    );
    let mut out = Vec::new();
    let mut tx = c
        .transaction()
        .map_err(|e| Error::pg("reading the target", "", e))?;
    let portal = tx
        .bind(&sql, &[])
        .map_err(|e| Error::pg("reading the target", "", e))?;
    loop {
        let rows = tx
            .query_portal(&portal, 5000)
            .map_err(|e| Error::pg("reading the target", "", e))?;
        if rows.is_empty() {
            break;
        }
        for r in rows {
            let id: String = r.get(0);
            let meta = Meta {
                user_id: r.get(1),
                status: r.get(2),
                current_step: r.get(3),
                cost: r.get(4),
                created_at: r.get(5),
                updated_at: r.get(6),
            };
            let state: Option<String> = r.get(7);
            let ledger: Option<String> = r.get(8);
            let hash = crate::source::content_hash(&id, &meta, state.as_deref());
            let kind = match &ledger {
                None => "created",
                Some(h) if *h != hash => "changed",
                Some(_) => continue,
            };
            out.push(Changed {
                session: id,
                kind,
                meta,
                state,
                hash,
            });
        }
    }
    tx.commit()
        .map_err(|e| Error::pg("reading the target", "", e))?;
    Ok(out)
}

/// Write sessions into the legacy store: rows upserted in one SQLite transaction, state
/// files written atomically.
fn export(cfg: &Config, db: &Path, sessions_dir: &Path, list: &[Changed]) -> Result<()> {
    sqlite::check_header(db)?;
    let mut conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite::map_err(db, e))?;
    conn.busy_timeout(sqlite::BUSY_TIMEOUT)
        .map_err(|e| sqlite::map_err(db, e))?;
    // State files first: a file that lands before its row is harmless (an orphan until
    // the row commits); a row without its new state would be stale.
    for s in list {
        if let (Some(state), true) = (&s.state, fields::path_safe(&s.session)) {
            let dir = sessions_dir.join(&s.session);
            std::fs::create_dir_all(&dir).map_err(|e| Error::Write {
                path: dir.clone(),
                source: e,
            })?;
            let path = dir.join("state.json");
            crate::fsutil::write_atomic(&path, state.as_bytes(), 0o644).map_err(|e| {
                Error::Write {
                    path: path.clone(),
                    source: e,
                }
            })?;
            // What an earlier rollback killed mid-write left next to it.
            crate::fsutil::remove_stale_temps(&path);
        }
    }
    let tx = conn.transaction().map_err(|e| sqlite::map_err(db, e))?;
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO sessions (id, user_id, status, current_step, cost, created_at, updated_at, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET user_id = excluded.user_id, status = excluded.status,
                     current_step = excluded.current_step, cost = excluded.cost, created_at = excluded.created_at,
                     updated_at = excluded.updated_at,
                     state = CASE WHEN excluded.state IS NOT NULL THEN excluded.state WHEN sessions.state IS NOT NULL THEN ?9 ELSE NULL END",
            )
            .map_err(|e| sqlite::map_err(db, e))?;
        for s in list {
            // Unsafe ids keep their state in the column; others in state.json (and the
            // column too when it held state before, so the two never disagree).
            let column = if fields::path_safe(&s.session) {
                None
            } else {
                s.state.clone()
            };
            stmt.execute(params![
                s.session,
                s.meta.user_id,
                s.meta.status,
                s.meta.current_step,
                s.meta.cost,
                s.meta.created_at.as_ref().map(fields::fmt_ts),
                s.meta.updated_at.as_ref().map(fields::fmt_ts),
                column,
                s.state,
            ])
            .map_err(|e| sqlite::map_err(db, e))?;
        }
    }
    tx.commit().map_err(|e| sqlite::map_err(db, e))?;
    let _ = cfg;
    Ok(())
}

/// The exported sessions are now the same on both sides: record that in the ledger.
fn mark_exported(
    c: &mut postgres::Client,
    schema: &str,
    run_id: &str,
    list: &[Changed],
) -> Result<()> {
    let run = uuid::Uuid::parse_str(run_id).expect("uuid");
    let ids: Vec<&str> = list.iter().map(|s| s.session.as_str()).collect();
    let hashes: Vec<&str> = list.iter().map(|s| s.hash.as_str()).collect();
    let state_hashes: Vec<Option<String>> = list
        .iter()
        .map(|s| s.state.as_deref().map(crate::canon::hash_canonical))
        .collect();
    c.execute(
        &format!(
            "INSERT INTO {} (session_id, status, content_hash, state_hash, run_id)
                  SELECT i, 'migrated', h, sh, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS u(i, h, sh)
             ON CONFLICT (session_id) DO UPDATE SET status = 'migrated', content_hash = EXCLUDED.content_hash,
                  state_hash = EXCLUDED.state_hash, code = NULL, run_id = EXCLUDED.run_id, migrated_at = now()",
            qualified(schema, "sessiondb_ledger")
        ),
        &[&ids, &hashes, &state_hashes, &run],
    )
    .map_err(|e| Error::pg("recording the export in the ledger", "", e))?;
    Ok(())
}
