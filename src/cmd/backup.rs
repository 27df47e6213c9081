//! `backup` (SPEC §4): a verified, timestamped copy of the legacy store, or with
//! `--verify DIR` a check of an existing one. The work is in [`crate::backup`].

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::backup::{self, Options};
use crate::cli::{Common, Ctx, Step};
use crate::error::Result;
use crate::report::{CheckStatus, Finding};

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

impl Step for Args {
    const NAME: &'static str = "backup";
    fn common(&self) -> &Common {
        &self.common
    }
    fn dry_run(&self) -> Option<bool> {
        match self.verify {
            Some(_) => None,
            None => Some(self.dry_run),
        }
    }
    fn run(&self, ctx: &mut Ctx) -> Result<()> {
        if let Some(dir) = &self.verify {
            return verify(ctx, dir);
        }
        let opts = Options {
            include_uploads: self.include_uploads,
        };
        run(ctx, &opts, self.dry_run)
    }
}

/// Take a backup, or with `dry_run` show its plan.
pub fn run(ctx: &mut Ctx, opts: &Options, dry_run: bool) -> Result<()> {
    let cfg = ctx.config()?;
    let plan = backup::plan(&cfg, opts)?;
    tracing::info!(
        "backup of about {} bytes into {} ({} free)",
        plan.estimated_bytes,
        cfg.backup_dir.display(),
        plan.available
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
    );
    let short = plan.available.filter(|&a| a < plan.estimated_bytes);
    let space = match short {
        Some(a) => {
            let msg = format!(
                "{} has {a} bytes free; the backup is estimated at {} bytes",
                cfg.backup_dir.display(),
                plan.estimated_bytes
            );
            ctx.report
                .warn(Finding::new("low_disk_space", msg.clone()).path(&cfg.backup_dir));
            (CheckStatus::Warn, msg)
        }
        None => (
            CheckStatus::Pass,
            format!("about {} bytes to write", plan.estimated_bytes),
        ),
    };
    ctx.report.check(
        "backup_space",
        space.0,
        space.1,
        json!({"estimated_bytes": plan.estimated_bytes, "available": plan.available}),
    );
    if dry_run {
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
        ctx.report.detail("plan", &plan);
        ctx.report
            .next_steps
            .push("backup (without --dry-run) to write it".into());
        return Ok(());
    }

    let res = backup::take(&cfg, opts, &ctx.run_id())?;
    let m = &res.manifest;
    for w in res.warnings {
        ctx.report.warn(w);
    }
    ctx.report
        .detail("removed_incomplete", &res.removed_incomplete);
    if m.counts.invalid > 0 {
        ctx.report.warn(Finding::new(
            "invalid_records",
            format!(
                "{} invalid record(s) saved with their raw bytes in {}; migrate-state needs --quarantine to skip them",
                m.counts.invalid,
                res.dir.join(backup::INVALID_JSONL).display()
            ),
        ));
        ctx.report.detail("invalid", &res.invalid);
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
    ctx.report.detail("backup", &res.dir);
    ctx.report.detail(
        "manifest",
        json!({
            "source_fingerprint": m.source_fingerprint,
            "fingerprint_after": m.fingerprint_after,
            "skipped_symlinks": m.skipped_symlinks,
            "skipped_other": m.skipped_other,
            "unreadable": m.unreadable,
        }),
    );
    let d = res.dir.display();
    ctx.report
        .next_steps
        .push(format!("migrate-state --dry-run=false --backup {d}"));
    ctx.report
        .next_steps
        .push(format!("backup --verify {d} (re-check it at any time)"));
    Ok(())
}

/// `backup --verify DIR`: exit 1 naming every missing or damaged file.
pub fn verify(ctx: &mut Ctx, dir: &Path) -> Result<()> {
    // The config only adds its warnings here: a backup is checked on its own.
    if let Err(e) = ctx.config() {
        tracing::info!("config not loaded ({e}); checking the backup on its own");
    }
    let res = backup::verify(dir)?;
    ctx.report.detail("backup", dir);
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
