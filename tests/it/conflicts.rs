//! Dead ends of issue 15 against a real PostgreSQL: a target row changed behind
//! sessiondb's back is a conflict whether or not its source changed (SPEC §4), an old
//! ledger keeps working and `--recheck` trusts nothing, and what preflight calls
//! incompatible migrate-state refuses before its first write (SPEC §9). Each test adds
//! a row to the `just faults` table.

use sessiondb::exit;

use crate::faults::row;
use crate::support::store::Store;
use crate::support::{Cmd, Run, pg::TestDb, sessiondb};

fn step(s: &Store, db: &TestDb, args: &[&str]) -> Cmd {
    sessiondb(args)
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
}

fn migrate(s: &Store, db: &TestDb, args: &[&str]) -> Run {
    let mut a = vec!["migrate-state"];
    a.extend_from_slice(args);
    step(s, db, &a).run()
}

fn store_with(n: usize) -> Store {
    let s = Store::new();
    for i in 0..n {
        s.session(
            &format!("s{i:05}"),
            &format!("{{\"n\": {i}, \"pct\": 1.50}}"),
        );
    }
    s
}

/// Stamps are trusted only for files older than two seconds (the racy-stamp rule).
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(2100));
}

fn one(db: &TestDb, sql: &str) -> Option<String> {
    db.client()
        .query_opt(sql, &[])
        .unwrap()
        .and_then(|r| r.get(0))
}

fn state_of(db: &TestDb, id: &str) -> Option<String> {
    one(
        db,
        &format!("SELECT state::text FROM session_state WHERE session_id = '{id}'"),
    )
}

fn status_of(db: &TestDb, id: &str) -> Option<String> {
    one(
        db,
        &format!("SELECT status FROM sessions WHERE id = '{id}'"),
    )
}

