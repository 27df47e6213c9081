//! The typed value model of application schemas (SPEC §9), shared by the source, the
//! target, verify, rollback and the runtime store.
//!
//! A column of the target has a [`PgType`] (parsed from what `format_type` prints); a
//! SQLite value of the source is a loosely typed [`Raw`]; [`convert`] turns one into a
//! [`Value`] of that type, or refuses it with a [`FieldError`] (an invalid record of its
//! session, quarantinable: never silently altered). [`Value::canonical`] is the ONE text
//! form hashed on both sides: a value read back from PostgreSQL and decoded by its type
//! ([`pg::decode`], typed getters, never a server-side cast to text) is equal to the
//! source value converted to that type.
//!
//! The APIs the load, verify, rollback and the store will use:
//!
//! - `PgType::parse(format_type)` — the type of a target column; `PgType::sql()` — the
//!   type to create a column with.
//! - `convert(column, &raw, &ty) -> Result<Value, FieldError>` — source → target.
//! - `Value::canonical()` — for content hashes ([`hash_row`], `v2:`).
//! - `pg::copy_text(&value, &mut out)` — COPY text format; `Value: ToSql` — binds.
//! - `pg::decode(&row, idx, &ty) -> Result<Value, DecodeError>` — target → value.
//! - `sqlite::Form::detect(values)` + `Value::to_sqlite(&form)` — back to SQLite for
//!   rollback (booleans 0/1, naive timestamps in the column's own text format).
//! - `compat::compat(source_kind, &ty)` — the static compatibility table (preflight,
//!   `init`, the planning pass).
//!
//! Canonical forms (a NULL has none: [`Value::canonical`] is `None`):
//!
//! | value        | canonical                                   |
//! |--------------|---------------------------------------------|
//! | boolean      | `t` / `f`                                   |
//! | integer      | decimal digits                              |
//! | float        | Rust's `{:?}` of the f64 (`0.1`, `1e-7`); a `real` column's value is first rounded to f32 |
//! | numeric      | the decimal without trailing fractional zeros (`1.50` → `1.5`, `-0` → `0`) |
//! | text         | the text (a `character(n)`'s trailing spaces dropped) |
//! | bytes        | `\x` and lowercase hex                      |
//! | timestamp    | `YYYY-MM-DD HH:MM:SS.ffffff` (always 6 digits, no zone) |
//! | timestamptz  | `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, as the default shape's `v1:` hash) |
//! | date         | `YYYY-MM-DD`                                |
//! | json, jsonb  | the text `jsonb::text` prints (`crate::canon`) |
//! | uuid         | lowercase, hyphenated                       |

pub mod compat;
mod convert;
pub mod numeric;
pub mod pg;
pub mod sqlite;

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};

pub use crate::source::fields::{FieldError, Raw};
pub use convert::convert;

/// The type of a target column, as `format_type(atttypid, atttypmod)` prints it, parsed.
/// Every type sessiondb can write and read back exactly; anything else is refused
/// ([`PgType::parse`]) as `schema_mismatch`, naming the type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PgType {
    Text,
    /// `character varying`, with its maximum length in characters when it has one.
    Varchar(Option<u32>),
    /// `character(n)` (blank-padded; `character` alone is `character(1)`).
    Char(u32),
    SmallInt,
    Integer,
    BigInt,
    /// `real`: single precision.
    Real,
    Double,
    /// `numeric`, with `(precision, scale)` when constrained.
    Numeric(Option<(u32, i32)>),
    Boolean,
    /// `timestamp without time zone`, with its fractional-second precision (0–6) if set.
    Timestamp(Option<u8>),
    /// `timestamp with time zone`, with its fractional-second precision (0–6) if set.
    TimestampTz(Option<u8>),
    Date,
    Json,
    Jsonb,
    Bytea,
    Uuid,
}

/// A target column type sessiondb cannot hold values of (an array, `interval`, an
/// enum, a type of an extension...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("type {format_type:?} is not supported: {why}")]
pub struct UnsupportedType {
    pub format_type: String,
    pub why: String,
}

