//! The source of a mapped store (SPEC §9): the application's sessions table read as
//! [`Shape`] says (its own name, every copied column, the state from
//! `sessions/<id>/state.json` else the mapped state column), and the parent tables'
//! rows. Everything is read inside one SQLite read transaction ([`AppStore::begin`]),
//! so the tables are read as of one moment while the application keeps writing; rows
//! stream in batches in primary-key order.
//!
//! The values stay raw ([`Raw`]) here: `value::convert` turns each into its target
//! column's type, on the target's side of the plan (`pg::app`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::fields::{self, Raw};
use super::shape::{self, Column, ColumnScan, Field, Shape, Table, TypeChoice};
use super::{Invalid, Origin, State, files, sqlite};
use crate::canon;
use crate::config::Config;
use crate::error::{Error, Result};

/// Whether `cfg`'s store is read as the application's own schema (SPEC §9): the config
/// maps anything (`Config::app`'s keys). A config that maps nothing is read through SPEC
/// §1's columns as before, whatever else the table has (the existing suite holds the
/// default path to that; see the README's "Not yet").
pub fn is_mapped(cfg: &Config) -> bool {
    !cfg.app.customised().is_empty()
}

/// The mapped store, open read-only.
pub struct AppStore {
    conn: Connection,
    pub db: PathBuf,
    pub shape: Shape,
    sessions_dir: PathBuf,
    sessions_root: Option<PathBuf>,
}

/// A table as it is copied: the columns carried into the target, in table order, with
/// what a scan of their values found and the type sessiondb would give each.
#[derive(Debug, Clone)]
pub struct Copied {
    pub table: Table,
    pub columns: Vec<Column>,
    pub scans: Vec<ColumnScan>,
    pub types: Vec<TypeChoice>,
    /// Whether this is the sessions table.
    pub sessions: bool,
}

impl Copied {
    /// The index of `name` among the copied columns (SQLite's names ignore case).
    pub fn index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
    }
}

/// One session of a mapped store: every copied column's raw value (aligned with the
/// sessions table's [`Copied::columns`]) and its state.
#[derive(Debug, Clone)]
pub struct AppSession {
    pub id: String,
    pub raws: Vec<Raw>,
    pub state: Option<State>,
}

impl AppStore {
    /// Open the store a mapped config names. A JSON store beside it is not read by the
    /// mapped load yet: refused rather than left behind unnoticed.
    pub fn open(cfg: &Config, step: &str) -> Result<AppStore> {
        let Some(s) = &cfg.sqlite else {
            return Err(Error::SchemaNotWired {
                step: step.to_owned(),
                config: cfg.path.clone(),
                keys: "a mapped store without [sqlite] (the JSON store alone)".into(),
            });
        };
        if cfg.json_path.is_some() {
            return Err(Error::SchemaNotWired {
                step: step.to_owned(),
                config: cfg.path.clone(),
                keys: "json.path beside a mapped SQLite store (the JSON store's records are not loaded into the application's tables yet; remove json.path once its sessions are in SQLite)".into(),
            });
        }
        let conn = sqlite::open_for_scan(&s.path)?;
        let shape = Shape::read(&conn, &s.path, &cfg.path, &cfg.app)?;
        Ok(AppStore {
            conn,
            db: s.path.clone(),
            shape,
            sessions_root: std::fs::canonicalize(&s.sessions_dir).ok(),
            sessions_dir: s.sessions_dir.clone(),
        })
    }

    /// Start the one read transaction every later read is part of.
    pub fn begin(&self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN DEFERRED")
            .map_err(|e| sqlite::map_err(&self.db, e))
    }

    pub fn end(&self) {
        let _ = self.conn.execute_batch("COMMIT");
    }

    /// The columns of `t` that are carried: every stored column, but for the sessions
    /// table not the ignored ones nor the mapped state column (its value is the
    /// session's state, loaded into `session_state`).
    fn carried(&self, t: &Table) -> Vec<Column> {
        let is_sessions = t.name == self.shape.sessions.name;
        let state_col = self.shape.mapping.column(Field::State);
        t.stored_columns()
            .filter(|c| {
                !is_sessions
                    || (!self.shape.ignored.iter().any(|i| i == &c.name)
                        && state_col.is_none_or(|s| !s.eq_ignore_ascii_case(&c.name)))
            })
            .cloned()
            .collect()
    }

    /// Every copied table in load order (parents, the sessions table, children), each
    /// scanned. Call inside [`AppStore::begin`].
    pub fn tables(&self) -> Result<Vec<Copied>> {
        let mut out = Vec::new();
        for t in self.shape.load_order() {
            let columns = self.carried(t);
            let all = shape::scan_table(&self.conn, &self.db, t)?;
            let stored: Vec<&Column> = t.stored_columns().collect();
            let scans: Vec<ColumnScan> = columns
                .iter()
                .map(|c| {
                    let i = stored
                        .iter()
                        .position(|s| s.name == c.name)
                        .expect("a carried column is stored");
                    all[i].clone()
                })
                .collect();
            let types = columns
                .iter()
                .zip(&scans)
                .map(|(c, s)| shape::choose_type(c, s))
                .collect();
            out.push(Copied {
                table: t.clone(),
                columns,
                scans,
                types,
                sessions: t.name == self.shape.sessions.name,
            });
        }
        Ok(out)
    }

