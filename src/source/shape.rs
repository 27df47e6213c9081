//! The source's shape (SPEC §9): the sessions table as SQLite declares it, sessiondb's
//! fields mapped onto its columns, the extra columns, and the tables copied with it.

use serde::Serialize;

/// One of sessiondb's fields of a session (SPEC §1), which `[sqlite.columns]` and
/// `[json.fields]` map onto the application's own column and key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Id,
    UserId,
    Status,
    CurrentStep,
    Cost,
    CreatedAt,
    UpdatedAt,
    State,
}

impl Field {
    /// Every field, in SPEC §1's column order.
    pub const ALL: [Field; 8] = [
        Field::Id,
        Field::UserId,
        Field::Status,
        Field::CurrentStep,
        Field::Cost,
        Field::CreatedAt,
        Field::UpdatedAt,
        Field::State,
    ];

    /// The field's name, which is also its default column (SPEC §1).
    pub fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::UserId => "user_id",
            Field::Status => "status",
            Field::CurrentStep => "current_step",
            Field::Cost => "cost",
            Field::CreatedAt => "created_at",
            Field::UpdatedAt => "updated_at",
            Field::State => "state",
        }
    }

    pub fn parse(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// `id, user_id, ...`: for messages.
    pub fn names() -> String {
        Field::ALL.map(Field::name).join(", ")
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---- reading SQLite's own schema ------------------------------------------------------

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::fields::Raw;
use super::sqlite::map_err;
use crate::config::{AppSchema, DEFAULT_TABLE};
use crate::error::{Error, Result};
use crate::report::Finding;
use crate::value::PgType;
use crate::value::compat::SourceKind;

/// Quote a name for SQLite (`"a""b"`): names read from the schema or the config never
/// reach SQL unquoted.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A column as SQLite declares it (`PRAGMA table_xinfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: String,
    /// The declared type as written (`VARCHAR`, `DATETIME`, `""` for none).
    pub declared: String,
    pub not_null: bool,
    /// The default's SQL text, if any.
    pub default: Option<String>,
    /// Its position in the primary key (1-based), 0 if not part of it.
    pub pk: u32,
    /// A generated column (its values derive from others: never copied).
    pub generated: bool,
}

/// A foreign key (`PRAGMA foreign_key_list`): `columns` reference `parent(parent_columns)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForeignKey {
    pub columns: Vec<String>,
    pub parent: String,
    /// The parent's columns; its primary key when the declaration names none.
    pub parent_columns: Vec<String>,
}

/// An index (`PRAGMA index_list` / `index_xinfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Index {
    pub name: String,
    pub unique: bool,
    /// `c` (CREATE INDEX), `u` (a UNIQUE constraint) or `pk`.
    pub origin: String,
    pub partial: bool,
    /// The indexed columns in order; `None` for an expression.
    pub columns: Vec<Option<String>>,
}

/// A table as SQLite declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// The primary key's columns, in key order (empty: none declared).
    pub primary_key: Vec<String>,
    pub foreign_keys: Vec<ForeignKey>,
    pub indexes: Vec<Index>,
    pub without_rowid: bool,
    pub strict: bool,
}

impl Table {
    /// The column named `name` (SQLite's names ignore ASCII case).
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The columns that carry values (generated ones excluded).
    pub fn stored_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.generated)
    }

    /// Whether one single-column unique index or the primary key covers `column`.
    pub fn is_unique(&self, column: &str) -> bool {
        let one = |cols: &[String]| cols.len() == 1 && cols[0].eq_ignore_ascii_case(column);
        one(&self.primary_key)
            || self.indexes.iter().any(|i| {
                i.unique
                    && !i.partial
                    && i.columns.len() == 1
                    && i.columns[0]
                        .as_deref()
                        .is_some_and(|c| c.eq_ignore_ascii_case(column))
            })
    }
}

fn sql_err(db: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| map_err(db, e)
}

/// The user tables of the database (not SQLite's own), in name order.
pub fn list_tables(conn: &Connection, db: &Path) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare(
            "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )
        .map_err(sql_err(db))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sql_err(db))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql_err(db))?;
    Ok(names)
}

/// The table `name` as SQLite declares it (its name as the schema spells it), or
/// `None` when the database has no such table. A view is not a table.
pub fn read_table(conn: &Connection, db: &Path, name: &str) -> Result<Option<Table>> {
    let err = sql_err(db);
    let found: Option<(String, bool, bool)> = conn
        .query_row(
            "SELECT name, wr, strict FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name = ?1 COLLATE NOCASE",
            [name],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0, r.get::<_, i64>(2)? != 0)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(&err)?;
    let Some((name, without_rowid, strict)) = found else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare(
            "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?1, 'main') ORDER BY cid",
        )
        .map_err(&err)?;
    let columns: Vec<Column> = stmt
        .query_map([&name], |r| {
            let hidden: i64 = r.get(5)?;
            Ok(Column {
                name: r.get(0)?,
                declared: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                not_null: r.get::<_, i64>(2)? != 0,
                default: r.get(3)?,
                pk: r.get::<_, i64>(4)? as u32,
                generated: hidden == 2 || hidden == 3,
            })
        })
        .map_err(&err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(&err)?;
    let mut pk: Vec<&Column> = columns.iter().filter(|c| c.pk > 0).collect();
    pk.sort_by_key(|c| c.pk);
    let primary_key = pk.iter().map(|c| c.name.clone()).collect();

    // Foreign keys: one row per column, grouped by id, in seq order.
    let mut stmt = conn
        .prepare("SELECT id, seq, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1, 'main') ORDER BY id, seq")
        .map_err(&err)?;
    /// Per foreign key id: the parent, the columns, the parent's columns as declared.
    type Declared = (String, Vec<String>, Vec<Option<String>>);
    let mut fks: BTreeMap<i64, Declared> = BTreeMap::new();
    let rows = stmt
        .query_map([&name], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .map_err(&err)?;
    for row in rows {
        let (id, parent, from, to) = row.map_err(&err)?;
        let e = fks
            .entry(id)
            .or_insert_with(|| (parent, Vec::new(), Vec::new()));
        e.1.push(from);
        e.2.push(to);
    }
    let foreign_keys = fks
        .into_values()
        .map(|(parent, columns, to)| ForeignKey {
            columns,
            parent,
            // Resolved against the parent's key by the caller when `None`.
            parent_columns: to.into_iter().map(Option::unwrap_or_default).collect(),
        })
        .collect();

    let mut stmt = conn
        .prepare("SELECT name, \"unique\", origin, partial FROM pragma_index_list(?1, 'main') ORDER BY seq DESC")
        .map_err(&err)?;
    let list: Vec<(String, bool, String, bool)> = stmt
        .query_map([&name], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, i64>(1)? != 0,
                r.get(2)?,
                r.get::<_, i64>(3)? != 0,
            ))
        })
        .map_err(&err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(&err)?;
    let mut stmt = conn
        .prepare("SELECT name, cid FROM pragma_index_xinfo(?1, 'main') WHERE key ORDER BY seqno")
        .map_err(&err)?;
    let mut indexes = Vec::with_capacity(list.len());
    for (iname, unique, origin, partial) in list {
        let columns = stmt
            .query_map([&iname], |r| {
                let cid: i64 = r.get(1)?;
                Ok(if cid == -2 {
                    None
                } else {
                    r.get::<_, Option<String>>(0)?
                })
            })
            .map_err(&err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(&err)?;
        indexes.push(Index {
            name: iname,
            unique,
            origin,
            partial,
            columns,
        });
    }
    Ok(Some(Table {
        name,
        columns,
        primary_key,
        foreign_keys,
        indexes,
        without_rowid,
        strict,
    }))
}

// ---- the mapping -------------------------------------------------------------------------

/// How a field came to its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// `[sqlite.columns]` names the column.
    Configured,
    /// The column of the field's own name (the default).
    SameName,
    /// `[sqlite.columns]` says `""`.
    ConfiguredAbsent,
    /// No column of the field's name, and the config maps none.
    NoColumn,
    /// The column of the field's name is in `sqlite.ignore_columns`.
    Ignored,
}

