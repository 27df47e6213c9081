//! Values to and from PostgreSQL: the COPY text format ([`copy_text`]), binds
//! (`impl ToSql for Value`, which checks the parameter's type), and decoding a column of
//! a row by its [`PgType`] with typed getters ([`decode`]) — never a server-side cast to
//! text, whose output would depend on the session (`DateStyle`, `TimeZone`,
//! `extra_float_digits`, `bytea_output`).

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use super::{Json, PgType, Value, fmt_naive, numeric};

/// A column that could not be decoded as its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode column {column} as {ty}: {message}")]
pub struct DecodeError {
    pub column: String,
    pub ty: String,
    pub message: String,
}

/// Append `v` in COPY's text format (`\N` for NULL; backslash, newline, carriage
/// return and tab escaped). Timestamps are written without any zone for a naive column
/// and with `+00` for an aware one, so the session's `TimeZone` never shifts them.
pub fn copy_text(v: &Value, out: &mut String) {
    use std::fmt::Write;
    match v {
        Value::Null => out.push_str("\\N"),
        Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        Value::Numeric(n) => out.push_str(n),
        Value::Text(s) => escape(s, out),
        Value::Bytes(b) => {
            out.push_str("\\\\x");
            out.push_str(&hex::encode(b));
        }
        Value::Timestamp(t) => out.push_str(&fmt_naive(t)),
        Value::TimestampTz(t) => {
            out.push_str(&fmt_naive(&t.naive_utc()));
            out.push_str("+00");
        }
        Value::Date(d) => {
            let _ = write!(out, "{}", d.format("%Y-%m-%d"));
        }
        Value::Json(j) => escape(&j.text, out),
        Value::Uuid(u) => {
            let _ = write!(out, "{}", u.hyphenated());
        }
    }
}

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

type BoxError = Box<dyn StdError + Sync + Send>;

fn wrong(v: &Value, ty: &Type) -> BoxError {
    format!("a {} value cannot be bound to a {ty} parameter", kind(v)).into()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "NULL",
        Value::Bool(_) => "boolean",
        Value::Int(_) => "integer",
        Value::Float(_) => "float",
        Value::Numeric(_) => "numeric",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
        Value::Timestamp(_) => "timestamp",
        Value::TimestampTz(_) => "timestamptz",
        Value::Date(_) => "date",
        Value::Json(_) => "json",
        Value::Uuid(_) => "uuid",
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Bool(b) => b.to_sql_checked(ty, out),
            Value::Int(i) => match *ty {
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT8 => i.to_sql(ty, out),
                _ => Err(wrong(self, ty)),
            },
            Value::Float(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                Type::FLOAT8 => f.to_sql(ty, out),
                _ => Err(wrong(self, ty)),
            },
            Value::Numeric(n) if *ty == Type::NUMERIC => {
                let mut buf = Vec::new();
                numeric::encode_binary(n, &mut buf)?;
                out.put_slice(&buf);
                Ok(IsNull::No)
            }
            Value::Text(s) => s.as_str().to_sql_checked(ty, out),
            Value::Bytes(b) => b.as_slice().to_sql_checked(ty, out),
            Value::Timestamp(t) => t.to_sql_checked(ty, out),
            Value::TimestampTz(t) => t.to_sql_checked(ty, out),
            Value::Date(d) => d.to_sql_checked(ty, out),
            Value::Json(j) => match *ty {
                Type::JSONB => {
                    out.put_u8(1);
                    out.put_slice(j.text.as_bytes());
                    Ok(IsNull::No)
                }
                Type::JSON => {
                    out.put_slice(j.text.as_bytes());
                    Ok(IsNull::No)
                }
                _ => Err(wrong(self, ty)),
            },
            Value::Uuid(u) => u.to_sql_checked(ty, out),
            Value::Numeric(_) => Err(wrong(self, ty)),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::BOOL
                | Type::INT2
                | Type::INT4
                | Type::INT8
                | Type::FLOAT4
                | Type::FLOAT8
                | Type::NUMERIC
                | Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME
                | Type::UNKNOWN
                | Type::BYTEA
                | Type::TIMESTAMP
                | Type::TIMESTAMPTZ
                | Type::DATE
                | Type::JSON
                | Type::JSONB
                | Type::UUID
        )
    }

    to_sql_checked!();
}

/// A `numeric` in binary, as the text `numeric_out` prints.
struct NumericText(String);

