//! `rollback` (SPEC §4, §9): the way back. Names every session created or changed in
//! PostgreSQL since sessiondb last wrote it (the ledger says what it wrote) and exports
//! them into the legacy store: each SQLite row, and `state.json` for an id that is a
//! safe path component (the SQLite `state` column otherwise). PostgreSQL keeps its data.
//!
//! Shaped resolve → plan → act, as every writing step, so that the dry run reaches
//! every refusal the real run would, with the same code:
//!
//! - **resolve**: the config and its `[sqlite]` store (a FIFO or a device at one of
//!   its paths refused); the journals of earlier rollbacks left unfinished, finished
//!   or undone (the dry run says which: this needs only the legacy store, and each
//!   journal its own lock); the target;
//! - **the writers' lock**, before any read that decides what to write (a dry run
//!   sees it free, or refuses `lock_held` as the real run would);
//! - **plan** reads, and refuses what it already knows cannot be written: the previous
//!   backend, the changed sessions, the legacy table's shape (a NOT NULL column without
//!   a value, a STRICT column of the wrong type: `schema_mismatch`), each session's
//!   place in the sessions folder (a symlink: `symlink_outside_root`; a special file:
//!   `not_regular_file`), the config (a read-only or Kubernetes-mounted config:
//!   `config_read_only`). The plan is the value the dry run prints (`details.plan`,
//!   `details.sessions`);
//! - **act** (`--dry-run=false`) takes a backup of the legacy store, then exports in
//!   rounds, each round all-or-nothing through a journal in that backup ([`journal`]):
//!   new state files under temporary names, the rows in one SQLite transaction, the
//!   renames, the journal done. It checks PostgreSQL again until it stops changing, and
//!   only then sets the config's backend back. The report names every session exported
//!   and says what the legacy store holds (`details.legacy_store`).

mod journal;
mod legacy;
mod mapped;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

use crate::backup::BackupResult;
use crate::config::{Backend, Config, SqliteSource, Target};
use crate::cutover::{self, Edit};
use crate::driver::{Common, Ctx, DryRun, Step};
use crate::error::{Error, Result};
use crate::pg::constraints::Fit;
use crate::pg::ledger::{self, runs};
use crate::pg::lock::Guard;
use crate::pg::rows::{Rows, Since};
use crate::report::{CheckStatus, INLINE_LIMIT};
use crate::source::Meta;
use crate::source::write::{FileDigest, STATE_FILE, Sync};
use legacy::{Export, FileAction, Legacy, RowWrite, StateTo};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub dry: DryRun,
}

