//! The legacy store as rollback writes into it: the `sessions` table's shape (what a
//! row needs to fit), the rows and state files each export will write, and the one
//! SQLite transaction that writes the rows.
//!
//! Everything that can be known before writing is found here, read-only, by the dry
//! run as by the real run: a NOT NULL column without a value (`schema_mismatch`, naming
//! the table and the column), a STRICT column whose type cannot hold the value, a
//! `<id>/` or `state.json` that is a symlink (`symlink_outside_root`) or a special file
//! (`not_regular_file`). What only SQLite can tell (a CHECK constraint, a trigger) fails
//! the transaction, which then writes nothing.

use std::path::{Path, PathBuf};

use rusqlite::types::{Value as Sql, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Changed;
use crate::error::{Error, Result};
use crate::source::write::{FileDigest, Sessions, Slot};
use crate::source::{fields, sqlite};

pub const TABLE: &str = "sessions";

/// One column of the legacy table (`PRAGMA table_info`).
#[derive(Debug, Clone)]
struct Column {
    name: String,
    decl: String,
    notnull: bool,
    has_default: bool,
    pk: bool,
}

/// The legacy store, opened for planning an export: the database (read-only here), the
/// table's shape, and the sessions folder.
pub struct Legacy {
    pub db: PathBuf,
    pub sessions: Sessions,
    columns: Vec<Column>,
    strict: bool,
    conn: Connection,
}

/// How a row is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowWrite {
    Insert,
    Update,
    /// The row is already as PostgreSQL holds it (a mapped store's session whose
    /// state alone changed): not written.
    Unchanged,
}

/// What happens to the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAction {
    /// A new `state.json` (its folder too, when there is none).
    Create,
    /// An existing `state.json` replaced.
    Replace,
    /// `state.json` already holds these bytes: not written.
    Unchanged,
}

/// Where an exported session's state goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateTo {
    /// `<id>/state.json`.
    File,
    /// The SQLite `state` column: an id that is not a safe path component.
    Column,
    /// PostgreSQL holds no state for it.
    None,
}

/// The eight columns of a row, as written.
#[derive(Debug, Clone)]
pub struct RowValues {
    pub user_id: Option<String>,
    pub status: Option<String>,
    pub current_step: Option<String>,
    pub cost: Option<f64>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub state: Option<String>,
}

/// What a row export writes: SPEC §1's eight columns, or (a mapped store) every
/// column of the application's table.
#[derive(Debug, Clone)]
pub enum RowData {
    Default(RowValues),
    Mapped(MappedRow),
}

/// A row of one of the application's tables, as rollback writes it: every column of
/// the legacy table that PostgreSQL holds a value for, in SQLite's form.
#[derive(Debug, Clone)]
pub struct MappedRow {
    /// The legacy table, as SQLite spells it.
    pub table: String,
    /// The primary key the row is found by: the legacy row's own values for an update,
    /// the new ones for an insert.
    pub key: Vec<(String, Sql)>,
    /// The columns written (an update leaves the key's columns as they are).
    pub cols: Vec<(String, Sql)>,
}

/// One session's export (or, for a mapped store, one row of a parent table), fully
/// planned.
#[derive(Debug, Clone, Serialize)]
pub struct Export {
    /// The session's id (a parent row: its primary key, `|`-joined).
    pub session: String,
    /// A row of a parent (or other copied) table of a mapped store: the table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// `created` in PostgreSQL, or `changed` there since sessiondb wrote it.
    pub kind: &'static str,
    pub row: RowWrite,
    pub state_to: StateTo,
    /// The state file, when the state goes to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_action: Option<FileAction>,
    /// SHA-256 of the `state.json` it replaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces_sha256: Option<String>,
    #[serde(skip)]
    pub slot: Option<Slot>,
    #[serde(skip)]
    pub replaces: Option<FileDigest>,
    #[serde(skip)]
    pub values: RowData,
    #[serde(skip)]
    pub changed: Changed,
}

impl Export {
    /// The bytes of `state.json` when it is written.
    pub fn file_bytes(&self) -> Option<&[u8]> {
        match self.file_action {
            Some(FileAction::Create) | Some(FileAction::Replace) => {
                self.changed.state.as_deref().map(str::as_bytes)
            }
            _ => None,
        }
    }
}

fn unreadable(path: &Path, e: rusqlite::Error) -> Error {
    sqlite::map_err(path, e)
}

