//! `sessiondb migrate to postgres [--dry-run=false] [--set-default]` (SPEC §4):
//! preflight → backup (real runs) → migrate-state → verify → set-default when asked,
//! stopping at the first failing step; one report holding each step's report.

use serde::Serialize;

use crate::cmd::{backup, migrate_state, preflight, set_default, verify};
use crate::driver::{self, Common, Ctx, DryRun, Step};
use crate::error::{Error, Result};
use crate::report::{CheckStatus, Report};

#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub to: To,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum To {
    #[command(about = "Migrate the session store to another backend: `migrate to postgres`")]
    To(ToArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ToArgs {
    #[command(subcommand)]
    pub target: Dest,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Dest {
    #[command(about = <Args as crate::driver::Step>::ABOUT)]
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

/// `details` of the umbrella's report: each step's own report, in order.
#[derive(Debug, Default, Serialize)]
pub struct Details {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Report>>,
}

impl Step for Args {
    const NAME: &'static str = "migrate-to-postgres";
    const ABOUT: &'static str = "Run preflight, backup, migrate-state and verify in order (and set-default with --set-default), stopping at the first that fails; a dry run unless --dry-run=false.";
    type Details = Details;
    crate::step_flags!(dry);
    fn run(&self, ctx: &mut Ctx, d: &mut Details) -> Result<()> {
        // The config as the umbrella finds it (its own warnings, backend_drift judged
        // again at the end against the file as the steps leave it); a config that does
        // not load fails the first step, which says why.
        let _ = ctx.config();
        let mut seq = Sequence {
            ctx,
            reports: Vec::new(),
        };
        let result = self.steps(&mut seq);
        let Sequence { ctx, reports } = seq;
        let counts = reports
            .iter()
            .rev()
            .find(|r| r.step == migrate_state::Args::NAME)
            .map(|r| r.counts.clone());
        d.steps = Some(reports);
        if let Err((name, e)) = result {
            ctx.report.next_steps.push(format!("{name} failed: fix it (see its report), then run this again; finished steps are safe to repeat"));
            return Err(e);
        }
        if let Some(counts) = counts {
            ctx.report.counts = counts;
        }
        if self.dry.dry_run {
            ctx.report
                .next_steps
                .push("sessiondb migrate to postgres --dry-run=false".into());
        }
        Ok(())
    }
}

impl Args {
    /// The flags every step gets: the config and the report folder (the report file
    /// is the umbrella's alone).
    fn common(&self) -> Common {
        Common {
            config: self.common.config.clone(),
            report_file: None,
            report_dir: self.common.report_dir.clone(),
            quiet: self.common.quiet,
        }
    }

    /// preflight → backup (real runs) → migrate-state → verify (real runs) →
    /// set-default (when asked), each step's typed flags built here.
    fn steps(&self, seq: &mut Sequence<'_>) -> std::result::Result<(), (&'static str, Error)> {
        let dry = DryRun {
            dry_run: self.dry.dry_run,
        };
        seq.run(&preflight::Args {
            common: self.common(),
            quarantine: self.quarantine,
        })?;
        if !dry.dry_run {
            seq.run(&backup::Args {
                common: self.common(),
                dry_run: Some(false),
                include_uploads: false,
                verify: None,
                extract: None,
                to: None,
                prune: false,
                keep: None,
            })?;
        }
        seq.run(&migrate_state::Args {
            quarantine: self.quarantine,
            ..migrate_state::Args::new(self.common(), dry.clone())
        })?;
        if !dry.dry_run {
            seq.run(&verify::Args {
                common: self.common(),
                sample: None,
                smoke_url: None,
            })?;
        }
        if self.set_default {
            seq.run(&set_default::Args {
                common: self.common(),
                dry,
                force: false,
            })?;
        }
        Ok(())
    }
}

/// The steps run so far, and the umbrella's report they are told in.
struct Sequence<'c> {
    ctx: &'c mut Ctx,
    reports: Vec<Report>,
}

impl Sequence<'_> {
    /// Run one step (its report emitted only inside the umbrella's) and tell its
    /// outcome in a check; a failed step stops the sequence.
    fn run<S: Step>(&mut self, step: &S) -> std::result::Result<(), (&'static str, Error)> {
        let name = S::NAME;
        let r = driver::execute(step, self.ctx.env.clone());
        let failed = r.exit_code != 0;
        self.ctx.report.check(
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
            self.ctx.report.warn(w.clone());
        }
        let error = failed.then(|| Error::StepFailed {
            step: name.to_owned(),
            exit: r.exit_code,
            message: r
                .errors
                .first()
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_default(),
        });
        self.reports.push(r);
        match error {
            Some(e) => Err((name, e)),
            None => Ok(()),
        }
    }
}
