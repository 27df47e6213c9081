//! Whether the target, as it is, can take the source's data (SPEC §2, §9): the shape
//! of its tables — the columns sessiondb writes, types that hold the values, NOT NULL
//! columns nothing fills — and the data against their constraints — NOT NULL, length
//! limits, uniqueness, foreign keys. Preflight reports every problem; migrate-state
//! refuses on them in its planning pass, before its first write; verify and the plan
//! read the target's columns through [`Fit::meta_select`]. One implementation, so the
//! three cannot disagree.

use std::collections::{BTreeMap, HashMap, HashSet};

use postgres::Client;
use serde::Serialize;

use super::{Column, TableShape, ident, table_shape};
use crate::error::{Error, Result};
use crate::source::{META_FIELDS, Session};

/// A shape problem: a column missing, of a type that cannot hold the values, or NOT NULL
/// with nothing to fill it (SPEC §9).
pub const SCHEMA_MISMATCH: &str = "schema_mismatch";
/// The data against a constraint: a NULL for a NOT NULL column, a value too long, a
/// repeated value of a unique column, a foreign key without its parent.
pub const CONSTRAINT: &str = "constraint";

/// One reason the target cannot take the data.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub code: &'static str,
    pub message: String,
}

impl Problem {
    fn shape(message: String) -> Problem {
        Problem {
            code: SCHEMA_MISMATCH,
            message,
        }
    }
    fn data(message: String) -> Problem {
        Problem {
            code: CONSTRAINT,
            message,
        }
    }
}

/// The columns of `sessions` that sessiondb writes, with a type for each when it
/// creates them; `state` is the legacy column it leaves empty.
const WRITTEN: [(&str, &str); 7] = [
    ("id", "text"),
    ("user_id", "text"),
    ("status", "text"),
    ("current_step", "text"),
    ("cost", "double precision"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
];

/// The columns of `session_state` that sessiondb writes.
const STATE_WRITTEN: [(&str, &str); 3] = [
    ("session_id", "text"),
    ("state", "jsonb"),
    ("updated_at", "timestamptz"),
];

/// The source's fields, by the name of the `sessions` column each goes to (SPEC §1's
/// columns: the target's `sessions` has the same).
const SOURCE_COLUMNS: [&str; 8] = crate::source::sqlite::COLUMNS;

const TEXT: [&str; 3] = ["text", "character varying", "character"];
const TIMESTAMPS: [&str; 2] = ["timestamp with time zone", "timestamp without time zone"];

/// Whether a column of type `ty` holds every value of the source field `col`. `real`
/// does not hold a double precision cost (0.1 comes back 0.100000001); `numeric` holds
/// its shortest decimal form exactly.
fn type_ok(col: &str, ty: &str) -> bool {
    match col {
        "id" | "user_id" | "status" | "current_step" | "session_id" => TEXT.contains(&ty),
        "cost" => ["double precision", "numeric"].contains(&ty),
        "created_at" | "updated_at" => TIMESTAMPS.contains(&ty),
        "state" => ["jsonb", "json"].contains(&ty),
        _ => true,
    }
}

/// The target's tables as they are (`None`: not there yet; sessiondb creates them).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fit {
    pub sessions: Option<TableShape>,
    pub session_state: Option<TableShape>,
}

impl Fit {
    pub fn read(c: &mut Client, schema: &str) -> Result<Fit> {
        Ok(Fit {
            sessions: table_shape(c, schema, "sessions")?,
            session_state: table_shape(c, schema, "session_state")?,
        })
    }

    fn column(&self, name: &str) -> Option<&Column> {
        self.sessions
            .as_ref()
            .and_then(|t| t.columns.iter().find(|c| c.name == name))
    }