impl Legacy {
    /// Open the legacy store read-only and learn its table's shape.
    pub fn open(db: &Path, sessions_dir: &Path) -> Result<Legacy> {
        let conn = sqlite::open(db)?;
        sqlite::check_table(&conn, db)?;
        let columns = {
            let mut st = conn
                .prepare(
                    "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1)",
                )
                .map_err(|e| unreadable(db, e))?;
            st.query_map([TABLE], |r| {
                Ok(Column {
                    name: r.get(0)?,
                    decl: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    notnull: r.get::<_, i64>(2)? != 0,
                    has_default: r.get(3)?,
                    pk: r.get::<_, i64>(4)? != 0,
                })
            })
            .map_err(|e| unreadable(db, e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| unreadable(db, e))?
        };
        let strict = conn
            .query_row(
                "SELECT strict FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                [TABLE],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .unwrap_or(None)
            .unwrap_or(0)
            != 0;
        let sessions = Sessions::open(sessions_dir)?;
        Ok(Legacy {
            db: db.to_path_buf(),
            sessions,
            columns,
            strict,
            conn,
        })
    }

    /// Open a mapped store's legacy database read-only, with its sessions folder: its
    /// tables' shapes are the mapped planner's ([`super::mapped`]), not SPEC §1's.
    pub fn open_mapped(db: &Path, sessions_dir: &Path) -> Result<Legacy> {
        let conn = sqlite::open(db)?;
        let sessions = Sessions::open(sessions_dir)?;
        Ok(Legacy {
            db: db.to_path_buf(),
            sessions,
            columns: Vec::new(),
            strict: false,
            conn,
        })
    }

    /// The read-only connection plans read through.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// Plan the export of `changed`: each row (insert or update) and state file, with
    /// every refusal found. Refusals are returned, not raised: the caller names them all.
    pub fn plan(&self, changed: Vec<Changed>) -> Result<(Vec<Export>, Vec<Error>)> {
        let mut refusals = Vec::new();
        let mut out = Vec::with_capacity(changed.len());
        let mut st = self
            .conn
            .prepare("SELECT state IS NOT NULL FROM sessions WHERE id = ?1")
            .map_err(|e| unreadable(&self.db, e))?;
        for c in changed {
            let old: Option<bool> = st
                .query_row([&c.session], |r| r.get(0))
                .optional()
                .map_err(|e| unreadable(&self.db, e))?;
            let safe = fields::path_safe(&c.session);
            // Unsafe ids keep their state in the column; others in state.json (and the
            // column too when it held state before, so the two never disagree).
            let column = match (safe, old) {
                (false, _) | (true, Some(true)) => c.state.clone(),
                _ => None,
            };
            let state_to = match (&c.state, safe) {
                (None, _) => StateTo::None,
                (Some(_), true) => StateTo::File,
                (Some(_), false) => StateTo::Column,
            };
            let fp = match self.file_plan(&c.session, state_to, c.state.as_deref()) {
                Ok(fp) => fp,
                Err(e) => {
                    refusals.push(e);
                    continue;
                }
            };
            let m = &c.meta;
            let values = RowData::Default(RowValues {
                user_id: m.user_id.clone(),
                status: m.status.clone(),
                current_step: m.current_step.clone(),
                cost: m.cost,
                created_at: m.created_at.as_ref().map(fields::fmt_ts),
                updated_at: m.updated_at.as_ref().map(fields::fmt_ts),
                state: column,
            });
            out.push(Export {
                table: None,
                kind: c.kind,
                row: if old.is_some() {
                    RowWrite::Update
                } else {
                    RowWrite::Insert
                },
                state_to,
                file: fp.file,
                file_action: fp.file_action,
                replaces_sha256: fp.replaces.map(|d| d.hex()),
                slot: fp.slot,
                replaces: fp.replaces,
                values,
                session: c.session.clone(),
                changed: c,
            });
        }
        refusals.extend(self.fit(&out));
        Ok((out, refusals))
    }

    /// Where a session's state file goes and what it replaces (`state_to` says whether
    /// it goes to a file at all). A symlink or a special file there is refused.
    pub fn file_plan(&self, id: &str, state_to: StateTo, state: Option<&str>) -> Result<FilePlan> {
        let mut fp = FilePlan::default();
        if state_to != StateTo::File {
            return Ok(fp);
        }
        fp.file = Some(self.sessions.file_path(id));
        let s = self.sessions.slot(id)?;
        let new = FileDigest::of(state.unwrap_or("").as_bytes());
        fp.replaces = match s {
            Slot::File { .. } => self.sessions.digest(id, crate::source::write::STATE_FILE)?,
            _ => None,
        };
        fp.file_action = Some(match fp.replaces {
            None => FileAction::Create,
            Some(d) if d == new => FileAction::Unchanged,
            Some(_) => FileAction::Replace,
        });
        fp.slot = Some(s);
        Ok(fp)
    }

    /// Whether every planned row fits the table: NOT NULL columns, and the types of a
    /// STRICT table. One refusal per column, naming the first sessions it refuses.
    fn fit(&self, exports: &[Export]) -> Vec<Error> {
        let mut out = Vec::new();
        let table = format!("{TABLE} in {}", self.db.display());
        let inserts: Vec<&str> = exports
            .iter()
            .filter(|e| e.row == RowWrite::Insert)
            .map(|e| e.session.as_str())
            .collect();
        let ours = sqlite::COLUMNS;
        let named = |ids: &[&str]| {
            let first: Vec<String> = ids.iter().take(3).map(|i| format!("{i:?}")).collect();
            format!(
                "{} session(s), e.g. {}{}",
                ids.len(),
                first.join(", "),
                if ids.len() > 3 { ", ..." } else { "" }
            )
        };
        // Columns sessiondb does not know: an insert leaves them NULL (or their default).
        if !inserts.is_empty() {
            for c in &self.columns {
                let rowid_alias = c.pk && c.decl.eq_ignore_ascii_case("INTEGER");
                if ours.iter().any(|o| o.eq_ignore_ascii_case(&c.name))
                    || !c.notnull
                    || c.has_default
                    || rowid_alias
                {
                    continue;
                }
                out.push(Error::LegacyTableUnfit {
                    message: format!(
                        "the legacy table {table} has column {:?} NOT NULL without a default, and rollback has no value for it: the rows of {} created in PostgreSQL would be refused; nothing was written — give the column a DEFAULT (or make it nullable) in the legacy schema, then run rollback again",
                        c.name,
                        named(&inserts)
                    ),
                });
            }
        }
        // Columns sessiondb writes: a NULL where the table says NOT NULL, or (STRICT) a
        // value the column's type refuses.
        type Get = for<'v> fn(&'v RowValues) -> Option<Value<'v>>;
        let fields: [(&str, Get); 7] = [
            ("user_id", |v| v.user_id.as_deref().map(Value::Text)),
            ("status", |v| v.status.as_deref().map(Value::Text)),
            ("current_step", |v| {
                v.current_step.as_deref().map(Value::Text)
            }),
            ("cost", |v| v.cost.map(Value::Real)),
            ("created_at", |v| v.created_at.as_deref().map(Value::Text)),
            ("updated_at", |v| v.updated_at.as_deref().map(Value::Text)),
            ("state", |v| v.state.as_deref().map(Value::Text)),
        ];
        for (name, get) in fields {
            let Some(col) = self.column(name) else {
                continue;
            };
            let nulls: Vec<&str> = exports
                .iter()
                .filter(|e| default_values(e).is_some_and(|v| get(v).is_none()))
                .map(|e| e.session.as_str())
                .collect();
            if col.notnull && !nulls.is_empty() {
                out.push(Error::LegacyTableUnfit {
                    message: format!(
                        "the legacy table {table} has column {name:?} NOT NULL, but PostgreSQL holds no {name} for {}; nothing was written — set {name} on those sessions in PostgreSQL, or make the column nullable, then run rollback again",
                        named(&nulls)
                    ),
                });
            }
            if self.strict {
                let bad: Vec<&str> = exports
                    .iter()
                    .filter(|e| {
                        default_values(e)
                            .and_then(get)
                            .is_some_and(|v| !v.fits_strict(&col.decl))
                    })
                    .map(|e| e.session.as_str())
                    .collect();
                if !bad.is_empty() {
                    out.push(Error::LegacyTableUnfit {
                        message: format!(
                            "the legacy table {table} is STRICT and its column {name:?} is {}, which refuses the values PostgreSQL holds for {}; nothing was written — widen the column (ANY or TEXT), then run rollback again",
                            col.decl,
                            named(&bad)
                        ),
                    });
                }
            }
        }
        out
    }
}

/// A session's state file as planned ([`Legacy::file_plan`]).
#[derive(Debug, Clone, Default)]
pub struct FilePlan {
    pub file: Option<PathBuf>,
    pub file_action: Option<FileAction>,
    pub slot: Option<Slot>,
    pub replaces: Option<FileDigest>,
}

/// The eight columns of a default-shape export.
fn default_values(e: &Export) -> Option<&RowValues> {
    match &e.values {
        RowData::Default(v) => Some(v),
        RowData::Mapped(_) => None,
    }
}

/// A value rollback writes, as a STRICT table judges it.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Text(&'a str),
    Real(f64),
}

