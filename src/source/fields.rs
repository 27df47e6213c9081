//! Loosely typed legacy fields, parsed strictly: timestamps in every accepted form,
//! `cost` as real, integer or text, ids, and text columns.
//!
//! The general parsers ([`parse_timestamp`], which keeps a naive timestamp naive,
//! [`number`], [`integer`], [`boolean`]) are what `crate::value::convert` builds on for
//! every column of an application's own schema (SPEC §9); [`timestamp`] and [`cost`] are
//! the default shape's fields (SPEC §1), unchanged.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// A raw value as the legacy store holds it (SQLite's storage classes; JSON maps onto them).
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    /// Bytes that are not UTF-8, or a SQLite BLOB.
    Blob(Vec<u8>),
}

impl Raw {
    pub fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Raw {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Raw::Null,
            ValueRef::Integer(i) => Raw::Integer(i),
            ValueRef::Real(f) => Raw::Real(f),
            ValueRef::Text(b) => match std::str::from_utf8(b) {
                Ok(s) => Raw::Text(s.to_owned()),
                Err(_) => Raw::Blob(b.to_vec()),
            },
            ValueRef::Blob(b) => Raw::Blob(b.to_vec()),
        }
    }

    /// The value's bytes, for quarantine and messages.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Raw::Null => b"NULL".to_vec(),
            Raw::Integer(i) => i.to_string().into_bytes(),
            Raw::Real(f) => f.to_string().into_bytes(),
            Raw::Text(s) => s.as_bytes().to_vec(),
            Raw::Blob(b) => b.clone(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Raw::Null => "NULL".into(),
            Raw::Integer(i) => format!("integer {i}"),
            Raw::Real(f) => format!("real {f}"),
            Raw::Text(s) => format!("text {:?}", truncate(s, 80)),
            Raw::Blob(b) => format!("{} bytes that are not UTF-8 text", b.len()),
        }
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Why a field is refused, with its SPEC §6 code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub code: &'static str,
    pub message: String,
}

fn err(code: &'static str, message: String) -> FieldError {
    FieldError { code, message }
}

/// A session id: non-empty UTF-8 text without NUL or control characters; integers are
/// taken as their decimal text.
pub fn id(v: &Raw) -> Result<String, FieldError> {
    let s = match v {
        Raw::Text(s) => s.clone(),
        Raw::Integer(i) => i.to_string(),
        Raw::Null => return Err(err("invalid_id", "the id is NULL".into())),
        Raw::Real(_) => return Err(err("invalid_id", format!("the id is a {}", v.describe()))),
        Raw::Blob(_) => return Err(err("invalid_id", format!("the id is {}", v.describe()))),
    };
    if s.trim().is_empty() {
        return Err(err("invalid_id", "the id is empty".into()));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(err(
            "invalid_id",
            format!("the id {:?} holds a control character", truncate(&s, 80)),
        ));
    }
    if s.len() > 4096 {
        return Err(err(
            "invalid_id",
            format!("the id is {} bytes long (at most 4096)", s.len()),
        ));
    }
    Ok(s)
}

/// Whether an id can be one path component: never written back as a path otherwise.
pub fn path_safe(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && !id.contains('/')
        && !id.contains('\\')
        && !id.contains('\0')
        && id.len() <= 255
}

/// A text column: NULL, text, or a number taken as its text.
pub fn text(name: &str, v: &Raw) -> Result<Option<String>, FieldError> {
    match v {
        Raw::Null => Ok(None),
        Raw::Text(s) if s.contains('\0') => Err(err(
            "invalid_text",
            format!("{name} holds a NUL character, which PostgreSQL text cannot store"),
        )),
        Raw::Text(s) => Ok(Some(s.clone())),
        Raw::Integer(i) => Ok(Some(i.to_string())),
        Raw::Real(f) => Ok(Some(f.to_string())),
        Raw::Blob(_) => Err(err("invalid_utf8", format!("{name} is {}", v.describe()))),
    }
}

/// `cost`: real, integer, or text holding a finite number; NULL stays NULL.
pub fn cost(v: &Raw) -> Result<Option<f64>, FieldError> {
    number("cost", "invalid_cost", v)
}

