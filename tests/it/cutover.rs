//! `verify`, `set-default` and `rollback` against a real PostgreSQL.

use sessiondb::exit;

use crate::support::store::Store;
use crate::support::{Cmd, pg::TestDb, sessiondb};

fn step(s: &Store, db: &TestDb, args: &[&str]) -> Cmd {
    sessiondb(args)
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
}

/// States that stress the comparison: duplicate keys, 1e2, 1.0, big integers, unicode
/// keys, deep nesting.
fn tricky_store() -> Store {
    let s = Store::new();
    let deep = format!("{}1{}", "[".repeat(3000), "]".repeat(3000));
    let docs = [
        r#"{"a": 1, "a": 2, "b": {"x": 1, "x": [1, 2]}}"#.to_owned(),
        r#"{"n": 1e2, "m": 1.0, "k": 1.50, "e": 1E-2}"#.to_owned(),
        r#"{"big": 123456789012345678901234567890, "neg": -0}"#.to_owned(),
        "{\"clé\": \"välue\", \"日本\": \"\\u00e9\\ud83d\\ude00\", \"emoji 😀\": true}".to_owned(),
        format!("{{\"deep\": {deep}}}"),
        "  [1, 2 , {\"z\":null}]  ".to_owned(),
    ];
    for (i, d) in docs.iter().enumerate() {
        s.session(&format!("t{i}"), d);
    }
    s
}

#[test]
fn verify_passes_on_an_exact_copy() {
    let s = tricky_store();
    let db = TestDb::new("verify_exact");
    step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    let r = step(&s, &db, &["verify"]).expect(exit::OK);
    assert_eq!(r.count("checked"), 6);
    for k in ["missing", "extra", "different", "drifted"] {
        assert_eq!(r.count(k), 0, "{k}: {}", r.stdout);
    }
    assert_eq!(
        r.check("gin_index").status,
        sessiondb::report::CheckStatus::Pass
    );
    let sample = step(&s, &db, &["verify", "--sample", "3"]).expect(exit::OK);
    assert_eq!(sample.count("checked"), 3);
}