/// The sessions a report names as conflicts (planned, or skipped by the load).
fn named(r: &Run, key: &str) -> Vec<String> {
    let mut v: Vec<String> = r.report.details[key]
        .as_array()
        .unwrap_or_else(|| panic!("no details.{key}: {}", r.stdout))
        .iter()
        .map(|c| c["session"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn assert_exit(r: &Run, code: i32) {
    assert_eq!(r.code, code, "{}\n{}", r.stdout, r.stderr);
}

#[test]
fn a_target_row_changed_behind_sessiondbs_back_is_a_conflict_though_its_source_is_unchanged() {
    let s = store_with(6);
    settle();
    let db = TestDb::new("cf_target_edit");
    assert_exit(&migrate(&s, &db, &["--dry-run=false"]), exit::OK);
    // Behind sessiondb's back: a state edited, a metadata field edited, a state row
    // deleted, and a state rewritten with the very same value (not a conflict).
    db.client()
        .batch_execute(
            "UPDATE session_state SET state = '{\"app\": \"wrote this\"}' WHERE session_id = 's00001';
             UPDATE sessions SET status = 'edited by hand' WHERE id = 's00002';
             DELETE FROM session_state WHERE session_id = 's00004';
             UPDATE session_state SET state = state WHERE session_id = 's00003';",
        )
        .unwrap();
    let changed = ["s00001", "s00002", "s00004"];
    let app_state = r#"{"app": "wrote this"}"#;

    // The dry run and the real run name the same conflicts with the same code.
    for args in [&[][..], &["--dry-run=false"][..]] {
        let r = migrate(&s, &db, args);
        assert_exit(&r, exit::PROBLEMS);
        assert!(r.has_error("conflict"), "{}", r.stdout);
        assert_eq!(r.count("conflicts"), 3, "{}", r.stdout);
        assert_eq!(named(&r, "conflicts"), changed, "{}", r.stdout);
    }
    assert_eq!(state_of(&db, "s00001").as_deref(), Some(app_state));
    assert_eq!(status_of(&db, "s00002").as_deref(), Some("edited by hand"));

    // skip leaves them as they are.
    let r = migrate(&s, &db, &["--dry-run=false", "--on-conflict", "skip"]);
    assert_exit(&r, exit::OK);
    assert_eq!((r.count("conflicts"), r.count("updated")), (3, 0));
    assert_eq!(named(&r, "skipped_conflicts"), changed, "{}", r.stdout);
    // The first load recorded the versions of every row it wrote (else every row would
    // have moved, and been judged by its content): only the four touched rows moved,
    // and the one rewritten as it was is recorded anew.
    assert_eq!(
        r.report.details["row_versions"],
        serde_json::json!({"learned": 0, "rewritten_as_they_were": 1, "changed_in_target": 3}),
        "{}",
        r.stdout
    );
    assert_eq!(state_of(&db, "s00001").as_deref(), Some(app_state));
    assert_eq!(state_of(&db, "s00004"), None);

    // verify sees the differences and names the repair.
    let v = step(&s, &db, &["verify"]).run();
    assert_exit(&v, exit::PROBLEMS);
    assert_eq!(v.count("different"), 3, "{}", v.stdout);
    assert!(
        v.report
            .next_steps
            .iter()
            .any(|n| n.contains("migrate-state --dry-run=false --on-conflict source-wins")),
        "{:?}",
        v.report.next_steps
    );

    // source-wins rewrites them from the source, reading only those three again.
    let r = migrate(
        &s,
        &db,
        &["--dry-run=false", "--on-conflict", "source-wins"],
    );
    assert_exit(&r, exit::OK);
    assert_eq!(r.count("conflicts"), 3, "{}", r.stdout);
    assert_eq!(
        r.report.details["unchanged_by_stamp"], 3,
        "only the conflicting sessions' sources are read: {}",
        r.stdout
    );
    assert_eq!(
        state_of(&db, "s00001").as_deref(),
        Some(r#"{"n": 1, "pct": 1.50}"#)
    );
    assert_eq!(status_of(&db, "s00002").as_deref(), Some("running"));
    assert!(state_of(&db, "s00004").is_some());

    // Then nothing is left to do, and the copy verifies.
    let r = migrate(&s, &db, &["--dry-run=false"]);
    assert_exit(&r, exit::OK);
    assert_eq!(
        (
            r.count("conflicts"),
            r.count("updated"),
            r.count("unchanged")
        ),
        (0, 0, 6),
        "{}",
        r.stdout
    );
    assert_eq!(r.report.details["unchanged_by_stamp"], 6, "{}", r.stdout);
    assert_eq!(
        r.report.details["row_versions"],
        serde_json::json!({"learned": 0, "rewritten_as_they_were": 0, "changed_in_target": 0}),
        "the upserts recorded the versions they wrote: {}",
        r.stdout
    );
    let dry = migrate(&s, &db, &[]);
    assert!(
        dry.report.next_steps[0].starts_with("nothing to write"),
        "{:?}",
        dry.report.next_steps
    );
    let v = step(&s, &db, &["verify"]).run();
    assert_exit(&v, exit::OK);
    row(
        "target rows changed by hand (3 of 6; a 4th rewritten identically)",
        "migrate-state: dry run, fail, skip, source-wins",
        "3 conflicts named by each (exit 1, 1, 0, 0)",
        "skip kept 3, source-wins rewrote 3 reading only them; verify passes",
    );
}

#[test]
fn a_ledger_from_before_row_versions_keeps_working_and_recheck_trusts_nothing() {
    let s = store_with(5);
    settle();
    let db = TestDb::new("cf_old_ledger");
    assert_exit(&migrate(&s, &db, &["--dry-run=false"]), exit::OK);
    // As a ledger written before schema version 2: no row versions recorded. And a
    // target row edited by hand while it was so.
    db.client()
        .batch_execute(
            "ALTER TABLE sessiondb_ledger DROP COLUMN sessions_xmin, DROP COLUMN state_xmin;
             DELETE FROM sessiondb_schema_versions WHERE version = 2;
             UPDATE session_state SET state = '{\"edited\": 1}' WHERE session_id = 's00002';",
        )
        .unwrap();
    // The catch-up works; it cannot know what happened before the versions were kept,
    // and says so.
    let dry = migrate(&s, &db, &[]);
    assert_exit(&dry, exit::OK);
    assert!(dry.has_warning("row_versions_unknown"), "{}", dry.stdout);
    let r = migrate(&s, &db, &["--dry-run=false"]);
    assert_exit(&r, exit::OK);
    assert!(r.has_warning("row_versions_unknown"), "{}", r.stdout);
    assert_eq!(r.report.details["schema_applied"][0], 2, "{}", r.stdout);
    let unknown = one(
        &db,
        "SELECT count(*)::text FROM sessiondb_ledger WHERE sessions_xmin IS NULL",
    );
    assert_eq!(unknown.as_deref(), Some("0"), "the versions were learned");
    // From now on a change is seen.
    db.client()
        .batch_execute("UPDATE sessions SET current_step = 'hand' WHERE id = 's00003'")
        .unwrap();
    let r = migrate(&s, &db, &[]);
    assert_exit(&r, exit::PROBLEMS);
    assert_eq!(named(&r, "conflicts"), ["s00003"], "{}", r.stdout);
    // --recheck compares everything, whatever the stamps and the versions say.
    let r = migrate(&s, &db, &["--recheck"]);
    assert_exit(&r, exit::PROBLEMS);
    assert_eq!(named(&r, "conflicts"), ["s00002", "s00003"], "{}", r.stdout);
    assert_eq!(r.report.details["unchanged_by_stamp"], 0, "{}", r.stdout);
    let r = migrate(
        &s,
        &db,
        &[
            "--dry-run=false",
            "--recheck",
            "--on-conflict",
            "source-wins",
        ],
    );
    assert_exit(&r, exit::OK);
    assert_eq!(r.count("conflicts"), 2, "{}", r.stdout);
    assert_exit(&step(&s, &db, &["verify"]).run(), exit::OK);
    row(
        "ledger of schema v1 (no row versions), a row edited then",
        "migrate-state, then --recheck --on-conflict source-wins",
        "catch-up ok, warns row_versions_unknown; recheck: 2 conflicts",
        "versions learned; repaired; verify passes",
    );
}

/// The application's `sessions`, with some columns of other types.
const APP_SESSIONS: &str = "CREATE TABLE sessions (id text PRIMARY KEY, user_id text, status text, current_step text, cost double precision, created_at timestamptz, updated_at timestamptz, state jsonb)";

fn backups(s: &Store) -> usize {
    std::fs::read_dir(s.root().join("backups")).map_or(0, |d| d.count())
}

#[test]
fn a_target_that_preflight_calls_incompatible_is_refused_before_any_write() {
    let s = store_with(20);
    let db = TestDb::new("cf_incompatible");
    db.client()
        .batch_execute(
            &APP_SESSIONS
                .replace("cost double precision", "cost text")
                .replace("created_at timestamptz", "created_at text"),
        )
        .unwrap();
    let pf = step(&s, &db, &["preflight"]).run();
    assert_exit(&pf, exit::PROBLEMS);
    assert!(pf.has_error("schema_mismatch"), "{}", pf.stdout);
    for args in [
        &["--batch-size", "5"][..],
        &["--dry-run=false", "--batch-size", "5"],
    ] {
        let r = migrate(&s, &db, args);
        assert_exit(&r, exit::PROBLEMS);
        let e = r.error("schema_mismatch");
        assert!(
            e.message.contains("sessions.cost") && e.message.contains("sessions.created_at"),
            "{e:?}"
        );
    }
    let rows = one(&db, "SELECT count(*)::text FROM sessions");
    assert_eq!(rows.as_deref(), Some("0"), "nothing written");
    assert_eq!(
        one(&db, "SELECT to_regclass('sessiondb_schema_versions')::text"),
        None,
        "no schema version recorded as applied"
    );
    assert_eq!(backups(&s), 0, "refused before the backup");
    row(
        "target sessions.cost and created_at of type text",
        "preflight, migrate-state dry and real",
        "schema_mismatch naming both columns (exit 1 each)",
        "0 rows written, no schema version, no backup",
    );
}

#[test]
fn a_not_null_column_the_source_leaves_empty_is_refused_before_the_first_batch() {
    let s = store_with(9);
    s.row(
        &"s99999",
        &rusqlite::types::Null,
        &"new",
        &"start",
        &0.0,
        &"2024-03-01T10:00:00Z",
        &"2024-03-01T10:00:00Z",
        &rusqlite::types::Null,
    );
    let db = TestDb::new("cf_not_null");
    db.client()
        .batch_execute(&APP_SESSIONS.replace("user_id text", "user_id text NOT NULL"))
        .unwrap();
    for args in [
        &["--batch-size", "2"][..],
        &["--dry-run=false", "--batch-size", "2"],
    ] {
        let r = migrate(&s, &db, args);
        assert_exit(&r, exit::PROBLEMS);
        let e = r.error("constraint");
        assert!(
            e.message.contains("sessions.user_id is NOT NULL") && e.message.contains("s99999"),
            "{e:?}"
        );
    }
    assert_eq!(
        one(&db, "SELECT count(*)::text FROM sessions").as_deref(),
        Some("0"),
        "no batch was written"
    );
    row(
        "target sessions.user_id NOT NULL, one source session without it",
        "migrate-state dry and real, batches of 2",
        "constraint naming the session (exit 1 each)",
        "0 of 10 rows written",
    );
}

#[test]
fn verify_matches_sessions_whose_target_id_column_pads_them() {
    // A `character(n)` id column holds each id padded with spaces, equal to the id as
    // text: verify finds every session, none missing and none extra.
    let s = store_with(3);
    let db = TestDb::new("cf_verify_char_id");
    assert_exit(&migrate(&s, &db, &["--dry-run=false"]), exit::OK);
    db.client()
        .batch_execute(
            "ALTER TABLE session_state DROP CONSTRAINT session_state_session_id_fkey;
             ALTER TABLE sessions ALTER COLUMN id TYPE character(80);
             ALTER TABLE session_state ALTER COLUMN session_id TYPE character(80);
             ALTER TABLE session_state ADD FOREIGN KEY (session_id) REFERENCES sessions(id) ON DELETE CASCADE",
        )
        .unwrap();
    let v = step(&s, &db, &["verify"]).run();
    assert_exit(&v, exit::OK);
    assert_eq!(v.count("missing"), 0, "{}", v.stdout);
    assert_eq!(v.count("extra"), 0, "{}", v.stdout);
    assert_eq!(v.count("checked"), v.count("sessions"), "{}", v.stdout);
    assert!(v.count("checked") >= 3, "{}", v.stdout);
    // The ALTER rewrote every row, so a catch-up reads them back: padded, they are
    // still what sessiondb wrote, neither conflicts nor rewritten.
    let r = migrate(&s, &db, &["--dry-run=false"]);
    assert_exit(&r, exit::OK);
    assert_eq!(r.count("conflicts"), 0, "{}", r.stdout);
    assert_eq!(r.count("updated"), 0, "{}", r.stdout);
    assert_eq!(r.count("inserted"), 0, "{}", r.stdout);
    assert_eq!(r.count("unchanged"), v.count("checked"), "{}", r.stdout);
}

#[test]
fn verify_names_a_target_column_it_cannot_read() {
    let s = store_with(3);
    let db = TestDb::new("cf_verify_decode");
    assert_exit(&migrate(&s, &db, &["--dry-run=false"]), exit::OK);
    db.client()
        .batch_execute("ALTER TABLE sessions ALTER COLUMN cost TYPE text")
        .unwrap();
    let v = step(&s, &db, &["verify"]).run();
    assert_exit(&v, exit::PROBLEMS);
    assert!(!v.has_error("internal_error"), "{}", v.stdout);
    let e = v.error("schema_mismatch");
    assert!(e.message.contains("sessions.cost"), "{e:?}");
    // And a catch-up refuses it the same way, before writing.
    let r = migrate(&s, &db, &["--dry-run=false"]);
    assert_exit(&r, exit::PROBLEMS);
    assert!(r.has_error("schema_mismatch"), "{}", r.stdout);
    // A type that holds the values (real, numeric; a naive timestamp) is read as one.
    db.client()
        .batch_execute(
            "ALTER TABLE sessions ALTER COLUMN cost TYPE numeric USING cost::numeric;
             ALTER TABLE sessions ALTER COLUMN created_at TYPE timestamp USING created_at AT TIME ZONE 'UTC'",
        )
        .unwrap();
    let v = step(&s, &db, &["verify"]).run();
    assert_exit(&v, exit::OK);
    row(
        "target column changed to text after a load",
        "verify, migrate-state",
        "schema_mismatch naming sessions.cost (exit 1), never internal_error",
        "numeric and naive timestamp columns verify",
    );
}
