//! The SQLite + state files backend: the legacy layout, written the way the application
//! wrote it, but safely. One read-write connection with a busy timeout, used from
//! `spawn_blocking`; every write takes SQLite's write lock first (`BEGIN IMMEDIATE`),
//! writes `state.json` atomically (temp file, fsync, rename) and never through a symlink
//! ([`crate::source::write`]), and commits. An id that is unsafe as a path component
//! keeps its state in the state column and never becomes a path.
//!
//! The table is the application's own (SPEC §9, `source::shape`): `sqlite.table`, the
//! fields at their mapped columns, every other column carried as an extra column;
//! timestamps are written in the text form the column already holds its values in
//! (SQLAlchemy's `2025-12-10 14:08:48.347371` when it holds none yet), booleans as the
//! column holds them (0/1). SPEC §1's default table is the same code with the default
//! mapping, its timestamps written in RFC 3339 as before.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::error::{Error, Result};
use super::layout::{self, Col, Extra, FieldWrites, Fk, Layout, RowValues, TableModel};
use super::state::State;
use super::{Meta, MetaPatch, Page, SessionSummary, ValidNew};
use crate::config::AppSchema;
use crate::error::Error as CrateError;
use crate::source::fields::{self, Raw};
use crate::source::shape::{self, ColumnScan, Field, Mode, Shape, Table, ident};
use crate::source::write::{Sessions, Slot};
use crate::source::{files, parse_meta, sqlite as legacy};
use crate::value::sqlite::{BoolForm, Form, TimeForm, Zone};
use crate::value::{PgType, Value};

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
    layout: Layout,
    sql: Statements,
}

/// SPEC §1's timestamps, as the default table has always been written:
/// `2024-03-01T10:00:00.000000Z`.
const RFC3339: Form = Form {
    time: TimeForm::Text {
        sep: 'T',
        digits: 6,
        optional: false,
        zone: Zone::Z,
    },
    boolean: BoolForm::Int,
};

/// The statements that depend only on the layout.
struct Statements {
    /// The read list: the six metadata columns (NULL for an absent one), the state
    /// column (or NULL), then the extras.
    list: String,
    /// Its width.
    width: usize,
    get: String,
    state: String,
    exists: String,
    page: String,
}

impl Statements {
    fn new(l: &Layout) -> Statements {
        let (fields, extras) = l.read_columns();
        let mut cols: Vec<String> = fields
            .iter()
            .map(|c| c.map(|c| ident(&c.name)).unwrap_or_else(|| "NULL".into()))
            .collect();
        cols.push(
            l.state
                .as_deref()
                .map(ident)
                .unwrap_or_else(|| "NULL".into()),
        );
        cols.extend(extras.iter().map(|c| ident(&c.name)));
        let width = cols.len();
        let list = cols.join(", ");
        let t = ident(&l.sessions.name);
        let id = ident(l.id_col());
        let state = l
            .state
            .as_deref()
            .map(ident)
            .unwrap_or_else(|| "NULL".into());
        Statements {
            get: format!("SELECT {list} FROM {t} WHERE {id} = ?1"),
            state: format!("SELECT {state} FROM {t} WHERE {id} = ?1"),
            exists: format!("SELECT 1 FROM {t} WHERE {id} = ?1"),
            page: format!(
                "SELECT {id}, {list} FROM {t} WHERE ?1 IS NULL OR {id} > ?1 ORDER BY {id} LIMIT ?2"
            ),
            list,
            width,
        }
    }
}

