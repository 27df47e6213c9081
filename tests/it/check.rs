//! `sessiondb check` on each backend.

use sessiondb::exit;
use sessiondb::report::CheckStatus;

use crate::support::pg::{Role, TestDb};
use crate::support::store::Store;
use crate::support::{TempDir, pg, sessiondb};

#[test]
fn corrupt_sqlite_is_sqlite_corrupt() {
    let s = Store::new();
    for i in 0..400 {
        s.session(
            &format!("s{i:04}"),
            &format!("{{\"n\": {i}, \"pad\": \"{}\"}}", "x".repeat(200)),
        );
        s.conn()
            .execute(
                "UPDATE sessions SET state = ?1 WHERE id = ?2",
                [&"y".repeat(500), &format!("s{i:04}")],
            )
            .unwrap();
    }
    s.conn()
        .pragma_update(None, "journal_mode", "delete")
        .unwrap();
    // Overwrite pages in the middle of the file, past the header and schema page.
    let mut bytes = std::fs::read(&s.db).unwrap();
    assert!(
        bytes.len() > 40_000,
        "the database is big enough to damage: {}",
        bytes.len()
    );
    for b in &mut bytes[8192..24576] {
        *b = 0x5a;
    }
    std::fs::write(&s.db, &bytes).unwrap();
    let r = sessiondb(&["check", "--backend", "sqlite"])
        .config(&s.config)
        .expect(exit::PROBLEMS);
    assert!(r.has_error("sqlite_corrupt"), "{}", r.stdout);
    assert_eq!(r.report.details["backend"], "sqlite");
    assert!(
        r.report.details["checked_against"]
            .as_str()
            .unwrap()
            .ends_with("data/app.db")
    );
}

#[test]
fn text_file_is_not_sqlite_and_empty_file_too() {
    let s = Store::new();
    std::fs::write(&s.db, "this is a text file, not a database\n").unwrap();
    let _ = std::fs::remove_file(s.db.with_extension("db-wal"));
    let r = sessiondb(&["check"])
        .config(&s.config)
        .expect(exit::PROBLEMS);
    assert!(r.has_error("not_sqlite"), "{}", r.stdout);
    std::fs::write(&s.db, "").unwrap();
    let r = sessiondb(&["check"])
        .config(&s.config)
        .expect(exit::PROBLEMS);
    assert!(r.has_error("not_sqlite"), "{}", r.stdout);
    assert!(
        r.report.errors[0].message.contains("0 bytes"),
        "{}",
        r.stdout
    );
}

