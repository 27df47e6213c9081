//! `rollback` (SPEC §4). Not implemented yet: exits 2 with "not implemented yet".

use crate::cli::{Common, Ctx, DryRun, Step};
use crate::error::{Error, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub dry: DryRun,
}

impl Step for Args {
    const NAME: &'static str = "rollback";
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
