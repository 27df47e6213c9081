//! `backup`: see `sessiondb::cmd::backup`.
fn main() -> std::process::ExitCode {
    sessiondb::cli::binary::<sessiondb::cmd::backup::Args>()
}
