//! The application's tables as the runtime store reads and writes them (SPEC §9): the
//! sessions table under its own name, sessiondb's fields at their mapped columns
//! (`cost` → `last_cost_usd`; a field without a column is absent), every other column an
//! **extra column** carried as it is, and the parent tables the sessions reference
//! (`sessions.user_id REFERENCES users(id)`).
//!
//! Both backends build a [`Layout`]: SQLite from `source::shape` (the table as SQLite
//! declares it, each column given the type its declared type says, and the text form of
//! its timestamps and booleans learned from its values), PostgreSQL from
//! `target::catalog` (each column's own type). Values go through `crate::value`: an
//! extra given as JSON is converted to its column's type ([`json_to_value`]) and read
//! back from it ([`value_to_json`]), the same way on both backends.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::error::{Error, Result};
use crate::config::Fill;
use crate::source::Meta;
use crate::source::fields::{self, FieldError, Raw};
use crate::source::shape::{Field, Mode};
use crate::value::sqlite::Form;
use crate::value::{self, PgType, Value};

/// Extra columns' values, by column name, as JSON (see [`json_to_value`] for what each
/// column type takes and gives).
pub type Extra = BTreeMap<String, Json>;

/// A column the store reads and writes.
#[derive(Debug, Clone)]
pub(crate) struct Col {
    /// As the table spells it.
    pub name: String,
    /// The type its values are converted to (PostgreSQL: the column's own; SQLite: the
    /// one its declared type says).
    pub ty: PgType,
    pub not_null: bool,
    /// The database fills it when a row leaves it out (a default, an identity).
    pub defaulted: bool,
    /// Never written (a generated column).
    pub generated: bool,
    /// SQLite: how its values are written (timestamps in the column's own text format,
    /// booleans 0/1 or the column's words).
    pub form: Form,
}

/// A table: its name and columns.
#[derive(Debug, Clone)]
pub(crate) struct TableModel {
    pub name: String,
    pub cols: Vec<Col>,
    /// SQLite's names ignore ASCII case; PostgreSQL's do not (then exact, else the one
    /// column equal ignoring case).
    pub nocase: bool,
}

impl TableModel {
    pub fn index(&self, name: &str) -> Option<usize> {
        if self.nocase {
            return self
                .cols
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(name));
        }
        self.cols.iter().position(|c| c.name == name).or_else(|| {
            let mut same = self
                .cols
                .iter()
                .enumerate()
                .filter(|(_, c)| c.name.eq_ignore_ascii_case(name));
            match (same.next(), same.next()) {
                (Some((i, _)), None) => Some(i),
                _ => None,
            }
        })
    }

    pub fn col(&self, name: &str) -> Option<&Col> {
        self.index(name).map(|i| &self.cols[i])
    }
}

/// A foreign key of the sessions table: `columns` reference `parent(parent_columns)`.
#[derive(Debug, Clone)]
pub(crate) struct Fk {
    pub columns: Vec<String>,
    /// Index into [`Layout::parents`].
    pub parent: usize,
    pub parent_columns: Vec<String>,
}

/// The sessions table and what the store does with each of its columns.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub mode: Mode,
    pub sessions: TableModel,
    /// The column of each field the table has (never `State`); `Id` is always there.
    pub fields: BTreeMap<Field, String>,
    /// SQLite: the column that holds state (the file wins), if the table has one.
    pub state: Option<String>,
    /// Every other column the store carries, in table order.
    pub extras: Vec<String>,
    pub fks: Vec<Fk>,
    /// The tables the foreign keys reference.
    pub parents: Vec<TableModel>,
    /// `[postgres.fill]`: constants for NOT NULL columns a row leaves out.
    pub fill: Vec<Fill>,
}

/// The columns a read selects, in order: the six metadata fields (absent ones as
/// `None`), then the extras.
pub(crate) const META_FIELDS: [Field; 6] = [
    Field::UserId,
    Field::Status,
    Field::CurrentStep,
    Field::Cost,
    Field::CreatedAt,
    Field::UpdatedAt,
];

/// A row to write: (column index in its table, value).
pub(crate) type RowValues = Vec<(usize, Value)>;

/// How the backend writes metadata fields.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldWrites {
    /// SQLite: text as text, cost as a real, timestamps in the column's form (what the
    /// application's own loose columns hold).
    Native,
    /// PostgreSQL: converted to each column's type.
    Typed,
}

