//! `set-default` (SPEC §4): switch the config's backend to postgres after a passed
//! verify of the current source. Dry run by default: it shows the diff it would apply.

use serde_json::json;

use crate::cli::{Common, Ctx, DryRun, Step};
use crate::config::Backend;
use crate::cutover;
use crate::error::{Error, Result};
use crate::pg::{self, WriterLock, qualified, schema};
use crate::report::{CheckStatus, Finding};
use crate::source::Source;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub dry: DryRun,
    /// Switch even without a passed verify of the current source (loudly warned).
    #[arg(long)]
    pub force: bool,
}

impl Step for Args {
    const NAME: &'static str = "set-default";
    fn common(&self) -> &Common {
        &self.common
    }
    fn dry_run(&self) -> Option<bool> {
        Some(self.dry.dry_run)
    }
    fn run(&self, ctx: &mut Ctx) -> Result<()> {
        run(ctx, self.dry.dry_run, self.force)
    }
}

pub fn run(ctx: &mut Ctx, dry_run: bool, force: bool) -> Result<()> {
    let cfg = ctx.config()?;
    let t = ctx.target(Some(&cfg))?;
    let schema_name = cfg.postgres.schema.clone();
    let Some(edit) = cutover::plan_edit(&cfg.path, Backend::Postgres)? else {
        ctx.report.check(
            "config",
            CheckStatus::Pass,
            format!(
                "{} already says backend = \"postgres\": nothing to change",
                cfg.path.display()
            ),
            json!({}),
        );
        ctx.report.count("changed", 0);
        return Ok(());
    };
    if let Some(w) = cutover::symlink_warning(&edit) {
        ctx.report.warn(w);
    }
    let mut c = pg::connect(&t)?;
    let fp = Source::from_config(&cfg).quick_fingerprint()?;
    let verification = latest_verification(&mut c, &schema_name)?;
    let verify_run = match &verification {
        Some((run, vfp, true)) if *vfp == fp => {
            ctx.report.check(
                "verify",
                CheckStatus::Pass,
                format!("verify run {run} passed on the current source"),
                json!({"run_id": run.to_string()}),
            );
            Some(*run)
        }
        other => {
            let migrated = anything_migrated(&mut c, &schema_name)?;
            let why = match other {
                _ if !migrated => format!("nothing was migrated to {} yet", t.display),
                None => "no verify has been recorded".to_owned(),
                Some((run, _, false)) => format!("the newest verify ({run}) did not pass"),
                Some((run, _, true)) => {
                    format!("the newest passed verify ({run}) was of an older state of the source")
                }
            };
            if !force {
                let (first, next) = if migrated {
                    (
                        "run verify first",
                        "verify, then set-default --dry-run=false again",
                    )
                } else {
                    (
                        "load it first",
                        "migrate-state --dry-run=false, then verify, then set-default --dry-run=false",
                    )
                };
                ctx.report.check(
                    "verify",
                    CheckStatus::Fail,
                    format!("refused: {why}; {first} (or --force)"),
                    json!({}),
                );
                ctx.report.next_steps.push(next.into());
                return Err(Error::Refused {
                    code: "verify_required",
                    message: format!(
                        "set-default needs a passed verify of the current source: {why}"
                    ),
                });
            }
            ctx.report.check(
                "verify",
                CheckStatus::Warn,
                format!("FORCED past: {why}"),
                json!({}),
            );
            ctx.report.warn(Finding::new(
                "forced",
                format!("--force: switching to postgres although {why}"),
            ));
            tracing::warn!("--force: switching to postgres although {why}");
            None
        }
    };
    ctx.report.detail("diff", &edit.diff);
    ctx.report.detail("from", &edit.from);
    ctx.report.detail("to", &edit.to);
    if dry_run {
        ctx.report.count("changed", 0);
        ctx.report
            .next_steps
            .push("set-default --dry-run=false to apply this diff".into());
        return Ok(());
    }
    let _lock = WriterLock::acquire(&t, &schema_name, &ctx.run_id())?;
    let saved = cutover::apply_edit(&edit, &cfg.backup_dir, &ctx.run_id())?;
    ctx.report.artifact("previous_config", &saved);
    ctx.report.count("changed", 1);
    cutover::record(
        &mut c,
        &schema_name,
        "set_default",
        &edit.from,
        &edit.to,
        &cfg.path,
        &cutover::sha256_hex(edit.new_text.as_bytes()),
        verify_run,
        &ctx.run_id(),
    )?;
    let cfg_flag = format!("--config {}", cfg.path.display());
    ctx.report.next_steps.extend([
        format!("restart the application so that it runs on postgres (its {} must point at PostgreSQL)", cfg.postgres.url_env),
        format!("to reverse: rollback {cfg_flag} --dry-run=false (exports what changed in PostgreSQL, then restores backend = \"{}\")", edit.from),
        format!("or by hand: set backend = \"{}\" in {} (the previous file is {}), then restart the application", edit.from, cfg.path.display(), saved.display()),
    ]);
    Ok(())
}

/// Whether the ledger records any session as migrated.
fn anything_migrated(c: &mut postgres::Client, schema_name: &str) -> Result<bool> {
    if !schema::table_exists(c, schema_name, "sessiondb_ledger")? {
        return Ok(false);
    }
    c.query_one(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE status = 'migrated')",
            qualified(schema_name, "sessiondb_ledger")
        ),
        &[],
    )
    .map(|r| r.get(0))
    .map_err(|e| Error::pg("reading the ledger", "", e))
}

/// The newest verification: (run id, source fingerprint, passed).
fn latest_verification(
    c: &mut postgres::Client,
    schema_name: &str,
) -> Result<Option<(uuid::Uuid, String, bool)>> {
    if !schema::table_exists(c, schema_name, "sessiondb_verifications")? {
        return Ok(None);
    }
    let rows = c
        .query(&format!("SELECT run_id, source_fingerprint, passed FROM {} ORDER BY verified_at DESC LIMIT 1", qualified(schema_name, "sessiondb_verifications")), &[])
        .map_err(|e| Error::pg("reading verifications", "", e))?;
    Ok(rows.first().map(|r| (r.get(0), r.get(1), r.get(2))))
}
