//! Rollback of a mapped store (SPEC §9): the application's own tables, exported back
//! from PostgreSQL by comparing the two sides, not by the load's ledger.
//!
//! For every copied table, in load order (parent tables first, in foreign-key order;
//! then the sessions table; then copied tables that reference it), every target row is
//! read and decoded by its column's PostgreSQL type (`value::pg::decode`, never a
//! server-side cast to text), and compared with the legacy row of the same primary key
//! in one canonical form: the legacy value converted to the target column's type
//! (`value::convert`), then `Value::canonical` on both. A row PostgreSQL has and SQLite
//! does not is `created`; one whose values differ is `changed`; a session whose state
//! (`session_state.state`, as jsonb canonical text) differs from its `state.json` is
//! `changed` too. Each is written back with every column the legacy table has that the
//! target holds (mapped fields and extra columns alike), each value in the form the
//! legacy column already holds its values in (`value::sqlite::Form`: booleans 0/1,
//! naive timestamps in the column's own text format), found by primary key (insert or
//! update). A column the target lacks is left as it is on an update and to its default
//! on an insert.
//!
//! Everything the legacy table cannot hold is refused here, before anything is written,
//! by the dry run as by the real run: a NOT NULL column that no target value fills
//! (`schema_mismatch`, naming the table, the column and the rows), a session whose id
//! is no safe file name when the table has no state column, a target table or key
//! column missing.
//!
//! Because the comparison is with SQLite as it is now, a rerun after a complete export
//! finds nothing left to do, whatever the ledger says.

use std::collections::{BTreeMap, HashMap};

use postgres::Client;
use rusqlite::types::Value as Sql;

use super::Changed;
use super::legacy::{Export, Legacy, MappedRow, RowData, RowWrite, StateTo, quote};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pg::catalog::{self, TargetTable};
use crate::pg::{ident, qualified};
use crate::source::fields::{self, Raw};
use crate::source::shape::{Field, Shape, Table};
use crate::source::write::STATE_FILE;
use crate::value::sqlite::Form;
use crate::value::{self, PgType, Value};

/// Where PostgreSQL keeps each session's state (SPEC §2; the application's ORM makes
/// the same table).
const STATE_TABLE: &str = "session_state";

/// One column of a legacy table, and its counterpart in the target.
#[derive(Debug, Clone)]
struct ColPlan {
    name: String,
    not_null: bool,
    has_default: bool,
    /// An `INTEGER PRIMARY KEY` (SQLite fills it).
    rowid_alias: bool,
    key: bool,
    /// The target column's name and type (`None`: the target has no such column, or
    /// it is the legacy state column, or one left behind on purpose).
    pg: Option<(String, PgType)>,
    /// The sessions table's mapped state column.
    state: bool,
}

/// One copied table: the legacy table and its target.
#[derive(Debug, Clone)]
struct TablePlan {
    name: String,
    pg_name: String,
    sessions: bool,
    cols: Vec<ColPlan>,
    /// Indexes into `cols` of the primary key, in key order.
    key: Vec<usize>,
}

/// The mapped store's tables, as rollback compares and writes them.
pub struct MappedPlan {
    schema: String,
    tables: Vec<TablePlan>,
    /// `session_state (session_id, state)` on the target, when it is there.
    state: Option<(String, String, PgType)>,
}

/// A legacy row: its values by column (aligned with [`TablePlan::cols`]).
type LegacyRows = HashMap<Vec<String>, Vec<Raw>>;

fn mismatch(table: &str, column: Option<&str>, message: String, fix: String) -> Error {
    Error::SchemaMismatch {
        table: table.to_owned(),
        column: column.map(str::to_owned),
        message,
        fix,
    }
}

/// Whether the target and the config make this a mapped store (else SPEC §2's
/// default layout, rolled back as before): the same rule as the runtime store's.
pub fn is_mapped(cfg: &Config, tables: &BTreeMap<String, TargetTable>) -> bool {
    !cfg.app.customised().is_empty()
        || tables.get(crate::config::DEFAULT_TABLE).is_some_and(|t| {
            !t.columns.iter().all(|c| Field::parse(&c.name).is_some()) || !t.foreign_keys.is_empty()
        })
}

