//! `backup` (SPEC §4): a verified, timestamped copy of the legacy store (sharing what
//! did not change with the newest earlier one); `--verify DIR`, a check of an existing
//! one; `--extract DIR --to OUT`, a backup written out as plain files; `--prune`, the
//! removal of old backups (a dry run unless `--dry-run=false`). The work is in
//! [`crate::backup`]; this is resolve (the config) → plan ([`backup::plan`]: what it
//! would copy, the space it needs, what it could not read; [`prune::Pruning::plan`]) →
//! act ([`backup::take`], [`prune::Pruning::act`]), the dry run printing the plan. A
//! backup only adds files and takes no writers' lock: it reads the source in one
//! snapshot of its own. A prune holds the writers' lock while it decides and removes.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use crate::backup::prune::{self, Facts, Pruning, Reliance, Rule};
use crate::backup::{self, BackupResult, Options, Sharing, Skipped, Swept};
use crate::config::Config;
use crate::driver::{Common, Ctx, Step};
use crate::error::{Error, Result};
use crate::pg;
use crate::progress::human_bytes;
use crate::report::{CheckStatus, Finding, lossy_opt_path};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Show what would be done, writing nothing: a backup's plan and estimated size, or
    /// with --prune what would be removed (--prune's default; --dry-run=false removes).
    #[arg(
        long = "dry-run",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolValueParser::new()
    )]
    pub dry_run: Option<bool>,
    /// Copy each session's whole folder (uploads, logs), not only its state.json.
    #[arg(long, conflicts_with_all = ["verify", "extract", "prune"])]
    pub include_uploads: bool,
    /// Check an existing backup against its manifest instead of taking one.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["dry_run", "extract", "prune"])]
    pub verify: Option<PathBuf>,
    /// Write the backup DIR out as plain files into the new folder given by --to.
    #[arg(long, value_name = "DIR", requires = "to", conflicts_with_all = ["dry_run", "prune"])]
    pub extract: Option<PathBuf>,
    /// With --extract: the folder to write into (must not exist yet).
    #[arg(long, value_name = "OUT", requires = "extract")]
    pub to: Option<PathBuf>,
    /// Remove old backups and failed backups' folders: a dry run unless --dry-run=false.
    /// Never the newest, the newest of this store, or one a cutover recorded in
    /// PostgreSQL relies on (refused when those records cannot be read).
    #[arg(long)]
    pub prune: bool,
    /// With --prune: how many of the newest backups to keep whatever else holds
    /// (at least 1; default 3).
    #[arg(long, value_name = "N", requires = "prune",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: Option<u64>,
}

crate::details! {
    /// `details` of a backup report.
    pub struct Details {
        /// The dry run's plan.
        pub plan: backup::Plan,
        /// Folders of failed backups removed first.
        pub removed_incomplete: Vec<PathBuf>,
        /// The first invalid records saved in `invalid.jsonl`.
        pub invalid: Vec<Finding>,
        /// The backup folder (written, or checked with `--verify`).
        #[serde(serialize_with = "lossy_opt_path")]
        pub backup: PathBuf,
        pub manifest: ManifestSummary,
        /// `--extract`: what was written out.
        pub extracted: backup::Extracted,
        /// `--prune`: what the cutover records say they rely on.
        pub cutover_reliances: Vec<Reliance>,
        /// `--prune`: what is kept and why, what is (or would be) removed.
        pub prune: prune::PrunePlan,
        /// `--prune --dry-run=false`: the blobs removed.
        pub blobs_removed: Swept,
    }
}

/// What the manifest of a backup just written says besides its files.
#[derive(Debug, Serialize)]
pub struct ManifestSummary {
    pub source_fingerprint: String,
    pub fingerprint_after: String,
    /// What this backup shares with the earlier one (absent for a first backup).
    pub sharing: Option<Sharing>,
    pub skipped_symlinks: Vec<Skipped>,
    pub skipped_other: Vec<Skipped>,
    pub unreadable: Vec<Skipped>,
}

