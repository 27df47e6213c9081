//! `sessiondb init` (SPEC §9): on the application's store (`generate-fixture --schema
//! app`, its config removed) it proposes the mapping the store needs, and the steps
//! accept that config as is as far as they are wired; on the default store it proposes
//! the default mapping; it never overwrites a config without --force, never writes
//! through a symlink or into a FIFO; it checks the target's tables read-only; no name in
//! the database can inject a setting into the proposed file.

use std::path::{Path, PathBuf};

use sessiondb::config::{Config, Env};
use sessiondb::exit;
use sessiondb::report::CheckStatus;
use sessiondb::source::shape::{Field, Mode, Shape};

use crate::support::pg::TestDb;
use crate::support::{Run, TempDir, sessiondb};

/// A fixture of `schema` with `n` sessions, its generated config moved aside; returns
/// the folder and the generated config's text.
fn fixture(schema: &str, n: &str) -> (TempDir, PathBuf, String) {
    let dir = TempDir::new();
    let out = dir.path().join("store");
    sessiondb(&[
        "generate-fixture",
        "--schema",
        schema,
        "--sessions",
        n,
        "--seed",
        "5",
    ])
    .arg("--out")
    .arg(&out)
    .expect(exit::OK);
    let generated = std::fs::read_to_string(out.join("sessiondb.toml")).unwrap();
    std::fs::remove_file(out.join("sessiondb.toml")).unwrap();
    (dir, out, generated)
}

fn init(cwd: &Path, args: &[&str]) -> crate::support::Cmd {
    let mut a = vec!["init"];
    a.extend_from_slice(args);
    sessiondb(&a).cwd(cwd)
}