/// Where one field lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mapped {
    pub field: Field,
    /// The column, as the table spells it; `None` when the field is absent.
    pub column: Option<String>,
    pub how: How,
}

/// sessiondb's fields mapped onto the sessions table's columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mapping(pub Vec<Mapped>);

impl Mapping {
    /// The column of `field`, if it has one.
    pub fn column(&self, field: Field) -> Option<&str> {
        self.0
            .iter()
            .find(|m| m.field == field)
            .and_then(|m| m.column.as_deref())
    }

    /// The field mapped onto `column`, if any.
    pub fn field_of(&self, column: &str) -> Option<Field> {
        self.0
            .iter()
            .find(|m| {
                m.column
                    .as_deref()
                    .is_some_and(|c| c.eq_ignore_ascii_case(column))
            })
            .map(|m| m.field)
    }

    /// Every field with where it lives, in SPEC §1's order.
    pub fn iter(&self) -> impl Iterator<Item = &Mapped> {
        self.0.iter()
    }

    /// Whether every field is at the column of its own name or absent for want of one.
    pub fn is_identity(&self) -> bool {
        self.0.iter().all(|m| match &m.column {
            Some(c) => c.eq_ignore_ascii_case(m.field.name()),
            None => m.how == How::NoColumn,
        })
    }
}

/// Resolve the mapping of `app` against `table`: a column named in the config must
/// exist (else `config_invalid`, naming the key and the columns there are); `id` must
/// land on a column.
pub fn resolve_mapping(config: &Path, table: &Table, app: &AppSchema) -> Result<Mapping> {
    let invalid = |key: String, message: String| Error::MappingInvalid {
        config: config.to_path_buf(),
        key,
        message,
    };
    let have = || {
        table
            .stored_columns()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ignored = |c: &str| app.ignore_columns.iter().any(|i| i.eq_ignore_ascii_case(c));
    let mut out = Vec::with_capacity(Field::ALL.len());
    for field in Field::ALL {
        let m = match app.columns.get(&field).map(String::as_str) {
            Some("") => Mapped {
                field,
                column: None,
                how: How::ConfiguredAbsent,
            },
            Some(col) => {
                let c = table.column(col).ok_or_else(|| {
                    invalid(
                        format!("[sqlite.columns] {field}"),
                        format!(
                            "table {:?} has no column {col:?} (its columns: {}); map {field} to one of them, or to \"\" if it has none",
                            table.name,
                            have()
                        ),
                    )
                })?;
                if c.generated {
                    return Err(invalid(
                        format!("[sqlite.columns] {field}"),
                        format!(
                            "column {col:?} is a generated column; map {field} to a stored one"
                        ),
                    ));
                }
                Mapped {
                    field,
                    column: Some(c.name.clone()),
                    how: How::Configured,
                }
            }
            None => match table.column(field.name()).filter(|c| !c.generated) {
                Some(c) if ignored(&c.name) => Mapped {
                    field,
                    column: None,
                    how: How::Ignored,
                },
                Some(c) => Mapped {
                    field,
                    column: Some(c.name.clone()),
                    how: How::SameName,
                },
                None => Mapped {
                    field,
                    column: None,
                    how: How::NoColumn,
                },
            },
        };
        out.push(m);
    }
    if out[0].column.is_none() {
        return Err(invalid(
            "[sqlite.columns] id".into(),
            format!(
                "table {:?} has no column \"id\" (its columns: {}); map id to the column that holds the session's id",
                table.name,
                have()
            ),
        ));
    }
    Ok(Mapping(out))
}

// ---- the shape ---------------------------------------------------------------------------

/// Whether the store is SPEC §1's default shape (loaded as today, `v1:` hashes, the
/// target of SPEC §2) or the application's own (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Default,
    Mapped,
}

/// The source as it is: the sessions table, the mapping, the extra columns, and the
/// tables copied with it in foreign-key order.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub db: PathBuf,
    pub sessions: Table,
    pub mapping: Mapping,
    /// Every stored column of the sessions table that no field maps and that is not
    /// ignored, in table order: carried as it is.
    pub extras: Vec<String>,
    /// Columns left behind on purpose (`sqlite.ignore_columns`).
    pub ignored: Vec<String>,
    /// Tables copied before the sessions: their FK parents (recursively) and the
    /// `copy_tables` that do not depend on the sessions, parents first.
    pub parents: Vec<Table>,
    /// `copy_tables` that reference the sessions (directly or not): copied after them.
    pub children: Vec<Table>,
    pub mode: Mode,
    #[serde(skip)]
    pub warnings: Vec<Finding>,
}