    /// What the tables' shape forbids, whatever the data: each a `schema_mismatch`.
    pub fn shape_problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Some(sh) = &self.sessions {
            table_shape_problems(&mut out, "sessions", sh, &WRITTEN);
            for col in &sh.columns {
                if col.name == "state" && col.not_null && !col.has_default {
                    out.push(Problem::shape("sessions.state is NOT NULL, but sessiondb leaves this legacy column empty (state goes to session_state): drop the constraint or give it a default".into()));
                }
            }
        }
        if let Some(sh) = &self.session_state {
            table_shape_problems(&mut out, "session_state", sh, &STATE_WRITTEN);
            if let Some(c) = sh.columns.iter().find(|c| c.name == "state") {
                if c.data_type == "json" {
                    out.push(Problem::shape("session_state.state is json, which takes no GIN index: sessiondb needs jsonb there".into()));
                }
            }
        }
        out
    }

    /// Whether a constraint of the tables depends on the values (NOT NULL, a length
    /// limit, a unique column, a foreign key): then every session must be checked
    /// before a load, even into empty tables.
    pub fn needs_data(&self) -> bool {
        let Some(sh) = &self.sessions else {
            return false;
        };
        sh.columns.iter().any(|c| {
            let ours = SOURCE_COLUMNS.contains(&c.name.as_str()) && c.name != "id";
            ours && (c.not_null || c.max_len.is_some())
        }) || sh.unique.iter().any(|u| u != "id")
            || !sh.foreign_keys.is_empty()
    }

    /// A collector of the facts about the data that the constraints care about.
    pub fn stats(&self) -> Stats {
        Stats::new(self.sessions.as_ref())
    }

    /// What the data collected in `stats` violates, with the foreign keys' parents
    /// looked up in the target: each a `constraint` problem.
    pub fn data_problems(&self, c: &mut Client, stats: &Stats) -> Result<Vec<Problem>> {
        let mut out = Vec::new();
        let Some(sh) = &self.sessions else {
            return Ok(out);
        };
        for col in &sh.columns {
            let ours = SOURCE_COLUMNS.contains(&col.name.as_str());
            if col.not_null && ours && col.name != "id" && col.name != "state" {
                if let Some(ex) = stats.nulls.get(col.name.as_str()) {
                    out.push(Problem::data(format!(
                        "sessions.{} is NOT NULL but {} source session(s) have no {}, e.g. {:?}",
                        col.name, ex.count, col.name, ex.ids
                    )));
                }
            }
            if let (Some(max), Some(ex)) = (col.max_len, stats.too_long.get(col.name.as_str())) {
                let longest = stats.max_len.get(col.name.as_str()).copied().unwrap_or(0);
                out.push(Problem::data(format!(
                    "sessions.{} is limited to {max} characters but {} source session(s) have longer values (up to {longest}), e.g. {:?}",
                    col.name, ex.count, ex.ids
                )));
            }
        }
        let mut dups: Vec<_> = stats.duplicates.iter().collect();
        dups.sort();
        for (col, values) in dups {
            out.push(Problem::data(format!(
                "sessions.{col} is unique but {} source value(s) repeat (e.g. {:?})",
                values.len(),
                values.first()
            )));
        }
        for fk in &sh.foreign_keys {
            let Some(values) = stats.referenced.get(&fk.column) else {
                continue;
            };
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            let mut missing: Vec<String> = Vec::new();
            // `parent` is `format('%I.%I')` of the catalog: quoted as it must be.
            let sql = format!(
                "SELECT v FROM pg_catalog.unnest($1::pg_catalog.text[]) v WHERE NOT EXISTS (SELECT 1 FROM {} p WHERE p.{}::pg_catalog.text = v)",
                fk.parent,
                ident(&fk.parent_column)
            );
            for chunk in values.chunks(10_000) {
                let rows = c
                    .query(&sql, &[&chunk])
                    .map_err(|e| Error::pg("checking a foreign key", "", e))?;
                missing.extend(rows.iter().map(|r| r.get::<_, String>(0)));
            }
            if !missing.is_empty() {
                missing.sort();
                out.push(Problem::data(format!(
                    "foreign key {} (sessions.{} → {}.{}): {} value(s) have no parent, e.g. {:?}",
                    fk.name,
                    fk.column,
                    fk.parent,
                    fk.parent_column,
                    missing.len(),
                    &missing[..missing.len().min(5)]
                )));
            }
        }
        Ok(out)
    }

    /// The six metadata columns of `sessions` (alias `a`) as sessiondb decodes them:
    /// text, `float8`, and `timestamptz` (a naive timestamp read as UTC, which is how
    /// sessiondb writes it). Only for tables whose shape passed [`Fit::shape_problems`];
    /// a value that still does not decode is [`Error::SchemaMismatch`], naming the column.
    pub fn meta_select(&self, a: &str) -> String {
        let mut out = Vec::new();
        for name in META_FIELDS {
            let ty = self.column(name).map(|c| c.data_type.as_str());
            let col = format!("{a}.{}", ident(name));
            out.push(match (name, ty) {
                ("cost", Some(t)) if t != "double precision" => format!("{col}::pg_catalog.float8"),
                (_, Some("timestamp without time zone")) => {
                    format!("pg_catalog.timezone('UTC', {col})")
                }
                (_, Some("character varying" | "character")) => format!("{col}::pg_catalog.text"),
                _ => col,
            });
        }
        out.join(", ")
    }
}

