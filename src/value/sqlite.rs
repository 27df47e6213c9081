//! Target → SQLite, for rollback: a value written back in the form the legacy column
//! already holds its values in, detected from them ([`Form::detect`]): booleans as 0/1
//! (or the column's own words), timestamps in the column's own text format (SQLAlchemy's
//! `YYYY-MM-DD HH:MM:SS.ffffff`, Python's `isoformat()`, RFC 3339 with `Z`...) or as
//! epoch numbers. A naive value stays naive; an aware one is written in UTC.

use std::collections::BTreeMap;

use chrono::{NaiveDateTime, Timelike};
use rusqlite::types::Value as Sql;

use super::{Raw, Value};

/// How a timestamp is written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeForm {
    /// `YYYY-MM-DD<sep>HH:MM:SS[.fff]<zone>`.
    Text {
        /// `' '` or `'T'`.
        sep: char,
        /// The fewest fractional digits written (more when the value needs them, up to 6).
        digits: u8,
        /// No fraction at all when the value has none (Python's `isoformat()`).
        optional: bool,
        zone: Zone,
    },
    /// Whole seconds since the epoch, as an integer.
    EpochSeconds,
    /// Milliseconds since the epoch, as an integer.
    EpochMillis,
    /// Seconds since the epoch, as a real.
    EpochReal,
}

/// The zone suffix of a text timestamp (always for UTC: values are written in UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Zone {
    /// Naive: no suffix.
    None,
    /// `Z`.
    Z,
    /// `+00:00`.
    Colon,
    /// `+0000`.
    Compact,
    /// `+00`.
    Hours,
}

/// How booleans are written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoolForm {
    /// The integers 0 and 1 (SQLAlchemy's, and SQLite's own).
    Int,
    /// The column's own words: `true`/`false`, `t`/`f`, `TRUE`/`FALSE`...
    Text {
        true_word: &'static str,
        false_word: &'static str,
    },
}

/// How one legacy column holds its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Form {
    pub time: TimeForm,
    pub boolean: BoolForm,
}

/// SQLAlchemy's `DateTime` on SQLite: `2025-12-10 14:08:48.347371`.
pub const SQLALCHEMY: TimeForm = TimeForm::Text {
    sep: ' ',
    digits: 6,
    optional: false,
    zone: Zone::None,
};

impl Default for Form {
    /// For a column with no values to learn from: SQLAlchemy's text and 0/1.
    fn default() -> Form {
        Form {
            time: SQLALCHEMY,
            boolean: BoolForm::Int,
        }
    }
}

impl Form {
    /// The form most of the column's values are in (ties: the first seen); the
    /// default for whatever kind has no value to learn from.
    pub fn detect<'a>(values: impl IntoIterator<Item = &'a Raw>) -> Form {
        let mut times: BTreeMap<TimeForm, (u64, usize)> = BTreeMap::new();
        let mut fractions: BTreeMap<(char, Zone), (u8, bool, bool)> = BTreeMap::new();
        let mut bools: Vec<(BoolForm, u64)> = Vec::new();
        for (i, v) in values.into_iter().enumerate() {
            if let Some(t) = time_form(v) {
                let e = times.entry(strip_fraction(t)).or_insert((0, i));
                e.0 += 1;
                if let TimeForm::Text {
                    sep, digits, zone, ..
                } = t
                {
                    // Per separator and zone: the most digits seen, and whether some
                    // values had a fraction and some none.
                    let f = fractions.entry((sep, zone)).or_insert((0, false, false));
                    f.0 = f.0.max(digits);
                    if digits == 0 {
                        f.1 = true;
                    } else {
                        f.2 = true;
                    }
                }
            }
            // 0/1 integers count for the integer form: the majority decides, so one
            // stray word does not turn a column of 0/1 into text.
            let b = match v {
                Raw::Integer(0 | 1) => Some(BoolForm::Int),
                _ => bool_form(v),
            };
            if let Some(b) = b {
                match bools.iter_mut().find(|(f, _)| *f == b) {
                    Some((_, n)) => *n += 1,
                    None => bools.push((b, 1)),
                }
            }
        }
        let time = times
            .iter()
            .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
            .map(|(t, _)| match *t {
                TimeForm::Text { sep, zone, .. } => {
                    let (digits, some_none, some_frac) = fractions[&(sep, zone)];
                    TimeForm::Text {
                        sep,
                        digits,
                        optional: some_none && some_frac,
                        zone,
                    }
                }
                other => other,
            })
            .unwrap_or(SQLALCHEMY);
        // The most common form; a tie goes to the first seen.
        let boolean = bools
            .iter()
            .rev()
            .max_by_key(|(_, n)| *n)
            .map(|(b, _)| *b)
            .unwrap_or(BoolForm::Int);
        Form { time, boolean }
    }
}