impl Layout {
    /// For the log: the table, the mapped fields, the extras and the references.
    pub fn summary(&self) -> String {
        if self.mode == Mode::Default {
            return format!("table {:?} (SPEC §1's columns)", self.sessions.name);
        }
        let mapped: Vec<String> = self
            .fields
            .iter()
            .filter(|(f, c)| !c.eq_ignore_ascii_case(f.name()))
            .map(|(f, c)| format!("{f} → {c}"))
            .collect();
        let absent: Vec<&str> = META_FIELDS
            .iter()
            .filter(|f| !self.fields.contains_key(f))
            .map(|f| f.name())
            .collect();
        let refs: Vec<String> = self
            .fks
            .iter()
            .map(|f| format!("{} → {}", f.columns.join(", "), self.parents[f.parent].name))
            .collect();
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        format!(
            "the application's table {:?}: mapped {}; absent {}; extra columns {}; references {}",
            self.sessions.name,
            list(&mapped),
            if absent.is_empty() {
                "none".to_owned()
            } else {
                absent.join(", ")
            },
            list(&self.extras),
            list(&refs)
        )
    }

    pub fn id_col(&self) -> &str {
        &self.fields[&Field::Id]
    }

    pub fn field_col(&self, f: Field) -> Option<&str> {
        self.fields.get(&f).map(String::as_str)
    }

    fn col_index(&self, name: &str) -> usize {
        self.sessions
            .index(name)
            .expect("a layout's columns are its table's")
    }

    /// The columns a read selects: each metadata field's column (or `None`), then the
    /// extras.
    pub fn read_columns(&self) -> (Vec<Option<&Col>>, Vec<&Col>) {
        let fields = META_FIELDS
            .iter()
            .map(|f| {
                self.field_col(*f)
                    .map(|c| &self.sessions.cols[self.col_index(c)])
            })
            .collect();
        let extras = self
            .extras
            .iter()
            .map(|c| &self.sessions.cols[self.col_index(c)])
            .collect();
        (fields, extras)
    }

    /// The extra column `name`, or why there is none.
    fn extra_index(&self, id: &str, name: &str) -> Result<usize> {
        let unknown = |message: String| Error::UnknownColumn {
            id: id.to_owned(),
            table: self.sessions.name.clone(),
            column: name.to_owned(),
            message,
        };
        let Some(i) = self.sessions.index(name) else {
            return Err(unknown(format!(
                "table {:?} has no column {name:?} (its extra columns: {})",
                self.sessions.name,
                if self.extras.is_empty() {
                    "none".to_owned()
                } else {
                    self.extras.join(", ")
                }
            )));
        };
        let col = &self.sessions.cols[i];
        if let Some((f, _)) = self
            .fields
            .iter()
            .find(|(_, c)| c.eq_ignore_ascii_case(&col.name))
        {
            return Err(unknown(format!(
                "column {:?} holds the session's {f}: give it as {f}, not as an extra column",
                col.name
            )));
        }
        if !self.extras.iter().any(|e| e == &col.name) {
            return Err(unknown(format!(
                "column {:?} is not carried by the store (sqlite.ignore_columns, or the state column)",
                col.name
            )));
        }
        if col.generated {
            return Err(unknown(format!(
                "column {:?} is generated by the database and cannot be written",
                col.name
            )));
        }
        Ok(i)
    }

    /// The metadata field `f`'s value, ready for its column; an error when the field
    /// has a value and the table no column for it.
    fn field_value(
        &self,
        id: &str,
        f: Field,
        raw: Raw,
        writes: FieldWrites,
    ) -> Result<Option<(usize, Value)>> {
        let Some(c) = self.field_col(f) else {
            if matches!(raw, Raw::Null) {
                return Ok(None);
            }
            return Err(Error::UnknownColumn {
                id: id.to_owned(),
                table: self.sessions.name.clone(),
                column: f.name().to_owned(),
                message: format!(
                    "the session's {f} has a value, but table {:?} has no column for it ([sqlite.columns] {f} = \"\")",
                    self.sessions.name
                ),
            });
        };
        let i = self.col_index(c);
        let col = &self.sessions.cols[i];
        let v = match (writes, raw) {
            (_, Raw::Null) => Value::Null,
            (FieldWrites::Native, Raw::Text(s)) if is_time(f) => {
                let t = fields::timestamp(f.name(), &Raw::Text(s))
                    .map_err(|e| field_err(id, e))?
                    .expect("a text is not NULL");
                Value::Timestamp(t.naive_utc())
            }
            (FieldWrites::Native, Raw::Text(s)) => Value::Text(s),
            (FieldWrites::Native, Raw::Real(r)) => Value::Float(r),
            (FieldWrites::Native, other) => unreachable!("fields are text or real: {other:?}"),
            (FieldWrites::Typed, raw) => value::convert(
                &format!("{}.{}", self.sessions.name, col.name),
                &raw,
                &col.ty,
            )
            .map_err(|e| field_err(id, e))?,
        };
        Ok(Some((i, v)))
    }

