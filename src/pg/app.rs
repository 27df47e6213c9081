//! The target of a mapped store (SPEC §9), both ways: the application's tables used as
//! they are (columns matched by name, values converted to each column's own type, its
//! GIN index used), or created when none of them exists (the application's table and
//! column names, types from `source::shape::choose_type`, primary keys, foreign keys
//! between the copied tables, `session_state` and its GIN index). [`plan`] finds every
//! `schema_mismatch` before anything is written; preflight, migrate-state's planning pass
//! and verify all stand on it. Rows are written by primary key (`INSERT ... ON CONFLICT
//! DO UPDATE`), read back decoded by their column's type, and hashed the same way on
//! both sides (`value::hash_row`, `v2:`).

use std::collections::BTreeMap;

use chrono::Utc;
use postgres::{GenericClient, Transaction};
use serde::Serialize;

use super::catalog::{self, Misfit, SourceColumn, TargetTable};
use super::{ident, qualified};
use crate::config::Fill;
use crate::error::{Error, Result};
use crate::source::State;
use crate::source::app::{AppSession, Copied};
use crate::source::fields::{FieldError, Raw};
use crate::source::shape::{Field, Shape};
use crate::value::compat::SourceKind;
use crate::value::{self, Json, PgType, Value};

pub const STATE_TABLE: &str = "session_state";

/// A copied column and the target column it goes to.
#[derive(Debug, Clone, Serialize)]
pub struct Col {
    /// As the target spells it.
    pub name: String,
    /// Its index among the source table's copied columns.
    #[serde(skip)]
    pub src: usize,
    pub ty: PgType,
}

/// One copied table on the target.
#[derive(Debug, Clone, Serialize)]
pub struct TablePlan {
    pub name: String,
    /// The index of its source in the copied tables.
    #[serde(skip)]
    pub source: usize,
    pub key: Vec<String>,
    #[serde(skip)]
    pub key_at: Vec<usize>,
    pub columns: Vec<Col>,
    /// `[postgres.fill]` constants for NOT NULL columns nothing else fills.
    #[serde(skip)]
    pub fills: Vec<(String, Value)>,
    pub sessions: bool,
    /// The `CREATE TABLE` when sessiondb creates it.
    pub create: Option<String>,
}

/// `session_state` on the target.
#[derive(Debug, Clone, Serialize)]
pub struct StatePlan {
    pub session_id: String,
    pub state: String,
    pub state_ty: PgType,
    pub updated_at: Option<(String, PgType)>,
    pub create: Option<String>,
    /// An equivalent GIN index already there (used, not duplicated).
    pub gin: Option<String>,
}

/// The plan of the target for a mapped store.
#[derive(Debug, Clone, Serialize)]
pub struct AppTarget {
    /// Load order: parents, the sessions table, children.
    pub tables: Vec<TablePlan>,
    pub state: StatePlan,
    /// Whether sessiondb creates the tables (none of them exists yet).
    pub creates: bool,
    pub misfits: Vec<Misfit>,
    pub notes: Vec<String>,
    /// The sessions table's mapped `updated_at`, among its copied columns.
    #[serde(skip)]
    pub updated_src: Option<usize>,
}

fn mis(table: &str, column: Option<&str>, message: String, fix: String) -> Misfit {
    Misfit {
        table: table.to_owned(),
        column: column.map(str::to_owned),
        message,
        fix,
    }
}

fn is_numeric(t: &PgType) -> bool {
    matches!(
        t,
        PgType::SmallInt
            | PgType::Integer
            | PgType::BigInt
            | PgType::Real
            | PgType::Double
            | PgType::Numeric(_)
    )
}

