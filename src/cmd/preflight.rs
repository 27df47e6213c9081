//! `preflight` (SPEC §4): one read-only pass that finds every reason a migration would
//! fail or lose data. Writes nothing anywhere except its report: the schema is
//! rehearsed in a transaction that is rolled back, and the backup folder (or, when it
//! does not exist yet, its nearest existing parent) is checked with faccessat(2),
//! creating nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::config::Config;
use crate::driver::{Common, Ctx, Step};
use crate::error::{Error, Result};
use crate::pg::classify::Classifier;
use crate::pg::constraints::{Fit, Stats};
use crate::pg::{self, lock, schema, server};
use crate::plan::{ConflictInfo, Counts};
use crate::progress::human_bytes;
use crate::report::{CheckStatus, Finding, INLINE_LIMIT};
use crate::source::{self, Item, Session, Source, sqlite};

mod app;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// The operator means to quarantine invalid records: they warn instead of failing.
    #[arg(long)]
    pub quarantine: bool,
}

impl Step for Args {
    const NAME: &'static str = "preflight";
    const ABOUT: &'static str = "Check the source, the backup location, PostgreSQL and the plan before a migration; read-only, writes nothing.";
    /// Preflight's findings are all in its checks.
    type Details = ();
    crate::step_flags!();
    fn run(&self, ctx: &mut Ctx, _: &mut ()) -> Result<()> {
        run(ctx, self.quarantine)
    }
}

/// Assumed rate at which PostgreSQL ingests jsonb on one core, for the time estimate.
const LOAD_BYTES_PER_SEC: f64 = 20.0 * 1024.0 * 1024.0;
/// Safety margin on the estimated backup size.
const SPACE_MARGIN: f64 = 1.25;
const SPACE_SLACK: u64 = 16 * 1024 * 1024;

/// What the one pass over every session found.
#[derive(Default)]
struct Scanned {
    stats: Option<Stats>,
    counts: Counts,
    invalid: Vec<source::Invalid>,
    conflicts: Vec<ConflictInfo>,
    /// `None` when the sessions were not read (see `error`, or a failed check before).
    summary: Option<source::Summary>,
    error: Option<Error>,
}

pub fn run(ctx: &mut Ctx, quarantine: bool) -> Result<()> {
    let cfg = ctx.config()?;
    ctx.report.check(
        "config",
        CheckStatus::Pass,
        format!("{} (backend {})", cfg.path.display(), cfg.backend),
        json!({"provenance": cfg.provenance}),
    );
    if crate::cmd::migrate_state::app::is_mapped(&cfg) {
        return app::run(ctx, &cfg, quarantine);
    }
    // The source, store by store. The JSON store is one file: parse it up front, so that
    // one that does not load fails its own check, not the state files'.
    let sqlite_ok = check_sqlite(ctx, &cfg);
    let json_error = cfg
        .json_path
        .as_ref()
        .and_then(|p| source::load_json_store_of(&cfg, p).err());
    // Why the sessions were not read, when they were not.
    let not_read = if !sqlite_ok && cfg.sqlite.is_some() {
        Some("the SQLite database failed its check")
    } else if json_error.is_some() {
        Some("the JSON store does not load")
    } else {
        None
    };
    // The target, and its shape first: a table that cannot take the data is not read
    // as if it could.
    let mut pg = connect_target(ctx, &cfg);
    let fit = match pg.as_mut() {
        Some(c) => Fit::read(c, &cfg.postgres.schema)?,
        None => Fit::default(),
    };
    let classifier = match pg.as_mut() {
        Some(c) if fit.shape_problems().is_empty() => {
            Some(Classifier::new(c, &cfg.postgres.schema, &fit, false)?)
        }
        _ => None,
    };
    if let Some(c) = pg.as_mut() {
        if let Some(w) = schema::duplicate_gin(c, &cfg.postgres.schema)? {
            ctx.report.warn(w);
        }
    }
    let scanned = match not_read {
        None => scan(&cfg, &fit, classifier.as_ref().zip(pg.as_mut())),
        Some(_) => Scanned::default(),
    };
    let read = Read {
        cfg: &cfg,
        scanned: &scanned,
        not_read,
        json_error: json_error.as_ref(),
        quarantine,
    };
    read.report_state_files(ctx);
    read.report_json_store(ctx);
    if let Some(s) = &scanned.summary {
        for w in &s.warnings {
            // duplicate_id fails source_json_store: reported as errors there.
            if w.code != "duplicate_id" {
                ctx.report.warn(w.clone());
            }
        }
    }
    let estimate = estimate_backup(&cfg, scanned.counts.bytes);
    check_backup_location(ctx, &cfg.backup_dir, estimate);
    check_constraints(ctx, pg.as_mut(), &fit, &scanned, quarantine, &cfg)?;
    report_plan(ctx, &scanned, estimate, pg.is_some(), quarantine);
    Ok(())
}

