//! `preflight`: see `sessiondb::cmd::preflight`.
fn main() -> std::process::ExitCode {
    sessiondb::cli::binary::<sessiondb::cmd::preflight::Args>()
}