/// A number: real, integer, or text holding a finite number (surrounding spaces are
/// ignored); NULL stays NULL. Refusals carry `code` and name the column `name`.
pub fn number(name: &str, code: &'static str, v: &Raw) -> Result<Option<f64>, FieldError> {
    let f = match v {
        Raw::Null => return Ok(None),
        Raw::Integer(i) => *i as f64,
        Raw::Real(f) => *f,
        Raw::Text(s) if s.trim().is_empty() => {
            return Err(err(code, format!("{name} is an empty text")));
        }
        Raw::Text(s) => s.trim().parse::<f64>().map_err(|_| {
            err(
                code,
                format!("{name} {:?} is not a number", truncate(s, 80)),
            )
        })?,
        Raw::Blob(_) => return Err(err(code, format!("{name} is {}", v.describe()))),
    };
    if !f.is_finite() {
        return Err(err(
            code,
            format!("{name} {} is not a finite number", v.describe()),
        ));
    }
    Ok(Some(f))
}

/// A whole number: an integer, a real with no fraction (`3.0`), or text holding an
/// integer (`" 42 "`, `"-7"`); NULL stays NULL. Code `invalid_value`.
pub fn integer(name: &str, v: &Raw) -> Result<Option<i64>, FieldError> {
    let bad = |what: String| err("invalid_value", format!("{name} {what}"));
    match v {
        Raw::Null => Ok(None),
        Raw::Integer(i) => Ok(Some(*i)),
        // 2^63 is exactly representable; anything at or beyond it does not fit an i64.
        Raw::Real(f)
            if f.fract() == 0.0
                && *f >= -9_223_372_036_854_775_808.0
                && *f < 9_223_372_036_854_775_808.0 =>
        {
            Ok(Some(*f as i64))
        }
        Raw::Real(_) => Err(bad(format!("{} is not a whole number", v.describe()))),
        Raw::Text(s) => {
            let t = s.trim();
            let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(format!("{} is not a whole number", v.describe())));
            }
            t.parse::<i64>()
                .map(Some)
                .map_err(|_| bad(format!("{} does not fit a 64-bit integer", v.describe())))
        }
        Raw::Blob(_) => Err(bad(format!("is {}", v.describe()))),
    }
}

