//! The SQLite + state files backend: the legacy layout of SPEC §1, written the way the
//! application wrote it, but safely. One read-write connection with a busy timeout,
//! used from `spawn_blocking`; every write takes SQLite's write lock first
//! (`BEGIN IMMEDIATE`), writes `state.json` atomically (temp file, fsync, rename) and
//! never through a symlink ([`crate::source::write`]), and commits. An id that is unsafe as a path component keeps its state in the `state`
//! column and never becomes a path.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::error::{Error, Result};
use super::state::State;
use super::{Meta, MetaPatch, Page, SessionSummary, ValidNew};
use crate::error::Error as CrateError;
use crate::source::fields::{self, Raw};
use crate::source::write::{Sessions, Slot};
use crate::source::{files, parse_meta, sqlite as legacy};

#[derive(Clone)]
pub(crate) struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: PathBuf,
    dir: PathBuf,
    /// `dir` with its links resolved: symlinks must stay under it.
    root: Option<PathBuf>,
    conn: Mutex<Connection>,
}

const COLUMNS: &str = "user_id, status, current_step, cost, created_at, updated_at";

impl SqliteStore {
    pub(crate) async fn open(
        db: &Path,
        sessions_dir: &Path,
        busy_timeout: Duration,
    ) -> Result<SqliteStore> {
        let (db, dir) = (db.to_path_buf(), sessions_dir.to_path_buf());
        let inner = tokio::task::spawn_blocking(move || -> Result<Inner> {
            legacy::check_header(&db)?;
            let conn = Connection::open_with_flags(
                &db,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| legacy::map_err(&db, e))?;
            conn.busy_timeout(busy_timeout)
                .map_err(|e| legacy::map_err(&db, e))?;
            legacy::check_table(&conn, &db)?;
            crate::fsutil::check_kind(&dir, true).map_err(|e| CrateError::read(&dir, e))?;
            if !dir.is_dir() {
                return Err(Error::Backend(CrateError::Unreadable {
                    path: dir,
                    source: std::io::Error::new(
                        ErrorKind::NotFound,
                        "sqlite.sessions_dir is not a folder (is a volume missing?)",
                    ),
                }));
            }
            Ok(Inner {
                root: std::fs::canonicalize(&dir).ok(),
                db,
                dir,
                conn: Mutex::new(conn),
            })
        })
        .await
        .map_err(join_err)??;
        Ok(SqliteStore {
            inner: Arc::new(inner),
        })
    }

    pub(crate) fn display(&self) -> String {
        format!("{} + {}", self.inner.db.display(), self.inner.dir.display())
    }

