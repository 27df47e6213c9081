//! Rollback of the application's own schema (SPEC §9, issue 17 test (c)): a store made
//! by `generate-fixture --schema app` (agent_council's `users` and `sessions`, state in
//! `sessions/<id>/state.json`), on PostgreSQL the application's own tables; after the
//! cutover the application writes a new user, a new session of that user and changes an
//! old one; rollback brings all three back so that the application's queries on SQLite
//! give exactly what they gave on PostgreSQL. Real PostgreSQL, real SQLite, real files.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use sessiondb::exit;

use crate::faults::row;
use crate::support::pg::TestDb;
use crate::support::{Cmd, Run, TempDir, bin_path, sessiondb};

/// The application's PostgreSQL DDL (issue 17: what its ORM creates there).
const PG_DDL: &str = "
CREATE TABLE users (id character varying NOT NULL PRIMARY KEY, external_id character varying NOT NULL,
  display_name character varying, created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL);
CREATE UNIQUE INDEX ix_users_external_id ON users (external_id);
CREATE TABLE sessions (id character varying NOT NULL PRIMARY KEY,
  user_id character varying NOT NULL REFERENCES users (id), question text NOT NULL,
  current_step character varying NOT NULL, status character varying NOT NULL,
  created_at timestamp without time zone NOT NULL, updated_at timestamp without time zone NOT NULL,
  is_deleted boolean NOT NULL, last_cost_usd double precision, last_total_tokens integer);
CREATE INDEX ix_sessions_is_deleted ON sessions (is_deleted);
CREATE INDEX ix_sessions_user_id ON sessions (user_id);
CREATE TABLE session_state (session_id character varying NOT NULL PRIMARY KEY, state jsonb NOT NULL,
  updated_at timestamp without time zone NOT NULL);
CREATE INDEX ix_session_state_state_gin ON session_state USING gin (state);
";

/// An application store (`--schema app`).
struct App {
    _tmp: TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl App {
    fn new(sessions: usize) -> App {
        let tmp = TempDir::new();
        let root = tmp.path().join("app");
        sessiondb(&[
            "generate-fixture",
            "--schema",
            "app",
            "--out",
            root.to_str().unwrap(),
            "--sessions",
            &sessions.to_string(),
            "--seed",
            "17",
        ])
        .expect(exit::OK);
        App {
            config: root.join("sessiondb.toml"),
            root,
            _tmp: tmp,
        }
    }
    fn db(&self) -> PathBuf {
        self.root.join("data/app.db")
    }
    fn sessions_dir(&self) -> PathBuf {
        self.root.join("sessions")
    }
    fn sqlite(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db()).unwrap()
    }
    fn step(&self, db: &TestDb, args: &[&str]) -> Cmd {
        sessiondb(args)
            .config(&self.config)
            .env("DATABASE_URL", &db.url)
    }
    /// The first session id, by id.
    fn first_session(&self) -> String {
        self.sqlite()
            .query_row("SELECT id FROM sessions ORDER BY id LIMIT 1", [], |r| {
                r.get(0)
            })
            .unwrap()
    }
}

/// The store loaded into the application's own PostgreSQL tables (made first with its
/// DDL, as in the runbook's order) or into the tables sessiondb creates on an empty
/// target, verified and cut over by the real steps.
fn cut_over_into(app: &App, label: &str, app_ddl_first: bool) -> TestDb {
    let db = TestDb::new(label);
    if app_ddl_first {
        db.client().batch_execute(PG_DDL).unwrap();
    }
    app.step(&db, &["migrate-state", "--dry-run=false"])
        .expect(exit::OK);
    app.step(&db, &["verify"]).expect(exit::OK);
    app.step(&db, &["set-default", "--dry-run=false"])
        .expect(exit::OK);
    for live in [false, true] {
        assert_eq!(
            app_query_sqlite(app, live),
            app_query_pg(&db, live),
            "the load gives the application the same rows"
        );
    }
    db
}

fn cut_over(app: &App, label: &str) -> TestDb {
    cut_over_into(app, label, true)
}

const NEW_USER: &str = "7f1c2a9e-1111-4b7a-9c1e-000000000001";
const NEW_SESSION: &str = "session_20260102_030406_500000";