fn table_shape_problems(
    out: &mut Vec<Problem>,
    table: &str,
    sh: &TableShape,
    written: &[(&str, &str)],
) {
    for (name, ty) in written {
        if !sh.columns.iter().any(|c| c.name == *name) {
            out.push(Problem::shape(format!(
                "{table}.{name} is missing, and sessiondb writes it: add it (ALTER TABLE {table} ADD COLUMN {name} {ty})"
            )));
        }
    }
    for col in &sh.columns {
        let ours = written.iter().any(|(n, _)| *n == col.name);
        if ours && !type_ok(&col.name, &col.data_type) {
            let want = written
                .iter()
                .find(|(n, _)| *n == col.name)
                .map_or("", |(_, t)| *t);
            out.push(Problem::shape(format!(
                "{table}.{} is {}, which cannot hold the source's values (sessiondb writes {want})",
                col.name, col.data_type
            )));
        }
        let known = ours || (table == "sessions" && col.name == "state");
        if col.not_null && !known && !col.has_default {
            out.push(Problem::shape(format!(
                "{table}.{} is NOT NULL without a default, and sessiondb does not fill it: give it a default or drop the constraint",
                col.name
            )));
        }
    }
}

/// How many example sessions a constraint problem names.
const EXAMPLES: usize = 5;

/// The sessions behind one problem: how many, and the first few ids.
#[derive(Debug, Default)]
pub struct Examples {
    pub count: u64,
    pub ids: Vec<String>,
}

impl Examples {
    fn add(&mut self, id: &str) {
        self.count += 1;
        if self.ids.len() < EXAMPLES {
            self.ids.push(id.to_owned());
        }
    }
}

/// Per-column facts about the source that the target's constraints care about,
/// collected a session at a time ([`Stats::add`]).
#[derive(Debug)]
pub struct Stats {
    nulls: BTreeMap<&'static str, Examples>,
    max_len: BTreeMap<&'static str, usize>,
    /// Character limits of the existing table's columns, and the sessions over them.
    limits: BTreeMap<&'static str, usize>,
    too_long: BTreeMap<&'static str, Examples>,
    /// Values seen of each unique column (a repeat is a problem).
    unique: HashMap<String, HashSet<String>>,
    duplicates: HashMap<String, Vec<String>>,
    /// Values of each column with a foreign key (looked up in its parent).
    referenced: HashMap<String, HashSet<String>>,
}

impl Stats {
    fn new(shape: Option<&TableShape>) -> Stats {
        let mut unique = HashMap::new();
        let mut referenced = HashMap::new();
        let mut limits = BTreeMap::new();
        if let Some(sh) = shape {
            for c in &sh.columns {
                let name = SOURCE_COLUMNS.iter().find(|n| **n == c.name);
                if let (Some(name), Some(max)) = (name, c.max_len) {
                    limits.insert(*name, max.max(0) as usize);
                }
            }
            for u in &sh.unique {
                if u != "id" && SOURCE_COLUMNS.contains(&u.as_str()) {
                    unique.insert(u.clone(), HashSet::new());
                }
            }
            for fk in &sh.foreign_keys {
                if SOURCE_COLUMNS.contains(&fk.column.as_str()) {
                    referenced.insert(fk.column.clone(), HashSet::new());
                }
            }
        }
        Stats {
            nulls: BTreeMap::new(),
            max_len: BTreeMap::new(),
            limits,
            too_long: BTreeMap::new(),
            unique,
            duplicates: HashMap::new(),
            referenced,
        }
    }