/// Plan the target for the copied tables of `shape`: the tables there are read from
/// the catalog (read-only); every incompatibility is a [`Misfit`].
pub fn plan(
    c: &mut impl GenericClient,
    schema: &str,
    shape: &Shape,
    copied: &[Copied],
    fill: &[Fill],
    opclass: &str,
) -> Result<AppTarget> {
    let existing = catalog::read_tables(c, schema)?;
    let find = |name: &str| -> Option<&TargetTable> {
        existing.get(name).or_else(|| {
            let mut same = existing
                .values()
                .filter(|t| t.name.eq_ignore_ascii_case(name));
            match (same.next(), same.next()) {
                (Some(t), None) => Some(t),
                _ => None,
            }
        })
    };
    let mut names: Vec<&str> = copied.iter().map(|t| t.table.name.as_str()).collect();
    names.push(STATE_TABLE);
    crate::pg::trust::check(c, schema, &names)?;
    let present: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| find(n).is_some())
        .collect();
    let creates = present.is_empty();
    let mut misfits = Vec::new();
    let mut notes = Vec::new();
    if !creates {
        for n in &names {
            if find(n).is_none() {
                misfits.push(mis(
                    n,
                    None,
                    format!(
                        "the target schema {schema:?} has table(s) {} but no table {n:?}, which the mapping needs",
                        present.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
                    ),
                    format!(
                        "create {n:?} the way the application does (start it once against PostgreSQL), or drop the others so that sessiondb creates them all"
                    ),
                ));
            }
        }
    }
    let updated_col = shape.mapping.column(Field::UpdatedAt);
    let mut tables = Vec::new();
    let mut updated_src = None;
    let mut updated_ty: Option<PgType> = None;
    for (ti, t) in copied.iter().enumerate() {
        let key: Vec<String> = if t.table.primary_key.is_empty() {
            vec![
                shape
                    .mapping
                    .column(Field::Id)
                    .expect("id is mapped")
                    .to_owned(),
            ]
        } else {
            t.table.primary_key.clone()
        };
        let fills: Vec<&Fill> = fill
            .iter()
            .filter(|f| f.table.eq_ignore_ascii_case(&t.table.name))
            .collect();
        let mut cols = Vec::new();
        let mut fill_values = Vec::new();
        let mut create = None;
        match find(&t.table.name) {
            None if creates => {
                for (i, (col, ty)) in t.columns.iter().zip(&t.types).enumerate() {
                    cols.push(Col {
                        name: col.name.clone(),
                        src: i,
                        ty: ty.pg.clone(),
                    });
                }
                create = Some(create_table(schema, t, &key, copied));
            }
            None => continue,
            Some(target) => {
                let source: Vec<SourceColumn> = t
                    .columns
                    .iter()
                    .zip(&t.scans)
                    .zip(&t.types)
                    .map(|((col, s), ty)| SourceColumn {
                        name: col.name.clone(),
                        kind: ty.kind,
                        values: s.values(),
                        nulls: s.nulls,
                        max_chars: s.max_chars,
                    })
                    .collect();
                let owned: Vec<Fill> = fills.iter().map(|f| (*f).clone()).collect();
                let fit = catalog::fit(target, &source, &key, &owned);
                misfits.extend(fit.misfits);
                notes.extend(fit.notes);
                for (i, col) in t.columns.iter().enumerate() {
                    let Some(tc) = target.column(&col.name) else {
                        continue;
                    };
                    let Ok(ty) = &tc.ty else { continue };
                    // Text that is not a number's text cannot go into a number column:
                    // known from the scan, before a single row is converted.
                    let s = &t.scans[i];
                    let kind = t.types[i].kind;
                    if kind == SourceKind::Text && is_numeric(ty) && s.texts > s.number_texts {
                        misfits.push(mis(
                            &target.name,
                            Some(&tc.name),
                            format!(
                                "the column is {ty}; the source column holds text, {} value(s) of which are not numbers",
                                s.texts - s.number_texts
                            ),
                            format!(
                                "change the column's type to text (the application's two schemas disagree), or list {:?} in sqlite.ignore_columns",
                                col.name
                            ),
                        ));
                    }
                    cols.push(Col {
                        name: tc.name.clone(),
                        src: i,
                        ty: ty.clone(),
                    });
                }
                for f in &fills {
                    let Some(tc) = target.column(&f.column) else {
                        misfits.push(mis(
                            &target.name,
                            Some(&f.column),
                            format!(
                                "[postgres.fill] names a column {:?} the table does not have",
                                f.column
                            ),
                            "remove it from [postgres.fill]".into(),
                        ));
                        continue;
                    };
                    if cols.iter().any(|c| c.name == tc.name) {
                        continue;
                    }
                    if let Ok(ty) = &tc.ty {
                        if let Ok(v) = value::convert(&tc.name, &f.value, ty) {
                            fill_values.push((tc.name.clone(), v));
                        }
                    }
                }
            }
        }
        let key_at = key
            .iter()
            .map(|k| t.index(k).expect("keys are stored columns"))
            .collect::<Vec<_>>();
        let key: Vec<String> = key_at
            .iter()
            .map(|i| {
                cols.iter()
                    .find(|c| c.src == *i)
                    .map(|c| c.name.clone())
                    .unwrap_or_else(|| t.columns[*i].name.clone())
            })
            .collect();
        if t.sessions {
            if let Some(u) = updated_col {
                updated_src = t.index(u);
                updated_ty = updated_src
                    .and_then(|i| cols.iter().find(|c| c.src == i))
                    .map(|c| c.ty.clone());
            }
        }
        tables.push(TablePlan {
            name: find(&t.table.name)
                .map(|x| x.name.clone())
                .unwrap_or_else(|| t.table.name.clone()),
            source: ti,
            key,
            key_at,
            columns: cols,
            fills: fill_values,
            sessions: t.sessions,
            create,
        });
    }
    let state = plan_state(
        find(STATE_TABLE),
        schema,
        creates,
        updated_ty,
        opclass,
        &mut misfits,
    );
    Ok(AppTarget {
        tables,
        state,
        creates,
        misfits,
        notes,
        updated_src,
    })
}

