//! `backup` (SPEC §4). Not implemented yet: exits 2 with "not implemented yet".

use crate::cli::{Common, Ctx, Step};
use crate::error::{Error, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
}

impl Step for Args {
    const NAME: &'static str = "backup";
    fn common(&self) -> &Common {
        &self.common
    }
    fn run(&self, _ctx: &mut Ctx) -> Result<()> {
        Err(Error::NotImplemented { step: Self::NAME })
    }
}
