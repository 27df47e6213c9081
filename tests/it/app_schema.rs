//! Issue 17 / SPEC §9: an application's own schema migrated as the application made it
//! (`generate-fixture --schema app`: agent_council's users + sessions, state in the
//! files), the config proposed by `init`, every step run on it: (a) into an empty
//! target, which sessiondb creates; (b) into the tables the application created first
//! on PostgreSQL, then a catch-up that rewrites only what changed; (d) into targets
//! that cannot take the data, refused before anything is written or recorded. The
//! application's own queries then read back, on both sides, the same values.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::NaiveDateTime;
use sessiondb::exit;
use sessiondb::report::CheckStatus;

use crate::support::pg::TestDb;
use crate::support::{Cmd, Run, TempDir, sessiondb};

/// The application's tables as its ORM creates them on PostgreSQL (issue 17).
const APP_PG_DDL: &str = "
    CREATE TABLE users (id varchar PRIMARY KEY, external_id varchar NOT NULL UNIQUE,
      display_name varchar, created_at timestamp without time zone NOT NULL,
      updated_at timestamp without time zone NOT NULL);
    CREATE TABLE sessions (id varchar PRIMARY KEY, user_id varchar NOT NULL REFERENCES users(id),
      question text NOT NULL, current_step varchar NOT NULL, status varchar NOT NULL,
      created_at timestamp without time zone NOT NULL,
      updated_at timestamp without time zone NOT NULL, is_deleted boolean NOT NULL,
      last_cost_usd double precision, last_total_tokens integer);
    CREATE TABLE session_state (session_id varchar PRIMARY KEY, state jsonb NOT NULL,
      updated_at timestamp without time zone NOT NULL);
    CREATE INDEX ix_session_state_state_gin ON session_state USING gin (state);
";

/// The application's store with `n` sessions, its config the one `init` proposes.
struct App {
    _dir: TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl App {
    fn new(n: &str, db: Option<&TestDb>) -> App {
        let dir = TempDir::new();
        let root = dir.path().join("store");
        sessiondb(&[
            "generate-fixture",
            "--schema",
            "app",
            "--sessions",
            n,
            "--seed",
            "17",
        ])
        .arg("--out")
        .arg(&root)
        .expect(exit::OK);
        std::fs::remove_file(root.join("sessiondb.toml")).unwrap();
        let mut init = sessiondb(&["init"]).cwd(&root);
        if let Some(db) = db {
            init = init.env("DATABASE_URL", &db.url);
        }
        init.expect(exit::OK);
        let config = root.join("sessiondb.toml");
        assert!(config.is_file(), "init wrote its proposal");
        App {
            _dir: dir,
            root,
            config,
        }
    }

    fn step(&self, db: &TestDb, args: &[&str]) -> Cmd {
        sessiondb(args)
            .config(&self.config)
            .env("DATABASE_URL", &db.url)
    }

    fn db_path(&self) -> PathBuf {
        self.root.join("data/app.db")
    }

    /// The sessions' ids in the source's order.
    fn session_ids(&self) -> Vec<String> {
        let conn = self.read_db();
        let mut st = conn.prepare("SELECT id FROM sessions ORDER BY id").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// How many users the source holds.
    fn users(&self) -> i64 {
        self.read_db()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap()
    }

    /// Read-only, as a reader that changes nothing of the store's fingerprint.
    fn read_db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }
}

/// One session as the application reads it: joined to its owner.
#[derive(Debug, Clone, PartialEq)]
struct AppRow {
    user_id: String,
    external_id: String,
    display_name: Option<String>,
    question: String,
    current_step: String,
    status: String,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    is_deleted: bool,
    last_cost_usd: Option<f64>,
    last_total_tokens: Option<i64>,
    /// As jsonb prints it (the state file's text cast by PostgreSQL on the SQLite side).
    state: Option<String>,
}

const APP_QUERY: &str = "SELECT s.id, s.user_id, u.external_id, u.display_name, s.question,
    s.current_step, s.status, s.created_at, s.updated_at, s.is_deleted, s.last_cost_usd,
    s.last_total_tokens FROM sessions s JOIN users u ON u.id = s.user_id";

fn naive(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// What SQLite (and the state files) hold, as the application reads it there; each
/// state file's JSON as jsonb has it (cast by PostgreSQL, not by sessiondb).
fn sqlite_side(app: &App, db: &TestDb) -> BTreeMap<String, AppRow> {
    let mut pg = db.client();
    let conn = app.read_db();
    let mut stmt = conn.prepare(APP_QUERY).unwrap();
    let rows = stmt
        .query_map([], |r| {
            let id: String = r.get(0)?;
            let created: String = r.get(7)?;
            let updated: String = r.get(8)?;
            let deleted: i64 = r.get(9)?;
            Ok((
                id,
                AppRow {
                    user_id: r.get(1)?,
                    external_id: r.get(2)?,
                    display_name: r.get(3)?,
                    question: r.get(4)?,
                    current_step: r.get(5)?,
                    status: r.get(6)?,
                    created_at: naive(&created),
                    updated_at: naive(&updated),
                    is_deleted: deleted != 0,
                    last_cost_usd: r.get(10)?,
                    last_total_tokens: r.get(11)?,
                    state: None,
                },
            ))
        })
        .unwrap();
    let mut out = BTreeMap::new();
    for row in rows {
        let (id, mut row) = row.unwrap();
        let f = app.root.join("sessions").join(&id).join("state.json");
        row.state = std::fs::read_to_string(&f).ok().map(|text| {
            pg.query_one("SELECT $1::text::jsonb::text", &[&text])
                .unwrap()
                .get(0)
        });
        out.insert(id, row);
    }
    out
}

/// What PostgreSQL holds, read with the application's own query and types.
fn pg_side(db: &TestDb) -> BTreeMap<String, AppRow> {
    let mut c = db.client();
    let sql = format!(
        "SELECT q.*, st.state::text FROM ({}) q LEFT JOIN session_state st ON st.session_id = q.id",
        APP_QUERY.replace(
            "s.last_total_tokens",
            "s.last_total_tokens::bigint AS last_total_tokens"
        )
    );
    c.query(&sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                AppRow {
                    user_id: r.get(1),
                    external_id: r.get(2),
                    display_name: r.get(3),
                    question: r.get(4),
                    current_step: r.get(5),
                    status: r.get(6),
                    created_at: r.get(7),
                    updated_at: r.get(8),
                    is_deleted: r.get(9),
                    last_cost_usd: r.get(10),
                    last_total_tokens: r.get(11),
                    state: r.get(12),
                },
            )
        })
        .collect()
}