/// A boolean: the integers 0 and 1 (SQLite's own booleans, as SQLAlchemy writes them),
/// the reals 0.0 and 1.0, or the texts PostgreSQL's `boolean` accepts (`t`/`f`,
/// `true`/`false`, `y`/`n`, `yes`/`no`, `on`/`off`, `1`/`0`; any case, spaces ignored);
/// NULL stays NULL. Code `invalid_value`.
pub fn boolean(name: &str, v: &Raw) -> Result<Option<bool>, FieldError> {
    let bad = || {
        err(
            "invalid_value",
            format!(
                "{name} {} is not a boolean (expected 0/1 or true/false)",
                v.describe()
            ),
        )
    };
    match v {
        Raw::Null => Ok(None),
        Raw::Integer(0) => Ok(Some(false)),
        Raw::Integer(1) => Ok(Some(true)),
        Raw::Real(f) if *f == 0.0 => Ok(Some(false)),
        Raw::Real(f) if *f == 1.0 => Ok(Some(true)),
        Raw::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "y" | "yes" | "on" | "1" => Ok(Some(true)),
            "f" | "false" | "n" | "no" | "off" | "0" => Ok(Some(false)),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// A timestamp as the source wrote it: with a zone (or an epoch, which is an instant),
/// or naive. Rounded to the microsecond, as PostgreSQL rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// `YYYY-MM-DD HH:MM:SS[.ffffff]` without a zone: the application's wall clock
    /// (UTC by SPEC §1), kept as it is for a `timestamp without time zone` column.
    Naive(NaiveDateTime),
    /// RFC 3339 with `Z` or an offset, or epoch seconds / milliseconds: an instant.
    Aware(DateTime<Utc>),
}

impl Stamp {
    /// The instant, a naive value taken as UTC (SPEC §1).
    pub fn utc(self) -> DateTime<Utc> {
        match self {
            Stamp::Naive(n) => n.and_utc(),
            Stamp::Aware(t) => t,
        }
    }
    /// The wall-clock value, an aware one in UTC (SPEC §9: an aware timestamp going
    /// into `timestamp without time zone` is written in UTC).
    pub fn naive_utc(self) -> NaiveDateTime {
        match self {
            Stamp::Naive(n) => n,
            Stamp::Aware(t) => t.naive_utc(),
        }
    }
}

/// Epoch values at or above this are milliseconds (1e11 s is the year 5138).
const MILLIS_THRESHOLD: f64 = 1e11;

/// A timestamp: RFC 3339 (`Z` or an offset), `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC), or
/// epoch seconds / milliseconds as numbers. Rounded to the microsecond, as PostgreSQL does.
pub fn timestamp(name: &str, v: &Raw) -> Result<Option<DateTime<Utc>>, FieldError> {
    Ok(parse_timestamp(name, v)?.map(Stamp::utc))
}

/// A timestamp in any form [`timestamp`] accepts, naive text kept naive. Rounded to the
/// microsecond, as PostgreSQL does. Code `invalid_timestamp`.
pub fn parse_timestamp(name: &str, v: &Raw) -> Result<Option<Stamp>, FieldError> {
    let bad = || {
        err(
            "invalid_timestamp",
            format!("{name} {} is not a timestamp", v.describe()),
        )
    };
    let t = match v {
        Raw::Null => return Ok(None),
        Raw::Integer(i) => Stamp::Aware(epoch(*i as f64).ok_or_else(bad)?),
        Raw::Real(f) => Stamp::Aware(epoch(*f).ok_or_else(bad)?),
        Raw::Text(s) => parse_text_timestamp(s.trim()).ok_or_else(bad)?,
        Raw::Blob(_) => return Err(bad()),
    };
    Ok(Some(match t {
        Stamp::Naive(n) => Stamp::Naive(round_micros(n.and_utc()).naive_utc()),
        Stamp::Aware(a) => Stamp::Aware(round_micros(a)),
    }))
}

/// A calendar date: `YYYY-MM-DD` text, or a timestamp (any form) at midnight exactly;
/// NULL stays NULL. A time of day is refused rather than dropped. Code `invalid_value`.
pub fn date(name: &str, v: &Raw) -> Result<Option<NaiveDate>, FieldError> {
    if let Raw::Text(s) = v {
        if let Ok(d) = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
            return Ok(Some(d));
        }
    }
    let bad = |why: &str| {
        err(
            "invalid_value",
            format!("{name} {} is not a date{why}", v.describe()),
        )
    };
    match parse_timestamp(name, v).map_err(|_| bad(""))? {
        None => Ok(None),
        Some(s) => {
            let n = s.naive_utc();
            if n.time() == chrono::NaiveTime::MIN {
                Ok(Some(n.date()))
            } else {
                Err(bad(
                    " (it has a time of day, which a date column would drop)",
                ))
            }
        }
    }
}

fn epoch(x: f64) -> Option<DateTime<Utc>> {
    if !x.is_finite() {
        return None;
    }
    let secs = if x.abs() >= MILLIS_THRESHOLD {
        x / 1000.0
    } else {
        x
    };
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9).round() as u32;
    Utc.timestamp_opt(whole as i64, nanos.min(999_999_999))
        .single()
}

fn parse_text_timestamp(s: &str) -> Option<Stamp> {
    if s.is_empty() {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(Stamp::Aware(t.with_timezone(&Utc)));
    }
    // RFC 3339 with a space instead of the `T`.
    if s.len() > 10 && s.as_bytes()[10] == b' ' {
        let with_t = format!("{}T{}", &s[..10], &s[11..]);
        if let Ok(t) = DateTime::parse_from_rfc3339(&with_t) {
            return Some(Stamp::Aware(t.with_timezone(&Utc)));
        }
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return Some(Stamp::Naive(n));
        }
    }
    if s.bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        && s.bytes().any(|b| b.is_ascii_digit())
    {
        return epoch(s.parse::<f64>().ok()?).map(Stamp::Aware);
    }
    None
}