fn create_table(schema: &str, t: &Copied, key: &[String], copied: &[Copied]) -> String {
    let mut parts: Vec<String> = t
        .columns
        .iter()
        .zip(&t.types)
        .map(|(c, ty)| {
            format!(
                "{} {}{}",
                ident(&c.name),
                ty.pg.sql(),
                if c.not_null || key.contains(&c.name) {
                    " NOT NULL"
                } else {
                    ""
                }
            )
        })
        .collect();
    parts.push(format!(
        "PRIMARY KEY ({})",
        key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ")
    ));
    for fk in &t.table.foreign_keys {
        let Some(parent) = copied
            .iter()
            .find(|p| p.table.name.eq_ignore_ascii_case(&fk.parent))
        else {
            continue;
        };
        let list = |v: &[String]| v.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ");
        parts.push(format!(
            "FOREIGN KEY ({}) REFERENCES {} ({})",
            list(&fk.columns),
            qualified(schema, &parent.table.name),
            list(&fk.parent_columns)
        ));
    }
    format!(
        "CREATE TABLE {} (\n    {}\n)",
        qualified(schema, &t.table.name),
        parts.join(",\n    ")
    )
}

fn plan_state(
    target: Option<&TargetTable>,
    schema: &str,
    creates: bool,
    updated_ty: Option<PgType>,
    opclass: &str,
    misfits: &mut Vec<Misfit>,
) -> StatePlan {
    let Some(st) = target else {
        let ty = match updated_ty {
            Some(t @ (PgType::Timestamp(_) | PgType::TimestampTz(_))) => t,
            _ => PgType::TimestampTz(None),
        };
        return StatePlan {
            session_id: "session_id".into(),
            state: "state".into(),
            state_ty: PgType::Jsonb,
            create: creates.then(|| {
                format!(
                    "CREATE TABLE {} (\n    session_id text PRIMARY KEY,\n    state jsonb NOT NULL,\n    updated_at {} NOT NULL\n)",
                    qualified(schema, STATE_TABLE),
                    ty.sql()
                )
            }),
            updated_at: Some(("updated_at".into(), ty)),
            gin: None,
        };
    };
    let mut out = StatePlan {
        session_id: "session_id".into(),
        state: "state".into(),
        state_ty: PgType::Jsonb,
        updated_at: None,
        create: None,
        gin: None,
    };
    let need = |name: &str, misfits: &mut Vec<Misfit>| {
        let c = st.column(name);
        if c.is_none() {
            misfits.push(mis(
                STATE_TABLE,
                Some(name),
                format!("{STATE_TABLE} has no column {name:?}"),
                format!("{STATE_TABLE} needs (session_id text, state jsonb, updated_at)"),
            ));
        }
        c
    };
    if let Some(sid) = need("session_id", misfits) {
        out.session_id = sid.name.clone();
        if !sid.ty.as_ref().is_ok_and(PgType::is_text) {
            misfits.push(mis(
                STATE_TABLE,
                Some(&sid.name),
                format!("{STATE_TABLE}.session_id is {}, not text", sid.format_type),
                "make it text or character varying".into(),
            ));
        }
        if !st.has_key(std::slice::from_ref(&sid.name)) {
            misfits.push(mis(
                STATE_TABLE,
                Some(&sid.name),
                format!("no primary key or unique index on {STATE_TABLE} (session_id)"),
                format!("add one: ALTER TABLE {STATE_TABLE} ADD PRIMARY KEY (session_id)"),
            ));
        }
    }
    if let Some(sc) = need("state", misfits) {
        out.state = sc.name.clone();
        match &sc.ty {
            Ok(t @ (PgType::Jsonb | PgType::Json)) => out.state_ty = t.clone(),
            _ => misfits.push(mis(
                STATE_TABLE,
                Some(&sc.name),
                format!("{STATE_TABLE}.state is {}, not jsonb", sc.format_type),
                "make it jsonb".into(),
            )),
        }
        out.gin = st
            .gin_on(&sc.name, opclass)
            .or_else(|| {
                st.indexes.iter().find(|i| {
                    i.method == "gin"
                        && i.valid
                        && !i.partial
                        && i.columns == [Some(sc.name.clone())]
                })
            })
            .map(|i| i.name.clone());
    }
    if let Some(u) = st.column("updated_at") {
        match &u.ty {
            Ok(t @ (PgType::Timestamp(_) | PgType::TimestampTz(_))) => {
                out.updated_at = Some((u.name.clone(), t.clone()))
            }
            _ => misfits.push(mis(
                STATE_TABLE,
                Some(&u.name),
                format!(
                    "{STATE_TABLE}.updated_at is {}, not a timestamp",
                    u.format_type
                ),
                "make it timestamp or timestamptz".into(),
            )),
        }
    }
    for other in st.columns.iter().filter(|c| {
        !c.optional() && ![&out.session_id, &out.state, "updated_at"].contains(&&*c.name)
    }) {
        misfits.push(mis(
            STATE_TABLE,
            Some(&other.name),
            format!(
                "{STATE_TABLE}.{} is NOT NULL without a default, and sessiondb writes only session_id, state and updated_at",
                other.name
            ),
            "give it a default, or allow NULL".into(),
        ));
    }
    out
}