impl Shape {
    /// Read the shape of the store at `db` (open, read-only) as `app` says to read it.
    /// `config` names the config file in errors. Errors: no sessions table
    /// (`sqlite_schema`), a name in the config the database lacks (`config_invalid`), a
    /// cycle of foreign keys or a copied table without a primary key (`sqlite_schema`).
    pub fn read(conn: &Connection, db: &Path, config: &Path, app: &AppSchema) -> Result<Shape> {
        let sessions = read_table(conn, db, &app.table)?.ok_or_else(|| Error::SourceSchema {
            path: db.to_path_buf(),
            message: format!(
                "no table {:?}{}",
                app.table,
                if app.table == DEFAULT_TABLE {
                    " (set sqlite.table to the application's sessions table)".to_owned()
                } else {
                    format!(" (sqlite.table in {})", config.display())
                }
            ),
        })?;
        let mapping = resolve_mapping(config, &sessions, app)?;
        let mut warnings = Vec::new();
        for i in &app.ignore_columns {
            if sessions.column(i).is_none() {
                return Err(Error::MappingInvalid {
                    config: config.to_path_buf(),
                    key: "sqlite.ignore_columns".into(),
                    message: format!("table {:?} has no column {i:?}", sessions.name),
                });
            }
        }
        let ignored: Vec<String> = sessions
            .stored_columns()
            .filter(|c| {
                app.ignore_columns
                    .iter()
                    .any(|i| i.eq_ignore_ascii_case(&c.name))
            })
            .map(|c| c.name.clone())
            .collect();
        for c in &ignored {
            warnings.push(Finding::new(
                "column_ignored",
                format!(
                    "column {:?} of table {:?} is left behind (sqlite.ignore_columns): not migrated, and not restored by rollback",
                    c, sessions.name
                ),
            ));
        }
        for c in sessions.columns.iter().filter(|c| c.generated) {
            warnings.push(Finding::new(
                "generated_column",
                format!(
                    "column {:?} of table {:?} is generated from other columns: not copied",
                    c.name, sessions.name
                ),
            ));
        }
        let extras = sessions
            .stored_columns()
            .filter(|c| mapping.field_of(&c.name).is_none() && !ignored.contains(&c.name))
            .map(|c| c.name.clone())
            .collect();
        let (parents, children) = related_tables(conn, db, config, &sessions, app, &mut warnings)?;
        let default_columns = sessions
            .stored_columns()
            .all(|c| Field::parse(&c.name.to_ascii_lowercase()).is_some());
        let mode = if app.customised().is_empty()
            && default_columns
            && sessions.foreign_keys.is_empty()
            && mapping.is_identity()
        {
            Mode::Default
        } else {
            Mode::Mapped
        };
        Ok(Shape {
            db: db.to_path_buf(),
            sessions,
            mapping,
            extras,
            ignored,
            parents,
            children,
            mode,
            warnings,
        })
    }

    /// Every copied table, in load order: parents, the sessions table, children.
    pub fn load_order(&self) -> Vec<&Table> {
        self.parents
            .iter()
            .chain(std::iter::once(&self.sessions))
            .chain(&self.children)
            .collect()
    }
}

/// The tables copied with the sessions: FK parents (recursively) and `copy_tables`
/// (with their parents), split into those loaded before the sessions and those that
/// depend on them, each part in foreign-key order (parents first; ties by name).
fn related_tables(
    conn: &Connection,
    db: &Path,
    config: &Path,
    sessions: &Table,
    app: &AppSchema,
    warnings: &mut Vec<Finding>,
) -> Result<(Vec<Table>, Vec<Table>)> {
    let key = |n: &str| n.to_ascii_lowercase();
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    tables.insert(key(&sessions.name), sessions.clone());
    let mut todo: Vec<String> = sessions
        .foreign_keys
        .iter()
        .map(|f| f.parent.clone())
        .collect();
    for t in &app.copy_tables {
        if read_table(conn, db, t)?.is_none() {
            return Err(Error::MappingInvalid {
                config: config.to_path_buf(),
                key: "sqlite.copy_tables".into(),
                message: format!("the database has no table {t:?}"),
            });
        }
        todo.push(t.clone());
    }
    // Who references a table that is not there.
    let mut missing: BTreeSet<String> = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if tables.contains_key(&key(&name)) || missing.contains(&key(&name)) {
            continue;
        }
        match read_table(conn, db, &name)? {
            None => {
                missing.insert(key(&name));
            }
            Some(t) => {
                todo.extend(t.foreign_keys.iter().map(|f| f.parent.clone()));
                tables.insert(key(&t.name), t);
            }
        }
    }
    // Resolve omitted parent columns to the parent's key; drop dangling references.
    let pks: BTreeMap<String, Vec<String>> = tables
        .iter()
        .map(|(k, t)| (k.clone(), t.primary_key.clone()))
        .collect();
    for t in tables.values_mut() {
        let tname = t.name.clone();
        t.foreign_keys.retain_mut(|fk| {
            let Some(pk) = pks.get(&key(&fk.parent)) else {
                warnings.push(Finding::new(
                    "dangling_foreign_key",
                    format!(
                        "table {tname:?} declares a foreign key ({}) to {:?}, which the database does not have: not followed",
                        fk.columns.join(", "),
                        fk.parent
                    ),
                ));
                return false;
            };
            if fk.parent_columns.iter().all(String::is_empty) {
                fk.parent_columns = pk.clone();
            }
            true
        });
    }
    for t in tables.values() {
        if t.name != sessions.name && t.primary_key.is_empty() {
            return Err(Error::SourceSchema {
                path: db.to_path_buf(),
                message: format!(
                    "table {:?} has no primary key, and a copied table is copied and compared row by row by its primary key; give it one, or leave it out of sqlite.copy_tables",
                    t.name
                ),
            });
        }
    }
    let order = topological(&tables).map_err(|cycle| Error::SourceSchema {
        path: db.to_path_buf(),
        message: format!(
            "the foreign keys of tables {} form a cycle, so no table can be loaded first",
            cycle.join(", ")
        ),
    })?;
    // Which tables depend on the sessions, directly or through others.
    let skey = key(&sessions.name);
    let mut dependent: BTreeSet<String> = BTreeSet::new();
    for name in &order {
        let t = &tables[name];
        if t.foreign_keys.iter().any(|f| {
            let p = key(&f.parent);
            p != *name && (p == skey || dependent.contains(&p))
        }) {
            dependent.insert(name.clone());
        }
    }
    if let Some(fk) = sessions
        .foreign_keys
        .iter()
        .find(|f| dependent.contains(&key(&f.parent)))
    {
        return Err(Error::SourceSchema {
            path: db.to_path_buf(),
            message: format!(
                "table {:?} references {:?}, which references it back: the foreign keys form a cycle",
                sessions.name, fk.parent
            ),
        });
    }
    let (mut parents, mut children) = (Vec::new(), Vec::new());
    for name in order {
        if name == skey {
            continue;
        }
        let t = tables.remove(&name).expect("ordered tables are known");
        if dependent.contains(&name) {
            children.push(t);
        } else {
            parents.push(t);
        }
    }
    Ok((parents, children))
}

