//! Right advice (issue 15): warnings judged against the state a step leaves, and
//! `next_steps` that are true for it. Against a real PostgreSQL.

use sessiondb::exit;
use sessiondb::report::CheckStatus;

use crate::support::store::Store;
use crate::support::{Cmd, Run, pg::TestDb, sessiondb};

fn step(s: &Store, db: &TestDb, args: &[&str]) -> Cmd {
    sessiondb(args)
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
}

fn store_with(n: usize) -> Store {
    let s = Store::new();
    for i in 0..n {
        s.session(&format!("s{i:03}"), &format!("{{\"n\": {i}}}"));
    }
    s
}

fn drift_warnings(r: &Run) -> Vec<&str> {
    r.report
        .warnings
        .iter()
        .filter(|w| w.code == "backend_drift")
        .map(|w| w.message.as_str())
        .collect()
}

fn config_says(s: &Store, backend: &str) -> bool {
    std::fs::read_to_string(&s.config)
        .unwrap()
        .contains(&format!("backend = \"{backend}\""))
}

#[test]
fn backend_drift_is_judged_against_the_config_as_the_step_leaves_it() {
    let s = store_with(4);
    let db = TestDb::new("adv_drift");
    step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    // Before the cutover the config says sqlite while DATABASE_URL is PostgreSQL: true.
    let v = step(&s, &db, &["verify"]).expect(exit::OK);
    assert_eq!(drift_warnings(&v).len(), 1, "{}", v.stdout);
    // set-default leaves the config on postgres: no drift left to warn about.
    let r = step(&s, &db, &["set-default", "--dry-run=false"]).expect(exit::OK);
    assert!(config_says(&s, "postgres"));
    assert_eq!(drift_warnings(&r), Vec::<&str>::new(), "{}", r.stdout);
    // The umbrella, whose steps began on sqlite and ended on postgres, says the same.
    let s = store_with(4);
    let db = TestDb::new("adv_drift_umbrella");
    let r = step(
        &s,
        &db,
        &[
            "migrate",
            "to",
            "postgres",
            "--dry-run=false",
            "--set-default",
        ],
    )
    .expect(exit::OK);
    assert!(config_says(&s, "postgres"));
    assert_eq!(drift_warnings(&r), Vec::<&str>::new(), "{}", r.stdout);
    // A rollback leaves the config on sqlite while DATABASE_URL still says PostgreSQL:
    // that drift is real, and named against the config as it is now.
    let r = step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::OK);
    assert!(config_says(&s, "sqlite"));
    let w = drift_warnings(&r);
    assert_eq!(w.len(), 1, "{}", r.stdout);
    assert!(w[0].contains("says backend = \"sqlite\""), "{w:?}");
}

#[test]
fn verify_advice_follows_the_cutover_state() {
    let s = store_with(4);
    let db = TestDb::new("adv_verify");
    step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    let v = step(&s, &db, &["verify"]).expect(exit::OK);
    assert_eq!(v.report.next_steps, ["set-default --dry-run=false"]);
    step(&s, &db, &["set-default", "--dry-run=false"]).expect(exit::OK);
    // After the cutover: smoke-test and monitor, not set-default again.
    let v = step(&s, &db, &["verify"]).expect(exit::OK);
    let steps = v.report.next_steps.join("\n");
    assert!(!steps.contains("set-default"), "{steps}");
    assert!(
        steps.contains("--smoke-url") && steps.contains("monitor"),
        "{steps}"
    );
    // After a rollback: restart the application on SQLite.
    step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::OK);
    let v = step(&s, &db, &["verify"]).expect(exit::OK);
    assert!(
        v.report.next_steps[0].contains("restart the application on sqlite"),
        "{:?}",
        v.report.next_steps
    );
    assert!(
        !v.report
            .next_steps
            .iter()
            .any(|n| n.starts_with("set-default")),
        "{:?}",
        v.report.next_steps
    );
}

#[test]
fn set_default_before_any_load_says_to_run_migrate_state_first() {
    let s = store_with(2);
    let db = TestDb::new("adv_set_default_first");
    let r = step(&s, &db, &["set-default", "--dry-run=false"]).expect(exit::PROBLEMS);
    assert!(r.has_error("verify_required"), "{}", r.stdout);
    assert!(
        r.report.next_steps[0].starts_with("migrate-state --dry-run=false"),
        "{:?}",
        r.report.next_steps
    );
    assert!(
        r.check("verify").summary.contains("nothing was migrated"),
        "{}",
        r.stdout
    );
    // Loaded but not verified: then verify is the step.
    step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    let r = step(&s, &db, &["set-default", "--dry-run=false"]).expect(exit::PROBLEMS);
    assert!(
        r.report.next_steps[0].starts_with("verify"),
        "{:?}",
        r.report.next_steps
    );
}

#[test]
fn preflight_judges_uniqueness_only_for_unique_columns() {
    // Every session has user_id "user-1" and current_step "plan".
    let s = store_with(5);
    let db = TestDb::new("adv_unique");
    db.client()
        .batch_execute(
            "CREATE TABLE users (id text PRIMARY KEY); INSERT INTO users VALUES ('user-1');
             CREATE TABLE sessions (id text PRIMARY KEY, user_id text REFERENCES users(id), status text, current_step text,
                                    cost double precision, created_at timestamptz, updated_at timestamptz, state jsonb);
             CREATE INDEX sessions_user_id ON sessions (user_id);",
        )
        .unwrap();
    let r = step(&s, &db, &["preflight"]).expect(exit::OK);
    assert_eq!(
        r.check("constraints").status,
        CheckStatus::Pass,
        "{}",
        r.stdout
    );
    // A unique column with repeated values is still a problem.
    db.client()
        .batch_execute("CREATE UNIQUE INDEX sessions_step ON sessions (current_step)")
        .unwrap();
    let r = step(&s, &db, &["preflight"]).expect(exit::PROBLEMS);
    let c = r.check("constraints");
    assert!(
        c.summary.contains("sessions.current_step is unique") && !c.summary.contains("user_id"),
        "{}",
        c.summary
    );
}

#[test]
fn duplicate_gin_indexes_on_the_state_column_are_warned() {
    let s = store_with(3);
    let db = TestDb::new("adv_gin_dup");
    step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    db.client()
        .batch_execute(
            "CREATE INDEX app_state_idx ON session_state USING gin (state jsonb_path_ops)",
        )
        .unwrap();
    let c = sessiondb(&["check", "--backend", "postgres"])
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let p = step(&s, &db, &["preflight"]).expect(exit::OK);
    for r in [&c, &p] {
        let w = r.warning("duplicate_gin_index");
        assert!(
            w.message.contains("app_state_idx") && w.message.contains("session_state_state_gin"),
            "{w:?}"
        );
    }
}
