//! The SQLite database, opened read-only: never created, never written, a busy
//! timeout for a live database, one read transaction per scan.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::Row;
use super::fields::Raw;
use crate::error::{Error, Result};

/// The columns of SPEC §1's `sessions` table: the id, [`super::META_FIELDS`], and the
/// legacy `state` column.
pub const COLUMNS: [&str; 8] = [
    "id",
    super::META_FIELDS[0],
    super::META_FIELDS[1],
    super::META_FIELDS[2],
    super::META_FIELDS[3],
    super::META_FIELDS[4],
    super::META_FIELDS[5],
    "state",
];
const HEADER: &[u8; 16] = b"SQLite format 3\0";
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Map a SQLite error on `path` to the error it means.
pub fn map_err(path: &Path, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    let message = e.to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt) => Error::SqliteCorrupt {
            path: path.to_path_buf(),
            message,
        },
        Some(ErrorCode::NotADatabase) => Error::NotSqlite {
            path: path.to_path_buf(),
            message,
        },
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => Error::Sqlite {
            path: path.to_path_buf(),
            message: format!(
                "{message} (still locked after the {}s busy timeout; another process holds it)",
                BUSY_TIMEOUT.as_secs()
            ),
        },
        _ => Error::Sqlite {
            path: path.to_path_buf(),
            message,
        },
    }
}

/// Check that `path` is an existing SQLite file, without creating anything. Only a
/// regular file is opened (`not_regular_file` otherwise: a FIFO would block the open).
/// SQLite then opens the file again by its name, as it must to find its `-wal` and
/// `-shm` companions; a FIFO swapped in between these two opens is the one case left.
pub fn check_header(path: &Path) -> Result<()> {
    let mut f = crate::fsutil::open_regular(path, true).map_err(|e| Error::read(path, e))?;
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < 16 {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => {
                return Err(Error::Unreadable {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        }
    }
    if n == 0 {
        return Err(Error::NotSqlite {
            path: path.to_path_buf(),
            message: "the file is empty (0 bytes)".into(),
        });
    }
    if n < 16 || &head != HEADER {
        return Err(Error::NotSqlite {
            path: path.to_path_buf(),
            message: "the file does not start with the SQLite header".into(),
        });
    }
    Ok(())
}

/// Open read-only. A missing file is an error (never created). SQLite's own page cache
/// (2 MB): for lookups and single passes.
pub fn open(path: &Path) -> Result<Connection> {
    check_header(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| map_err(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| map_err(path, e))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| map_err(path, e))?;
    Ok(conn)
}

/// [`open`], with a page cache of up to 16 MB, for reading every row in id order (a
/// scan) or checking every index (`integrity_check`): a seek a row across the table, so
/// that with SQLite's default 2 MB cache every page was read again several times
/// (142,000 reads of a 22 MB database for 50,000 rows). The cache grows only as pages
/// are read; the other connections keep the default, so that a command's memory is not
/// 16 MB a connection.
pub fn open_for_scan(path: &Path) -> Result<Connection> {
    let conn = open(path)?;
    conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
        .map_err(|e| map_err(path, e))?;
    Ok(conn)
}

/// A scanning connection's page cache, at most (KiB).
const PAGE_CACHE_KIB: i64 = 16 * 1024;

/// `PRAGMA quick_check`: empty when the database is sound, else what it found.
pub fn quick_check(conn: &Connection, path: &Path) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .map_err(|e| map_err(path, e))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| map_err(path, e))?;
    let mut out = Vec::new();
    for r in rows {
        let r = r.map_err(|e| map_err(path, e))?;
        if r != "ok" {
            out.push(r);
        }
    }
    Ok(out)
}

/// Check that the `sessions` table exists with every column of SPEC §1.
pub fn check_table(conn: &Connection, path: &Path) -> Result<()> {
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info('sessions')")
        .map_err(|e| map_err(path, e))?;
    let cols: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(|e| map_err(path, e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| map_err(path, e))?;
    if cols.is_empty() {
        return Err(Error::SourceSchema {
            path: path.to_path_buf(),
            message: "no table `sessions`".into(),
        });
    }
    let missing: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .filter(|c| !cols.iter().any(|x| x.eq_ignore_ascii_case(c)))
        .collect();
    if !missing.is_empty() {
        return Err(Error::SourceSchema {
            path: path.to_path_buf(),
            message: format!("table `sessions` lacks column(s) {}", missing.join(", ")),
        });
    }
    Ok(())
}

pub fn count(conn: &Connection, path: &Path) -> Result<u64> {
    conn.query_row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .map_err(|e| map_err(path, e))
}

pub fn has_id(conn: &Connection, path: &Path, id: &str) -> Result<bool> {
    let mut stmt = conn
        .prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")
        .map_err(|e| map_err(path, e))?;
    stmt.exists([id]).map_err(|e| map_err(path, e))
}

/// Read every row in id order inside one read transaction, in chunks of `batch`. Id
/// order costs SQLite a seek a row, but PostgreSQL then appends to its primary-key
/// indexes instead of inserting at random places (measured: 27 s instead of 19 s for
/// 200,000 sessions).
pub(super) fn for_each_chunk(
    conn: &Connection,
    path: &Path,
    batch: usize,
    mut f: impl FnMut(Vec<Row>) -> Result<()>,
) -> Result<()> {
    conn.execute_batch("BEGIN DEFERRED")
        .map_err(|e| map_err(path, e))?;
    let result = (|| {
        let mut stmt = conn
            .prepare("SELECT id, user_id, status, current_step, cost, created_at, updated_at, state FROM sessions ORDER BY id")
            .map_err(|e| map_err(path, e))?;
        let mut rows = stmt.query([]).map_err(|e| map_err(path, e))?;
        let mut chunk = Vec::with_capacity(batch);
        while let Some(r) = rows.next().map_err(|e| map_err(path, e))? {
            let g = |i: usize| r.get_ref(i).map(Raw::from_sqlite);
            let row = (|| -> rusqlite::Result<Row> {
                Ok(Row {
                    id: g(0)?,
                    user_id: g(1)?,
                    status: g(2)?,
                    current_step: g(3)?,
                    cost: g(4)?,
                    created_at: g(5)?,
                    updated_at: g(6)?,
                    state: g(7)?,
                })
            })()
            .map_err(|e| map_err(path, e))?;
            chunk.push(row);
            if chunk.len() >= batch {
                f(std::mem::replace(&mut chunk, Vec::with_capacity(batch)))?;
            }
        }
        if !chunk.is_empty() {
            f(chunk)?;
        }
        Ok(())
    })();
    let _ = conn.execute_batch("COMMIT");
    result
}