    /// Run `f` with the connection on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner, &mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&inner, &mut conn)
        })
        .await
        .map_err(join_err)?
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        self.run(|i, c| {
            c.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(|e| sq(&i.db, e))?;
            if !i.dir.is_dir() {
                return Err(Error::Backend(CrateError::Unreadable {
                    path: i.dir.clone(),
                    source: std::io::Error::new(ErrorKind::NotFound, "not a folder"),
                }));
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn create(&self, n: ValidNew) -> Result<()> {
        self.run(move |i, c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sq(&i.db, e))?;
            if exists(&tx, &i.db, &n.id)?.is_some() {
                return Err(Error::AlreadyExists { id: n.id });
            }
            let as_file = fields::path_safe(&n.id);
            let file = i.dir.join(&n.id).join("state.json");
            let sessions = if as_file { Some(i.sessions()?) } else { None };
            let slot = match &sessions {
                Some(d) => Some(d.slot(&n.id).map_err(|e| store_err(&n.id, e))?),
                None => None,
            };
            if matches!(slot, Some(Slot::File { .. })) {
                return Err(Error::Backend(CrateError::Conflict {
                    message: format!(
                        "session {:?}: {} exists without a row (an orphan state file); it is never overwritten: migrate or move it first",
                        n.id,
                        file.display()
                    ),
                }));
            }
            let column = match (&n.state, as_file) {
                (Some(s), false) => Some(s.as_str().to_owned()),
                _ => None,
            };
            tx.execute(
                "INSERT INTO sessions (id, user_id, status, current_step, cost, created_at, updated_at, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    n.id,
                    n.meta.user_id,
                    n.meta.status,
                    n.meta.current_step,
                    n.meta.cost,
                    n.meta.created_at.as_ref().map(fields::fmt_ts),
                    n.meta.updated_at.as_ref().map(fields::fmt_ts),
                    column
                ],
            )
            .map_err(|e| sq(&i.db, e))?;
            let mut created = None;
            if let (Some(s), Some(d)) = (&n.state, &sessions) {
                created = Some(d.write(&n.id, s.as_str().as_bytes()).map_err(|e| store_err(&n.id, e))?);
            }
            if let Err(e) = tx.commit() {
                // The row is not there: take back the file written for it.
                if let (Some(made_folder), Some(d)) = (created, &sessions) {
                    let _ = d.remove(&n.id, made_folder);
                }
                return Err(sq(&i.db, e));
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<(Meta, Option<State>)>> {
        let id = id.to_owned();
        self.run(move |i, c| {
            let row = c
                .query_row(
                    &format!("SELECT {COLUMNS}, state FROM sessions WHERE id = ?1"),
                    [&id],
                    |r| Ok((raw_meta(r, 0)?, Raw::from_sqlite(r.get_ref(6)?))),
                )
                .optional()
                .map_err(|e| sq(&i.db, e))?;
            let Some((raw, column)) = row else {
                return Ok(None);
            };
            let meta = meta(&id, &raw)?;
            let state = i.read_state(&id, column)?;
            Ok(Some((meta, state)))
        })
        .await
    }

    pub(crate) async fn state(&self, id: &str) -> Result<Option<State>> {
        let id = id.to_owned();
        self.run(move |i, c| {
            let column = c
                .query_row("SELECT state FROM sessions WHERE id = ?1", [&id], |r| {
                    Ok(Raw::from_sqlite(r.get_ref(0)?))
                })
                .optional()
                .map_err(|e| sq(&i.db, e))?;
            match column {
                None => Ok(None),
                Some(col) => i.read_state(&id, col),
            }
        })
        .await
    }

    pub(crate) async fn put_state(&self, id: &str, s: State, at: DateTime<Utc>) -> Result<()> {
        let id = id.to_owned();
        self.run(move |i, c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sq(&i.db, e))?;
            i.write_one(&tx, &id, &s, &at)?;
            tx.commit().map_err(|e| sq(&i.db, e))
        })
        .await
    }

    /// Write many states in one SQLite transaction; one session's failure (its file, or
    /// no such session) does not stop the others.
    pub(crate) async fn write_states(
        &self,
        items: Vec<(String, State)>,
        at: DateTime<Utc>,
    ) -> Result<Vec<Option<Error>>> {
        self.run(move |i, c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sq(&i.db, e))?;
            let out = items
                .iter()
                .map(|(id, s)| i.write_one(&tx, id, s, &at).err())
                .collect();
            tx.commit().map_err(|e| sq(&i.db, e))?;
            Ok(out)
        })
        .await
    }

    pub(crate) async fn update_meta(
        &self,
        id: &str,
        p: MetaPatch,
        at: DateTime<Utc>,
    ) -> Result<Meta> {
        let id = id.to_owned();
        self.run(move |i, c| {
            let raw = c
                .query_row(
                    &format!(
                        "UPDATE sessions SET status = coalesce(?2, status), current_step = coalesce(?3, current_step),
                                cost = coalesce(?4, cost), updated_at = ?5
                          WHERE id = ?1 RETURNING {COLUMNS}"
                    ),
                    params![id, p.status, p.current_step, p.cost, fields::fmt_ts(&at)],
                    |r| raw_meta(r, 0),
                )
                .optional()
                .map_err(|e| sq(&i.db, e))?
                .ok_or_else(|| Error::NotFound { id: id.clone() })?;
            meta(&id, &raw)
        })
        .await
    }

    pub(crate) async fn list(&self, page: Page) -> Result<Vec<SessionSummary>> {
        self.run(move |i, c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT id, {COLUMNS} FROM sessions WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2"
                ))
                .map_err(|e| sq(&i.db, e))?;
            let rows = st
                .query_map(params![page.after, page.limit as i64], |r| {
                    Ok((Raw::from_sqlite(r.get_ref(0)?), raw_meta(r, 1)?))
                })
                .map_err(|e| sq(&i.db, e))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, raw) = row.map_err(|e| sq(&i.db, e))?;
                let id = fields::id(&id).map_err(|e| Error::InvalidRecord {
                    id: String::from_utf8_lossy(&id.bytes()).into_owned(),
                    code: e.code,
                    message: e.message,
                })?;
                let meta = meta(&id, &raw)?;
                out.push(SessionSummary { id, meta });
            }
            Ok(out)
        })
        .await
    }
}