/// Kahn's algorithm, parents first, ties by name; self-references do not count. The
/// error lists the tables left in a cycle.
fn topological(tables: &BTreeMap<String, Table>) -> std::result::Result<Vec<String>, Vec<String>> {
    let key = |n: &str| n.to_ascii_lowercase();
    let mut deps: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (k, t) in tables {
        let d = t
            .foreign_keys
            .iter()
            .map(|f| key(&f.parent))
            .filter(|p| p != k && tables.contains_key(p))
            .collect();
        deps.insert(k.as_str(), d);
    }
    let mut order = Vec::with_capacity(tables.len());
    let mut done: BTreeSet<String> = BTreeSet::new();
    loop {
        let ready: Vec<&str> = deps
            .iter()
            .filter(|(k, d)| !done.contains(**k) && d.iter().all(|p| done.contains(p)))
            .map(|(k, _)| *k)
            .collect();
        let Some(next) = ready.first() else { break };
        done.insert((*next).to_owned());
        order.push((*next).to_owned());
    }
    if order.len() < tables.len() {
        return Err(tables
            .values()
            .filter(|t| !done.contains(&key(&t.name)))
            .map(|t| format!("{:?}", t.name))
            .collect());
    }
    Ok(order)
}

// ---- values: the scan and the type choice -------------------------------------------------

/// What one column holds, counted over every row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ColumnScan {
    pub rows: u64,
    pub nulls: u64,
    pub integers: u64,
    pub reals: u64,
    pub texts: u64,
    /// BLOBs, and TEXT that is not UTF-8.
    pub blobs: u64,
    /// Integers that are 0 or 1.
    pub zero_one: u64,
    /// Texts that are a boolean's word (`true`, `f`...).
    pub bool_texts: u64,
    /// Texts that are a timestamp without a zone.
    pub naive_texts: u64,
    /// Texts that are a timestamp with a zone.
    pub aware_texts: u64,
    /// Texts that are a date alone (`YYYY-MM-DD`).
    pub date_texts: u64,
    /// Texts that are a number (`"0.5"`, `" 3 "`).
    pub number_texts: u64,
    /// Texts that are a JSON object or array.
    pub json_texts: u64,
    /// Numbers that look like epoch seconds or milliseconds (≥ 1e8).
    pub epoch_numbers: u64,
    /// The longest text, in characters.
    pub max_chars: u64,
    /// A few values that did not fit the kind the column was given, for messages.
    pub odd: Vec<String>,
}

impl ColumnScan {
    /// Values that are not NULL.
    pub fn values(&self) -> u64 {
        self.rows - self.nulls
    }

    pub fn add(&mut self, v: &Raw) {
        self.rows += 1;
        match v {
            Raw::Null => self.nulls += 1,
            Raw::Integer(i) => {
                self.integers += 1;
                if *i == 0 || *i == 1 {
                    self.zero_one += 1;
                }
                if i.unsigned_abs() >= 100_000_000 {
                    self.epoch_numbers += 1;
                }
            }
            Raw::Real(f) => {
                self.reals += 1;
                if f.abs() >= 1e8 {
                    self.epoch_numbers += 1;
                }
            }
            Raw::Blob(_) => self.blobs += 1,
            Raw::Text(s) => {
                self.texts += 1;
                self.max_chars = self.max_chars.max(s.chars().count() as u64);
                let t = s.trim();
                if super::fields::boolean("", v).is_ok()
                    && !t.is_empty()
                    && t.parse::<f64>().is_err()
                {
                    self.bool_texts += 1;
                }
                if chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok() {
                    self.date_texts += 1;
                } else if t.parse::<f64>().is_ok() {
                    self.number_texts += 1;
                } else {
                    match super::fields::parse_timestamp("", v) {
                        Ok(Some(super::fields::Stamp::Naive(_))) => self.naive_texts += 1,
                        Ok(Some(super::fields::Stamp::Aware(_))) => self.aware_texts += 1,
                        _ => {}
                    }
                }
                if (t.starts_with('{') || t.starts_with('['))
                    && crate::canon::canonicalize(t.as_bytes()).is_ok()
                {
                    self.json_texts += 1;
                }
            }
        }
    }

    fn note_odd(&mut self, v: &Raw) {
        if self.odd.len() < 3 && !matches!(v, Raw::Null) {
            self.odd.push(v.describe());
        }
    }
}

/// Read every row of `table` once (one read transaction) and count what each stored
/// column holds; the result is in the order of [`Table::stored_columns`].
pub fn scan_table(conn: &Connection, db: &Path, table: &Table) -> Result<Vec<ColumnScan>> {
    let cols: Vec<&Column> = table.stored_columns().collect();
    let mut scans = vec![ColumnScan::default(); cols.len()];
    if cols.is_empty() {
        return Ok(scans);
    }
    let err = sql_err(db);
    let list = cols
        .iter()
        .map(|c| ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    // One read transaction of its own, unless the caller holds one (the mapped load
    // reads the scan and the rows in one).
    let own = conn.is_autocommit();
    if own {
        conn.execute_batch("BEGIN DEFERRED").map_err(&err)?;
    }
    let result = (|| -> Result<()> {
        let mut stmt = conn
            .prepare(&format!("SELECT {list} FROM {}", ident(&table.name)))
            .map_err(&err)?;
        let mut rows = stmt.query([]).map_err(&err)?;
        while let Some(r) = rows.next().map_err(&err)? {
            for (i, s) in scans.iter_mut().enumerate() {
                let v = Raw::from_sqlite(r.get_ref(i).map_err(&err)?);
                s.add(&v);
                if s.odd.len() < 3 {
                    // Kept for messages when the column turns out to be mixed.
                    if matches!(v, Raw::Blob(_))
                        || (matches!(v, Raw::Text(_)) && s.integers + s.reals > 0)
                    {
                        s.note_odd(&v);
                    }
                }
            }
        }
        Ok(())
    })();
    if own {
        let _ = conn.execute_batch("COMMIT");
    }
    result?;
    Ok(scans)
}

/// The PostgreSQL type sessiondb gives a column of a table it creates, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypeChoice {
    pub pg: PgType,
    /// What the source column holds (for the compatibility table).
    pub kind: SourceKind,
    /// A sentence: "declared DATETIME, 120 naive timestamps".
    pub reason: String,
    /// Set when the values disagree with the declared type.
    pub warning: Option<String>,
}