/// A text timestamp's form, fraction digits kept (0 when it has none).
fn time_form(v: &Raw) -> Option<TimeForm> {
    match v {
        Raw::Integer(i) if i.unsigned_abs() >= 100_000_000_000 => Some(TimeForm::EpochMillis),
        Raw::Integer(i) if i.unsigned_abs() >= 100_000_000 => Some(TimeForm::EpochSeconds),
        Raw::Real(f) if f.abs() >= 1e8 && f.abs() < 1e11 => Some(TimeForm::EpochReal),
        Raw::Text(s) => text_time_form(s.trim()),
        _ => None,
    }
}

fn text_time_form(s: &str) -> Option<TimeForm> {
    let b = s.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let shape = b.len() >= 19
        && (0..4).all(digit)
        && b[4] == b'-'
        && digit(5)
        && digit(6)
        && b[7] == b'-'
        && digit(8)
        && digit(9)
        && (b[10] == b' ' || b[10] == b'T')
        && digit(11)
        && digit(12)
        && b[13] == b':'
        && digit(14)
        && digit(15)
        && b[16] == b':'
        && digit(17)
        && digit(18);
    if !shape {
        return None;
    }
    let mut i = 19;
    let mut digits = 0u8;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while digit(i) {
            digits = digits.saturating_add(1);
            i += 1;
        }
    }
    let zone = match &s[i..] {
        "" => Zone::None,
        "Z" | "z" => Zone::Z,
        z if z.len() == 6 && z.as_bytes()[3] == b':' => Zone::Colon,
        z if z.len() == 5 => Zone::Compact,
        z if z.len() == 3 => Zone::Hours,
        _ => return None,
    };
    Some(TimeForm::Text {
        sep: b[10] as char,
        digits: digits.min(6),
        optional: false,
        zone,
    })
}

fn strip_fraction(t: TimeForm) -> TimeForm {
    match t {
        TimeForm::Text { sep, zone, .. } => TimeForm::Text {
            sep,
            digits: 0,
            optional: false,
            zone,
        },
        other => other,
    }
}

fn bool_form(v: &Raw) -> Option<BoolForm> {
    let Raw::Text(s) = v else { return None };
    let words: [(&'static str, &'static str); 6] = [
        ("true", "false"),
        ("TRUE", "FALSE"),
        ("True", "False"),
        ("t", "f"),
        ("yes", "no"),
        ("Y", "N"),
    ];
    words
        .iter()
        .find(|(t, f)| s == t || s == f)
        .map(|(t, f)| BoolForm::Text {
            true_word: t,
            false_word: f,
        })
}