/// One pass over every session: the facts the constraints care about, and each
/// session classified when the target can be read.
fn scan(
    cfg: &Config,
    fit: &Fit,
    mut classify: Option<(&Classifier, &mut postgres::Client)>,
) -> Scanned {
    let mut out = Scanned::default();
    let mut stats = fit.stats();
    let reader = match Source::from_config(cfg).open() {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let phase = crate::progress::Phase::bar(
        "scan",
        reader.estimate().unwrap_or(0),
        crate::progress::Unit::Sessions,
    );
    let res = reader.scan(1000, |items| {
        phase.inc(items.len() as u64);
        let mut batch: Vec<Session> = Vec::with_capacity(items.len());
        for it in items {
            match it {
                Item::Session(s) => batch.push(s),
                Item::Invalid(i) => out.invalid.push(i),
                Item::Known { .. } => unreachable!("preflight reads every session"),
            }
        }
        for s in &batch {
            stats.add(s);
            out.counts.bytes += s.state.as_ref().map_or(0, |st| st.raw.len() as u64);
        }
        out.counts.sessions += batch.len() as u64;
        if let Some((p, c)) = classify.as_mut() {
            let cl = p.classify(*c, &batch)?;
            cl.actions.into_iter().for_each(|a| out.counts.add(a));
            out.conflicts.extend(cl.conflicts);
        }
        Ok(())
    });
    out.counts.invalid = out.invalid.len() as u64;
    match res {
        Ok(s) => {
            phase.finish();
            out.summary = Some(s);
            out.stats = Some(stats);
        }
        Err(e) => out.error = Some(e),
    }
    out
}

/// What preflight read of the source, for the source's checks.
struct Read<'a> {
    cfg: &'a Config,
    scanned: &'a Scanned,
    /// Why the sessions were not read, when they were not.
    not_read: Option<&'a str>,
    json_error: Option<&'a Error>,
    quarantine: bool,
}

