//! One module per command: its `clap::Args`, its report's details and its `run`, read
//! top to bottom (the writing commands: resolve → plan → act). A binary and its
//! umbrella subcommand share both; the umbrella's enum is here, beside them, so that
//! the driver (`crate::driver`) knows no command.

pub mod backup;
pub mod check;
pub mod generate_fixture;
pub mod init;
pub mod migrate_state;
pub mod migrate_to;
pub mod preflight;
pub mod rollback;
pub mod set_default;
pub mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::driver::{exit_code, run_step, usage_error};

#[derive(Debug, Parser)]
#[command(
    name = "sessiondb",
    version,
    about = "Move a session store from SQLite and JSON files to PostgreSQL, safely."
)]
struct Umbrella {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read-only checks of the source, the backup location, PostgreSQL and the plan.
    Preflight(preflight::Args),
    /// A verified, timestamped copy of the legacy store.
    Backup(backup::Args),
    /// Load every session into PostgreSQL (dry run unless --dry-run=false).
    MigrateState(migrate_state::Args),
    /// Prove the copy, session by session.
    Verify(verify::Args),
    /// Switch the config's backend to postgres (dry run unless --dry-run=false).
    SetDefault(set_default::Args),
    /// Switch back, exporting what changed in PostgreSQL (dry run unless --dry-run=false).
    Rollback(rollback::Args),
    /// Check a backend: JSON, SQLite + files, or PostgreSQL.
    Check(check::Args),
    /// The whole sequence: `sessiondb migrate to postgres`.
    Migrate(migrate_to::MigrateArgs),
    /// Write a realistic legacy store and its sessiondb.toml.
    GenerateFixture(generate_fixture::Args),
    /// Inspect a store and propose a commented sessiondb.toml for it.
    Init(init::Args),
}

/// The `sessiondb` binary.
pub fn umbrella() -> ExitCode {
    let u = match Umbrella::try_parse() {
        Ok(u) => u,
        Err(e) => return exit_code(usage_error("sessiondb", e)),
    };
    let code = match &u.cmd {
        Command::Preflight(a) => run_step(a),
        Command::Backup(a) => run_step(a),
        Command::MigrateState(a) => run_step(a),
        Command::Verify(a) => run_step(a),
        Command::SetDefault(a) => run_step(a),
        Command::Rollback(a) => run_step(a),
        Command::Check(a) => run_step(a),
        Command::Migrate(m) => match &m.to {
            migrate_to::To::To(t) => match &t.target {
                migrate_to::Dest::Postgres(a) => run_step(a),
            },
        },
        Command::GenerateFixture(a) => run_step(a),
        Command::Init(a) => run_step(a),
    };
    exit_code(code)
}
