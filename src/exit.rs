//! Exit codes, in one place (SPEC §4). Every binary exits with one of these.

/// Done; warnings allowed.
pub const OK: i32 = 0;
/// The step ran and found problems: a failed check, a difference, a conflict, invalid records.
pub const PROBLEMS: i32 = 1;
/// Usage or configuration error.
pub const USAGE: i32 = 2;
/// Operational failure: I/O, database error, lock held.
pub const OPERATIONAL: i32 = 3;
