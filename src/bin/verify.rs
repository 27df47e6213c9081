//! `verify`: see `sessiondb::cmd::verify`.
fn main() -> std::process::ExitCode {
    sessiondb::driver::binary::<sessiondb::cmd::verify::Args>()
}
