//! `sessiondb`: the umbrella over every step; see `sessiondb::cli::umbrella`.
fn main() -> std::process::ExitCode {
    sessiondb::cli::umbrella()
}