#[test]
fn verify_finds_every_kind_of_difference() {
    let s = Store::new();
    for i in 0..6 {
        s.session(&format!("v{i}"), &format!("{{\"n\": {i}, \"x\": 1}}"));
    }
    let db = TestDb::new("verify_diffs");
    step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    let mut c = db.client();
    // A changed state, a changed metadata field, 1 → 1.0, a missing and an extra session.
    c.batch_execute(
        "UPDATE session_state SET state = '{\"n\": 0, \"x\": 2}' WHERE session_id = 'v0';
         UPDATE sessions SET status = 'tampered' WHERE id = 'v1';
         UPDATE session_state SET state = '{\"n\": 2, \"x\": 1.0}' WHERE session_id = 'v2';
         DELETE FROM sessions WHERE id = 'v3';
         INSERT INTO sessions (id) VALUES ('only-in-target');",
    )
    .unwrap();
    // And one session changed in the source since it was migrated.
    s.state_file("v4", br#"{"n": 4, "x": 1, "new": true}"#);
    let r = step(&s, &db, &["verify"]).expect(exit::PROBLEMS);
    assert_eq!(r.count("missing"), 1, "{}", r.stdout);
    assert_eq!(r.count("extra"), 1);
    assert_eq!(r.count("different"), 4);
    assert_eq!(r.count("drifted"), 1);
    let diffs = r.report.details["differences"].as_array().unwrap();
    let find = |id: &str| {
        diffs
            .iter()
            .find(|d| d["session"] == id)
            .unwrap_or_else(|| panic!("{id} not named: {}", r.stdout))
    };
    assert_eq!(find("v0")["path"], "$.x");
    assert_eq!(find("v1")["field"], "status");
    assert_eq!(find("v2")["path"], "$.x", "1 and 1.0 are different texts");
    assert_eq!(find("v3")["kind"], "missing");
    assert_eq!(find("only-in-target")["kind"], "extra");
    assert_eq!(find("v4")["kind"], "drifted");
    assert!(
        r.report
            .next_steps
            .iter()
            .any(|n| n.contains("migrate-state"))
    );
}

/// Verify compares batches on several connections at once (`COMPARERS`): differences
/// in many batches are all found, counted once, and listed in the scan's order.
#[test]
fn verify_over_many_batches_finds_each_difference_once_in_the_scan_order() {
    let s = Store::new();
    s.bulk(5500, 60);
    let db = TestDb::new("verify_batches");
    step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    let mut c = db.client();
    // One difference in each of six batches of 1000, and two more in the last.
    let changed = [
        "k0000007", "k0001500", "k0002999", "k0003000", "k0004001", "k0005002", "k0005498",
    ];
    for id in &changed {
        c.execute(
            "UPDATE session_state SET state = '{\"tampered\": true}' WHERE session_id = $1",
            &[id],
        )
        .unwrap();
    }
    c.execute("DELETE FROM sessions WHERE id = 'k0002000'", &[])
        .unwrap();
    let r = step(&s, &db, &["verify"]).expect(exit::PROBLEMS);
    assert_eq!(r.count("checked"), 5500, "{}", r.stdout);
    assert_eq!(r.count("different"), changed.len() as u64, "{}", r.stdout);
    assert_eq!(r.count("missing"), 1);
    let named: Vec<&str> = r.report.details["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["session"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = changed.to_vec();
    expected.push("k0002000");
    expected.sort();
    assert_eq!(named, expected, "each once, in the scan's (id) order");
}

#[test]
fn set_default_refuses_without_a_passed_verify_and_keeps_comments() {
    let s = tricky_store();
    let db = TestDb::new("set_default");
    step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    let before = std::fs::read_to_string(&s.config).unwrap();
    let r = step(&s, &db, &["set-default", "--dry-run=false"]).expect(exit::PROBLEMS);
    assert!(r.has_error("verify_required"), "{}", r.stdout);
    assert_eq!(std::fs::read_to_string(&s.config).unwrap(), before);
    step(&s, &db, &["verify"]).expect(exit::OK);
    let dry = step(&s, &db, &["set-default"]).expect(exit::OK);
    assert_eq!(
        dry.report.details["diff"][1],
        "+backend = \"postgres\"  # the application's backend"
    );
    assert_eq!(
        std::fs::read_to_string(&s.config).unwrap(),
        before,
        "a dry run writes nothing"
    );
    let r = step(&s, &db, &["set-default", "--dry-run=false"]).expect(exit::OK);
    let after = std::fs::read_to_string(&s.config).unwrap();
    assert_eq!(
        after,
        before.replace("backend = \"sqlite\"", "backend = \"postgres\""),
        "only the value changes, comments kept byte for byte"
    );
    assert!(r.report.next_steps.iter().any(|n| n.contains("rollback")));
    let again = step(&s, &db, &["set-default", "--dry-run=false"]).expect(exit::OK);
    assert_eq!(again.count("changed"), 0);
    let cutovers: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM sessiondb_cutovers WHERE kind = 'set_default'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cutovers, 1);
}

#[test]
fn rollback_brings_back_every_session_written_in_postgres() {
    let s = tricky_store();
    let db = TestDb::new("rollback");
    step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    step(&s, &db, &["verify"]).expect(exit::OK);
    step(&s, &db, &["set-default", "--dry-run=false"]).expect(exit::OK);
    // The application, now on PostgreSQL, creates a session and edits two.
    db.client()
        .batch_execute(
            "INSERT INTO sessions (id, user_id, status, cost, created_at, updated_at) VALUES ('new-in-pg', 'u9', 'running', 1.25, '2025-01-01T00:00:00Z', '2025-01-01T00:00:01.5Z');
             INSERT INTO session_state (session_id, state, updated_at) VALUES ('new-in-pg', '{\"made\": \"in postgres\"}', now());
             UPDATE sessions SET status = 'done' WHERE id = 't0';
             UPDATE session_state SET state = '{\"edited\": 1}' WHERE session_id = 't1';",
        )
        .unwrap();
    let dry = step(&s, &db, &["rollback"]).expect(exit::OK);
    assert_eq!(
        (dry.count("created"), dry.count("changed")),
        (1, 2),
        "{}",
        dry.stdout
    );
    let r = step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::OK);
    assert_eq!(r.count("exported"), 3, "{}", r.stdout);
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    assert!(
        cfg.contains("backend = \"sqlite\"  # the application's backend"),
        "{cfg}"
    );
    assert_eq!(
        std::fs::read_to_string(s.sessions.join("new-in-pg/state.json")).unwrap(),
        r#"{"made": "in postgres"}"#
    );
    assert_eq!(
        std::fs::read_to_string(s.sessions.join("t1/state.json")).unwrap(),
        r#"{"edited": 1}"#
    );
    let status: String = s
        .conn()
        .query_row("SELECT status FROM sessions WHERE id = 't0'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(status, "done");
    // The legacy store now matches PostgreSQL exactly, and a second rollback changes nothing.
    let v = step(&s, &db, &["verify"]).expect(exit::OK);
    assert_eq!(
        v.count("different") + v.count("missing") + v.count("extra"),
        0,
        "{}",
        v.stdout
    );
    let again = step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::OK);
    assert_eq!(again.count("exported"), 0);
}

#[test]
fn a_session_written_during_the_rollback_is_exported_or_the_rollback_refuses() {
    let s = Store::new();
    s.bulk(3000, 600);
    let db = TestDb::new("rollback_during_writes");
    step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    step(&s, &db, &["verify"]).expect(exit::OK);
    step(&s, &db, &["set-default", "--dry-run=false"]).expect(exit::OK);
    // The application keeps writing new sessions to PostgreSQL while the rollback runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = db.url.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = format!("live-{n:05}");
                c.batch_execute(&format!(
                    "INSERT INTO sessions (id, status) VALUES ('{id}', 'running');
                     INSERT INTO session_state (session_id, state, updated_at) VALUES ('{id}', '{{\"n\": {n}}}', now());"
                ))
                .unwrap();
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let during = step(&s, &db, &["rollback", "--dry-run=false"]).run();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.join().unwrap();
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    if during.code == exit::OK {
        assert!(cfg.contains("backend = \"sqlite\""));
    } else {
        // Refused, saying why, and the config still points at PostgreSQL.
        assert!(during.has_error("still_writing"), "{}", during.stdout);
        assert!(
            cfg.contains("backend = \"postgres\""),
            "a refused rollback leaves the config alone"
        );
    }
    // With the writes stopped, a rollback (again) brings every one of them back.
    step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::OK);
    assert!(
        std::fs::read_to_string(&s.config)
            .unwrap()
            .contains("backend = \"sqlite\"")
    );
    for n in 0..written {
        let p = s.sessions.join(format!("live-{n:05}")).join("state.json");
        let text = std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("live-{n:05} was lost"));
        assert_eq!(text, format!("{{\"n\": {n}}}"));
    }
    let v = step(&s, &db, &["verify"]).expect(exit::OK);
    assert_eq!(
        v.count("missing") + v.count("extra") + v.count("different"),
        0
    );
    eprintln!(
        "{written} sessions written during the rollback; first rollback exit {}",
        during.code
    );
}
