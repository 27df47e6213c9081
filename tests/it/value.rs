//! The typed value model against a real PostgreSQL (SPEC §9): for each target type,
//! values read from a real SQLite table are converted, written (COPY text and binds),
//! read back and decoded by their type, and their canonical forms are equal to the
//! source's; PostgreSQL's own parsing of the raw text rounds as `convert` does; a naive
//! timestamp never shifts, whatever the session's TimeZone; and what comes back from
//! PostgreSQL goes back into SQLite in the column's own form and converts to the same
//! value again (rollback).

use std::io::Write;

use rusqlite::types::Value as Sql;
use sessiondb::value::sqlite::Form;
use sessiondb::value::{PgType, Raw, Value, convert, pg};

use crate::support::pg::TestDb;

/// One target type: the SQLite column it comes from, and values as the application
/// stored them, each marked with whether PostgreSQL parses the raw text to the same value
/// (so that its rounding can be compared with ours).
struct Case {
    ty: &'static str,
    decl: &'static str,
    values: Vec<(Sql, bool)>,
}

fn t(s: &str, server_same: bool) -> (Sql, bool) {
    (Sql::Text(s.to_owned()), server_same)
}

fn cases() -> Vec<Case> {
    use Sql::{Blob, Integer as I, Null, Real as R};
    vec![
        Case {
            ty: "text",
            decl: "TEXT",
            values: vec![
                t("hello", true),
                t("tab\tnew\nline\r back\\slash \\N", true),
                t("日本語 🦀 é", true),
                t("", true),
                (Null, true),
                (I(42), true),
            ],
        },
        Case {
            ty: "character varying(10)",
            decl: "VARCHAR(10)",
            values: vec![t("abc", true), t("0123456789", true), t("héllo wörl", true)],
        },
        Case {
            ty: "character(5)",
            decl: "CHAR(5)",
            values: vec![t("ab", true), t("abcde", true), t("ab  ", true)],
        },
        Case {
            ty: "smallint",
            decl: "",
            values: vec![
                (I(-32768), true),
                (I(32767), true),
                (R(3.0), false),
                t(" 12 ", true),
            ],
        },
        Case {
            ty: "integer",
            decl: "",
            values: vec![
                (I(2_147_483_647), true),
                (I(-2_147_483_648), true),
                t("-42", true),
            ],
        },
        Case {
            ty: "bigint",
            decl: "INTEGER",
            values: vec![
                (I(i64::MIN), true),
                (I(i64::MAX), true),
                (I(0), true),
                (Null, true),
            ],
        },
        Case {
            ty: "real",
            decl: "REAL",
            values: vec![
                (R(0.1), true),
                (R(1e-7), true),
                (R(3.4e38), true),
                (R(-0.0), true),
                (I(16_777_217), true),
            ],
        },
        Case {
            ty: "double precision",
            decl: "FLOAT",
            values: vec![
                (R(0.1), true),
                (R(1e-300), true),
                (R(1.797_693_134_862_315_7e308), true),
                (R(-0.0), true),
                (R(5e-324), true),
                (I(3), true),
                (R(0.0123), true),
            ],
        },
        Case {
            ty: "numeric",
            decl: "",
            values: vec![
                (R(0.1), true),
                t("12345678901234567890.123456789", true),
                (I(3), true),
                t("1.50", true),
                t("-0.000001", true),
                t("1e3", true),
            ],
        },
        Case {
            ty: "numeric(10,2)",
            decl: "",
            values: vec![
                t("1.005", true),
                t("-1.005", true),
                t("2.5", true),
                (R(0.125), true),
                t("99999999.994", true),
                (I(7), true),
            ],
        },
        Case {
            ty: "boolean",
            decl: "BOOLEAN",
            values: vec![
                (I(0), true),
                (I(1), true),
                t("true", true),
                t("f", true),
                t("yes", true),
                (Null, true),
            ],
        },
        Case {
            ty: "timestamp without time zone",
            decl: "DATETIME",
            values: vec![
                t("2025-12-10 14:08:48.347371", true),
                t("2025-12-10 14:08:48.000000", true),
                t("2025-12-10 14:08:48", true),
                t("2024-03-01 10:00:00.0000005", true),
                t("2024-03-01 10:00:00.0000015", true),
                t("2024-03-01 10:00:00.1234565", true),
                t("1999-12-31 23:59:59.9999995", true),
                t("1969-07-20 20:17:40.5", true),
                // An aware value goes in as its UTC wall clock; PostgreSQL would drop
                // the zone instead, so its own parse is not compared.
                t("2025-12-10T16:08:48.5+02:00", false),
                (I(1_765_375_728), false),
                (R(1_765_375_728.25), false),
                (I(1_765_375_728_347), false),
            ],
        },
        Case {
            ty: "timestamp(3) without time zone",
            decl: "DATETIME",
            values: vec![
                t("2024-03-01 10:00:00.1235", true),
                t("2024-03-01 10:00:00.1234", true),
                t("1999-12-31 23:59:59.9995", true),
                t("1999-12-31 23:59:59.9985", true),
            ],
        },
        Case {
            ty: "timestamp with time zone",
            decl: "DATETIME",
            values: vec![
                // Naive: UTC (SPEC §1); PostgreSQL would take the session's zone.
                t("2025-12-10 14:08:48.347371", false),
                t("2025-12-10T14:08:48Z", true),
                t("2025-12-10 14:08:48-05:00", true),
                t("2025-12-10T14:08:48.123456789+05:30", true),
                (I(1_765_375_728_347), false),
            ],
        },
        Case {
            ty: "timestamp(0) with time zone",
            decl: "DATETIME",
            values: vec![
                t("2024-03-01T10:00:00.5Z", true),
                t("2024-03-01T10:00:00.4999Z", true),
            ],
        },
        Case {
            ty: "date",
            decl: "DATE",
            values: vec![
                t("2024-03-01", true),
                t("2024-02-29 00:00:00", true),
                t("0001-01-01", true),
            ],
        },
        Case {
            ty: "json",
            decl: "JSON",
            values: vec![
                t("{\"b\": 1,  \"a\": [1.50, true]}", true),
                (I(5), true),
                t("[]", true),
            ],
        },
        Case {
            ty: "jsonb",
            decl: "JSON",
            values: vec![
                t("{\"b\": 1,  \"a\": [1.50, true, null], \"b\": 2}", true),
                t("{\"k\": \"\\u00e9\\n\\\"\", \"emoji\": \"🦀\"}", true),
                // (A bare 1e400 would be taken by the JSON column's NUMERIC affinity as inf.)
                t("[1e400, -0.0, 1.000]", true),
                t("\"just a string\"", true),
            ],
        },
        Case {
            ty: "bytea",
            decl: "BLOB",
            values: vec![
                (Blob(vec![0, 255, 16, b'\\', b'\n']), false),
                t("hi", false),
                (Blob(vec![]), false),
            ],
        },
        Case {
            ty: "uuid",
            decl: "TEXT",
            values: vec![
                t("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", true),
                t("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12}", true),
                t("a0eebc999c0b4ef8bb6d6bb9bd380a13", true),
            ],
        },
    ]
}

