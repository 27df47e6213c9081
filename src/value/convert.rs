//! Source → target: a loosely typed SQLite value converted to a target column's type,
//! with the strict parsers of `source::fields` (SPEC §1's loose input: text or integer
//! numbers, RFC 3339 / naive / epoch timestamps; 0/1 or 'true'/'false' booleans).
//! Nothing is silently altered: a value the column cannot hold exactly as PostgreSQL
//! would store it is refused, naming the column.

use super::numeric::Decimal;
use super::{FieldError, Json, PgType, Raw, Value};
use crate::source::fields;

fn refuse(code: &'static str, message: String) -> FieldError {
    FieldError { code, message }
}

/// Convert `raw`, the value of source column `column`, to a value of type `ty`. NULL is
/// NULL whatever the type (whether the column accepts it is the schema check's
/// business). Codes: `invalid_value`, `invalid_timestamp`, `invalid_text`,
/// `invalid_utf8`, `invalid_json`, `jsonb_incompatible_nul`.
pub fn convert(column: &str, raw: &Raw, ty: &PgType) -> Result<Value, FieldError> {
    if matches!(raw, Raw::Null) {
        return Ok(Value::Null);
    }
    let v = match ty {
        PgType::Text => Value::Text(text(column, raw)?),
        PgType::Varchar(max) => {
            let s = text(column, raw)?;
            check_len(column, &s, *max)?;
            Value::Text(s)
        }
        PgType::Char(n) => {
            // character(n): trailing spaces are not significant (bpchar semantics).
            let s = text(column, raw)?;
            let s = s.trim_end_matches(' ').to_owned();
            check_len(column, &s, Some(*n))?;
            Value::Text(s)
        }
        PgType::SmallInt => Value::Int(int_in(
            column,
            raw,
            i16::MIN.into(),
            i16::MAX.into(),
            "smallint",
        )?),
        PgType::Integer => Value::Int(int_in(
            column,
            raw,
            i32::MIN.into(),
            i32::MAX.into(),
            "integer",
        )?),
        PgType::BigInt => Value::Int(int_in(column, raw, i64::MIN, i64::MAX, "bigint")?),
        PgType::Double => Value::Float(float(column, raw)?),
        PgType::Real => {
            let f = float(column, raw)?;
            let narrow = f as f32;
            if !narrow.is_finite() {
                return Err(refuse(
                    "invalid_value",
                    format!("{column} {} is out of range for real", raw.describe()),
                ));
            }
            Value::Float(f64::from(narrow))
        }
        PgType::Numeric(typmod) => Value::Numeric(numeric(column, raw, *typmod)?),
        PgType::Boolean => Value::Bool(some(fields::boolean(column, raw)?)),
        PgType::Timestamp(p) => {
            let n = some(fields::parse_timestamp(column, raw)?).naive_utc();
            Value::Timestamp(round_precision(n.and_utc(), *p).naive_utc())
        }
        PgType::TimestampTz(p) => {
            let t = some(fields::parse_timestamp(column, raw)?).utc();
            Value::TimestampTz(round_precision(t, *p))
        }
        PgType::Date => Value::Date(some(fields::date(column, raw)?)),
        PgType::Json | PgType::Jsonb => Value::Json(json(column, raw, ty == &PgType::Json)?),
        PgType::Bytea => Value::Bytes(match raw {
            Raw::Blob(b) => b.clone(),
            Raw::Text(s) => s.as_bytes().to_vec(),
            _ => {
                return Err(refuse(
                    "invalid_value",
                    format!("{column} {} is not bytes", raw.describe()),
                ));
            }
        }),
        PgType::Uuid => Value::Uuid(match raw {
            Raw::Text(s) => uuid::Uuid::parse_str(s.trim()).map_err(|_| {
                refuse(
                    "invalid_value",
                    format!("{column} {} is not a UUID", raw.describe()),
                )
            })?,
            Raw::Blob(b) if b.len() == 16 => {
                uuid::Uuid::from_slice(b).expect("16 bytes make a UUID")
            }
            _ => {
                return Err(refuse(
                    "invalid_value",
                    format!("{column} {} is not a UUID", raw.describe()),
                ));
            }
        }),
    };
    Ok(v)
}