crate::details! {
    /// `details` of a rollback report.
    pub struct Details {
        /// Journals of earlier rollbacks, finished or undone (the dry run: to be).
        pub recovered: Vec<journal::Recovery>,
        /// The cutover the rollback reverses (`null`: none recorded).
        pub cutover: Option<runs::Cutover>,
        pub back_to: Backend,
        pub plan: Plan,
        /// The config edit, as `-old` / `+new` lines.
        pub diff: Vec<String>,
        /// The first [`INLINE_LIMIT`] sessions to export (all in `rollback-sessions.jsonl`).
        pub sessions: Vec<Export>,
        /// What the legacy store holds after this run.
        pub legacy_store: LegacyStore,
        /// The first [`INLINE_LIMIT`] sessions exported (all in `rollback-exported.jsonl`).
        pub exported: Vec<Exported>,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LegacyStore {
    pub state: Held,
    pub message: String,
}

impl Step for Args {
    const NAME: &'static str = "rollback";
    const ABOUT: &'static str = "Switch the application back to its legacy store, exporting into it what changed in PostgreSQL; a dry run unless --dry-run=false, which writes the legacy store and the config.";
    type Details = Details;
    crate::step_flags!(dry);
    fn run(&self, ctx: &mut Ctx, details: &mut Details) -> Result<()> {
        run(ctx, self.dry.dry_run, details)
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
pub enum Held {
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
pub struct Exported {
    session: String,
    kind: &'static str,
    round: u32,
    row: RowWrite,
    state_to: StateTo,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_action: Option<FileAction>,
}

/// What the act did, reported whether it succeeded or not.
struct Outcome {
    rounds: Vec<(u32, Vec<Export>)>,
    held: Held,
    journals: Vec<PathBuf>,
}

impl Outcome {
    fn exported(&self) -> Vec<Exported> {
        self.rounds
            .iter()
            .flat_map(|(round, xs)| {
                xs.iter().map(|x| Exported {
                    session: x.session.clone(),
                    kind: x.kind,
                    round: *round,
                    row: x.row,
                    state_to: x.state_to,
                    file: x.file.clone(),
                    file_action: x.file_action,
                })
            })
            .collect()
    }
}

/// The plan the dry run prints, and the real run follows (`details.plan`).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    back_to: Backend,
    /// The config edit: the file as named, and the file actually rewritten.
    config: Option<ConfigPlan>,
    /// Journals of earlier rollbacks the real run finishes or undoes first.
    recover: Vec<journal::Recovery>,
    sessions: usize,
    /// A mapped store's rows of other copied tables (parents first), exported too.
    parent_rows: usize,
    rows_insert: usize,
    rows_update: usize,
    files_create: usize,
    files_replace: usize,
    files_unchanged: usize,
    states_in_column: usize,
    /// Every refusal found; the real run writes nothing while there is one.
    refusals: usize,
}

#[derive(Debug, Clone, Serialize)]
struct ConfigPlan {
    path: PathBuf,
    target: PathBuf,
    via_symlink: bool,
    from: String,
    to: String,
}

/// What resolve finds: the config, its legacy store, the target.
struct Resolved {
    cfg: Config,
    sqlite: SqliteSource,
    target: Target,
}

/// How rollback finds what to export.
enum Finder {
    /// SPEC §2's tables: the target's session rows the ledger does not say sessiondb
    /// wrote as they are.
    Ledger(Rows),
    /// A mapped store (SPEC §9): every copied table compared with the legacy store.
    Diff(Box<mapped::MappedPlan>),
}

impl Finder {
    /// The exports, planned, and every refusal.
    fn changes(
        &self,
        c: &mut postgres::Client,
        legacy: &Legacy,
    ) -> Result<(Vec<Export>, Vec<Error>)> {
        match self {
            Finder::Ledger(rows) => legacy.plan(find_changed(c, rows)?),
            Finder::Diff(m) => m.changes(c, legacy),
        }
    }
}

/// What plan finds: the exports, the config edit, and every refusal.
struct Planned {
    back_to: Backend,
    legacy: Legacy,
    /// How the sessions to export are found, again after each round.
    finder: Finder,
    exports: Vec<Export>,
    created: u64,
    edit: Option<Edit>,
    refusals: Vec<Error>,
}

pub fn run(ctx: &mut Ctx, dry_run: bool, d: &mut Details) -> Result<()> {
    let (cfg, sqlite) = resolve(ctx)?;
    // Earlier rollbacks killed or failed half-way: the real run finishes or undoes each
    // first, the dry run says which. This needs only the legacy store (each journal is
    // locked by the run that writes it): it happens also when the target is down.
    let recovered = recover_earlier(&cfg, dry_run, ctx, d)?;
    let target = ctx.target(Some(&cfg))?;
    let r = Resolved {
        cfg,
        sqlite,
        target,
    };
    let schema_name = r.cfg.postgres.schema.clone();
    let _lock = Guard::take(&r.target, &schema_name, &ctx.run_id(), dry_run)
        .inspect_err(|_| nothing_written(ctx, d))?;
    let mut c = crate::pg::connect(&r.target)?;
    let mut p = plan(ctx, &r, &mut c, d)?;
    show(ctx, &mut p, recovered, d)?;
    if dry_run {
        ctx.report.count("exported", 0);
        ctx.report
            .next_steps
            .push("stop the application's writes, then rollback --dry-run=false".into());
        return Ok(());
    }
    if p.exports.is_empty() && p.edit.is_none() {
        ctx.report.count("exported", 0);
        held(
            d,
            Held::Complete,
            "the legacy store already holds every session".into(),
        );
        ctx.report.next_steps.push(
            "nothing to do: the legacy store already holds everything and the config says so"
                .into(),
        );
        return Ok(());
    }
    act(ctx, &r, &mut c, p, d)
}

/// The config and its `[sqlite]` store, whose paths must be what they say (a FIFO or a
/// device refused before anything else, in the dry run too).
fn resolve(ctx: &mut Ctx) -> Result<(Config, SqliteSource)> {
    let cfg = ctx.config()?;
    let sqlite = cfg.sqlite.clone().ok_or_else(|| Error::ConfigInvalid {
        path: cfg.path.clone(),
        message: "rollback exports into [sqlite]; there is none".into(),
    })?;
    crate::source::Source::from_config(&cfg).check_paths()?;
    Ok((cfg, sqlite))
}

/// Under the lock: the backend to go back to, the sessions to export and how, the
/// config edit, and every refusal.
fn plan(ctx: &mut Ctx, r: &Resolved, c: &mut postgres::Client, d: &mut Details) -> Result<Planned> {
    let schema_name = &r.cfg.postgres.schema;
    let cut = runs::latest_cutover(c, schema_name, runs::Kind::SetDefault)?;
    let back_to = match (&cut, r.cfg.backend) {
        (Some(cu), _) => parse_backend(&cu.from_backend),
        (None, Backend::Postgres) => {
            return Err(Error::NoCutover {
                config: r.cfg.path.clone(),
            });
        }
        (None, b) => b,
    };
    if back_to == Backend::Json {
        return Err(Error::JsonBackendDeprecated);
    }
    d.cutover = Some(cut);
    d.back_to = Some(back_to);
    if !ledger::exists(c, schema_name)? {
        return Err(Error::NothingMigrated);
    }
    let tables = crate::pg::catalog::read_tables(c, schema_name)?;
    let (legacy, finder) = if mapped::is_mapped(&r.cfg, &tables) {
        let legacy = Legacy::open_mapped(&r.sqlite.path, &r.sqlite.sessions_dir)?;
        let m = mapped::MappedPlan::open(&r.cfg, &legacy, c)?;
        (legacy, Finder::Diff(Box::new(m)))
    } else {
        let fit = Fit::read(c, schema_name)?;
        let legacy = Legacy::open(&r.sqlite.path, &r.sqlite.sessions_dir)?;
        (legacy, Finder::Ledger(Rows::new(schema_name, &fit)))
    };
    let spin = crate::progress::Phase::spinner("rollback-read");
    let (exports, mut refusals) = finder.changes(c, &legacy)?;
    spin.finish();
    let sessions: Vec<&Export> = exports.iter().filter(|x| x.table.is_none()).collect();
    let created = sessions.iter().filter(|x| x.kind == "created").count() as u64;
    ctx.report.count("created", created);
    ctx.report.count("changed", sessions.len() as u64 - created);
    if let Finder::Diff(_) = finder {
        ctx.report
            .count("parent_rows", (exports.len() - sessions.len()) as u64);
    }
    let edit = cutover::plan_edit(&r.cfg.path, back_to).unwrap_or_else(|e| {
        refusals.push(e);
        None
    });
    if let Some(w) = edit.as_ref().and_then(cutover::symlink_warning) {
        ctx.report.warn(w);
    }
    Ok(Planned {
        back_to,
        legacy,
        finder,
        exports,
        created,
        edit,
        refusals,
    })
}

/// Put the plan in the report (`details.plan`, `details.sessions`, the `plan` check);
/// refuse, naming every problem, when there is one.
fn show(
    ctx: &mut Ctx,
    p: &mut Planned,
    recover: Vec<journal::Recovery>,
    d: &mut Details,
) -> Result<()> {
    let count = |f: &dyn Fn(&Export) -> bool| p.exports.iter().filter(|x| f(x)).count();
    let plan = Plan {
        back_to: p.back_to,
        config: p.edit.as_ref().map(|e| ConfigPlan {
            path: e.path.clone(),
            target: e.target.clone(),
            via_symlink: e.via_symlink,
            from: e.from.clone(),
            to: e.to.clone(),
        }),
        recover,
        sessions: count(&|x| x.table.is_none()),
        parent_rows: count(&|x| x.table.is_some()),
        rows_insert: count(&|x| x.row == RowWrite::Insert),
        rows_update: count(&|x| x.row == RowWrite::Update),
        files_create: count(&|x| x.file_action == Some(FileAction::Create)),
        files_replace: count(&|x| x.file_action == Some(FileAction::Replace)),
        files_unchanged: count(&|x| x.file_action == Some(FileAction::Unchanged)),
        states_in_column: count(&|x| x.state_to == StateTo::Column),
        refusals: p.refusals.len(),
    };
    d.diff = Some(p.edit.as_ref().map(|e| e.diff.clone()).unwrap_or_default());
    d.sessions = Some(p.exports.iter().take(INLINE_LIMIT).cloned().collect());
    if let Some(Ok(path)) =
        crate::report::write_list(ctx.report_dir(), "rollback-sessions.jsonl", &p.exports)
    {
        ctx.report.artifact("sessions", &path);
    }
    let summary = format!(
        "{} session(s) to export ({} created, {} changed in PostgreSQL){}: {} row(s) to insert, {} to update, {} state file(s) to create, {} to replace; config: {}",
        plan.sessions,
        p.created,
        plan.sessions as u64 - p.created,
        if plan.parent_rows > 0 {
            format!(" and {} row(s) of parent tables", plan.parent_rows)
        } else {
            String::new()
        },
        plan.rows_insert,
        plan.rows_update,
        plan.files_create,
        plan.files_replace,
        match &p.edit {
            Some(e) => format!("backend {} → {}", e.from, e.to),
            None if p.refusals.iter().any(|r| r.code() == "config_read_only") =>
                "cannot be switched".into(),
            None => format!("already {}", p.back_to),
        }
    );
    d.plan = Some(plan);
    if p.refusals.is_empty() {
        ctx.report
            .check("plan", CheckStatus::Pass, summary, json!({}));
        return Ok(());
    }
    ctx.report.check(
        "plan",
        CheckStatus::Fail,
        format!(
            "{summary}; refused: {} problem(s), listed in errors",
            p.refusals.len()
        ),
        json!({}),
    );
    unchanged(d);
    ctx.report.count("exported", 0);
    ctx.report.next_steps.push(
        "fix what the errors name, then run rollback again (a dry run first shows whether anything is still refused)".into(),
    );
    let first = p.refusals.remove(0);
    for r in &p.refusals {
        ctx.report.errors.push(r.finding());
    }
    Err(first)
}

/// The report's account of what the legacy store holds.
fn held(d: &mut Details, h: Held, message: String) {
    tracing::info!("legacy store: {message}");
    d.legacy_store = Some(LegacyStore { state: h, message });
}

/// The legacy store as it was: nothing of this run is in it.
fn unchanged(d: &mut Details) {
    held(
        d,
        Held::Unchanged,
        "nothing was written: the legacy store and the config are as they were".into(),
    );
}

/// A failure before the first write: the legacy store is as it was.
fn nothing_written(ctx: &mut Ctx, d: &mut Details) {
    unchanged(d);
    ctx.report
        .next_steps
        .push("fix what the error names, then rollback --dry-run=false again".into());
}

/// The act: a backup of what the export replaces, the rounds, and only then, with
/// everything in, the config and its record.
fn act(
    ctx: &mut Ctx,
    r: &Resolved,
    c: &mut postgres::Client,
    mut p: Planned,
    d: &mut Details,
) -> Result<()> {
    let run_id = ctx.run_id();
    let schema_name = &r.cfg.postgres.schema;
    let backup = crate::backup::take(&r.cfg, &crate::backup::Options::default(), &run_id)
        .inspect_err(|_| nothing_written(ctx, d))?;
    ctx.report.artifact("backup", &backup.dir);
    let mut out = Outcome {
        rounds: Vec::new(),
        held: Held::Unchanged,
        journals: Vec::new(),
    };
    let exports = std::mem::take(&mut p.exports);
    let result = rounds(c, schema_name, &run_id, &p, &backup, exports, &mut out)
        .and_then(|()| switch_back(ctx, r, c, p.edit.as_ref(), &run_id));
    report_outcome(ctx, &out, result.is_ok(), p.edit.is_some(), d);
    result?;
    ctx.report.next_steps.push(format!(
        "restart the application on {} (unset {} or point it at the SQLite URL)",
        p.back_to, r.cfg.postgres.url_env
    ));
    ctx.report.next_steps.push(
        "PostgreSQL keeps its data: a later migrate-state catch-up and set-default re-cut over"
            .into(),
    );
    Ok(())
}

/// The config switched back (when it does not say so already), and the record of it.
fn switch_back(
    ctx: &mut Ctx,
    r: &Resolved,
    c: &mut postgres::Client,
    edit: Option<&Edit>,
    run_id: &str,
) -> Result<()> {
    let Some(e) = edit else {
        return Ok(());
    };
    let saved = cutover::apply_edit(e, &r.cfg.backup_dir, run_id)?;
    ctx.report.artifact("previous_config", &saved);
    runs::record_cutover(
        c,
        &r.cfg.postgres.schema,
        &runs::NewCutover {
            kind: runs::Kind::Rollback,
            from: &e.from,
            to: &e.to,
            config_path: &r.cfg.path,
            config_sha256: &cutover::sha256_hex(e.new_text.as_bytes()),
            verify_run: None,
            run_id: &uuid::Uuid::parse_str(run_id).expect("run ids are uuids"),
        },
    )
}

/// Put what the act did into the report: every session exported (the first 100 inline,
/// all in `rollback-exported.jsonl`), the journals, and what the legacy store holds.
fn report_outcome(ctx: &mut Ctx, out: &Outcome, ok: bool, edit: bool, d: &mut Details) {
    let exported = out.exported();
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
    if let Some(Ok(p)) =
        crate::report::write_list(ctx.report_dir(), "rollback-exported.jsonl", &exported)
    {
        ctx.report.artifact("exported", &p);
    }
    for j in &out.journals {
        ctx.report.artifact("journal", j);
    }
    let n = exported.len();
    d.exported = Some(exported.into_iter().take(INLINE_LIMIT).collect());
    let rounds = out.rounds.len();
    let message = match (out.held, ok) {
        (Held::Complete, true) if n == 0 => format!(
            "it already holds every session, row and state file{}",
            if edit { "; the config was switched back" } else { "" }
        ),
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
    held(d, out.held, message);
}

/// Finish or undo the journals of earlier rollbacks (or, in a dry run, say which).
fn recover_earlier(
    cfg: &Config,
    dry_run: bool,
    ctx: &mut Ctx,
    d: &mut Details,
) -> Result<Vec<journal::Recovery>> {
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
    d.recovered = Some(out.clone());
    ctx.report
        .count("recovered", out.iter().filter(|r| r.done).count() as u64);
    Ok(out)
}

/// The rounds: export, record in the ledger, look again for sessions changed meanwhile.
fn rounds(
    c: &mut postgres::Client,
    schema: &str,
    run_id: &str,
    p: &Planned,
    backup: &BackupResult,
    exports: Vec<Export>,
    out: &mut Outcome,
) -> Result<()> {
    let legacy = &p.legacy;
    let mut written: HashMap<String, FileDigest> = HashMap::new();
    let mut pending = exports;
    if pending.is_empty() {
        // Nothing left to export (an earlier run's journal, finished first, brought the
        // rest in): the legacy store is complete; only the config is left to switch.
        out.held = Held::Complete;
    }
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
        if let Finder::Ledger(_) = p.finder {
            mark_exported(c, schema, run_id, &pending)?;
        }
        out.rounds.push((round, std::mem::take(&mut pending)));
        let (next, mut refusals) = p.finder.changes(c, legacy)?;
        if next.is_empty() && refusals.is_empty() {
            break;
        }
        tracing::warn!(
            "round {round}: {} session(s) changed in PostgreSQL during the export",
            next.len() + refusals.len()
        );
        if round == ROUNDS {
            pending = next;
            break;
        }
        if !refusals.is_empty() {
            out.held = Held::Partial;
            return Err(refusals.remove(0));
        }
        pending = next;
    }
    if !pending.is_empty() {
        out.held = Held::Partial;
        return Err(Error::StillWriting {
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
) -> (Option<PathBuf>, std::result::Result<(), (Error, Held)>) {
    let unchanged = |e: Error| (None, Err((e, Held::Unchanged)));
    let files = match journal_files(legacy, backup, run_id, round, exports, written) {
        Ok(f) => f,
        Err(e) => return unchanged(e),
    };
    let mut open = match journal::Open::create(
        &backup.dir,
        new_journal(legacy, run_id, round, files, exports),
    ) {
        Ok(o) => o,
        Err(e) => return unchanged(e),
    };
    let path = Some(open.path.clone());
    crate::fault::kill_point("journal", round);
    tracing::info!(
        "round {round}: {} row(s), {} state file(s); journal {}",
        exports.len(),
        open.journal.files.len(),
        open.path.display()
    );
    if let Err(e) = write_round(legacy, &mut open, round, exports) {
        return (path, Err(settle(&mut open, e)));
    }
    if let Err(e) = open.set(journal::State::Done) {
        // Everything is in; the rerun finds the journal sealed and rolls it forward
        // (nothing left to rename).
        return (path, Err((e, Held::Complete)));
    }
    crate::fault::kill_point("done", round);
    for x in exports {
        // What writers killed mid-write left next to it.
        legacy.sessions.remove_stale_temps(&x.session);
        if let Some(b) = x.file_bytes() {
            written.insert(x.session.clone(), FileDigest::of(b));
        }
    }
    (path, Ok(()))
}

/// The journal's files of a round: each state file it writes, under the temporary
/// name it is staged at, with what it replaces — which the backup must hold (or this
/// run wrote it), else nothing is written.
fn journal_files(
    legacy: &Legacy,
    backup: &BackupResult,
    run_id: &str,
    round: u32,
    exports: &[Export],
    written: &HashMap<String, FileDigest>,
) -> Result<Vec<journal::JFile>> {
    let rel_of = |x: &Export| {
        PathBuf::from(crate::backup::STATE_DIR)
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
    let listed = backup.lookup(&wanted)?;
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
                return Err(Error::BackupMissingFile {
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
    Ok(files)
}

/// A round's journal, prepared: its files and its rows.
fn new_journal(
    legacy: &Legacy,
    run_id: &str,
    round: u32,
    files: Vec<journal::JFile>,
    exports: &[Export],
) -> journal::Journal {
    let now = crate::report::now_rfc3339();
    journal::Journal {
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
            .filter(|x| x.row != RowWrite::Unchanged)
            .map(|x| {
                let (table, key) = match &x.values {
                    legacy::RowData::Mapped(m) => (
                        Some(m.table.clone()),
                        Some(m.key.iter().map(|(c, v)| (c.clone(), v.into())).collect()),
                    ),
                    legacy::RowData::Default(_) => (None, None),
                };
                journal::JRow {
                    session: x.session.clone(),
                    insert: x.row == RowWrite::Insert,
                    table,
                    key,
                    digest: None,
                }
            })
            .collect(),
    }
}

/// Undo or finish a round that failed, from the facts, as a later run would: what the
/// legacy store then holds of it.
fn settle(open: &mut journal::Open, e: Error) -> (Error, Held) {
    let p = open.path.clone();
    match journal::recover(&p, &mut open.journal, true) {
        Ok(r) if r.action == journal::Action::RollBack => (e, Held::Unchanged),
        Ok(_) => (e, Held::Complete),
        Err(e2) => {
            tracing::error!("could not settle {}: {e2}", p.display());
            (e, Held::Pending)
        }
    }
}

/// A round's writes, in the journal's order: 1. the new state files under their
/// temporary names, made durable; 2. the rows, one transaction sealed in the journal
/// before its commit; 3. the renames, made durable.
fn write_round(
    legacy: &Legacy,
    open: &mut journal::Open,
    round: u32,
    exports: &[Export],
) -> Result<()> {
    let with_files: Vec<&Export> = exports
        .iter()
        .filter(|x| x.file_bytes().is_some())
        .collect();
    let half = with_files.len() / 2;
    let phase = crate::progress::Phase::bar(
        "rollback-export",
        exports.len() as u64,
        crate::progress::Unit::Sessions,
    );
    for (i, (x, f)) in with_files
        .iter()
        .zip(open.journal.files.clone())
        .enumerate()
    {
        if i == half {
            crate::fault::kill_point("staging", round);
        }
        stage(legacy, x, &f)?;
        phase.inc(1);
    }
    // Every new file durable before the rows can commit (one syncfs for them all).
    legacy.sessions.sync()?;
    let mut conn = legacy::open_rw(&legacy.db)?;
    legacy::write_rows(&mut conn, &legacy.db, exports, |d| open.seal(d))?;
    phase.inc((exports.len() - with_files.len()) as u64);
    phase.finish();
    crate::fault::kill_point("committed", round);
    for (i, f) in open.journal.files.clone().into_iter().enumerate() {
        if i == half {
            crate::fault::kill_point("installing", round);
        }
        legacy.sessions.install(&f.session, &f.temp, Sync::Later)?;
    }
    legacy.sessions.sync()
}

/// Stage one new state file under its temporary name, when the file it replaces is
/// still what was planned (and what the backup holds).
fn stage(legacy: &Legacy, x: &Export, f: &journal::JFile) -> Result<()> {
    let now = legacy.sessions.digest(&x.session, STATE_FILE)?;
    if now != x.replaces {
        return Err(Error::ChangedDuringWrite {
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
}

fn parse_backend(s: &str) -> Backend {
    match s {
        "postgres" => Backend::Postgres,
        "json" => Backend::Json,
        _ => Backend::Sqlite,
    }
}

/// Every target session that the ledger does not say sessiondb wrote as it is now.
fn find_changed(c: &mut postgres::Client, rows: &Rows) -> Result<Vec<Changed>> {
    Ok(rows
        .not_as_written(c)?
        .into_iter()
        .map(|(s, since)| Changed {
            session: s.id,
            kind: match since {
                Since::Created => "created",
                Since::Changed => "changed",
            },
            meta: s.meta,
            state: s.state,
            hash: s.hash,
        })
        .collect())
}

/// The exported sessions are now the same on both sides: record that in the ledger.
fn mark_exported(
    c: &mut postgres::Client,
    schema: &str,
    run_id: &str,
    list: &[Export],
) -> Result<()> {
    let run = uuid::Uuid::parse_str(run_id).expect("run ids are uuids");
    let exported: Vec<ledger::Exported<'_>> = list
        .iter()
        .map(|s| ledger::Exported {
            id: &s.session,
            content_hash: &s.changed.hash,
            state_hash: s.changed.state.as_deref().map(crate::canon::hash_canonical),
        })
        .collect();
    ledger::record_exported(c, schema, &run, &exported)
}
