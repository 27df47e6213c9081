//! `set-default`: see `sessiondb::cmd::set_default`.
fn main() -> std::process::ExitCode {
    sessiondb::cli::binary::<sessiondb::cmd::set_default::Args>()
}