/// What a declared type says, by SQLite's affinity rules (section 3.1 of its datatype
/// page) and the names ORMs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Declared {
    Boolean,
    Datetime,
    Date,
    Json,
    Integer,
    Real,
    Text,
    Blob,
    /// NUMERIC affinity: `NUMERIC`, `DECIMAL(10,2)`...
    Numeric,
    /// No type at all.
    None,
}

fn declared(decl: &str) -> Declared {
    let d = decl.to_ascii_uppercase();
    let d = d.trim();
    if d.is_empty() {
        return Declared::None;
    }
    if d.contains("BOOL") {
        return Declared::Boolean;
    }
    if d.contains("DATETIME") || d.contains("TIMESTAMP") {
        return Declared::Datetime;
    }
    if d == "DATE" {
        return Declared::Date;
    }
    if d.contains("JSON") {
        return Declared::Json;
    }
    if d.contains("INT") {
        Declared::Integer
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        Declared::Text
    } else if d.contains("BLOB") {
        Declared::Blob
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        Declared::Real
    } else {
        Declared::Numeric
    }
}

/// `NUMERIC(10,2)` / `DECIMAL(10, 2)` → (10, 2).
fn declared_precision(decl: &str) -> Option<(u32, i32)> {
    let (_, args) = decl.split_once('(')?;
    let args = args.strip_suffix(')')?;
    let mut it = args.split(',').map(|a| a.trim().parse::<i64>().ok());
    let p = it.next()??;
    let s = it.next().flatten().unwrap_or(0);
    ((1..=1000).contains(&p) && (0..=p).contains(&s)).then_some((p as u32, s as i32))
}

