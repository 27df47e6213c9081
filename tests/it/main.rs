//! The one integration test binary (matklad, "Delete Cargo Integration Tests").

mod advice;
mod backup;
mod backup_check;
mod canon;
mod check;
mod cli;
mod conflicts;
mod cutover;
mod dry_run;
mod faults;
mod fixture;
mod hijack;
mod init;
mod migrate;
mod operator;
mod preflight;
mod quarantine;
mod resume;
mod rollback;
mod runbooks;
mod secrets;
mod sessiond;
mod store;
mod support;
mod tls;
mod value;