impl PgType {
    /// Parse what `format_type` prints: `text`, `character varying(255)`,
    /// `timestamp(3) without time zone`, `numeric(10,2)`, `jsonb`...
    pub fn parse(format_type: &str) -> Result<PgType, UnsupportedType> {
        let unsupported = |why: &str| UnsupportedType {
            format_type: format_type.to_owned(),
            why: why.to_owned(),
        };
        let t = format_type.trim();
        if t.ends_with("[]") {
            return Err(unsupported("arrays are not supported"));
        }
        // `name(args) rest`: the arguments, and the name with the rest.
        let (base, args, rest) = match (t.find('('), t.find(')')) {
            (Some(o), Some(c)) if o < c => (t[..o].trim(), Some(&t[o + 1..c]), t[c + 1..].trim()),
            _ => (t, None, ""),
        };
        let nums = |a: Option<&str>| -> Result<Vec<i64>, UnsupportedType> {
            match a {
                None => Ok(Vec::new()),
                Some(a) => a
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<i64>()
                            .map_err(|_| unsupported("its modifier is not a number"))
                    })
                    .collect(),
            }
        };
        let n = nums(args)?;
        let one = |n: &[i64]| -> Result<Option<u32>, UnsupportedType> {
            match n {
                [] => Ok(None),
                [x] if *x > 0 && *x <= i64::from(u32::MAX) => Ok(Some(*x as u32)),
                _ => Err(unsupported("unexpected modifier")),
            }
        };
        let precision = |n: &[i64]| -> Result<Option<u8>, UnsupportedType> {
            match n {
                [] => Ok(None),
                [p] if (0..=6).contains(p) => Ok(Some(*p as u8)),
                _ => Err(unsupported("unexpected precision")),
            }
        };
        let name = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base} {rest}")
        };
        Ok(match name.as_str() {
            "text" => PgType::Text,
            "character varying" => PgType::Varchar(one(&n)?),
            "character" => PgType::Char(one(&n)?.unwrap_or(1)),
            "smallint" => PgType::SmallInt,
            "integer" => PgType::Integer,
            "bigint" => PgType::BigInt,
            "real" => PgType::Real,
            "double precision" => PgType::Double,
            "numeric" => PgType::Numeric(match n.as_slice() {
                [] => None,
                [p] if (1..=1000).contains(p) => Some((*p as u32, 0)),
                [p, s] if (1..=1000).contains(p) && (-1000..=1000).contains(s) => {
                    Some((*p as u32, *s as i32))
                }
                _ => return Err(unsupported("unexpected numeric modifier")),
            }),
            "boolean" => PgType::Boolean,
            "timestamp without time zone" => PgType::Timestamp(precision(&n)?),
            "timestamp with time zone" => PgType::TimestampTz(precision(&n)?),
            "date" => PgType::Date,
            "json" => PgType::Json,
            "jsonb" => PgType::Jsonb,
            "bytea" => PgType::Bytea,
            "uuid" => PgType::Uuid,
            _ => {
                return Err(unsupported(
                    "sessiondb writes text, character varying, character, smallint, integer, bigint, real, double precision, numeric, boolean, timestamp, timestamptz, date, json, jsonb, bytea and uuid columns",
                ));
            }
        })
    }

    /// The type as DDL writes it (and as `format_type` prints it back).
    pub fn sql(&self) -> String {
        match self {
            PgType::Text => "text".into(),
            PgType::Varchar(None) => "character varying".into(),
            PgType::Varchar(Some(n)) => format!("character varying({n})"),
            PgType::Char(n) => format!("character({n})"),
            PgType::SmallInt => "smallint".into(),
            PgType::Integer => "integer".into(),
            PgType::BigInt => "bigint".into(),
            PgType::Real => "real".into(),
            PgType::Double => "double precision".into(),
            PgType::Numeric(None) => "numeric".into(),
            PgType::Numeric(Some((p, s))) => format!("numeric({p},{s})"),
            PgType::Boolean => "boolean".into(),
            PgType::Timestamp(None) => "timestamp without time zone".into(),
            PgType::Timestamp(Some(p)) => format!("timestamp({p}) without time zone"),
            PgType::TimestampTz(None) => "timestamp with time zone".into(),
            PgType::TimestampTz(Some(p)) => format!("timestamp({p}) with time zone"),
            PgType::Date => "date".into(),
            PgType::Json => "json".into(),
            PgType::Jsonb => "jsonb".into(),
            PgType::Bytea => "bytea".into(),
            PgType::Uuid => "uuid".into(),
        }
    }

    /// Whether the type holds text (`text`, `character varying`, `character`).
    pub fn is_text(&self) -> bool {
        matches!(self, PgType::Text | PgType::Varchar(_) | PgType::Char(_))
    }
}

