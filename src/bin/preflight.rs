//! `preflight`: see `sessiondb::cmd::preflight`.
fn main() -> std::process::ExitCode {
    sessiondb::driver::binary::<sessiondb::cmd::preflight::Args>()
}
