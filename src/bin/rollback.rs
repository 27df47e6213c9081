//! `rollback`: see `sessiondb::cmd::rollback`.
fn main() -> std::process::ExitCode {
    sessiondb::driver::binary::<sessiondb::cmd::rollback::Args>()
}
