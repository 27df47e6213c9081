//! The runbook sequences (scripts behind the justfile) and `migrate to postgres`,
//! end to end against a throwaway PostgreSQL.

use std::process::Command;

use sessiondb::exit;

use crate::support::{TempDir, bin_path, pg::TestDb, sessiondb};

fn fixture(n: u32) -> (TempDir, std::path::PathBuf) {
    let d = TempDir::new();
    let out = d.path().join("store");
    sessiondb(&[
        "generate-fixture",
        "--out",
        out.to_str().unwrap(),
        "--sessions",
        &n.to_string(),
        "--seed",
        "3",
    ])
    .expect(exit::OK);
    (d, out.join("sessiondb.toml"))
}

fn script(
    name: &str,
    cfg: &std::path::Path,
    url: &str,
    run_dir: &std::path::Path,
) -> std::process::Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/").to_owned() + name)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SDB", bin_path("sessiondb"))
        .env("YES", "1")
        .env("SESSIONDB_CONFIG", cfg)
        .env("DATABASE_URL", url)
        .env("RUN_DIR", run_dir)
        .env_remove("SESSIONDB_REPORT_DIR")
        .output()
        .unwrap()
}

#[test]
fn prod_cutover_then_rollback_with_yes() {
    let (d, cfg) = fixture(300);
    let db = TestDb::new("runbook_cutover");
    let out = script("prod-cutover", &cfg, &db.url, &d.path().join("run1"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "prod-cutover failed:\n{err}");
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains("backend = \"postgres\"")
    );
    for step in [
        "check",
        "preflight",
        "backup",
        "migrate-bulk",
        "migrate-catch-up",
        "verify",
        "set-default",
    ] {
        assert!(err.contains(step), "summary names {step}:\n{err}");
    }
    // The application writes to PostgreSQL after the cutover.
    db.client()
        .batch_execute(
            "INSERT INTO sessions (id, status) VALUES ('after-cutover', 'running');
             INSERT INTO session_state (session_id, state, updated_at) VALUES ('after-cutover', '{\"k\": 1}', now());",
        )
        .unwrap();
    let out = script("rollback", &cfg, &db.url, &d.path().join("run2"));
    assert!(
        out.status.success(),
        "rollback failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("backend = \"sqlite\""), "{text}");
    let state = cfg
        .parent()
        .unwrap()
        .join("sessions/after-cutover/state.json");
    assert_eq!(std::fs::read_to_string(state).unwrap(), r#"{"k": 1}"#);
}

#[test]
fn a_failing_step_stops_the_sequence_with_a_reason() {
    let (d, cfg) = fixture(50);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = script(
        "stage-migrate",
        &cfg,
        &format!("postgresql://u:p4ssw0rd-x@127.0.0.1:{port}/x"),
        &d.path().join("run"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("✗ check failed") || err.contains("✗ preflight failed"),
        "{err}"
    );
    assert!(!err.contains("p4ssw0rd-x"));
    assert!(
        !err.contains("── backup"),
        "stops before the writing steps:\n{err}"
    );
}

#[test]
fn migrate_to_postgres_runs_every_step_in_one_report() {
    let (_d, cfg) = fixture(200);
    let db = TestDb::new("migrate_to");
    let dry = sessiondb(&["migrate", "to", "postgres"])
        .config(&cfg)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let steps: Vec<String> = dry.report.details["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(steps, ["preflight", "migrate-state"]);
    let tables: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "the dry run wrote nothing");
    let r = sessiondb(&[
        "migrate",
        "to",
        "postgres",
        "--dry-run=false",
        "--set-default",
    ])
    .config(&cfg)
    .env("DATABASE_URL", &db.url)
    .expect(exit::OK);
    let steps: Vec<String> = r.report.details["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        steps,
        [
            "preflight",
            "backup",
            "migrate-state",
            "verify",
            "set-default"
        ]
    );
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains("backend = \"postgres\"")
    );
    assert_eq!(r.count("inserted"), 200);
}
