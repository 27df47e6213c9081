//! `sessiondb generate-fixture`: deterministic, what the report says is what is on disk,
//! `--bad` writes one record of each invalid kind, and a non-empty `--out` is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sessiondb::exit;
use sessiondb::report::{Report, Status};

struct Run {
    code: i32,
    report: Report,
    stderr: String,
}

fn generate(out: &Path, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_sessiondb"))
        .arg("generate-fixture")
        .arg("--out")
        .arg(out)
        .args(args)
        .env_remove("SESSIONDB_REPORT_DIR")
        .env_remove("SESSIONDB_LOG")
        .output()
        .expect("run sessiondb");
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report: Report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one report ({e}):\n{stdout}\n{stderr}"));
    Run {
        code: output.status.code().expect("exit code"),
        report,
        stderr,
    }
}

fn generate_ok(out: &Path, args: &[&str]) -> Run {
    let run = generate(out, args);
    assert_eq!(
        run.code,
        exit::OK,
        "{}\n{:?}",
        run.stderr,
        run.report.errors
    );
    assert_eq!(run.report.status, Status::Ok);
    run
}

fn detail_u64(r: &Report, k: &str) -> u64 {
    r.details[k]
        .as_u64()
        .unwrap_or_else(|| panic!("no detail {k}"))
}

/// What a generated tree holds, file by file; the SQLite database as its rows (with
/// their storage classes), since its pages may be laid out differently.
#[derive(Debug, PartialEq)]
enum Entry {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(PathBuf),
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        let meta = e.path().symlink_metadata().unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let entry = if meta.file_type().is_symlink() {
            Entry::Symlink(std::fs::read_link(e.path()).unwrap())
        } else if meta.is_dir() {
            Entry::Dir(mode)
        } else if rel.starts_with("data/app.db") {
            continue;
        } else {
            // A mode-000 file is readable only by root; compare its mode alone then.
            Entry::File(mode, std::fs::read(e.path()).unwrap_or_default())
        };
        out.insert(rel, entry);
    }
    out
}

type SqlRow = Vec<(String, String)>;