impl Read<'_> {
    /// `source_state_files`: every state file read; invalid ones fail unless quarantined.
    fn report_state_files(&self, ctx: &mut Ctx) {
        let Read {
            cfg,
            scanned,
            not_read,
            quarantine,
            ..
        } = *self;
        let inv_files: Vec<&source::Invalid> = scanned
            .invalid
            .iter()
            .filter(|i| i.record == "state_file")
            .collect();
        if let Some(e) = &scanned.error {
            ctx.report.check(
                "source_state_files",
                CheckStatus::Fail,
                format!("cannot read the store: {e}"),
                json!({}),
            );
            ctx.report
                .errors
                .push(Finding::new(e.code(), e.to_string()));
        } else if let (Some(why), true) = (not_read, cfg.sqlite.is_some()) {
            ctx.report.check(
                "source_state_files",
                CheckStatus::Skip,
                format!("not read: {why}"),
                json!({}),
            );
        } else if cfg.sqlite.is_some() {
            let s = scanned.summary.as_ref();
            let orphans = s.map_or(0, |s| s.orphans);
            // Invalid files fail unless the operator means to quarantine them (SPEC §4).
            let status = if !inv_files.is_empty() && !quarantine {
                CheckStatus::Fail
            } else if !inv_files.is_empty() || orphans > 0 {
                CheckStatus::Warn
            } else {
                CheckStatus::Pass
            };
            ctx.report.check(
            "source_state_files",
            status,
            format!("{} state files read, {} invalid, {} orphan(s), {} state conflict(s)", s.map_or(0, |s| s.state_files), inv_files.len(), orphans, s.map_or(0, |s| s.state_conflicts)),
            json!({"invalid": inv_files.iter().take(INLINE_LIMIT).map(|i| i.finding()).collect::<Vec<_>>()}),
        );
        } else {
            ctx.report.check(
                "source_state_files",
                CheckStatus::Skip,
                "no [sqlite] store configured",
                json!({}),
            );
        }
    }

    /// `source_json_store`: the store loads, its records are valid, no id repeats with
    /// other metadata.
    fn report_json_store(&self, ctx: &mut Ctx) {
        let Read {
            cfg,
            scanned,
            not_read,
            json_error,
            quarantine,
        } = *self;
        match (&cfg.json_path, &scanned.summary, json_error) {
            (Some(p), _, Some(e)) => {
                ctx.report.check(
                    "source_json_store",
                    CheckStatus::Fail,
                    e.to_string(),
                    json!({"path": p}),
                );
                ctx.report
                    .errors
                    .push(Finding::new(e.code(), e.to_string()).path(p));
            }
            (None, _, _) => ctx.report.check(
                "source_json_store",
                CheckStatus::Skip,
                "no [json] store configured",
                json!({}),
            ),
            (Some(p), Some(s), None) => {
                let dups: Vec<&Finding> = s
                    .warnings
                    .iter()
                    .filter(|w| w.code == "duplicate_id")
                    .collect();
                let bad = scanned
                    .invalid
                    .iter()
                    .filter(|i| i.record == "json_record")
                    .count();
                let status = if !dups.is_empty() || (bad > 0 && !quarantine) {
                    CheckStatus::Fail
                } else if bad > 0 {
                    CheckStatus::Warn
                } else {
                    CheckStatus::Pass
                };
                ctx.report.check(
                    "source_json_store",
                    status,
                    format!(
                        "{}: {} records, {} invalid, {} id(s) duplicated with different metadata",
                        p.display(),
                        s.json_records,
                        bad,
                        dups.len()
                    ),
                    json!({"duplicates": dups.iter().take(INLINE_LIMIT).collect::<Vec<_>>()}),
                );
                // They fail the check: errors, each naming its session, not warnings.
                for d in dups.iter().take(INLINE_LIMIT) {
                    ctx.report.errors.push((*d).clone());
                }
            }
            (Some(p), None, None) => ctx.report.check(
                "source_json_store",
                CheckStatus::Skip,
                format!(
                    "{} loads; its sessions were not checked: {}",
                    p.display(),
                    not_read.unwrap_or("the scan of the store stopped")
                ),
                json!({"path": p}),
            ),
        }
    }
}