/// The parsers return `Option` for NULL, which `convert` has already handled.
fn some<T>(v: Option<T>) -> T {
    v.expect("NULL is handled before the parsers run")
}

fn text(column: &str, raw: &Raw) -> Result<String, FieldError> {
    Ok(some(fields::text(column, raw)?))
}

fn check_len(column: &str, s: &str, max: Option<u32>) -> Result<(), FieldError> {
    if let Some(max) = max {
        let n = s.chars().count();
        if n > max as usize {
            return Err(refuse(
                "invalid_value",
                format!("{column} is {n} characters long; the column holds at most {max}"),
            ));
        }
    }
    Ok(())
}

fn int_in(column: &str, raw: &Raw, min: i64, max: i64, ty: &str) -> Result<i64, FieldError> {
    let i = some(fields::integer(column, raw)?);
    if i < min || i > max {
        return Err(refuse(
            "invalid_value",
            format!("{column} {i} is out of range for {ty}"),
        ));
    }
    Ok(i)
}

/// A float: an integer must be exact in an f64 (|i| ≤ 2^53), never rounded silently.
fn float(column: &str, raw: &Raw) -> Result<f64, FieldError> {
    if let Raw::Integer(i) = raw {
        const EXACT: i64 = 1 << 53;
        if !(-EXACT..=EXACT).contains(i) {
            return Err(refuse(
                "invalid_value",
                format!("{column} {i} cannot be held exactly by a floating-point column"),
            ));
        }
    }
    Ok(some(fields::number(column, "invalid_value", raw)?))
}