impl Step for Args {
    const NAME: &'static str = "backup";
    const ABOUT: &'static str = "Copy the legacy store (SQLite database, state files, JSON store, config) into a new, self-checked backup folder under backup.dir; writes only there (--dry-run: nothing).";
    type Details = Details;
    crate::step_flags!();
    fn dry_run(&self) -> Option<bool> {
        if self.verify.is_some() || self.extract.is_some() {
            return None;
        }
        // A backup only adds files: it writes unless told not to. A prune removes
        // backups: it writes only when told to.
        Some(self.dry_run.unwrap_or(self.prune))
    }
    fn run(&self, ctx: &mut Ctx, d: &mut Details) -> Result<()> {
        if let Some(dir) = &self.verify {
            return verify(ctx, dir, d);
        }
        if let (Some(dir), Some(to)) = (&self.extract, &self.to) {
            return extract(ctx, dir, to, d);
        }
        if self.prune {
            let keep = self.keep.map_or(prune::DEFAULT_KEEP, |k| k as usize);
            return run_prune(ctx, keep, self.dry_run.unwrap_or(true), d);
        }
        let opts = Options {
            include_uploads: self.include_uploads,
            ..Options::default()
        };
        run(ctx, &opts, self.dry_run.unwrap_or(false), d)
    }
}

/// Take a backup, or with `dry_run` show its plan.
pub fn run(ctx: &mut Ctx, opts: &Options, dry_run: bool, d: &mut Details) -> Result<()> {
    let cfg = ctx.config()?;
    let plan = backup::plan(&cfg, opts)?;
    check_space(ctx, &cfg, &plan);
    if dry_run {
        show(ctx, plan, d);
        return Ok(());
    }
    let res = backup::take(&cfg, opts, &ctx.run_id())?;
    report_taken(ctx, res, d);
    Ok(())
}

/// The estimate against the room where the backup goes: a `backup_space` check, and a
/// `low_disk_space` warning when it may not fit.
fn check_space(ctx: &mut Ctx, cfg: &Config, plan: &backup::Plan) {
    let free = plan
        .available
        .map_or_else(|| "unknown".to_owned(), human_bytes);
    tracing::info!(
        "backup of about {} into {} ({free} free){}",
        human_bytes(plan.estimated_bytes),
        cfg.backup_dir.display(),
        match &plan.shares_with {
            Some(b) => format!(
                "; {} files ({}) unchanged since {} are shared, not copied",
                plan.shared_files,
                human_bytes(plan.shared_bytes),
                b.display()
            ),
            None => String::new(),
        }
    );
    let short = plan.available.filter(|&a| a < plan.estimated_bytes);
    let space = match short {
        Some(a) => {
            let msg = format!(
                "{} has {} free ({a} bytes); the backup is estimated at {} ({} bytes)",
                cfg.backup_dir.display(),
                human_bytes(a),
                human_bytes(plan.estimated_bytes),
                plan.estimated_bytes
            );
            ctx.report
                .warn(Finding::new("low_disk_space", msg.clone()).path(&cfg.backup_dir));
            (CheckStatus::Warn, msg)
        }
        None => (
            CheckStatus::Pass,
            format!(
                "about {} to write ({} bytes)",
                human_bytes(plan.estimated_bytes),
                plan.estimated_bytes
            ),
        ),
    };
    ctx.report.check(
        "backup_space",
        space.0,
        space.1,
        json!({"estimated_bytes": plan.estimated_bytes, "available": plan.available}),
    );
}

/// The dry run: the plan, and what would not be copied.
fn show(ctx: &mut Ctx, plan: backup::Plan, d: &mut Details) {
    ctx.report.count("bytes", plan.estimated_bytes);
    ctx.report.count("state_files", plan.state_files);
    ctx.report.count("shared_files", plan.shared_files);
    for s in &plan.skipped_symlinks {
        ctx.report
            .warn(s.finding("symlink_outside_root", "would not be"));
    }
    for s in &plan.unreadable {
        ctx.report
            .warn(s.finding("backup_unreadable", "would not be"));
    }
    d.plan = Some(plan);
    ctx.report
        .next_steps
        .push("backup (without --dry-run) to write it".into());
}