/// The `plan` check: what a load would do, and the next steps.
fn report_plan(
    ctx: &mut Ctx,
    scanned: &Scanned,
    estimate: u64,
    target_reachable: bool,
    quarantine: bool,
) {
    if scanned.summary.is_none() {
        // Nothing to plan: counts of a store that was not read would be a false zero.
        ctx.report.check(
            "plan",
            CheckStatus::Skip,
            "no plan: the source could not be read",
            json!({"target_reachable": target_reachable}),
        );
        ctx.report
            .next_steps
            .push("fix every failed check, then run preflight again".into());
        return;
    }
    let counts = &scanned.counts;
    let est_secs = counts.bytes as f64 / LOAD_BYTES_PER_SEC;
    let plan_status = if counts.conflicts > 0 || (counts.invalid > 0 && !quarantine) {
        CheckStatus::Fail
    } else if counts.invalid > 0 {
        CheckStatus::Warn
    } else {
        CheckStatus::Pass
    };
    ctx.report.check(
        "plan",
        plan_status,
        format!(
            "{} sessions: {} to insert, {} to update, {} unchanged, {} in conflict, {} invalid; {} of state, about {:.0}s to load",
            counts.sessions, counts.inserted, counts.updated, counts.unchanged, counts.conflicts, counts.invalid, human_bytes(counts.bytes), est_secs
        ),
        json!({
            "counts": counts,
            "estimated_load_seconds": est_secs.ceil(),
            "estimated_backup_bytes": estimate,
            "conflicts": scanned.conflicts.iter().take(INLINE_LIMIT).collect::<Vec<_>>(),
            "target_reachable": target_reachable,
        }),
    );
    counts.to_report(&mut ctx.report);
    for i in scanned.invalid.iter().take(INLINE_LIMIT) {
        let f = i.finding();
        if quarantine {
            ctx.report.warn(f)
        } else {
            ctx.report.errors.push(f)
        }
    }
    if let Some(Ok(p)) = crate::report::write_list(
        ctx.report_dir(),
        "preflight-invalid.jsonl",
        &scanned.invalid,
    ) {
        ctx.report.artifact("invalid_records", &p);
    }
    if let Some(Ok(p)) = crate::report::write_list(
        ctx.report_dir(),
        "preflight-conflicts.jsonl",
        &scanned.conflicts,
    ) {
        ctx.report.artifact("conflicts", &p);
    }
    if ctx.report.has_failed_check() {
        ctx.report
            .next_steps
            .push("fix every failed check, then run preflight again".into());
        if counts.invalid > 0 && !quarantine {
            ctx.report.next_steps.push("or accept to quarantine the invalid records: preflight --quarantine, then migrate-state --quarantine".into());
        }
    } else {
        ctx.report
            .next_steps
            .push("backup, then migrate-state --dry-run=false".into());
    }
}

fn check_sqlite(ctx: &mut Ctx, cfg: &Config) -> bool {
    let Some(s) = &cfg.sqlite else {
        ctx.report.check(
            "source_sqlite",
            CheckStatus::Skip,
            "no [sqlite] store configured",
            json!({}),
        );
        return false;
    };
    let result = (|| -> Result<u64> {
        let conn = sqlite::open(&s.path)?;
        let problems = sqlite::quick_check(&conn, &s.path)?;
        if !problems.is_empty() {
            return Err(Error::SqliteCorrupt {
                path: s.path.clone(),
                message: problems.join("; "),
            });
        }
        if crate::cmd::migrate_state::app::is_mapped(cfg) {
            // SPEC §9: the application's own table, as the config maps it.
            let shape = source::shape::Shape::read(&conn, &s.path, &cfg.path, &cfg.app)?;
            return conn
                .query_row(
                    &format!(
                        "SELECT count(*) FROM {}",
                        source::shape::ident(&shape.sessions.name)
                    ),
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u64)
                .map_err(|e| sqlite::map_err(&s.path, e));
        }
        sqlite::check_table(&conn, &s.path)?;
        sqlite::count(&conn, &s.path)
    })();
    match result {
        Ok(rows) => {
            ctx.report.check(
                "source_sqlite",
                CheckStatus::Pass,
                format!("{}: quick_check ok, {rows} rows", s.path.display()),
                json!({"path": s.path, "rows": rows}),
            );
            true
        }
        Err(e) => {
            ctx.report.check(
                "source_sqlite",
                CheckStatus::Fail,
                e.to_string(),
                json!({"path": s.path}),
            );
            ctx.report
                .errors
                .push(Finding::new(e.code(), e.to_string()).path(&s.path));
            false
        }
    }
}