// ---- rows --------------------------------------------------------------------------------

/// A source row converted to its target columns: its key text and values (aligned with
/// [`TablePlan::columns`]).
#[derive(Debug, Clone)]
pub struct Row {
    pub key: String,
    pub values: Vec<Value>,
    pub hash: String,
}

/// The key text of a row: the canonical value of a one-column key, else a JSON array
/// of them.
fn key_text(vals: &[Option<String>]) -> String {
    if vals.len() == 1 {
        return vals[0].clone().unwrap_or_default();
    }
    serde_json::to_string(vals).unwrap_or_default()
}

impl TablePlan {
    /// Convert one source row (every copied column's raw value) to the target's
    /// columns, and hash it (with the session's canonical state, for a session).
    pub fn convert(
        &self,
        raws: &[Raw],
        state: Option<&State>,
    ) -> std::result::Result<Row, FieldError> {
        let mut values = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            values.push(value::convert(&c.name, &raws[c.src], &c.ty)?);
        }
        let key = self.key_of(&values);
        let hash = self.hash(&key, &values, state.map(|s| s.canonical.as_str()));
        Ok(Row { key, values, hash })
    }

    /// A row's key as text, from its converted values (the key columns' canonical forms).
    fn key_of(&self, values: &[Value]) -> String {
        key_text(
            &self
                .key_at
                .iter()
                .map(|i| {
                    self.columns
                        .iter()
                        .position(|c| c.src == *i)
                        .and_then(|j| values[j].canonical().map(|s| s.into_owned()))
                })
                .collect::<Vec<_>>(),
        )
    }

    pub fn hash(&self, key: &str, values: &[Value], state: Option<&str>) -> String {
        value::hash_row(
            key,
            self.columns.iter().map(|c| c.name.as_str()).zip(values),
            state,
        )
    }

    /// The upsert of `rows` rows at once: `INSERT ... VALUES (...), (...) ON CONFLICT
    /// (key) DO UPDATE` every column but the key's.
    fn upsert_sql(&self, schema: &str, rows: usize) -> String {
        let mut names: Vec<String> = self.columns.iter().map(|c| ident(&c.name)).collect();
        names.extend(self.fills.iter().map(|(n, _)| ident(n)));
        let keys: Vec<String> = self.key.iter().map(|k| ident(k)).collect();
        let set: Vec<String> = names
            .iter()
            .filter(|n| !keys.contains(n))
            .map(|n| format!("{n} = EXCLUDED.{n}"))
            .collect();
        let action = if set.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!("UPDATE SET {}", set.join(", "))
        };
        format!(
            "INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) DO {action}",
            qualified(schema, &self.name),
            names.join(", "),
            values_marks(names.len(), rows),
            keys.join(", ")
        )
    }

    /// Write `rows` by key (inside the caller's transaction): one statement per chunk
    /// of rows ([`chunks`]: up to 1,000 rows and [`WRITE_BYTES`]), not one per row
    /// (each a round trip). Two rows of one statement with the same key (two source keys
    /// that convert to one target value) are refused by the server (SQLSTATE 21000),
    /// the batch written not at all, as the ledger's own write of the batch would.
    pub fn write(&self, c: &mut impl GenericClient, schema: &str, rows: &[&Row]) -> Result<()> {
        let per_row = self.columns.len() + self.fills.len();
        let mut params: Vec<Param> = Vec::new();
        for range in chunks(rows.len(), per_row, |i| {
            rows[i].values.iter().map(wire_len).sum()
        }) {
            let chunk = &rows[range];
            params.clear();
            for r in chunk {
                params.extend(r.values.iter().map(|v| v as Param));
                params.extend(self.fills.iter().map(|(_, v)| v as Param));
            }
            let err = |e| {
                let (first, last) = (&chunk[0].key, &chunk[chunk.len() - 1].key);
                Error::pg(
                    &format!("writing rows {first} to {last} of {}", self.name),
                    "",
                    e,
                )
            };
            c.execute(&self.upsert_sql(schema, chunk.len()), &params)
                .map_err(err)?;
        }
        Ok(())
    }

    /// The target's rows, decoded by their column's type and hashed as the source's
    /// are (for the sessions table with their canonical state, joined from
    /// `session_state`), [`READ_BATCH`] at a time through a portal of `c`'s transaction
    /// (a savepoint inside one): memory stays flat in the table's size.
    pub fn read(
        &self,
        c: &mut impl GenericClient,
        schema: &str,
        state: Option<&StatePlan>,
        mut f: impl FnMut(Row) -> Result<()>,
    ) -> Result<()> {
        let mut tx = c
            .transaction()
            .map_err(|e| Error::pg(&format!("reading {}", self.name), "", e))?;
        self.read_batches(&mut tx, schema, state, |_, rows| {
            rows.into_iter().try_for_each(&mut f)
        })?;
        tx.commit()
            .map_err(|e| Error::pg(&format!("reading {}", self.name), "", e))
    }

    /// [`TablePlan::read`], a batch at a time, each handed over with the transaction
    /// (the portal stays open between batches, so `f` may run queries of its own on it).
    pub fn read_batches(
        &self,
        tx: &mut Transaction<'_>,
        schema: &str,
        state: Option<&StatePlan>,
        mut f: impl FnMut(&mut Transaction<'_>, Vec<Row>) -> Result<()>,
    ) -> Result<()> {
        let list: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("t.{}", ident(&c.name)))
            .collect();
        let (join, state_sel) = match state {
            Some(st) => (
                format!(
                    " LEFT JOIN {} s ON s.{}::pg_catalog.text OPERATOR(pg_catalog.=) t.{}::pg_catalog.text",
                    qualified(schema, STATE_TABLE),
                    ident(&st.session_id),
                    ident(&self.key[0])
                ),
                format!(", s.{}::pg_catalog.text", ident(&st.state)),
            ),
            None => (String::new(), String::new()),
        };
        let sql = format!(
            "SELECT {}{state_sel} FROM {} t{join}",
            list.join(", "),
            qualified(schema, &self.name)
        );
        let err = |e| Error::pg(&format!("reading {}", self.name), "", e);
        let portal = tx.bind(&sql, &[]).map_err(err)?;
        loop {
            let rows = tx.query_portal(&portal, READ_BATCH).map_err(err)?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut batch = Vec::with_capacity(rows.len());
            for r in rows {
                batch.push(self.decoded(&r, state.is_some())?);
            }
            f(tx, batch)?;
        }
    }

    /// One row of [`TablePlan::read_batches`]' query: its values decoded, its key and hash.
    fn decoded(&self, r: &postgres::Row, with_state: bool) -> Result<Row> {
        let mut values = Vec::with_capacity(self.columns.len());
        for (i, col) in self.columns.iter().enumerate() {
            values.push(
                value::pg::decode(r, i, &col.ty).map_err(|e| Error::SchemaMismatch {
                    table: self.name.clone(),
                    column: Some(col.name.clone()),
                    message: format!("a value does not decode: {}", e.message),
                    fix: "check the column's type".into(),
                })?,
            )
        }
        let st: Option<String> = if with_state {
            r.get::<_, Option<String>>(self.columns.len())
        } else {
            None
        };
        let canonical = match st {
            Some(text) => Some(crate::canon::canonicalize(text.as_bytes()).map_err(|e| {
                Error::SchemaMismatch {
                    table: STATE_TABLE.into(),
                    column: Some("state".into()),
                    message: format!("a state does not parse: {e}"),
                    fix: "check the column's type".into(),
                }
            })?),
            None => None,
        };
        let key = self.key_of(&values);
        let hash = self.hash(&key, &values, canonical.as_deref());
        Ok(Row { key, values, hash })
    }
}