impl Value<'_> {
    /// Whether a STRICT column of type `decl` takes it: SQLite converts a value to the
    /// column's type when it can do so without loss, and refuses it otherwise.
    fn fits_strict(&self, decl: &str) -> bool {
        match (decl.to_ascii_uppercase().as_str(), *self) {
            ("ANY" | "TEXT", _) => true,
            ("REAL", Value::Real(_)) => true,
            ("REAL", Value::Text(t)) => t.trim().parse::<f64>().is_ok_and(f64::is_finite),
            ("INTEGER" | "INT", Value::Real(r)) => r.fract() == 0.0 && r.abs() < 9.2e18,
            ("INTEGER" | "INT", Value::Text(t)) => t.trim().parse::<i64>().is_ok(),
            _ => false,
        }
    }
}

/// Hash one value with its storage class.
fn hash_value(h: &mut Sha256, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => h.update(b"n"),
        ValueRef::Integer(v) => {
            h.update(b"i");
            h.update(v.to_le_bytes());
        }
        ValueRef::Real(v) => {
            h.update(b"r");
            h.update(v.to_bits().to_le_bytes());
        }
        ValueRef::Text(t) => {
            h.update(b"t");
            h.update((t.len() as u64).to_le_bytes());
            h.update(t);
        }
        ValueRef::Blob(b) => {
            h.update(b"b");
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
    }
}

