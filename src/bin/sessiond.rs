//! `sessiond`: the HTTP service on the runtime store; see `sessiondb::service`.
fn main() -> std::process::ExitCode {
    sessiondb::service::main()
}
