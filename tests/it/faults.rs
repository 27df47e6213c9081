//! Fault injection: kills, PostgreSQL faults, filesystem faults, concurrency, and
//! hostile input. Each test records a row (fault, command, outcome, data check) in
//! `$SESSIONDB_FAULTS_TABLE` when set; `just faults` prints them as a table.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sessiondb::exit;

use crate::support::store::Store;
use crate::support::{Cmd, Run, bin_path, pg, pg::TestDb, sessiondb};

mod hostile_names;
mod special_files;

pub(crate) fn row(fault: &str, command: &str, outcome: &str, check: &str) {
    if let Ok(p) = std::env::var("SESSIONDB_FAULTS_TABLE") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        writeln!(f, "{fault}\t{command}\t{outcome}\t{check}").unwrap();
    }
}

fn spawn(bin: &str, args: &[&str], s: &Store, url: &str) -> Child {
    Command::new(bin_path(bin))
        .args(args)
        .arg("--config")
        .arg(&s.config)
        .env("DATABASE_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Kill `child` with SIGKILL after `after`, unless it ended; true when it was killed.
fn kill_after(mut child: Child, after: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    killed
}

struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("seed {seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn loaded(n: usize, label: &str) -> (Store, TestDb) {
    let s = Store::new();
    s.bulk(n, 600);
    let db = TestDb::new(label);
    sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    (s, db)
}

#[test]
fn kill_set_default_mid_write_leaves_the_old_or_the_new_config() {
    let (s, db) = loaded(50, "fault_kill_setdefault");
    sessiondb(&["verify"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let old = std::fs::read_to_string(&s.config).unwrap();
    let new = old.replace("backend = \"sqlite\"", "backend = \"postgres\"");
    let mut rng = Rng::new();
    let (mut killed, mut olds, mut news) = (0, 0, 0);
    for _ in 0..25 {
        std::fs::write(&s.config, &old).unwrap();
        let child = spawn("set-default", &["--dry-run=false"], &s, &db.url);
        killed += kill_after(child, Duration::from_millis(rng.below(60))) as u32;
        let now = std::fs::read_to_string(&s.config).unwrap();
        assert!(
            now == old || now == new,
            "the config is neither the old nor the new file:\n{now}"
        );
        if now == old {
            olds += 1
        } else {
            news += 1
        }
        let leftovers: Vec<_> = std::fs::read_dir(s.root())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        for l in leftovers {
            let _ = std::fs::remove_file(l.path());
        }
    }
    row(
        "kill -9 at random moments (25 runs)",
        "set-default --dry-run=false",
        &format!("{killed} killed"),
        &format!("config old {olds}×, new {news}×, never broken"),
    );
}

#[test]
fn kill_backup_mid_copy_is_never_taken_for_a_complete_backup() {
    let s = Store::new();
    s.bulk(3000, 800);
    let db = TestDb::new("fault_kill_backup");
    let mut rng = Rng::new();
    let mut incomplete = 0;
    for _ in 0..3 {
        let child = spawn("backup", &[], &s, &db.url);
        kill_after(child, Duration::from_millis(100 + rng.below(600)));
    }
    let dir = s.root().join("backups");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if e.file_name() == sessiondb::backup::BLOBS_DIR {
            continue;
        }
        if !sessiondb::backup::is_complete(&e.path()) {
            incomplete += 1;
            let v = Cmd::bin("backup", &["--verify"])
                .arg(e.path())
                .config(&s.config)
                .expect(exit::PROBLEMS);
            assert!(v.has_error("backup_incomplete"), "{}", v.stdout);
        }
    }
    // The next backup removes them (their writers are dead: they hold no lock).
    let b = Cmd::bin("backup", &[]).config(&s.config).expect(exit::OK);
    let removed = b.report.details["removed_incomplete"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(removed, incomplete, "{}", b.stdout);
    let left = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != sessiondb::backup::BLOBS_DIR)
        .filter(|e| !sessiondb::backup::is_complete(&e.path()))
        .count();
    assert_eq!(left, 0, "incomplete folders left after a successful backup");
    // migrate-state ignores incomplete folders: it takes (or finds) a complete one.
    let r = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let used = r.report.details["backup"].as_str().unwrap().to_owned();
    assert!(sessiondb::backup::is_complete(std::path::Path::new(&used)));
    Cmd::bin("backup", &["--verify", &used])
        .config(&s.config)
        .expect(exit::OK);
    row(
        "kill -9 during backup (3 runs)",
        "backup",
        &format!("{incomplete} incomplete folder(s) marked"),
        "the next backup removed them; migrate-state used a verified complete backup",
    );
}

#[test]
fn every_command_reports_an_unreachable_server_cleanly() {
    let s = Store::new();
    s.session("a", r#"{"x": 1}"#);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgresql://app:pw-unreach-9@127.0.0.1:{port}/app");
    let mut n = 0;
    for (args, code) in [
        (&["check", "--backend", "postgres"][..], 1),
        (&["preflight"], 1),
        (&["migrate-state"], 3),
        (&["migrate-state", "--dry-run=false"], 3),
        (&["verify"], 3),
        (&["set-default", "--dry-run=false"], 3),
        (&["rollback", "--dry-run=false"], 3),
    ] {
        let r: Run = sessiondb(args)
            .config(&s.config)
            .env("DATABASE_URL", &url)
            .expect(code);
        assert!(
            r.has_error("postgres_unreachable"),
            "{args:?}: {}",
            r.stdout
        );
        assert!(
            !r.stderr.contains("panicked") && !r.stderr.contains("stack backtrace"),
            "{}",
            r.stderr
        );
        assert!(!r.stdout.contains("pw-unreach-9") && !r.stderr.contains("pw-unreach-9"));
        n += 1;
    }
    row(
        "server unreachable",
        &format!("{n} commands"),
        "postgres_unreachable, exit 1 (checks) or 3",
        "no panic, no password",
    );
}

#[test]
fn an_application_row_lock_is_waited_for_boundedly() {
    let (s, db) = loaded(20, "fault_row_lock");
    s.state_file("k0000003", br#"{"changed": 1}"#);
    let mut app = db.client();
    let mut tx = app.transaction().unwrap();
    tx.execute(
        "SELECT 1 FROM session_state WHERE session_id = 'k0000003' FOR UPDATE",
        &[],
    )
    .unwrap();
    let t0 = Instant::now();
    let r = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .env("SESSIONDB_LOCK_TIMEOUT", "1s")
        .expect(exit::OPERATIONAL);
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(r.has_error("lock_timeout"), "{}", r.stdout);
    tx.rollback().unwrap();
    let r = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(r.count("updated"), 1);
    row(
        "row lock held by the application",
        "migrate-state --dry-run=false",
        "exit 3 lock_timeout after 1s",
        "rerun updated the session",
    );
}

#[test]
fn a_low_statement_timeout_and_a_role_without_privileges_fail_clearly() {
    let s = Store::new();
    s.bulk(200, 400);
    let db = TestDb::new("fault_roles");
    let pw = "R0le-pw-xyz";
    let weak = format!("weak_{}", &db.name[db.name.len() - 8..]);
    let slow = format!("slow_{}", &db.name[db.name.len() - 8..]);
    db.client()
        .batch_execute(&format!(
            "CREATE ROLE {weak} LOGIN PASSWORD '{pw}'; REVOKE ALL ON SCHEMA public FROM PUBLIC;
             CREATE ROLE {slow} LOGIN PASSWORD '{pw}'; GRANT ALL ON SCHEMA public TO {slow}; ALTER ROLE {slow} SET statement_timeout = '1ms';"
        ))
        .unwrap();
    let as_role = |role: &str| {
        db.url
            .replacen("postgres:", &format!("{role}:"), 1)
            .replacen(&pg::password(), pw, 1)
    };
    let r = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", as_role(&weak))
        .expect(exit::OPERATIONAL);
    assert!(r.has_error("permission_denied"), "{}", r.stdout);
    let r = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", as_role(&slow))
        .run();
    assert_eq!(r.code, exit::OPERATIONAL, "{}", r.stdout);
    assert!(r.has_error("statement_timeout"), "{}", r.stdout);
    assert!(!r.stdout.contains(pw) && !r.stderr.contains(pw));
    row(
        "role without privileges; statement_timeout 1ms",
        "migrate-state --dry-run=false",
        "exit 3 permission_denied / statement_timeout",
        "no password in output",
    );
}

#[test]
fn a_sqlite_database_locked_exclusively_is_a_clear_error() {
    let s = Store::new();
    s.session("a", r#"{"x": 1}"#);
    // A rollback journal (not WAL), locked exclusively by another connection.
    s.conn()
        .pragma_update(None, "journal_mode", "delete")
        .unwrap();
    let locker = s.conn();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let t0 = Instant::now();
    let r = sessiondb(&["check", "--backend", "sqlite"])
        .config(&s.config)
        .run();
    assert!(
        t0.elapsed() >= Duration::from_secs(4),
        "waited for the busy timeout"
    );
    assert_ne!(r.code, exit::OK);
    assert!(
        r.stdout.contains("locked") || r.stdout.contains("busy"),
        "{}",
        r.stdout
    );
    locker.execute_batch("ROLLBACK").unwrap();
    sessiondb(&["check", "--backend", "sqlite"])
        .config(&s.config)
        .expect(exit::OK);
    row(
        "SQLite locked exclusively",
        "check --backend sqlite",
        "busy timeout 5s, then a clear error",
        "works once released",
    );
}

#[test]
fn two_writers_one_proceeds_the_other_is_told_who_holds_the_lock() {
    let s = Store::new();
    s.bulk(4000, 800);
    let db = TestDb::new("fault_two_writers");
    // Take a matching backup first so both runs go straight to the lock and the load.
    sessiondb(&["backup"]).config(&s.config).expect(exit::OK);
    let mut first = Command::new(bin_path("migrate-state"))
        .args(["--dry-run=false", "--batch-size", "50", "--config"])
        .arg(&s.config)
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first run holds the lock in this test's database. pg_locks lists
    // the locks of every database of the server, and the writers of tests running
    // alongside hold the same key (schema "public") in theirs: a loop that counted
    // those went on before the first run had its lock, the second migrate-state below
    // took it instead, and the first run failed with lock_held.
    let key = sessiondb::pg::lock_key("public");
    let (classid, objid) = (
        ((key as u64) >> 32) as u32 as i64,
        (key as u64 & 0xffff_ffff) as i64,
    );
    let mut c = db.client();
    loop {
        let held: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
                    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND classid::bigint = $1 AND objid::bigint = $2",
                &[&classid, &objid],
            )
            .unwrap()
            .get(0);
        if held > 0 {
            break;
        }
        if let Some(status) = first.try_wait().unwrap() {
            let out = first.wait_with_output().unwrap();
            panic!(
                "the first run ended ({status}) before it was seen holding the lock: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut outcomes = Vec::new();
    for args in [
        &["migrate-state", "--dry-run=false"][..],
        &["rollback", "--dry-run=false"],
        &["set-default", "--dry-run=false", "--force"],
    ] {
        let r = sessiondb(args)
            .config(&s.config)
            .env("DATABASE_URL", &db.url)
            .run();
        if r.code == exit::OPERATIONAL {
            assert!(r.has_error("lock_held"), "{}", r.stdout);
            assert!(
                r.report.errors[0].message.contains("pid "),
                "names the holder: {}",
                r.stdout
            );
            outcomes.push(format!("{}: lock_held", args[0]));
        } else {
            outcomes.push(format!(
                "{}: exit {} (first run already done)",
                args[0], r.code
            ));
        }
    }
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the first run failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let n: i64 = db
        .client()
        .query_one("SELECT count(*) FROM sessions", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 4000);
    assert!(
        outcomes.iter().any(|o| o.ends_with("lock_held")),
        "{outcomes:?}"
    );
    row(
        "a second writer during a load",
        "migrate-state / rollback / set-default",
        &outcomes.join("; "),
        "first run complete, 4000 sessions",
    );
}

#[test]
fn a_schema_name_with_a_quote_works() {
    let s = Store::new();
    for i in 0..5 {
        s.session(&format!("q{i}"), r#"{"a": 1}"#);
    }
    s.write_config("sqlite", "\n[postgres]\nschema = 'we\"ird sch-ema'\n");
    let db = TestDb::new("fault_schema_quote");
    let r = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(r.count("inserted"), 5);
    sessiondb(&["verify"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let n: i64 = db
        .client()
        .query_one("SELECT count(*) FROM \"we\"\"ird sch-ema\".sessions", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    // The name reaches every connection's search_path whole (quote, space, hyphen).
    let r = sessiondb(&["check", "--backend", "postgres"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(
        r.check("postgres_connectivity").details["search_path"],
        r#"pg_catalog, "we""ird sch-ema", pg_temp"#,
        "{}",
        r.stdout
    );
    row(
        "schema name with a quote",
        "migrate-state, verify",
        "exit 0",
        "5 sessions in the quoted schema",
    );
}

#[test]
fn ids_that_try_path_traversal_never_write_outside_the_sessions_folder() {
    let s = Store::new();
    s.session("ok", r#"{"x": 1}"#);
    let db = TestDb::new("fault_traversal");
    sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    sessiondb(&["verify"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    sessiondb(&["set-default", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    db.client()
        .batch_execute(
            "INSERT INTO sessions (id, status) VALUES ('../../escaped', 'x'), ('a/b', 'y');
             INSERT INTO session_state (session_id, state, updated_at) VALUES ('../../escaped', '{\"evil\": 1}', now()), ('a/b', '{\"evil\": 2}', now());",
        )
        .unwrap();
    sessiondb(&["rollback", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert!(!s.root().join("escaped").exists() && !s.sessions.join("a").exists());
    let col: String = s
        .conn()
        .query_row(
            "SELECT state FROM sessions WHERE id = '../../escaped'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        col, r#"{"evil": 1}"#,
        "unsafe ids keep their state in the SQLite column"
    );
    row(
        "ids with ../ and /",
        "rollback --dry-run=false",
        "exit 0",
        "nothing written outside sessions/, state in the SQLite column",
    );
}

fn children_peak_rss_mb() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    u.ru_maxrss as f64 / 1024.0
}

#[test]
fn every_bad_input_code_at_scale_is_named_and_quarantined_with_its_raw_bytes() {
    let d = crate::support::TempDir::new();
    let out = d.path().join("store");
    // 50,000 under `just faults`; fewer in the everyday suite to keep CI quick.
    let n = std::env::var("SESSIONDB_FAULTS_SCALE").unwrap_or_else(|_| "10000".into());
    let g = sessiondb(&[
        "generate-fixture",
        "--out",
        out.to_str().unwrap(),
        "--sessions",
        &n,
        "--seed",
        "11",
        "--bad",
    ])
    .expect(exit::OK);
    let bad: Vec<(String, String)> = g.report.details["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap_or_default().to_owned(),
                b["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let cfg = out.join("sessiondb.toml");
    let db = TestDb::new("fault_bad_at_scale");
    let refused = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&cfg)
        .env("DATABASE_URL", &db.url)
        .expect(exit::PROBLEMS);
    assert!(refused.has_error("invalid_records"));
    let r = sessiondb(&["migrate-state", "--dry-run=false", "--quarantine"])
        .config(&cfg)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let qdir = std::path::PathBuf::from(
        &r.report
            .artifacts
            .iter()
            .find(|a| a.kind == "quarantine")
            .unwrap()
            .path,
    );
    let index = std::fs::read_dir(&qdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".ndjson"))
        .unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(index)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Root reads a mode-000 file, so `unreadable` is only produced for other users.
    let expected: Vec<&(String, String)> = bad.iter().filter(|(_, c)| c != "unreadable").collect();
    for (id, code) in &expected {
        let hit = lines
            .iter()
            .find(|l| l["code"] == code.as_str() && (id.is_empty() || l["id"] == id.as_str()));
        let hit = hit.unwrap_or_else(|| panic!("{code} ({id}) not quarantined: {lines:?}"));
        let raw = std::fs::read(qdir.join(hit["raw_file"].as_str().unwrap())).unwrap();
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw)),
            hit["sha256"],
            "{code}: raw bytes kept"
        );
        assert!(
            !raw.is_empty() || *code == "too_large",
            "{code}: raw bytes present"
        );
    }
    // Quarantined, they do not block the cutover: verify passes, with a warning.
    let v = sessiondb(&["verify"])
        .config(&cfg)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(v.count("missing") + v.count("different"), 0, "{}", v.stdout);
    assert_eq!(
        (v.count("quarantined"), v.count("invalid")),
        (expected.len() as u64, 0),
        "{}",
        v.stdout
    );
    row(
        &format!("every SPEC §6 code in a {n}-session store"),
        "migrate-state --dry-run=false [--quarantine]",
        "refused (exit 1), then exit 0 with --quarantine",
        &format!(
            "{} bad records named and quarantined with raw bytes; {} sessions verified (exit 0)",
            expected.len(),
            v.count("checked")
        ),
    );
}

#[test]
fn a_100_mb_state_loads_with_bounded_memory() {
    let s = Store::new();
    s.session("small", r#"{"x": 1}"#);
    // About 100 MB: an array of objects, so the parser and PostgreSQL both do real work.
    let mut big = String::with_capacity(105 << 20);
    big.push_str("{\"items\": [");
    let mut i = 0;
    while big.len() < 100 << 20 {
        if i > 0 {
            big.push_str(", ");
        }
        big.push_str(&format!(
            "{{\"n\": {i}, \"text\": \"{}\"}}",
            "lorem ipsum ".repeat(8)
        ));
        i += 1;
    }
    big.push_str("]}");
    s.row(
        &"big",
        &"u",
        &"running",
        &"step",
        &1.0,
        &"2024-01-01T00:00:00Z",
        &"2024-01-01T00:00:00Z",
        &rusqlite::types::Null,
    );
    s.state_file("big", big.as_bytes());
    let size_mb = big.len() as f64 / (1 << 20) as f64;
    drop(big);
    let db = TestDb::new("fault_big_state");
    let before = children_peak_rss_mb();
    let r = sessiondb(&["migrate-state", "--dry-run=false", "--backup"])
        .arg({
            let b = sessiondb(&["backup"]).config(&s.config).expect(exit::OK);
            b.report.details["backup"].as_str().unwrap().to_owned()
        })
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(r.count("inserted"), 2);
    let peak = children_peak_rss_mb().max(before);
    let n: i64 = db.client().query_one("SELECT jsonb_array_length(state->'items')::bigint FROM session_state WHERE session_id = 'big'", &[]).unwrap().get(0);
    assert_eq!(n, i as i64);
    assert!(
        peak < size_mb * 6.0,
        "peak RSS {peak:.0} MB for a {size_mb:.0} MB state"
    );
    // A catch-up whose changes do not fit in the planning pass's memory reads again,
    // for the load, only what the pass read, and still copies exactly the change.
    let mut changed = std::fs::read(s.sessions.join("big/state.json")).unwrap();
    let at = changed.len() - 2;
    changed.splice(at..at, b", {\"n\": -1}".iter().copied());
    s.state_file("big", &changed);
    drop(changed);
    let r = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(
        (r.count("updated"), r.count("unchanged")),
        (1, 1),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.report.details["load_read"], "read_again_changed",
        "{}",
        r.stdout
    );
    let n: i64 = db.client().query_one("SELECT jsonb_array_length(state->'items')::bigint FROM session_state WHERE session_id = 'big'", &[]).unwrap().get(0);
    assert_eq!(n, i as i64 + 1);
    row(
        "a 100 MB state",
        "backup, migrate-state --dry-run=false",
        "exit 0",
        &format!("{i} items loaded; peak RSS {peak:.0} MB of child processes for {size_mb:.0} MB"),
    );
}

/// Per session: its SQLite `current_step` and the `pg` key of its state file (`None`
/// when the file has none), and the temporary files left in the sessions folder.
fn legacy_versions(
    s: &Store,
) -> (
    std::collections::BTreeMap<String, (String, Option<i64>)>,
    usize,
) {
    let c = s.conn();
    let mut st = c.prepare("SELECT id, current_step FROM sessions").unwrap();
    let steps: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = std::collections::BTreeMap::new();
    for (id, step) in steps {
        let bytes = std::fs::read(s.sessions.join(&id).join("state.json")).unwrap();
        // Every state file is whole: the legacy text or PostgreSQL's, never a prefix.
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{id}/state.json is not whole after kill -9: {e}"));
        out.insert(id, (step, v.get("pg").and_then(|p| p.as_i64())));
    }
    let mut temps = 0;
    for e in std::fs::read_dir(&s.sessions).unwrap().flatten() {
        temps += std::fs::read_dir(e.path())
            .unwrap()
            .flatten()
            .filter(|f| f.file_name().to_string_lossy().contains(".tmp-"))
            .count();
    }
    (out, temps)
}

#[test]
fn kill_rollback_at_any_moment_leaves_the_legacy_store_untouched_or_complete() {
    let n = 600;
    let (s, db) = loaded(n, "fault_kill_rollback");
    for step in [&["verify"][..], &["set-default", "--dry-run=false"]] {
        sessiondb(step)
            .config(&s.config)
            .env("DATABASE_URL", &db.url)
            .expect(exit::OK);
    }
    // The application, now on PostgreSQL, edits every session (its state and a metadata
    // field) before each rollback: each must export them all, rows and files.
    let edit = |k: u64| {
        db.client()
            .batch_execute(&format!(
                "UPDATE session_state SET state = state || '{{\"pg\": {k}}}';
                 UPDATE sessions SET current_step = 'pg-{k}';"
            ))
            .unwrap()
    };
    let on_pg = std::fs::read_to_string(&s.config).unwrap();
    // One whole rollback, timed: the random kills land anywhere within 1.5 times that.
    edit(0);
    let t0 = Instant::now();
    sessiondb(&["rollback", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let whole = t0.elapsed().as_millis() as u64;
    // A server that is not there: the next run finishes or undoes what a killed one left
    // (that needs only the legacy store) before it fails to connect.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("postgresql://app@127.0.0.1:{port}/app");
    // Each moment of a round by name (the rollback kills itself there), then at random.
    let points = [
        "journal",
        "staging",
        "sealed",
        "committed",
        "installing",
        "done",
    ];
    let mut rng = Rng::new();
    let mut configs = std::collections::BTreeSet::new();
    let (mut killed, mut runs, mut untouched, mut complete) = (0, 0, 0, 0);
    let (mut forward, mut back, mut stray) = (0, 0, 0);
    for k in 1..=(points.len() as u64 + 8) {
        edit(k);
        std::fs::write(&s.config, &on_pg).unwrap();
        let (before, _) = legacy_versions(&s);
        let point = points.get(k as usize - 1).copied();
        let child = {
            let mut cmd = Command::new(bin_path("rollback"));
            cmd.args(["--dry-run=false", "--config"])
                .arg(&s.config)
                .env("DATABASE_URL", &db.url)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(p) = point {
                cmd.env("SESSIONDB_FAULT_KILL", p);
            }
            cmd.spawn().unwrap()
        };
        let died = match point {
            Some(p) => {
                let st = {
                    let mut c = child;
                    c.wait().unwrap()
                };
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(st.signal(), Some(libc::SIGKILL), "killed itself at {p}");
                true
            }
            None => kill_after(child, Duration::from_millis(rng.below(whole * 3 / 2 + 1))),
        };
        killed += died as u32;
        runs += 1;
        let now = std::fs::read_to_string(&s.config).unwrap();
        toml::from_str::<toml::Table>(&now)
            .unwrap_or_else(|e| panic!("a broken config after kill -9: {e}\n{now}"));
        configs.insert(now);
        let (_, temps) = legacy_versions(&s);
        stray += temps;
        // The next run settles it first.
        let r = sessiondb(&["rollback", "--dry-run=false"])
            .config(&s.config)
            .env("DATABASE_URL", &nowhere)
            .expect(exit::OPERATIONAL);
        assert!(r.has_error("postgres_unreachable"), "{}", r.stdout);
        for rec in r.report.details["recovered"].as_array().unwrap() {
            match rec["action"].as_str().unwrap() {
                "roll_forward" => forward += 1,
                "roll_back" => back += 1,
                other => panic!("{other}: {}", r.stdout),
            }
        }
        let (after, temps) = legacy_versions(&s);
        assert_eq!(temps, 0, "the next run removed every temporary file");
        let new = format!("pg-{k}");
        let is_complete = after
            .values()
            .all(|(st, pg)| *st == new && *pg == Some(k as i64));
        let is_untouched = after == before;
        assert!(
            is_complete || is_untouched,
            "killed at {point:?}: the legacy store is neither as it was nor complete: {} of {n} rows new, {} files new",
            after.values().filter(|(st, _)| *st == new).count(),
            after
                .values()
                .filter(|(_, pg)| *pg == Some(k as i64))
                .count(),
        );
        match point {
            Some("journal" | "staging" | "sealed") => assert!(is_untouched, "{point:?}"),
            Some(_) => assert!(is_complete, "{point:?}"),
            None => {}
        }
        untouched += is_untouched as u32;
        complete += is_complete as u32;
    }
    // Finished by running it again: the legacy store then matches PostgreSQL exactly.
    std::fs::write(&s.config, &on_pg).unwrap();
    let r = sessiondb(&["rollback", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let done = std::fs::read_to_string(&s.config).unwrap();
    assert_ne!(done, on_pg, "the rollback switched the config");
    for c in &configs {
        assert!(
            c == &on_pg || c == &done,
            "a config that is neither the old nor the new file:\n{c}"
        );
    }
    let v = sessiondb(&["verify"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(
        (v.count("missing"), v.count("extra"), v.count("different")),
        (0, 0, 0),
        "{}",
        v.stdout
    );
    let (last, temps) = legacy_versions(&s);
    let k = points.len() as i64 + 8;
    assert!(
        last.values()
            .all(|(st, pg)| *st == format!("pg-{k}") && *pg == Some(k)),
        "every session came back with PostgreSQL's row and state"
    );
    assert_eq!(temps, 0);
    row(
        &format!(
            "kill -9 of rollback: at each of its {} moments, then at random ({runs} runs)",
            points.len()
        ),
        "rollback --dry-run=false",
        &format!("{killed} killed (whole run {whole} ms)"),
        &format!(
            "after each, the next run settled it ({forward} rolled forward, {back} rolled back, {stray} temp file(s) removed): {untouched} untouched, {complete} complete, none in between; config old or new ({} distinct); the final rerun exported {}, verify 0 differences in {n}",
            configs.len(),
            r.count("exported")
        ),
    );
}

/// Whether `v` is one letter repeated: a version the writer wrote, not a mix of two.
fn one_letter(v: &str) -> bool {
    v.bytes().all(|b| Some(b) == v.bytes().next())
}

#[test]
fn a_state_file_rewritten_in_place_while_read_is_never_loaded_torn() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let s = Store::new();
    s.bulk(20, 300);
    const N: usize = 4 << 20;
    let head = b"{\"v\": \"";
    let mut body = Vec::with_capacity(N + 16);
    body.extend_from_slice(head);
    body.extend(std::iter::repeat_n(b'A', N));
    body.extend_from_slice(b"\"}");
    s.row(
        &"hot",
        &"u",
        &"running",
        &"step",
        &1.0,
        &"2024-01-01T00:00:00Z",
        &"2024-01-01T00:00:00Z",
        &rusqlite::types::Null,
    );
    s.state_file("hot", &body);
    let path = s.sessions.join("hot/state.json");
    // The application rewrites the file in place, same length, 64 KB at a time, without
    // pause: a reader that is not careful gets the head of one version and the tail of
    // another, and that mix is valid JSON.
    let stop = AtomicBool::new(false);
    let versions = AtomicU64::new(0);
    let db = TestDb::new("fault_torn_read");
    let (first, second) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut letter = b'A';
            while !stop.load(Ordering::Relaxed) {
                letter = if letter == b'Z' { b'A' } else { letter + 1 };
                let chunk = vec![letter; 64 << 10];
                for off in (0..N).step_by(chunk.len()) {
                    f.write_all_at(&chunk, (head.len() + off) as u64).unwrap();
                    std::thread::sleep(Duration::from_micros(300));
                }
                versions.fetch_add(1, Ordering::Relaxed);
            }
        });
        let first = sessiondb(&["migrate-state", "--dry-run=false", "--quarantine"])
            .config(&s.config)
            .env("DATABASE_URL", &db.url)
            .run();
        let second = sessiondb(&["migrate-state", "--dry-run=false", "--quarantine"])
            .config(&s.config)
            .env("DATABASE_URL", &db.url)
            .run();
        stop.store(true, Ordering::Relaxed);
        (first, second)
    });
    assert_eq!(first.code, exit::OK, "{}", first.stdout);
    assert_eq!(second.code, exit::OK, "{}", second.stdout);
    // Whatever PostgreSQL holds for it is one whole version; otherwise it was set aside
    // as still changing, with the bytes it last read.
    let c = &mut db.client();
    let held: Option<String> = c
        .query_opt(
            "SELECT state->>'v' FROM session_state WHERE session_id = 'hot'",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0));
    // Set aside: named in the quarantine index with its code, with the bytes last read.
    let quarantined = [&first, &second].iter().any(|r| {
        let Some(q) = r.report.details.get("quarantine").and_then(|q| q.as_str()) else {
            return false;
        };
        std::fs::read_dir(q).unwrap().flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("index-")
                && std::fs::read_to_string(e.path()).unwrap().lines().any(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["id"] == "hot"
                        && v["code"] == "state_changing"
                        && std::fs::metadata(
                            std::path::Path::new(q).join(v["raw_file"].as_str().unwrap()),
                        )
                        .unwrap()
                        .len()
                            == body.len() as u64
                })
        })
    });
    match &held {
        Some(v) => assert!(one_letter(v) && v.len() == N, "a torn state was loaded"),
        None => assert!(
            quarantined,
            "neither loaded nor set aside: {}",
            second.stdout
        ),
    }
    // The backups hold one whole version, or say that the file kept changing.
    for b in std::fs::read_dir(s.root().join("backups"))
        .unwrap()
        .flatten()
    {
        let copy = b.path().join("state/hot/state.json");
        let Ok(bytes) = std::fs::read(&copy) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let whole = one_letter(v["v"].as_str().unwrap());
        let m = sessiondb::backup::Manifest::read(&b.path()).unwrap();
        assert!(
            whole
                || m.skipped_other
                    .iter()
                    .any(|k| k.reason.contains("kept changing")),
            "{} holds a mix of two versions without saying so",
            copy.display()
        );
    }
    // Once the writes stop, a catch-up loads the file as it is.
    sessiondb(&["migrate-state", "--dry-run=false", "--quarantine"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let loaded: String = c
        .query_one(
            "SELECT state->>'v' FROM session_state WHERE session_id = 'hot'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(loaded, on_disk["v"].as_str().unwrap());
    row(
        "a state file rewritten in place while read",
        "migrate-state --dry-run=false --quarantine (twice), then again",
        &format!(
            "{} versions written during the runs; {}",
            versions.load(Ordering::Relaxed),
            if held.is_some() {
                "a whole version loaded"
            } else {
                "set aside as state_changing"
            }
        ),
        "never a mix of two versions in PostgreSQL or a backup; loaded exactly once settled",
    );
}

#[test]
fn a_scan_stage_that_panics_fails_the_run_instead_of_ending_the_scan_early() {
    // Five batches of 20: each stage panics on its second batch
    // (`SESSIONDB_FAULT_PANIC=<stage>`). Its sender dropped, the next stage sees the
    // end of its input: a scan that took that for the end of the store would plan 20
    // sessions of 100, and a load would write 20 and report success.
    let s = Store::new();
    s.bulk(100, 200);
    let mut outcomes = Vec::new();
    for stage in ["read", "stamp", "ask", "resolve"] {
        let db = TestDb::new(&format!("panic_{stage}"));
        for args in [
            &["--batch-size", "20"][..],
            &["--batch-size", "20", "--dry-run=false"],
        ] {
            let mut a = vec!["migrate-state"];
            a.extend_from_slice(args);
            let r = sessiondb(&a)
                .config(&s.config)
                .env("DATABASE_URL", &db.url)
                .env("SESSIONDB_FAULT_PANIC", stage)
                .run();
            assert_eq!(
                r.code,
                exit::OPERATIONAL,
                "{stage} {args:?}: a run whose scan stopped short must fail\n{}\n{}",
                r.stdout,
                r.stderr
            );
            let e = r
                .report
                .errors
                .iter()
                .find(|e| e.code == "internal_error")
                .unwrap_or_else(|| panic!("{stage}: no internal_error: {}", r.stdout));
            assert!(
                e.message
                    .contains(&format!("the scan's {stage} stage panicked")),
                "{e:?}"
            );
        }
        // Nothing claims the run done: the load stopped where the scan did.
        let done: i64 = db
            .client()
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'sessiondb_runs'",
                &[],
            )
            .unwrap()
            .get(0);
        if done > 0 {
            let ok: i64 = db
                .client()
                .query_one(
                    "SELECT count(*) FROM sessiondb_runs WHERE status = 'done'",
                    &[],
                )
                .unwrap()
                .get(0);
            assert_eq!(ok, 0, "{stage}: a run recorded as done");
        }
        outcomes.push(format!("{stage}: exit 3"));
    }
    // Without the fault the same store plans and loads every session.
    let db = TestDb::new("panic_none");
    let r = sessiondb(&["migrate-state", "--batch-size", "20", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .run();
    assert_eq!(r.code, exit::OK, "{}", r.stdout);
    assert_eq!(r.count("inserted"), 100);
    row(
        "a stage of the scan pipeline panics (read, stamp, ask, resolve) on its second batch",
        "migrate-state dry and real, batches of 20",
        &format!("{} (internal_error naming the stage)", outcomes.join("; ")),
        "no run recorded as done; without the fault all 100 load",
    );
}