/// The digest of a row as it is in the database: its eight columns, each with its
/// storage class, so that what was written can be recognised later (`absent` when
/// there is no such row).
pub fn row_digest(conn: &Connection, db: &Path, id: &str) -> Result<String> {
    let mut st = conn
        .prepare_cached(
            "SELECT id, user_id, status, current_step, cost, created_at, updated_at, state FROM sessions WHERE id = ?1",
        )
        .map_err(|e| sqlite::map_err(db, e))?;
    let d = st
        .query_row([id], |r| {
            let mut h = Sha256::new();
            for i in 0..8 {
                hash_value(&mut h, r.get_ref(i)?);
            }
            Ok(hex::encode(h.finalize()))
        })
        .optional()
        .map_err(|e| sqlite::map_err(db, e))?;
    Ok(d.unwrap_or_else(|| "absent".into()))
}

/// `"name"`, quoted for SQLite.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The digest of a row of a mapped store's table, found by its key: every column,
/// each with its storage class (`absent` when there is no such row).
pub fn mapped_digest(
    conn: &Connection,
    db: &Path,
    table: &str,
    key: &[(String, Sql)],
) -> Result<String> {
    let cond: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, (c, _))| format!("{} = ?{}", quote(c), i + 1))
        .collect();
    let sql = format!(
        "SELECT * FROM {} WHERE {}",
        quote(table),
        cond.join(" AND ")
    );
    let mut st = conn
        .prepare_cached(&sql)
        .map_err(|e| sqlite::map_err(db, e))?;
    let n = st.column_count();
    let d = st
        .query_row(
            rusqlite::params_from_iter(key.iter().map(|(_, v)| v)),
            |r| {
                let mut h = Sha256::new();
                h.update(b"m");
                for i in 0..n {
                    hash_value(&mut h, r.get_ref(i)?);
                }
                Ok(hex::encode(h.finalize()))
            },
        )
        .optional()
        .map_err(|e| sqlite::map_err(db, e))?;
    Ok(d.unwrap_or_else(|| "absent".into()))
}

/// The digest of an export's row as it is now (what the journal seals).
fn digest_of(conn: &Connection, db: &Path, x: &Export) -> Result<String> {
    match &x.values {
        RowData::Default(_) => row_digest(conn, db, &x.session),
        RowData::Mapped(m) => mapped_digest(conn, db, &m.table, &m.key),
    }
}

