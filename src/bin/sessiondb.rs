//! `sessiondb`: the umbrella over every step; see `sessiondb::cmd::umbrella`.
fn main() -> std::process::ExitCode {
    sessiondb::cmd::umbrella()
}