fn one(db: &TestDb, sql: &str) -> i64 {
    db.client().query_one(sql, &[]).unwrap().get(0)
}

/// The application's reads give back, for every session, what SQLite held.
fn assert_same(app: &App, db: &TestDb) {
    let s = sqlite_side(app, db);
    let p = pg_side(db);
    assert!(!s.is_empty());
    assert_eq!(s.len(), p.len(), "as many sessions joined to their owner");
    for (id, row) in &s {
        assert_eq!(Some(row), p.get(id), "session {id}");
    }
    // The fixture has each kind the test is about.
    assert!(s.values().any(|r| r.is_deleted) && s.values().any(|r| !r.is_deleted));
    assert!(s.values().any(|r| r.last_cost_usd.is_none()));
    // Filtered as the application filters.
    let deleted = s.values().filter(|r| r.is_deleted).count() as i64;
    assert_eq!(
        one(db, "SELECT count(*) FROM sessions WHERE is_deleted"),
        deleted
    );
    assert_eq!(
        one(db, "SELECT count(*) FROM sessions WHERE NOT is_deleted"),
        s.len() as i64 - deleted
    );
    // Every user, and exactly one GIN index on session_state.state.
    let conn = app.read_db();
    let users: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(one(db, "SELECT count(*) FROM users"), users);
    assert_eq!(
        one(
            db,
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'session_state' AND indexdef ILIKE '%USING gin%'"
        ),
        1
    );
}

/// The sequence of the runbook up to the load and its verification.
fn steps_pass(app: &App, db: &TestDb) {
    // check runs against the backend the application uses now: SQLite + files.
    let c = sessiondb(&["check"]).config(&app.config).expect(exit::OK);
    assert_eq!(
        c.check("state_files").status,
        CheckStatus::Pass,
        "{}",
        c.stdout
    );
    let p = app.step(db, &["preflight"]).expect(exit::OK);
    assert_eq!(
        p.check("app_schema").status,
        CheckStatus::Pass,
        "{}",
        p.stdout
    );
    app.step(db, &["backup"]).expect(exit::OK);
    let dry = app.step(db, &["migrate-state"]).expect(exit::OK);
    assert_eq!(
        one(
            db,
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = 'sessiondb_runs'"
        ),
        0,
        "{}",
        dry.stdout
    );
    app.step(db, &["migrate-state", "--dry-run=false"])
        .expect(exit::OK);
    let v = app.step(db, &["verify"]).expect(exit::OK);
    assert_eq!(v.check("tables").status, CheckStatus::Pass, "{}", v.stdout);
}

fn table_counts(r: &Run, table: &str) -> serde_json::Value {
    r.report.details["app_tables"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", r.stdout))
        .iter()
        .find(|t| t["table"] == table)
        .unwrap_or_else(|| panic!("{table}: {}", r.stdout))
        .clone()
}

#[test]
fn an_empty_target_gets_the_applications_tables_and_its_queries_read_back_the_same_rows() {
    let db = TestDb::new("app_empty_target");
    let app = App::new("40", None);
    steps_pass(&app, &db);
    app.step(&db, &["set-default", "--dry-run=false"])
        .expect(exit::OK);
    assert_same(&app, &db);
    // Created as SPEC §9 says: naive timestamps stay naive, booleans are booleans.
    let ty = |t: &str, c: &str| -> String {
        db.client()
            .query_one(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = $2",
                &[&t, &c],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(ty("sessions", "created_at"), "timestamp without time zone");
    assert_eq!(ty("sessions", "is_deleted"), "boolean");
    assert_eq!(ty("sessions", "last_cost_usd"), "double precision");
    assert_eq!(ty("users", "updated_at"), "timestamp without time zone");
    assert_eq!(
        ty("session_state", "updated_at"),
        "timestamp without time zone"
    );
    // The foreign key between the copied tables.
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'sessions'::regclass AND contype = 'f' AND confrelid = 'users'::regclass"
        ),
        1
    );
    // session_state.updated_at is the session's own.
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM session_state st JOIN sessions s ON s.id = st.session_id WHERE st.updated_at <> s.updated_at"
        ),
        0
    );
}