impl TimeForm {
    /// Write a UTC wall-clock value in this form.
    pub fn write(&self, t: &NaiveDateTime) -> Sql {
        match *self {
            TimeForm::EpochSeconds => Sql::Integer(t.and_utc().timestamp()),
            TimeForm::EpochMillis => Sql::Integer(t.and_utc().timestamp_millis()),
            TimeForm::EpochReal => Sql::Real(t.and_utc().timestamp_micros() as f64 / 1_000_000.0),
            TimeForm::Text {
                sep,
                digits,
                optional,
                zone,
            } => {
                let micros = t.nanosecond() / 1000 % 1_000_000;
                let mut s = format!("{}{sep}{}", t.format("%Y-%m-%d"), t.format("%H:%M:%S"));
                if !(optional && micros == 0) {
                    let full = format!("{micros:06}");
                    let needed = full.trim_end_matches('0').len();
                    let n = needed.max(usize::from(digits));
                    if n > 0 {
                        s.push('.');
                        s.push_str(&full[..n]);
                    }
                }
                s.push_str(match zone {
                    Zone::None => "",
                    Zone::Z => "Z",
                    Zone::Colon => "+00:00",
                    Zone::Compact => "+0000",
                    Zone::Hours => "+00",
                });
                Sql::Text(s)
            }
        }
    }
}