    /// The values of a new session's row: id, metadata, extras, then `[postgres.fill]`
    /// constants for the NOT NULL columns left out. A NOT NULL column that nothing fills
    /// and that has no default is `missing_value`, naming it.
    pub fn new_row(
        &self,
        id: &str,
        meta: &Meta,
        extra: &Extra,
        writes: FieldWrites,
    ) -> Result<RowValues> {
        let mut row: RowValues = Vec::new();
        let text = |s: &Option<String>| s.clone().map(Raw::Text).unwrap_or(Raw::Null);
        let time = |t: &Option<DateTime<Utc>>| {
            t.as_ref()
                .map(|t| Raw::Text(fields::fmt_ts(t)))
                .unwrap_or(Raw::Null)
        };
        let given: [(Field, Raw); 7] = [
            (Field::Id, Raw::Text(id.to_owned())),
            (Field::UserId, text(&meta.user_id)),
            (Field::Status, text(&meta.status)),
            (Field::CurrentStep, text(&meta.current_step)),
            (Field::Cost, meta.cost.map(Raw::Real).unwrap_or(Raw::Null)),
            (Field::CreatedAt, time(&meta.created_at)),
            (Field::UpdatedAt, time(&meta.updated_at)),
        ];
        for (f, raw) in given {
            // A field without a value is left out: the column's default applies.
            if let Some((i, v)) = self.field_value(id, f, raw, writes)? {
                if !v.is_null() {
                    row.push((i, v));
                }
            }
        }
        for (name, v) in extra {
            let i = self.extra_index(id, name)?;
            let col = &self.sessions.cols[i];
            if row.iter().any(|(j, _)| *j == i) {
                return Err(Error::UnknownColumn {
                    id: id.to_owned(),
                    table: self.sessions.name.clone(),
                    column: name.clone(),
                    message: format!("column {:?} is given twice", col.name),
                });
            }
            let v = json_to_value(&self.sessions.name, col, v).map_err(|e| field_err(id, e))?;
            row.push((i, v));
        }
        complete(id, &self.sessions, &mut row, &self.fill)?;
        Ok(row)
    }

    /// The values a metadata patch sets (the fields given, the extras given), then
    /// `updated_at`.
    pub fn patch_row(
        &self,
        id: &str,
        patch: &super::MetaPatch,
        at: &DateTime<Utc>,
        writes: FieldWrites,
    ) -> Result<RowValues> {
        let mut row: RowValues = Vec::new();
        let opt = |s: &Option<String>| s.clone().map(Raw::Text);
        let given = [
            (Field::Status, opt(&patch.status)),
            (Field::CurrentStep, opt(&patch.current_step)),
            (Field::Cost, patch.cost.map(Raw::Real)),
            (Field::UpdatedAt, Some(Raw::Text(fields::fmt_ts(at)))),
        ];
        for (f, raw) in given {
            let Some(raw) = raw else { continue };
            // A table without updated_at is simply not stamped.
            if f == Field::UpdatedAt && self.field_col(f).is_none() {
                continue;
            }
            if let Some(v) = self.field_value(id, f, raw, writes)? {
                row.push(v);
            }
        }
        for (name, v) in &patch.extra {
            let i = self.extra_index(id, name)?;
            let col = &self.sessions.cols[i];
            let v = json_to_value(&self.sessions.name, col, v).map_err(|e| field_err(id, e))?;
            if v.is_null() && col.not_null {
                return Err(Error::MissingValue {
                    id: id.to_owned(),
                    table: self.sessions.name.clone(),
                    column: col.name.clone(),
                    message: format!(
                        "column {:?} is NOT NULL: it cannot be set to null",
                        col.name
                    ),
                });
            }
            row.push((i, v));
        }
        Ok(row)
    }