/// After the cutover, the application on PostgreSQL: a new user (no display name), a
/// new session of that user (with state, no cost), and a changed session (question,
/// soft-deleted, a cost, a later updated_at, new state).
fn app_writes_on_pg(db: &TestDb, changed: &str) {
    db.client()
        .batch_execute(&format!(
            "INSERT INTO users VALUES ('{NEW_USER}', 'ext-new', NULL, '2026-01-02 03:04:05.123456', '2026-01-02 03:04:05.123456');
             INSERT INTO sessions VALUES ('{NEW_SESSION}', '{NEW_USER}', 'Made on PostgreSQL?', 'ask', 'running',
                 '2026-01-02 03:04:06.5', '2026-01-02 03:04:07', false, NULL, 42);
             INSERT INTO session_state VALUES ('{NEW_SESSION}', '{{\"made\": \"in pg\", \"n\": [1, 2]}}', '2026-01-02 03:04:07');
             UPDATE sessions SET question = 'Changed on PostgreSQL?', is_deleted = true, last_cost_usd = 0.125,
                 updated_at = '2026-01-03 00:00:00.000001' WHERE id = '{changed}';
             UPDATE session_state SET state = '{{\"changed\": true}}' WHERE session_id = '{changed}';"
        ))
        .unwrap();
}

/// One cell as SQLite's form of the value: `i:`, `r:`, `t:` or `null`.
type Cells = Vec<String>;

/// The application's own reads on SQLite: sessions joined to their owners, ordered by
/// `created_at desc` (with `is_deleted` filtered when `live`), every column.
fn app_query_sqlite(app: &App, live: bool) -> Vec<Cells> {
    let sql = format!(
        "SELECT s.id, s.user_id, s.question, s.current_step, s.status, s.created_at, s.updated_at,
                s.is_deleted, s.last_cost_usd, s.last_total_tokens,
                u.external_id, u.display_name, u.created_at, u.updated_at
           FROM sessions s JOIN users u ON u.id = s.user_id {}
          ORDER BY s.created_at DESC, s.id",
        if live { "WHERE s.is_deleted = 0" } else { "" }
    );
    let c = app.sqlite();
    let mut st = c.prepare(&sql).unwrap();
    st.query_map([], |r| {
        Ok((0..14)
            .map(|i| match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => "null".to_owned(),
                rusqlite::types::ValueRef::Integer(n) => format!("i:{n}"),
                rusqlite::types::ValueRef::Real(f) => format!("r:{f:?}"),
                rusqlite::types::ValueRef::Text(t) => {
                    format!("t:{}", String::from_utf8_lossy(t))
                }
                rusqlite::types::ValueRef::Blob(b) => format!("b:{b:?}"),
            })
            .collect())
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The same read on PostgreSQL, each value decoded by its type and put in the form
/// SQLAlchemy keeps it in on SQLite (naive timestamps with 6 digits, booleans 0/1).
fn app_query_pg(db: &TestDb, live: bool) -> Vec<Cells> {
    let sql = format!(
        "SELECT s.id, s.user_id, s.question, s.current_step, s.status, s.created_at, s.updated_at,
                s.is_deleted, s.last_cost_usd, s.last_total_tokens,
                u.external_id, u.display_name, u.created_at, u.updated_at
           FROM sessions s JOIN users u ON u.id = s.user_id {}
          ORDER BY s.created_at DESC, s.id",
        if live { "WHERE NOT s.is_deleted" } else { "" }
    );
    let ts = |t: Option<chrono::NaiveDateTime>| {
        t.map_or("null".to_owned(), |t| {
            format!("t:{}", t.format("%Y-%m-%d %H:%M:%S%.6f"))
        })
    };
    let txt = |t: Option<String>| t.map_or("null".to_owned(), |t| format!("t:{t}"));
    db.client()
        .query(&sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            vec![
                txt(r.get(0)),
                txt(r.get(1)),
                txt(r.get(2)),
                txt(r.get(3)),
                txt(r.get(4)),
                ts(r.get(5)),
                ts(r.get(6)),
                format!("i:{}", i64::from(r.get::<_, bool>(7))),
                r.get::<_, Option<f64>>(8)
                    .map_or("null".to_owned(), |f| format!("r:{f:?}")),
                // integer where the application made the table, bigint where sessiondb did.
                r.try_get::<_, Option<i64>>(9)
                    .or_else(|_| r.try_get::<_, Option<i32>>(9).map(|n| n.map(i64::from)))
                    .unwrap()
                    .map_or("null".to_owned(), |n| format!("i:{n}")),
                txt(r.get(10)),
                txt(r.get(11)),
                ts(r.get(12)),
                ts(r.get(13)),
            ]
        })
        .collect()
}

/// Every row of both tables (each value with its storage class) and every entry under
/// the sessions folder.
fn snapshot(app: &App) -> (Vec<Cells>, BTreeMap<PathBuf, Vec<u8>>) {
    let c = app.sqlite();
    let mut rows = Vec::new();
    for sql in [
        "SELECT 'u', quote(id), quote(external_id), quote(display_name), quote(created_at), quote(updated_at) FROM users ORDER BY id",
        "SELECT 's', quote(id), quote(user_id) || quote(question) || quote(current_step) || quote(status), quote(created_at) || quote(updated_at), quote(is_deleted) || quote(last_cost_usd), quote(last_total_tokens) FROM sessions ORDER BY id",
    ] {
        let mut st = c.prepare(sql).unwrap();
        rows.extend(
            st.query_map([], |r| (0..6).map(|i| r.get::<_, String>(i)).collect())
                .unwrap()
                .map(Result::unwrap),
        );
    }
    let mut files = BTreeMap::new();
    for e in walkdir::WalkDir::new(app.sessions_dir()).follow_links(false) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            files.insert(
                e.path().to_path_buf(),
                std::fs::read(e.path()).unwrap_or_default(),
            );
        }
    }
    (rows, files)
}

