//! `migrate-state`: see `sessiondb::cmd::migrate_state`.
fn main() -> std::process::ExitCode {
    sessiondb::driver::binary::<sessiondb::cmd::migrate_state::Args>()
}