impl Inner {
    /// The state: `state.json` when the id is path safe and the file is there, else the
    /// `state` column (SPEC §1: the file wins).
    fn read_state(&self, id: &str, column: Raw) -> Result<Option<State>> {
        if fields::path_safe(id) {
            match files::read_state(&self.dir, self.root.as_deref(), id) {
                Ok(Some((bytes, path))) => {
                    return State::parse(&bytes)
                        .map(Some)
                        .map_err(|e| Error::InvalidRecord {
                            id: id.to_owned(),
                            code: e.code(),
                            message: format!("{}: {e}", path.display()),
                        });
                }
                Ok(None) => {}
                Err(inv) => {
                    return Err(Error::InvalidRecord {
                        id: id.to_owned(),
                        code: inv.code,
                        message: inv.message,
                    });
                }
            }
        }
        let bytes = match column {
            Raw::Null => return Ok(None),
            other => other.bytes(),
        };
        State::parse(&bytes)
            .map(Some)
            .map_err(|e| Error::InvalidRecord {
                id: id.to_owned(),
                code: e.code(),
                message: format!("the SQLite state column: {e}"),
            })
    }

    /// The sessions folder, opened for this write (opened each time: a volume mounted
    /// after the store was opened is the one written to).
    fn sessions(&self) -> Result<Sessions> {
        Sessions::open(&self.dir).map_err(Error::Backend)
    }

    /// Write `state.json` of a path-safe id atomically, never through a symlink (see
    /// [`crate::source::write`]). Returns whether its folder was created here.
    fn write_file(&self, id: &str, s: &State) -> Result<bool> {
        self.sessions()?
            .write(id, s.as_str().as_bytes())
            .map_err(|e| store_err(id, e))
    }

    /// One state write inside the caller's transaction: the file (when the id is path
    /// safe), then the row. The `state` column is kept in step when it held state, so
    /// the file and the column never disagree.
    fn write_one(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: &str,
        s: &State,
        at: &DateTime<Utc>,
    ) -> Result<()> {
        if exists(tx, &self.db, id)?.is_none() {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        let ts = fields::fmt_ts(at);
        if fields::path_safe(id) {
            self.write_file(id, s)?;
            tx.execute(
                "UPDATE sessions SET updated_at = ?2,
                        state = CASE WHEN state IS NOT NULL THEN ?3 ELSE NULL END WHERE id = ?1",
                params![id, ts, s.as_str()],
            )
        } else {
            tx.execute(
                "UPDATE sessions SET updated_at = ?2, state = ?3 WHERE id = ?1",
                params![id, ts, s.as_str()],
            )
        }
        .map_err(|e| sq(&self.db, e))?;
        Ok(())
    }
}

fn exists(c: &Connection, db: &Path, id: &str) -> Result<Option<()>> {
    c.query_row("SELECT 1 FROM sessions WHERE id = ?1", [id], |_| Ok(()))
        .optional()
        .map_err(|e| sq(db, e))
}

type RawMeta = [Raw; 6];

fn raw_meta(r: &rusqlite::Row<'_>, from: usize) -> rusqlite::Result<RawMeta> {
    Ok([
        Raw::from_sqlite(r.get_ref(from)?),
        Raw::from_sqlite(r.get_ref(from + 1)?),
        Raw::from_sqlite(r.get_ref(from + 2)?),
        Raw::from_sqlite(r.get_ref(from + 3)?),
        Raw::from_sqlite(r.get_ref(from + 4)?),
        Raw::from_sqlite(r.get_ref(from + 5)?),
    ])
}

fn meta(id: &str, r: &RawMeta) -> Result<Meta> {
    parse_meta(&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]).map_err(|e| Error::InvalidRecord {
        id: id.to_owned(),
        code: e.code,
        message: e.message,
    })
}

/// A refusal of the sessions folder, as the store's own typed error.
fn store_err(id: &str, e: CrateError) -> Error {
    match e {
        CrateError::UnsafePath {
            code,
            path,
            message,
        } => Error::UnsafePath {
            id: id.to_owned(),
            code,
            path,
            message,
        },
        other => Error::Backend(other),
    }
}

fn sq(db: &Path, e: rusqlite::Error) -> Error {
    Error::Backend(legacy::map_err(db, e))
}

fn join_err(e: tokio::task::JoinError) -> Error {
    if e.is_panic() {
        std::panic::resume_unwind(e.into_panic());
    }
    Error::Closed
}
