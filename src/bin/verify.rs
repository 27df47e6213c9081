//! `verify`: see `sessiondb::cmd::verify`.
fn main() -> std::process::ExitCode {
    sessiondb::cli::binary::<sessiondb::cmd::verify::Args>()
}