/// The backup taken: its self-check, counts, artifacts and what its manifest says.
fn report_taken(ctx: &mut Ctx, res: BackupResult, d: &mut Details) {
    let m = &res.manifest;
    for w in &res.warnings {
        ctx.report.warn(w.clone());
    }
    d.removed_incomplete = Some(res.removed_incomplete.clone());
    if m.counts.invalid > 0 {
        ctx.report.warn(Finding::new(
            "invalid_records",
            format!(
                "{} invalid record(s) saved with their raw bytes in {}; migrate-state needs --quarantine to skip them",
                m.counts.invalid,
                res.dir.join(backup::INVALID_JSONL).display()
            ),
        ));
        d.invalid = Some(res.invalid.clone());
    }
    let copied = m
        .sharing
        .as_ref()
        .map_or(m.files, |s| m.files - s.files_shared);
    ctx.report.check(
        "self_check",
        CheckStatus::Pass,
        format!(
            "the {copied} files this backup wrote re-read against their SHA-256; the SQLite copy passed integrity_check{}{}",
            match &m.sharing {
                Some(s) => format!(
                    "; {} unchanged files ({}) shared with {}, each there at its size",
                    s.files_shared,
                    human_bytes(s.bytes_shared),
                    s.base.display()
                ),
                None => String::new(),
            },
            match m.unreadable.len() {
                0 => String::new(),
                n => format!(
                    "; complete without {n} file(s) it may not read (noted in its manifest, named in the warnings)"
                ),
            }
        ),
        json!({"sqlite_rows": m.counts.sqlite_rows, "unreadable": m.unreadable.len()}),
    );
    ctx.report.count("sessions", m.counts.sessions);
    ctx.report.count("invalid", m.counts.invalid);
    ctx.report.count("bytes", m.counts.bytes);
    ctx.report.count("files", m.files);
    ctx.report.count("state_files", m.counts.state_files);
    ctx.report.count("sqlite_rows", m.counts.sqlite_rows);
    if let Some(s) = &m.sharing {
        ctx.report.count("files_shared", s.files_shared);
        ctx.report.count("bytes_shared", s.bytes_shared);
        ctx.report.count("files_copied", s.files_copied);
        ctx.report.count("bytes_copied", s.bytes_copied);
        ctx.report.count("sessions_carried", s.sessions_carried);
    }
    ctx.report.artifact("backup", &res.dir);
    ctx.report
        .artifact("manifest", &res.dir.join(backup::MANIFEST));
    let dir = res.dir.display();
    ctx.report
        .next_steps
        .push(format!("migrate-state --dry-run=false --backup {dir}"));
    ctx.report
        .next_steps
        .push(format!("backup --verify {dir} (re-check it at any time)"));
    d.backup = Some(res.dir.clone());
    d.manifest = Some(ManifestSummary {
        source_fingerprint: m.source_fingerprint.clone(),
        fingerprint_after: m.fingerprint_after.clone(),
        sharing: m.sharing.clone(),
        skipped_symlinks: m.skipped_symlinks.clone(),
        skipped_other: m.skipped_other.clone(),
        unreadable: m.unreadable.clone(),
    });
}

/// `backup --verify DIR`: exit 1 naming every missing or damaged file.
pub fn verify(ctx: &mut Ctx, dir: &Path, d: &mut Details) -> Result<()> {
    // The config only adds its warnings here: a backup is checked on its own.
    if let Err(e) = ctx.config() {
        tracing::info!("config not loaded ({e}); checking the backup on its own");
    }
    let res = backup::verify(dir)?;
    d.backup = Some(dir.to_path_buf());
    ctx.report.artifact("backup", dir);
    ctx.report.count("files", res.sound);
    ctx.report.count("bytes", res.bytes);
    let listed = res.files;
    if res.is_sound() {
        ctx.report.check(
            "backup",
            CheckStatus::Pass,
            format!(
                "{} complete: {listed} files match the manifest, the SQLite copy passed integrity_check",
                dir.display()
            ),
            json!({}),
        );
        return Ok(());
    }
    ctx.problems = true;
    ctx.report.check(
        "backup",
        CheckStatus::Fail,
        format!(
            "{}: {} problem(s), {} of {listed} listed files sound",
            dir.display(),
            res.problem_count,
            res.sound
        ),
        json!({}),
    );
    for p in &res.problems {
        ctx.report.errors.push(p.finding());
    }
    ctx.report.next_steps.push(
        "do not restore from this backup; take a fresh one with `backup` (the source is never changed by it)"
            .into(),
    );
    if res.problems.iter().any(|p| p.message.contains("(blob ")) {
        ctx.report.next_steps.push(format!(
            "a damaged blob is shared by every backup that lists it: `backup --verify` them; a new `backup` copies a missing blob again from the store, so move a damaged one out of {} first",
            dir.parent()
                .unwrap_or(Path::new("."))
                .join(backup::BLOBS_DIR)
                .display()
        ));
    }
    Ok(())
}