fn sqlite_rows(root: &Path) -> Vec<SqlRow> {
    let conn = rusqlite::Connection::open(root.join("data/app.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT id, user_id, status, current_step, cost, created_at, updated_at, state
             FROM sessions ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        (0..8)
            .map(|i| {
                let v = r.get_ref(i)?;
                Ok((
                    format!("{:?}", v.data_type()),
                    match v {
                        rusqlite::types::ValueRef::Null => String::new(),
                        rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                        rusqlite::types::ValueRef::Real(f) => format!("{f:?}"),
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                    },
                ))
            })
            .collect()
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    generate_ok(&a, &["--sessions", "300", "--seed", "7", "--bad"]);
    generate_ok(&b, &["--sessions", "300", "--seed", "7", "--bad"]);
    generate_ok(&c, &["--sessions", "300", "--seed", "8", "--bad"]);

    let (sa, sb, sc) = (snapshot(&a), snapshot(&b), snapshot(&c));
    assert!(sa.len() > 300, "{} entries", sa.len());
    assert_eq!(
        sa.keys().collect::<Vec<_>>(),
        sb.keys().collect::<Vec<_>>(),
        "same seed, same paths"
    );
    for (path, entry) in &sa {
        assert_eq!(Some(entry), sb.get(path), "{} differs", path.display());
    }
    assert_eq!(sqlite_rows(&a), sqlite_rows(&b));

    assert_ne!(sa, sc, "another seed, another tree");
    assert_ne!(sqlite_rows(&a), sqlite_rows(&c));
    let state = |s: &BTreeMap<PathBuf, Entry>| {
        s.iter()
            .filter(|(p, _)| p.ends_with("state.json"))
            .map(|(p, _)| p.clone())
            .collect::<BTreeSet<_>>()
    };
    let shared = state(&sa).intersection(&state(&sc)).count();
    // Only the fixed ids (awkward and bad ones) are shared between seeds.
    assert!(shared < 20, "{shared} state files at the same path");
}

/// Of the SQLite rows with a `state` column: how many also have a different state file
/// (conflicts), how many have none (column only).
fn column_kinds(
    column: &BTreeMap<String, Option<String>>,
    files: &BTreeMap<String, serde_json::Value>,
) -> (u64, u64) {
    let (mut conflicts, mut column_only) = (0, 0);
    for (id, state) in column {
        if id.starts_with("bad-") {
            continue; // --bad's invalid records, counted apart
        }
        match (state, files.get(id)) {
            (Some(s), Some(f)) => {
                let s: serde_json::Value = serde_json::from_str(s).unwrap();
                assert_ne!(&s, f, "{id}: a conflict holds different states");
                conflicts += 1;
            }
            (Some(s), None) => {
                serde_json::from_str::<serde_json::Value>(s).unwrap();
                column_only += 1;
            }
            (None, Some(_)) => {}
            (None, None) => panic!("{id} has no state"),
        }
    }
    (conflicts, column_only)
}

#[test]
fn the_report_matches_what_is_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    let run = generate_ok(&out, &["--sessions", "1000", "--seed", "3"]);
    let r = &run.report;
    assert_eq!(r.step, "generate-fixture");
    assert_eq!(r.counts["sessions"], 1000);
    assert_eq!(r.counts["invalid"], 0);
    let config = out.join("sessiondb.toml");
    assert!(
        r.artifacts
            .iter()
            .any(|a| a.kind == "config" && Path::new(&a.path) == config)
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("backend = \"sqlite\"") && text.contains("# "),
        "{text}"
    );

    // SQLite: every row, in WAL mode, and a clean quick_check.
    let conn = rusqlite::Connection::open(out.join("data/app.db")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |x| x.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |x| x.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut column: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut stmt = conn.prepare("SELECT id, state FROM sessions").unwrap();
    for row in stmt.query_map([], |x| Ok((x.get(0)?, x.get(1)?))).unwrap() {
        let (id, state) = row.unwrap();
        column.insert(id, state);
    }
    drop(stmt);
    drop(conn); // its -shm file would count as bytes below
    assert_eq!(column.len() as u64, detail_u64(r, "sqlite_rows"));

    // State files, counted and parsed.
    let mut files: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for e in std::fs::read_dir(out.join("sessions")).unwrap() {
        let e = e.unwrap();
        let p = e.path().join("state.json");
        if p.symlink_metadata().is_ok() {
            let bytes = std::fs::read(&p).unwrap();
            let v = serde_json::from_slice(&bytes)
                .unwrap_or_else(|err| panic!("{}: {err}", p.display()));
            files.insert(e.file_name().into_string().unwrap(), v);
        }
    }
    assert_eq!(files.len() as u64, detail_u64(r, "state_files"));

    // The JSON store.
    let store: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("data/session-db.json")).unwrap()).unwrap();
    assert_eq!(store["version"], 1);
    let records = store["sessions"].as_array().unwrap();
    assert_eq!(records.len() as u64, detail_u64(r, "json_store_records"));

    // Resolve every session as SPEC §1 says, and count the kinds.
    let mut ids: BTreeSet<&str> = column.keys().map(String::as_str).collect();
    let mut json_only = 0;
    let mut duplicates = 0;
    for rec in records {
        let id = rec["id"].as_str().unwrap();
        if column.contains_key(id) {
            duplicates += 1;
            assert!(rec["state"].is_null());
        } else {
            json_only += 1;
            assert!(
                !rec["state"].is_null() || files.contains_key(id),
                "{id} has no state"
            );
        }
        ids.insert(id);
    }
    let (conflicts, column_only) = column_kinds(&column, &files);
    assert_eq!(ids.len(), 1000);
    assert_eq!(json_only, detail_u64(r, "json_only"));
    assert_eq!(duplicates, detail_u64(r, "json_duplicates"));
    assert_eq!(column_only, detail_u64(r, "sqlite_column_only"));
    assert_eq!(column_only, 50);
    assert_eq!(json_only, 30);
    assert_eq!(duplicates, 5);
    // Without --bad: no state conflict, no orphan state file (a clean migration).
    assert_eq!(conflicts, 0);
    assert_eq!(detail_u64(r, "state_conflicts"), 0);
    assert_eq!(detail_u64(r, "orphan_state_files"), 0);
    assert!(r.details["orphans"].as_array().unwrap().is_empty());
    for f in files.keys() {
        assert!(
            ids.contains(f.as_str()),
            "{f}: a state file no session owns"
        );
    }
    // Unsafe ids: in SQLite, never a folder.
    let unsafe_ids = r.details["unsafe_ids"].as_array().unwrap();
    assert_eq!(unsafe_ids.len(), 2);
    for id in unsafe_ids {
        let id = id.as_str().unwrap();
        assert!(column[id].is_some(), "{id}");
        assert!(!out.join("sessions").join(id).exists(), "{id}");
        assert!(!out.join("escape-attempt").exists());
    }
    assert!(r.details["awkward_ids"].as_array().unwrap().len() >= 5);
    assert!(detail_u64(r, "with_uploads") > 0 && detail_u64(r, "with_logs") > 0);

    // Bytes: the total is every file written.
    let on_disk: u64 = walkdir::WalkDir::new(&out)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(r.counts["bytes"], on_disk);
}