impl serde::Serialize for PgType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.sql())
    }
}

impl fmt::Display for PgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql())
    }
}

/// A JSON value: the text written to the column, and its canonical (`jsonb::text`) form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json {
    /// What is written: the source's own text for a `json` column (which keeps it byte
    /// for byte), the canonical text for `jsonb`.
    pub text: String,
    pub canonical: String,
}

/// A value of a target column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// `double precision`; a `real` column's value, rounded to f32 and widened back.
    Float(f64),
    /// A `numeric`, as decimal text (already rounded to the column's scale).
    Numeric(String),
    Text(String),
    Bytes(Vec<u8>),
    Timestamp(NaiveDateTime),
    TimestampTz(DateTime<Utc>),
    Date(NaiveDate),
    Json(Json),
    Uuid(uuid::Uuid),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The one text form hashed on both sides (see the module's table); `None` for NULL.
    pub fn canonical(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(b) => Cow::Borrowed(if *b { "t" } else { "f" }),
            Value::Int(i) => Cow::Owned(i.to_string()),
            Value::Float(f) => Cow::Owned(format!("{f:?}")),
            Value::Numeric(n) => Cow::Owned(numeric::normalize(n)),
            Value::Text(s) => Cow::Borrowed(s.as_str()),
            Value::Bytes(b) => Cow::Owned(format!("\\x{}", hex::encode(b))),
            Value::Timestamp(t) => Cow::Owned(fmt_naive(t)),
            Value::TimestampTz(t) => Cow::Owned(crate::source::fields::fmt_ts(t)),
            Value::Date(d) => Cow::Owned(d.format("%Y-%m-%d").to_string()),
            Value::Json(j) => Cow::Borrowed(j.canonical.as_str()),
            Value::Uuid(u) => Cow::Owned(u.hyphenated().to_string()),
        })
    }
}