    pub fn add(&mut self, s: &Session) {
        let texts = s.meta.texts();
        let values = std::iter::once(("id", Some(std::borrow::Cow::Borrowed(s.id.as_str()))))
            .chain(META_FIELDS.into_iter().zip(texts))
            .chain(std::iter::once(("state", None)));
        for (col, v) in values {
            let Some(v) = v.map(std::borrow::Cow::into_owned) else {
                self.nulls.entry(col).or_default().add(&s.id);
                continue;
            };
            let len = v.chars().count();
            let l = self.max_len.entry(col).or_default();
            *l = (*l).max(len);
            if self.limits.get(col).is_some_and(|max| len > *max) {
                self.too_long.entry(col).or_default().add(&s.id);
            }
            if let Some(set) = self.unique.get_mut(col) {
                if !set.insert(v.clone()) {
                    self.duplicates
                        .entry(col.to_owned())
                        .or_default()
                        .push(v.clone());
                }
            }
            if let Some(set) = self.referenced.get_mut(col) {
                set.insert(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::ForeignKey;

    fn col(name: &str, ty: &str, not_null: bool) -> Column {
        Column {
            name: name.into(),
            data_type: ty.into(),
            not_null,
            has_default: false,
            max_len: None,
        }
    }

    fn sessions(cols: Vec<Column>) -> Fit {
        Fit {
            sessions: Some(TableShape {
                columns: cols,
                unique: vec!["id".into()],
                foreign_keys: vec![],
            }),
            session_state: None,
        }
    }

    fn default_columns() -> Vec<Column> {
        WRITTEN
            .iter()
            .map(|(n, _)| match *n {
                "cost" => col(n, "double precision", false),
                "created_at" | "updated_at" => col(n, "timestamp with time zone", false),
                _ => col(n, "text", *n == "id"),
            })
            .collect()
    }

    #[test]
    fn the_default_shape_has_no_problem_and_needs_no_data() {
        let f = sessions(default_columns());
        assert!(f.shape_problems().is_empty());
        assert!(!f.needs_data());
        assert!(Fit::default().shape_problems().is_empty());
    }

    #[test]
    fn shape_problems_are_schema_mismatches_naming_the_column() {
        let mut cols = default_columns();
        cols.retain(|c| c.name != "current_step");
        cols.iter_mut()
            .find(|c| c.name == "cost")
            .unwrap()
            .data_type = "text".into();
        cols.push(col("question", "text", true));
        let p = sessions(cols).shape_problems();
        let msgs: Vec<&str> = p.iter().map(|p| p.message.as_str()).collect();
        assert!(p.iter().all(|p| p.code == SCHEMA_MISMATCH), "{p:?}");
        assert_eq!(p.len(), 3, "{msgs:?}");
        assert!(
            msgs[0].starts_with("sessions.current_step is missing"),
            "{msgs:?}"
        );
        assert!(msgs[1].starts_with("sessions.cost is text"), "{msgs:?}");
        assert!(
            msgs[2].starts_with("sessions.question is NOT NULL"),
            "{msgs:?}"
        );
    }

    #[test]
    fn a_foreign_key_column_is_not_judged_unique() {
        let mut f = sessions(default_columns());
        f.sessions.as_mut().unwrap().foreign_keys.push(ForeignKey {
            name: "fk".into(),
            column: "user_id".into(),
            parent: "public.users".into(),
            parent_column: "id".into(),
        });
        assert!(f.needs_data());
        let mut st = f.stats();
        for id in ["a", "b"] {
            st.add(&Session {
                id: id.into(),
                meta: crate::source::Meta {
                    user_id: Some("same".into()),
                    ..Default::default()
                },
                meta_origin: crate::source::Origin::SqliteRow,
                state: None,
                stamp: None,
            });
        }
        assert!(st.duplicates.is_empty());
        assert_eq!(st.referenced["user_id"].len(), 1);
    }

    #[test]
    fn meta_select_reads_each_type_as_sessiondb_decodes_it() {
        let mut cols = default_columns();
        for c in &mut cols {
            match c.name.as_str() {
                "cost" => c.data_type = "numeric".into(),
                "created_at" => c.data_type = "timestamp without time zone".into(),
                "status" => c.data_type = "character varying".into(),
                _ => {}
            }
        }
        assert_eq!(
            sessions(cols).meta_select("s"),
            "s.\"user_id\", s.\"status\"::pg_catalog.text, s.\"current_step\", s.\"cost\"::pg_catalog.float8, pg_catalog.timezone('UTC', s.\"created_at\"), s.\"updated_at\""
        );
    }
}