#[test]
fn bad_adds_state_conflicts_and_orphan_state_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    let run = generate_ok(&out, &["--sessions", "1000", "--seed", "3", "--bad"]);
    let r = &run.report;
    let conn = rusqlite::Connection::open(out.join("data/app.db")).unwrap();
    let mut stmt = conn.prepare("SELECT id, state FROM sessions").unwrap();
    let column: BTreeMap<String, Option<String>> = stmt
        .query_map([], |x| Ok((x.get(0)?, x.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // The state files that parse (the bad records' do not, on purpose).
    let mut files: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for e in std::fs::read_dir(out.join("sessions")).unwrap() {
        let id = e.unwrap().file_name().into_string().unwrap();
        let p = out.join("sessions").join(&id).join("state.json");
        if let Some(v) = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            files.insert(id, v);
        }
    }
    let (conflicts, _) = column_kinds(&column, &files);
    assert_eq!(conflicts, 10);
    assert_eq!(conflicts, detail_u64(r, "state_conflicts"));
    let store: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("data/session-db.json")).unwrap()).unwrap();
    let in_json: BTreeSet<&str> = store["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|rec| rec["id"].as_str())
        .collect();
    let orphans = r.details["orphans"].as_array().unwrap();
    assert_eq!(orphans.len(), 2);
    assert_eq!(detail_u64(r, "orphan_state_files"), 2);
    for o in orphans {
        let o = o.as_str().unwrap();
        assert!(
            files.contains_key(o) && !column.contains_key(o) && !in_json.contains(o),
            "{o}"
        );
    }
}

#[test]
fn bad_adds_one_record_of_each_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    let run = generate_ok(&out, &["--sessions", "50", "--bad"]);
    let r = &run.report;
    assert_eq!(r.counts["sessions"], 50);
    assert_eq!(r.counts["invalid"], 9);
    let by_code: BTreeMap<String, u64> =
        serde_json::from_value(r.details["bad_by_code"].clone()).unwrap();
    let want: BTreeMap<String, u64> = [
        ("invalid_json", 2),
        ("invalid_utf8", 1),
        ("jsonb_incompatible_nul", 1),
        ("invalid_timestamp", 1),
        ("invalid_cost", 1),
        ("invalid_id", 1),
        ("symlink_outside_root", 1),
        ("unreadable", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(by_code, want);

    let state = |id: &str| out.join("sessions").join(id).join("state.json");
    let bytes = |id: &str| std::fs::read(state(id)).unwrap();
    assert!(serde_json::from_slice::<serde_json::Value>(&bytes("bad-invalid-json")).is_err());
    assert!(std::str::from_utf8(&bytes("bad-invalid-utf8")).is_err());
    let nul = String::from_utf8(bytes("bad-jsonb-nul")).unwrap();
    assert!(nul.contains("\\u0000"));
    let lone = String::from_utf8(bytes("bad-lone-surrogate")).unwrap();
    assert!(lone.contains("\\ud800"));
    assert!(serde_json::from_str::<serde_json::Value>(&lone).is_err());
    let unreadable = state("bad-unreadable").metadata().unwrap();
    assert_eq!(unreadable.permissions().mode() & 0o777, 0);
    assert_eq!(
        std::fs::read_link(state("bad-symlink-outside-root")).unwrap(),
        Path::new("/etc/hostname")
    );

    let conn = rusqlite::Connection::open(out.join("data/app.db")).unwrap();
    let cell = |sql: &str| -> String { conn.query_row(sql, [], |x| x.get(0)).unwrap() };
    assert_eq!(
        cell("SELECT created_at FROM sessions WHERE id = 'bad-invalid-timestamp'"),
        "2024-02-30 10:00:00"
    );
    assert_eq!(
        cell("SELECT typeof(cost) || ':' || cost FROM sessions WHERE id = 'bad-invalid-cost'"),
        "text:abc"
    );
    assert_eq!(
        cell("SELECT typeof(state) FROM sessions WHERE id = ''"),
        "text"
    );
    // Each bad record has a row, and the report names each.
    let bad = r.details["bad"].as_array().unwrap();
    assert_eq!(bad.len(), 9);
    for b in bad {
        let id = b["id"].as_str().unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM sessions WHERE id = ?1", [id], |x| {
                x.get(0)
            })
            .unwrap();
        assert_eq!(n, 1, "{id}");
        if let Some(p) = b["path"].as_str() {
            assert!(out.join(p).symlink_metadata().is_ok(), "{p}");
        }
    }
}