impl SqliteStore {
    pub(crate) async fn open(
        db: &Path,
        sessions_dir: &Path,
        config: &Path,
        app: &AppSchema,
        busy_timeout: Duration,
    ) -> Result<SqliteStore> {
        let (db, dir) = (db.to_path_buf(), sessions_dir.to_path_buf());
        let (config, app) = (config.to_path_buf(), app.clone());
        let inner = tokio::task::spawn_blocking(move || -> Result<Inner> {
            legacy::check_header(&db)?;
            let conn = Connection::open_with_flags(
                &db,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| legacy::map_err(&db, e))?;
            conn.busy_timeout(busy_timeout)
                .map_err(|e| legacy::map_err(&db, e))?;
            let shape = Shape::read(&conn, &db, &config, &app)?;
            if shape.mode == Mode::Default {
                // SPEC §1's table: every column of it, as before.
                legacy::check_table(&conn, &db)?;
            }
            for w in &shape.warnings {
                tracing::warn!(code = %w.code, "{}", w.message);
            }
            let layout = layout_of(&conn, &db, &shape, &app)?;
            tracing::info!("session store: {} in {}", layout.summary(), db.display());
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
                sql: Statements::new(&layout),
                layout,
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
        let i = &self.inner;
        let table = if i.layout.sessions.name == crate::config::DEFAULT_TABLE {
            String::new()
        } else {
            format!(" (table {:?})", i.layout.sessions.name)
        };
        format!("{} + {}{table}", i.db.display(), i.dir.display())
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

    /// Insert the session (and the parent rows it asked for), write its state file,
    /// commit; returns the row as stored.
    pub(crate) async fn create(&self, n: ValidNew) -> Result<(Meta, Extra)> {
        self.run(move |i, c| {
            let l = &i.layout;
            let as_file = fields::path_safe(&n.id);
            if !as_file && l.state.is_none() {
                return Err(Error::InvalidId {
                    id: n.id.clone(),
                    message: format!(
                        "table {:?} has no state column, so a session's state lives only in {}/<id>/state.json, and this id cannot be a folder name",
                        l.sessions.name,
                        i.dir.display()
                    ),
                });
            }
            let mut row = l.new_row(&n.id, &n.meta, &n.extra, FieldWrites::Native)?;
            let plans = l.parent_plans(&n.id, &row, &n.parents, &n.at)?;
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sq(&i.db, e))?;
            if exists(&tx, &i.db, &i.sql.exists, &n.id)?.is_some() {
                return Err(Error::AlreadyExists { id: n.id });
            }
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
            for p in &plans {
                let parent = &l.parents[p.parent];
                if parent_exists(&tx, &i.db, parent, &p.key)? {
                    continue;
                }
                match &p.create {
                    Some(r) => insert(&tx, &i.db, parent, r, None).map(|_| ())?,
                    None => return Err(p.not_found(&n.id, l)),
                }
            }
            if let (Some(s), false, Some(sc)) = (&n.state, as_file, &l.state) {
                let idx = l.sessions.index(sc).expect("the state column exists");
                row.retain(|(j, _)| *j != idx);
                row.push((idx, Value::Text(s.as_str().to_owned())));
            }
            let stored = insert(&tx, &i.db, &l.sessions, &row, Some((&i.sql.list, i.sql.width)))?
                .expect("RETURNING gives the row");
            let (meta, extra) = i.read_row(&n.id, &stored)?;
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
            Ok((meta, extra))
        })
        .await
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<(Meta, Extra, Option<State>)>> {
        let id = id.to_owned();
        self.run(move |i, c| {
            let width = i.sql.width;
            let row = c
                .prepare_cached(&i.sql.get)
                .and_then(|mut st| st.query_row([&id], |r| raw_row(r, 0, width)).optional())
                .map_err(|e| sq(&i.db, e))?;
            let Some(raw) = row else {
                return Ok(None);
            };
            let (meta, extra) = i.read_row(&id, &raw)?;
            let state = i.read_state(&id, raw[6].clone())?;
            Ok(Some((meta, extra, state)))
        })
        .await
    }

    pub(crate) async fn state(&self, id: &str) -> Result<Option<State>> {
        let id = id.to_owned();
        self.run(move |i, c| {
            let column = c
                .query_row(&i.sql.state, [&id], |r| Ok(Raw::from_sqlite(r.get_ref(0)?)))
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
    ) -> Result<(Meta, Extra)> {
        let id = id.to_owned();
        self.run(move |i, c| {
            let l = &i.layout;
            let row = l.patch_row(&id, &p, &at, FieldWrites::Native)?;
            let t = &l.sessions;
            let width = i.sql.width;
            let raw = if row.is_empty() {
                c.query_row(&i.sql.get, [&id], |r| raw_row(r, 0, width))
            } else {
                let sets = row
                    .iter()
                    .enumerate()
                    .map(|(n, (j, _))| format!("{} = ?{}", ident(&t.cols[*j].name), n + 2))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut args = vec![Sql::Text(id.clone())];
                args.extend(row.iter().map(|(j, v)| v.to_sqlite(&t.cols[*j].form)));
                c.query_row(
                    &format!(
                        "UPDATE {} SET {sets} WHERE {} = ?1 RETURNING {}",
                        ident(&t.name),
                        ident(l.id_col()),
                        i.sql.list
                    ),
                    rusqlite::params_from_iter(args),
                    |r| raw_row(r, 0, width),
                )
            }
            .optional()
            .map_err(|e| sq(&i.db, e))?
            .ok_or_else(|| Error::NotFound { id: id.clone() })?;
            i.read_row(&id, &raw)
        })
        .await
    }

    pub(crate) async fn list(&self, page: Page) -> Result<Vec<SessionSummary>> {
        self.run(move |i, c| {
            let width = i.sql.width;
            let mut st = c.prepare_cached(&i.sql.page).map_err(|e| sq(&i.db, e))?;
            let rows = st
                .query_map(params![page.after, page.limit as i64], |r| {
                    Ok((Raw::from_sqlite(r.get_ref(0)?), raw_row(r, 1, width)?))
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
                let (meta, extra) = i.read_row(&id, &raw)?;
                out.push(SessionSummary { id, meta, extra });
            }
            Ok(out)
        })
        .await
    }
}

impl Inner {
    /// The metadata and the extra columns of a read row (the read list's values).
    fn read_row(&self, id: &str, r: &[Raw]) -> Result<(Meta, Extra)> {
        let meta = parse_meta(&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]).map_err(|e| {
            Error::InvalidRecord {
                id: id.to_owned(),
                code: e.code,
                message: e.message,
            }
        })?;
        let (_, extras) = self.layout.read_columns();
        let extra = extras
            .iter()
            .zip(&r[7..])
            .map(|(c, raw)| {
                (
                    c.name.clone(),
                    extra_json(&self.layout.sessions.name, c, raw),
                )
            })
            .collect();
        Ok((meta, extra))
    }

    /// The state: `state.json` when the id is path safe and the file is there, else the
    /// state column (SPEC §1: the file wins).
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
    /// safe), then the row's `updated_at`. The state column is kept in step when it held
    /// state, so the file and the column never disagree.
    fn write_one(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: &str,
        s: &State,
        at: &DateTime<Utc>,
    ) -> Result<()> {
        let l = &self.layout;
        if exists(tx, &self.db, &self.sql.exists, id)?.is_none() {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        let mut sets = Vec::new();
        let mut args = vec![Sql::Text(id.to_owned())];
        if let Some((j, v)) = l.updated_value(id, at, FieldWrites::Native)? {
            let col = &l.sessions.cols[j];
            args.push(v.to_sqlite(&col.form));
            sets.push(format!("{} = ?{}", ident(&col.name), args.len()));
        }
        let state_col = l.state.as_deref().map(ident);
        if fields::path_safe(id) {
            self.write_file(id, s)?;
            if let Some(sc) = &state_col {
                args.push(Sql::Text(s.as_str().to_owned()));
                sets.push(format!(
                    "{sc} = CASE WHEN {sc} IS NOT NULL THEN ?{} ELSE NULL END",
                    args.len()
                ));
            }
        } else {
            let Some(sc) = &state_col else {
                return Err(Error::InvalidId {
                    id: id.to_owned(),
                    message: format!(
                        "table {:?} has no state column, and this id cannot be a folder name: its state cannot be stored",
                        l.sessions.name
                    ),
                });
            };
            args.push(Sql::Text(s.as_str().to_owned()));
            sets.push(format!("{sc} = ?{}", args.len()));
        }
        if sets.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE {} SET {} WHERE {} = ?1",
            ident(&l.sessions.name),
            sets.join(", "),
            ident(l.id_col())
        );
        tx.prepare_cached(&sql)
            .and_then(|mut st| st.execute(rusqlite::params_from_iter(args)))
            .map_err(|e| sq(&self.db, e))?;
        Ok(())
    }
}

/// An extra column's stored value as JSON: converted to the type its declared type
/// says; a value the declared type does not describe (SQLite stores anything) is
/// given as it is stored, never refused.
fn extra_json(table: &str, c: &Col, raw: &Raw) -> serde_json::Value {
    match crate::value::convert(&format!("{table}.{}", c.name), raw, &c.ty) {
        Ok(v) => layout::value_to_json(&v),
        Err(_) => match raw {
            Raw::Null => serde_json::Value::Null,
            Raw::Integer(i) => serde_json::Value::from(*i),
            Raw::Real(f) => layout::value_to_json(&Value::Float(*f)),
            Raw::Text(s) => serde_json::Value::String(s.clone()),
            Raw::Blob(b) => serde_json::Value::String(format!("\\x{}", hex::encode(b))),
        },
    }
}

/// `width` values of a row from column `from` on.
fn raw_row(r: &rusqlite::Row<'_>, from: usize, width: usize) -> rusqlite::Result<Vec<Raw>> {
    (from..from + width)
        .map(|i| Ok(Raw::from_sqlite(r.get_ref(i)?)))
        .collect()
}

fn exists(c: &Connection, db: &Path, sql: &str, id: &str) -> Result<Option<()>> {
    c.prepare_cached(sql)
        .and_then(|mut st| st.query_row([id], |_| Ok(())).optional())
        .map_err(|e| sq(db, e))
}

fn parent_exists(c: &Connection, db: &Path, t: &TableModel, key: &RowValues) -> Result<bool> {
    let cond = key
        .iter()
        .enumerate()
        .map(|(n, (j, _))| format!("{} = ?{}", ident(&t.cols[*j].name), n + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    let args = key.iter().map(|(j, v)| v.to_sqlite(&t.cols[*j].form));
    c.query_row(
        &format!("SELECT 1 FROM {} WHERE {cond}", ident(&t.name)),
        rusqlite::params_from_iter(args),
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
    .map_err(|e| sq(db, e))
}

/// `INSERT INTO t (...) VALUES (...)`, with `RETURNING returning` when given.
fn insert(
    c: &Connection,
    db: &Path,
    t: &TableModel,
    row: &RowValues,
    returning: Option<(&str, usize)>,
) -> Result<Option<Vec<Raw>>> {
    let cols = row
        .iter()
        .map(|(j, _)| ident(&t.cols[*j].name))
        .collect::<Vec<_>>()
        .join(", ");
    let marks = (1..=row.len())
        .map(|n| format!("?{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let args = row.iter().map(|(j, v)| v.to_sqlite(&t.cols[*j].form));
    let table = ident(&t.name);
    match returning {
        None => c
            .execute(
                &format!("INSERT INTO {table} ({cols}) VALUES ({marks})"),
                rusqlite::params_from_iter(args),
            )
            .map(|_| None),
        Some((list, width)) => c
            .query_row(
                &format!("INSERT INTO {table} ({cols}) VALUES ({marks}) RETURNING {list}"),
                rusqlite::params_from_iter(args),
                |r| raw_row(r, 0, width),
            )
            .map(Some),
    }
    .map_err(|e| sq(db, e))
}

/// The store's view of the shape: each column's type from its declared type, and the
/// form of its timestamps and booleans from its values.
fn layout_of(conn: &Connection, db: &Path, shape: &Shape, app: &AppSchema) -> Result<Layout> {
    let default = shape.mode == Mode::Default;
    let time_fields: Vec<&str> = [Field::CreatedAt, Field::UpdatedAt]
        .iter()
        .filter_map(|f| shape.mapping.column(*f))
        .collect();
    let sessions = table_model(conn, db, &shape.sessions, &time_fields, default)?;
    let mut fields = BTreeMap::new();
    for m in shape.mapping.iter() {
        if let (Some(c), true) = (&m.column, m.field != Field::State) {
            fields.insert(m.field, c.clone());
        }
    }
    let mut parents: Vec<TableModel> = Vec::new();
    let mut fks = Vec::new();
    for fk in &shape.sessions.foreign_keys {
        let Some(pt) = shape
            .parents
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(&fk.parent))
        else {
            // A dangling reference (warned by the shape): nothing to check against.
            continue;
        };
        let parent_columns = if fk.parent_columns.iter().all(String::is_empty) {
            pt.primary_key.clone()
        } else {
            fk.parent_columns.clone()
        };
        let idx = match parents.iter().position(|p| p.name == pt.name) {
            Some(i) => i,
            None => {
                parents.push(table_model(conn, db, pt, &[], false)?);
                parents.len() - 1
            }
        };
        fks.push(Fk {
            columns: fk.columns.clone(),
            parent: idx,
            parent_columns,
        });
    }
    Ok(Layout {
        mode: shape.mode,
        sessions,
        fields,
        state: shape.mapping.column(Field::State).map(str::to_owned),
        extras: shape.extras.clone(),
        fks,
        parents,
        fill: app.fill.clone(),
    })
}

fn table_model(
    conn: &Connection,
    db: &Path,
    t: &Table,
    time_fields: &[&str],
    default: bool,
) -> Result<TableModel> {
    let mut cols = Vec::new();
    for c in t.stored_columns() {
        let time_field = time_fields.iter().any(|f| f.eq_ignore_ascii_case(&c.name));
        let ty = if time_field {
            PgType::Timestamp(None)
        } else {
            shape::choose_type(c, &ColumnScan::default()).pg
        };
        let form = if default {
            RFC3339
        } else if matches!(
            ty,
            PgType::Timestamp(_) | PgType::TimestampTz(_) | PgType::Boolean
        ) {
            detect_form(conn, db, &t.name, c)?
        } else {
            Form::default()
        };
        cols.push(Col {
            name: c.name.clone(),
            ty,
            not_null: c.not_null,
            // An INTEGER PRIMARY KEY is the rowid: SQLite fills it.
            defaulted: c.default.is_some()
                || (t.primary_key.len() == 1
                    && c.pk == 1
                    && c.declared.eq_ignore_ascii_case("INTEGER")
                    && !t.without_rowid),
            generated: c.generated,
            form,
        });
    }
    Ok(TableModel {
        name: t.name.clone(),
        cols,
        nocase: true,
    })
}

/// The form a column's values are in, from up to 64 of them. A column with none yet: a
/// `DATETIME`/`TIMESTAMP` one gets SQLAlchemy's text (what those declarations come
/// from), any other SPEC §1's RFC 3339; booleans 0/1.
fn detect_form(conn: &Connection, db: &Path, table: &str, column: &shape::Column) -> Result<Form> {
    let c = ident(&column.name);
    let mut st = conn
        .prepare(&format!(
            "SELECT {c} FROM {} WHERE {c} IS NOT NULL LIMIT 64",
            ident(table)
        ))
        .map_err(|e| sq(db, e))?;
    let vals: Vec<Raw> = st
        .query_map([], |r| Ok(Raw::from_sqlite(r.get_ref(0)?)))
        .map_err(|e| sq(db, e))?
        .collect::<rusqlite::Result<_>>()
        .map_err(|e| sq(db, e))?;
    if vals.is_empty() {
        let d = column.declared.to_ascii_uppercase();
        if !(d.contains("DATETIME") || d.contains("TIMESTAMP")) {
            return Ok(RFC3339);
        }
    }
    Ok(Form::detect(&vals))
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
