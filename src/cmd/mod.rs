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

use crate::driver::{Step, exit_code, run_step, usage_error};

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
    #[command(about = <preflight::Args as Step>::ABOUT)]
    Preflight(preflight::Args),
    #[command(about = <backup::Args as Step>::ABOUT)]
    Backup(backup::Args),
    #[command(about = <migrate_state::Args as Step>::ABOUT)]
    MigrateState(migrate_state::Args),
    #[command(about = <verify::Args as Step>::ABOUT)]
    Verify(verify::Args),
    #[command(about = <set_default::Args as Step>::ABOUT)]
    SetDefault(set_default::Args),
    #[command(about = <rollback::Args as Step>::ABOUT)]
    Rollback(rollback::Args),
    #[command(about = <check::Args as Step>::ABOUT)]
    Check(check::Args),
    #[command(
        about = "The whole sequence, step by step: `sessiondb migrate to postgres` (see its --help)"
    )]
    Migrate(migrate_to::MigrateArgs),
    #[command(about = <generate_fixture::Args as Step>::ABOUT)]
    GenerateFixture(generate_fixture::Args),
    #[command(about = <init::Args as Step>::ABOUT)]
    Init(init::Args),
}

/// The step a command line names (`sessiondb migrate-state ...` → `migrate-state`), for
/// the report of a usage error; `sessiondb` when it names none.
fn step_named(args: &[String]) -> &'static str {
    use clap::CommandFactory;
    let cmd = Umbrella::command();
    let Some(first) = args.iter().find(|a| !a.starts_with('-')) else {
        return "sessiondb";
    };
    if first == "migrate" {
        return <migrate_to::Args as Step>::NAME;
    }
    cmd.get_subcommands()
        .map(|c| c.get_name())
        .find(|n| *n == first)
        .map_or("sessiondb", |n| match n {
            "preflight" => <preflight::Args as Step>::NAME,
            "backup" => <backup::Args as Step>::NAME,
            "migrate-state" => <migrate_state::Args as Step>::NAME,
            "verify" => <verify::Args as Step>::NAME,
            "set-default" => <set_default::Args as Step>::NAME,
            "rollback" => <rollback::Args as Step>::NAME,
            "check" => <check::Args as Step>::NAME,
            "generate-fixture" => <generate_fixture::Args as Step>::NAME,
            "init" => <init::Args as Step>::NAME,
            _ => "sessiondb",
        })
}

/// The `sessiondb` binary.
pub fn umbrella() -> ExitCode {
    let u = match Umbrella::try_parse() {
        Ok(u) => u,
        Err(e) => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            return exit_code(usage_error(step_named(&args), e));
        }
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