#[test]
fn loose_types_keep_each_storage_class() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    let run = generate_ok(&out, &["--sessions", "400", "--loose-types"]);
    let classes = &run.report.details["storage_classes"];
    for (col, class) in [
        ("cost", "text"),
        ("cost", "integer"),
        ("cost", "real"),
        ("created_at", "integer"),
        ("created_at", "text"),
        ("updated_at", "integer"),
    ] {
        assert!(
            classes[col][class].as_u64().unwrap_or(0) > 0,
            "no {class} in {col}: {classes}"
        );
    }
    // With the contract's declared types, SQLite converts on insert.
    let strict = tmp.path().join("strict");
    let run = generate_ok(&strict, &["--sessions", "400"]);
    let classes = &run.report.details["storage_classes"];
    assert!(classes["created_at"].get("integer").is_none(), "{classes}");
    assert!(classes["cost"].get("integer").is_none(), "{classes}");
}

#[test]
fn refuses_an_out_folder_that_is_not_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "precious").unwrap();
    let run = generate(&out, &["--sessions", "10"]);
    assert_eq!(run.code, exit::USAGE, "{}", run.stderr);
    assert_eq!(run.report.status, Status::Error);
    assert_eq!(run.report.errors[0].code, "usage");
    assert!(
        run.report.errors[0].message.contains("not empty"),
        "{:?}",
        run.report.errors
    );
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["keep.txt"]);
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "precious"
    );

    // An empty folder is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    generate_ok(&empty, &["--sessions", "10"]);
}

// ---- --schema app ----------------------------------------------------------------------

/// The application's schema of issue 17, verbatim, one statement at a time.
const ISSUE_DDL: &[&str] = &[
    "CREATE TABLE users (id VARCHAR NOT NULL PRIMARY KEY, external_id VARCHAR NOT NULL,\n  display_name VARCHAR, created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL)",
    "CREATE UNIQUE INDEX ix_users_external_id ON users (external_id)",
    "CREATE TABLE session_state (session_id VARCHAR NOT NULL PRIMARY KEY, state JSON NOT NULL,\n  updated_at DATETIME NOT NULL)",
    "CREATE TABLE sessions (id VARCHAR NOT NULL PRIMARY KEY,\n  user_id VARCHAR NOT NULL REFERENCES users (id), question TEXT NOT NULL,\n  current_step VARCHAR NOT NULL, status VARCHAR NOT NULL,\n  created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL,\n  is_deleted BOOLEAN NOT NULL,\n  last_cost_usd FLOAT, last_total_tokens INTEGER)",
    "CREATE INDEX ix_sessions_is_deleted ON sessions (is_deleted)",
    "CREATE INDEX ix_sessions_user_id ON sessions (user_id)",
];

fn app_rows(root: &Path) -> Vec<SqlRow> {
    let conn = rusqlite::Connection::open(root.join("data/app.db")).unwrap();
    let mut out = Vec::new();
    for sql in [
        "SELECT * FROM users ORDER BY id",
        "SELECT * FROM sessions ORDER BY id",
    ] {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        let rows: Vec<SqlRow> = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        let v = r.get_ref(i)?;
                        Ok((
                            format!("{:?}", v.data_type()),
                            match v {
                                rusqlite::types::ValueRef::Null => String::new(),
                                rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                                rusqlite::types::ValueRef::Real(f) => format!("{f:?}"),
                                rusqlite::types::ValueRef::Text(t)
                                | rusqlite::types::ValueRef::Blob(t) => {
                                    String::from_utf8_lossy(t).into_owned()
                                }
                            },
                        ))
                    })
                    .collect()
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        out.extend(rows);
    }
    out
}