#[test]
fn the_applications_own_tables_are_used_as_they_are_and_a_catch_up_rewrites_only_what_changed() {
    let db = TestDb::new("app_runbook_order");
    db.client().batch_execute(APP_PG_DDL).unwrap();
    let app = App::new("30", Some(&db));
    steps_pass(&app, &db);
    assert_same(&app, &db);
    // Nothing the application sees was altered: its column types are its own.
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'sessions'::regclass AND attname = 'last_total_tokens' AND atttypid = 'integer'::regtype"
        ),
        1
    );
    // Run again: nothing to write.
    let again = app
        .step(&db, &["migrate-state", "--dry-run=false"])
        .expect(exit::OK);
    assert_eq!(
        table_counts(&again, "sessions")["inserted"],
        0,
        "{}",
        again.stdout
    );
    assert_eq!(
        table_counts(&again, "sessions")["updated"],
        0,
        "{}",
        again.stdout
    );
    assert_eq!(
        table_counts(&again, "users")["updated"],
        0,
        "{}",
        again.stdout
    );

    // One session and one user change in SQLite: the catch-up rewrites those two.
    let (sid, uid): (String, String) = {
        let conn = rusqlite::Connection::open(app.db_path()).unwrap();
        let sid: String = conn
            .query_row("SELECT id FROM sessions ORDER BY id LIMIT 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        let uid: String = conn
            .query_row("SELECT id FROM users ORDER BY id DESC LIMIT 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        conn.execute(
            "UPDATE sessions SET question = 'What changed?', is_deleted = 1, last_cost_usd = NULL, updated_at = '2026-01-02 03:04:05.678901' WHERE id = ?1",
            [&sid],
        )
        .unwrap();
        conn.execute(
            "UPDATE users SET display_name = 'Renamed Owner' WHERE id = ?1",
            [&uid],
        )
        .unwrap();
        (sid, uid)
    };
    // And the state file of another session goes away.
    let gone: String = app
        .read_db()
        .query_row(
            "SELECT id FROM sessions ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let file = app.root.join("sessions").join(&gone).join("state.json");
    assert!(file.is_file(), "the fixture gave {gone} a state");
    std::fs::remove_file(&file).unwrap();
    let catch_up = app
        .step(&db, &["migrate-state", "--dry-run=false"])
        .expect(exit::OK);
    let s = table_counts(&catch_up, "sessions");
    let u = table_counts(&catch_up, "users");
    assert_eq!(
        (s["updated"].as_u64(), s["inserted"].as_u64()),
        (Some(2), Some(0)),
        "{}",
        catch_up.stdout
    );
    assert_eq!(s["unchanged"].as_u64(), Some(28), "{}", catch_up.stdout);
    assert_eq!(
        (u["updated"].as_u64(), u["inserted"].as_u64()),
        (Some(1), Some(0)),
        "{}",
        catch_up.stdout
    );
    assert_eq!(
        u["unchanged"],
        u["rows"].as_u64().unwrap() - 1,
        "{}",
        catch_up.stdout
    );
    let v = app.step(&db, &["verify"]).expect(exit::OK);
    assert_eq!(v.check("tables").status, CheckStatus::Pass, "{}", v.stdout);
    assert_same(&app, &db);
    assert_eq!(
        db.client()
            .query_one("SELECT display_name FROM users WHERE id = $1", &[&uid])
            .unwrap()
            .get::<_, String>(0),
        "Renamed Owner"
    );
    assert_eq!(
        db.client()
            .query_one(
                "SELECT st.updated_at::text FROM session_state st WHERE session_id = $1",
                &[&sid]
            )
            .unwrap()
            .get::<_, String>(0),
        "2026-01-02 03:04:05.678901"
    );
    assert_eq!(
        db.client()
            .query_one(
                "SELECT count(*) FROM session_state WHERE session_id = $1",
                &[&gone]
            )
            .unwrap()
            .get::<_, i64>(0),
        0,
        "the state row of a session whose state file went away"
    );
    // The application changes a user on PostgreSQL: a catch-up names the conflict and
    // writes nothing, until the row is as sessiondb wrote it again.
    db.client()
        .execute(
            "UPDATE users SET display_name = 'Written by the app' WHERE id = $1",
            &[&uid],
        )
        .unwrap();
    let c = app.step(&db, &["migrate-state", "--dry-run=false"]).run();
    assert_eq!(c.code, exit::PROBLEMS, "{}", c.stdout);
    assert!(c.has_error("conflict"), "{}", c.stdout);
    assert!(
        c.report.details["conflicts"][0]["session"]
            .as_str()
            .is_some_and(|s| s == format!("users:{uid}")),
        "{}",
        c.stdout
    );
    db.client()
        .execute(
            "UPDATE users SET display_name = 'Renamed Owner' WHERE id = $1",
            &[&uid],
        )
        .unwrap();
    app.step(&db, &["migrate-state", "--dry-run=false"])
        .expect(exit::OK);
    app.step(&db, &["verify"]).expect(exit::OK);
    app.step(&db, &["set-default", "--dry-run=false"])
        .expect(exit::OK);
}

/// Every step that would write refuses `schema_mismatch` naming `table` and `column`,
/// and nothing is written to the application's tables nor recorded.
fn refused_everywhere(app: &App, db: &TestDb, table: &str, column: Option<&str>) {
    let named = |r: &Run| {
        r.report.errors.iter().any(|e| {
            e.code == "schema_mismatch"
                && e.message.contains(&format!(
                    "{table}{}",
                    column.map(|c| format!(".{c}")).unwrap_or_default()
                ))
                && e.message.contains("fix:")
        })
    };
    let p = app.step(db, &["preflight"]).expect(exit::PROBLEMS);
    assert!(named(&p), "{}", p.stdout);
    assert_eq!(
        p.check("app_schema").status,
        CheckStatus::Fail,
        "{}",
        p.stdout
    );
    for args in [
        &["migrate-state"][..],
        &["migrate-state", "--dry-run=false"],
    ] {
        let r = app.step(db, args).expect(exit::PROBLEMS);
        assert!(named(&r), "{args:?}: {}", r.stdout);
    }
    let mut c = db.client();
    for t in ["users", "sessions", "session_state"] {
        let exists: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t])
            .unwrap()
            .get(0);
        if exists {
            let n: i64 = c
                .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .unwrap()
                .get(0);
            assert_eq!(n, 0, "nothing written to {t}");
        }
    }
    for t in [
        "sessiondb_runs",
        "sessiondb_schema_versions",
        "sessiondb_ledger",
        "sessiondb_row_ledger",
    ] {
        let exists: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t])
            .unwrap()
            .get(0);
        assert!(!exists, "nothing recorded: {t}");
    }
}