fn find<'a>(tables: &'a BTreeMap<String, TargetTable>, name: &str) -> Option<&'a TargetTable> {
    tables.get(name).or_else(|| {
        let mut same = tables
            .values()
            .filter(|t| t.name.eq_ignore_ascii_case(name));
        match (same.next(), same.next()) {
            (Some(t), None) => Some(t),
            _ => None,
        }
    })
}

impl MappedPlan {
    /// Read the legacy store's shape (as the config maps it) and the target's tables;
    /// pair each legacy column with its target column.
    pub fn open(cfg: &Config, legacy: &Legacy, c: &mut Client) -> Result<MappedPlan> {
        let schema = cfg.postgres.schema.clone();
        let shape = Shape::read(legacy.conn(), &legacy.db, &cfg.path, &cfg.app)?;
        let mut names: Vec<&str> = shape.load_order().iter().map(|t| t.name.as_str()).collect();
        names.push("session_state");
        crate::pg::trust::check(c, &schema, &names)?;
        let tables = catalog::read_tables(c, &schema)?;
        let state_col = shape.mapping.column(Field::State).map(str::to_owned);
        let mut plans = Vec::new();
        for t in shape.load_order() {
            let sessions = t.name == shape.sessions.name;
            let target = find(&tables, &t.name)
                .filter(|x| x.is_table())
                .ok_or_else(|| {
                    mismatch(
                        &t.name,
                        None,
                        format!(
                            "the target schema {schema:?} has no table {:?}: rollback exports its rows from there",
                            t.name
                        ),
                        "point postgres.schema at the schema the application uses, or migrate the store first".into(),
                    )
                })?;
            plans.push(table_plan(
                t,
                target,
                sessions,
                if sessions { state_col.as_deref() } else { None },
                if sessions { &shape.ignored } else { &[] },
            )?);
        }
        let state = find(&tables, STATE_TABLE).and_then(|t| {
            let sid = t.column("session_id")?;
            let st = t.column("state")?;
            let ty = st.ty.clone().ok()?;
            matches!(ty, PgType::Json | PgType::Jsonb | PgType::Text)
                .then(|| (sid.name.clone(), st.name.clone(), ty))
        });
        Ok(MappedPlan {
            schema,
            tables: plans,
            state,
        })
    }