#[test]
fn json_backend_is_checked_and_warned_deprecated() {
    let s = Store::new();
    s.json_store(r#"{"version": 1, "sessions": [{"id": "j1", "user_id": "u", "status": "done", "current_step": "end", "cost": 1.5, "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z", "state": {"a": 1}}]}"#);
    s.write_config("json", "");
    let r = sessiondb(&["check"]).config(&s.config).expect(exit::OK);
    assert!(r.has_warning("json_backend_deprecated"), "{}", r.stdout);
    assert_eq!(r.report.details["backend"], "json");
    assert_eq!(r.count("sessions"), 1);
    s.json_store(r#"{"version": 1, "sessions": [{"id": "j1", "state": {"a": "\u0000"}}]}"#);
    let r = sessiondb(&["check"])
        .config(&s.config)
        .expect(exit::PROBLEMS);
    assert!(r.has_error("jsonb_incompatible_nul"), "{}", r.stdout);
}

#[test]
fn unreachable_postgres_fails_the_check() {
    let d = TempDir::new();
    // A port nobody listens on: bind it, learn it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgresql://app:Sup3rS3cret!@127.0.0.1:{port}/app");
    let r = sessiondb(&["check", "--backend", "postgres"])
        .cwd(d.path())
        .env("DATABASE_URL", &url)
        .expect(exit::PROBLEMS);
    assert!(r.has_error("postgres_unreachable"), "{}", r.stdout);
    assert!(!r.stdout.contains("Sup3rS3cret") && !r.stderr.contains("Sup3rS3cret"));
    assert_eq!(
        r.report.details["checked_against"],
        format!("postgresql://app:***@127.0.0.1:{port}/app")
    );
}

#[test]
fn healthy_postgres_without_any_source_file() {
    let db = pg::TestDb::new("check_healthy");
    let d = TempDir::new();
    let r = sessiondb(&["check"])
        .cwd(d.path())
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(r.report.details["backend"], "postgres");
    for id in [
        "postgres_connectivity",
        "postgres_version",
        "postgres_permissions",
        "postgres_indexes",
        "postgres_health",
    ] {
        assert_eq!(
            r.check(id).status,
            sessiondb::report::CheckStatus::Pass,
            "{id}: {}",
            r.stdout
        );
    }
    assert_eq!(
        r.check("postgres_schema").status,
        sessiondb::report::CheckStatus::Warn,
        "nothing applied yet: pending"
    );
    assert!(!r.stdout.contains(&pg::password()));
}

/// A 100 MB JSON store (40,000 records of about 2.6 KB, the fixture's size) is checked
/// in memory flat in its size: the file is streamed and each state read when needed,
/// never the whole file held (the whole-file parse peaked at over 10× the file).
#[test]
fn check_of_a_100_mb_json_store_keeps_memory_flat() {
    use std::io::Write;
    let s = Store::new();
    let records = 40_000u64;
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&s.json).unwrap());
        w.write_all(b"{\n  \"version\": 1,\n  \"sessions\": [")
            .unwrap();
        for i in 0..records {
            let history: Vec<String> = (0..26)
                .map(|k| {
                    format!(
                        r#"{{"k": {k}, "at": "2024-03-01T10:{:02}:00Z", "note": "step \"{k}\" of [plan], {{ok}}, \\ done é"}}"#,
                        k % 60
                    )
                })
                .collect();
            // The last record's state is one jsonb refuses: it must be read, at the end.
            let nul = if i == records - 1 { "\\u0000" } else { "" };
            write!(
                w,
                r#"{}{{"id": "j-{i:06}", "user_id": "u-{}", "status": "running", "current_step": "step-3", "cost": 0.0123, "created_at": "2024-03-01T10:00:00Z", "updated_at": "2024-03-01T10:05:00Z", "state": {{"step": {i}, "tag": "{nul}", "history": [{}], "nested": [[1, [2, {{"a": []}}]], {{}}]}}}}"#,
                if i == 0 { "\n    " } else { ",\n    " },
                i % 977,
                history.join(", ")
            )
            .unwrap();
        }
        w.write_all(b"\n  ]\n}\n").unwrap();
        w.flush().unwrap();
    }
    s.write_config("json", "");
    let size_mb = std::fs::metadata(&s.json).unwrap().len() as f64 / (1 << 20) as f64;
    assert!(size_mb > 95.0, "the store is {size_mb:.0} MB");
    let (r, peak) = sessiondb(&["check", "--backend", "json"])
        .config(&s.config)
        .run_peak_rss();
    assert_eq!(r.code, exit::PROBLEMS, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.count("sessions"), records - 1, "{}", r.stdout);
    assert_eq!(r.count("invalid"), 1);
    let bad = r.error("jsonb_incompatible_nul");
    assert_eq!(bad.session.as_deref(), Some("j-039999"));
    let limit = 0.4 * size_mb + 20.0;
    assert!(
        peak < limit,
        "peak RSS {peak:.0} MB for a {size_mb:.0} MB JSON store (limit {limit:.0} MB)"
    );
    eprintln!("check of a {size_mb:.0} MB JSON store: peak RSS {peak:.0} MB");
}

/// A role whose sessions are read-only (`default_transaction_read_only = on`) can hold
/// every grant and still write nothing: `check` fails `postgres_permissions` as
/// `preflight` does (one probe), saying why and how to fix it.
#[test]
fn a_read_only_role_fails_postgres_permissions_in_check_as_in_preflight() {
    let role = Role::new("readonly");
    let db = TestDb::new("check_read_only");
    // The database's owner: it may create in public (owned by pg_database_owner).
    db.client()
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" OWNER TO \"{}\"",
            db.name, role.name
        ))
        .unwrap();
    pg::admin()
        .batch_execute(&format!(
            "ALTER ROLE \"{}\" SET default_transaction_read_only = on",
            role.name
        ))
        .unwrap();
    let s = Store::new();
    s.session("a", r#"{"x": 1}"#);
    for args in [&["check", "--backend", "postgres"][..], &["preflight"]] {
        let r = sessiondb(args)
            .config(&s.config)
            .env("DATABASE_URL", role.url(&db))
            .expect(sessiondb::exit::PROBLEMS);
        let c = r.check("postgres_permissions");
        assert_eq!(c.status, CheckStatus::Fail, "{args:?}: {}", r.stdout);
        assert_eq!(c.details["read_only"], true, "{args:?}: {}", r.stdout);
        assert_eq!(
            c.details["create"], true,
            "{args:?}: the grants alone would do"
        );
        assert!(
            c.summary.contains("read-only")
                && c.summary.contains("default_transaction_read_only = off"),
            "{args:?}: {}",
            c.summary
        );
        let e = r
            .report
            .errors
            .iter()
            .find(|e| e.code == "permission_denied")
            .unwrap_or_else(|| panic!("{args:?}: {}", r.stdout));
        assert_eq!(e.message, c.summary);
    }
}