/// How many target rows [`TablePlan::read_batches`] decodes at a time.
pub const READ_BATCH: i32 = 1000;

/// One statement parameter.
type Param<'a> = &'a (dyn postgres::types::ToSql + Sync);

/// The most one multi-row statement carries, in its values' bytes: far below the
/// server's 1 GB message limit, and what this process holds of a chunk at once.
pub const WRITE_BYTES: usize = 32 << 20;

/// `n` rows of `per_row` values as the ranges of one multi-row statement each: up to
/// 1,000 rows, never more parameters than the protocol's 65,535, and no more than
/// [`WRITE_BYTES`] (`bytes(i)`: row `i`'s values) unless one row alone is larger.
fn chunks(n: usize, per_row: usize, bytes: impl Fn(usize) -> usize) -> Vec<std::ops::Range<usize>> {
    let most = (u16::MAX as usize / per_row.max(1)).clamp(1, 1000);
    let mut out = Vec::new();
    let (mut start, mut held) = (0, 0);
    for i in 0..n {
        let b = bytes(i);
        if i > start && (i - start == most || held + b > WRITE_BYTES) {
            out.push(start..i);
            (start, held) = (i, 0);
        }
        held += b;
    }
    if start < n {
        out.push(start..n);
    }
    out
}

/// About how many bytes a value takes on the wire.
fn wire_len(v: &Value) -> usize {
    match v {
        Value::Text(t) | Value::Numeric(t) => t.len(),
        Value::Bytes(b) => b.len(),
        Value::Json(j) => j.text.len(),
        _ => 16,
    }
}