    /// Every row created or changed in PostgreSQL relative to the legacy store, as
    /// exports (parent rows first), and every refusal found.
    pub fn changes(&self, c: &mut Client, legacy: &Legacy) -> Result<(Vec<Export>, Vec<Error>)> {
        let mut out = Vec::new();
        let mut refusals = Vec::new();
        let states = self.read_states(c)?;
        for t in &self.tables {
            let (rows, forms) = read_legacy(legacy, t)?;
            let mut unfit: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            'rows: for (vals, key) in self.read_target(c, t)? {
                let old = rows.get(&key);
                let display = key.join("|");
                let row_differs = match old {
                    None => true,
                    Some(raw) => t.cols.iter().zip(raw).zip(&vals).any(|((col, r), v)| {
                        col.pg
                            .as_ref()
                            .is_some_and(|(_, ty)| !same(&col.name, r, v, ty))
                    }),
                };
                let mut state_to = StateTo::None;
                let mut state: Option<String> = None;
                let mut state_in_column = false;
                if t.sessions {
                    let state_idx = t.cols.iter().position(|c| c.state);
                    let safe = fields::path_safe(&display);
                    let old_column = old
                        .zip(state_idx)
                        .map(|(raw, i)| &raw[i])
                        .filter(|r| !matches!(r, Raw::Null));
                    if let Some(pg_state) = states.get(&display) {
                        let legacy_state = legacy_state(legacy, &display, safe, old_column)?;
                        if legacy_state.as_deref() != Some(pg_state.canonical.as_str()) {
                            state = Some(pg_state.text.clone());
                        }
                    }
                    if let Some(s) = &state {
                        match (safe, state_idx) {
                            (true, _) => state_to = StateTo::File,
                            (false, Some(_)) => state_to = StateTo::Column,
                            (false, None) => {
                                refusals.push(mismatch(
                                    &t.name,
                                    None,
                                    format!(
                                        "session {display:?} changed its state in PostgreSQL, but its id is not a safe file name (no sessions/<id>/state.json) and the table has no state column; nothing was written"
                                    ),
                                    "map a state column in [sqlite.columns], or rename the session".into(),
                                ));
                                continue;
                            }
                        }
                        // The column too when it held state before, so the two never
                        // disagree (as for SPEC §1's table).
                        state_in_column = state_idx.is_some() && (!safe || old_column.is_some());
                        let _ = s;
                    }
                }
                if !row_differs && state.is_none() {
                    continue;
                }
                let row = match (old, row_differs || state_in_column) {
                    (None, _) => RowWrite::Insert,
                    (Some(_), true) => RowWrite::Update,
                    (Some(_), false) => RowWrite::Unchanged,
                };
                let mut cols = Vec::new();
                for (i, (col, v)) in t.cols.iter().zip(&vals).enumerate() {
                    let form = &forms[i];
                    let value = if col.state {
                        if !state_in_column {
                            if row == RowWrite::Insert && col.not_null && !col.has_default {
                                unfit
                                    .entry(col.name.as_str())
                                    .or_default()
                                    .push(display.clone());
                            }
                            continue;
                        }
                        Some(Sql::Text(state.clone().unwrap_or_default()))
                    } else if col.pg.is_some() {
                        if matches!(v, Value::Float(f) if f.is_nan()) {
                            // SQLite has no NaN: it would store NULL, silently.
                            refusals.push(mismatch(
                                &t.name,
                                Some(&col.name),
                                format!(
                                    "row {display} holds NaN on PostgreSQL, which SQLite cannot store (it would become NULL)"
                                ),
                                format!(
                                    "set a number (or NULL) in that row's {:?} on PostgreSQL, then rerun the rollback",
                                    col.name
                                ),
                            ));
                            continue 'rows;
                        }
                        if v.is_null() && col.not_null {
                            unfit
                                .entry(col.name.as_str())
                                .or_default()
                                .push(display.clone());
                        }
                        Some(v.to_sqlite(form))
                    } else {
                        if row == RowWrite::Insert
                            && col.not_null
                            && !col.has_default
                            && !col.rowid_alias
                        {
                            unfit
                                .entry(col.name.as_str())
                                .or_default()
                                .push(display.clone());
                        }
                        None
                    };
                    if let Some(v) = value
                        && (row == RowWrite::Insert || !col.key)
                    {
                        cols.push((col.name.clone(), v));
                    }
                }
                let key: Vec<(String, Sql)> = t
                    .key
                    .iter()
                    .map(|&i| {
                        let v = match old {
                            Some(raw) => raw_sql(&raw[i]),
                            None => vals[i].to_sqlite(&forms[i]),
                        };
                        (t.cols[i].name.clone(), v)
                    })
                    .collect();
                let kind = if old.is_some() { "changed" } else { "created" };
                let fp = if t.sessions {
                    match legacy.file_plan(&display, state_to, state.as_deref()) {
                        Ok(fp) => fp,
                        Err(e) => {
                            refusals.push(e);
                            continue;
                        }
                    }
                } else {
                    Default::default()
                };
                out.push(Export {
                    session: display.clone(),
                    table: (!t.sessions).then(|| t.name.clone()),
                    kind,
                    row,
                    state_to,
                    file: fp.file,
                    file_action: fp.file_action,
                    replaces_sha256: fp.replaces.map(|d| d.hex()),
                    slot: fp.slot,
                    replaces: fp.replaces,
                    values: RowData::Mapped(MappedRow {
                        table: t.name.clone(),
                        key,
                        cols,
                    }),
                    changed: Changed {
                        session: display,
                        kind,
                        meta: Default::default(),
                        state,
                        hash: String::new(),
                    },
                });
            }
            for (column, ids) in unfit {
                let first: Vec<String> = ids.iter().take(3).map(|i| format!("{i:?}")).collect();
                refusals.push(mismatch(
                    &t.name,
                    Some(column),
                    format!(
                        "the legacy table {:?} in {} has column {column:?} NOT NULL, and rollback has no value for it in {} row(s) PostgreSQL holds (e.g. {}{}): nothing was written",
                        t.name,
                        legacy.db.display(),
                        ids.len(),
                        first.join(", "),
                        if ids.len() > 3 { ", ..." } else { "" }
                    ),
                    format!(
                        "set {column} on those rows in PostgreSQL, or give the legacy column a DEFAULT (or make it nullable), then run rollback again"
                    ),
                ));
            }
        }
        Ok((out, refusals))
    }

    /// The state of every session on the target, by id, as jsonb's canonical text.
    fn read_states(&self, c: &mut Client) -> Result<HashMap<String, value::Json>> {
        let Some((sid, st, ty)) = &self.state else {
            return Ok(HashMap::new());
        };
        let sql = format!(
            "SELECT {}::pg_catalog.text, {} FROM {} WHERE {} IS NOT NULL",
            ident(sid),
            ident(st),
            qualified(&self.schema, STATE_TABLE),
            ident(st)
        );
        let mut out = HashMap::new();
        for r in c
            .query(&sql, &[])
            .map_err(|e| Error::pg("reading session_state for rollback", "", e))?
        {
            let id: String = r.get(0);
            let j = match value::pg::decode(&r, 1, ty).map_err(decode_err)? {
                Value::Json(j) => j,
                Value::Text(t) => {
                    let canonical = crate::canon::canonicalize(t.as_bytes()).unwrap_or(t.clone());
                    value::Json { text: t, canonical }
                }
                _ => continue,
            };
            out.insert(id, j);
        }
        Ok(out)
    }

    /// Every target row of `t`: its values aligned with the legacy columns (NULL where
    /// the target has no such column), and its key in canonical form.
    fn read_target(&self, c: &mut Client, t: &TablePlan) -> Result<Vec<(Vec<Value>, Vec<String>)>> {
        let read: Vec<(usize, &str, &PgType)> = t
            .cols
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.pg.as_ref().map(|(n, ty)| (i, n.as_str(), ty)))
            .collect();
        let list: Vec<String> = read.iter().map(|(_, n, _)| ident(n)).collect();
        let sql = format!(
            "SELECT {} FROM {}",
            list.join(", "),
            qualified(&self.schema, &t.pg_name)
        );
        let mut out = Vec::new();
        for r in c
            .query(&sql, &[])
            .map_err(|e| Error::pg("reading the target's rows for rollback", "", e))?
        {
            let mut vals = vec![Value::Null; t.cols.len()];
            for (j, (i, _, ty)) in read.iter().enumerate() {
                vals[*i] = value::pg::decode(&r, j, ty).map_err(decode_err)?;
            }
            let key = t.key.iter().map(|&i| canonical_key(&vals[i])).collect();
            out.push((vals, key));
        }
        Ok(out)
    }
}