/// Open the database read-write for the export (never created).
pub fn open_rw(db: &Path) -> Result<Connection> {
    sqlite::check_header(db)?;
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite::map_err(db, e))?;
    conn.busy_timeout(sqlite::BUSY_TIMEOUT)
        .map_err(|e| sqlite::map_err(db, e))?;
    Ok(conn)
}

/// Write every row in one transaction. Before the commit, `seal` is given the digest
/// of each row as written (in order); the commit happens only when it returns `Ok`.
pub fn write_rows(
    conn: &mut Connection,
    db: &Path,
    exports: &[Export],
    seal: impl FnOnce(Vec<String>) -> Result<()>,
) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sqlite::map_err(db, e))?;
    let refused = |table: &str, id: &str, e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => Error::LegacyTableUnfit {
            message: format!(
                "the legacy table {table} in {} refused the row {id:?}: {e}; the transaction was rolled back, nothing was written",
                db.display()
            ),
        },
        _ => sqlite::map_err(db, e),
    };
    {
        const INSERT: &str = "INSERT INTO sessions (id, user_id, status, current_step, cost, created_at, updated_at, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
        const UPDATE: &str =
            "UPDATE sessions SET user_id = ?2, status = ?3, current_step = ?4, cost = ?5,
                        created_at = ?6, updated_at = ?7, state = ?8 WHERE id = ?1";
        for x in exports.iter().filter(|x| x.row != RowWrite::Unchanged) {
            let n = match &x.values {
                RowData::Default(v) => {
                    let p = params![
                        x.session,
                        v.user_id,
                        v.status,
                        v.current_step,
                        v.cost,
                        v.created_at,
                        v.updated_at,
                        v.state
                    ];
                    // SPEC §1's statements, prepared once (a mapped store's table has
                    // other columns: never prepared for it).
                    tx.prepare_cached(match x.row {
                        RowWrite::Update => UPDATE,
                        _ => INSERT,
                    })
                    .and_then(|mut st| st.execute(p))
                }
                RowData::Mapped(m) => write_mapped(&tx, x.row, m),
            }
            .map_err(|e| refused(x.table.as_deref().unwrap_or(TABLE), &x.session, e))?;
            if n != 1 {
                return Err(Error::ChangedDuringWrite {
                    message: format!(
                        "{} {:?}: its row in {} changed while rollback ran (expected to {} it); nothing was written: run rollback again",
                        x.table
                            .as_deref()
                            .map_or("session".to_owned(), |t| format!("table {t:?}, row")),
                        x.session,
                        db.display(),
                        match x.row {
                            RowWrite::Update => "update",
                            _ => "insert",
                        }
                    ),
                });
            }
        }
    }
    let digests = exports
        .iter()
        .filter(|x| x.row != RowWrite::Unchanged)
        .map(|x| digest_of(&tx, db, x))
        .collect::<Result<Vec<_>>>()?;
    seal(digests)?;
    tx.commit().map_err(|e| sqlite::map_err(db, e))
}

/// Insert or update one row of a mapped store's table: every column given, the update
/// found by its key.
fn write_mapped(tx: &Connection, row: RowWrite, m: &MappedRow) -> rusqlite::Result<usize> {
    let names = |cols: &[(String, Sql)]| cols.iter().map(|(c, _)| quote(c)).collect::<Vec<_>>();
    match row {
        RowWrite::Update => {
            let set: Vec<String> = names(&m.cols)
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c} = ?{}", i + 1))
                .collect();
            let cond: Vec<String> = names(&m.key)
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c} = ?{}", m.cols.len() + i + 1))
                .collect();
            if set.is_empty() {
                return Ok(1);
            }
            let sql = format!(
                "UPDATE {} SET {} WHERE {}",
                quote(&m.table),
                set.join(", "),
                cond.join(" AND ")
            );
            tx.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(
                m.cols.iter().chain(&m.key).map(|(_, v)| v),
            ))
        }
        _ => {
            let cols = names(&m.cols);
            let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
            let sql = format!(
                "INSERT INTO {} ({}) VALUES ({})",
                quote(&m.table),
                cols.join(", "),
                marks.join(", ")
            );
            tx.prepare_cached(&sql)?
                .execute(rusqlite::params_from_iter(m.cols.iter().map(|(_, v)| v)))
        }
    }
}