#[test]
fn a_role_without_the_temporary_privilege_fails_postgres_permissions_until_granted() {
    // The load stages its batches, verify its ids and a mapped plan its hashes in
    // temporary tables: preflight fails a role that may create tables but not temporary
    // ones, before a step fails half-way, with the GRANT that fixes it; check, which
    // also vets the runtime store's role (it needs none), warns.
    let role = Role::new("notemp");
    let db = TestDb::new("check_no_temp");
    db.client()
        .batch_execute(&format!(
            "ALTER DATABASE \"{0}\" OWNER TO \"{1}\";
             REVOKE TEMPORARY ON DATABASE \"{0}\" FROM PUBLIC;
             REVOKE TEMPORARY ON DATABASE \"{0}\" FROM \"{1}\"",
            db.name, role.name
        ))
        .unwrap();
    let s = Store::new();
    s.session("a", r#"{"x": 1}"#);
    let grant = format!(
        "GRANT TEMPORARY ON DATABASE \"{}\" TO \"{}\"",
        db.name, role.name
    );
    for (args, status, code) in [
        (
            &["check", "--backend", "postgres"][..],
            CheckStatus::Warn,
            exit::OK,
        ),
        (&["preflight"], CheckStatus::Fail, exit::PROBLEMS),
    ] {
        let r = sessiondb(args)
            .config(&s.config)
            .env("DATABASE_URL", role.url(&db))
            .expect(code);
        let c = r.check("postgres_permissions");
        assert_eq!(c.status, status, "{args:?}: {}", r.stdout);
        assert_eq!(c.details["temporary"], false, "{args:?}: {}", r.stdout);
        assert_eq!(c.details["create"], true, "{args:?}: {}", r.stdout);
        assert_eq!(c.details["database"], db.name.as_str(), "{args:?}");
        assert!(
            c.summary.contains("no TEMPORARY privilege") && c.summary.contains(&grant),
            "{args:?}: {}",
            c.summary
        );
        let denied = r
            .report
            .errors
            .iter()
            .any(|e| e.code == "permission_denied" && e.message == c.summary);
        assert_eq!(
            denied,
            status == CheckStatus::Fail,
            "{args:?}: {}",
            r.stdout
        );
    }
    // The GRANT it names is the fix.
    db.client()
        .batch_execute(&format!(
            "GRANT TEMPORARY ON DATABASE \"{}\" TO \"{}\"",
            db.name, role.name
        ))
        .unwrap();
    let r = sessiondb(&["preflight"])
        .config(&s.config)
        .env("DATABASE_URL", role.url(&db))
        .expect(sessiondb::exit::OK);
    let c = r.check("postgres_permissions");
    assert_eq!(c.status, CheckStatus::Pass, "{}", r.stdout);
    assert_eq!(c.details["temporary"], true);
}

#[test]
fn check_of_the_sqlite_backend_counts_json_only_state_files_apart_from_orphans() {
    // A session only the JSON store has: its state file has no SQLite row. check of the
    // sqlite backend does not call it an orphan (the config's JSON store names it; the
    // load resolves it from there) but counts it in a passing check; a state file that
    // no store names is still an orphan, and not said to lack "SQLite or the JSON store"
    // metadata (this check read only the JSON store's ids). Preflight, which reads
    // both, warns about the real orphan alone.
    let s = Store::new();
    s.session("in-sqlite", r#"{"a": 1}"#);
    s.state_file("json-only", br#"{"b": 2}"#);
    s.state_file("nobody", br#"{"c": 3}"#);
    s.json_store(r#"{"version": 1, "sessions": [{"id": "json-only", "user_id": "u", "status": "done", "current_step": "end", "cost": 1.5, "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"}]}"#);
    let r = sessiondb(&["check"]).config(&s.config).expect(exit::OK);
    let orphans: Vec<_> = r
        .report
        .warnings
        .iter()
        .filter(|w| w.code == "orphan_state_file")
        .collect();
    assert_eq!(orphans.len(), 1, "{}", r.stdout);
    let w = orphans[0];
    assert!(
        w.path
            .as_deref()
            .is_some_and(|p| p.ends_with("nobody/state.json"))
            && w.message.contains("not read by this check"),
        "{}",
        w.message
    );
    let c = r.check("json_owned_state_files");
    assert_eq!(c.status, CheckStatus::Pass, "{}", r.stdout);
    assert_eq!(c.details["state_files"], 1, "{}", r.stdout);
    assert_eq!(r.check("state_files").details["orphans"], 1, "{}", r.stdout);
    let db = TestDb::new("check_json_only");
    let p = sessiondb(&["preflight"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .run();
    let warned: Vec<_> = p
        .report
        .warnings
        .iter()
        .filter(|w| w.code == "orphan_state_file")
        .filter_map(|w| w.path.clone())
        .collect();
    assert!(
        warned.len() == 1 && warned[0].ends_with("nobody/state.json"),
        "{}",
        p.stdout
    );
}

/// The orphan state files named by a scan that takes the store's fingerprint as it goes
/// (a dry run's planning pass, verify: only the names no row fed are looked at again)
/// are the ones `check` finds by listing the folder, a folder name that is not UTF-8
/// among them; a JSON-only session's file and a folder without a state file are not
/// orphans.
#[test]
fn every_full_scan_names_the_same_orphans() {
    use std::os::unix::ffi::OsStrExt;
    let s = Store::new();
    s.session("a", r#"{"a": 1}"#);
    s.session("m", r#"{"m": 1}"#);
    s.state_file("b-orphan", br#"{"o": 1}"#);
    s.state_file("zz-orphan", br#"{"o": 2}"#);
    s.state_file("json-only", br#"{"j": 1}"#);
    std::fs::create_dir_all(s.sessions.join("no-state")).unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"odd-\xff");
    crate::support::write(&s.sessions.join(odd).join("state.json"), br#"{"o": 3}"#);
    s.json_store(r#"{"version": 1, "sessions": [{"id": "json-only", "user_id": "u", "status": "done", "current_step": "end", "cost": 1.5, "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"}]}"#);
    let orphans = |r: &crate::support::Run| -> Vec<String> {
        let mut v: Vec<String> = r
            .report
            .warnings
            .iter()
            .filter(|w| w.code == "orphan_state_file")
            .map(|w| match (&w.path, &w.path_hex) {
                (_, Some(hex)) => format!("hex:{hex}"),
                (Some(p), None) => p.clone(),
                (None, None) => panic!("an orphan without a path: {}", w.message),
            })
            .collect();
        v.sort();
        v
    };
    let check = sessiondb(&["check"]).config(&s.config).expect(exit::OK);
    let want = orphans(&check);
    assert_eq!(want.len(), 3, "{}", check.stdout);
    assert!(
        want.iter().any(|p| p.ends_with("b-orphan/state.json"))
            && want.iter().any(|p| p.ends_with("zz-orphan/state.json"))
            && want.iter().any(|p| p.starts_with("hex:")),
        "{want:?}"
    );
    let db = TestDb::new("check_orphans_alike");
    let dry = sessiondb(&["migrate-state"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(orphans(&dry), want, "{}", dry.stdout);
    sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let v = sessiondb(&["verify"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(orphans(&v), want, "{}", v.stdout);
    assert_eq!(
        (v.count("checked"), v.count("different"), v.count("missing")),
        (3, 0, 0),
        "{}",
        v.stdout
    );
    // The fingerprint the verification recorded, fed by its scan, is the store's as a
    // pass of its own takes it: set-default, which compares the two, stands on it.
    let sd = sessiondb(&["set-default"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert!(sd.report.errors.is_empty(), "{}", sd.stdout);
    assert_eq!(
        sd.check("verify").status,
        CheckStatus::Pass,
        "{}",
        sd.stdout
    );
}