fn decode_err(e: value::pg::DecodeError) -> Error {
    Error::Database {
        context: "reading the target's rows for rollback".into(),
        message: format!("column {} ({}): {}", e.column, e.ty, e.message),
    }
}

/// The legacy table's columns paired with the target's.
fn table_plan(
    t: &Table,
    target: &TargetTable,
    sessions: bool,
    state_col: Option<&str>,
    ignored: &[String],
) -> Result<TablePlan> {
    let mut cols = Vec::new();
    for c in t.stored_columns() {
        let state = state_col.is_some_and(|s| s.eq_ignore_ascii_case(&c.name));
        let left = ignored.iter().any(|i| i.eq_ignore_ascii_case(&c.name));
        let pg = match (state || left, target.column(&c.name)) {
            (false, Some(tc)) => match &tc.ty {
                Ok(ty) => Some((tc.name.clone(), ty.clone())),
                Err(e) => {
                    return Err(mismatch(
                        &target.name,
                        Some(&tc.name),
                        format!("the target column's {e}"),
                        "rollback reads the types sessiondb writes; change the column's type"
                            .into(),
                    ));
                }
            },
            _ => None,
        };
        cols.push(ColPlan {
            name: c.name.clone(),
            not_null: c.not_null,
            has_default: c.default.is_some(),
            rowid_alias: c.pk > 0
                && t.primary_key.len() == 1
                && c.declared.eq_ignore_ascii_case("INTEGER"),
            key: c.pk > 0,
            pg,
            state,
        });
    }
    let mut key = Vec::new();
    for k in &t.primary_key {
        let i = cols
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(k))
            .ok_or_else(|| Error::SourceSchema {
                path: Default::default(),
                message: format!("table {:?}: primary key column {k:?} is not stored", t.name),
            })?;
        if cols[i].pg.is_none() {
            return Err(mismatch(
                &target.name,
                Some(k),
                format!(
                    "the target table has no column {k:?}, the legacy table's primary key: rollback cannot tell which row is which"
                ),
                "add the column to the target table".into(),
            ));
        }
        key.push(i);
    }
    if key.is_empty() {
        return Err(mismatch(
            &t.name,
            None,
            "the legacy table has no primary key: rollback finds rows by it".into(),
            "give the table a primary key".into(),
        ));
    }
    Ok(TablePlan {
        name: t.name.clone(),
        pg_name: target.name.clone(),
        sessions,
        cols,
        key,
    })
}