fn state_file(app: &App, id: &str) -> serde_json::Value {
    let p = app.sessions_dir().join(id).join("state.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn details<'a>(r: &'a Run, k: &str) -> &'a serde_json::Value {
    &r.report.details[k]
}

/// Every row rollback has to bring back is back: the application's reads on SQLite
/// give exactly what they give on PostgreSQL, with the state files.
#[track_caller]
fn assert_back(app: &App, db: &TestDb, changed: &str) {
    for live in [false, true] {
        let sq = app_query_sqlite(app, live);
        let pg = app_query_pg(db, live);
        assert_eq!(
            sq, pg,
            "the application's read (is_deleted filtered: {live}) differs between SQLite and PostgreSQL"
        );
    }
    let live = app_query_sqlite(app, true);
    assert!(
        live.iter().any(|r| r[0] == format!("t:{NEW_SESSION}")),
        "the new session is listed"
    );
    assert!(
        !live.iter().any(|r| r[0] == format!("t:{changed}")),
        "the changed session is soft-deleted"
    );
    assert_eq!(
        state_file(app, NEW_SESSION),
        serde_json::json!({"made": "in pg", "n": [1, 2]})
    );
    assert_eq!(
        state_file(app, changed),
        serde_json::json!({"changed": true})
    );
}

#[test]
fn rollback_of_the_applications_schema_brings_back_a_new_user_a_new_session_and_a_change() {
    for app_ddl_first in [true, false] {
        back_after_cutover(app_ddl_first);
    }
    row(
        "application schema (users + sessions, state in files), written on PostgreSQL after the cutover",
        "rollback (dry run, --dry-run=false, again), then a catch-up dry run",
        "exit 0: a new user, a new session and a changed session exported, users first",
        "the application's joined reads on SQLite = on PostgreSQL; state files; rerun writes nothing; the catch-up finds every row unchanged",
    );
}

fn back_after_cutover(app_ddl_first: bool) {
    let app = App::new(6);
    let db = cut_over_into(
        &app,
        &format!("app_rollback_{app_ddl_first}"),
        app_ddl_first,
    );
    let changed = app.first_session();
    app_writes_on_pg(&db, &changed);
    let before = snapshot(&app);

    let dry = app.step(&db, &["rollback"]).expect(exit::OK);
    let plan = details(&dry, "plan");
    assert_eq!(
        (
            plan["sessions"].as_u64(),
            plan["parent_rows"].as_u64(),
            plan["rows_insert"].as_u64(),
            plan["rows_update"].as_u64(),
            plan["files_create"].as_u64(),
            plan["files_replace"].as_u64(),
        ),
        (Some(2), Some(1), Some(2), Some(1), Some(1), Some(1)),
        "{}",
        dry.stdout
    );
    let listed: Vec<(String, String)> = details(&dry, "sessions")
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["table"].as_str().unwrap_or("sessions").to_owned(),
                x["session"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed[0],
        ("users".to_owned(), NEW_USER.to_owned()),
        "the parent row comes first: {listed:?}"
    );
    assert_eq!(
        snapshot(&app),
        before,
        "the dry run wrote to the legacy store"
    );

    let real = app
        .step(&db, &["rollback", "--dry-run=false"])
        .expect(exit::OK);
    assert_eq!(real.count("exported"), 3, "{}", real.stdout);
    assert_eq!(details(&real, "legacy_store")["state"], "complete");
    assert!(
        std::fs::read_to_string(&app.config)
            .unwrap()
            .contains("backend = \"sqlite\""),
        "the config is switched back"
    );
    assert_back(&app, &db, &changed);
    // SQLAlchemy's forms, as the legacy rows hold them.
    let (created, deleted, cost, tokens): (String, i64, Option<f64>, Option<i64>) = app
        .sqlite()
        .query_row(
            "SELECT created_at, is_deleted, last_cost_usd, last_total_tokens FROM sessions WHERE id = ?1",
            [NEW_SESSION],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (created.as_str(), deleted, cost, tokens),
        ("2026-01-02 03:04:06.500000", 0, None, Some(42))
    );
    let name: Option<String> = app
        .sqlite()
        .query_row(
            "SELECT display_name FROM users WHERE id = ?1",
            [NEW_USER],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(name, None);

    // Rerun: nothing left to do, nothing written.
    let after = snapshot(&app);
    let again = app
        .step(&db, &["rollback", "--dry-run=false"])
        .expect(exit::OK);
    assert_eq!(again.count("exported"), 0, "{}", again.stdout);
    assert_eq!(snapshot(&app), after, "the rerun wrote to the legacy store");
    // The way forward again: a catch-up finds both sides the same (no conflict).
    let catch_up = app.step(&db, &["migrate-state"]).expect(exit::OK);
    for t in details(&catch_up, "app_tables").as_array().unwrap() {
        assert_eq!(
            (t["inserted"].as_u64(), t["updated"].as_u64()),
            (Some(0), Some(0)),
            "{}",
            catch_up.stdout
        );
    }
}

#[test]
fn rollback_of_the_applications_schema_killed_after_its_commit_is_finished_by_the_rerun() {
    for point in ["staging", "committed"] {
        let app = App::new(4);
        let db = cut_over(&app, &format!("app_rollback_kill_{point}"));
        let changed = app.first_session();
        app_writes_on_pg(&db, &changed);
        let st = std::process::Command::new(bin_path("sessiondb"))
            .args(["rollback", "--dry-run=false", "--config"])
            .arg(&app.config)
            .env("DATABASE_URL", &db.url)
            .env("SESSIONDB_FAULT_KILL", point)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(st.signal(), Some(libc::SIGKILL), "killed itself at {point}");
        let r = app
            .step(&db, &["rollback", "--dry-run=false"])
            .expect(exit::OK);
        let rec = &details(&r, "recovered")[0];
        assert_eq!(
            rec["action"],
            if point == "committed" {
                "roll_forward"
            } else {
                "roll_back"
            },
            "{point}: {}",
            r.stdout
        );
        assert_eq!(
            details(&r, "legacy_store")["state"],
            "complete",
            "{}",
            r.stdout
        );
        assert_back(&app, &db, &changed);
        let after = snapshot(&app);
        app.step(&db, &["rollback", "--dry-run=false"])
            .expect(exit::OK);
        assert_eq!(snapshot(&app), after, "{point}: the rerun wrote again");
    }
    row(
        "kill -9 of rollback of an application schema (before the commit, after it)",
        "rollback --dry-run=false, then again",
        "the journal rolled back / forward by its table-and-key digests; exit 0",
        "the application's reads on SQLite = on PostgreSQL",
    );
}

#[test]
fn rollback_of_the_applications_schema_refuses_a_not_null_column_nothing_fills() {
    let app = App::new(3);
    let db = cut_over(&app, "app_rollback_not_null");
    let changed = app.first_session();
    app_writes_on_pg(&db, &changed);
    // The target no longer has the legacy table's `question TEXT NOT NULL`: the new
    // session has nothing for it.
    db.client()
        .batch_execute("ALTER TABLE sessions DROP COLUMN question")
        .unwrap();
    let before = snapshot(&app);
    let config = std::fs::read(&app.config).unwrap();
    for args in [&["rollback"][..], &["rollback", "--dry-run=false"]] {
        let r = app.step(&db, args).expect(exit::PROBLEMS);
        let e = r
            .report
            .errors
            .iter()
            .find(|e| e.code == "schema_mismatch")
            .unwrap_or_else(|| panic!("{args:?}: no schema_mismatch: {}", r.stdout));
        assert!(
            e.message.contains("sessions.question") && e.message.contains(NEW_SESSION),
            "{args:?}: names the table, the column and the row: {}",
            e.message
        );
        assert_eq!(details(&r, "legacy_store")["state"], "unchanged");
    }
    assert_eq!(snapshot(&app), before, "the legacy store was written to");
    assert_eq!(
        std::fs::read(&app.config).unwrap(),
        config,
        "the config changed"
    );
    assert!(
        !has_journal(&app.root.join("backups")),
        "refused before any journal"
    );
    row(
        "application schema: a legacy NOT NULL column the target no longer has",
        "rollback (dry run and --dry-run=false)",
        "exit 1 both, schema_mismatch naming sessions.question and the session",
        "nothing written, config unchanged, no journal",
    );
}

fn has_journal(backups: &Path) -> bool {
    std::fs::read_dir(backups)
        .map(|rd| rd.flatten().any(|e| e.path().join("rollback").exists()))
        .unwrap_or(false)
}

#[test]
fn rollback_of_the_applications_schema_refuses_a_nan_and_brings_back_a_negative_zero() {
    // SQLite has no NaN (it would store NULL) and keeps no sign on a zero: a NaN cost set
    // on PostgreSQL is refused up front, naming the column and the row; a -0 cost comes
    // back as SQLite's 0 and the rollback completes (no endless rounds).
    let app = App::new(3);
    let db = cut_over(&app, "app_rollback_nan");
    let first = app.first_session();
    db.client()
        .execute(
            "UPDATE sessions SET last_cost_usd = 'NaN' WHERE id = $1",
            &[&first],
        )
        .unwrap();
    let before = snapshot(&app);
    for args in [&["rollback"][..], &["rollback", "--dry-run=false"]] {
        let r = app.step(&db, args).expect(exit::PROBLEMS);
        let e = r
            .report
            .errors
            .iter()
            .find(|e| e.code == "schema_mismatch")
            .unwrap_or_else(|| panic!("{args:?}: no schema_mismatch: {}", r.stdout));
        assert!(
            e.message.contains("last_cost_usd")
                && e.message.contains("NaN")
                && e.message.contains(&first),
            "{args:?}: {}",
            e.message
        );
    }
    assert_eq!(snapshot(&app), before, "the legacy store was written to");
    db.client()
        .execute(
            "UPDATE sessions SET last_cost_usd = '-0', question = 'zero?' WHERE id = $1",
            &[&first],
        )
        .unwrap();
    let r = app
        .step(&db, &["rollback", "--dry-run=false"])
        .expect(exit::OK);
    assert!(r.report.errors.is_empty(), "{}", r.stdout);
    let (q, cost): (String, f64) = app
        .sqlite()
        .query_row(
            "SELECT question, last_cost_usd FROM sessions WHERE id = ?1",
            [&first],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((q.as_str(), cost), ("zero?", 0.0));
}