/// `backup --extract DIR --to OUT`: the backup as plain files, each checked.
pub fn extract(ctx: &mut Ctx, dir: &Path, to: &Path, d: &mut Details) -> Result<()> {
    if let Err(e) = ctx.config() {
        tracing::info!("config not loaded ({e}); extracting the backup on its own");
    }
    d.backup = Some(dir.to_path_buf());
    let x = backup::extract(dir, to)?;
    tracing::info!(
        "{} files ({}) written to {}, each checked against its SHA-256",
        x.files,
        human_bytes(x.bytes),
        to.display()
    );
    ctx.report.count("files", x.files);
    ctx.report.count("bytes", x.bytes);
    ctx.report.artifact("extracted", to);
    d.extracted = Some(x);
    ctx.report.next_steps.push(format!(
        "to put the store back by hand, with the application stopped: {0}/sqlite/app.db over sqlite.path (remove its -wal and -shm files), {0}/state/<id>/ into sqlite.sessions_dir, {0}/json/session-db.json over json.path",
        to.display()
    ));
    Ok(())
}

// ---- prune -------------------------------------------------------------------------------

/// `backup --prune [--keep N]`: resolve every fact the decision needs (or refuse), plan,
/// and with `--dry-run=false` remove.
pub fn run_prune(ctx: &mut Ctx, keep: usize, dry_run: bool, d: &mut Details) -> Result<()> {
    let cfg = ctx.config()?;
    let (facts, _lock) = resolve_prune(ctx, &cfg, d)?;
    let pruning = Pruning::open(&cfg.backup_dir)?;
    let plan = pruning.plan(keep, &facts)?;
    report_prune_plan(ctx, &plan, dry_run);
    if dry_run {
        if !plan.remove.is_empty() || !plan.leftovers.is_empty() || plan.blobs.blobs > 0 {
            ctx.report.next_steps.push(format!(
                "backup --prune --keep {} --dry-run=false to remove them",
                plan.keep
            ));
        }
        d.prune = Some(plan);
        return Ok(());
    }
    let swept = pruning.act(&plan)?;
    let freed = plan.remove.iter().map(|l| l.bytes).sum::<u64>()
        + plan.leftovers.iter().map(|l| l.bytes).sum::<u64>()
        + swept.bytes
        + swept.temp_bytes;
    tracing::info!(
        "removed {} backup(s), {} leftover folder(s) and {} blob(s): {} freed",
        plan.remove.len(),
        plan.leftovers.len(),
        swept.blobs,
        human_bytes(freed)
    );
    ctx.report.count("removed", plan.remove.len() as u64);
    ctx.report.count("blobs_removed", swept.blobs);
    ctx.report.count("bytes_freed", freed);
    d.blobs_removed = Some(swept);
    d.prune = Some(plan);
    Ok(())
}

/// What prune must know before it decides, read the same way by the dry run and the
/// real run, and the writers' lock held while it works (no load, cutover or rollback
/// can start on a backup it is about to remove). The target must answer: without the
/// cutover records, which backups a cutover relies on cannot be known, and prune
/// refuses rather than guess.
fn resolve_prune(ctx: &mut Ctx, cfg: &Config, d: &mut Details) -> Result<(Facts, pg::WriterLock)> {
    let fail = |ctx: &mut Ctx, e: Error| {
        ctx.report.next_steps.push(
            "backup --prune reads the cutover records in PostgreSQL to know which backups they rely on: make the target reachable (its URL in the environment variable the config names), then prune again; nothing was removed"
                .into(),
        );
        e
    };
    let current_fingerprint = crate::source::Source::from_config(cfg).quick_fingerprint()?;
    let t = ctx.target(Some(cfg)).map_err(|e| fail(ctx, e))?;
    let schema = cfg.postgres.schema.clone();
    let lock = pg::WriterLock::acquire(&t, &schema, &ctx.run_id()).map_err(|e| fail(ctx, e))?;
    let mut c = pg::connect(&t).map_err(|e| fail(ctx, e))?;
    let reliances = cutover_reliances(&mut c, &schema)?;
    d.cutover_reliances = Some(reliances.clone());
    Ok((
        Facts {
            current_fingerprint,
            current_source: Some(backup::manifest_source(cfg)),
            reliances,
        },
        lock,
    ))
}

