//! `preflight` against real stores and a real PostgreSQL: each check failing for a real
//! cause, every reader error code named with its session, the plan against a loaded
//! target, and proof that preflight writes nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sessiondb::exit;
use sessiondb::report::{CheckStatus, Finding};
use sha2::{Digest, Sha256};

use crate::support::pg::{Role, TestDb};
use crate::support::store::Store;
use crate::support::{Cmd, Run, TempDir, sessiondb};

fn preflight(s: &Store, db: &TestDb, args: &[&str]) -> Cmd {
    let mut a = vec!["preflight"];
    a.extend_from_slice(args);
    sessiondb(&a).config(&s.config).env("DATABASE_URL", &db.url)
}

fn status(r: &Run, id: &str) -> CheckStatus {
    r.check(id).status
}

/// The ids of the failed checks, in report order.
fn failed(r: &Run) -> Vec<&str> {
    r.report
        .checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| c.id.as_str())
        .collect()
}

fn store_with(n: usize) -> Store {
    let s = Store::new();
    for i in 0..n {
        s.session(
            &format!("s{i:03}"),
            &format!("{{\"step\": {i}, \"notes\": [\"a\", \"b\"], \"pct\": 1.50}}"),
        );
    }
    s
}

/// Point `[backup] dir` at `dir` (an absolute path, as a TOML literal string).
fn set_backup_dir(s: &Store, dir: &Path) {
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let (head, tail) = cfg.split_once("[backup]\n").expect("a [backup] section");
    let (old, rest) = tail.split_once('\n').unwrap();
    assert!(old.starts_with("dir = "), "{cfg}");
    let cfg = format!("{head}[backup]\ndir = '{}'\n{rest}", dir.display());
    std::fs::write(&s.config, cfg).unwrap();
}