/// Round to the microsecond, ties to even (PostgreSQL rounds fractional seconds with rint).
pub fn round_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.timestamp_subsec_nanos() as u64;
    let (q, r) = (nanos / 1000, nanos % 1000);
    let micros = if r > 500 || (r == 500 && q % 2 == 1) {
        q + 1
    } else {
        q
    };
    let base = t.timestamp();
    if micros >= 1_000_000 {
        Utc.timestamp_opt(base + 1, 0).single().unwrap_or(t)
    } else {
        Utc.timestamp_opt(base, (micros * 1000) as u32)
            .single()
            .unwrap_or(t)
    }
}

/// A timestamp as PostgreSQL accepts it and as reports and hashes show it.
pub fn fmt_ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(v: Raw) -> String {
        fmt_ts(&timestamp("t", &v).unwrap().unwrap())
    }

    #[test]
    fn every_timestamp_form() {
        assert_eq!(
            ts(Raw::Text("2024-03-01T10:00:00Z".into())),
            "2024-03-01T10:00:00.000000Z"
        );
        assert_eq!(
            ts(Raw::Text("2024-03-01T12:00:00+02:00".into())),
            "2024-03-01T10:00:00.000000Z"
        );
        assert_eq!(
            ts(Raw::Text("2024-03-01 10:00:00".into())),
            "2024-03-01T10:00:00.000000Z"
        );
        assert_eq!(
            ts(Raw::Text("2024-03-01 10:00:00.123456".into())),
            "2024-03-01T10:00:00.123456Z"
        );
        assert_eq!(
            ts(Raw::Integer(1_709_287_200)),
            "2024-03-01T10:00:00.000000Z"
        );
        assert_eq!(
            ts(Raw::Integer(1_709_287_200_123)),
            "2024-03-01T10:00:00.123000Z"
        );
        assert_eq!(
            ts(Raw::Real(1_709_287_200.5)),
            "2024-03-01T10:00:00.500000Z"
        );
        assert_eq!(
            ts(Raw::Text("1709287200".into())),
            "2024-03-01T10:00:00.000000Z"
        );
        assert_eq!(
            ts(Raw::Text("2024-03-01 10:00:00.0000005".into())),
            "2024-03-01T10:00:00.000000Z"
        );
        assert_eq!(
            ts(Raw::Text("2024-03-01 10:00:00.0000015".into())),
            "2024-03-01T10:00:00.000002Z"
        );
        assert_eq!(timestamp("t", &Raw::Null).unwrap(), None);
        for bad in [
            "yesterday",
            "2024-13-01 10:00:00",
            "",
            "2024-03-01T25:00:00Z",
        ] {
            assert_eq!(
                timestamp("t", &Raw::Text(bad.into())).unwrap_err().code,
                "invalid_timestamp",
                "{bad}"
            );
        }
    }

    #[test]
    fn loosely_typed_cost() {
        assert_eq!(cost(&Raw::Text(" 0.0123 ".into())).unwrap(), Some(0.0123));
        assert_eq!(cost(&Raw::Integer(3)).unwrap(), Some(3.0));
        assert_eq!(cost(&Raw::Null).unwrap(), None);
        for bad in [
            Raw::Text("abc".into()),
            Raw::Text("NaN".into()),
            Raw::Text("".into()),
            Raw::Blob(vec![0xff]),
        ] {
            assert_eq!(cost(&bad).unwrap_err().code, "invalid_cost");
        }
    }

    #[test]
    fn ids() {
        assert_eq!(id(&Raw::Integer(42)).unwrap(), "42");
        assert_eq!(id(&Raw::Text("".into())).unwrap_err().code, "invalid_id");
        assert_eq!(id(&Raw::Null).unwrap_err().code, "invalid_id");
        assert_eq!(
            id(&Raw::Text("a\u{0}b".into())).unwrap_err().code,
            "invalid_id"
        );
        assert!(path_safe("abc-123 é"));
        assert!(!path_safe("../etc") && !path_safe("a/b") && !path_safe(".."));
    }
}
