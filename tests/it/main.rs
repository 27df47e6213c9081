//! The one integration test binary (matklad, "Delete Cargo Integration Tests").

mod backup;
mod canon;
mod check;
mod cli;
mod cutover;
mod fixture;
mod migrate;
mod resume;
mod secrets;
mod sessiond;
mod store;
mod support;
