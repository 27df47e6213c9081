//! `[json.fields]` (SPEC §9): the deprecated JSON store's records read through the
//! config's mapping — minsky's `session-db.json`, a bare array whose records name their
//! id `session`, with camelCase keys, a nested `prState` and no `state` — by `check` and
//! `preflight`, loaded by `migrate-state` into SPEC §2's tables and verified, every
//! other key kept as the record's extra values and named.

use sessiondb::exit;

use crate::support::pg::TestDb;
use crate::support::{Run, TempDir, sessiondb, write};

const MINSKY: &str = r##"[
  {"session": "task-123", "repoName": "minsky", "repoUrl": "https://example.invalid/minsky.git",
   "createdAt": "2025-06-01T10:00:00.000Z", "taskId": "#123", "branch": "task#123",
   "prState": {"branchName": "pr/task#123", "exists": true, "lastChecked": "2025-06-02T00:00:00Z"}},
  {"session": "task-124", "repoName": "minsky", "createdAt": "2025-06-03T11:30:00.250Z",
   "taskId": "#124", "backendType": "github"}
]"##;

const FIELDS: &str = "[json.fields]\nid = \"session\"\ncreated_at = \"createdAt\"\nstate = \"\"\n";

/// A JSON-only store holding minsky's records, its config mapping them when `mapped`.
fn minsky(mapped: bool) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new();
    write(&dir.path().join("session-db.json"), MINSKY);
    let config = dir.path().join("sessiondb.toml");
    write(
        &config,
        format!(
            "[sessiondb]\nbackend = \"json\"\n\n[json]\npath = \"session-db.json\"\n\n{}[postgres]\nurl_env = \"DATABASE_URL\"\n\n[backup]\ndir = \"backups\"\n",
            if mapped { FIELDS } else { "" }
        ),
    );
    (dir, config)
}

fn check<'a>(r: &'a Run, id: &str) -> &'a sessiondb::report::Check {
    r.check(id)
}

#[test]
fn check_preflight_and_the_load_read_a_minsky_store_through_json_fields() {
    let (_dir, config) = minsky(true);
    let r = sessiondb(&["check", "--backend", "json", "--report"])
        .config(&config)
        .expect(exit::OK);
    let c = check(&r, "json_records");
    assert_eq!(
        (
            c.details["sessions"].as_u64(),
            c.details["invalid"].as_u64()
        ),
        (Some(2), Some(0)),
        "{}",
        r.stdout
    );
    let w = r.warning("json_extra_keys");
    for k in ["repoName", "taskId", "prState", "backendType"] {
        assert!(
            w.message.contains(&format!("\"{k}\"")),
            "{k}: {}",
            w.message
        );
    }

    let db = TestDb::new("json_fields_preflight");
    let p = sessiondb(&["preflight"])
        .config(&config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let js = check(&p, "source_json_store");
    assert!(
        js.summary.contains("2 records, 0 invalid"),
        "{}",
        js.summary
    );
    let plan = check(&p, "plan");
    assert!(
        plan.summary.starts_with("2 sessions: 2 to insert"),
        "{}",
        plan.summary
    );

    // And into SPEC §2's tables: `[json.fields]` says how the records are read, not
    // what the tables are.
    sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    sessiondb(&["verify"])
        .config(&config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let rows: Vec<(String, String)> = db
        .client()
        .query(
            "SELECT id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') FROM sessions ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        [
            ("task-123".to_owned(), "2025-06-01 10:00:00.000".to_owned()),
            ("task-124".to_owned(), "2025-06-03 11:30:00.250".to_owned()),
        ]
    );

    // The same store without the mapping: no record has an `id`, every one is invalid.
    let (_d2, plain) = minsky(false);
    let r = sessiondb(&["check", "--backend", "json", "--report"])
        .config(&plain)
        .expect(exit::PROBLEMS);
    assert_eq!(
        check(&r, "json_records").details["invalid"].as_u64(),
        Some(2),
        "{}",
        r.stdout
    );
}