#[test]
fn targets_that_cannot_take_the_data_are_refused_by_preflight_and_migrate_state_before_any_write() {
    let app = App::new("12", None);
    // A NOT NULL column nothing fills.
    let db = TestDb::new("app_misfit_not_null");
    db.client()
        .batch_execute(&APP_PG_DDL.replace(
            "last_total_tokens integer);",
            "last_total_tokens integer, tenant text NOT NULL);",
        ))
        .unwrap();
    refused_everywhere(&app, &db, "sessions", Some("tenant"));
    // A number column where text lives.
    let db = TestDb::new("app_misfit_number_for_text");
    db.client()
        .batch_execute(&APP_PG_DDL.replace("question text NOT NULL", "question integer NOT NULL"))
        .unwrap();
    refused_everywhere(&app, &db, "sessions", Some("question"));
    // A text column where a number lives (the application's two schemas disagree).
    let db = TestDb::new("app_misfit_text_for_number");
    db.client()
        .batch_execute(&APP_PG_DDL.replace("last_cost_usd double precision", "last_cost_usd text"))
        .unwrap();
    refused_everywhere(&app, &db, "sessions", Some("last_cost_usd"));
    // A table the mapping needs is missing while the others exist.
    let db = TestDb::new("app_misfit_missing_table");
    db.client()
        .batch_execute(&APP_PG_DDL.replace(" REFERENCES users(id)", "").replace(
            "CREATE TABLE users (id varchar PRIMARY KEY, external_id varchar NOT NULL UNIQUE,
      display_name varchar, created_at timestamp without time zone NOT NULL,
      updated_at timestamp without time zone NOT NULL);",
            "",
        ))
        .unwrap();
    refused_everywhere(&app, &db, "users", None);
}

#[test]
fn a_mapped_session_whose_value_its_column_cannot_hold_refuses_the_load_before_any_write() {
    let db = TestDb::new("app_invalid_value");
    db.client().batch_execute(APP_PG_DDL).unwrap();
    let app = App::new("12", None);
    let id: String = {
        let conn = rusqlite::Connection::open(app.db_path()).unwrap();
        let id: String = conn
            .query_row("SELECT id FROM sessions ORDER BY id LIMIT 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        conn.execute(
            "UPDATE sessions SET is_deleted = 'maybe' WHERE id = ?1",
            [&id],
        )
        .unwrap();
        id
    };
    let p = app.step(&db, &["preflight"]).expect(exit::PROBLEMS);
    assert!(
        p.report
            .errors
            .iter()
            .any(|e| e.code == "invalid_value" && e.message.contains(&id)),
        "{}",
        p.stdout
    );
    for args in [
        &["migrate-state"][..],
        &["migrate-state", "--dry-run=false"],
    ] {
        let r = app.step(&db, args).expect(exit::PROBLEMS);
        assert!(r.has_error("invalid_records"), "{args:?}: {}", r.stdout);
        assert!(r.report.errors[0].message.contains(&id), "{}", r.stdout);
        // A mapped store cannot be quarantined: the advice does not offer it.
        assert!(
            r.report
                .next_steps
                .iter()
                .any(|n| n.contains("fix them in the source"))
                && !r
                    .report
                    .next_steps
                    .iter()
                    .any(|n| n.contains("--dry-run=false --quarantine")),
            "{args:?}: {:?}",
            r.report.next_steps
        );
    }
    assert_eq!(
        one(&db, "SELECT count(*) FROM users"),
        0,
        "no parent row written either"
    );
    assert_eq!(one(&db, "SELECT count(*) FROM sessions"), 0);
    assert_eq!(one(&db, "SELECT count(*) FROM session_state"), 0);
}