    /// `updated_at` of a state write, for its column (None when the table has none).
    pub fn updated_value(
        &self,
        id: &str,
        at: &DateTime<Utc>,
        writes: FieldWrites,
    ) -> Result<Option<(usize, Value)>> {
        if self.field_col(Field::UpdatedAt).is_none() {
            return Ok(None);
        }
        self.field_value(id, Field::UpdatedAt, Raw::Text(fields::fmt_ts(at)), writes)
    }

    /// The parent rows a new session needs: for each foreign key whose columns the row
    /// fills, the parent's key values, and the row to create when the caller asked for
    /// one (`parents[table]`) and it is missing.
    pub fn parent_plans(
        &self,
        id: &str,
        row: &RowValues,
        parents: &BTreeMap<String, Extra>,
        at: &DateTime<Utc>,
    ) -> Result<Vec<ParentPlan>> {
        let mut out = Vec::new();
        let mut used = vec![false; parents.len()];
        for fk in &self.fks {
            let parent = &self.parents[fk.parent];
            let mut key = Vec::new();
            for (c, pc) in fk.columns.iter().zip(&fk.parent_columns) {
                let i = self.sessions.index(c).expect("foreign key columns exist");
                let v = row
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, v)| v.clone())
                    .unwrap_or(Value::Null);
                let pi = parent.index(pc).expect("referenced columns exist");
                key.push((pi, v));
            }
            // A NULL reference references nothing (SQL's rule).
            if key.iter().any(|(_, v)| v.is_null()) {
                continue;
            }
            // The key converted to the parent's column types (a text id stays text...).
            let key: RowValues = key
                .into_iter()
                .map(|(pi, v)| {
                    let pcol = &parent.cols[pi];
                    match &v {
                        Value::Text(s) if !pcol.ty.is_text() => value::convert(
                            &format!("{}.{}", parent.name, pcol.name),
                            &Raw::Text(s.clone()),
                            &pcol.ty,
                        )
                        .map(|v| (pi, v))
                        .map_err(|e| field_err(id, e)),
                        _ => Ok((pi, v)),
                    }
                })
                .collect::<Result<_>>()?;
            let found = parents
                .iter()
                .position(|(t, _)| t.eq_ignore_ascii_case(&parent.name));
            let create = match found {
                None => None,
                Some(p) => {
                    used[p] = true;
                    let given = parents.values().nth(p).expect("position is in range");
                    Some(self.parent_row(id, fk.parent, &key, given, at)?)
                }
            };
            out.push(ParentPlan {
                parent: fk.parent,
                columns: fk.columns.clone(),
                key,
                create,
            });
        }
        if let Some((t, _)) = parents
            .iter()
            .zip(&used)
            .find(|(_, u)| !**u)
            .map(|(p, _)| p)
        {
            let referenced: Vec<&str> = self
                .fks
                .iter()
                .map(|f| self.parents[f.parent].name.as_str())
                .collect();
            return Err(Error::UnknownColumn {
                id: id.to_owned(),
                table: t.clone(),
                column: String::new(),
                message: format!(
                    "table {t:?} is not one that {:?} references (it references: {}), or the session does not reference a row of it",
                    self.sessions.name,
                    if referenced.is_empty() {
                        "none".to_owned()
                    } else {
                        referenced.join(", ")
                    }
                ),
            });
        }
        Ok(out)
    }

    /// The row of `parent` to create: its key from the session's reference, the columns
    /// given, `created_at`/`updated_at` timestamp columns not given set to now, then the
    /// fill constants; a NOT NULL column nothing fills is `missing_value`.
    fn parent_row(
        &self,
        id: &str,
        parent: usize,
        key: &RowValues,
        given: &Extra,
        at: &DateTime<Utc>,
    ) -> Result<RowValues> {
        let table = &self.parents[parent];
        let mut row: RowValues = key.clone();
        for (name, v) in given {
            let Some(i) = table.index(name) else {
                return Err(Error::UnknownColumn {
                    id: id.to_owned(),
                    table: table.name.clone(),
                    column: name.clone(),
                    message: format!(
                        "table {:?} has no column {name:?} (its columns: {})",
                        table.name,
                        table
                            .cols
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            };
            let col = &table.cols[i];
            let v = json_to_value(&table.name, col, v).map_err(|e| field_err(id, e))?;
            match row.iter().find(|(j, _)| *j == i) {
                Some((_, k)) if k.canonical() != v.canonical() => {
                    return Err(Error::UnknownColumn {
                        id: id.to_owned(),
                        table: table.name.clone(),
                        column: col.name.clone(),
                        message: format!(
                            "{}.{} is given as {}, but the session references {}",
                            table.name,
                            col.name,
                            v.canonical().unwrap_or("NULL".into()),
                            k.canonical().unwrap_or("NULL".into())
                        ),
                    });
                }
                Some(_) => {}
                None => row.push((i, v)),
            }
        }
        for stamp in ["created_at", "updated_at"] {
            if let Some(i) = table.index(stamp) {
                let col = &table.cols[i];
                let is_time = matches!(col.ty, PgType::Timestamp(_) | PgType::TimestampTz(_));
                if is_time && !col.generated && !row.iter().any(|(j, _)| *j == i) {
                    let v = value::convert(
                        &format!("{}.{}", table.name, col.name),
                        &Raw::Text(fields::fmt_ts(at)),
                        &col.ty,
                    )
                    .map_err(|e| field_err(id, e))?;
                    row.push((i, v));
                }
            }
        }
        complete(id, table, &mut row, &self.fill)?;
        Ok(row)
    }
}

/// A parent row a new session references: check it exists, or create it.
#[derive(Debug, Clone)]
pub(crate) struct ParentPlan {
    pub parent: usize,
    /// The session's columns that reference it (for messages).
    pub columns: Vec<String>,
    /// The parent's key: (column index in the parent, value).
    pub key: RowValues,
    /// The row to insert when it is missing, if the caller asked for one.
    pub create: Option<RowValues>,
}

impl ParentPlan {
    pub fn not_found(&self, id: &str, layout: &Layout) -> Error {
        let parent = &layout.parents[self.parent];
        let value = self
            .key
            .iter()
            .map(|(_, v)| v.canonical().unwrap_or("NULL".into()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        Error::ParentNotFound {
            id: id.to_owned(),
            table: parent.name.clone(),
            column: self.columns.join(", "),
            value,
        }
    }
}

fn is_time(f: Field) -> bool {
    matches!(f, Field::CreatedAt | Field::UpdatedAt)
}

fn field_err(id: &str, e: FieldError) -> Error {
    Error::InvalidField {
        id: id.to_owned(),
        code: e.code,
        message: e.message,
    }
}

/// Fill the NOT NULL columns a row leaves out: a `[postgres.fill]` constant, else the
/// column's default; else `missing_value`. A NULL given for a NOT NULL column is
/// treated as left out (a field the caller did not set).
fn complete(id: &str, table: &TableModel, row: &mut RowValues, fill: &[Fill]) -> Result<()> {
    row.retain(|(i, v)| !(v.is_null() && table.cols[*i].not_null));
    for (i, col) in table.cols.iter().enumerate() {
        if !col.not_null || col.generated || row.iter().any(|(j, _)| *j == i) {
            continue;
        }
        let constant = fill.iter().find(|f| {
            f.table.eq_ignore_ascii_case(&table.name) && f.column.eq_ignore_ascii_case(&col.name)
        });
        match constant {
            Some(f) => {
                let v = value::convert(
                    &format!("[postgres.fill] {}.{}", table.name, col.name),
                    &f.value,
                    &col.ty,
                )
                .map_err(|e| field_err(id, e))?;
                row.push((i, v));
            }
            None if col.defaulted => {}
            None => {
                return Err(Error::MissingValue {
                    id: id.to_owned(),
                    table: table.name.clone(),
                    column: col.name.clone(),
                    message: format!(
                        "column {}.{} is NOT NULL without a default, and no value was given: give it (an extra column of the session), or set a constant: [postgres.fill] \"{}.{}\" = ...",
                        table.name, col.name, table.name, col.name
                    ),
                });
            }
        }
    }
    row.sort_by_key(|(i, _)| *i);
    Ok(())
}

/// A JSON value for a column of type `col.ty`: `null` → NULL; booleans for `boolean`;
/// numbers for the integer, floating-point and `numeric` types (a `numeric` also takes
/// its decimal as a string, exactly); strings for text, timestamps (naive
/// `2025-12-10 14:08:48.347371` or RFC 3339; an aware one into a naive column is taken
/// in UTC), dates, UUIDs and `bytea` (`\x` and hex); any JSON for `json`/`jsonb`. Anything
/// else is refused (`invalid_value`), never stringified.
pub(crate) fn json_to_value(table: &str, col: &Col, v: &Json) -> Result<Value, FieldError> {
    let name = format!("{table}.{}", col.name);
    let wrong = |what: &str| FieldError {
        code: "invalid_value",
        message: format!("{name} is {}: {what} does not go there", col.ty),
    };
    let numeric = matches!(
        col.ty,
        PgType::SmallInt
            | PgType::Integer
            | PgType::BigInt
            | PgType::Real
            | PgType::Double
            | PgType::Numeric(_)
    );
    let raw = match (v, &col.ty) {
        (Json::Null, _) => Raw::Null,
        (_, PgType::Json | PgType::Jsonb) => {
            Raw::Text(serde_json::to_string(v).expect("a Value always serialises"))
        }
        (Json::Bool(b), PgType::Boolean) => Raw::Integer(i64::from(*b)),
        (Json::Bool(_), _) => return Err(wrong("a boolean")),
        (Json::Number(n), PgType::Numeric(_)) => Raw::Text(n.to_string()),
        (Json::Number(n), _) if numeric => match n.as_i64() {
            Some(i) => Raw::Integer(i),
            None => Raw::Real(n.as_f64().ok_or_else(|| wrong("this number"))?),
        },
        (Json::Number(_), _) => return Err(wrong("a number")),
        (Json::String(s), PgType::Numeric(_)) => Raw::Text(s.clone()),
        (Json::String(_), PgType::Boolean) => return Err(wrong("a string (give true or false)")),
        (Json::String(_), _) if numeric => return Err(wrong("a string (give a number)")),
        (Json::String(s), PgType::Bytea) => {
            let hex = s
                .strip_prefix("\\x")
                .ok_or_else(|| wrong("a string that is not \\x and hex digits"))?;
            Raw::Blob(
                hex::decode(hex).map_err(|_| wrong("a string that is not \\x and hex digits"))?,
            )
        }
        (Json::String(s), _) => Raw::Text(s.clone()),
        (Json::Array(_), _) => return Err(wrong("an array")),
        (Json::Object(_), _) => return Err(wrong("an object")),
    };
    value::convert(&name, &raw, &col.ty)
}

/// A column's value as JSON: booleans, integers and floats as JSON's (a float that is
/// not finite as the string PostgreSQL prints: `NaN`, `Infinity`), `json`/`jsonb` as the
/// document itself, everything else as its canonical text (`numeric` as its decimal;
/// timestamps `YYYY-MM-DD HH:MM:SS.ffffff` when naive, `...Z` when aware; `bytea` as
/// `\x` and hex).
pub(crate) fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => Json::Number(n),
            None if f.is_nan() => Json::String("NaN".into()),
            None if *f > 0.0 => Json::String("Infinity".into()),
            None => Json::String("-Infinity".into()),
        },
        Value::Json(j) => {
            serde_json::from_str(&j.text).unwrap_or_else(|_| Json::String(j.text.clone()))
        }
        other => Json::String(
            other
                .canonical()
                .map(|c| c.into_owned())
                .unwrap_or_default(),
        ),
    }
}

/// The metadata fields read from a PostgreSQL row's decoded values (in [`META_FIELDS`]
/// order; `None` for a field without a column).
pub(crate) fn meta_from_values(id: &str, vals: &[Option<Value>]) -> Result<Meta> {
    let bad = |f: Field, v: &Value| Error::InvalidRecord {
        id: id.to_owned(),
        code: if is_time(f) {
            "invalid_timestamp"
        } else {
            "invalid_value"
        },
        message: format!(
            "{f} {} cannot be read as the session's {f}",
            v.canonical().unwrap_or("NULL".into())
        ),
    };
    let text = |f: Field, v: &Option<Value>| -> Option<String> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Text(s)) => Some(s.clone()),
            Some(other) => other.canonical().map(|c| c.into_owned()),
        }
        .filter(|_| f != Field::Id)
    };
    let cost = |v: &Option<Value>| -> Result<Option<f64>> {
        Ok(match v {
            None | Some(Value::Null) => None,
            Some(Value::Float(f)) => Some(*f),
            Some(Value::Int(i)) => Some(*i as f64),
            Some(Value::Numeric(n)) => Some(
                n.parse()
                    .map_err(|_| bad(Field::Cost, &Value::Numeric(n.clone())))?,
            ),
            Some(Value::Text(s)) => {
                fields::cost(&Raw::Text(s.clone())).map_err(|e| Error::InvalidRecord {
                    id: id.to_owned(),
                    code: e.code,
                    message: e.message,
                })?
            }
            Some(other) => return Err(bad(Field::Cost, other)),
        })
    };
    let time =
        |f: Field, v: &Option<Value>| -> Result<Option<DateTime<Utc>>> {
            Ok(match v {
                None | Some(Value::Null) => None,
                Some(Value::Timestamp(n)) => Some(n.and_utc()),
                Some(Value::TimestampTz(t)) => Some(*t),
                Some(Value::Date(d)) => {
                    Some(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
                }
                Some(Value::Text(s)) => fields::timestamp(f.name(), &Raw::Text(s.clone()))
                    .map_err(|e| Error::InvalidRecord {
                        id: id.to_owned(),
                        code: e.code,
                        message: e.message,
                    })?,
                Some(other) => return Err(bad(f, other)),
            })
        };
    Ok(Meta {
        user_id: text(Field::UserId, &vals[0]),
        status: text(Field::Status, &vals[1]),
        current_step: text(Field::CurrentStep, &vals[2]),
        cost: cost(&vals[3])?,
        created_at: time(Field::CreatedAt, &vals[4])?,
        updated_at: time(Field::UpdatedAt, &vals[5])?,
    })
}