/// The backups each recorded cutover relies on. A `set_default` relies on the backups
/// of the source it verified, on the backup the last load before it stood on, and on
/// the newest backup taken before it; a `rollback` on the backup it took of what its
/// export replaced (and the newest before it).
fn cutover_reliances(c: &mut postgres::Client, schema: &str) -> Result<Vec<Reliance>> {
    if !pg::schema::table_exists(c, schema, "sessiondb_cutovers")? {
        return Ok(Vec::new());
    }
    let rows = c
        .query(
            &format!(
                "SELECT c.id, c.kind, c.at, c.run_id, v.source_fingerprint,
                        (SELECT r.backup FROM {runs} r
                          WHERE r.step OPERATOR(pg_catalog.=) 'migrate-state'
                            AND r.backup IS NOT NULL
                            AND r.started_at OPERATOR(pg_catalog.<=) c.at
                          ORDER BY r.started_at DESC LIMIT 1)
                   FROM {cutovers} c
                   LEFT JOIN {verifications} v ON v.run_id OPERATOR(pg_catalog.=) c.verify_run_id
                  ORDER BY c.id",
                runs = pg::qualified(schema, "sessiondb_runs"),
                cutovers = pg::qualified(schema, "sessiondb_cutovers"),
                verifications = pg::qualified(schema, "sessiondb_verifications"),
            ),
            &[],
        )
        .map_err(|e| Error::pg("reading the cutover records", "", e))?;
    let mut out = Vec::new();
    for r in rows {
        let id: i64 = r.get(0);
        let kind: String = r.get(1);
        let at: chrono::DateTime<chrono::Utc> = r.get(2);
        let run: uuid::Uuid = r.get(3);
        let verified: Option<String> = r.get(4);
        let loaded_from: Option<String> = r.get(5);
        let what = format!(
            "cutover #{id} ({kind} at {})",
            at.format("%Y-%m-%dT%H:%M:%SZ")
        );
        let mut add = |why: String, rule: Rule| out.push(Reliance { why, rule });
        if kind == "rollback" {
            add(
                format!("{what} took it of what its export replaced"),
                Rule::RunId(run.to_string()),
            );
        }
        if let Some(fp) = verified {
            add(
                format!("{what} was made after a verify of the source this backup holds"),
                Rule::Fingerprint(fp),
            );
        }
        if let Some(name) = loaded_from
            .as_deref()
            .and_then(|b| Path::new(b).file_name())
            .and_then(|n| n.to_str())
        {
            add(
                format!("{what}: the last load before it stood on this backup"),
                Rule::Folder(name.to_owned()),
            );
        }
        add(
            format!("{what}: the newest backup taken before it"),
            Rule::NewestBefore(at),
        );
    }
    Ok(out)
}

/// What prune keeps and removes, on stderr (sizes for people) and in the report
/// (exact bytes).
fn report_prune_plan(ctx: &mut Ctx, plan: &prune::PrunePlan, dry_run: bool) {
    let verb = if dry_run { "would remove" } else { "removes" };
    for l in &plan.kept {
        tracing::info!(
            "keeps {} ({}): {}",
            l.dir.display(),
            human_bytes(l.bytes),
            l.kept_because.join("; ")
        );
    }
    for l in &plan.remove {
        tracing::info!(
            "{verb} {} (taken {}): {} in its folder",
            l.dir.display(),
            l.created_at,
            human_bytes(l.bytes)
        );
    }
    for l in &plan.leftovers {
        tracing::info!(
            "{verb} {} ({}): {}",
            l.dir.display(),
            human_bytes(l.bytes),
            l.why
        );
    }
    for u in &plan.unreadable {
        tracing::info!(
            "keeps {}: named as a backup, its manifest cannot be read",
            u.display()
        );
    }
    if let Some(why) = &plan.sweep_skipped {
        ctx.report
            .warn(Finding::new("prune_blobs_kept", why.clone()));
    }
    tracing::info!(
        "{verb} {} blob(s) no kept backup lists ({}), {} in all",
        plan.blobs.blobs,
        human_bytes(plan.blobs.bytes),
        human_bytes(plan.freed_bytes)
    );
    ctx.report.count("kept", plan.kept.len() as u64);
    ctx.report.count("to_remove", plan.remove.len() as u64);
    ctx.report.count("leftovers", plan.leftovers.len() as u64);
    ctx.report.count("blobs", plan.blobs.blobs);
    ctx.report.count("bytes", plan.freed_bytes);
    for l in &plan.remove {
        ctx.report
            .artifact(if dry_run { "would_remove" } else { "removed" }, &l.dir);
    }
}