#[test]
fn an_application_table_of_another_name_is_loaded_under_that_name_and_nothing_else_is_created() {
    let db = TestDb::new("app_other_table_name");
    let dir = TempDir::new();
    let root = dir.path().join("store");
    sessiondb(&["generate-fixture", "--schema", "app", "--sessions", "20"])
        .arg("--out")
        .arg(&root)
        .expect(exit::OK);
    std::fs::remove_file(root.join("sessiondb.toml")).unwrap();
    rusqlite::Connection::open(root.join("data/app.db"))
        .unwrap()
        .execute_batch("ALTER TABLE sessions RENAME TO chat_sessions")
        .unwrap();
    sessiondb(&["init", "--table", "chat_sessions"])
        .cwd(&root)
        .expect(exit::OK);
    let config = root.join("sessiondb.toml");
    for args in [&["migrate-state", "--dry-run=false"][..], &["verify"]] {
        sessiondb(args)
            .config(&config)
            .env("DATABASE_URL", &db.url)
            .expect(exit::OK);
    }
    assert_eq!(one(&db, "SELECT count(*) FROM chat_sessions"), 20);
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'sessions'"
        ),
        0,
        "no SPEC §2 sessions table beside the application's"
    );
    assert!(one(&db, "SELECT count(*) FROM session_state") > 0);
}