/// Connectivity, permissions and the schema rehearsal. Returns the connection if any.
fn connect_target(ctx: &mut Ctx, cfg: &Config) -> Option<postgres::Client> {
    let t = match ctx.target(Some(cfg)) {
        Ok(t) => t,
        Err(e) => {
            for id in [
                "postgres_connectivity",
                "postgres_permissions",
                "postgres_schema",
            ] {
                ctx.report
                    .check(id, CheckStatus::Fail, e.to_string(), json!({}));
            }
            ctx.report
                .errors
                .push(Finding::new(e.code(), e.to_string()));
            return None;
        }
    };
    let mut c = match crate::cmd::check::connect_or_fail(ctx, &t) {
        Ok(c) => c,
        Err(e) => {
            ctx.report.check(
                "postgres_permissions",
                CheckStatus::Skip,
                "not connected",
                json!({}),
            );
            ctx.report.check(
                "postgres_schema",
                CheckStatus::Skip,
                "not connected",
                json!({}),
            );
            ctx.report
                .errors
                .push(Finding::new(e.code(), e.to_string()));
            return None;
        }
    };
    let schema_name = cfg.postgres.schema.clone();
    let user = match server::Info::read(&mut c, &t.display) {
        Ok(info) => {
            ctx.report.check(
                "postgres_connectivity",
                if info.utf8() {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Fail
                },
                format!(
                    "{} as {}, {} (sslmode={}): PostgreSQL {}, server_encoding {}",
                    t.display,
                    info.user,
                    info.carried(),
                    t.tls.mode,
                    info.server_version,
                    info.server_encoding
                ),
                json!({"server_version": info.server_version, "server_encoding": info.server_encoding, "user": info.user, "sslmode": t.tls.mode.as_str(), "tls": info.tls, "search_path": info.search_path}),
            );
            info.user
        }
        Err(e) => {
            ctx.report.check(
                "postgres_connectivity",
                CheckStatus::Fail,
                e.to_string(),
                json!({}),
            );
            return None;
        }
    };
    match lock::holder(&mut c, &schema_name) {
        Ok(Some(holder)) => ctx.report.warn(Finding::new(
            "lock_held",
            format!("a sessiondb writer is running now: {holder}"),
        )),
        Ok(None) => {}
        Err(e) => ctx.report.warn(Finding::new(e.code(), e.to_string())),
    }
    check_permissions(ctx, &mut c, &schema_name, &user);
    check_rehearsal(ctx, &mut c, &schema_name);
    Some(c)
}

/// `postgres_permissions`: SELECT/INSERT/UPDATE on the tables that exist, else CREATE
/// in the schema, and a session that may write at all (the probe `check` uses too).
fn check_permissions(ctx: &mut Ctx, c: &mut postgres::Client, schema_name: &str, user: &str) {
    match pg::Permissions::probe(c, schema_name) {
        Ok(perms) => {
            if let Some(p) = crate::cmd::check::report_permissions(ctx, &perms, user, true) {
                ctx.report.errors.push(Finding::new("permission_denied", p));
            }
        }
        Err(e) => {
            ctx.report.check(
                "postgres_permissions",
                CheckStatus::Fail,
                e.to_string(),
                json!({}),
            );
        }
    }
}

/// `postgres_schema`: the schema versions applied in a transaction rolled back.
fn check_rehearsal(ctx: &mut Ctx, c: &mut postgres::Client, schema_name: &str) {
    match schema::rehearse(c, schema_name, &ctx.run_id()) {
        Ok(applied) => ctx.report.check(
            "postgres_schema",
            CheckStatus::Pass,
            if applied.is_empty() {
                "schema up to date".to_owned()
            } else {
                format!("schema versions {applied:?} apply cleanly (rehearsed and rolled back)")
            },
            json!({"would_apply": applied}),
        ),
        Err(e) => {
            ctx.report.check(
                "postgres_schema",
                CheckStatus::Fail,
                format!("the schema does not apply: {e}"),
                json!({}),
            );
            ctx.report
                .errors
                .push(Finding::new(e.code(), e.to_string()));
        }
    }
}

