//! `sessiondb migrate to postgres` (SPEC §4): preflight → backup → migrate-state →
//! verify → set-default, as one command with one report. Not implemented yet.

use crate::cli::{Common, Ctx, DryRun, Step};
use crate::error::{Error, Result};

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
}

impl Step for Args {
    const NAME: &'static str = "migrate-to-postgres";
    fn common(&self) -> &Common {
        &self.common
    }
    fn dry_run(&self) -> Option<bool> {
        Some(self.dry.dry_run)
    }
    fn run(&self, _ctx: &mut Ctx) -> Result<()> {
        Err(Error::NotImplemented { step: Self::NAME })
    }
}