/// The counts of `table` in verify's `tables` check.
fn verified(r: &Run, table: &str) -> serde_json::Value {
    r.check("tables").details["tables"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", r.stdout))
        .iter()
        .find(|t| t["table"] == table)
        .unwrap_or_else(|| panic!("{table}: {}", r.stdout))
        .clone()
}

#[test]
fn verify_on_a_mapped_store_finds_every_row_the_target_lost_gained_or_altered_across_its_batches() {
    let db = TestDb::new("app_verify_finds");
    let app = App::new("2500", Some(&db));
    // A parent row whose key holds what COPY and SQL must escape.
    let odd = "odd\tkey \\ with\na newline, 'quotes' and \"more\"";
    rusqlite::Connection::open(app.db_path())
        .unwrap()
        .execute(
            "INSERT INTO users VALUES (?1, 'ext-odd', 'Odd Owner', '2025-09-01 00:00:00.000000', '2025-09-01 00:00:00.000000')",
            [odd],
        )
        .unwrap();
    steps_pass(&app, &db);
    let first = app.step(&db, &["verify"]).expect(exit::OK);
    assert_eq!(
        verified(&first, "users")["matching"],
        verified(&first, "users")["rows"]
    );
    assert_eq!(
        verified(&first, "sessions")["matching"],
        2500,
        "{}",
        first.stdout
    );

    // Four sessions far apart in the source's order (so in different batches).
    let ids = app.session_ids();
    let (question, state, gone, model) = (&ids[10], &ids[1200], &ids[2300], &ids[5]);
    let has_state: i64 = one(
        &db,
        &format!("SELECT count(*) FROM session_state WHERE session_id = '{state}'"),
    );
    assert_eq!(has_state, 1, "the fixture gave {state} a state");
    let mut c = db.client();
    c.execute(
        "UPDATE sessions SET question = 'tampered' WHERE id = $1",
        &[question],
    )
    .unwrap();
    c.execute(
        "UPDATE session_state SET state = state || '{\"tampered\": true}' WHERE session_id = $1",
        &[state],
    )
    .unwrap();
    c.execute("DELETE FROM session_state WHERE session_id = $1", &[gone])
        .unwrap();
    c.execute("DELETE FROM sessions WHERE id = $1", &[gone])
        .unwrap();
    c.execute(
        "CREATE TEMP TABLE copy AS SELECT * FROM sessions WHERE id = $1",
        &[model],
    )
    .unwrap();
    c.batch_execute(
        "UPDATE copy SET id = 'session_extra';
         INSERT INTO sessions SELECT * FROM copy;
         INSERT INTO users (id, external_id, display_name, created_at, updated_at)
           VALUES ('user_extra', 'ext-extra', NULL, now(), now());",
    )
    .unwrap();
    c.execute(
        "UPDATE users SET display_name = 'tampered' WHERE id = $1",
        &[&odd],
    )
    .unwrap();
    drop(c);

    let v = app.step(&db, &["verify"]).expect(exit::PROBLEMS);
    assert_eq!(v.check("tables").status, CheckStatus::Fail, "{}", v.stdout);
    let s = verified(&v, "sessions");
    assert_eq!(
        (
            s["rows"].as_u64(),
            s["matching"].as_u64(),
            s["different"].as_u64()
        ),
        (Some(2500), Some(2497), Some(2)),
        "{}",
        v.stdout
    );
    assert_eq!(
        (s["missing"].as_u64(), s["extra"].as_u64()),
        (Some(1), Some(1)),
        "{}",
        v.stdout
    );
    let u = verified(&v, "users");
    assert_eq!(
        (
            u["different"].as_u64(),
            u["extra"].as_u64(),
            u["missing"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{}",
        v.stdout
    );
    assert_eq!(
        u["matching"].as_u64(),
        u["rows"].as_u64().map(|n| n - 1),
        "{}",
        v.stdout
    );
    let mut found: Vec<(String, String, Option<String>)> = v.report.details["differences"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", v.stdout))
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_owned(),
                d["session"].as_str().unwrap().to_owned(),
                d["field"].as_str().map(str::to_owned),
            )
        })
        .collect();
    found.sort();
    let mut want = vec![
        (
            "different".to_owned(),
            question.clone(),
            Some("question".to_owned()),
        ),
        (
            "different".to_owned(),
            state.clone(),
            Some("state".to_owned()),
        ),
        (
            "different".to_owned(),
            format!("users:{odd}"),
            Some("display_name".to_owned()),
        ),
        ("extra".to_owned(), "session_extra".to_owned(), None),
        ("extra".to_owned(), "users:user_extra".to_owned(), None),
        ("missing".to_owned(), gone.clone(), None),
    ];
    want.sort();
    assert_eq!(found, want, "{}", v.stdout);
}

/// The mapped catch-up's counts and conflicts, as one comparable value.
fn caught_up(r: &Run) -> (serde_json::Value, serde_json::Value, Vec<(String, String)>) {
    let mut conflicts: Vec<(String, String)> = r.report.details["conflicts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["session"].as_str().unwrap().to_owned(),
                        c["reason"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    conflicts.sort();
    let pick = |t: serde_json::Value| {
        serde_json::json!([t["rows"], t["inserted"], t["updated"], t["unchanged"]])
    };
    (
        pick(table_counts(r, "sessions")),
        pick(table_counts(r, "users")),
        conflicts,
    )
}

#[test]
fn a_mapped_catch_up_across_many_batches_writes_exactly_what_changed_on_either_side() {
    let db = TestDb::new("app_catch_up_batches");
    let app = App::new("2500", Some(&db));
    steps_pass(&app, &db);
    let ids = app.session_ids();
    let user: String = app
        .read_db()
        .query_row("SELECT id FROM users ORDER BY id LIMIT 1", [], |r| r.get(0))
        .unwrap();
    // The source: two sessions far apart change, one is new, one user is renamed.
    {
        let conn = rusqlite::Connection::open(app.db_path()).unwrap();
        for id in [&ids[10], &ids[2300]] {
            conn.execute(
                "UPDATE sessions SET question = 'changed in the source' WHERE id = ?1",
                [id],
            )
            .unwrap();
        }
        conn.execute_batch(&format!(
            "CREATE TEMP TABLE copy AS SELECT * FROM sessions WHERE id = '{}';
             UPDATE copy SET id = 'session_new';
             INSERT INTO sessions SELECT * FROM copy;",
            ids[5]
        ))
        .unwrap();
        conn.execute(
            "UPDATE users SET display_name = 'Renamed' WHERE id = ?1",
            [&user],
        )
        .unwrap();
    }
    // The target: one session altered, one deleted, since sessiondb wrote them.
    let mut c = db.client();
    c.execute(
        "UPDATE sessions SET question = 'changed in the target' WHERE id = $1",
        &[&ids[700]],
    )
    .unwrap();
    c.execute(
        "DELETE FROM session_state WHERE session_id = $1",
        &[&ids[1500]],
    )
    .unwrap();
    c.execute("DELETE FROM sessions WHERE id = $1", &[&ids[1500]])
        .unwrap();
    drop(c);
    let conflicts = {
        let mut v = vec![
            (
                ids[700].clone(),
                "the target row was changed since sessiondb wrote it".to_owned(),
            ),
            (
                ids[1500].clone(),
                "the target row was deleted since sessiondb wrote it".to_owned(),
            ),
        ];
        v.sort();
        v
    };
    let users = one(&db, "SELECT count(*) FROM users");
    let want = (
        serde_json::json!([2501, 1, 2, 2496]),
        serde_json::json!([users, 0, 1, users - 1]),
        conflicts.clone(),
    );
    let args = [
        "migrate-state",
        "--batch-size",
        "100",
        "--on-conflict",
        "skip",
    ];
    // The dry run plans what the real run writes, batch after batch.
    let dry = app.step(&db, &args).expect(exit::OK);
    assert_eq!(caught_up(&dry), want, "{}", dry.stdout);
    let real = app
        .step(&db, &[&args[..], &["--dry-run=false"]].concat())
        .expect(exit::OK);
    assert_eq!(caught_up(&real), want, "{}", real.stdout);
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM sessions WHERE question = 'changed in the source'"
        ),
        2
    );
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM sessions WHERE question = 'changed in the target'"
        ),
        1,
        "a skipped conflict is left as the target has it"
    );
    // The source wins: the two conflicts are written, nothing else.
    let wins = app
        .step(
            &db,
            &[
                "migrate-state",
                "--batch-size",
                "100",
                "--on-conflict",
                "source-wins",
                "--dry-run=false",
            ],
        )
        .expect(exit::OK);
    let (s, u, found) = caught_up(&wins);
    assert_eq!(found, conflicts, "{}", wins.stdout);
    assert_eq!(s, serde_json::json!([2501, 0, 2, 2499]), "{}", wins.stdout);
    assert_eq!(
        u,
        serde_json::json!([users, 0, 0, users]),
        "{}",
        wins.stdout
    );
    app.step(&db, &["verify"]).expect(exit::OK);
    assert_same(&app, &db);
}