/// Every legacy row of `t` by canonical key, and the form each column holds its values in.
fn read_legacy(legacy: &Legacy, t: &TablePlan) -> Result<(LegacyRows, Vec<Form>)> {
    let list: Vec<String> = t.cols.iter().map(|c| quote(&c.name)).collect();
    let sql = format!("SELECT {} FROM {}", list.join(", "), quote(&t.name));
    let db = &legacy.db;
    let err = |e| crate::source::sqlite::map_err(db, e);
    let mut st = legacy.conn().prepare(&sql).map_err(err)?;
    let n = t.cols.len();
    let all: Vec<Vec<Raw>> = st
        .query_map([], |r| {
            (0..n)
                .map(|i| r.get_ref(i).map(Raw::from_sqlite))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(err)?;
    let forms = (0..n)
        .map(|i| Form::detect(all.iter().map(|r| &r[i])))
        .collect();
    let mut rows = HashMap::with_capacity(all.len());
    for r in all {
        let key = t
            .key
            .iter()
            .map(|&i| match &t.cols[i].pg {
                Some((_, ty)) => value::convert(&t.cols[i].name, &r[i], ty)
                    .ok()
                    .map(|v| canonical_key(&v))
                    .unwrap_or_else(|| format!("{:?}", r[i])),
                None => format!("{:?}", r[i]),
            })
            .collect();
        rows.insert(key, r);
    }
    Ok((rows, forms))
}

fn canonical_key(v: &Value) -> String {
    v.canonical().map(|c| c.into_owned()).unwrap_or_default()
}

/// Whether the legacy value `raw` is the target value `v` (both as `ty`'s canonical form).
fn same(column: &str, raw: &Raw, v: &Value, ty: &PgType) -> bool {
    match value::convert(column, raw, ty) {
        // Numbers by value: SQLite keeps no sign on a zero (-0.0 reads back 0.0).
        Ok(Value::Float(a)) => matches!(v, Value::Float(b) if a == *b),
        Ok(old) => old.canonical() == v.canonical(),
        Err(_) => false,
    }
}

/// The legacy value as SQLite holds it.
fn raw_sql(r: &Raw) -> Sql {
    match r {
        Raw::Null => Sql::Null,
        Raw::Integer(i) => Sql::Integer(*i),
        Raw::Real(f) => Sql::Real(*f),
        Raw::Text(t) => Sql::Text(t.clone()),
        Raw::Blob(b) => Sql::Blob(b.clone()),
    }
}

/// The session's state in the legacy store, canonical: `state.json` (the file wins),
/// else the state column. A file that does not parse is its bytes (never equal).
fn legacy_state(
    legacy: &Legacy,
    id: &str,
    safe: bool,
    column: Option<&Raw>,
) -> Result<Option<String>> {
    let canon = |b: &[u8]| {
        crate::canon::canonicalize(b).unwrap_or_else(|_| String::from_utf8_lossy(b).into_owned())
    };
    if safe && let Some(b) = legacy.sessions.read(id, STATE_FILE)? {
        return Ok(Some(canon(&b)));
    }
    Ok(match column {
        Some(Raw::Text(t)) => Some(canon(t.as_bytes())),
        Some(Raw::Blob(b)) => Some(canon(b)),
        Some(other) => Some(format!("{other:?}")),
        None => None,
    })
}
