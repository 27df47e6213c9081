//! The target's tables as PostgreSQL's catalog describes them (read-only queries on
//! `pg_catalog`, every built-in schema-qualified so that no object another role made
//! can stand in for it), and whether they fit the source (SPEC §9): [`fit`] names every
//! `schema_mismatch` with its table, column and fix.
//!
//! APIs for preflight, `init` and the planning pass: [`read_tables`] (one schema),
//! [`TargetTable::gin_on`] (an equivalent GIN index already there), [`fit`] with
//! [`SourceColumn`]s built from `source::shape`'s scan.

use std::collections::BTreeMap;

use postgres::GenericClient;
use serde::Serialize;

use crate::config::Fill;
use crate::error::{Error, Result};
use crate::value::compat::{Compat, SourceKind, compat};
use crate::value::{PgType, UnsupportedType};

/// A column of a target table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetColumn {
    pub name: String,
    /// What `format_type` prints (a domain's base type when it is a domain).
    pub format_type: String,
    /// The type parsed, or why sessiondb cannot write it.
    #[serde(serialize_with = "ser_type")]
    pub ty: std::result::Result<PgType, UnsupportedType>,
    pub not_null: bool,
    /// The default's SQL text.
    pub default: Option<String>,
    /// `GENERATED ... AS IDENTITY`, or a generated column: filled by the server.
    pub server_filled: bool,
}

fn ser_type<S: serde::Serializer>(
    t: &std::result::Result<PgType, UnsupportedType>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match t {
        Ok(t) => s.serialize_str(&t.sql()),
        Err(e) => s.serialize_str(&format!("unsupported: {e}")),
    }
}

