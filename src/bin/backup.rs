//! `backup`: see `sessiondb::cmd::backup`.
fn main() -> std::process::ExitCode {
    sessiondb::driver::binary::<sessiondb::cmd::backup::Args>()
}
