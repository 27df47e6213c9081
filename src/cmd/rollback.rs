//! `rollback` (SPEC §4, §9): the way back. Names every session created or changed in
//! PostgreSQL since sessiondb last wrote it (the ledger says what it wrote) and exports
//! them into the legacy store: each SQLite row, and `state.json` for an id that is a
//! safe path component (the SQLite `state` column otherwise). PostgreSQL keeps its data.
//!
//! Shaped resolve → plan → act, so that the dry run reaches every refusal the real run
//! would, with the same code:
//!
//! - **resolve** reads, and refuses what it already knows cannot be written: the
//!   previous backend, the changed sessions, the legacy table's shape (a NOT NULL column
//!   without a value, a STRICT column of the wrong type: `schema_mismatch`), each
//!   session's place in the sessions folder (a symlink: `symlink_outside_root`; a
//!   special file: `not_regular_file`), the config (a read-only or Kubernetes-mounted
//!   config: `config_read_only`), and the journals of earlier rollbacks left unfinished;
//! - **plan** is the value the dry run prints (`details.plan`, `details.sessions`);
//! - **act** (`--dry-run=false`) finishes or undoes any unfinished journal, takes the
//!   writers' lock and a backup of the legacy store, then exports in rounds, each round
//!   all-or-nothing through a journal in that backup ([`journal`]): new state files under
//!   temporary names, the rows in one SQLite transaction, the renames, the journal done.
//!   It checks PostgreSQL again until it stops changing, and only then sets the
//!   config's backend back. The report names every session exported and says what
//!   the legacy store holds (`details.legacy_store`).

mod journal;
mod legacy;

use std::collections::HashMap;

use serde::Serialize;
use serde_json::json;

use crate::backup::BackupResult;
use crate::cli::{Common, Ctx, DryRun, Step};
use crate::config::{Backend, Config};
use crate::cutover;
use crate::error::{Error, Result};
use crate::report::{CheckStatus, Finding, INLINE_LIMIT};
use crate::source::Meta;
use crate::source::write::{FileDigest, STATE_FILE, Sync};
use crate::target::{self, WriterLock, qualified};
use legacy::{Export, FileAction, Legacy, RowWrite, StateTo};

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

/// A session to export back, as PostgreSQL holds it.
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
const ROUNDS: u32 = 3;

/// What the legacy store holds after this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Held {
    /// Nothing of this run was written into it.
    Unchanged,
    /// Every session this run exported is in, row and state file.
    Complete,
    /// The rounds before a failed one are in (each session whole); nothing of the failed one.
    Partial,
    /// A round's rows committed but not all its state files are in place: the next run
    /// finishes it from its journal before anything else.
    Pending,
}

/// One exported session, as the report names it.
#[derive(Debug, Clone, Serialize)]
struct Exported<'a> {
    session: &'a str,
    kind: &'static str,
    round: u32,
    row: RowWrite,
    state_to: StateTo,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a std::path::Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_action: Option<FileAction>,
}

/// What the act did, reported whether it succeeded or not.
struct Outcome {
    rounds: Vec<(u32, Vec<Export>)>,
    held: Held,
    journals: Vec<std::path::PathBuf>,
}

impl Outcome {
    fn exported(&self) -> impl Iterator<Item = Exported<'_>> {
        self.rounds.iter().flat_map(|(round, xs)| {
            xs.iter().map(|x| Exported {
                session: &x.session,
                kind: x.kind,
                round: *round,
                row: x.row,
                state_to: x.state_to,
                file: x.file.as_deref(),
                file_action: x.file_action,
            })
        })
    }
}

/// The plan the dry run prints, and the real run follows.
#[derive(Debug, Serialize)]
struct Plan<'a> {
    back_to: Backend,
    /// The config edit: the file as named, and the file actually rewritten.
    config: Option<ConfigPlan<'a>>,
    /// Journals of earlier rollbacks the real run finishes or undoes first.
    recover: &'a [journal::Recovery],
    sessions: usize,
    rows_insert: usize,
    rows_update: usize,
    files_create: usize,
    files_replace: usize,
    files_unchanged: usize,
    states_in_column: usize,
    /// Every refusal found; the real run writes nothing while there is one.
    refusals: usize,
}

