//! `set-default` (SPEC §4): switch the config's backend to postgres after a passed
//! verify of the current source. Dry run by default: it shows the diff it would apply.
//!
//! resolve (config, target) → the writers' lock (a dry run sees it free) → plan (the
//! config edit, the verification it stands on, or the refusal) → act (the edit, then
//! the cutover record). The verification is read only while the lock is held, so a
//! writer cannot change the target between the check and the switch.

use serde_json::json;

use crate::config::{Backend, Config, Target};
use crate::cutover::{self, Edit};
use crate::driver::{Common, Ctx, DryRun, Step};
use crate::error::{Error, Result};
use crate::pg::ledger::{self, runs};
use crate::pg::lock::Guard;
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

crate::details! {
    /// `details` of a set-default report: the edit, as the dry run shows it.
    pub struct Details {
        /// The changed lines, as `-old` / `+new`.
        pub diff: Vec<String>,
        pub from: String,
        pub to: String,
    }
}

impl Step for Args {
    const NAME: &'static str = "set-default";
    const ABOUT: &'static str = "Switch the config's backend to postgres once verify has passed; a dry run unless --dry-run=false, which rewrites the config file.";
    type Details = Details;
    crate::step_flags!(dry);
    fn run(&self, ctx: &mut Ctx, details: &mut Details) -> Result<()> {
        run(ctx, self, details)
    }
}

/// What a real run does: this edit, standing on this verification (`None`: forced).
struct Plan {
    edit: Edit,
    verify_run: Option<uuid::Uuid>,
}

pub fn run(ctx: &mut Ctx, args: &Args, d: &mut Details) -> Result<()> {
    let cfg = ctx.config()?;
    let t = ctx.target(Some(&cfg))?;
    let _lock = Guard::take(&t, &cfg.postgres.schema, &ctx.run_id(), args.dry.dry_run)?;
    let mut c = crate::pg::connect(&t)?;
    let Some(plan) = plan(ctx, &cfg, &t, &mut c, args.force)? else {
        return Ok(());
    };
    d.diff = Some(plan.edit.diff.clone());
    d.from = Some(plan.edit.from.clone());
    d.to = Some(plan.edit.to.clone());
    if args.dry.dry_run {
        ctx.report.count("changed", 0);
        ctx.report
            .next_steps
            .push("set-default --dry-run=false to apply this diff".into());
        return Ok(());
    }
    act(ctx, &cfg, &mut c, &plan)
}

/// Every read that decides the switch, under the lock: the config edit (`None`: the
/// config already says postgres), and the verification it stands on.
fn plan(
    ctx: &mut Ctx,
    cfg: &Config,
    t: &Target,
    c: &mut postgres::Client,
    force: bool,
) -> Result<Option<Plan>> {
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
        return Ok(None);
    };
    if let Some(w) = cutover::symlink_warning(&edit) {
        ctx.report.warn(w);
    }
    let verify_run = verification(ctx, cfg, t, c, force)?;
    Ok(Some(Plan { edit, verify_run }))
}

/// The passed verify of the current source the switch stands on; without one, the
/// refusal (`verify_required`), or with `--force` a loud warning.
fn verification(
    ctx: &mut Ctx,
    cfg: &Config,
    t: &Target,
    c: &mut postgres::Client,
    force: bool,
) -> Result<Option<uuid::Uuid>> {
    let schema_name = &cfg.postgres.schema;
    let fp = Source::from_config(cfg).quick_fingerprint()?;
    let latest = runs::latest_verification(c, schema_name)?;
    if let Some(v) = latest
        .as_ref()
        .filter(|v| v.passed && v.source_fingerprint == fp)
    {
        ctx.report.check(
            "verify",
            CheckStatus::Pass,
            format!("verify run {} passed on the current source", v.run_id),
            json!({"run_id": v.run_id.to_string()}),
        );
        return Ok(Some(v.run_id));
    }
    let migrated = ledger::any_migrated(c, schema_name)?;
    let why = match &latest {
        _ if !migrated => format!("nothing was migrated to {} yet", t.display),
        None => "no verify has been recorded".to_owned(),
        Some(v) if !v.passed => format!("the newest verify ({}) did not pass", v.run_id),
        Some(v) => format!(
            "the newest passed verify ({}) was of an older state of the source",
            v.run_id
        ),
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
        return Err(Error::VerifyRequired { why });
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
    Ok(None)
}

/// The edit (compare-and-swap, atomic, the previous file kept), then its record.
fn act(ctx: &mut Ctx, cfg: &Config, c: &mut postgres::Client, plan: &Plan) -> Result<()> {
    let edit = &plan.edit;
    let run_id = ctx.run_id();
    let saved = cutover::apply_edit(edit, &cfg.backup_dir, &run_id)?;
    ctx.report.artifact("previous_config", &saved);
    ctx.report.count("changed", 1);
    runs::record_cutover(
        c,
        &cfg.postgres.schema,
        &runs::NewCutover {
            kind: runs::Kind::SetDefault,
            from: &edit.from,
            to: &edit.to,
            config_path: &cfg.path,
            config_sha256: &cutover::sha256_hex(edit.new_text.as_bytes()),
            verify_run: plan.verify_run,
            run_id: &uuid::Uuid::parse_str(&run_id).expect("run ids are uuids"),
        },
    )?;
    let cfg_flag = format!("--config {}", cfg.path.display());
    ctx.report.next_steps.extend([
        format!("restart the application so that it runs on postgres (its {} must point at PostgreSQL)", cfg.postgres.url_env),
        format!("to reverse: rollback {cfg_flag} --dry-run=false (exports what changed in PostgreSQL, then restores backend = \"{}\")", edit.from),
        format!("or by hand: set backend = \"{}\" in {} (the previous file is {}), then restart the application", edit.from, cfg.path.display(), saved.display()),
    ]);
    Ok(())
}