/// A tmpfs mounted for one test (the tests run as root), unmounted when dropped, also
/// when the test fails. Declare it after the store that holds its mount point.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount")
            .success();
        assert!(
            ok,
            "mount -t tmpfs -o {options} tmpfs {} failed",
            dir.display()
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

// ---- backup_location ---------------------------------------------------------------------

#[test]
fn preflight_backup_location_on_a_read_only_filesystem_fails() {
    let s = store_with(3);
    let db = TestDb::new("pf_ro_backup");
    let mnt = s.root().join("ro-backups");
    let _ro = Tmpfs::mount(&mnt, "ro,size=1m");

    // The folder exists, on a read-only filesystem (root's permissions do not help).
    set_backup_dir(&s, &mnt);
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(failed(&r), ["backup_location"], "{}", r.stdout);
    let e = r.error("permission_denied");
    assert!(
        e.message.contains(&mnt.display().to_string()) && e.message.contains("Read-only"),
        "{e:?}"
    );
    assert_eq!(e.path.as_deref(), Some(mnt.to_str().unwrap()));

    // The folder does not exist yet and would be created on that filesystem.
    let later = mnt.join("later/backups");
    set_backup_dir(&s, &later);
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(failed(&r), ["backup_location"], "{}", r.stdout);
    let e = r.error("permission_denied");
    assert!(
        e.message.contains(&mnt.display().to_string()) && e.message.contains("Read-only"),
        "{e:?}"
    );
    assert_eq!(
        r.check("backup_location").details["dir"],
        later.to_str().unwrap()
    );
}

#[test]
fn preflight_backup_location_too_small_fails_disk_space() {
    let s = Store::new();
    for i in 0..20 {
        s.session(
            &format!("big{i:02}"),
            &format!("{{\"pad\": \"{}\"}}", "x".repeat(8 * 1024)),
        );
    }
    let db = TestDb::new("pf_disk_space");
    let small = s.root().join("small");
    let _small = Tmpfs::mount(&small, "size=64k");
    set_backup_dir(&s, &small);
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(failed(&r), ["backup_location"], "{}", r.stdout);
    let details = &r.check("backup_location").details;
    let estimate = details["estimated_backup_bytes"].as_u64().unwrap();
    assert!(
        estimate > 64 * 1024,
        "the store needs more than 64k: {details}"
    );
    let e = r.error("disk_space");
    assert!(e.message.contains(&small.display().to_string()), "{e:?}");
    assert_eq!(e.path.as_deref(), Some(small.to_str().unwrap()));

    // The same store against a filesystem that is big enough passes.
    let roomy = s.root().join("roomy");
    let _roomy = Tmpfs::mount(&roomy, "size=64m");
    set_backup_dir(&s, &roomy);
    let r = preflight(&s, &db, &[]).expect(exit::OK);
    assert_eq!(
        status(&r, "backup_location"),
        CheckStatus::Pass,
        "{}",
        r.stdout
    );
    assert_eq!(
        std::fs::read_dir(&roomy).unwrap().count(),
        0,
        "the check leaves nothing behind"
    );
}

// ---- postgres_connectivity, postgres_permissions ---------------------------------------------

#[test]
fn preflight_unreachable_postgres_names_the_redacted_url() {
    let s = store_with(3);
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgresql://app:pf-secret-pw@127.0.0.1:{port}/app");
    let r = sessiondb(&["preflight"])
        .config(&s.config)
        .env("DATABASE_URL", &url)
        .expect(exit::PROBLEMS);
    assert_eq!(failed(&r), ["postgres_connectivity"], "{}", r.stdout);
    assert_eq!(status(&r, "postgres_permissions"), CheckStatus::Skip);
    assert_eq!(status(&r, "postgres_schema"), CheckStatus::Skip);
    let e = r.error("postgres_unreachable");
    let redacted = format!("postgresql://app:***@127.0.0.1:{port}/app");
    assert!(e.message.contains(&redacted), "{e:?}");
    assert!(
        !r.stdout.contains("pf-secret-pw") && !r.stderr.contains("pf-secret-pw"),
        "the password never reaches the output"
    );
    // The source was still read, and the plan says the target was not reached.
    assert_eq!(status(&r, "source_sqlite"), CheckStatus::Pass);
    assert_eq!(r.count("sessions"), 3);
    assert_eq!(r.check("plan").details["target_reachable"], false);
}

#[test]
fn preflight_role_without_create_fails_permissions() {
    let s = store_with(3);
    let db = TestDb::new("pf_no_create");
    let role = Role::new("pf_nocreate");
    let mut c = db.client();
    // PostgreSQL 15 already gives PUBLIC no CREATE on schema public; make sure.
    c.batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .unwrap();
    let can: bool = c
        .query_one(
            "SELECT has_schema_privilege($1, 'public', 'CREATE')",
            &[&role.name],
        )
        .unwrap()
        .get(0);
    assert!(!can, "the role has no CREATE on schema public");
    let r = sessiondb(&["preflight"])
        .config(&s.config)
        .env("DATABASE_URL", role.url(&db))
        .expect(exit::PROBLEMS);
    assert_eq!(status(&r, "postgres_connectivity"), CheckStatus::Pass);
    assert_eq!(status(&r, "postgres_permissions"), CheckStatus::Fail);
    assert_eq!(
        r.check("postgres_permissions").details["existing_tables"],
        0
    );
    let e = r.error("permission_denied");
    assert!(
        e.message.contains("CREATE") && e.message.contains("public"),
        "{e:?}"
    );
    // The rehearsal of the schema fails the same way, and says why.
    assert_eq!(status(&r, "postgres_schema"), CheckStatus::Fail);
    assert!(
        r.check("postgres_schema")
            .summary
            .contains("permission denied"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains(&role.password));
}

/// Hold the writers' lock on `db`, as a sessiondb run would.
fn hold_writer_lock(db: &TestDb, run_id: &str) -> (postgres::Client, i32) {
    let mut cfg = db.url.parse::<postgres::Config>().unwrap();
    cfg.application_name(&format!("sessiondb:{run_id}"));
    let mut c = cfg.connect(postgres::NoTls).unwrap();
    let key = sessiondb::pg::lock_key("public");
    c.execute("SELECT pg_advisory_lock($1)", &[&key]).unwrap();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    (c, pid)
}

#[test]
fn preflight_lock_held_in_another_database_is_not_ours() {
    let s = store_with(2);
    let db = TestDb::new("pf_lock_here");
    let other = TestDb::new("pf_lock_other");
    let run = "22222222-3333-4444-5555-666666666666";
    let (holder, pid) = hold_writer_lock(&other, run);
    let r = preflight(&s, &db, &[]).expect(exit::OK);
    assert!(!r.has_warning("lock_held"), "{}", r.stdout);
    drop(holder);

    let (_holder, pid_here) = hold_writer_lock(&db, run);
    assert_ne!(pid, pid_here);
    let r = preflight(&s, &db, &[]).expect(exit::OK);
    let w = r.report.warnings.iter().find(|w| w.code == "lock_held");
    let w = w.unwrap_or_else(|| panic!("no lock_held: {}", r.stdout));
    assert!(
        w.message.contains(&format!("pid {pid_here}")) && w.message.contains(run),
        "{w:?}"
    );
}

#[test]
fn preflight_lock_holder_hidden_from_a_plain_role_does_not_crash() {
    let s = store_with(2);
    let db = TestDb::new("pf_lock_hidden");
    let role = Role::new("pf_plain");
    db.client()
        .batch_execute(&format!(
            "GRANT CREATE ON SCHEMA public TO \"{}\"",
            role.name
        ))
        .unwrap();
    let (_holder, pid) = hold_writer_lock(&db, "33333333-4444-5555-6666-777777777777");
    let r = sessiondb(&["preflight"])
        .config(&s.config)
        .env("DATABASE_URL", role.url(&db))
        .expect(exit::OK);
    assert_eq!(status(&r, "postgres_permissions"), CheckStatus::Pass);
    let w = r.report.warnings.iter().find(|w| w.code == "lock_held");
    let w = w.unwrap_or_else(|| panic!("no lock_held: {}", r.stdout));
    assert!(
        w.message.contains(&format!("pid {pid}")) && w.message.contains("role postgres"),
        "{w:?}"
    );
    db.client()
        .batch_execute(&format!(
            "REVOKE CREATE ON SCHEMA public FROM \"{}\"",
            role.name
        ))
        .unwrap();
}

// ---- constraints ---------------------------------------------------------------------------

const APP_SESSIONS: &str = "CREATE TABLE sessions (id text PRIMARY KEY, user_id text, status text, current_step text, cost double precision, created_at timestamptz, updated_at timestamptz, state jsonb)";

/// The `sessions` table as the application created it, with `column` defined as given.
fn app_table(db: &TestDb, column: &str, definition: &str, before: &str) {
    let name = column.split_whitespace().next().unwrap();
    let ddl = APP_SESSIONS.replace(&format!("{name} text"), definition);
    assert_ne!(ddl, APP_SESSIONS, "{column}");
    db.client()
        .batch_execute(&format!("{before}{ddl}"))
        .unwrap();
}

fn constraint_errors(r: &Run) -> Vec<&str> {
    r.report
        .errors
        .iter()
        .filter(|e| e.code == "constraint")
        .map(|e| e.message.as_str())
        .collect()
}

#[test]
fn preflight_not_null_column_with_a_null_source_value_fails() {
    let s = store_with(3);
    s.row(
        &"no-user",
        &rusqlite::types::Null,
        &"new",
        &"start",
        &0.0,
        &"2024-03-01T10:00:00Z",
        &"2024-03-01T10:00:00Z",
        &rusqlite::types::Null,
    );
    let db = TestDb::new("pf_not_null");
    app_table(&db, "user_id", "user_id text NOT NULL", "");
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(failed(&r), ["constraints"], "{}", r.stdout);
    let errs = constraint_errors(&r);
    assert!(
        errs.iter()
            .any(|m| m.contains("sessions.user_id is NOT NULL") && m.contains("no-user")),
        "{errs:?}"
    );
    assert!(r.check("constraints").summary.contains("sessions.user_id"));
}

#[test]
fn preflight_foreign_key_without_a_parent_fails_naming_the_value() {
    let s = store_with(3); // user-1
    s.row(
        &"ghost",
        &"ghost-user",
        &"new",
        &"start",
        &0.0,
        &"2024-03-01T10:00:00Z",
        &"2024-03-01T10:00:00Z",
        &rusqlite::types::Null,
    );
    let db = TestDb::new("pf_fk");
    app_table(
        &db,
        "user_id",
        "user_id text REFERENCES users(id)",
        "CREATE TABLE users (id text PRIMARY KEY); INSERT INTO users VALUES ('user-1'), ('user-2');",
    );
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(failed(&r), ["constraints"], "{}", r.stdout);
    let errs = constraint_errors(&r);
    assert!(
        errs.iter().any(|m| m.contains("foreign key")
            && m.contains("users")
            && m.contains("\"ghost-user\"")
            && m.contains("1 value(s)")),
        "{errs:?}"
    );
    // Many sessions of one user: a foreign key column repeats, and that is no problem.
    assert!(!errs.iter().any(|m| m.contains("is unique")), "{errs:?}");
}

#[test]
fn preflight_varchar_too_short_for_a_source_value_fails() {
    let s = store_with(3); // status "running": 7 characters
    let db = TestDb::new("pf_varchar");
    app_table(&db, "status", "status varchar(5)", "");
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(failed(&r), ["constraints"], "{}", r.stdout);
    let errs = constraint_errors(&r);
    assert!(
        errs.iter().any(|m| m.contains("sessions.status")
            && m.contains("limited to 5 characters")
            && m.contains("3 source session(s)")
            && m.contains("up to 7")
            && m.contains("\"s000\"")),
        "{errs:?}"
    );
}

#[test]
fn preflight_nul_in_a_state_fails_and_warns_under_quarantine() {
    let s = store_with(3);
    s.session("nul", r#"{"note": "before\u0000after"}"#);
    let db = TestDb::new("pf_nul");
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(status(&r, "constraints"), CheckStatus::Fail, "{}", r.stdout);
    assert_eq!(r.count("invalid"), 1);
    let e = r.error("jsonb_incompatible_nul");
    assert_eq!(e.session.as_deref(), Some("nul"));
    assert!(
        e.path
            .as_deref()
            .unwrap()
            .ends_with("sessions/nul/state.json")
    );
    assert!(
        r.check("constraints")
            .summary
            .contains("1 rejected by jsonb"),
        "{}",
        r.stdout
    );

    // The operator means to quarantine it: every check passes or warns, exit 0.
    let r = preflight(&s, &db, &["--quarantine"]).expect(exit::OK);
    assert_eq!(failed(&r), Vec::<&str>::new(), "{}", r.stdout);
    assert_eq!(status(&r, "constraints"), CheckStatus::Warn);
    assert_eq!(status(&r, "plan"), CheckStatus::Warn);
    assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
    assert!(
        r.report
            .warnings
            .iter()
            .any(|w| w.code == "jsonb_incompatible_nul" && w.session.as_deref() == Some("nul"))
    );
    assert_eq!(r.count("invalid"), 1);
    assert_eq!(r.count("inserted"), 3);
}

#[test]
fn preflight_quarantine_warns_for_an_invalid_json_store_record() {
    let s = store_with(2);
    s.json_store(
        r#"{"version": 1, "sessions": [{"id": "j-bad-cost", "user_id": "u", "status": "done", "current_step": "end", "cost": "abc", "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z", "state": {"a": 1}}]}"#,
    );
    let db = TestDb::new("pf_json_quarantine");
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(
        failed(&r),
        ["source_json_store", "constraints", "plan"],
        "{}",
        r.stdout
    );
    assert_eq!(
        r.error("invalid_cost").session.as_deref(),
        Some("j-bad-cost")
    );
    let r = preflight(&s, &db, &["--quarantine"]).expect(exit::OK);
    assert_eq!(failed(&r), Vec::<&str>::new(), "{}", r.stdout);
    assert_eq!(status(&r, "source_json_store"), CheckStatus::Warn);
    assert!(r.has_warning("invalid_cost"));
}

// ---- source checks -------------------------------------------------------------------------

#[test]
fn preflight_same_id_in_sqlite_and_json_with_other_metadata_fails() {
    let s = store_with(3);
    s.json_store(
        r#"{"version": 1, "sessions": [
            {"id": "s001", "user_id": "someone-else", "status": "done", "current_step": "end", "cost": 9, "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z", "state": null},
            {"id": "json-only", "user_id": "u", "status": "done", "current_step": "end", "cost": 1, "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z", "state": {"a": 1}}
        ]}"#,
    );
    let db = TestDb::new("pf_dup_id");
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(failed(&r), ["source_json_store"], "{}", r.stdout);
    let e = r.error("duplicate_id");
    assert_eq!(e.session.as_deref(), Some("s001"), "{e:?}");
    assert!(e.message.contains("s001"), "{e:?}");
    assert_eq!(
        r.check("source_json_store").details["duplicates"][0]["session"],
        "s001"
    );
    assert!(
        !r.has_warning("duplicate_id"),
        "an error, not also a warning"
    );
    assert_eq!(r.count("sessions"), 4);
}

#[test]
fn preflight_corrupt_sqlite_fails_and_reads_no_further() {
    let s = Store::new();
    {
        let mut c = s.conn();
        let tx = c.transaction().unwrap();
        for i in 0..400 {
            tx.execute(
                "INSERT INTO sessions VALUES (?1, 'u', 'running', 'plan', 0.5, '2024-01-01T00:00:00Z', '2024-01-01T00:00:00Z', ?2)",
                [format!("s{i:04}"), format!("{{\"pad\": \"{}\"}}", "y".repeat(500))],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        c.pragma_update(None, "journal_mode", "delete").unwrap();
    }
    // Overwrite pages in the middle of the file, past the header and the schema page.
    let mut bytes = std::fs::read(&s.db).unwrap();
    assert!(bytes.len() > 100_000, "{}", bytes.len());
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid - 8192..mid + 8192] {
        *b = 0x5a;
    }
    std::fs::write(&s.db, &bytes).unwrap();
    let db = TestDb::new("pf_corrupt");
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(failed(&r), ["source_sqlite"], "{}", r.stdout);
    let e = r.error("sqlite_corrupt");
    assert!(e.path.as_deref().unwrap().ends_with("data/app.db"), "{e:?}");
    assert!(e.message.contains("data/app.db"), "{e:?}");
    // What could not be read is not reported as passed.
    for id in ["source_state_files", "constraints", "plan"] {
        assert_eq!(status(&r, id), CheckStatus::Skip, "{id}: {}", r.stdout);
    }
    assert!(
        r.report.counts.is_empty(),
        "no false zero counts: {:?}",
        r.report.counts
    );
}

#[test]
fn preflight_json_store_that_does_not_parse_fails_its_own_check() {
    let s = store_with(3);
    s.json_store(r#"{"version": 1, "sessions": [{"id": "j1", "#);
    let db = TestDb::new("pf_json_broken");
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(failed(&r), ["source_json_store"], "{}", r.stdout);
    let e = r.error("invalid_json");
    assert!(
        e.path.as_deref().unwrap().ends_with("data/session-db.json"),
        "{e:?}"
    );
    assert!(e.message.contains("session-db.json"), "{e:?}");
    assert_eq!(status(&r, "source_sqlite"), CheckStatus::Pass);
    for id in ["source_state_files", "constraints", "plan"] {
        assert_eq!(status(&r, id), CheckStatus::Skip, "{id}: {}", r.stdout);
    }
}

#[test]
fn preflight_sqlite_row_without_an_id_names_the_database() {
    let s = store_with(2);
    s.row(
        &"",
        &"user-no-id",
        &"running",
        &"plan",
        &0.5,
        &"2024-03-01T10:00:00Z",
        &"2024-03-01T10:00:00Z",
        &r#"{"a": 1}"#,
    );
    let db = TestDb::new("pf_row_no_id");
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    let e = r.error("invalid_id");
    assert_eq!(e.session, None);
    assert!(e.path.as_deref().unwrap().ends_with("data/app.db"), "{e:?}");
    assert!(
        e.message.contains("data/app.db")
            && e.message.contains("the id is empty")
            && e.message.contains("user-no-id"),
        "{e:?}"
    );
}

// ---- every reader error code ---------------------------------------------------------------

fn nobody() -> (u32, u32) {
    let name = std::ffi::CString::new("nobody").unwrap();
    // SAFETY: a valid NUL-terminated name; the result is read at once, before any
    // other getpw* call on this thread.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no user nobody");
    // SAFETY: non-null, as just checked.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn chown_tree(root: &Path, uid: u32, gid: u32) {
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid)).unwrap();
    }
}