#[test]
fn a_mapped_plan_read_back_and_load_report_their_progress_table_by_table() {
    // The operator of a large mapped store sees each phase move (a plain line on every
    // update here): the plan's rows, the target read back, the load of each table
    // counted against that table's own rows.
    use crate::operator::periodic;
    let db = TestDb::new("app_progress");
    let app = App::new("30", Some(&db));
    let users = app.users();
    let run = |args: &[&str]| app.step(&db, args).env("SESSIONDB_PROGRESS_SECS", "0");
    let r = run(&["migrate-state"]).expect(exit::OK);
    assert!(
        periodic(&r.stderr, "plan", None, "rows") >= 2,
        "{}",
        r.stderr
    );
    let r = run(&["migrate-state", "--dry-run=false"]).expect(exit::OK);
    let (first, then) = r
        .stderr
        .split_once("loading table sessions")
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(first.contains("loading table users"), "{}", r.stderr);
    assert!(
        periodic(first, "load", Some(users as u64), "rows") >= 1,
        "{}",
        r.stderr
    );
    assert!(
        periodic(then, "load", Some(30), "rows") >= 1,
        "{}",
        r.stderr
    );
    // A catch-up reads both tables back from the target before it plans.
    let r = run(&["migrate-state"]).expect(exit::OK);
    assert!(
        periodic(&r.stderr, "read-target", None, "rows") >= 2,
        "{}",
        r.stderr
    );
}

#[test]
fn a_mapped_load_of_batches_larger_than_one_statement_writes_every_row() {
    // A batch is written a statement per 1,000 rows: a batch of 5,000 is three
    // statements for 2,100 sessions, each row once, the ledger whole, verify clean.
    let db = TestDb::new("app_big_batches");
    let app = App::new("2100", Some(&db));
    app.step(&db, &["backup"]).expect(exit::OK);
    let r = app
        .step(
            &db,
            &["migrate-state", "--dry-run=false", "--batch-size", "5000"],
        )
        .expect(exit::OK);
    let users = app.users();
    assert_eq!(
        one(&db, "SELECT count(*) FROM sessions"),
        2100,
        "{}",
        r.stdout
    );
    assert_eq!(one(&db, "SELECT count(*) FROM users"), users);
    assert_eq!(
        one(&db, "SELECT count(*) FROM session_state"),
        one(
            &db,
            "SELECT count(*) FROM sessiondb_ledger WHERE state_hash IS NOT NULL"
        )
    );
    assert_eq!(one(&db, "SELECT count(*) FROM sessiondb_ledger"), 2100);
    app.step(&db, &["verify"]).expect(exit::OK);
    assert_same(&app, &db);
}