/// A naive timestamp as its canonical text: `YYYY-MM-DD HH:MM:SS.ffffff`.
pub fn fmt_naive(t: &NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// The content hash of one row of a mapped store (`v2:`): the row's key, then every
/// column's name and canonical value in the order given (the caller fixes it: the
/// target table's column order), then the canonical state when the row is a session.
/// The target side computes the same from the decoded row. NULL is distinct from every
/// text, and no name or value can run into the next (each is length-prefixed).
pub fn hash_row<'a>(
    key: &str,
    columns: impl IntoIterator<Item = (&'a str, &'a Value)>,
    canonical_state: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    h.update(b"v2\0");
    let mut put = |v: Option<&[u8]>| match v {
        None => h.update(b"N"),
        Some(b) => {
            h.update(b"S");
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        }
    };
    put(Some(key.as_bytes()));
    for (name, value) in columns {
        put(Some(name.as_bytes()));
        put(value.canonical().as_deref().map(str::as_bytes));
    }
    put(Some(b"state"));
    put(canonical_state.map(str::as_bytes));
    format!("v2:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_format_type_prints() {
        let cases = [
            ("text", PgType::Text),
            ("character varying", PgType::Varchar(None)),
            ("character varying(255)", PgType::Varchar(Some(255))),
            ("character(3)", PgType::Char(3)),
            ("character", PgType::Char(1)),
            ("smallint", PgType::SmallInt),
            ("integer", PgType::Integer),
            ("bigint", PgType::BigInt),
            ("real", PgType::Real),
            ("double precision", PgType::Double),
            ("numeric", PgType::Numeric(None)),
            ("numeric(10,2)", PgType::Numeric(Some((10, 2)))),
            ("numeric(5)", PgType::Numeric(Some((5, 0)))),
            ("boolean", PgType::Boolean),
            ("timestamp without time zone", PgType::Timestamp(None)),
            ("timestamp(3) without time zone", PgType::Timestamp(Some(3))),
            ("timestamp with time zone", PgType::TimestampTz(None)),
            ("timestamp(0) with time zone", PgType::TimestampTz(Some(0))),
            ("date", PgType::Date),
            ("json", PgType::Json),
            ("jsonb", PgType::Jsonb),
            ("bytea", PgType::Bytea),
            ("uuid", PgType::Uuid),
        ];
        for (text, ty) in cases {
            assert_eq!(PgType::parse(text).unwrap(), ty, "{text}");
            assert_eq!(PgType::parse(&ty.sql()).unwrap(), ty, "{text} round trip");
        }
        for bad in [
            "integer[]",
            "interval",
            "time without time zone",
            "inet",
            "session_status",
            "\"char\"",
            "public.citext",
            "character varying(0)",
        ] {
            let e = PgType::parse(bad).unwrap_err();
            assert_eq!(e.format_type, bad);
        }
    }

    #[test]
    fn canonical_forms() {
        let ts = NaiveDate::from_ymd_opt(2025, 12, 10)
            .unwrap()
            .and_hms_micro_opt(14, 8, 48, 347_371)
            .unwrap();
        let c = |v: Value| v.canonical().map(|c| c.into_owned());
        assert_eq!(c(Value::Null), None);
        assert_eq!(c(Value::Bool(true)).unwrap(), "t");
        assert_eq!(c(Value::Bool(false)).unwrap(), "f");
        assert_eq!(c(Value::Int(-42)).unwrap(), "-42");
        assert_eq!(c(Value::Float(0.1)).unwrap(), "0.1");
        assert_eq!(c(Value::Float(1e-7)).unwrap(), "1e-7");
        assert_eq!(c(Value::Float(3.0)).unwrap(), "3.0");
        assert_eq!(c(Value::Numeric("1.50".into())).unwrap(), "1.5");
        assert_eq!(c(Value::Bytes(vec![0, 0xab])).unwrap(), "\\x00ab");
        assert_eq!(
            c(Value::Timestamp(ts)).unwrap(),
            "2025-12-10 14:08:48.347371"
        );
        assert_eq!(
            c(Value::Timestamp(ts.date().and_hms_opt(0, 0, 0).unwrap())).unwrap(),
            "2025-12-10 00:00:00.000000"
        );
        assert_eq!(
            c(Value::TimestampTz(ts.and_utc())).unwrap(),
            "2025-12-10T14:08:48.347371Z"
        );
        assert_eq!(c(Value::Date(ts.date())).unwrap(), "2025-12-10");
        let u = uuid::Uuid::parse_str("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11").unwrap();
        assert_eq!(
            c(Value::Uuid(u)).unwrap(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
    }

    #[test]
    fn row_hash_separates_names_values_and_null() {
        let a = Value::Text("ab".into());
        let b = Value::Text("".into());
        let n = Value::Null;
        let h1 = hash_row("k", [("x", &a), ("y", &b)], None);
        let h2 = hash_row("k", [("x", &b), ("y", &a)], None);
        let h3 = hash_row("k", [("x", &a), ("y", &n)], None);
        let h4 = hash_row("k", [("x", &a), ("y", &b)], Some("{}"));
        let h5 = hash_row("k", [("xa", &b), ("y", &b)], None);
        assert!(h1.starts_with("v2:"));
        let all = [&h1, &h2, &h3, &h4, &h5];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(h1, hash_row("k", [("x", &a), ("y", &b)], None));
    }
}