#[derive(Debug, Serialize)]
struct ConfigPlan<'a> {
    path: &'a std::path::Path,
    target: &'a std::path::Path,
    via_symlink: bool,
    from: &'a str,
    to: &'a str,
}

pub fn run(ctx: &mut Ctx, dry_run: bool) -> Result<()> {
    // ---- resolve ------------------------------------------------------------------
    let cfg = ctx.config()?;
    let sq = cfg.sqlite.clone().ok_or_else(|| Error::ConfigInvalid {
        path: cfg.path.clone(),
        message: "rollback exports into [sqlite]; there is none".into(),
    })?;
    // The store this writes back into: a FIFO or a device at one of its paths is refused
    // before anything else, in the dry run too.
    crate::source::Source::from_config(&cfg).check_paths()?;
    // Earlier rollbacks killed or failed half-way: the real run finishes or undoes each
    // first (this needs only the legacy store), the dry run says which it would.
    let recoveries = recover_earlier(ctx, &cfg, dry_run)?;
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
    let legacy = Legacy::open(&sq.path, &sq.sessions_dir)?;
    let (exports, mut refusals) = legacy.plan(changed)?;
    let edit = match cutover::plan_edit(&cfg.path, back_to) {
        Ok(e) => e,
        Err(e) => {
            refusals.push(e);
            None
        }
    };
    if let Some(w) = edit.as_ref().and_then(cutover::symlink_warning) {
        ctx.report.warn(w);
    }

    // ---- plan ---------------------------------------------------------------------
    let count = |f: &dyn Fn(&Export) -> bool| exports.iter().filter(|x| f(x)).count();
    let plan = Plan {
        back_to,
        config: edit.as_ref().map(|e| ConfigPlan {
            path: &e.path,
            target: &e.target,
            via_symlink: e.via_symlink,
            from: &e.from,
            to: &e.to,
        }),
        recover: &recoveries,
        sessions: exports.len(),
        rows_insert: count(&|x| x.row == RowWrite::Insert),
        rows_update: count(&|x| x.row == RowWrite::Update),
        files_create: count(&|x| x.file_action == Some(FileAction::Create)),
        files_replace: count(&|x| x.file_action == Some(FileAction::Replace)),
        files_unchanged: count(&|x| x.file_action == Some(FileAction::Unchanged)),
        states_in_column: count(&|x| x.state_to == StateTo::Column),
        refusals: refusals.len(),
    };
    ctx.report.detail("plan", &plan);
    ctx.report.detail(
        "diff",
        edit.as_ref().map(|e| e.diff.clone()).unwrap_or_default(),
    );
    ctx.report.detail(
        "sessions",
        exports.iter().take(INLINE_LIMIT).collect::<Vec<_>>(),
    );
    if let Some(Ok(p)) =
        crate::report::write_list(ctx.report_dir(), "rollback-sessions.jsonl", &exports)
    {
        ctx.report.artifact("sessions", &p);
    }
    let summary = format!(
        "{} session(s) to export ({created} created, {} changed in PostgreSQL): {} row(s) to insert, {} to update, {} state file(s) to create, {} to replace; config: {}",
        exports.len(),
        exports.len() as u64 - created,
        plan.rows_insert,
        plan.rows_update,
        plan.files_create,
        plan.files_replace,
        match &edit {
            Some(e) => format!("backend {} → {}", e.from, e.to),
            None if refusals.iter().any(|r| r.code() == "config_read_only") =>
                "cannot be switched".into(),
            None => format!("already {back_to}"),
        }
    );
    if !refusals.is_empty() {
        ctx.report.check(
            "plan",
            CheckStatus::Fail,
            format!(
                "{summary}; refused: {} problem(s), listed in errors",
                refusals.len()
            ),
            json!({}),
        );
        held(
            ctx,
            Held::Unchanged,
            "nothing was written: the legacy store and the config are as they were".into(),
        );
        ctx.report.count("exported", 0);
        ctx.report.next_steps.push(
            "fix what the errors name, then run rollback again (a dry run first shows whether anything is still refused)".into(),
        );
        let first = refusals.remove(0);
        for r in &refusals {
            ctx.report.errors.push(finding(r));
        }
        return Err(first);
    }
    ctx.report
        .check("plan", CheckStatus::Pass, summary, json!({}));
    if dry_run {
        ctx.report.count("exported", 0);
        ctx.report
            .next_steps
            .push("stop the application's writes, then rollback --dry-run=false".into());
        return Ok(());
    }
    if exports.is_empty() && edit.is_none() {
        ctx.report.count("exported", 0);
        held(
            ctx,
            Held::Complete,
            "the legacy store already holds every session".into(),
        );
        ctx.report.next_steps.push(
            "nothing to do: the legacy store already holds everything and the config says so"
                .into(),
        );
        return Ok(());
    }

    // ---- act ----------------------------------------------------------------------
    let run_id = ctx.run_id();
    let before_export = (|| {
        let lock = WriterLock::acquire(&t, &schema_name, &run_id)?;
        // Back up what the export replaces.
        let backup = crate::backup::take(&cfg, &crate::backup::Options::default(), &run_id)?;
        Ok((lock, backup))
    })();
    let (_lock, backup) = match before_export {
        Ok(x) => x,
        Err(e) => {
            held(
                ctx,
                Held::Unchanged,
                "nothing was written: the legacy store and the config are as they were".into(),
            );
            ctx.report
                .next_steps
                .push("fix what the error names, then rollback --dry-run=false again".into());
            return Err(e);
        }
    };
    ctx.report.artifact("backup", &backup.dir);
    let mut out = Outcome {
        rounds: Vec::new(),
        held: Held::Unchanged,
        journals: Vec::new(),
    };
    let result = act(
        &mut c,
        &schema_name,
        &run_id,
        &legacy,
        &backup,
        exports,
        &mut out,
    );
    let result = result.and_then(|()| {
        // Only now, with everything in, the config.
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
        Ok(())
    });
    report_outcome(ctx, &out, result.is_ok(), edit.is_some());
    result?;
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

/// The report's account of what the legacy store holds.
fn held(ctx: &mut Ctx, h: Held, message: String) {
    tracing::info!("legacy store: {message}");
    ctx.report
        .detail("legacy_store", json!({"state": h, "message": message}));
}

fn finding(e: &Error) -> Finding {
    let f = Finding::new(e.code(), crate::error::error_chain(e));
    match e {
        Error::UnsafePath { path, .. } => f.path(path),
        _ => f,
    }
}

/// Put what the act did into the report: every session exported (the first 100 inline,
/// all in `rollback-exported.jsonl`), the journals, and what the legacy store holds.
fn report_outcome(ctx: &mut Ctx, out: &Outcome, ok: bool, edit: bool) {
    let exported: Vec<Exported<'_>> = out.exported().collect();
    ctx.report.count("exported", exported.len() as u64);
    ctx.report.count(
        "files_written",
        exported
            .iter()
            .filter(|x| {
                matches!(
                    x.file_action,
                    Some(FileAction::Create | FileAction::Replace)
                )
            })
            .count() as u64,
    );
    ctx.report.detail(
        "exported",
        exported.iter().take(INLINE_LIMIT).collect::<Vec<_>>(),
    );
    if let Some(Ok(p)) =
        crate::report::write_list(ctx.report_dir(), "rollback-exported.jsonl", &exported)
    {
        ctx.report.artifact("exported", &p);
    }
    for j in &out.journals {
        ctx.report.artifact("journal", j);
    }
    let n = exported.len();
    let rounds = out.rounds.len();
    let message = match (out.held, ok) {
        (Held::Complete, true) => format!(
            "every exported session is in, row and state file ({n} in {rounds} round(s)){}",
            if edit { "; then the config was switched back" } else { "" }
        ),
        (Held::Complete, false) => format!(
            "every exported session is in, row and state file ({n}), but the step failed after the export: the config was NOT switched back; run rollback --dry-run=false again (it exports nothing twice)"
        ),
        (Held::Unchanged, _) => {
            "as it was: nothing of this rollback is in it (the round that failed was undone); the config was NOT switched back; fix what the error names and run rollback --dry-run=false again".into()
        }
        (Held::Partial, _) => format!(
            "{n} session(s) of the first {rounds} round(s) are in, each whole (row and state file), and nothing of the round that failed; the config was NOT switched back; run rollback --dry-run=false again to export the rest"
        ),
        (Held::Pending, _) => format!(
            "a round's rows are committed but not all its state files are in place: the next rollback --dry-run=false finishes it from its journal ({}) before anything else; the config was NOT switched back",
            out.journals.last().map(|p| p.display().to_string()).unwrap_or_default()
        ),
    };
    if !ok {
        ctx.report.next_steps.push(format!(
            "rollback --dry-run=false again once the error is fixed: the legacy store is {}",
            match out.held {
                Held::Unchanged => "as it was",
                Held::Complete => "complete",
                Held::Partial => "partly exported (named in details.exported)",
                Held::Pending => "half-way through a round that the rerun finishes first",
            }
        ));
    }
    held(ctx, out.held, message);
}

/// Finish or undo the journals of earlier rollbacks (or, in a dry run, say which).
fn recover_earlier(ctx: &mut Ctx, cfg: &Config, dry_run: bool) -> Result<Vec<journal::Recovery>> {
    let mut out = Vec::new();
    for (path, mut j) in journal::unfinished(&cfg.backup_dir)? {
        let r = if dry_run {
            journal::describe(&path, &j)?
        } else {
            journal::recover(&path, &mut j, false)?
        };
        tracing::warn!(
            "an earlier rollback (run {}, round {}) did not finish: {} {}",
            r.run_id,
            r.round,
            if dry_run { "the real run will" } else { "" },
            match r.action {
                journal::Action::RollForward =>
                    "roll it forward (its rows committed: the remaining state files renamed into place)",
                journal::Action::RollBack =>
                    "roll it back (its rows did not commit: its temporary files removed)",
                journal::Action::Running => "leave it: that rollback is still running",
            }
        );
        out.push(r);
    }
    ctx.report.detail("recovered", &out);
    ctx.report
        .count("recovered", out.iter().filter(|r| r.done).count() as u64);
    Ok(out)
}

/// The rounds: export, record in the ledger, look again for sessions changed meanwhile.
fn act(
    c: &mut postgres::Client,
    schema: &str,
    run_id: &str,
    legacy: &Legacy,
    backup: &BackupResult,
    exports: Vec<Export>,
    out: &mut Outcome,
) -> Result<()> {
    let mut written: HashMap<String, FileDigest> = HashMap::new();
    let mut pending = exports;
    for round in 1..=ROUNDS {
        if pending.is_empty() {
            break;
        }
        let (journal, result) = export_round(legacy, backup, run_id, round, &pending, &mut written);
        out.journals.extend(journal);
        match result {
            Ok(()) => {}
            Err((e, h)) => {
                out.held = match h {
                    Held::Unchanged if round > 1 => Held::Partial,
                    h => h,
                };
                return Err(e);
            }
        }
        out.held = Held::Complete;
        mark_exported(c, schema, run_id, &pending)?;
        out.rounds.push((round, std::mem::take(&mut pending)));
        let again = find_changed(c, schema)?;
        if again.is_empty() {
            break;
        }
        tracing::warn!(
            "round {round}: {} session(s) changed in PostgreSQL during the export",
            again.len()
        );
        if round == ROUNDS {
            pending = legacy.plan(again)?.0;
            break;
        }
        let (next, mut refusals) = legacy.plan(again)?;
        if !refusals.is_empty() {
            out.held = Held::Partial;
            return Err(refusals.remove(0));
        }
        pending = next;
    }
    if !pending.is_empty() {
        out.held = Held::Partial;
        return Err(Error::Refused {
            code: "still_writing",
            message: format!(
                "sessions keep changing in PostgreSQL ({} after {ROUNDS} rounds, e.g. {}): the application is still writing; the config was NOT switched back — stop the application's writes to PostgreSQL, then run rollback --dry-run=false again",
                pending.len(),
                pending[0].session
            ),
        });
    }
    Ok(())
}

/// One round, all or nothing (see [`journal`]). On failure, what the legacy store holds
/// of it: `Unchanged` (undone), `Complete` (it was finished after all), or `Pending`.
#[allow(clippy::type_complexity)]
fn export_round(
    legacy: &Legacy,
    backup: &BackupResult,
    run_id: &str,
    round: u32,
    exports: &[Export],
    written: &mut HashMap<String, FileDigest>,
) -> (
    Option<std::path::PathBuf>,
    std::result::Result<(), (Error, Held)>,
) {
    let unchanged = |e: Error| (None, Err((e, Held::Unchanged)));
    let rel_of = |x: &Export| {
        std::path::PathBuf::from(crate::backup::STATE_DIR)
            .join(&x.session)
            .join(STATE_FILE)
    };
    // The backup's entries for the files this round replaces, in one pass over its
    // manifest (never held whole).
    let wanted: std::collections::HashSet<String> = exports
        .iter()
        .filter(|x| x.replaces.is_some() && x.file_bytes().is_some())
        .map(|x| rel_of(x).to_string_lossy().into_owned())
        .collect();
    let listed = match backup.lookup(&wanted) {
        Ok(l) => l,
        Err(e) => return unchanged(e),
    };
    // The backup holds every file this round replaces (or this run wrote it).
    let mut files = Vec::new();
    for x in exports {
        let Some(bytes) = x.file_bytes() else {
            continue;
        };
        let rel = rel_of(x);
        let entry = listed.get(rel.to_string_lossy().as_ref());
        if let Some(d) = x.replaces {
            let in_backup = entry.is_some_and(|f| f.bytes == d.bytes && f.sha256.0 == d.sha256);
            if !in_backup && written.get(&x.session) != Some(&d) {
                return unchanged(Error::Refused {
                    code: "backup_missing_file",
                    message: format!(
                        "session {:?}: the backup {} does not hold {} as it is now (sha256 {}): it changed since the backup, or could not be copied; nothing was written — run rollback --dry-run=false again (it takes a fresh backup)",
                        x.session,
                        backup.dir.display(),
                        legacy.sessions.file_path(&x.session).display(),
                        d.hex()
                    ),
                });
            }
        }
        files.push(journal::JFile {
            session: x.session.clone(),
            temp: format!(
                ".{STATE_FILE}.tmp-{}-rollback-{}-r{round}",
                std::process::id(),
                &run_id[..8.min(run_id.len())]
            ),
            creates_folder: x.slot == Some(crate::source::write::Slot::NoFolder),
            replaces: x.replaces.map(Into::into),
            // Where the backup keeps those bytes (a blob beside its folder).
            backup_copy: x
                .replaces
                .is_some()
                .then(|| entry.map_or(rel, |f| crate::backup::stored_path(&backup.dir, f))),
            new: FileDigest::of(bytes).into(),
        });
    }
    let now = crate::report::now_rfc3339();
    let j = journal::Journal {
        format: journal::FORMAT.into(),
        run_id: run_id.into(),
        round,
        state: journal::State::Prepared,
        created_at: now.clone(),
        updated_at: now,
        sqlite: legacy.db.clone(),
        sessions_dir: legacy.sessions.dir().to_path_buf(),
        files,
        rows: exports
            .iter()
            .map(|x| journal::JRow {
                session: x.session.clone(),
                insert: x.row == RowWrite::Insert,
                digest: None,
            })
            .collect(),
    };
    let mut open = match journal::Open::create(&backup.dir, j) {
        Ok(o) => o,
        Err(e) => return unchanged(e),
    };
    let path = Some(open.path.clone());
    journal::kill_point("journal", round);
    tracing::info!(
        "round {round}: {} row(s), {} state file(s); journal {}",
        exports.len(),
        open.journal.files.len(),
        open.path.display()
    );
    // Undo or finish from the facts, as a later run would.
    let settle = |open: &mut journal::Open, e: Error| -> (Error, Held) {
        let p = open.path.clone();
        match journal::recover(&p, &mut open.journal, true) {
            Ok(r) if r.action == journal::Action::RollBack => (e, Held::Unchanged),
            Ok(_) => (e, Held::Complete),
            Err(e2) => {
                tracing::error!("could not settle {}: {e2}", p.display());
                (e, Held::Pending)
            }
        }
    };
    // 1. The new state files, under their temporary names.
    let with_files: Vec<&Export> = exports
        .iter()
        .filter(|x| x.file_bytes().is_some())
        .collect();
    let half = with_files.len() / 2;
    for (i, (x, f)) in with_files
        .iter()
        .zip(open.journal.files.clone())
        .enumerate()
    {
        if i == half {
            journal::kill_point("staging", round);
        }
        let staged = (|| {
            // Still what was planned, and what the backup holds.
            let now = legacy.sessions.digest(&x.session, STATE_FILE)?;
            if now != x.replaces {
                return Err(Error::Refused {
                    code: "source_changed",
                    message: format!(
                        "session {:?}: {} changed while rollback ran: nothing was written; run rollback --dry-run=false again",
                        x.session,
                        legacy.sessions.file_path(&x.session).display()
                    ),
                });
            }
            let slot = x.slot.expect("a file to write has a slot");
            legacy
                .sessions
                .stage(
                    &x.session,
                    &slot,
                    &f.temp,
                    x.file_bytes().expect("bytes"),
                    Sync::Later,
                )
                .map(|_| ())
        })();
        if let Err(e) = staged {
            return (path, Err(settle(&mut open, e)));
        }
    }
    // Every new file durable before the rows can commit (one syncfs for them all).
    if let Err(e) = legacy.sessions.sync() {
        return (path, Err(settle(&mut open, e)));
    }
    // 2. The rows, one transaction, sealed in the journal before the commit.
    let rows = legacy::open_rw(&legacy.db)
        .and_then(|mut conn| legacy::write_rows(&mut conn, &legacy.db, exports, |d| open.seal(d)));
    if let Err(e) = rows {
        return (path, Err(settle(&mut open, e)));
    }
    journal::kill_point("committed", round);
    // 3. The renames.
    for (i, f) in open.journal.files.clone().into_iter().enumerate() {
        if i == half {
            journal::kill_point("installing", round);
        }
        if let Err(e) = legacy.sessions.install(&f.session, &f.temp, Sync::Later) {
            return (path, Err(settle(&mut open, e)));
        }
    }
    if let Err(e) = legacy.sessions.sync() {
        return (path, Err(settle(&mut open, e)));
    }
    if let Err(e) = open.set(journal::State::Done) {
        // Everything is in; the rerun finds the journal sealed and rolls it forward
        // (nothing left to rename).
        return (path, Err((e, Held::Complete)));
    }
    journal::kill_point("done", round);
    for x in exports {
        // What writers killed mid-write left next to it.
        legacy.sessions.remove_stale_temps(&x.session);
        if let Some(b) = x.file_bytes() {
            written.insert(x.session.clone(), FileDigest::of(b));
        }
    }
    (path, Ok(()))
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
           FROM {} s LEFT JOIN {} st ON st.session_id OPERATOR(pg_catalog.=) s.id
                LEFT JOIN {} l ON l.session_id OPERATOR(pg_catalog.=) s.id AND l.status = 'migrated'",
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

/// The exported sessions are now the same on both sides: record that in the ledger.
fn mark_exported(
    c: &mut postgres::Client,
    schema: &str,
    run_id: &str,
    list: &[Export],
) -> Result<()> {
    let run = uuid::Uuid::parse_str(run_id).expect("uuid");
    let ids: Vec<&str> = list.iter().map(|s| s.session.as_str()).collect();
    let hashes: Vec<&str> = list.iter().map(|s| s.changed.hash.as_str()).collect();
    let state_hashes: Vec<Option<String>> = list
        .iter()
        .map(|s| s.changed.state.as_deref().map(crate::canon::hash_canonical))
        .collect();
    c.execute(
        &format!(
            "INSERT INTO {} (session_id, status, content_hash, state_hash, run_id)
                  SELECT i, 'migrated', h, sh, $4
                    FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) AS u(i, h, sh)
             ON CONFLICT (session_id) DO UPDATE SET status = 'migrated', content_hash = EXCLUDED.content_hash,
                  state_hash = EXCLUDED.state_hash, code = NULL, run_id = EXCLUDED.run_id, migrated_at = pg_catalog.now()",
            qualified(schema, "sessiondb_ledger")
        ),
        &[&ids, &hashes, &state_hashes, &run],
    )
    .map_err(|e| Error::pg("recording the export in the ledger", "", e))?;
    Ok(())
}