#[test]
fn a_mapped_catch_up_reads_again_only_the_sessions_it_writes_and_skips_unchanged_tables() {
    // After a load, a run with nothing changed reads no table again; after two sessions
    // changed (one in SQLite, one in its state file) the load reads those two again and
    // not the users, writes exactly them, and reports where its time went.
    use crate::operator::periodic;
    let db = TestDb::new("app_load_in_proportion");
    let app = App::new("300", Some(&db));
    let users = app.users();
    let run = |args: &[&str]| app.step(&db, args).env("SESSIONDB_PROGRESS_SECS", "0");
    run(&["migrate-state", "--dry-run=false"]).expect(exit::OK);
    let r = run(&["migrate-state", "--dry-run=false"]).expect(exit::OK);
    for table in ["users", "sessions"] {
        assert!(
            r.stderr
                .contains(&format!("table {table}: nothing to write")),
            "{table}: {}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains("loading table"), "{}", r.stderr);
    let phases = &r.report.details["phases_ms"];
    assert!(
        phases["plan"].is_u64() && phases["load"].is_u64(),
        "{}",
        r.stdout
    );
    let ids = app.session_ids();
    rusqlite::Connection::open(app.db_path())
        .unwrap()
        .execute(
            "UPDATE sessions SET question = 'changed in the source' WHERE id = ?1",
            [&ids[20]],
        )
        .unwrap();
    let f = app.root.join("sessions").join(&ids[250]).join("state.json");
    std::fs::write(&f, br#"{"changed": "in its file"}"#).unwrap();
    let r = run(&["migrate-state", "--dry-run=false"]).expect(exit::OK);
    assert!(
        r.stderr.contains("table users: nothing to write"),
        "{}",
        r.stderr
    );
    let (_, sessions) = r
        .stderr
        .split_once("loading table sessions")
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(
        periodic(sessions, "load", Some(2), "rows") >= 1,
        "{}",
        r.stderr
    );
    let tables = r.report.details["app_tables"].as_array().unwrap().clone();
    let of = |name: &str| {
        tables
            .iter()
            .find(|t| t["table"] == name)
            .unwrap_or_else(|| panic!("{name}: {}", r.stdout))
            .clone()
    };
    assert_eq!(of("sessions")["updated"], 2, "{}", r.stdout);
    assert_eq!(of("sessions")["unchanged"], 298, "{}", r.stdout);
    assert_eq!(of("sessions")["rows"], 300, "{}", r.stdout);
    assert_eq!(of("users")["rows"], users, "{}", r.stdout);
    assert_eq!(of("users")["unchanged"], users, "{}", r.stdout);
    assert_eq!(
        one(
            &db,
            &format!(
                "SELECT count(*) FROM sessions WHERE question = 'changed in the source' AND id = '{}'",
                ids[20]
            )
        ),
        1
    );
    assert_eq!(
        one(
            &db,
            &format!(
                "SELECT count(*) FROM session_state WHERE state = '{{\"changed\": \"in its file\"}}'::jsonb AND session_id = '{}'",
                ids[250]
            )
        ),
        1
    );
    app.step(&db, &["verify"]).expect(exit::OK);
}

#[test]
fn a_mapped_session_that_cannot_be_read_again_for_its_load_stops_the_run_as_source_changed() {
    // The plan found one session to write; as the run's backup begins its state file
    // stops being JSON (the fault point appends to it). The load reads it again, cannot
    // take it, and says so: the run ends source_changed, never ok with the session left
    // as it was.
    let db = TestDb::new("app_load_read_again_fails");
    let app = App::new("40", Some(&db));
    app.step(&db, &["migrate-state", "--dry-run=false"])
        .expect(exit::OK);
    let ids = app.session_ids();
    let f = app.root.join("sessions").join(&ids[7]).join("state.json");
    std::fs::write(&f, br#"{"changed": "in its file"}"#).unwrap();
    let r = app
        .step(&db, &["migrate-state", "--dry-run=false"])
        .env("SESSIONDB_FAULT_APPEND", format!("backup={}", f.display()))
        .env("SESSIONDB_FAULT_APPEND_TEXT", "}")
        .run();
    assert_ne!(r.code, exit::OK, "{}", r.stdout);
    let e = r.error("source_changed");
    assert!(
        e.message.contains("1 of the 1 sessions") && e.message.contains("could not be read again"),
        "{e:?}"
    );
    assert_eq!(
        one(
            &db,
            &format!(
                "SELECT count(*) FROM session_state WHERE state = '{{\"changed\": \"in its file\"}}'::jsonb AND session_id = '{}'",
                ids[7]
            )
        ),
        0
    );
    // Put right, the next run writes it.
    std::fs::write(&f, br#"{"changed": "in its file"}"#).unwrap();
    app.step(&db, &["migrate-state", "--dry-run=false"])
        .expect(exit::OK);
    app.step(&db, &["verify"]).expect(exit::OK);
}

#[test]
fn a_store_whose_session_ids_are_integers_catches_up_exactly_what_changed() {
    // An application's own table keyed by INTEGER PRIMARY KEY, its states in
    // sessions/<id>/state.json: init maps it, the load carries the ids as bigint, and a
    // catch-up finds the two sessions that changed (a row, a state file) by those ids.
    let db = TestDb::new("app_integer_ids");
    let dir = TempDir::new();
    let root = dir.path().join("store");
    std::fs::create_dir_all(root.join("data")).unwrap();
    let conn = rusqlite::Connection::open(root.join("data/app.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE sessions (id INTEGER PRIMARY KEY, question TEXT NOT NULL,
           status TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);",
    )
    .unwrap();
    for i in 1..=30 {
        conn.execute(
            "INSERT INTO sessions VALUES (?1, ?2, 'done', '2026-01-01 00:00:00', '2026-01-02 00:00:00')",
            rusqlite::params![i, format!("question {i}")],
        )
        .unwrap();
        let d = root.join("sessions").join(i.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("state.json"), format!(r#"{{"n": {i}}}"#)).unwrap();
    }
    sessiondb(&["init"])
        .cwd(&root)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let config = root.join("sessiondb.toml");
    let step = |args: &[&str]| sessiondb(args).config(&config).env("DATABASE_URL", &db.url);
    let r = step(&["migrate-state", "--dry-run=false"]).expect(exit::OK);
    assert_eq!(r.count("inserted"), 30, "{}", r.stdout);
    conn.execute("UPDATE sessions SET question = 'changed' WHERE id = 12", [])
        .unwrap();
    drop(conn);
    std::fs::write(root.join("sessions/7/state.json"), br#"{"n": "changed"}"#).unwrap();
    let r = step(&["migrate-state", "--dry-run=false"]).expect(exit::OK);
    assert_eq!(r.count("updated"), 2, "{}", r.stdout);
    assert_eq!(r.count("unchanged"), 28, "{}", r.stdout);
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM sessions WHERE id = 12 AND question = 'changed'"
        ),
        1
    );
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM session_state WHERE session_id = '7' AND state = '{\"n\": \"changed\"}'::jsonb"
        ),
        1
    );
    step(&["verify"]).expect(exit::OK);
    let r = step(&["migrate-state", "--dry-run=false"]).expect(exit::OK);
    assert_eq!(r.count("unchanged"), 30, "{}", r.stdout);
}