fn check_constraints(
    ctx: &mut Ctx,
    pg: Option<&mut postgres::Client>,
    fit: &Fit,
    scanned: &Scanned,
    quarantine: bool,
    cfg: &Config,
) -> Result<()> {
    // No stats when the source could not be read: then only the tables' shape is checked.
    let stats = scanned.stats.as_ref();
    let invalid = &scanned.invalid;
    let source_read = stats.is_some();
    let mut problems = fit.shape_problems();
    if let (Some(c), Some(stats), true) = (pg, stats, problems.is_empty()) {
        problems.extend(fit.data_problems(c, stats)?);
    }
    let jsonb_bad = invalid
        .iter()
        .filter(|i| {
            [
                "jsonb_incompatible_nul",
                "invalid_json",
                "invalid_utf8",
                "too_large",
            ]
            .contains(&i.code)
        })
        .count();
    let other_bad = invalid.len() - jsonb_bad;
    let status = if !problems.is_empty() {
        CheckStatus::Fail
    } else if !source_read {
        CheckStatus::Skip
    } else if !invalid.is_empty() {
        if quarantine {
            CheckStatus::Warn
        } else {
            CheckStatus::Fail
        }
    } else {
        CheckStatus::Pass
    };
    let mut summary = if problems.is_empty() && !source_read {
        "not checked against the data: the source could not be read".to_owned()
    } else if problems.is_empty() {
        "the target's constraints accept the data".to_owned()
    } else {
        problems
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    if !invalid.is_empty() {
        summary.push_str(&format!(
            "; {} invalid record(s) ({jsonb_bad} rejected by jsonb, {other_bad} with bad fields){}",
            invalid.len(),
            if quarantine {
                ", to be quarantined"
            } else {
                ": migrate-state would refuse (use --quarantine to set them aside)"
            }
        ));
    }
    for p in &problems {
        ctx.report
            .errors
            .push(Finding::new(p.code, p.message.clone()));
    }
    ctx.report.check(
        "constraints",
        status,
        summary,
        json!({"existing_table": fit.sessions, "existing_state_table": fit.session_state, "problems": problems, "schema": cfg.postgres.schema, "invalid_by_code": by_code(invalid)}),
    );
    Ok(())
}

fn by_code(invalid: &[source::Invalid]) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for i in invalid {
        *m.entry(i.code).or_default() += 1;
    }
    m
}

/// What a backup of this store will take, roughly: the database, every state file,
/// the JSON store, and the JSON Lines dump (about the states again).
pub fn estimate_backup(cfg: &Config, state_bytes: u64) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut total = state_bytes * 2;
    if let Some(s) = &cfg.sqlite {
        total += size(&s.path) + size(&PathBuf::from(format!("{}-wal", s.path.display())));
    }
    if let Some(j) = &cfg.json_path {
        total += size(j) * 2;
    }
    total
}

/// Whether this process may create entries in the folder `p`: faccessat(2) with the
/// effective ids, which also answers EROFS for a read-only filesystem and EPERM for an
/// immutable folder. It creates nothing: a probe file, even removed at once, would
/// change the folder's mtime, and preflight writes nothing.
fn may_create_in(p: &Path) -> std::result::Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    if !p.is_dir() {
        return Err("not a folder".into());
    }
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path; faccessat only reads it.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

fn check_backup_location(ctx: &mut Ctx, dir: &Path, estimate: u64) {
    let base = crate::fsutil::nearest_existing(dir);
    let writable = may_create_in(&base).map_err(|e| {
        if base == dir {
            format!("{} is not writable: {e}", base.display())
        } else {
            format!(
                "{} does not exist and cannot be created: {} is not writable: {e}",
                dir.display(),
                base.display()
            )
        }
    });
    let need = (estimate as f64 * SPACE_MARGIN) as u64 + SPACE_SLACK;
    let free = crate::fsutil::available_space(&base).ok();
    let details = json!({"dir": dir, "checked": base, "estimated_backup_bytes": estimate, "needed_with_margin": need, "available": free});
    match (writable, free) {
        (Err(msg), _) => {
            ctx.report
                .check("backup_location", CheckStatus::Fail, msg.clone(), details);
            ctx.report
                .errors
                .push(Finding::new("permission_denied", msg).path(&base));
        }
        (Ok(()), Some(free)) if free < need => {
            let msg = format!(
                "{} has {} free; a backup needs about {} (estimate {} plus margin)",
                base.display(),
                human_bytes(free),
                human_bytes(need),
                human_bytes(estimate)
            );
            ctx.report
                .check("backup_location", CheckStatus::Fail, msg.clone(), details);
            ctx.report
                .errors
                .push(Finding::new("disk_space", msg).path(&base));
        }
        (Ok(()), free) => ctx.report.check(
            "backup_location",
            CheckStatus::Pass,
            format!(
                "{} writable, {} free for an estimated {}",
                dir.display(),
                free.map_or("unknown".into(), human_bytes),
                human_bytes(need)
            ),
            details,
        ),
    }
}