impl<'a> FromSql<'a> for NumericText {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(NumericText(numeric::decode_binary(raw)?))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// `json` or `jsonb` as its text (jsonb's binary form is a version byte and the text).
struct JsonText(String);

impl<'a> FromSql<'a> for JsonText {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let body = if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                Some((v, _)) => return Err(format!("jsonb version {v} is not supported").into()),
                None => return Err("empty jsonb value".into()),
            }
        } else {
            raw
        };
        Ok(JsonText(std::str::from_utf8(body)?.to_owned()))
    }
    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSON | Type::JSONB)
    }
}

/// Decode column `idx` of `row`, whose type is `ty`, into a value.
pub fn decode(row: &postgres::Row, idx: usize, ty: &PgType) -> Result<Value, DecodeError> {
    let column = row
        .columns()
        .get(idx)
        .map(|c| c.name().to_owned())
        .unwrap_or_else(|| format!("#{idx}"));
    let fail = |message: String| DecodeError {
        column: column.clone(),
        ty: ty.sql(),
        message,
    };
    macro_rules! get {
        ($t:ty) => {
            row.try_get::<_, Option<$t>>(idx)
                .map_err(|e| fail(crate::error::error_chain(&e)))?
        };
    }
    let v = match ty {
        PgType::Text | PgType::Varchar(_) => get!(String).map(Value::Text),
        PgType::Char(_) => get!(String).map(|s| Value::Text(s.trim_end_matches(' ').to_owned())),
        PgType::SmallInt => get!(i16).map(|i| Value::Int(i.into())),
        PgType::Integer => get!(i32).map(|i| Value::Int(i.into())),
        PgType::BigInt => get!(i64).map(Value::Int),
        PgType::Real => get!(f32).map(|f| Value::Float(f.into())),
        PgType::Double => get!(f64).map(Value::Float),
        PgType::Numeric(_) => get!(NumericText).map(|n| Value::Numeric(n.0)),
        PgType::Boolean => get!(bool).map(Value::Bool),
        PgType::Timestamp(_) => get!(NaiveDateTime).map(Value::Timestamp),
        PgType::TimestampTz(_) => get!(DateTime<Utc>).map(Value::TimestampTz),
        PgType::Date => get!(NaiveDate).map(Value::Date),
        PgType::Json | PgType::Jsonb => match get!(JsonText) {
            None => None,
            Some(JsonText(text)) => {
                let canonical = crate::canon::canonicalize(text.as_bytes())
                    .map_err(|e| fail(format!("the server's JSON does not parse: {e}")))?;
                Some(Value::Json(Json { text, canonical }))
            }
        },
        PgType::Bytea => get!(Vec<u8>).map(Value::Bytes),
        PgType::Uuid => get!(uuid::Uuid).map(Value::Uuid),
    };
    Ok(v.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(v: &Value) -> String {
        let mut s = String::new();
        copy_text(v, &mut s);
        s
    }

    #[test]
    fn copy_text_escapes_and_keeps_timestamps_zone_free() {
        assert_eq!(copy(&Value::Null), "\\N");
        assert_eq!(
            copy(&Value::Text("a\\b\tc\nd\re".into())),
            "a\\\\b\\tc\\nd\\re"
        );
        assert_eq!(copy(&Value::Text("\\N".into())), "\\\\N");
        assert_eq!(copy(&Value::Bytes(vec![0, 255])), "\\\\x00ff");
        let t = NaiveDate::from_ymd_opt(2025, 12, 10)
            .unwrap()
            .and_hms_micro_opt(14, 8, 48, 347_371)
            .unwrap();
        assert_eq!(copy(&Value::Timestamp(t)), "2025-12-10 14:08:48.347371");
        assert_eq!(
            copy(&Value::TimestampTz(t.and_utc())),
            "2025-12-10 14:08:48.347371+00"
        );
        assert_eq!(copy(&Value::Bool(false)), "f");
        assert_eq!(copy(&Value::Float(1e-7)), "1e-7");
    }

    #[test]
    fn binds_refuse_the_wrong_type() {
        let mut out = BytesMut::new();
        assert!(
            Value::Bool(true)
                .to_sql_checked(&Type::INT4, &mut out)
                .is_err()
        );
        assert!(
            Value::Int(1 << 40)
                .to_sql_checked(&Type::INT4, &mut out)
                .is_err()
        );
        assert!(
            Value::Text("x".into())
                .to_sql_checked(&Type::UUID, &mut out)
                .is_err()
        );
        assert!(matches!(
            Value::Null.to_sql_checked(&Type::UUID, &mut out),
            Ok(IsNull::Yes)
        ));
        out.clear();
        Value::Int(7).to_sql_checked(&Type::INT2, &mut out).unwrap();
        assert_eq!(&out[..], &[0, 7]);
    }
}
