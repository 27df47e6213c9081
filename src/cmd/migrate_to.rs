//! `sessiondb migrate to postgres [--dry-run=false] [--set-default]` (SPEC §4):
//! preflight → backup (real runs) → migrate-state → verify → set-default when asked,
//! stopping at the first failing step; one report holding each step's report.

use crate::cli::{self, Common, Ctx, DryRun, Step};
use crate::cmd;
use crate::error::{Error, Result};
use crate::report::{CheckStatus, Report};

#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub to: To,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum To {
    /// migrate to <backend>
    To(ToArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ToArgs {
    #[command(subcommand)]
    pub target: Dest,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Dest {
    /// preflight, backup, migrate-state, verify, and set-default when asked.
    Postgres(Args),
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub dry: DryRun,
    /// Also switch the config's backend to postgres after a passed verify.
    #[arg(long)]
    pub set_default: bool,
    /// Set invalid records aside instead of refusing (passed to preflight and migrate-state).
    #[arg(long)]
    pub quarantine: bool,
}

impl Step for Args {
    const NAME: &'static str = "migrate-to-postgres";
    fn common(&self) -> &Common {
        &self.common
    }
    fn dry_run(&self) -> Option<bool> {
        Some(self.dry.dry_run)
    }
    fn run(&self, ctx: &mut Ctx) -> Result<()> {
        let mut base: Vec<String> = Vec::new();
        if let Some(c) = &self.common.config {
            base.extend(["--config".into(), c.display().to_string()]);
        }
        if self.common.quiet {
            base.push("--quiet".into());
        }
        let dry = format!("--dry-run={}", self.dry.dry_run);
        let q: Vec<String> = if self.quarantine {
            vec!["--quarantine".into()]
        } else {
            vec![]
        };
        let with = |extra: &[String]| -> Vec<String> {
            base.iter().cloned().chain(extra.iter().cloned()).collect()
        };
        let mut plan: Vec<(&str, Vec<String>)> = vec![("preflight", with(&q))];
        if !self.dry.dry_run {
            plan.push(("backup", with(&[])));
        }
        plan.push((
            "migrate-state",
            with(&[vec![dry.clone()], q.clone()].concat()),
        ));
        if !self.dry.dry_run {
            plan.push(("verify", with(&[])));
        }
        if self.set_default {
            plan.push(("set-default", with(std::slice::from_ref(&dry))));
        }
        // The config as the umbrella finds it (its own warnings, backend_drift judged
        // again at the end against the file as the steps leave it); a config that does
        // not load fails the first step, which says why.
        let _ = ctx.config();
        let mut reports: Vec<Report> = Vec::new();
        for (name, argv) in plan {
            let r = run_named(name, &argv, ctx)?;
            let failed = r.exit_code != 0;
            ctx.report.check(
                name,
                if failed {
                    CheckStatus::Fail
                } else if r.status == crate::report::Status::Warn {
                    CheckStatus::Warn
                } else {
                    CheckStatus::Pass
                },
                format!("{name}: {:?} (exit {})", r.status, r.exit_code).to_lowercase(),
                serde_json::json!({"run_id": r.run_id}),
            );
            // Each step's drift warning speaks of the config as that step found it: the
            // umbrella's own speaks of the config as the steps left it.
            for w in r.warnings.iter().filter(|w| w.code != "backend_drift") {
                ctx.report.warn(w.clone());
            }
            let code = r.exit_code;
            let first = r
                .errors
                .first()
                .map(|e| format!("{}: {}", e.code, e.message));
            reports.push(r);
            if failed {
                ctx.report.detail("steps", &reports);
                ctx.report.next_steps.push(format!("{name} failed: fix it (see its report), then run this again; finished steps are safe to repeat"));
                return Err(Error::StepFailed {
                    step: name.to_owned(),
                    exit: code,
                    message: first.unwrap_or_default(),
                });
            }
        }
        if let Some(last) = reports.iter().rev().find(|r| r.step == "migrate-state") {
            ctx.report.counts = last.counts.clone();
        }
        ctx.report.detail("steps", &reports);
        if self.dry.dry_run {
            ctx.report
                .next_steps
                .push("sessiondb migrate to postgres --dry-run=false".into());
        }
        Ok(())
    }
}

fn run_named(name: &str, argv: &[String], ctx: &Ctx) -> Result<Report> {
    let env = ctx.env.clone();
    let usage = |e: clap::Error| Error::Usage(e.to_string());
    Ok(match name {
        "preflight" => cli::execute(
            &cli::parse_args::<cmd::preflight::Args>(argv).map_err(usage)?,
            env,
        ),
        "backup" => cli::execute(
            &cli::parse_args::<cmd::backup::Args>(argv).map_err(usage)?,
            env,
        ),
        "migrate-state" => cli::execute(
            &cli::parse_args::<cmd::migrate_state::Args>(argv).map_err(usage)?,
            env,
        ),
        "verify" => cli::execute(
            &cli::parse_args::<cmd::verify::Args>(argv).map_err(usage)?,
            env,
        ),
        "set-default" => cli::execute(
            &cli::parse_args::<cmd::set_default::Args>(argv).map_err(usage)?,
            env,
        ),
        other => return Err(Error::Usage(format!("unknown step {other}"))),
    })
}