/// `(code, session)` of invalid records, sorted; the session is empty when there is none.
type Pairs = Vec<(String, String)>;

/// The invalid records of a preflight report, and of its JSONL list.
fn invalid_pairs(r: &Run, list: &Path) -> (Pairs, Pairs) {
    let mut inline: Pairs = r
        .report
        .errors
        .iter()
        .filter(|e| e.code != "constraint")
        .map(|e| (e.code.clone(), e.session.clone().unwrap_or_default()))
        .collect();
    inline.sort();
    let mut listed: Pairs = std::fs::read_to_string(list)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["code"].as_str().unwrap().to_owned(),
                v["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    listed.sort();
    (inline, listed)
}

#[test]
fn preflight_names_every_reader_error_code_with_its_session() {
    let t = TempDir::new();
    let out = t.path().join("store");
    let g = sessiondb(&[
        "generate-fixture",
        "--out",
        out.to_str().unwrap(),
        "--sessions",
        "300",
        "--bad",
    ])
    .expect(exit::OK);
    let mut expected: Pairs = g.report.details["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["code"].as_str().unwrap().to_owned(),
                b["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    // too_large: a sparse state.json one byte over the limit (no data written).
    let db_path = out.join("data/app.db");
    rusqlite::Connection::open(&db_path)
        .unwrap()
        .execute(
            "INSERT INTO sessions VALUES ('bad-too-large', 'u', 'running', 'plan', 0.5, '2024-01-01T00:00:00Z', '2024-01-01T00:00:00Z', NULL)",
            [],
        )
        .unwrap();
    let big = out.join("sessions/bad-too-large/state.json");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    std::fs::File::create(&big)
        .unwrap()
        .set_len(sessiondb::canon::MAX_STATE_BYTES as u64 + 1)
        .unwrap();
    expected.push(("too_large".into(), "bad-too-large".into()));
    // invalid_id from the JSON store: a record without an id.
    let json = out.join("data/session-db.json");
    let text = std::fs::read_to_string(&json).unwrap();
    assert_eq!(text.matches("\"sessions\": [").count(), 1);
    let text = text.replacen(
        "\"sessions\": [",
        "\"sessions\": [\n    {\"user_id\": \"u-no-id\", \"status\": \"new\", \"state\": {\"a\": 1}},",
        1,
    );
    std::fs::write(&json, text).unwrap();
    expected.push(("invalid_id".into(), String::new()));
    expected.sort();

    let db = TestDb::new("pf_every_code");
    let rd = t.path().join("reports");
    let r = sessiondb(&["preflight", "--report-dir", rd.to_str().unwrap()])
        .config(&out.join("sessiondb.toml"))
        .env("DATABASE_URL", &db.url)
        .expect(exit::PROBLEMS);
    let list = rd.join("preflight-invalid.jsonl");
    let (inline, listed) = invalid_pairs(&r, &list);
    // Root reads a mode-000 file: that session is valid here (see the non-root run).
    let as_root: Pairs = expected
        .iter()
        .filter(|(c, _)| c != "unreadable")
        .cloned()
        .collect();
    assert_eq!(inline, as_root, "{}", r.stdout);
    assert_eq!(listed, as_root);
    assert_eq!(r.count("invalid"), as_root.len() as u64);
    assert_eq!(status(&r, "constraints"), CheckStatus::Fail);
    assert_eq!(status(&r, "source_state_files"), CheckStatus::Fail);
    assert_eq!(status(&r, "source_json_store"), CheckStatus::Fail);
    // Each names where it is: the file, or the JSON store's record.
    let find = |code: &str, id: &str| {
        r.report
            .errors
            .iter()
            .find(|e| e.code == code && e.session.as_deref().unwrap_or_default() == id)
            .unwrap()
    };
    let e = find("too_large", "bad-too-large");
    assert!(
        e.path
            .as_deref()
            .unwrap()
            .ends_with("bad-too-large/state.json")
    );
    assert!(
        e.message
            .contains(&sessiondb::canon::MAX_STATE_BYTES.to_string())
    );
    for (code, id) in [
        ("invalid_json", "bad-invalid-json"),
        ("invalid_utf8", "bad-invalid-utf8"),
        ("jsonb_incompatible_nul", "bad-jsonb-nul"),
        ("symlink_outside_root", "bad-symlink-outside-root"),
    ] {
        let e = find(code, id);
        assert!(
            e.path
                .as_deref()
                .unwrap()
                .ends_with(&format!("{id}/state.json")),
            "{e:?}"
        );
    }
    let from_json: Vec<&Finding> = r
        .report
        .errors
        .iter()
        .filter(|e| e.code == "invalid_id")
        .filter(|e| {
            e.path
                .as_deref()
                .is_some_and(|p| p.ends_with("session-db.json"))
        })
        .collect();
    assert_eq!(from_json.len(), 1, "{:?}", r.report.errors);
    assert!(
        from_json[0].message.contains("record 0"),
        "{:?}",
        from_json[0]
    );
    for (code, id) in [
        ("invalid_id", ""),
        ("invalid_timestamp", "bad-invalid-timestamp"),
        ("invalid_cost", "bad-invalid-cost"),
    ] {
        let e = r
            .report
            .errors
            .iter()
            .find(|e| {
                e.code == code
                    && e.session.as_deref().unwrap_or_default() == id
                    && !e.path.as_deref().unwrap_or_default().ends_with(".json")
            })
            .unwrap();
        assert!(e.path.as_deref().unwrap().ends_with("data/app.db"), "{e:?}");
    }

    // The same store read by an ordinary user: the mode-000 file is `unreadable`.
    let (uid, gid) = nobody();
    let rd = t.path().join("reports-nobody");
    std::fs::create_dir(&rd).unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(&out, uid, gid);
    chown_tree(&rd, uid, gid);
    let r = sessiondb(&["preflight", "--report-dir", rd.to_str().unwrap()])
        .config(&out.join("sessiondb.toml"))
        .env("DATABASE_URL", &db.url)
        .user(uid, gid)
        .expect(exit::PROBLEMS);
    let (inline, listed) = invalid_pairs(&r, &rd.join("preflight-invalid.jsonl"));
    assert_eq!(inline, expected, "{}", r.stdout);
    assert_eq!(listed, expected);
    let e = find_in(&r, "unreadable", "bad-unreadable");
    assert!(e.message.contains("Permission denied"), "{e:?}");
    assert!(
        e.path
            .as_deref()
            .unwrap()
            .ends_with("bad-unreadable/state.json")
    );
}

fn find_in<'a>(r: &'a Run, code: &str, id: &str) -> &'a Finding {
    r.report
        .errors
        .iter()
        .find(|e| e.code == code && e.session.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no {code} for {id}:\n{}", r.stdout))
}

// ---- the plan ------------------------------------------------------------------------------

#[test]
fn preflight_plan_counts_updates_unchanged_and_conflicts_on_a_loaded_target() {
    let s = store_with(10);
    let db = TestDb::new("pf_plan");
    sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let r = preflight(&s, &db, &[]).expect(exit::OK);
    assert_eq!(
        (
            r.count("inserted"),
            r.count("updated"),
            r.count("unchanged")
        ),
        (0, 0, 10),
        "{}",
        r.stdout
    );

    // Changed in the source: a state file, and a row's metadata. A new session too.
    s.state_file("s003", br#"{"step": 3, "changed": "in the source"}"#);
    s.conn()
        .execute("UPDATE sessions SET status = 'done' WHERE id = 's005'", [])
        .unwrap();
    s.session("s010", r#"{"new": true}"#);
    // Changed in the target by hand, behind sessiondb's back: s007 alone, and s008,
    // which the source changed too. Both are conflicts (SPEC §4: whether or not the
    // source changed since).
    db.client()
        .batch_execute(
            "UPDATE session_state SET state = '{\"edited\": \"by hand\"}' WHERE session_id IN ('s007', 's008')",
        )
        .unwrap();
    s.state_file("s008", br#"{"step": 8, "changed": "in the source"}"#);

    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(
        (
            r.count("sessions"),
            r.count("inserted"),
            r.count("updated"),
            r.count("unchanged"),
            r.count("conflicts"),
            r.count("invalid"),
        ),
        (11, 1, 2, 6, 2, 0),
        "{}",
        r.stdout
    );
    assert_eq!(failed(&r), ["plan"], "{}", r.stdout);
    let conflicts = &r.check("plan").details["conflicts"];
    assert_eq!(conflicts.as_array().unwrap().len(), 2, "{conflicts}");
    assert_eq!(conflicts[0]["session"], "s007");
    assert_eq!(conflicts[1]["session"], "s008");
}

// ---- preflight writes nothing --------------------------------------------------------------

/// One path of a store as it is on disk.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    kind: &'static str,
    size: u64,
    mode: u32,
    mtime: (i64, i64),
    /// SHA-256 of a regular file's bytes; a symlink's target.
    content: String,
}

fn tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let (kind, content) = if m.file_type().is_symlink() {
            (
                "symlink",
                std::fs::read_link(e.path()).unwrap().display().to_string(),
            )
        } else if m.is_dir() {
            ("dir", String::new())
        } else {
            let bytes = std::fs::read(e.path()).unwrap();
            ("file", hex::encode(Sha256::digest(&bytes)))
        };
        out.insert(
            e.path().strip_prefix(root).unwrap().to_path_buf(),
            Entry {
                kind,
                size: m.len(),
                mode: m.mode(),
                mtime: (m.mtime(), m.mtime_nsec()),
                content,
            },
        );
    }
    out
}

/// Compare two snapshots of a store, allowing SQLite's own machinery only.
///
/// A read-only connection to a WAL database needs the `-wal` file and the `-shm`
/// wal-index. While the application has the database open both exist and nothing is
/// created; when it does not, SQLite creates both (the `-wal` empty) and, being
/// read-only, cannot remove them when it closes. In the `-shm` every reader records its
/// read mark. No open mode avoids this safely (tried): `immutable=1` reads without
/// locks, unsafe while the application writes; `readonly_shm=1` (which still creates
/// the `-wal`) and `nolock=1` fail to open a WAL database whose `-shm` is missing. So
/// exactly `app.db-shm` (its bytes and times) and a new, empty `app.db-wal` (and the
/// mtime of their folder, which gained them) are not compared. The database file and
/// an existing `-wal` are, byte for byte.
fn assert_untouched(before: &BTreeMap<PathBuf, Entry>, after: &BTreeMap<PathBuf, Entry>) {
    let mut before = before.clone();
    let mut after = after.clone();
    let shm = PathBuf::from("data/app.db-shm");
    let wal = PathBuf::from("data/app.db-wal");
    if before.contains_key(&shm) {
        assert!(
            after.contains_key(&shm),
            "the -shm of a live database stays"
        );
    }
    before.remove(&shm);
    let shm_new = after.remove(&shm).is_some() && !before.contains_key(&shm);
    let mut wal_new = false;
    if !before.contains_key(&wal) {
        if let Some(w) = after.remove(&wal) {
            assert_eq!((w.kind, w.size), ("file", 0), "a new -wal holds nothing");
            wal_new = true;
        }
    }
    if shm_new || wal_new {
        let d = PathBuf::from("data");
        let m = before[&d].mtime;
        after.get_mut(&d).unwrap().mtime = m;
    }
    let changed: Vec<String> = before
        .keys()
        .chain(after.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("{}: {:?} -> {:?}", k.display(), before.get(k), after.get(k)))
        .collect();
    assert!(
        changed.is_empty(),
        "preflight changed the store:\n{}",
        changed.join("\n")
    );
}

/// The target as the catalog describes it, and the content of every table.
fn target_snapshot(db: &TestDb) -> Vec<String> {
    let mut c = db.client();
    let user = "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'";
    let mut out: Vec<String> = Vec::new();
    for r in c
        .query(
            &format!("SELECT n.nspname::text FROM pg_namespace n WHERE {user} ORDER BY 1"),
            &[],
        )
        .unwrap()
    {
        out.push(format!("schema {}", r.get::<_, String>(0)));
    }
    let rels = c
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {user} ORDER BY 1, 2"
            ),
            &[],
        )
        .unwrap();
    for r in &rels {
        let (schema, name, kind): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        out.push(format!("relation {schema}.{name} {kind}"));
        if kind == "r" {
            let row = c
                .query_one(
                    &format!(
                        "SELECT count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM \"{schema}\".\"{name}\" t"
                    ),
                    &[],
                )
                .unwrap();
            out.push(format!(
                "rows {schema}.{name} {} {}",
                row.get::<_, i64>(0),
                row.get::<_, String>(1)
            ));
        }
    }
    for r in c
        .query(
            &format!(
                "SELECT n.nspname::text, i.indexname::text, i.indexdef FROM pg_indexes i
                   JOIN pg_namespace n ON n.nspname = i.schemaname WHERE {user} ORDER BY 1, 2"
            ),
            &[],
        )
        .unwrap()
    {
        out.push(format!(
            "index {}.{} {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2)
        ));
    }
    for r in c
        .query(
            &format!(
                "SELECT n.nspname::text, con.conname::text, pg_get_constraintdef(con.oid) FROM pg_constraint con
                   JOIN pg_namespace n ON n.oid = con.connamespace WHERE {user} ORDER BY 1, 2"
            ),
            &[],
        )
        .unwrap()
    {
        out.push(format!(
            "constraint {}.{} {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2)
        ));
    }
    out
}

