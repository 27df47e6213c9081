//! `set-default`: see `sessiondb::cmd::set_default`.
fn main() -> std::process::ExitCode {
    sessiondb::driver::binary::<sessiondb::cmd::set_default::Args>()
}
