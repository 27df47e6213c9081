//! `generate-fixture` (SPEC §4): a realistic legacy store and its `sessiondb.toml`, for
//! demos, tests and benchmarks. The generator is `crate::fixture`; this is its flags
//! and its report.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::driver::{Common, Ctx, Step};
use crate::error::{Error, Result};
use crate::fixture;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The folder to write the store into; it must be new or empty.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// How many valid sessions to write.
    #[arg(long, value_name = "N")]
    pub sessions: u64,
    /// The same seed writes the same store, byte for byte.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Also write one invalid record of each kind (ids say which: bad-invalid-json...),
    /// give 1% of the sessions a SQLite state column that differs from their state file
    /// (state_conflict) and write two orphan state files. Without it the store migrates
    /// with no warning about its data.
    #[arg(long)]
    pub bad: bool,
    /// Declare cost and the timestamps without a type, so SQLite keeps the storage class
    /// each value was written with (TEXT costs, INTEGER epochs). With the declared types
    /// of the contract (the default) SQLite converts them on insert.
    #[arg(long)]
    pub loose_types: bool,
    /// The store's shape: `default` (sessiondb's own table, state files, the JSON
    /// store) or `app` (an application's own users and sessions tables).
    #[arg(long, value_enum, default_value_t = fixture::Schema::Default)]
    pub schema: fixture::Schema,
    #[command(flatten)]
    pub common: Common,
}

/// `details` of a generate-fixture report: what was written, as the generator counts it.
#[derive(Debug, Default, Serialize)]
#[serde(untagged)]
pub enum Details {
    #[default]
    None,
    Default(Box<fixture::Summary>),
    App(Box<fixture::app::Summary>),
}

impl Step for Args {
    const NAME: &'static str = "generate-fixture";
    const ABOUT: &'static str = "Write a realistic legacy store and its sessiondb.toml into a new folder, to try the tools on; writes only into that folder.";
    type Details = Details;
    crate::step_flags!();
    fn run(&self, ctx: &mut Ctx, d: &mut Details) -> Result<()> {
        let opts = fixture::Options {
            out: std::path::absolute(&self.out).map_err(|e| Error::Unreadable {
                path: self.out.clone(),
                source: e,
            })?,
            sessions: self.sessions,
            seed: self.seed,
            bad: self.bad,
            loose_types: self.loose_types,
            schema: self.schema,
        };
        tracing::info!(
            "writing {} sessions (seed {}) into {}",
            opts.sessions,
            opts.seed,
            opts.out.display()
        );
        if opts.schema == fixture::Schema::App {
            return run_app(ctx, &opts, d);
        }
        let sum = fixture::generate(&opts)?;
        let config_path = read_back(ctx, &opts)?;
        let r = &mut ctx.report;
        r.count("sessions", sum.sessions);
        r.count("invalid", sum.bad.len() as u64);
        r.count("bytes", sum.bytes.total);
        r.artifact("json_store", &opts.out.join(fixture::JSON_STORE_PATH));
        r.next_steps.push(format!(
            "sessiondb preflight --config {}",
            config_path.display()
        ));
        tracing::info!(
            "wrote {} sessions, {} state files, {} (mean state {})",
            sum.sessions,
            sum.state_files,
            crate::progress::human_bytes(sum.bytes.total),
            crate::progress::human_bytes(sum.bytes.state_mean)
        );
        *d = Details::Default(Box::new(sum));
        Ok(())
    }
}

/// Read the config written back through the real parser (what was written must load),
/// and name the store's files in the report. Returns the config's path.
fn read_back(ctx: &mut Ctx, opts: &fixture::Options) -> Result<std::path::PathBuf> {
    let config_path = opts.out.join(fixture::CONFIG_FILE);
    let text = crate::config::read_text(&config_path)?.ok_or_else(|| Error::Unreadable {
        path: config_path.clone(),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    let cfg = Config::parse(&config_path, &text, &ctx.env)?;
    ctx.report.source = cfg.source_json();
    ctx.report.artifact("config", &config_path);
    ctx.report
        .artifact("sqlite", &opts.out.join(fixture::SQLITE_PATH));
    ctx.report
        .artifact("sessions_dir", &opts.out.join(fixture::SESSIONS_DIR));
    Ok(config_path)
}

/// `--schema app`: the application's own schema, and its config read back.
fn run_app(ctx: &mut Ctx, opts: &fixture::Options, d: &mut Details) -> Result<()> {
    let sum = fixture::app::generate(opts)?;
    let config_path = read_back(ctx, opts)?;
    let r = &mut ctx.report;
    r.count("sessions", sum.sessions);
    r.count("bytes", sum.bytes.total);
    r.next_steps.push(format!(
        "sessiondb check --config {}",
        config_path.display()
    ));
    tracing::info!(
        "wrote {} sessions of {} users ({} soft-deleted, {} without a cost), {} state files, {}",
        sum.sessions,
        sum.users,
        sum.deleted,
        sum.null_costs,
        sum.state_files,
        crate::progress::human_bytes(sum.bytes.total)
    );
    *d = Details::App(Box::new(sum));
    Ok(())
}