    /// The rows of `t`, every carried column (plus the mapped state column last, for
    /// the sessions table), in primary-key order, `batch` at a time.
    fn raw_rows(
        &self,
        t: &Copied,
        with_state: bool,
        batch: usize,
        mut f: impl FnMut(Vec<Vec<Raw>>) -> Result<()>,
    ) -> Result<()> {
        let err = |e| sqlite::map_err(&self.db, e);
        let mut list: Vec<String> = t.columns.iter().map(|c| shape::ident(&c.name)).collect();
        if with_state {
            list.push(shape::ident(
                self.shape.mapping.column(Field::State).expect("checked"),
            ));
        }
        let order = if t.table.primary_key.is_empty() {
            "rowid".to_owned()
        } else {
            t.table
                .primary_key
                .iter()
                .map(|k| shape::ident(k))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM {} ORDER BY {order}",
                list.join(", "),
                shape::ident(&t.table.name)
            ))
            .map_err(err)?;
        let n = list.len();
        let mut rows = stmt.query([]).map_err(err)?;
        let mut chunk = Vec::with_capacity(batch);
        while let Some(r) = rows.next().map_err(err)? {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(Raw::from_sqlite(r.get_ref(i).map_err(err)?));
            }
            chunk.push(v);
            if chunk.len() >= batch {
                f(std::mem::take(&mut chunk))?;
            }
        }
        if !chunk.is_empty() {
            f(chunk)?;
        }
        Ok(())
    }

    /// The rows of a parent (or child) table, `batch` at a time.
    pub fn rows(
        &self,
        t: &Copied,
        batch: usize,
        f: impl FnMut(Vec<Vec<Raw>>) -> Result<()>,
    ) -> Result<()> {
        self.raw_rows(t, false, batch, f)
    }

    /// The sessions, `batch` at a time: each resolved (state from its file, else the
    /// mapped state column) or invalid (an id that is not text, a state that is not
    /// JSON, a state file that cannot be read).
    pub fn sessions(
        &self,
        t: &Copied,
        batch: usize,
        f: impl FnMut(Vec<std::result::Result<AppSession, Box<Invalid>>>) -> Result<()>,
    ) -> Result<()> {
        self.sessions_among(t, batch, None, f)
    }

    /// [`AppStore::sessions`], only those whose id `among` holds when it is given: the
    /// other rows are passed over before their state is read (a catch-up's load reads
    /// again only what it writes). A row whose id is not text is passed over too.
    pub fn sessions_among(
        &self,
        t: &Copied,
        batch: usize,
        among: Option<&HashSet<String>>,
        mut f: impl FnMut(Vec<std::result::Result<AppSession, Box<Invalid>>>) -> Result<()>,
    ) -> Result<()> {
        let id_col = self.shape.mapping.column(Field::Id).expect("id is mapped");
        let id_at = t.index(id_col).expect("the id column is carried");
        let with_state = self.shape.mapping.column(Field::State).is_some();
        let wanted = |raws: &Vec<Raw>| match (among, &raws[id_at]) {
            (None, _) => true,
            (Some(set), Raw::Text(s)) => set.contains(s),
            (Some(set), Raw::Integer(i)) => set.contains(&i.to_string()),
            (Some(_), _) => false,
        };
        self.raw_rows(t, with_state, batch, |rows| {
            let out: Vec<_> = rows
                .into_iter()
                .filter(wanted)
                .map(|mut raws| {
                    let column = if with_state { raws.pop() } else { None };
                    let id = match &raws[id_at] {
                        Raw::Text(s) => s.clone(),
                        Raw::Integer(i) => i.to_string(),
                        other => {
                            return Err(Box::new(Invalid {
                                id: None,
                                code: "invalid_value",
                                message: format!(
                                    "a row of {:?} whose id ({id_col}) is not text: {}",
                                    t.table.name,
                                    other.describe()
                                ),
                                path: Some(self.db.clone()),
                                record: "sqlite_row",
                                raw: other.bytes(),
                            }));
                        }
                    };
                    let state = self.state(&id, column)?;
                    Ok(AppSession { id, raws, state })
                })
                .collect();
            if out.is_empty() && among.is_some() {
                return Ok(());
            }
            f(out)
        })
    }

    /// A session's state: its state file wins over the mapped column (a difference is
    /// not reported here: the default scan's `state_conflict` covers stores that hold
    /// both).
    fn state(
        &self,
        id: &str,
        column: Option<Raw>,
    ) -> std::result::Result<Option<State>, Box<Invalid>> {
        let invalid = |code: &'static str, message: String, path: Option<PathBuf>, raw| {
            Box::new(Invalid {
                id: Some(id.to_owned()),
                code,
                message,
                path,
                record: "state_file",
                raw,
            })
        };
        let from_file = if fields::path_safe(id) {
            files::read_state(&self.sessions_dir, self.sessions_root.as_deref(), id)?
        } else {
            None
        };
        let (raw, origin, path) = match (from_file, column) {
            (Some((b, p)), _) => (b, Origin::StateFile, Some(p)),
            (None, Some(Raw::Text(s))) => (s.into_bytes(), Origin::SqliteColumn, None),
            (None, Some(Raw::Blob(b))) => (b, Origin::SqliteColumn, None),
            (None, Some(Raw::Null) | None) => return Ok(None),
            (None, Some(other)) => (other.bytes(), Origin::SqliteColumn, None),
        };
        match canon::canonicalize(&raw) {
            Ok(canonical) => Ok(Some(State {
                raw,
                canonical,
                origin,
                path,
            })),
            Err(e) => {
                let where_ = path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the SQLite state column".into());
                Err(invalid(
                    e.code(),
                    format!("session {id}: {where_}: {e}"),
                    path,
                    raw,
                ))
            }
        }
    }

    pub fn db(&self) -> &Path {
        &self.db
    }
}
