//! sessiondb: move an application's session store off SQLite and JSON files onto
//! PostgreSQL without losing a byte, and the runtime store the application uses on both
//! sides of the switch. See `ARCHITECTURE.md` for the map.
#![deny(clippy::print_stdout)]

pub mod backup;
pub mod canon;
pub mod cmd;
pub mod config;
pub mod cutover;
pub mod driver;
pub mod error;
pub mod exit;
pub mod fault;
pub mod fixture;
pub mod fsutil;
pub mod init;
pub mod pg;
pub mod plan;
pub mod progress;
pub mod redact;
pub mod report;
pub mod service;
pub mod smoke;
pub mod source;
pub mod store;
pub mod term;
pub mod value;