impl TargetColumn {
    /// Whether a row can leave it out: nullable, a default, or filled by the server.
    pub fn optional(&self) -> bool {
        !self.not_null || self.default.is_some() || self.server_filled
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetForeignKey {
    pub name: String,
    pub columns: Vec<String>,
    pub parent_schema: String,
    pub parent: String,
    pub parent_columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetIndex {
    pub name: String,
    /// The access method: `btree`, `gin`...
    pub method: String,
    pub unique: bool,
    pub valid: bool,
    pub partial: bool,
    /// The indexed columns; `None` for an expression.
    pub columns: Vec<Option<String>>,
    /// The operator class of each column (`jsonb_ops`, `jsonb_path_ops`...).
    pub opclasses: Vec<String>,
}

/// A table of the target schema (or a view, which sessiondb does not write into).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetTable {
    pub schema: String,
    pub name: String,
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `v` view, `m`, `f`.
    pub kind: String,
    pub columns: Vec<TargetColumn>,
    pub primary_key: Vec<String>,
    /// Unique constraints (not the primary key), each its columns.
    pub unique: Vec<Vec<String>>,
    pub foreign_keys: Vec<TargetForeignKey>,
    pub indexes: Vec<TargetIndex>,
}

impl TargetTable {
    pub fn is_table(&self) -> bool {
        self.kind == "r" || self.kind == "p"
    }

    /// The column `name`: exactly, else the one column equal ignoring ASCII case
    /// (SQLite's names ignore case; PostgreSQL's do not).
    pub fn column(&self, name: &str) -> Option<&TargetColumn> {
        self.columns.iter().find(|c| c.name == name).or_else(|| {
            let mut same = self
                .columns
                .iter()
                .filter(|c| c.name.eq_ignore_ascii_case(name));
            match (same.next(), same.next()) {
                (Some(c), None) => Some(c),
                _ => None,
            }
        })
    }

    /// A valid, whole-table GIN index on `column` alone with `opclass`: one the
    /// application already built, to be used rather than duplicated.
    pub fn gin_on(&self, column: &str, opclass: &str) -> Option<&TargetIndex> {
        self.indexes.iter().find(|i| {
            i.method == "gin"
                && i.valid
                && !i.partial
                && i.columns == [Some(column.to_owned())]
                && i.opclasses == [opclass.to_owned()]
        })
    }

    /// Whether the primary key or a unique constraint or valid unique index is exactly
    /// `columns` (in any order): what an upsert by key needs.
    pub fn has_key(&self, columns: &[String]) -> bool {
        let same = |cols: &[String]| {
            cols.len() == columns.len()
                && columns
                    .iter()
                    .all(|c| cols.iter().any(|k| k.eq_ignore_ascii_case(c)))
        };
        same(&self.primary_key)
            || self.unique.iter().any(|u| same(u))
            || self.indexes.iter().any(|i| {
                i.unique
                    && i.valid
                    && !i.partial
                    && i.columns.iter().all(Option::is_some)
                    && same(&i.columns.iter().flatten().cloned().collect::<Vec<_>>())
            })
    }
}

fn db_err(context: &'static str) -> impl Fn(postgres::Error) -> Error {
    move |e| Error::pg(context, "", e)
}

/// Every table and view of `schema`, by name, read in one read-only pass.
pub fn read_tables(
    c: &mut impl GenericClient,
    schema: &str,
) -> Result<BTreeMap<String, TargetTable>> {
    let mut tables: BTreeMap<String, TargetTable> = BTreeMap::new();
    for r in c
        .query(
            "SELECT c.relname::text, c.relkind::text
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            &[&schema],
        )
        .map_err(db_err("reading the target's tables"))?
    {
        let name: String = r.get(0);
        tables.insert(
            name.clone(),
            TargetTable {
                schema: schema.to_owned(),
                name,
                kind: r.get(1),
                columns: Vec::new(),
                primary_key: Vec::new(),
                unique: Vec::new(),
                foreign_keys: Vec::new(),
                indexes: Vec::new(),
            },
        );
    }
    for r in c
        .query(
            "SELECT c.relname::text, a.attname::text,
                    pg_catalog.format_type(a.atttypid, a.atttypmod), t.typtype::text,
                    pg_catalog.format_type(t.typbasetype, t.typtypmod),
                    a.attnotnull, pg_catalog.pg_get_expr(d.adbin, d.adrelid),
                    a.attidentity <> '' OR a.attgenerated <> ''
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY c.relname, a.attnum",
            &[&schema],
        )
        .map_err(db_err("reading the target's columns"))?
    {
        let table: String = r.get(0);
        let format_type: String = r.get(2);
        let typtype: String = r.get(3);
        let (format_type, ty) = match typtype.as_str() {
            "d" => {
                let base: String = r.get(4);
                let ty = PgType::parse(&base);
                (base, ty)
            }
            "e" => (
                format_type.clone(),
                Err(UnsupportedType {
                    format_type,
                    why: "enum types are not supported yet".into(),
                }),
            ),
            _ => {
                let ty = PgType::parse(&format_type);
                (format_type, ty)
            }
        };
        if let Some(t) = tables.get_mut(&table) {
            t.columns.push(TargetColumn {
                name: r.get(1),
                format_type,
                ty,
                not_null: r.get(5),
                default: r.get(6),
                server_filled: r.get(7),
            });
        }
    }
    for r in c
        .query(
            "SELECT c.relname::text, con.conname::text, con.contype::text,
                    ARRAY(SELECT a.attname::text
                            FROM pg_catalog.unnest(con.conkey) WITH ORDINALITY AS k(n, i)
                            JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n
                           ORDER BY k.i),
                    pn.nspname::text, pc.relname::text,
                    ARRAY(SELECT a.attname::text
                            FROM pg_catalog.unnest(con.confkey) WITH ORDINALITY AS k(n, i)
                            JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n
                           ORDER BY k.i)
               FROM pg_catalog.pg_constraint con
               JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_catalog.pg_class pc ON pc.oid = con.confrelid
               LEFT JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
              WHERE n.nspname = $1 AND con.contype IN ('p', 'u', 'f')
              ORDER BY c.relname, con.conname",
            &[&schema],
        )
        .map_err(db_err("reading the target's constraints"))?
    {
        let table: String = r.get(0);
        let Some(t) = tables.get_mut(&table) else {
            continue;
        };
        let kind: String = r.get(2);
        let columns: Vec<String> = r.get(3);
        match kind.as_str() {
            "p" => t.primary_key = columns,
            "u" => t.unique.push(columns),
            _ => t.foreign_keys.push(TargetForeignKey {
                name: r.get(1),
                columns,
                parent_schema: r.get::<_, Option<String>>(4).unwrap_or_default(),
                parent: r.get::<_, Option<String>>(5).unwrap_or_default(),
                parent_columns: r.get(6),
            }),
        }
    }
    for r in c
        .query(
            "SELECT c.relname::text, i.relname::text, am.amname::text, x.indisunique, x.indisvalid,
                    x.indpred IS NOT NULL,
                    ARRAY(SELECT a.attname::text
                            FROM pg_catalog.unnest(x.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(n, i)
                            LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n AND k.n <> 0
                           ORDER BY k.i),
                    ARRAY(SELECT oc.opcname::text
                            FROM pg_catalog.unnest(x.indclass::pg_catalog.oid[]) WITH ORDINALITY AS k(o, i)
                            JOIN pg_catalog.pg_opclass oc ON oc.oid = k.o
                           ORDER BY k.i)
               FROM pg_catalog.pg_index x
               JOIN pg_catalog.pg_class c ON c.oid = x.indrelid
               JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
               JOIN pg_catalog.pg_am am ON am.oid = i.relam
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1
              ORDER BY 1, 2",
            &[&schema],
        )
        .map_err(db_err("reading the target's indexes"))?
    {
        let table: String = r.get(0);
        if let Some(t) = tables.get_mut(&table) {
            t.indexes.push(TargetIndex {
                name: r.get(1),
                method: r.get(2),
                unique: r.get(3),
                valid: r.get(4),
                partial: r.get(5),
                columns: r.get(6),
                opclasses: r.get(7),
            });
        }
    }
    Ok(tables)
}

// ---- the fit ---------------------------------------------------------------------------

/// A source column as the fit check sees it (from `source::shape`'s scan).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceColumn {
    pub name: String,
    pub kind: SourceKind,
    /// Values that are not NULL.
    pub values: u64,
    pub nulls: u64,
    /// The longest text, in characters.
    pub max_chars: u64,
}

/// One reason the target cannot hold the source: `schema_mismatch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Misfit {
    pub table: String,
    pub column: Option<String>,
    pub message: String,
    pub fix: String,
}

impl Misfit {
    pub fn error(&self) -> Error {
        Error::SchemaMismatch {
            table: self.table.clone(),
            column: self.column.clone(),
            message: self.message.clone(),
            fix: self.fix.clone(),
        }
    }
}

/// What the fit check found for one table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Fit {
    pub misfits: Vec<Misfit>,
    /// Conversions and other things worth saying that do not stop a load.
    pub notes: Vec<String>,
}