/// `($1, $2), ($3, $4)`: `rows` rows of `per_row` parameters.
fn values_marks(per_row: usize, rows: usize) -> String {
    let mut out = String::with_capacity(rows * per_row * 6);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..per_row {
            if c > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", r * per_row + c + 1));
        }
        out.push(')');
    }
    out
}

impl StatePlan {
    /// Write the states of `sessions` (id, state, the session's updated_at as the
    /// source has it, already converted): `updated_at` from the session, else now.
    pub fn write(
        &self,
        c: &mut impl GenericClient,
        schema: &str,
        states: &[(&str, &State, Option<Value>)],
    ) -> Result<()> {
        if states.is_empty() {
            return Ok(());
        }
        let (ucol, uty) = match &self.updated_at {
            Some((n, t)) => (Some(n), Some(t)),
            None => (None, None),
        };
        let per_row = if ucol.is_some() { 3 } else { 2 };
        let sql = |rows: usize| {
            format!(
                "INSERT INTO {} ({}, {}{}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {} = EXCLUDED.{}{}",
                qualified(schema, STATE_TABLE),
                ident(&self.session_id),
                ident(&self.state),
                ucol.map(|u| format!(", {}", ident(u))).unwrap_or_default(),
                values_marks(per_row, rows),
                ident(&self.session_id),
                ident(&self.state),
                ident(&self.state),
                ucol.map(|u| format!(", {0} = EXCLUDED.{0}", ident(u)))
                    .unwrap_or_default(),
            )
        };
        let now = Utc::now();
        for range in chunks(states.len(), per_row, |i| states[i].1.canonical.len()) {
            let chunk = &states[range];
            // This chunk's values only: a batch of large states is never held twice.
            let values: Vec<[Value; 3]> = chunk
                .iter()
                .map(|(id, st, updated)| {
                    let json = Value::Json(Json {
                        text: if self.state_ty == PgType::Json {
                            String::from_utf8_lossy(&st.raw).into_owned()
                        } else {
                            st.canonical.clone()
                        },
                        // Only `text` is sent (`ToSql`): the canonical form is not
                        // copied a second time.
                        canonical: String::new(),
                    });
                    let at = match (uty, updated) {
                        (None, _) => Value::Null,
                        (Some(_), Some(v)) if !v.is_null() => v.clone(),
                        (Some(PgType::Timestamp(_)), _) => Value::Timestamp(now.naive_utc()),
                        (Some(_), _) => Value::TimestampTz(now),
                    };
                    [Value::Text((*id).to_owned()), json, at]
                })
                .collect();
            let params: Vec<Param> = values
                .iter()
                .flat_map(|v| v[..per_row].iter().map(|v| v as Param))
                .collect();
            let err = |e| {
                let (first, last) = (chunk[0].0, chunk[chunk.len() - 1].0);
                Error::pg(
                    &format!("writing the states of sessions {first} to {last}"),
                    "",
                    e,
                )
            };
            c.execute(&sql(chunk.len()), &params).map_err(err)?;
        }
        Ok(())
    }