/// The values as a real SQLite table of the case's declared type hands them back (its
/// affinity applied), as `Raw`.
fn from_sqlite(case: &Case) -> Vec<Raw> {
    let c = rusqlite::Connection::open_in_memory().unwrap();
    c.execute_batch(&format!(
        "CREATE TABLE t (k INTEGER PRIMARY KEY, v {})",
        case.decl
    ))
    .unwrap();
    for (k, (v, _)) in case.values.iter().enumerate() {
        c.execute(
            "INSERT INTO t VALUES (?1, ?2)",
            rusqlite::params![k as i64, v],
        )
        .unwrap();
    }
    let mut stmt = c.prepare("SELECT v FROM t ORDER BY k").unwrap();
    stmt.query_map([], |r| Ok(Raw::from_sqlite(r.get_ref(0)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn canon(v: &Value) -> Option<String> {
    v.canonical().map(|c| c.into_owned())
}

/// Write `rows` (key, COPY text of the value) with COPY into `table`.
fn copy_rows(c: &mut postgres::Client, table: &str, rows: &[(usize, String)]) {
    let mut w = c
        .copy_in(&format!("COPY {table} (k, v) FROM STDIN"))
        .unwrap();
    for (k, text) in rows {
        writeln!(w, "{k}\t{text}").unwrap();
    }
    w.finish().unwrap();
}

fn read_back(c: &mut postgres::Client, table: &str, ty: &PgType) -> Vec<Value> {
    c.query(&format!("SELECT k, v FROM {table} ORDER BY k"), &[])
        .unwrap()
        .iter()
        .map(|r| pg::decode(r, 1, ty).unwrap_or_else(|e| panic!("{table}: {e}")))
        .collect()
}

#[test]
fn every_type_round_trips_through_postgres_and_back_to_sqlite() {
    let db = TestDb::new("value_round_trip");
    let mut c = db.client();
    // Every write and read in a zone far from UTC: nothing may depend on it.
    c.batch_execute("SET TimeZone = 'America/New_York'; SET DateStyle = 'SQL, DMY'; SET extra_float_digits = 0; SET bytea_output = 'escape'")
        .unwrap();
    for (n, case) in cases().iter().enumerate() {
        let ty = PgType::parse(case.ty).unwrap();
        let raws = from_sqlite(case);
        let values: Vec<Value> = raws
            .iter()
            .map(|r| convert("v", r, &ty).unwrap_or_else(|e| panic!("{}: {r:?}: {e:?}", case.ty)))
            .collect();
        for (suffix, via_copy) in [("copy", true), ("bind", false)] {
            let table = format!("rt_{n}_{suffix}");
            c.batch_execute(&format!(
                "CREATE TABLE {table} (k int PRIMARY KEY, v {})",
                case.ty
            ))
            .unwrap();
            if via_copy {
                let rows: Vec<(usize, String)> = values
                    .iter()
                    .enumerate()
                    .map(|(k, v)| {
                        let mut s = String::new();
                        pg::copy_text(v, &mut s);
                        (k, s)
                    })
                    .collect();
                copy_rows(&mut c, &table, &rows);
            } else {
                let stmt = c
                    .prepare(&format!("INSERT INTO {table} (k, v) VALUES ($1, $2)"))
                    .unwrap();
                for (k, v) in values.iter().enumerate() {
                    c.execute(&stmt, &[&(k as i32), v])
                        .unwrap_or_else(|e| panic!("{} bind {v:?}: {e}", case.ty));
                }
            }
            let back = read_back(&mut c, &table, &ty);
            assert_eq!(back.len(), values.len(), "{table}");
            for ((v, b), raw) in values.iter().zip(&back).zip(&raws) {
                assert_eq!(canon(b), canon(v), "{} via {suffix}: {raw:?}", case.ty);
            }

            // Back to SQLite, as rollback writes it: in the column's own form, and it
            // converts to the very same value again.
            let form = Form::detect(&raws);
            let sq = rusqlite::Connection::open_in_memory().unwrap();
            sq.execute_batch(&format!(
                "CREATE TABLE t (k INTEGER PRIMARY KEY, v {})",
                case.decl
            ))
            .unwrap();
            for (k, b) in back.iter().enumerate() {
                sq.execute(
                    "INSERT INTO t VALUES (?1, ?2)",
                    rusqlite::params![k as i64, b.to_sqlite(&form)],
                )
                .unwrap();
            }
            let mut stmt = sq.prepare("SELECT v FROM t ORDER BY k").unwrap();
            let again: Vec<Raw> = stmt
                .query_map([], |r| Ok(Raw::from_sqlite(r.get_ref(0)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for (a, v) in again.iter().zip(&values) {
                let v2 = convert("v", a, &ty)
                    .unwrap_or_else(|e| panic!("{}: {a:?} back from SQLite: {e:?}", case.ty));
                assert_eq!(canon(&v2), canon(v), "{}: back in SQLite as {a:?}", case.ty);
            }
        }
    }
}

#[test]
fn postgres_parses_and_rounds_the_raw_text_as_convert_does() {
    let db = TestDb::new("value_rounding");
    let mut c = db.client();
    c.batch_execute("SET TimeZone = 'Asia/Kolkata'").unwrap();
    let mut compared = 0;
    for (n, case) in cases().iter().enumerate() {
        let ty = PgType::parse(case.ty).unwrap();
        let raws = from_sqlite(case);
        let table = format!("raw_{n}");
        c.batch_execute(&format!(
            "CREATE TABLE {table} (k int PRIMARY KEY, v {})",
            case.ty
        ))
        .unwrap();
        // The application's own text, parsed by the server.
        let rows: Vec<(usize, String)> = raws
            .iter()
            .enumerate()
            .filter(|(k, _)| case.values[*k].1)
            .filter_map(|(k, r)| {
                let text = match r {
                    Raw::Null => "\\N".to_owned(),
                    Raw::Integer(i) => i.to_string(),
                    Raw::Real(f) => format!("{f:?}"),
                    Raw::Text(s) => {
                        let mut out = String::new();
                        pg::copy_text(&Value::Text(s.clone()), &mut out);
                        out
                    }
                    Raw::Blob(_) => return None,
                };
                Some((k, text))
            })
            .collect();
        copy_rows(&mut c, &table, &rows);
        let back: Vec<(i32, Value)> = c
            .query(&format!("SELECT k, v FROM {table} ORDER BY k"), &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), pg::decode(r, 1, &ty).unwrap()))
            .collect();
        for (k, server) in back {
            let ours = convert("v", &raws[k as usize], &ty).unwrap();
            assert_eq!(
                canon(&server),
                canon(&ours),
                "{}: {:?}",
                case.ty,
                raws[k as usize]
            );
            compared += 1;
        }
    }
    assert!(compared > 60, "compared {compared} values");
}

#[test]
fn naive_timestamps_never_shift_whatever_the_session_time_zone() {
    let db = TestDb::new("value_naive");
    let raw = Raw::Text("2025-12-10 14:08:48.347371".into());
    let naive = convert(
        "created_at",
        &raw,
        &PgType::parse("timestamp without time zone").unwrap(),
    )
    .unwrap();
    let aware = convert(
        "created_at",
        &raw,
        &PgType::parse("timestamp with time zone").unwrap(),
    )
    .unwrap();
    let mut writer = db.client();
    writer.batch_execute("SET TimeZone = 'America/New_York'; CREATE TABLE ts (k int PRIMARY KEY, naive timestamp, aware timestamptz)")
        .unwrap();
    let (mut a, mut b) = (String::new(), String::new());
    pg::copy_text(&naive, &mut a);
    pg::copy_text(&aware, &mut b);
    let mut w = writer
        .copy_in("COPY ts (k, naive, aware) FROM STDIN")
        .unwrap();
    writeln!(w, "1\t{a}\t{b}").unwrap();
    w.finish().unwrap();
    writer
        .execute("INSERT INTO ts VALUES (2, $1, $2)", &[&naive, &aware])
        .unwrap();
    for zone in ["America/New_York", "UTC", "Pacific/Chatham"] {
        let mut reader = db.client();
        reader
            .batch_execute(&format!("SET TimeZone = '{zone}'"))
            .unwrap();
        for r in reader.query("SELECT k, naive, aware, naive::text, (aware AT TIME ZONE 'UTC')::text FROM ts ORDER BY k", &[]).unwrap() {
            let n = pg::decode(&r, 1, &PgType::Timestamp(None)).unwrap();
            let z = pg::decode(&r, 2, &PgType::TimestampTz(None)).unwrap();
            assert_eq!(canon(&n).unwrap(), "2025-12-10 14:08:48.347371", "{zone}");
            assert_eq!(canon(&z).unwrap(), "2025-12-10T14:08:48.347371Z", "{zone}");
            // And as the server itself prints them: the wall clock the application wrote.
            let text: String = r.get(3);
            assert_eq!(text, "2025-12-10 14:08:48.347371", "{zone}");
            let utc: String = r.get(4);
            assert_eq!(utc, "2025-12-10 14:08:48.347371", "{zone}");
        }
    }
}
