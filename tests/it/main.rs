//! The one integration test binary (matklad, "Delete Cargo Integration Tests").

mod backup;
mod canon;
mod check;
mod cli;
mod cutover;
mod faults;
mod fixture;
mod init;
mod migrate;
mod preflight;
mod resume;
mod runbooks;
mod secrets;
mod sessiond;
mod store;
mod support;
mod tls;
mod value;
