//! `migrate-state`: see `sessiondb::cmd::migrate_state`.
fn main() -> std::process::ExitCode {
    sessiondb::cli::binary::<sessiondb::cmd::migrate_state::Args>()
}