fn plural(n: u64, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// Choose the PostgreSQL type of a column sessiondb creates (SPEC §9), from its
/// declared type AND its values: INTEGER → bigint, REAL/FLOAT/DOUBLE → double
/// precision, BOOLEAN (or, without a declared type, only 0/1) → boolean, DATETIME /
/// TIMESTAMP → timestamp without time zone for naive text and timestamptz for zoned
/// text or epochs, DATE → date, JSON → jsonb, BLOB → bytea, NUMERIC(p,s) → numeric(p,s),
/// TEXT and the rest → text. A declared type its values contradict (an INTEGER column
/// holding text) falls back to text, with a warning. A declared TEXT column stays text
/// even when it holds timestamps: the application reads it as text.
pub fn choose_type(column: &Column, scan: &ColumnScan) -> TypeChoice {
    let d = declared(&column.declared);
    let n = scan.values();
    let decl = if column.declared.is_empty() {
        "no declared type".to_owned()
    } else {
        format!("declared {}", column.declared)
    };
    let choice = |pg: PgType, kind: SourceKind, what: String| TypeChoice {
        kind: if n == 0 { SourceKind::Empty } else { kind },
        pg,
        reason: if n == 0 {
            format!("{decl}, no value yet")
        } else {
            format!("{decl}, {what}")
        },
        warning: None,
    };
    let numbers = scan.integers + scan.reals;
    let all_ints = scan.integers == n;
    let all_numbers = numbers == n;
    let stamps = scan.naive_texts + scan.aware_texts + scan.date_texts;
    let all_stamps = stamps + scan.epoch_numbers == n && scan.epoch_numbers <= numbers;
    let timestamp = || {
        if scan.aware_texts > 0 || (scan.naive_texts == 0 && scan.date_texts == 0) {
            let mut c = choice(
                PgType::TimestampTz(None),
                SourceKind::AwareTimestamp,
                format!(
                    "{} with a zone{}",
                    plural(scan.aware_texts, "timestamp"),
                    if scan.epoch_numbers > 0 {
                        format!(", {}", plural(scan.epoch_numbers, "epoch number"))
                    } else {
                        String::new()
                    }
                ),
            );
            if scan.naive_texts > 0 {
                c.warning = Some(format!(
                    "{} naive and {} zoned timestamps: the naive ones are taken as UTC",
                    scan.naive_texts, scan.aware_texts
                ));
            }
            c
        } else {
            choice(
                PgType::Timestamp(None),
                SourceKind::NaiveTimestamp,
                format!(
                    "{} without a zone",
                    plural(scan.naive_texts + scan.date_texts, "timestamp")
                ),
            )
        }
    };
    let fallback = |why: String| {
        let mut c = by_values(column, scan, &decl);
        c.warning = Some(format!("{decl}, but {why}: chosen {}", c.pg));
        c
    };
    match d {
        _ if n == 0 => by_declared(d, column, &decl),
        Declared::Boolean if scan.zero_one + scan.bool_texts == n => choice(
            PgType::Boolean,
            SourceKind::Boolean,
            format!("{} 0/1", plural(n, "value")),
        ),
        Declared::Boolean => fallback("some values are not 0/1".into()),
        Declared::Datetime | Declared::Date if all_stamps => {
            if d == Declared::Date && scan.date_texts == n {
                choice(PgType::Date, SourceKind::Date, plural(n, "date"))
            } else {
                timestamp()
            }
        }
        Declared::Datetime | Declared::Date => fallback(format!(
            "{} of {n} values are not timestamps",
            n - stamps.min(n)
        )),
        Declared::Json if scan.json_texts == n => {
            choice(PgType::Jsonb, SourceKind::Json, plural(n, "JSON document"))
        }
        Declared::Json => fallback(format!(
            "{} of {n} values are not JSON documents",
            n - scan.json_texts
        )),
        Declared::Integer if all_ints => {
            choice(PgType::BigInt, SourceKind::Integer, plural(n, "integer"))
        }
        Declared::Integer if all_numbers => {
            let mut c = choice(
                PgType::Double,
                SourceKind::Real,
                format!(
                    "{} and {}",
                    plural(scan.integers, "integer"),
                    plural(scan.reals, "real")
                ),
            );
            c.warning = Some(format!(
                "{decl}, but {} have a fraction: chosen double precision",
                plural(scan.reals, "value")
            ));
            c
        }
        Declared::Real | Declared::Numeric if all_numbers => {
            match declared_precision(&column.declared).filter(|_| d == Declared::Numeric) {
                Some(ps) => choice(
                    PgType::Numeric(Some(ps)),
                    SourceKind::Real,
                    plural(n, "number"),
                ),
                None => choice(PgType::Double, SourceKind::Real, plural(n, "number")),
            }
        }
        Declared::Integer | Declared::Real | Declared::Numeric => {
            fallback(format!("{} of {n} values are not numbers", n - numbers))
        }
        Declared::Text if scan.blobs == 0 => {
            choice(PgType::Text, SourceKind::Text, plural(n, "text"))
        }
        Declared::Text => fallback(format!(
            "{} are not UTF-8 text",
            plural(scan.blobs, "value")
        )),
        Declared::Blob if scan.blobs == n => {
            choice(PgType::Bytea, SourceKind::Blob, plural(n, "blob"))
        }
        Declared::Blob => fallback(format!("{} of {n} values are not blobs", n - scan.blobs)),
        Declared::None => by_values(column, scan, &decl),
    }
}

/// A column with no value: its declared type alone.
fn by_declared(d: Declared, column: &Column, decl: &str) -> TypeChoice {
    let pg = match d {
        Declared::Boolean => PgType::Boolean,
        // SQLAlchemy's DateTime is naive.
        Declared::Datetime => PgType::Timestamp(None),
        Declared::Date => PgType::Date,
        Declared::Json => PgType::Jsonb,
        Declared::Integer => PgType::BigInt,
        Declared::Real => PgType::Double,
        Declared::Numeric => PgType::Numeric(declared_precision(&column.declared)),
        Declared::Blob => PgType::Bytea,
        Declared::Text | Declared::None => PgType::Text,
    };
    TypeChoice {
        pg,
        kind: SourceKind::Empty,
        reason: format!("{decl}, no value yet"),
        warning: None,
    }
}

/// No declared type (or one its values contradict): the values decide. Only 0/1 →
/// boolean (SPEC §9), integers → bigint, numbers → double precision, blobs → bytea,
/// timestamps → timestamp / timestamptz, anything else or a mix → text.
fn by_values(_column: &Column, scan: &ColumnScan, decl: &str) -> TypeChoice {
    let n = scan.values();
    let mk = |pg: PgType, kind: SourceKind, what: String| TypeChoice {
        pg,
        kind,
        reason: format!("{decl}, {what}"),
        warning: None,
    };
    if n == 0 {
        return TypeChoice {
            pg: PgType::Text,
            kind: SourceKind::Empty,
            reason: format!("{decl}, no value yet"),
            warning: None,
        };
    }
    if scan.zero_one == n {
        return mk(
            PgType::Boolean,
            SourceKind::Boolean,
            format!("only 0/1 in {}", plural(n, "value")),
        );
    }
    if scan.integers == n {
        return mk(PgType::BigInt, SourceKind::Integer, plural(n, "integer"));
    }
    if scan.integers + scan.reals == n {
        return mk(PgType::Double, SourceKind::Real, plural(n, "number"));
    }
    if scan.blobs == n {
        return mk(PgType::Bytea, SourceKind::Blob, plural(n, "blob"));
    }
    if scan.texts == n && scan.naive_texts + scan.aware_texts == n {
        return if scan.aware_texts > 0 {
            mk(
                PgType::TimestampTz(None),
                SourceKind::AwareTimestamp,
                plural(n, "timestamp"),
            )
        } else {
            mk(
                PgType::Timestamp(None),
                SourceKind::NaiveTimestamp,
                format!("{} without a zone", plural(n, "timestamp")),
            )
        };
    }
    let mut c = mk(PgType::Text, SourceKind::Text, plural(n, "value"));
    if scan.texts != n {
        c.warning = Some(format!(
            "{decl}, and its values are of several kinds ({} texts, {} integers, {} reals, {} blobs{}): chosen text",
            scan.texts,
            scan.integers,
            scan.reals,
            scan.blobs,
            if scan.odd.is_empty() {
                String::new()
            } else {
                format!("; e.g. {}", scan.odd.join(", "))
            }
        ));
    }
    c
}

// ---- the deprecated JSON store's records ----------------------------------------------------

/// The keys the JSON store's records use, from a sample of them (for `init`'s
/// `[json.fields]` guesses).
#[derive(Debug, Clone, Default, Serialize)]
pub struct JsonKeys {
    pub records: u64,
    /// How many records were looked at (the first ones).
    pub sampled: u64,
    /// Key → how many sampled records have it.
    pub keys: BTreeMap<String, u64>,
    /// Key → the kind of value it held first (`string`, `number`, `object`...).
    pub kinds: BTreeMap<String, &'static str>,
}

/// Index the JSON store (streamed, as the load does) and read the first `sample`
/// records' keys.
pub fn json_store_keys(path: &Path, sample: usize) -> Result<JsonKeys> {
    let (records, _) = super::json_store::load(path)?;
    let mut out = JsonKeys {
        records: records.len() as u64,
        ..JsonKeys::default()
    };
    for r in records.iter().take(sample) {
        out.sampled += 1;
        let raw = r.raw()?;
        let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(&raw)
        else {
            continue;
        };
        for (k, v) in m {
            *out.keys.entry(k.clone()).or_default() += 1;
            out.kinds.entry(k).or_insert(match v {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "boolean",
                serde_json::Value::Number(_) => "number",
                serde_json::Value::String(_) => "string",
                serde_json::Value::Array(_) => "array",
                serde_json::Value::Object(_) => "object",
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The application's schema, as its ORM creates it (issue 17).
    const APP_DDL: &str = crate::fixture::app::DDL;

    struct Db {
        _dir: tempfile::TempDir,
        path: PathBuf,
        conn: Connection,
    }

    fn db(ddl: &str) -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let w = Connection::open(&path).unwrap();
        w.execute_batch(ddl).unwrap();
        drop(w);
        let conn = crate::source::sqlite::open(&path).unwrap();
        Db {
            _dir: dir,
            path,
            conn,
        }
    }

    fn app(toml_tail: &str) -> AppSchema {
        let text =
            format!("[sessiondb]\nbackend = \"sqlite\"\n[sqlite]\npath = \"app.db\"\n{toml_tail}");
        Config::parse(Path::new("/c/sessiondb.toml"), &text, &Default::default())
            .unwrap()
            .app
    }

    fn shape(d: &Db, a: &AppSchema) -> Result<Shape> {
        Shape::read(&d.conn, &d.path, Path::new("/c/sessiondb.toml"), a)
    }

    #[test]
    fn the_application_schema_is_read_as_it_is() {
        let d = db(APP_DDL);
        let s = shape(
            &d,
            &app("[sqlite.columns]\ncost = \"last_cost_usd\"\nstate = \"\"\n"),
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Mapped);
        assert_eq!(s.mapping.column(Field::Id), Some("id"));
        assert_eq!(s.mapping.column(Field::Cost), Some("last_cost_usd"));
        assert_eq!(s.mapping.column(Field::State), None);
        assert_eq!(s.mapping.column(Field::CreatedAt), Some("created_at"));
        let how: Vec<How> = s.mapping.iter().map(|m| m.how).collect();
        assert_eq!(how[4], How::Configured);
        assert_eq!(how[7], How::ConfiguredAbsent);
        assert_eq!(s.extras, ["question", "is_deleted", "last_total_tokens"]);
        assert_eq!(s.parents.len(), 1);
        let users = &s.parents[0];
        assert_eq!(users.name, "users");
        assert_eq!(users.primary_key, ["id"]);
        assert!(users.is_unique("external_id"));
        assert!(s.children.is_empty());
        assert_eq!(
            s.sessions.foreign_keys,
            [ForeignKey {
                columns: vec!["user_id".into()],
                parent: "users".into(),
                parent_columns: vec!["id".into()],
            }]
        );
        let names: Vec<&str> = s.load_order().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["users", "sessions"]);
        let ix: Vec<&str> = s.sessions.indexes.iter().map(|i| i.name.as_str()).collect();
        assert!(ix.contains(&"ix_sessions_is_deleted") && ix.contains(&"ix_sessions_user_id"));
        let col = s.sessions.column("IS_DELETED").unwrap();
        assert_eq!((col.declared.as_str(), col.not_null), ("BOOLEAN", true));
    }

    #[test]
    fn the_default_store_is_the_default_shape() {
        let d = db(&crate::fixture::sqlite_ddl(false));
        let s = shape(&d, &app("")).unwrap();
        assert_eq!(s.mode, Mode::Default);
        assert!(s.mapping.is_identity());
        assert!(s.extras.is_empty() && s.parents.is_empty());
        // Naming the defaults changes nothing.
        let s = shape(
            &d,
            &app("table = \"sessions\"\n[sqlite.columns]\ncost = \"cost\"\n"),
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Default);
        // A subset of the default columns is still the default shape...
        let d = db("CREATE TABLE sessions (id TEXT PRIMARY KEY, status TEXT, created_at TEXT);");
        assert_eq!(shape(&d, &app("")).unwrap().mode, Mode::Default);
        // ...but one more column is not.
        let d = db("CREATE TABLE sessions (id TEXT PRIMARY KEY, status TEXT, question TEXT);");
        let s = shape(&d, &app("")).unwrap();
        assert_eq!(
            (s.mode, s.extras.as_slice()),
            (Mode::Mapped, ["question".to_owned()].as_slice())
        );
    }

    #[test]
    fn names_can_hold_anything() {
        let d = db(r#"
            CREATE TABLE "we""ird'; DROP TABLE x;--" ("the id" TEXT PRIMARY KEY, "co""st" REAL, "new
line" TEXT, "État" INTEGER);
            INSERT INTO "we""ird'; DROP TABLE x;--" VALUES ('a', 1.5, 'x', 3), ('b', NULL, NULL, 4);
        "#);
        let a = app(
            "table = \"we\\\"ird'; DROP TABLE x;--\"\n[sqlite.columns]\nid = \"the id\"\ncost = 'co\"st'\n",
        );
        let s = shape(&d, &a).unwrap();
        assert_eq!(s.sessions.name, "we\"ird'; DROP TABLE x;--");
        assert_eq!(s.mapping.column(Field::Cost), Some("co\"st"));
        assert_eq!(s.extras, ["new\nline", "État"]);
        let scans = scan_table(&d.conn, &d.path, &s.sessions).unwrap();
        assert_eq!(scans[1].reals, 1);
        assert_eq!(scans[1].nulls, 1);
        assert_eq!(scans[3].integers, 2);
    }

    #[test]
    fn config_names_the_database_lacks_are_config_invalid() {
        let d = db(APP_DDL);
        let e = shape(&d, &app("[sqlite.columns]\ncost = \"price\"\n")).unwrap_err();
        assert_eq!(e.code(), "config_invalid");
        let m = e.to_string();
        assert!(
            m.contains("[sqlite.columns] cost")
                && m.contains("\"price\"")
                && m.contains("last_cost_usd"),
            "{m}"
        );
        let e = shape(&d, &app("ignore_columns = [\"nope\"]\n")).unwrap_err();
        assert!(e.to_string().contains("sqlite.ignore_columns"), "{e}");
        let e = shape(&d, &app("copy_tables = [\"nope\"]\n")).unwrap_err();
        assert!(e.to_string().contains("sqlite.copy_tables"), "{e}");
        let e = shape(&d, &app("table = \"nope\"\n")).unwrap_err();
        assert_eq!(e.code(), "sqlite_schema");
        assert!(e.to_string().contains("sqlite.table"), "{e}");
        // No column named id, and none mapped.
        let d = db("CREATE TABLE sessions (sid TEXT PRIMARY KEY, status TEXT);");
        let e = shape(&d, &app("")).unwrap_err();
        assert_eq!(e.code(), "config_invalid");
        assert!(e.to_string().contains("map id"), "{e}");
        assert_eq!(
            shape(&d, &app("[sqlite.columns]\nid = \"SID\"\n"))
                .unwrap()
                .mapping
                .column(Field::Id),
            Some("sid")
        );
    }

    #[test]
    fn ignored_columns_are_left_behind_and_warned() {
        let d = db(APP_DDL);
        let s = shape(&d, &app("ignore_columns = [\"last_total_tokens\"]\n")).unwrap();
        assert_eq!(s.ignored, ["last_total_tokens"]);
        assert_eq!(s.extras, ["question", "is_deleted", "last_cost_usd"]);
        assert!(s.warnings.iter().any(|w| w.code == "column_ignored"));
        // The column of a field's own name, ignored: the field is absent.
        let s = shape(&d, &app("ignore_columns = [\"status\"]\n")).unwrap();
        assert_eq!(s.mapping.column(Field::Status), None);
        assert!(!s.extras.contains(&"status".to_owned()));
    }

    #[test]
    fn related_tables_in_foreign_key_order() {
        let d = db("
            CREATE TABLE orgs (id INTEGER PRIMARY KEY, name TEXT);
            CREATE TABLE projects (id INTEGER PRIMARY KEY, org_id INTEGER REFERENCES orgs);
            CREATE TABLE users (id TEXT PRIMARY KEY, manager TEXT REFERENCES users(id));
            CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id TEXT REFERENCES users(id),
                project_id INTEGER REFERENCES projects(id), ghost_id TEXT REFERENCES ghosts(id));
            CREATE TABLE messages (id INTEGER PRIMARY KEY, session_id TEXT REFERENCES sessions(id));
            CREATE TABLE reactions (message_id INTEGER REFERENCES messages(id), kind TEXT, PRIMARY KEY (kind, message_id));
            CREATE TABLE tags (name TEXT PRIMARY KEY);
        ");
        let s = shape(&d, &app("copy_tables = [\"reactions\", \"tags\"]\n")).unwrap();
        let names = |ts: &[Table]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&s.parents), ["orgs", "projects", "tags", "users"]);
        assert_eq!(names(&s.children), ["messages", "reactions"]);
        // The omitted parent column is the parent's key; a composite key keeps its order.
        assert_eq!(s.parents[1].foreign_keys[0].parent_columns, ["id"]);
        assert_eq!(s.children[1].primary_key, ["kind", "message_id"]);
        // A reference to a table that is not there is warned and not followed.
        assert!(
            s.warnings
                .iter()
                .any(|w| w.code == "dangling_foreign_key" && w.message.contains("ghosts"))
        );
    }

    #[test]
    fn cycles_and_keyless_parents_are_refused() {
        let d = db("
            CREATE TABLE a (id TEXT PRIMARY KEY, b_id TEXT REFERENCES b(id));
            CREATE TABLE b (id TEXT PRIMARY KEY, a_id TEXT REFERENCES a(id));
            CREATE TABLE sessions (id TEXT PRIMARY KEY, a_id TEXT REFERENCES a(id));
        ");
        let e = shape(&d, &app("")).unwrap_err();
        assert_eq!(e.code(), "sqlite_schema");
        assert!(e.to_string().contains("cycle"), "{e}");
        let d = db("
            CREATE TABLE users (id TEXT PRIMARY KEY, last_session TEXT REFERENCES sessions(id));
            CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id TEXT REFERENCES users(id));
        ");
        assert!(
            shape(&d, &app(""))
                .unwrap_err()
                .to_string()
                .contains("cycle")
        );
        let d = db("
            CREATE TABLE users (uid TEXT UNIQUE, name TEXT);
            CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id TEXT REFERENCES users(uid));
        ");
        let e = shape(&d, &app("")).unwrap_err();
        assert!(e.to_string().contains("no primary key"), "{e}");
    }

    fn choose_all(ddl: &str) -> Vec<(String, TypeChoice)> {
        let d = db(ddl);
        let t = read_table(&d.conn, &d.path, "t").unwrap().unwrap();
        let scans = scan_table(&d.conn, &d.path, &t).unwrap();
        t.stored_columns()
            .zip(&scans)
            .map(|(c, s)| (c.name.clone(), choose_type(c, s)))
            .collect()
    }

    #[test]
    fn types_from_the_declared_type_and_the_values() {
        let got = choose_all("
            CREATE TABLE t (naive DATETIME, zoned DATETIME, flag BOOLEAN, n INTEGER, mixed INTEGER,
                cost FLOAT, doc JSON, loose, bits, stamps, day DATE, money NUMERIC(10,2), raw BLOB,
                name VARCHAR(20), texty TEXT, empty_int INTEGER, empty_dt DATETIME);
            INSERT INTO t VALUES ('2025-12-10 14:08:48.347371', '2025-12-10T14:08:48Z', 1, 5, 7,
                0.5, '{\"a\": 1}', 'x', 0, '2025-12-10 14:08:48', '2025-12-10', 1.5, x'00ff',
                'ann', '2025-12-10 14:08:48', NULL, NULL);
            INSERT INTO t VALUES ('2025-12-10 14:08:49.000000', '2025-12-10 14:08:48+02:00', 0, 6, 'seven',
                2, '[1, 2]', 3, 1, '2025-12-10T14:08:48', '2025-12-11', 2, x'01',
                'bob', 'free text', NULL, NULL);
        ");
        let by: BTreeMap<&str, &TypeChoice> = got.iter().map(|(n, c)| (n.as_str(), c)).collect();
        let ty = |n: &str| by[n].pg.sql();
        assert_eq!(ty("naive"), "timestamp without time zone");
        assert_eq!(by["naive"].kind, SourceKind::NaiveTimestamp);
        assert_eq!(ty("zoned"), "timestamp with time zone");
        assert_eq!(ty("flag"), "boolean");
        assert_eq!(ty("n"), "bigint");
        assert_eq!(ty("mixed"), "text");
        assert!(
            by["mixed"].warning.as_deref().unwrap().contains("INTEGER"),
            "{:?}",
            by["mixed"]
        );
        assert_eq!(ty("cost"), "double precision");
        assert_eq!(ty("doc"), "jsonb");
        assert_eq!(ty("loose"), "text");
        assert!(by["loose"].warning.is_some());
        assert_eq!(ty("bits"), "boolean");
        assert_eq!(ty("stamps"), "timestamp without time zone");
        assert_eq!(ty("day"), "date");
        assert_eq!(ty("money"), "numeric(10,2)");
        assert_eq!(ty("raw"), "bytea");
        assert_eq!(ty("name"), "text");
        // A TEXT column stays text even when it holds timestamps.
        assert_eq!(ty("texty"), "text");
        assert_eq!(
            (ty("empty_int"), by["empty_int"].kind),
            ("bigint".to_owned(), SourceKind::Empty)
        );
        assert_eq!(ty("empty_dt"), "timestamp without time zone");
        assert!(
            by["naive"].reason.contains("DATETIME") && by["naive"].reason.contains("2 timestamps"),
            "{}",
            by["naive"].reason
        );
    }

    #[test]
    fn json_store_keys_are_sampled() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("session-db.json");
        std::fs::write(&p, r#"[{"session": "a", "repoName": "r", "createdAt": "2024-01-01T00:00:00Z", "prState": {"n": 1}}, {"session": "b", "repoName": "s"}]"#).unwrap();
        let k = json_store_keys(&p, 10).unwrap();
        assert_eq!((k.records, k.sampled), (2, 2));
        assert_eq!(k.keys["session"], 2);
        assert_eq!(k.keys["createdAt"], 1);
        assert_eq!(k.kinds["prState"], "object");
    }
}