fn load(path: &Path) -> Config {
    Config::load(Some(path), &Env::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shape_of(cfg: &Config) -> Shape {
    let s = cfg.sqlite.as_ref().unwrap();
    let conn = sessiondb::source::sqlite::open(&s.path).unwrap();
    Shape::read(&conn, &s.path, &cfg.path, &cfg.app).unwrap()
}

fn warnings(r: &Run, code: &str) -> Vec<String> {
    r.report
        .warnings
        .iter()
        .filter(|w| w.code == code)
        .map(|w| w.message.clone())
        .collect()
}

#[test]
fn init_on_the_application_store_proposes_the_mapping_it_needs() {
    let (_dir, out, generated) = fixture("app", "40");
    // No flag: the database is found near the config (data/app.db).
    let r = init(&out, &[]).expect(exit::OK);
    let config = out.join("sessiondb.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert_eq!(r.report.details["proposed_config"].as_str().unwrap(), text);
    assert!(text.contains("cost = \"last_cost_usd\"\n"), "{text}");
    assert!(text.contains("state = \"\"\n"), "{text}");
    // Each guess explained.
    assert!(
        text.contains("no column named cost; \"last_cost_usd\" (FLOAT"),
        "{text}"
    );
    assert!(text.contains("the table has no state column; "), "{text}");
    assert!(text.contains("\"users\" — "), "{text}");
    assert!(
        text.contains("\"question\" TEXT NOT NULL -> text"),
        "{text}"
    );
    assert!(
        text.contains("\"is_deleted\" BOOLEAN NOT NULL -> boolean"),
        "{text}"
    );
    assert!(text.contains("not copied"), "{text}");

    // The same reading of the store as the config the fixture wrote by hand.
    let proposed = load(&config);
    let theirs = Config::parse(&config, &generated, &Env::default()).unwrap();
    assert_eq!(proposed.app, theirs.app);
    assert_eq!(
        proposed.sqlite.as_ref().unwrap().path,
        theirs.sqlite.as_ref().unwrap().path
    );
    assert_eq!(
        proposed.sqlite.as_ref().unwrap().sessions_dir,
        theirs.sqlite.as_ref().unwrap().sessions_dir
    );
    let shape = shape_of(&proposed);
    assert_eq!(shape.mode, Mode::Mapped);
    assert_eq!(shape.mapping.column(Field::Cost), Some("last_cost_usd"));
    assert_eq!(shape.mapping.column(Field::State), None);
    assert_eq!(
        shape.extras,
        ["question", "is_deleted", "last_total_tokens"]
    );
    assert_eq!(
        shape
            .parents
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["users"]
    );
    assert_eq!(r.check("mapping").status, CheckStatus::Pass);
    assert_eq!(r.count("sessions"), 40);
    assert!(r.count("state_files") >= 35, "{}", r.stdout);

    // `check` accepts it as is: the shape resolves; reading the sessions is not wired.
    let c = sessiondb(&["check"]).config(&config).expect(exit::OK);
    assert_eq!(
        c.check("sqlite_schema").status,
        CheckStatus::Pass,
        "{}",
        c.stdout
    );
    assert!(
        c.check("sqlite_schema")
            .summary
            .contains("cost → last_cost_usd"),
        "{}",
        c.stdout
    );
    // Its sessions are read as the config maps them (state from the files).
    assert_eq!(
        c.check("state_files").status,
        CheckStatus::Pass,
        "{}",
        c.stdout
    );
    assert!(!c.has_warning("not_wired"), "{}", c.stdout);
    // Preflight reads it too (tests/it/app_schema.rs runs every step on it).
    let p = sessiondb(&["preflight"]).config(&config).run();
    assert!(!p.has_error("not_implemented"), "{}", p.stdout);
    assert_eq!(
        p.check("source_sqlite").status,
        CheckStatus::Pass,
        "{}",
        p.stdout
    );
}

#[test]
fn init_on_the_default_store_proposes_the_default_mapping() {
    let (_dir, out, _) = fixture("default", "30");
    let r = init(&out, &[]).expect(exit::OK);
    let config = out.join("sessiondb.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let cfg = load(&config);
    assert!(cfg.app.customised().is_empty(), "{text}");
    assert!(cfg.app.columns.is_empty(), "{text}");
    assert!(text.contains("nothing to map"), "{text}");
    assert_eq!(
        cfg.json_path.as_deref(),
        Some(out.join("data/session-db.json").as_path())
    );
    assert_eq!(shape_of(&cfg).mode, Mode::Default);
    assert!(text.contains("\"app_settings\""), "{text}");
    assert_eq!(r.check("json_store").status, CheckStatus::Pass);
    // The default store's config is read by every step as today.
    let c = sessiondb(&["check"]).config(&config).expect(exit::OK);
    assert_eq!(c.check("sqlite_schema").status, CheckStatus::Pass);
    assert_eq!(
        c.check("state_files").status,
        CheckStatus::Pass,
        "{}",
        c.stdout
    );
    let db = TestDb::new("init_default_preflight");
    let p = sessiondb(&["preflight"])
        .config(&config)
        .env("DATABASE_URL", &db.url)
        .run();
    assert_eq!(p.check("config").status, CheckStatus::Pass, "{}", p.stdout);
    assert_eq!(
        p.check("source_sqlite").status,
        CheckStatus::Pass,
        "{}",
        p.stdout
    );
}

#[test]
fn init_never_replaces_a_config_without_force_nor_writes_through_links_or_fifos() {
    let (_dir, out, _) = fixture("app", "5");
    let config = out.join("sessiondb.toml");
    std::fs::write(&config, "# mine, by hand\n").unwrap();
    let r = init(&out, &[]).expect(exit::USAGE);
    assert!(r.has_error("config_exists"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# mine, by hand\n"
    );

    // --print writes nothing: the proposal is in the report and on stderr.
    let r = init(&out, &["--print"]).expect(exit::OK);
    let proposed = r.report.details["proposed_config"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(r.stderr.contains(&proposed), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# mine, by hand\n"
    );
    assert_eq!(r.check("config").status, CheckStatus::Skip);

    // --force replaces it, keeping the old one beside it.
    let r = init(&out, &["--force"]).expect(exit::OK);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), proposed);
    let kept = r
        .report
        .artifacts
        .iter()
        .find(|a| a.kind == "previous_config")
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&kept.path).unwrap(),
        "# mine, by hand\n"
    );

    // A symlink at the destination: refused even with --force, its target untouched.
    let elsewhere = out.join("elsewhere.toml");
    std::fs::write(&elsewhere, "# elsewhere\n").unwrap();
    let link = out.join("linked.toml");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let r = init(&out, &["--force", "--out", "linked.toml"]).expect(exit::USAGE);
    assert!(
        r.has_error("config_exists") && r.report.errors[0].message.contains("symbolic link"),
        "{}",
        r.stdout
    );
    assert_eq!(
        std::fs::read_to_string(&elsewhere).unwrap(),
        "# elsewhere\n"
    );
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());

    // A FIFO: refused at once (never opened, so nothing blocks).
    let fifo = out.join("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let r = init(&out, &["--force", "--out", "fifo.toml"]).expect(exit::USAGE);
    assert!(
        r.report.errors[0].message.contains("not a regular file"),
        "{}",
        r.stdout
    );
}

#[test]
fn init_finds_the_database_by_the_applications_url_or_says_which_to_choose() {
    let (_dir, out, _) = fixture("app", "5");
    // A second database with a sessions table beside it: which one is ambiguous...
    let other = out.join("data/other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE sessions (id TEXT PRIMARY KEY)")
        .unwrap();
    let r = init(&out, &["--print"]).expect(exit::USAGE);
    let m = &r.report.errors[0].message;
    assert!(
        m.contains("several SQLite databases") && m.contains("app.db") && m.contains("other.db"),
        "{m}"
    );
    // ...unless the application's own URL names it.
    let r = init(&out, &["--print"])
        .env(
            "DATABASE_URL",
            format!("sqlite+aiosqlite:///{}", out.join("data/app.db").display()),
        )
        .expect(exit::OK);
    assert!(
        r.check("sqlite").summary.contains("from $DATABASE_URL"),
        "{}",
        r.stdout
    );
    assert!(r.check("sqlite").summary.contains("app.db"), "{}", r.stdout);
    // Or --sqlite; a FIFO there is refused, never opened.
    let r = init(&out, &["--print", "--sqlite", "data/other.db"]).expect(exit::OK);
    assert!(
        r.check("sqlite").summary.contains("other.db"),
        "{}",
        r.stdout
    );
    let fifo = out.join("data/pipe.db");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let r = init(&out, &["--print", "--sqlite", "data/pipe.db"]).expect(exit::PROBLEMS);
    assert!(r.has_error("not_regular_file"), "{}", r.stdout);
}

#[test]
fn names_in_the_database_cannot_inject_settings() {
    let dir = TempDir::new();
    let root = dir.path();
    let db = root.join("app.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE sessions (id TEXT PRIMARY KEY, \"evil\nbackend = 'postgres'\n[x]\" TEXT, \"total_cost\" REAL, \"usd_\"\"price\" REAL);
             INSERT INTO sessions VALUES ('a', 'x', 1.5, 2.5);",
        )
        .unwrap();
    let r = init(root, &[]).expect(exit::OK);
    let cfg = load(&root.join("sessiondb.toml"));
    assert_eq!(cfg.backend, sessiondb::config::Backend::Sqlite);
    let shape = shape_of(&cfg);
    assert!(
        shape.extras.iter().any(|e| e.starts_with("evil\n")),
        "{:?}",
        shape.extras
    );
    // Two columns could be the cost: none is chosen, and the report says so.
    assert_eq!(shape.mapping.column(Field::Cost), None);
    let undecided = warnings(&r, "init_undecided");
    assert!(
        undecided
            .iter()
            .any(|u| u.starts_with("cost: several columns")),
        "{undecided:?}"
    );
    assert_eq!(r.report.status, sessiondb::report::Status::Warn);
}

/// The application's tables as its ORM creates them on PostgreSQL (issue 17).
const APP_PG_DDL: &str = "
    CREATE TABLE users (id varchar PRIMARY KEY, external_id varchar NOT NULL UNIQUE,
      display_name varchar, created_at timestamp NOT NULL, updated_at timestamp NOT NULL);
    CREATE TABLE sessions (id varchar PRIMARY KEY, user_id varchar NOT NULL REFERENCES users(id),
      question text NOT NULL, current_step varchar NOT NULL, status varchar NOT NULL,
      created_at timestamp NOT NULL, updated_at timestamp NOT NULL, is_deleted boolean NOT NULL,
      last_cost_usd double precision, last_total_tokens integer);
    CREATE TABLE session_state (session_id varchar PRIMARY KEY, state jsonb NOT NULL,
      updated_at timestamp without time zone NOT NULL);
    CREATE INDEX ix_session_state_state_gin ON session_state USING gin (state);
";

fn tables_of(db: &TestDb) -> Vec<String> {
    db.client()
        .query("SELECT tablename::text FROM pg_catalog.pg_tables WHERE schemaname = 'public' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn init_checks_the_targets_tables_read_only() {
    let (_dir, out, _) = fixture("app", "20");
    // The runbook's order: the application made its tables on PostgreSQL first.
    let db = TestDb::new("init_target_fits");
    db.client().batch_execute(APP_PG_DDL).unwrap();
    let before = tables_of(&db);
    let r = init(&out, &["--print"])
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(r.check("target").status, CheckStatus::Pass, "{}", r.stdout);
    let tables = &r.check("target").details["tables"];
    let state = tables
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "session_state")
        .unwrap();
    assert_eq!(state["gin_index"], "ix_session_state_state_gin");
    let text = r.report.details["proposed_config"].as_str().unwrap();
    assert!(text.contains("\"sessions\": exists and fits"), "{text}");
    assert!(
        text.contains("its GIN index \"ix_session_state_state_gin\" is used"),
        "{text}"
    );
    assert!(
        !text.contains(&crate::support::pg::password()),
        "no password in the proposal"
    );
    assert_eq!(tables_of(&db), before, "init created nothing");

    // A target that does not fit: a text column where a number lives, a NOT NULL
    // column nothing fills. Each named, with its fix; a fill line proposed.
    let bad = TestDb::new("init_target_misfits");
    bad.client()
        .batch_execute(&APP_PG_DDL.replace(
            "last_cost_usd double precision",
            "last_cost_usd text, tenant text NOT NULL",
        ))
        .unwrap();
    let r = init(&out, &["--print"])
        .env("DATABASE_URL", &bad.url)
        .expect(exit::OK);
    assert_eq!(r.check("target").status, CheckStatus::Warn, "{}", r.stdout);
    let undecided = warnings(&r, "init_undecided");
    assert!(
        undecided
            .iter()
            .any(|u| u.contains("sessions.last_cost_usd") && u.contains("holds numbers")),
        "{undecided:?}"
    );
    assert!(
        undecided
            .iter()
            .any(|u| u.contains("sessions.tenant") && u.contains("[postgres.fill]")),
        "{undecided:?}"
    );
    let text = r.report.details["proposed_config"].as_str().unwrap();
    assert!(text.contains("# \"sessions.tenant\" = \"\""), "{text}");
    // The proposal still parses: the fill line waits, commented, for a human.
    Config::parse(Path::new("/x/sessiondb.toml"), text, &Env::default()).unwrap();

    // No target at all: said, and nothing else fails.
    let r = init(&out, &["--print"]).expect(exit::OK);
    assert_eq!(r.check("target").status, CheckStatus::Skip);
}