impl Fit {
    pub fn fits(&self) -> bool {
        self.misfits.is_empty()
    }
}

/// Whether the existing `target` table can hold the source columns `source` (matched
/// by name), with `key` as the upsert key and `fill` the `[postgres.fill]` constants.
/// Columns sessiondb fills itself (`session_state`'s three) are passed in `source` with
/// the kind of what fills them.
pub fn fit(target: &TargetTable, source: &[SourceColumn], key: &[String], fill: &[Fill]) -> Fit {
    let mut out = Fit::default();
    let t = &target.name;
    let mis = |column: Option<&str>, message: String, fix: String| Misfit {
        table: t.clone(),
        column: column.map(str::to_owned),
        message,
        fix,
    };
    if !target.is_table() {
        out.misfits.push(mis(
            None,
            format!(
                "{}.{t} is not a table (relkind {})",
                target.schema, target.kind
            ),
            "point sessiondb at a schema where it is a table".into(),
        ));
        return out;
    }
    for s in source {
        let Some(c) = target.column(&s.name) else {
            if s.values > 0 {
                out.misfits.push(mis(
                    Some(&s.name),
                    format!(
                        "the target has no column {:?}, and the source column holds {} value(s)",
                        s.name, s.values
                    ),
                    format!(
                        "add the column to {t}, or list {:?} in sqlite.ignore_columns to leave it behind",
                        s.name
                    ),
                ));
            } else {
                out.notes.push(format!(
                    "{t}.{}: no such column on the target; the source column is empty, so nothing is lost",
                    s.name
                ));
            }
            continue;
        };
        let ty = match &c.ty {
            Ok(ty) => ty,
            Err(e) => {
                out.misfits.push(mis(
                    Some(&c.name),
                    e.to_string(),
                    "change the column's type to one sessiondb writes (text, integer, boolean, timestamp, jsonb...)".into(),
                ));
                continue;
            }
        };
        match compat(s.kind, ty) {
            Compat::Ok => {}
            Compat::Convert(how) => out.notes.push(format!("{t}.{}: {ty}: {how}", c.name)),
            Compat::Mismatch(why) => out.misfits.push(mis(
                Some(&c.name),
                format!("the column is {ty}; {why}"),
                format!(
                    "change the column's type, or map another column onto {:?}",
                    c.name
                ),
            )),
        }
        if let PgType::Varchar(Some(n)) | PgType::Char(n) = ty {
            let n = *n;
            if s.max_chars > u64::from(n) {
                out.misfits.push(mis(
                    Some(&c.name),
                    format!(
                        "the column holds at most {n} characters; the source has a value of {}",
                        s.max_chars
                    ),
                    format!(
                        "widen the column (ALTER TABLE ... TYPE character varying({}))",
                        s.max_chars
                    ),
                ));
            }
        }
        if c.not_null && s.nulls > 0 {
            out.misfits.push(mis(
                Some(&c.name),
                format!(
                    "the column is NOT NULL; {} source row(s) hold NULL there",
                    s.nulls
                ),
                "allow NULL in the column, or correct those rows in the source".into(),
            ));
        }
    }
    for c in &target.columns {
        if c.optional()
            || source
                .iter()
                .any(|s| target.column(&s.name).is_some_and(|m| m.name == c.name))
        {
            continue;
        }
        match fill.iter().find(|f| f.table == *t && f.column == c.name) {
            Some(f) => {
                if let Ok(ty) = &c.ty {
                    if let Err(e) = crate::value::convert(&format!("[postgres.fill] {t}.{}", c.name), &f.value, ty) {
                        out.misfits.push(mis(Some(&c.name), e.message, format!("give [postgres.fill] \"{t}.{}\" a value of type {ty}", c.name)));
                    }
                }
            }
            None => out.misfits.push(mis(
                Some(&c.name),
                format!("the column is NOT NULL without a default, and nothing fills it ({})", c.format_type),
                format!(
                    "map a source column onto it, give it a default, or set a constant: [postgres.fill] \"{t}.{}\" = ...",
                    c.name
                ),
            )),
        }
    }
    if !key.is_empty() && !target.has_key(key) {
        out.misfits.push(mis(
            None,
            format!(
                "no primary key or unique index on ({}), which copying by key needs",
                key.join(", ")
            ),
            format!(
                "add one: ALTER TABLE {t} ADD PRIMARY KEY ({})",
                key.join(", ")
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, not_null: bool) -> TargetColumn {
        TargetColumn {
            name: name.into(),
            format_type: ty.into(),
            ty: PgType::parse(ty),
            not_null,
            default: None,
            server_filled: false,
        }
    }
    fn src(name: &str, kind: SourceKind, nulls: u64) -> SourceColumn {
        SourceColumn {
            name: name.into(),
            kind,
            values: 10,
            nulls,
            max_chars: 36,
        }
    }
    fn sessions(cols: Vec<TargetColumn>) -> TargetTable {
        TargetTable {
            schema: "public".into(),
            name: "sessions".into(),
            kind: "r".into(),
            columns: cols,
            primary_key: vec!["id".into()],
            unique: vec![],
            foreign_keys: vec![],
            indexes: vec![],
        }
    }

    #[test]
    fn every_misfit_names_table_column_and_fix() {
        use SourceKind::*;
        let t = sessions(vec![
            col("id", "character varying", true),
            col("question", "text", true),
            col("last_cost_usd", "text", false),
            col("short", "character varying(10)", false),
            col("tags", "text[]", false),
        ]);
        let s = [
            src("id", Text, 0),
            src("last_cost_usd", Real, 2),
            src("short", Text, 0),
            src("tags", Text, 0),
            src("gone", Integer, 0),
        ];
        let f = fit(&t, &s, &["id".into()], &[]);
        let by: Vec<(Option<&str>, &str)> = f
            .misfits
            .iter()
            .map(|m| (m.column.as_deref(), m.message.as_str()))
            .collect();
        assert_eq!(f.misfits.len(), 5, "{by:#?}");
        assert!(
            f.misfits
                .iter()
                .all(|m| m.table == "sessions" && !m.fix.is_empty())
        );
        let has = |c: &str, needle: &str| {
            by.iter()
                .any(|(col, m)| *col == Some(c) && m.contains(needle))
        };
        assert!(has("last_cost_usd", "holds numbers"));
        assert!(has("short", "at most 10"));
        assert!(has("tags", "not supported"));
        assert!(has("gone", "no column"));
        assert!(has("question", "nothing fills it"));
        let q = f
            .misfits
            .iter()
            .find(|m| m.column.as_deref() == Some("question"))
            .unwrap();
        assert!(
            q.fix.contains("[postgres.fill] \"sessions.question\""),
            "{}",
            q.fix
        );
        assert_eq!(q.error().code(), "schema_mismatch");
    }

    #[test]
    fn fill_constants_defaults_and_keys() {
        use SourceKind::*;
        let mut q = col("question", "text", true);
        let t = sessions(vec![col("id", "character varying", true), q.clone()]);
        let fill = [Fill {
            table: "sessions".into(),
            column: "question".into(),
            value: crate::source::fields::Raw::Text(String::new()),
        }];
        assert!(fit(&t, &[src("id", Text, 0)], &["id".into()], &fill).fits());
        q.default = Some("''::text".into());
        let t2 = sessions(vec![col("id", "character varying", true), q]);
        assert!(fit(&t2, &[src("id", Text, 0)], &["id".into()], &[]).fits());
        let bad_fill = [Fill {
            table: "sessions".into(),
            column: "n".into(),
            value: crate::source::fields::Raw::Text("x".into()),
        }];
        let t3 = sessions(vec![col("id", "text", true), col("n", "integer", true)]);
        let f = fit(&t3, &[src("id", Text, 0)], &["id".into()], &bad_fill);
        assert_eq!(f.misfits.len(), 1, "{f:?}");
        let mut nokey = sessions(vec![col("id", "text", true)]);
        nokey.primary_key.clear();
        let f = fit(&nokey, &[src("id", Text, 0)], &["id".into()], &[]);
        assert!(f.misfits[0].message.contains("no primary key"), "{f:?}");
        // Names match ignoring case when only one column matches.
        let t4 = sessions(vec![col("ID", "text", true)]);
        assert!(t4.column("id").is_some());
        // NULLs in the source for a NOT NULL column.
        let f = fit(&t, &[src("id", Text, 3)], &["id".into()], &fill);
        assert!(
            f.misfits.iter().any(|m| m.message.contains("NOT NULL")),
            "{f:?}"
        );
    }
}