/// Extra columns' values as the caller sees them.
pub(crate) fn extra_of(cols: &[&Col], vals: Vec<Value>) -> Extra {
    cols.iter()
        .zip(vals)
        .map(|(c, v)| (c.name.clone(), value_to_json(&v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(ty: &str) -> Col {
        Col {
            name: "c".into(),
            ty: PgType::parse(ty).unwrap(),
            not_null: false,
            defaulted: false,
            generated: false,
            form: Form::default(),
        }
    }

    #[test]
    fn json_values_go_to_their_column_types_and_back() {
        let round = |ty: &str, v: Json| value_to_json(&json_to_value("t", &col(ty), &v).unwrap());
        assert_eq!(round("boolean", json!(false)), json!(false));
        assert_eq!(round("integer", json!(42)), json!(42));
        assert_eq!(round("double precision", json!(0.1)), json!(0.1));
        assert_eq!(round("double precision", json!(3)), json!(3.0));
        assert_eq!(round("numeric(10,2)", json!("1.005")), json!("1.01"));
        assert_eq!(round("text", json!("héllo")), json!("héllo"));
        assert_eq!(
            round(
                "timestamp without time zone",
                json!("2025-12-10 14:08:48.347371")
            ),
            json!("2025-12-10 14:08:48.347371")
        );
        assert_eq!(
            round(
                "timestamp without time zone",
                json!("2025-12-10T16:08:48+02:00")
            ),
            json!("2025-12-10 14:08:48.000000")
        );
        assert_eq!(
            round("jsonb", json!({"b": 1, "a": [true]})),
            json!({"a": [true], "b": 1})
        );
        assert_eq!(round("jsonb", json!("just text")), json!("just text"));
        assert_eq!(round("bytea", json!("\\x00ff")), json!("\\x00ff"));
        assert_eq!(round("text", Json::Null), Json::Null);
        let code = |ty: &str, v: Json| json_to_value("t", &col(ty), &v).unwrap_err().code;
        assert_eq!(code("text", json!(42)), "invalid_value");
        assert_eq!(code("text", json!(true)), "invalid_value");
        assert_eq!(code("boolean", json!("false")), "invalid_value");
        assert_eq!(code("boolean", json!(1)), "invalid_value");
        assert_eq!(code("integer", json!(1.5)), "invalid_value");
        assert_eq!(code("integer", json!("1")), "invalid_value");
        assert_eq!(code("text", json!({"a": 1})), "invalid_value");
        assert_eq!(
            code("timestamp without time zone", json!("soon")),
            "invalid_timestamp"
        );
        assert_eq!(code("character varying(3)", json!("abcd")), "invalid_value");
        assert_eq!(value_to_json(&Value::Float(f64::NAN)), json!("NaN"));
    }
}
