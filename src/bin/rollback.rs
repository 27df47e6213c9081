//! `rollback`: see `sessiondb::cmd::rollback`.
fn main() -> std::process::ExitCode {
    sessiondb::cli::binary::<sessiondb::cmd::rollback::Args>()
}