    /// Remove the state rows of sessions that have no state in the source any more
    /// (inside the caller's transaction), so that the target holds what the source does.
    pub fn clear(&self, c: &mut impl GenericClient, schema: &str, ids: &[&str]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        c.execute(
            &format!(
                "DELETE FROM {} WHERE {}::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
                qualified(schema, STATE_TABLE),
                ident(&self.session_id)
            ),
            &[&ids],
        )
        .map_err(|e| Error::pg("removing state rows", "", e))?;
        Ok(())
    }

    /// The updated_at of a session's state row: the session's own, converted to the
    /// column's type (`None`: the load time).
    pub fn updated_value(&self, raw: Option<&Raw>) -> Option<Value> {
        let (_, ty) = self.updated_at.as_ref()?;
        value::convert("updated_at", raw?, ty).ok()
    }
}

impl AppTarget {
    pub fn fits(&self) -> bool {
        self.misfits.is_empty()
    }

    /// The first misfit as the error a writing run refuses with.
    pub fn refusal(&self) -> Option<Error> {
        self.misfits.first().map(Misfit::error)
    }

    /// Create the tables (in the caller's transaction) when none existed.
    pub fn create(&self, c: &mut impl GenericClient) -> Result<()> {
        for t in &self.tables {
            if let Some(sql) = &t.create {
                c.batch_execute(sql)
                    .map_err(|e| Error::pg(&format!("creating table {}", t.name), "", e))?;
            }
        }
        if let Some(sql) = &self.state.create {
            c.batch_execute(sql)
                .map_err(|e| Error::pg("creating table session_state", "", e))?;
        }
        Ok(())
    }