/// A store with every kind of source: state files, a state only in the SQLite column,
/// a JSON store (with a session only there), an orphan state file, an upload.
fn varied_store() -> Store {
    let s = store_with(40);
    s.row(
        &"col-only",
        &"u",
        &"done",
        &"end",
        &"0.5",
        &1_709_287_200i64,
        &1_709_287_200_123i64,
        &r#"{"from": "column"}"#,
    );
    s.state_file("orphan", br#"{"orphan": true}"#);
    crate::support::write(&s.sessions.join("s001/uploads/note.txt"), "kept");
    s.json_store(
        r#"{"version": 1, "sessions": [{"id": "json-only", "user_id": "u", "status": "done", "current_step": "end", "cost": 1, "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z", "state": {"a": 1}}]}"#,
    );
    s
}

#[test]
fn preflight_writes_nothing_to_a_new_store_or_a_blank_target() {
    let s = varied_store();
    let db = TestDb::new("pf_nothing_blank");
    let backups = s.root().join("backups");
    assert!(!backups.exists());
    assert!(
        !s.root().join("data/app.db-wal").exists(),
        "a closed WAL database"
    );
    let (tree0, target0) = (tree(s.root()), target_snapshot(&db));
    let r = preflight(&s, &db, &[]).expect(exit::OK);
    assert_eq!(r.count("inserted"), 42, "{}", r.stdout);
    assert_eq!(status(&r, "postgres_schema"), CheckStatus::Pass);
    assert!(!backups.exists(), "the backup folder is not created");
    assert_untouched(&tree0, &tree(s.root()));
    assert_eq!(
        target0,
        target_snapshot(&db),
        "preflight changed the target"
    );
}

#[test]
fn preflight_leaves_an_existing_backup_folder_untouched() {
    let s = store_with(3);
    let db = TestDb::new("pf_backup_dir_mtime");
    let backups = s.root().join("backups");
    std::fs::create_dir(&backups).unwrap();
    crate::support::write(&backups.join("older/manifest.json"), "{}");
    let before = tree(&backups);
    let r = preflight(&s, &db, &[]).expect(exit::OK);
    assert_eq!(status(&r, "backup_location"), CheckStatus::Pass);
    assert_eq!(
        before,
        tree(&backups),
        "not even the folder's mtime changes"
    );

    // A file where the folder should be.
    std::fs::remove_dir_all(&backups).unwrap();
    std::fs::write(&backups, "not a folder").unwrap();
    let r = preflight(&s, &db, &[]).expect(exit::PROBLEMS);
    assert_eq!(failed(&r), ["backup_location"], "{}", r.stdout);
    assert!(r.check("backup_location").summary.contains("not a folder"));
}

#[test]
fn preflight_writes_nothing_to_a_live_wal_store_or_a_loaded_target() {
    let s = varied_store();
    let db = TestDb::new("pf_nothing_loaded");
    sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert!(
        s.root().join("backups").is_dir(),
        "migrate-state took a backup"
    );
    // The application is running: a connection that keeps its writes in the WAL.
    let app = s.conn();
    app.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    app.execute(
        "INSERT INTO sessions VALUES ('live', 'u', 'running', 'plan', 1.0, '2024-05-01T00:00:00Z', '2024-05-01T00:00:00Z', '{\"live\": 1}')",
        [],
    )
    .unwrap();
    app.execute("UPDATE sessions SET status = 'done' WHERE id = 's002'", [])
        .unwrap();
    let wal = s.root().join("data/app.db-wal");
    assert!(
        wal.metadata().unwrap().len() > 0,
        "the writes are in the WAL"
    );
    let (tree0, target0) = (tree(s.root()), target_snapshot(&db));
    let r = preflight(&s, &db, &[]).expect(exit::OK);
    assert_eq!(
        (
            r.count("inserted"),
            r.count("updated"),
            r.count("unchanged")
        ),
        (1, 1, 41),
        "preflight reads what is in the WAL: {}",
        r.stdout
    );
    assert_untouched(&tree0, &tree(s.root()));
    assert_eq!(
        target0,
        target_snapshot(&db),
        "preflight changed the target"
    );
    drop(app);
}
