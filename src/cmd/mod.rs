//! One module per command: its `clap::Args` and its `run`. A binary and its umbrella
//! subcommand share both.

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