    pub fn sessions(&self) -> &TablePlan {
        self.tables
            .iter()
            .find(|t| t.sessions)
            .expect("the sessions table is planned")
    }

    /// The sessions converted: the row, or the invalid record it is.
    pub fn session_row(
        &self,
        s: &AppSession,
    ) -> std::result::Result<(Row, Option<Value>), FieldError> {
        let t = self.sessions();
        let row = t.convert(&s.raws, s.state.as_ref())?;
        let updated = self
            .state
            .updated_value(self.updated_src.map(|i| &s.raws[i]));
        Ok((row, updated))
    }
}

/// Per-table counts of a load or a verification.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TableCounts {
    pub table: String,
    pub rows: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub invalid: u64,
}

/// A map from table name to the plan's index, for reports.
pub fn by_name(t: &AppTarget) -> BTreeMap<String, usize> {
    t.tables
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.clone(), i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{WRITE_BYTES, chunks};

    #[test]
    fn a_statement_holds_at_most_1000_rows_65535_parameters_and_32_mb() {
        // By rows: 2,500 small rows are three statements.
        assert_eq!(
            chunks(2500, 10, |_| 100),
            vec![0..1000, 1000..2000, 2000..2500]
        );
        // By parameters: 100 columns make 655 rows a statement.
        let c = chunks(1000, 100, |_| 1);
        assert_eq!(c[0], 0..655);
        assert!(c.iter().all(|r| r.len() * 100 <= u16::MAX as usize));
        // By bytes: 1 MB rows, 32 of them a statement; a row larger than the cap alone.
        let mb = 1 << 20;
        let c = chunks(70, 3, |_| mb);
        assert_eq!(c, vec![0..32, 32..64, 64..70]);
        assert!(c.iter().all(|r| r.len() * mb <= WRITE_BYTES));
        assert_eq!(chunks(3, 3, |_| WRITE_BYTES + 1), vec![0..1, 1..2, 2..3]);
        // Every row exactly once, in order.
        let c = chunks(5, 2, |i| if i == 2 { WRITE_BYTES } else { 10 });
        assert_eq!(c, vec![0..2, 2..3, 3..5]);
        assert!(chunks(0, 2, |_| 1).is_empty());
    }
}