impl Value {
    /// This value as the legacy column holds its values (`form`, detected from them).
    pub fn to_sqlite(&self, form: &Form) -> Sql {
        match self {
            Value::Null => Sql::Null,
            Value::Bool(b) => match form.boolean {
                BoolForm::Int => Sql::Integer(i64::from(*b)),
                BoolForm::Text {
                    true_word,
                    false_word,
                } => Sql::Text(if *b { true_word } else { false_word }.to_owned()),
            },
            Value::Int(i) => Sql::Integer(*i),
            Value::Float(f) => Sql::Real(*f),
            Value::Numeric(n) => match n.parse::<f64>() {
                // A real when it is one exactly, else the decimal text.
                Ok(f)
                    if f.is_finite()
                        && super::numeric::normalize(&f.to_string())
                            == super::numeric::normalize(n) =>
                {
                    Sql::Real(f)
                }
                _ => Sql::Text(n.clone()),
            },
            Value::Text(s) => Sql::Text(s.clone()),
            Value::Bytes(b) => Sql::Blob(b.clone()),
            Value::Timestamp(t) => form.time.write(t),
            Value::TimestampTz(t) => form.time.write(&t.naive_utc()),
            Value::Date(d) => Sql::Text(d.format("%Y-%m-%d").to_string()),
            Value::Json(j) => Sql::Text(j.text.clone()),
            Value::Uuid(u) => Sql::Text(u.hyphenated().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn text(s: &str) -> Raw {
        Raw::Text(s.into())
    }
    fn at(h: u32, us: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2025, 12, 10)
            .unwrap()
            .and_hms_micro_opt(h, 8, 48, us)
            .unwrap()
    }
    fn written(form: &Form, v: &Value) -> String {
        match v.to_sqlite(form) {
            Sql::Text(s) => s,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn sqlalchemy_text_round_trips_byte_for_byte() {
        let vals = [
            text("2025-12-10 14:08:48.347371"),
            text("2025-12-10 15:00:00.000000"),
        ];
        let f = Form::detect(&vals);
        assert_eq!(f.time, SQLALCHEMY);
        assert_eq!(
            written(&f, &Value::Timestamp(at(14, 347_371))),
            "2025-12-10 14:08:48.347371"
        );
        assert_eq!(
            written(&f, &Value::Timestamp(at(14, 0))),
            "2025-12-10 14:08:48.000000"
        );
        // An aware value from PostgreSQL goes back as its UTC wall clock, no zone.
        assert_eq!(
            written(&f, &Value::TimestampTz(at(9, 5).and_utc())),
            "2025-12-10 09:08:48.000005"
        );
    }

    #[test]
    fn isoformat_rfc3339_and_epochs() {
        let iso = [
            text("2025-12-10T14:08:48"),
            text("2025-12-10T14:08:48.250000"),
        ];
        let f = Form::detect(&iso);
        assert_eq!(
            f.time,
            TimeForm::Text {
                sep: 'T',
                digits: 6,
                optional: true,
                zone: Zone::None
            }
        );
        assert_eq!(
            written(&f, &Value::Timestamp(at(14, 0))),
            "2025-12-10T14:08:48"
        );
        assert_eq!(
            written(&f, &Value::Timestamp(at(14, 1))),
            "2025-12-10T14:08:48.000001"
        );
        let js = [
            text("2025-12-10T14:08:48.123Z"),
            text("2025-12-10T14:08:49.000Z"),
        ];
        let f = Form::detect(&js);
        assert_eq!(
            f.time,
            TimeForm::Text {
                sep: 'T',
                digits: 3,
                optional: false,
                zone: Zone::Z
            }
        );
        // Three digits unless the value needs more: never truncated.
        assert_eq!(
            written(&f, &Value::Timestamp(at(14, 120_000))),
            "2025-12-10T14:08:48.120Z"
        );
        assert_eq!(
            written(&f, &Value::Timestamp(at(14, 123_456))),
            "2025-12-10T14:08:48.123456Z"
        );
        let off = [text("2025-12-10 14:08:48+00:00")];
        assert_eq!(
            written(&Form::detect(&off), &Value::Timestamp(at(14, 0))),
            "2025-12-10 14:08:48+00:00"
        );
        let secs = [Raw::Integer(1_765_375_728), Raw::Null];
        let f = Form::detect(&secs);
        assert_eq!(f.time, TimeForm::EpochSeconds);
        assert_eq!(
            Value::Timestamp(at(14, 0)).to_sqlite(&f),
            Sql::Integer(1_765_375_728)
        );
        let ms = [Raw::Integer(1_765_375_728_347)];
        assert_eq!(Form::detect(&ms).time, TimeForm::EpochMillis);
        assert_eq!(
            Value::Timestamp(at(14, 347_000)).to_sqlite(&Form::detect(&ms)),
            Sql::Integer(1_765_375_728_347)
        );
        // The majority wins; no value at all gives SQLAlchemy's.
        let mixed = [
            text("2025-12-10T14:08:48Z"),
            text("2025-12-10 14:08:48.1"),
            text("2025-12-10 14:08:48.2"),
        ];
        assert!(matches!(
            Form::detect(&mixed).time,
            TimeForm::Text {
                sep: ' ',
                zone: Zone::None,
                ..
            }
        ));
        assert_eq!(Form::detect(&[]).time, SQLALCHEMY);
    }

    #[test]
    fn booleans_and_the_rest() {
        let f = Form::detect(&[Raw::Integer(0), Raw::Integer(1)]);
        assert_eq!(Value::Bool(true).to_sqlite(&f), Sql::Integer(1));
        assert_eq!(Value::Bool(false).to_sqlite(&f), Sql::Integer(0));
        let f = Form::detect(&[text("true"), text("false"), text("true")]);
        assert_eq!(Value::Bool(false).to_sqlite(&f), Sql::Text("false".into()));
        let f = Form::default();
        assert_eq!(Value::Null.to_sqlite(&f), Sql::Null);
        assert_eq!(Value::Float(0.5).to_sqlite(&f), Sql::Real(0.5));
        // Nine 0/1 integers and one stray word: the integers' form wins.
        let mut mixed: Vec<Raw> = (0..9).map(|i| Raw::Integer(i % 2)).collect();
        mixed.push(Raw::Text("t".into()));
        let m = Form::detect(&mixed);
        assert_eq!(Value::Bool(true).to_sqlite(&m), Sql::Integer(1));
        assert_eq!(Value::Int(3).to_sqlite(&f), Sql::Integer(3));
        assert_eq!(Value::Numeric("1.5".into()).to_sqlite(&f), Sql::Real(1.5));
        assert_eq!(
            Value::Numeric("0.10000000000000000001".into()).to_sqlite(&f),
            Sql::Text("0.10000000000000000001".into())
        );
        assert_eq!(Value::Bytes(vec![1]).to_sqlite(&f), Sql::Blob(vec![1]));
    }
}
