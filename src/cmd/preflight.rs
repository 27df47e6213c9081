//! `preflight` (SPEC §4): one read-only pass that finds every reason a migration would
//! fail or lose data. Writes nothing anywhere except its report: the schema is
//! rehearsed in a transaction that is rolled back, and the backup folder (or, when it
//! does not exist yet, its nearest existing parent) is checked with faccessat(2),
//! creating nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cli::{Common, Ctx, Step};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pg::constraints::{Fit, Stats};
use crate::pg::{self, schema};
use crate::plan::{Counts, Planner};
use crate::report::{CheckStatus, Finding, INLINE_LIMIT};
use crate::source::{self, Item, Session, Source, sqlite};

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
    fn common(&self) -> &Common {
        &self.common
    }
    fn run(&self, ctx: &mut Ctx) -> Result<()> {
        run(ctx, self.quarantine)
    }
}

/// Assumed rate at which PostgreSQL ingests jsonb on one core, for the time estimate.
const LOAD_BYTES_PER_SEC: f64 = 20.0 * 1024.0 * 1024.0;
/// Safety margin on the estimated backup size.
const SPACE_MARGIN: f64 = 1.25;
const SPACE_SLACK: u64 = 16 * 1024 * 1024;

pub fn run(ctx: &mut Ctx, quarantine: bool) -> Result<()> {
    let cfg = ctx.config()?;
    ctx.report.check(
        "config",
        CheckStatus::Pass,
        format!("{} (backend {})", cfg.path.display(), cfg.backend),
        json!({"provenance": cfg.provenance}),
    );
    let src = Source::from_config(&cfg);

    // The source, store by store. The JSON store is one file: parse it up front, so that
    // one that does not load fails its own check, not the state files'.
    let sqlite_ok = check_sqlite(ctx, &cfg);
    let json_error = cfg
        .json_path
        .as_ref()
        .and_then(|p| source::load_json_store(p).err());
    // Why the sessions were not read, when they were not.
    let not_read = if !sqlite_ok && cfg.sqlite.is_some() {
        Some("the SQLite database failed its check")
    } else if json_error.is_some() {
        Some("the JSON store does not load")
    } else {
        None
    };

    // The target.
    let mut pg = connect_target(ctx, &cfg);
    let fit = match pg.as_mut() {
        Some(c) => Fit::read(c, &cfg.postgres.schema)?,
        None => Fit::default(),
    };
    // Its shape first: a table that cannot take the data is not read as if it could.
    let shape_ok = fit.shape_problems().is_empty();
    let planner = match pg.as_mut() {
        Some(c) if shape_ok => Some(Planner::new(c, &cfg.postgres.schema, &fit, false)?),
        _ => None,
    };
    if let Some(c) = pg.as_mut() {
        warn_duplicate_gin(ctx, c, &cfg.postgres.schema)?;
    }

    // One pass over every session.
    let mut stats = fit.stats();
    let mut counts = Counts::default();
    let mut invalid: Vec<source::Invalid> = Vec::new();
    let mut conflicts = Vec::new();
    let mut summary = None;
    let mut scan_error = None;
    if not_read.is_none() {
        match src.open() {
            Ok(reader) => {
                let res = reader.scan(1000, |items| {
                    let mut batch: Vec<Session> = Vec::with_capacity(items.len());
                    for it in items {
                        match it {
                            Item::Session(s) => batch.push(s),
                            Item::Invalid(i) => invalid.push(i),
                            Item::Known { .. } => unreachable!("preflight reads every session"),
                        }
                    }
                    for s in &batch {
                        stats.add(s);
                        counts.bytes += s.state.as_ref().map_or(0, |st| st.raw.len() as u64);
                    }
                    counts.sessions += batch.len() as u64;
                    if let (Some(p), Some(c)) = (&planner, pg.as_mut()) {
                        let cl = p.classify(c, &batch)?;
                        cl.actions.into_iter().for_each(|a| counts.add(a));
                        conflicts.extend(cl.conflicts);
                    }
                    Ok(())
                });
                match res {
                    Ok(s) => summary = Some(s),
                    Err(e) => scan_error = Some(e),
                }
            }
            Err(e) => scan_error = Some(e),
        }
    }
    counts.invalid = invalid.len() as u64;

    // Source checks.
    let inv_files: Vec<&source::Invalid> = invalid
        .iter()
        .filter(|i| i.record == "state_file")
        .collect();
    let inv_rows: Vec<&source::Invalid> = invalid
        .iter()
        .filter(|i| i.record != "state_file")
        .collect();
    if let Some(e) = &scan_error {
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
        let s = summary.as_ref();
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
    match (&cfg.json_path, &summary) {
        (Some(p), _) if json_error.is_some() => {
            let e = json_error.as_ref().expect("checked");
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
        (None, _) => ctx.report.check(
            "source_json_store",
            CheckStatus::Skip,
            "no [json] store configured",
            json!({}),
        ),
        (Some(p), Some(s)) => {
            let dups: Vec<&Finding> = s
                .warnings
                .iter()
                .filter(|w| w.code == "duplicate_id")
                .collect();
            let bad: Vec<&&source::Invalid> = inv_rows
                .iter()
                .filter(|i| i.record == "json_record")
                .collect();
            let status = if !dups.is_empty() || (!bad.is_empty() && !quarantine) {
                CheckStatus::Fail
            } else if !bad.is_empty() {
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
                    bad.len(),
                    dups.len()
                ),
                json!({"duplicates": dups.iter().take(INLINE_LIMIT).collect::<Vec<_>>()}),
            );
            // They fail the check: errors, each naming its session, not warnings.
            for d in dups.iter().take(INLINE_LIMIT) {
                ctx.report.errors.push((*d).clone());
            }
        }
        (Some(p), None) => ctx.report.check(
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
    if let Some(s) = &summary {
        for w in &s.warnings {
            // duplicate_id fails source_json_store: reported as errors above.
            if w.code != "duplicate_id" {
                ctx.report.warn(w.clone());
            }
        }
    }

    // Backup location.
    let estimate = estimate_backup(&cfg, counts.bytes);
    check_backup_location(ctx, &cfg.backup_dir, estimate);

    // Constraints: the target as it is, against the data.
    check_constraints(
        ctx,
        pg.as_mut(),
        &fit,
        summary.as_ref().map(|_| &stats),
        &invalid,
        quarantine,
        &cfg,
    )?;

    if summary.is_none() {
        // Nothing to plan: counts of a store that was not read would be a false zero.
        ctx.report.check(
            "plan",
            CheckStatus::Skip,
            "no plan: the source could not be read",
            json!({"target_reachable": pg.is_some()}),
        );
        ctx.report
            .next_steps
            .push("fix every failed check, then run preflight again".into());
        return Ok(());
    }

    // The plan.
    let est_secs = counts.bytes as f64 / LOAD_BYTES_PER_SEC;
    let plan_status = if counts.conflicts > 0 {
        CheckStatus::Fail
    } else if counts.invalid > 0 {
        if quarantine {
            CheckStatus::Warn
        } else {
            CheckStatus::Fail
        }
    } else {
        CheckStatus::Pass
    };
    ctx.report.check(
        "plan",
        plan_status,
        format!(
            "{} sessions: {} to insert, {} to update, {} unchanged, {} in conflict, {} invalid; {} bytes of state, about {:.0}s to load",
            counts.sessions, counts.inserted, counts.updated, counts.unchanged, counts.conflicts, counts.invalid, counts.bytes, est_secs
        ),
        json!({
            "counts": counts,
            "estimated_load_seconds": est_secs.ceil(),
            "estimated_backup_bytes": estimate,
            "conflicts": conflicts.iter().take(INLINE_LIMIT).collect::<Vec<_>>(),
            "target_reachable": pg.is_some(),
        }),
    );
    counts.to_report(&mut ctx.report);
    for i in invalid.iter().take(INLINE_LIMIT) {
        let f = i.finding();
        if quarantine {
            ctx.report.warn(f)
        } else {
            ctx.report.errors.push(f)
        }
    }
    if let Some(Ok(p)) =
        crate::report::write_list(ctx.report_dir(), "preflight-invalid.jsonl", &invalid)
    {
        ctx.report.artifact("invalid_records", &p);
    }
    if let Some(Ok(p)) =
        crate::report::write_list(ctx.report_dir(), "preflight-conflicts.jsonl", &conflicts)
    {
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
    Ok(())
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
    let mut c = match pg::connect(&t) {
        Ok(c) => c,
        Err(e) => {
            ctx.report.check(
                "postgres_connectivity",
                CheckStatus::Fail,
                e.to_string(),
                json!({"target": t.display}),
            );
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
    let info = c.query_one(
        "SELECT pg_catalog.current_setting('server_version'), pg_catalog.current_setting('server_encoding'),
                current_user::text, pg_catalog.current_setting('search_path')",
        &[],
    );
    let user = match info {
        Ok(r) => {
            let (v, enc, user, search_path): (String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let ok = enc.eq_ignore_ascii_case("UTF8");
            let tls = pg::session_tls(&mut c).unwrap_or_default();
            ctx.report.check(
                "postgres_connectivity",
                if ok {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Fail
                },
                format!(
                    "{} as {user}, {} (sslmode={}): PostgreSQL {v}, server_encoding {enc}",
                    t.display,
                    tls.as_deref()
                        .map_or("not encrypted".to_owned(), |v| format!("over {v}")),
                    t.tls.mode
                ),
                json!({"server_version": v, "server_encoding": enc, "user": user, "sslmode": t.tls.mode.as_str(), "tls": tls, "search_path": search_path}),
            );
            user
        }
        Err(e) => {
            let e = Error::pg("reading server settings", &t.display, e);
            ctx.report.check(
                "postgres_connectivity",
                CheckStatus::Fail,
                e.to_string(),
                json!({}),
            );
            return None;
        }
    };
    match pg::lock_free(&mut c, &schema_name) {
        Ok(Some(holder)) => ctx.report.warn(Finding::new(
            "lock_held",
            format!("a sessiondb writer is running now: {holder}"),
        )),
        Ok(None) => {}
        Err(e) => ctx.report.warn(Finding::new(e.code(), e.to_string())),
    }
    // Permissions: SELECT/INSERT/UPDATE on the tables that exist, else CREATE in the
    // schema, and a session that may write at all (the probe `check` uses too).
    match pg::Permissions::probe(&mut c, &schema_name) {
        Ok(perms) => {
            let problem = perms.problem(&user);
            ctx.report.check(
                "postgres_permissions",
                if problem.is_none() {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Fail
                },
                problem.clone().unwrap_or_else(|| perms.summary()),
                serde_json::to_value(&perms).unwrap_or_default(),
            );
            if let Some(p) = problem {
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
    match schema::rehearse(&mut c, &schema_name, &ctx.run_id()) {
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
    Some(c)
}

/// Warn of two or more GIN indexes on `session_state.state` (the application's and
/// sessiondb's, say): each costs every write, and one serves the queries.
pub fn warn_duplicate_gin(
    ctx: &mut Ctx,
    c: &mut postgres::Client,
    schema_name: &str,
) -> Result<()> {
    if let Some(w) = schema::duplicate_gin(c, schema_name)? {
        ctx.report.warn(w);
    }
    Ok(())
}

fn check_constraints(
    ctx: &mut Ctx,
    pg: Option<&mut postgres::Client>,
    fit: &Fit,
    // None when the source could not be read: then only the tables' shape is checked.
    stats: Option<&Stats>,
    invalid: &[source::Invalid],
    quarantine: bool,
    cfg: &Config,
) -> Result<()> {
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
                "{} has {free} bytes free; a backup needs about {need} (estimate {estimate} plus margin)",
                base.display()
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
                "{} writable, {} bytes free for an estimated {need}",
                dir.display(),
                free.map_or("unknown".into(), |f| f.to_string())
            ),
            details,
        ),
    }
}