/// Decimal text for a numeric column: a real as its shortest round-trip decimal, text as
/// written; rounded to the column's scale, checked against its precision.
fn numeric(column: &str, raw: &Raw, typmod: Option<(u32, i32)>) -> Result<String, FieldError> {
    let bad = || {
        refuse(
            "invalid_value",
            format!("{column} {} is not a number", raw.describe()),
        )
    };
    let d = match raw {
        Raw::Integer(i) => Decimal::parse(&i.to_string()).ok_or_else(bad)?,
        Raw::Real(f) if f.is_finite() => Decimal::parse(&f.to_string()).ok_or_else(bad)?,
        Raw::Text(s) => Decimal::parse(s).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let Some((precision, scale)) = typmod else {
        return Ok(d.to_text());
    };
    let r = d.round(scale);
    let room = i64::from(precision) - i64::from(scale);
    if r.integer_digits() as i64 > room {
        return Err(refuse(
            "invalid_value",
            format!(
                "{column} {} does not fit numeric({precision},{scale})",
                raw.describe()
            ),
        ));
    }
    Ok(r.to_text())
}

fn json(column: &str, raw: &Raw, keep_text: bool) -> Result<Json, FieldError> {
    let text = match raw {
        Raw::Text(s) => s.clone(),
        // A number is a JSON document too.
        Raw::Integer(i) => i.to_string(),
        Raw::Real(f) if f.is_finite() => format!("{f:?}"),
        _ => {
            return Err(refuse(
                "invalid_json",
                format!("{column} {} is not JSON text", raw.describe()),
            ));
        }
    };
    let canonical = crate::canon::canonicalize(text.as_bytes())
        .map_err(|e| refuse(e.code(), format!("{column} is not valid JSON: {e}")))?;
    Ok(Json {
        text: if keep_text { text } else { canonical.clone() },
        canonical,
    })
}

/// Round an instant to `precision` fractional digits as PostgreSQL's
/// `AdjustTimestampForTypmod` does (half away from zero, counted from its epoch
/// 2000-01-01); `None` (6 digits) leaves the microsecond value as it is.
fn round_precision(
    t: chrono::DateTime<chrono::Utc>,
    precision: Option<u8>,
) -> chrono::DateTime<chrono::Utc> {
    let Some(p) = precision.filter(|p| *p < 6) else {
        return t;
    };
    const PG_EPOCH_US: i64 = 946_684_800_000_000;
    let us = t.timestamp_micros() - PG_EPOCH_US;
    let scale = 10i64.pow(u32::from(6 - p));
    let half = scale / 2;
    let rounded = if us >= 0 {
        (us + half) / scale * scale
    } else {
        -(((-us) + half) / scale * scale)
    };
    chrono::DateTime::from_timestamp_micros(rounded + PG_EPOCH_US).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn ok(raw: Raw, ty: &str) -> Value {
        convert("c", &raw, &PgType::parse(ty).unwrap())
            .unwrap_or_else(|e| panic!("{raw:?} → {ty}: {e:?}"))
    }
    fn canon(raw: Raw, ty: &str) -> String {
        ok(raw, ty).canonical().unwrap().into_owned()
    }
    fn code(raw: Raw, ty: &str) -> &'static str {
        convert("c", &raw, &PgType::parse(ty).unwrap())
            .map(|v| panic!("{raw:?} → {ty} should be refused, got {v:?}"))
            .unwrap_err()
            .code
    }
    fn text(s: &str) -> Raw {
        Raw::Text(s.into())
    }

    #[test]
    fn null_is_null_for_every_type() {
        for ty in [
            "text",
            "integer",
            "boolean",
            "timestamp without time zone",
            "jsonb",
            "uuid",
            "numeric(3,1)",
        ] {
            assert_eq!(ok(Raw::Null, ty), Value::Null);
        }
    }

    #[test]
    fn naive_timestamps_stay_naive_and_aware_ones_go_to_utc() {
        let ts = "timestamp without time zone";
        let tz = "timestamp with time zone";
        // SQLAlchemy's text: as it is.
        assert_eq!(
            canon(text("2025-12-10 14:08:48.347371"), ts),
            "2025-12-10 14:08:48.347371"
        );
        // No zone added, no shift, whatever the machine's zone.
        assert_eq!(
            canon(text("2025-12-10T14:08:48"), ts),
            "2025-12-10 14:08:48.000000"
        );
        // Aware into a naive column: its UTC wall clock (SPEC §9).
        assert_eq!(
            canon(text("2025-12-10T16:08:48.5+02:00"), ts),
            "2025-12-10 14:08:48.500000"
        );
        assert_eq!(
            canon(text("2025-12-10T14:08:48Z"), ts),
            "2025-12-10 14:08:48.000000"
        );
        // Naive into an aware column: taken as UTC (SPEC §1).
        assert_eq!(
            canon(text("2025-12-10 14:08:48.347371"), tz),
            "2025-12-10T14:08:48.347371Z"
        );
        assert_eq!(
            canon(text("2025-12-10 14:08:48-05:00"), tz),
            "2025-12-10T19:08:48.000000Z"
        );
        // Epoch seconds and milliseconds, integer, real or text.
        assert_eq!(
            canon(Raw::Integer(1_765_375_728), ts),
            "2025-12-10 14:08:48.000000"
        );
        assert_eq!(
            canon(Raw::Integer(1_765_375_728_347), tz),
            "2025-12-10T14:08:48.347000Z"
        );
        assert_eq!(
            canon(Raw::Real(1_765_375_728.25), ts),
            "2025-12-10 14:08:48.250000"
        );
        assert_eq!(canon(text("1765375728"), tz), "2025-12-10T14:08:48.000000Z");
        assert_eq!(code(text("yesterday"), ts), "invalid_timestamp");
        assert_eq!(code(text("2024-02-30 10:00:00"), tz), "invalid_timestamp");
        assert_eq!(code(Raw::Blob(vec![1]), ts), "invalid_timestamp");
    }

    #[test]
    fn microseconds_round_as_postgres_rounds() {
        let ts = "timestamp without time zone";
        // rint: ties to even at the microsecond.
        assert_eq!(
            canon(text("2024-03-01 10:00:00.0000005"), ts),
            "2024-03-01 10:00:00.000000"
        );
        assert_eq!(
            canon(text("2024-03-01 10:00:00.0000015"), ts),
            "2024-03-01 10:00:00.000002"
        );
        assert_eq!(
            canon(text("2024-03-01 10:00:00.9999996"), ts),
            "2024-03-01 10:00:01.000000"
        );
        // A column's precision: half away from zero, as AdjustTimestampForTypmod.
        assert_eq!(
            canon(
                text("2024-03-01 10:00:00.1235"),
                "timestamp(3) without time zone"
            ),
            "2024-03-01 10:00:00.124000"
        );
        assert_eq!(
            canon(
                text("2024-03-01 10:00:00.1234"),
                "timestamp(3) without time zone"
            ),
            "2024-03-01 10:00:00.123000"
        );
        assert_eq!(
            canon(text("2024-03-01 10:00:00.5"), "timestamp(0) with time zone"),
            "2024-03-01T10:00:01.000000Z"
        );
        // Before PostgreSQL's epoch the rounding is away from zero too.
        assert_eq!(
            canon(
                text("1999-12-31 23:59:59.5"),
                "timestamp(0) without time zone"
            ),
            "1999-12-31 23:59:59.000000"
        );
        assert_eq!(
            canon(
                text("1999-12-31 23:59:58.5"),
                "timestamp(0) without time zone"
            ),
            "1999-12-31 23:59:58.000000"
        );
    }

    #[test]
    fn booleans() {
        for (raw, b) in [
            (Raw::Integer(0), false),
            (Raw::Integer(1), true),
            (Raw::Real(1.0), true),
            (text("true"), true),
            (text(" FALSE "), false),
            (text("t"), true),
            (text("0"), false),
            (text("yes"), true),
            (text("off"), false),
        ] {
            assert_eq!(ok(raw.clone(), "boolean"), Value::Bool(b), "{raw:?}");
        }
        assert_eq!(canon(Raw::Integer(1), "boolean"), "t");
        for bad in [
            Raw::Integer(2),
            Raw::Integer(-1),
            text("maybe"),
            text(""),
            Raw::Real(0.5),
        ] {
            assert_eq!(code(bad, "boolean"), "invalid_value");
        }
    }

    #[test]
    fn floats() {
        assert_eq!(canon(Raw::Real(0.1), "double precision"), "0.1");
        assert_eq!(canon(Raw::Integer(3), "double precision"), "3.0");
        assert_eq!(canon(text(" 0.0123 "), "double precision"), "0.0123");
        assert_eq!(canon(Raw::Real(1e-7), "double precision"), "1e-7");
        assert_eq!(canon(Raw::Real(-0.0), "double precision"), "-0.0");
        // real: the value PostgreSQL stores, widened back.
        assert_eq!(
            canon(Raw::Real(0.1), "real"),
            format!("{:?}", 0.1f32 as f64)
        );
        assert_eq!(code(Raw::Real(1e300), "real"), "invalid_value");
        assert_eq!(code(text("NaN"), "double precision"), "invalid_value");
        assert_eq!(code(text("abc"), "double precision"), "invalid_value");
        assert_eq!(
            code(Raw::Integer((1 << 53) + 1), "double precision"),
            "invalid_value"
        );
        assert_eq!(
            canon(Raw::Integer(1 << 53), "double precision"),
            "9007199254740992.0"
        );
    }

    #[test]
    fn integers() {
        assert_eq!(ok(Raw::Integer(7), "bigint"), Value::Int(7));
        assert_eq!(ok(text(" -42 "), "integer"), Value::Int(-42));
        assert_eq!(ok(Raw::Real(3.0), "smallint"), Value::Int(3));
        assert_eq!(code(Raw::Real(3.5), "integer"), "invalid_value");
        assert_eq!(code(text("3.0"), "integer"), "invalid_value");
        assert_eq!(code(Raw::Integer(40_000), "smallint"), "invalid_value");
        assert_eq!(code(Raw::Integer(1 << 31), "integer"), "invalid_value");
        assert_eq!(ok(Raw::Integer(i64::MIN), "bigint"), Value::Int(i64::MIN));
        assert_eq!(
            code(text("99999999999999999999"), "bigint"),
            "invalid_value"
        );
        assert_eq!(code(Raw::Real(9.3e18), "bigint"), "invalid_value");
    }

    #[test]
    fn numerics() {
        assert_eq!(ok(Raw::Real(0.1), "numeric"), Value::Numeric("0.1".into()));
        assert_eq!(
            ok(text("1.005"), "numeric(10,2)"),
            Value::Numeric("1.01".into())
        );
        assert_eq!(
            ok(Raw::Integer(3), "numeric(5,2)"),
            Value::Numeric("3.00".into())
        );
        assert_eq!(canon(Raw::Integer(3), "numeric(5,2)"), "3");
        assert_eq!(code(Raw::Integer(1000), "numeric(5,2)"), "invalid_value");
        assert_eq!(code(text("1e"), "numeric"), "invalid_value");
        assert_eq!(code(Raw::Real(f64::INFINITY), "numeric"), "invalid_value");
    }

    #[test]
    fn texts() {
        assert_eq!(ok(Raw::Integer(42), "text"), Value::Text("42".into()));
        assert_eq!(
            ok(text("héllo"), "character varying(5)"),
            Value::Text("héllo".into())
        );
        assert_eq!(
            code(text("héllo!"), "character varying(5)"),
            "invalid_value"
        );
        assert_eq!(ok(text("ab "), "character(3)"), Value::Text("ab".into()));
        assert_eq!(code(text("a\0b"), "text"), "invalid_text");
        assert_eq!(code(Raw::Blob(vec![0xff]), "text"), "invalid_utf8");
    }

    #[test]
    fn json_and_jsonb() {
        let v = ok(text("{\"b\": 1,  \"a\": [1.50, true]}"), "jsonb");
        let Value::Json(j) = &v else { panic!() };
        assert_eq!(j.canonical, "{\"a\": [1.50, true], \"b\": 1}");
        assert_eq!(j.text, j.canonical);
        // json keeps the application's own text; it hashes as jsonb would.
        let v = ok(text("{\"b\": 1,  \"a\": 2}"), "json");
        let Value::Json(j) = &v else { panic!() };
        assert_eq!(j.text, "{\"b\": 1,  \"a\": 2}");
        assert_eq!(j.canonical, "{\"a\": 2, \"b\": 1}");
        assert_eq!(canon(Raw::Integer(5), "jsonb"), "5");
        assert_eq!(
            code(text("{\"a\": \"\\u0000\"}"), "jsonb"),
            "jsonb_incompatible_nul"
        );
        assert_eq!(code(text("{nope"), "jsonb"), "invalid_json");
    }

    #[test]
    fn dates_uuids_bytes() {
        let d = NaiveDate::from_ymd_opt(2024, 3, 1).unwrap();
        assert_eq!(ok(text("2024-03-01"), "date"), Value::Date(d));
        assert_eq!(ok(text("2024-03-01 00:00:00"), "date"), Value::Date(d));
        assert_eq!(code(text("2024-03-01 10:00:00"), "date"), "invalid_value");
        assert_eq!(
            canon(text("{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}"), "uuid"),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(code(text("not-a-uuid"), "uuid"), "invalid_value");
        assert_eq!(ok(Raw::Blob(vec![1, 2]), "bytea"), Value::Bytes(vec![1, 2]));
        assert_eq!(ok(text("hi"), "bytea"), Value::Bytes(b"hi".to_vec()));
        assert_eq!(code(Raw::Integer(1), "bytea"), "invalid_value");
    }
}