#[test]
fn app_schema_is_the_applications_own_and_the_same_seed_writes_the_same_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let run = generate_ok(&a, &["--schema", "app", "--sessions", "200", "--seed", "9"]);
    generate_ok(&b, &["--schema", "app", "--sessions", "200", "--seed", "9"]);
    generate_ok(
        &c,
        &["--schema", "app", "--sessions", "200", "--seed", "10"],
    );
    assert_eq!(snapshot(&a), snapshot(&b));
    assert_eq!(app_rows(&a), app_rows(&b));
    assert_ne!(app_rows(&a), app_rows(&c));

    let conn = rusqlite::Connection::open(a.join("data/app.db")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |x| x.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sql: Vec<String> = conn
        .prepare("SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(sql, ISSUE_DDL);
    let one = |q: &str| -> i64 { conn.query_row(q, [], |r| r.get(0)).unwrap() };
    assert_eq!(one("SELECT count(*) FROM sessions"), 200);
    assert_eq!(one("SELECT count(*) FROM session_state"), 0);
    assert!(one("SELECT count(*) FROM users") >= 3);
    assert!(
        one("SELECT count(*) FROM (SELECT user_id FROM sessions GROUP BY 1 HAVING count(*) > 1)")
            >= 2,
        "several owners with several sessions"
    );
    assert!(one("SELECT count(*) FROM sessions WHERE is_deleted = 1") > 0);
    assert_eq!(
        one(
            "SELECT count(*) FROM sessions WHERE is_deleted NOT IN (0, 1) OR typeof(is_deleted) <> 'integer'"
        ),
        0
    );
    assert!(one("SELECT count(*) FROM sessions WHERE last_cost_usd IS NULL") > 0);
    assert!(
        one(
            "SELECT count(*) FROM sessions WHERE last_total_tokens IS NULL AND last_cost_usd IS NOT NULL"
        ) > 0
    );
    assert_eq!(
        one("SELECT count(*) FROM sessions WHERE typeof(last_cost_usd) NOT IN ('real', 'null')"),
        0
    );
    assert!(one("SELECT count(*) FROM users WHERE display_name IS NULL") > 0);
    assert_eq!(
        one(
            "SELECT count(*) FROM sessions s LEFT JOIN users u ON u.id = s.user_id WHERE u.id IS NULL"
        ),
        0
    );
    // SQLAlchemy's text, always six digits, no zone; ids made of the creation time.
    let mut stmt = conn.prepare("SELECT id, created_at, updated_at FROM sessions UNION ALL SELECT 'session_' || id, created_at, updated_at FROM users").unwrap();
    let rows: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (id, ca, ua) in &rows {
        for t in [ca, ua] {
            assert!(
                chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.6f").is_ok()
                    && t.len() == 26,
                "{t}"
            );
        }
        assert!(ua >= ca, "{id}: updated before created");
    }
    for (id, ca, _) in rows.iter().filter(|(id, _, _)| !id.contains('-')) {
        let digits: String = ca.chars().filter(char::is_ascii_digit).collect();
        assert_eq!(
            id,
            &format!(
                "session_{}_{}_{}",
                &digits[..8],
                &digits[8..14],
                &digits[14..]
            )
        );
    }
    // State only in files: every file parses; some sessions have none yet.
    let r = &run.report;
    let with_state = detail_u64(r, "state_files");
    let without = detail_u64(r, "without_state");
    assert_eq!(with_state + without, 200);
    assert!(without > 0 && with_state > 150, "{with_state} / {without}");
    let mut files = 0;
    for e in std::fs::read_dir(a.join("sessions")).unwrap() {
        let p = e.unwrap().path().join("state.json");
        if p.exists() {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(&p).unwrap()).unwrap();
            files += 1;
        }
    }
    assert_eq!(files, with_state);
    // The config maps what the schema names otherwise, and parses.
    let text = std::fs::read_to_string(a.join("sessiondb.toml")).unwrap();
    let cfg =
        sessiondb::config::Config::parse(&a.join("sessiondb.toml"), &text, &Default::default())
            .unwrap();
    use sessiondb::source::shape::Field;
    assert_eq!(cfg.app.columns[&Field::Cost], "last_cost_usd");
    assert_eq!(cfg.app.columns[&Field::State], "");
    assert!(cfg.json_path.is_none());
    assert_eq!(
        detail_u64(r, "deleted"),
        one("SELECT count(*) FROM sessions WHERE is_deleted = 1") as u64
    );
}

#[test]
fn schema_default_is_what_no_flag_writes_and_app_refuses_bad() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    generate_ok(&a, &["--sessions", "120", "--seed", "4", "--bad"]);
    generate_ok(
        &b,
        &[
            "--sessions",
            "120",
            "--seed",
            "4",
            "--bad",
            "--schema",
            "default",
        ],
    );
    assert_eq!(snapshot(&a), snapshot(&b));
    assert_eq!(sqlite_rows(&a), sqlite_rows(&b));
    let run = generate(
        &tmp.path().join("c"),
        &["--schema", "app", "--sessions", "5", "--bad"],
    );
    assert_eq!(run.code, sessiondb::exit::USAGE, "{}", run.stderr);
}
