//! `backup` (SPEC §4): a verified, timestamped copy of the legacy store, or with
//! `--verify DIR` a check of an existing one. The work is in [`crate::backup`]; this is
//! resolve (the config) → plan ([`backup::plan`]: what it would copy, the space it
//! needs, what it could not read) → act ([`backup::take`]), the dry run printing the
//! plan. A backup only adds files and takes no writers' lock: it reads the source in
//! one snapshot of its own.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use crate::backup::{self, BackupResult, Options, Skipped};
use crate::config::Config;
use crate::driver::{Common, Ctx, Step};
use crate::error::Result;
use crate::progress::human_bytes;
use crate::report::{CheckStatus, Finding, lossy_opt_path};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Show what would be copied and its estimated size, writing nothing.
    #[arg(
        long = "dry-run",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolValueParser::new()
    )]
    pub dry_run: bool,
    /// Copy each session's whole folder (uploads, logs), not only its state.json.
    #[arg(long)]
    pub include_uploads: bool,
    /// Check an existing backup against its manifest instead of taking one.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["dry_run", "include_uploads"])]
    pub verify: Option<PathBuf>,
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
    }
}

/// What the manifest of a backup just written says besides its files.
#[derive(Debug, Serialize)]
pub struct ManifestSummary {
    pub source_fingerprint: String,
    pub fingerprint_after: String,
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
        match self.verify {
            Some(_) => None,
            None => Some(self.dry_run),
        }
    }
    fn run(&self, ctx: &mut Ctx, d: &mut Details) -> Result<()> {
        if let Some(dir) = &self.verify {
            return verify(ctx, dir, d);
        }
        let opts = Options {
            include_uploads: self.include_uploads,
        };
        run(ctx, &opts, self.dry_run, d)
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

/// `backup_space`: the estimate against the free space (short: a warning, since the
/// estimate is rough and the copy is checked as it is written).
fn check_space(ctx: &mut Ctx, cfg: &Config, plan: &backup::Plan) {
    tracing::info!(
        "backup of about {} into {} ({} free)",
        human_bytes(plan.estimated_bytes),
        cfg.backup_dir.display(),
        plan.available
            .map_or_else(|| "unknown".to_owned(), human_bytes)
    );
    let short = plan.available.filter(|&a| a < plan.estimated_bytes);
    let (status, summary) = match short {
        Some(a) => {
            let msg = format!(
                "{} has {} free; the backup is estimated at {}",
                cfg.backup_dir.display(),
                human_bytes(a),
                human_bytes(plan.estimated_bytes)
            );
            ctx.report
                .warn(Finding::new("low_disk_space", msg.clone()).path(&cfg.backup_dir));
            (CheckStatus::Warn, msg)
        }
        None => (
            CheckStatus::Pass,
            format!("about {} to write", human_bytes(plan.estimated_bytes)),
        ),
    };
    ctx.report.check(
        "backup_space",
        status,
        summary,
        json!({"estimated_bytes": plan.estimated_bytes, "available": plan.available}),
    );
}

/// The dry run: the plan, and what would not be copied.
fn show(ctx: &mut Ctx, plan: backup::Plan, d: &mut Details) {
    ctx.report.count("bytes", plan.estimated_bytes);
    ctx.report.count("state_files", plan.state_files);
    for s in &plan.skipped_symlinks {
        ctx.report.warn(
            Finding::new(
                "symlink_outside_root",
                format!("{}: {}: would not be copied", s.path.display(), s.reason),
            )
            .path(&s.path),
        );
    }
    for s in &plan.unreadable {
        ctx.report.warn(
            Finding::new(
                "backup_unreadable",
                format!(
                    "{}: cannot be read ({}): would not be copied, and noted in the manifest",
                    s.path.display(),
                    s.reason
                ),
            )
            .path(&s.path),
        );
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
    ctx.report.check(
        "self_check",
        CheckStatus::Pass,
        format!(
            "{} files re-read against their SHA-256; the SQLite copy passed integrity_check{}",
            m.files.len(),
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
    ctx.report.count("files", m.files.len() as u64);
    ctx.report.count("state_files", m.counts.state_files);
    ctx.report.count("sqlite_rows", m.counts.sqlite_rows);
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
    Ok(())
}
