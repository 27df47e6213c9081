//! The database copy: SQLite's online backup API, all pages in one step inside one read
//! transaction, so that the copy is one snapshot of a live database.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::{SQLITE_COPY, create_file};
use crate::error::{Error, Result};
use crate::source::sqlite;

/// What the database looked like before it was copied, for a later backup to tell that
/// it has not changed since: `d1:` + 128 bits of SHA-256 over the copied table's name,
/// the database file's stamp (walk.rs's rule for a state file: device, inode, size,
/// times and mode, settled) and the bytes of its `-wal` (or its absence). The WAL is
/// read, not stat-ed: SQLite run as root `fchown`s it on every open, a reader's too, so
/// its change time moves when nothing was written. `None` — never shared — when the
/// database changed within the settle time of `now` (a time taken before the stat),
/// when a rollback journal lies beside it (a write under way, or one to roll back), when
/// the WAL is over [`WAL_READ_LIMIT`], or when either is not a regular file that could
/// be read.
pub(super) fn stamp(src: &Path, table: &str, now: SystemTime) -> Option<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    // SQLite keeps the WAL and the journal beside the database's real path.
    let real = std::fs::canonicalize(src).ok()?;
    let beside = |suffix: &str| {
        let mut p = real.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    if fs_entry_exists(&beside("-journal")) {
        return None;
    }
    let mut h = Sha256::new();
    h.update(b"d1\0");
    h.update(table.as_bytes());
    h.update(b"\0");
    let db = std::fs::metadata(&real).ok().filter(|m| m.is_file())?;
    h.update(super::walk::stamp(&super::walk::Stat::of(&db), now)?.as_bytes());
    match crate::fsutil::open_regular(&beside("-wal"), false) {
        Ok(f) => {
            let (read, sha) = super::check::sha256_read(f.take(WAL_READ_LIMIT + 1)).ok()?;
            if read > WAL_READ_LIMIT {
                return None;
            }
            h.update(b"\0wal\0");
            h.update(sha.0);
            h.update(read.to_le_bytes());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => h.update(b"\0no wal\0"),
        Err(_) => return None,
    }
    Some(format!("d1:{}", hex::encode(&h.finalize()[..16])))
}

/// The largest WAL [`stamp`] reads (SQLite checkpoints at about 4 MB by default): a
/// database with a larger one is copied every time.
const WAL_READ_LIMIT: u64 = 64 << 20;

fn fs_entry_exists(p: &Path) -> bool {
    !matches!(std::fs::symlink_metadata(p), Err(e) if e.kind() == io::ErrorKind::NotFound)
}

/// How long the database copy retries while SQLite says busy or locked.
const BUSY_RETRY: Duration = Duration::from_secs(30);
const BUSY_PAUSE_MAX: Duration = Duration::from_millis(250);

/// The error for a failure writing the copy: a full disk is `disk_space`.
fn dest_err(dest: &Path, e: rusqlite::Error) -> Error {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return Error::Write {
            path: dest.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
    }
    sqlite::map_err(dest, e)
}

/// Copy the live database at `src` to the new file `dest` with SQLite's online backup
/// API, all pages in one step inside one read transaction, so the copy is one snapshot.
/// Busy and locked are retried with a short backoff for up to [`BUSY_RETRY`]. The copy
/// is left in rollback-journal mode: one self-contained file. Returns the rows the
/// source held in that snapshot.
pub(super) fn copy_sqlite(src: &Path, dest: &Path, table: &str) -> Result<u64> {
    let from = sqlite::open(src)?;
    drop(create_file(dest)?);
    let mut to = Connection::open_with_flags(
        dest,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| dest_err(dest, e))?;
    // No shared-memory file next to the copy, ever.
    to.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(|e| dest_err(dest, e))?;

    let deadline = Instant::now() + BUSY_RETRY;
    let mut pause = Duration::from_millis(5);
    let mut wait = |what: &str| -> Result<()> {
        if Instant::now() >= deadline {
            return Err(Error::Sqlite {
                path: src.to_path_buf(),
                message: format!(
                    "{what}: still busy after {}s of retries; another process holds a lock",
                    BUSY_RETRY.as_secs()
                ),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(BUSY_PAUSE_MAX);
        Ok(())
    };
    let busy = |e: &rusqlite::Error| {
        matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    };

    // The read transaction that the count and the copy share.
    let rows = loop {
        let begun = from.execute_batch("BEGIN DEFERRED").and_then(|_| {
            from.query_row(
                &format!(
                    "SELECT count(*) FROM {}",
                    crate::source::shape::ident(table)
                ),
                [],
                |r| r.get::<_, i64>(0),
            )
        });
        match begun {
            Ok(n) => break n as u64,
            Err(e) if busy(&e) => {
                let _ = from.execute_batch("ROLLBACK");
                wait("starting a read transaction")?;
            }
            Err(e) => return Err(sqlite::map_err(src, e)),
        }
    };
    let copied = (|| {
        let backup = Backup::new(&from, &mut to).map_err(|e| dest_err(dest, e))?;
        loop {
            match backup.step(-1) {
                Ok(StepResult::Done) => return Ok(()),
                Ok(StepResult::Busy | StepResult::Locked) => wait("copying")?,
                Ok(_) => {}
                Err(e) if busy(&e) => wait("copying")?,
                Err(e) => return Err(dest_err(dest, e)),
            }
        }
    })();
    let _ = from.execute_batch("COMMIT");
    copied?;
    let mode: String = to
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|e| dest_err(dest, e))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(Error::Sqlite {
            path: dest.to_path_buf(),
            message: format!("cannot leave WAL mode on the copy (journal_mode is {mode})"),
        });
    }
    to.close().map_err(|(_, e)| dest_err(dest, e))?;
    Ok(rows)
}

/// `PRAGMA integrity_check` and the row count of a copy's sessions table (`table`, the
/// configured one; `None`: SPEC §1's `sessions`, when the copy has it, else no count);
/// `Err` says what is wrong.
pub(super) fn check_sqlite_copy(
    path: &Path,
    table: Option<&str>,
) -> std::result::Result<Option<u64>, String> {
    let rel = SQLITE_COPY;
    let conn = sqlite::open_for_scan(path).map_err(|e| format!("{rel}: {e}"))?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| format!("{rel}: {e}"))?;
    let found: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| format!("{rel}: integrity_check: {e}"))?;
    if found != ["ok"] {
        return Err(format!(
            "{rel}: integrity_check: {}",
            found.into_iter().take(5).collect::<Vec<_>>().join("; ")
        ));
    }
    let name = table.unwrap_or(crate::config::DEFAULT_TABLE);
    if table.is_none()
        && crate::source::shape::read_table(&conn, path, name)
            .map_err(|e| format!("{rel}: {e}"))?
            .is_none()
    {
        return Ok(None);
    }
    conn.query_row(
        &format!("SELECT count(*) FROM {}", crate::source::shape::ident(name)),
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| Some(n as u64))
    .map_err(|e| format!("{rel}: {}", sqlite::map_err(path, e)))
}
