//! Writing into the legacy store: rollback is all-or-nothing and rerunnable (SPEC §9),
//! and nothing — rollback, the runtime store, a config edit — writes through a symlink
//! or outside the store (issue 14.2, 15.2). Real PostgreSQL, real SQLite, real files.

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use sessiondb::exit;

use crate::faults::row;
use crate::support::store::Store;
use crate::support::{Cmd, Run, pg::TestDb, sessiondb, write};

fn step(s: &Store, db: &TestDb, args: &[&str]) -> Cmd {
    sessiondb(args)
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
}

/// `s`, migrated, verified and cut over to PostgreSQL.
fn cut_over(s: &Store, label: &str) -> TestDb {
    let db = TestDb::new(label);
    step(s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    step(s, &db, &["verify"]).expect(exit::OK);
    step(s, &db, &["set-default", "--dry-run=false"]).expect(exit::OK);
    db
}

/// A store of `n` sessions `s0..`, cut over.
fn store_cut_over(n: usize, label: &str) -> (Store, TestDb) {
    let s = Store::new();
    for i in 0..n {
        s.session(&format!("s{i}"), &format!("{{\"legacy\": {i}}}"));
    }
    let db = cut_over(&s, label);
    (s, db)
}

/// The application, on PostgreSQL, edits these sessions (state and a metadata field).
fn edit_in_pg(db: &TestDb, ids: &[&str], k: u32) {
    let list = ids
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(", ");
    db.client()
        .batch_execute(&format!(
            "UPDATE session_state SET state = state || '{{\"pg\": {k}}}' WHERE session_id IN ({list});
             UPDATE sessions SET current_step = 'pg-{k}' WHERE id IN ({list});"
        ))
        .unwrap();
}

/// Everything of the legacy store a write could change: every SQLite row (each value
/// with its type), and every entry under the sessions folder (a file's bytes and mode,
/// a link's target, a folder), never following a link.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    rows: BTreeMap<String, String>,
    entries: BTreeMap<PathBuf, String>,
}

/// Assert two snapshots are equal, naming only what differs (the files can be large).
#[track_caller]
fn assert_same(now: &Snapshot, before: &Snapshot, what: &str) {
    let diff = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
        a.keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
    };
    let rows = diff(&now.rows, &before.rows);
    let str_keys = |m: &BTreeMap<PathBuf, String>| {
        m.iter()
            .map(|(k, v)| (k.display().to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let entries = diff(&str_keys(&now.entries), &str_keys(&before.entries));
    assert!(
        rows.is_empty() && entries.is_empty(),
        "{what}: rows that differ {rows:?}, entries under sessions/ that differ {entries:?}"
    );
}

fn snapshot(s: &Store) -> Snapshot {
    let c = s.conn();
    let mut st = c
        .prepare("SELECT id, quote(user_id) || quote(status) || quote(current_step) || quote(cost) || quote(created_at) || quote(updated_at) || quote(state) FROM sessions")
        .unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    Snapshot {
        rows,
        entries: tree(&s.sessions),
    }
}

/// Every entry under `dir`, not following links.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let v = if m.file_type().is_symlink() {
            format!("link {}", std::fs::read_link(e.path()).unwrap().display())
        } else if m.is_dir() {
            format!("dir {:o}", m.permissions().mode() & 0o7777)
        } else {
            format!(
                "file {:o} {}",
                m.permissions().mode() & 0o7777,
                String::from_utf8_lossy(&std::fs::read(e.path()).unwrap())
            )
        };
        out.insert(e.path().strip_prefix(dir).unwrap().to_path_buf(), v);
    }
    out
}

fn legacy_store_state(r: &Run) -> String {
    r.report.details["legacy_store"]["state"]
        .as_str()
        .unwrap_or_else(|| panic!("no legacy_store: {}", r.stdout))
        .to_owned()
}

/// The dry run and the real run refuse alike, and the real run writes nothing: the
/// legacy store, the config and `outside` are exactly as they were.
fn refused_alike(s: &Store, db: &TestDb, code: &str, outside: &[&Path]) -> Run {
    let before = snapshot(s);
    let outside_before: Vec<_> = outside.iter().map(|p| tree_or_file(p)).collect();
    let config = std::fs::read(&s.config).unwrap();
    let dry = step(s, db, &["rollback"]).expect(exit::PROBLEMS);
    assert!(dry.has_error(code), "{}", dry.stdout);
    let real = step(s, db, &["rollback", "--dry-run=false"]).expect(exit::PROBLEMS);
    assert!(real.has_error(code), "{}", real.stdout);
    assert_eq!(
        serde_json::to_value(real.report.status).unwrap(),
        "fail",
        "{}",
        real.stdout
    );
    assert_same(&snapshot(s), &before, "the legacy store was written to");
    assert_eq!(
        std::fs::read(&s.config).unwrap(),
        config,
        "the config changed"
    );
    for (p, b) in outside.iter().zip(outside_before) {
        assert_eq!(tree_or_file(p), b, "{} was written to", p.display());
    }
    assert_eq!(legacy_store_state(&real), "unchanged");
    real
}

fn tree_or_file(p: &Path) -> BTreeMap<PathBuf, String> {
    if p.is_dir() {
        tree(p)
    } else {
        BTreeMap::from([(p.to_path_buf(), format!("{:?}", std::fs::read(p).ok()))])
    }
}

#[test]
fn rollback_never_writes_through_a_session_folder_symlinked_outside_the_store() {
    let (s, db) = store_cut_over(3, "rb_link_folder");
    // After the cutover, sessions/s1 becomes a link to a folder outside the store
    // holding a state.json of its own.
    let outside = s.root().join("outside");
    write(&outside.join("state.json"), b"{\"not\": \"yours\"}");
    std::fs::remove_dir_all(s.sessions.join("s1")).unwrap();
    symlink(&outside, s.sessions.join("s1")).unwrap();
    edit_in_pg(&db, &["s0", "s1"], 1);
    let r = refused_alike(&s, &db, "symlink_outside_root", &[&outside]);
    let e = r.error("symlink_outside_root");
    assert_eq!(
        e.path.as_deref(),
        Some(s.sessions.join("s1").to_str().unwrap()),
        "{}",
        r.stdout
    );
    assert!(e.message.contains("\"s1\""), "{}", e.message);
    row(
        "sessions/<id> symlinked outside the store",
        "rollback (dry run and --dry-run=false)",
        "exit 1, symlink_outside_root naming the folder",
        "nothing written (outside file, other sessions, config unchanged)",
    );
}

#[test]
fn rollback_refuses_state_file_links_and_dotdot_links_and_names_each() {
    let (s, db) = store_cut_over(4, "rb_link_file");
    let outside = s.root().join("outside");
    write(&outside.join("a.json"), b"{\"outside\": \"a\"}");
    write(&outside.join("b/state.json"), b"{\"outside\": \"b\"}");
    // s0: state.json links to a file outside.
    std::fs::remove_file(s.sessions.join("s0/state.json")).unwrap();
    symlink(outside.join("a.json"), s.sessions.join("s0/state.json")).unwrap();
    // s1: the folder is a relative link that climbs out with `..`.
    std::fs::remove_dir_all(s.sessions.join("s1")).unwrap();
    symlink("../outside/b", s.sessions.join("s1")).unwrap();
    // s2: state.json links to another session's file, inside the store.
    std::fs::remove_file(s.sessions.join("s2/state.json")).unwrap();
    symlink("../s3/state.json", s.sessions.join("s2/state.json")).unwrap();
    edit_in_pg(&db, &["s0", "s1", "s2", "s3"], 1);
    let r = refused_alike(&s, &db, "symlink_outside_root", &[&outside]);
    let mut named: Vec<&str> = r
        .report
        .errors
        .iter()
        .filter(|e| e.code == "symlink_outside_root")
        .filter_map(|e| e.path.as_deref())
        .collect();
    named.sort();
    let p = |rel: &str| s.sessions.join(rel).display().to_string();
    assert_eq!(
        named,
        vec![
            p("s0/state.json").as_str(),
            p("s1").as_str(),
            p("s2/state.json").as_str()
        ],
        "every link is named, in one run: {}",
        r.stdout
    );
    row(
        "state.json symlinks (outside, inside), a ../ folder link",
        "rollback (dry run and --dry-run=false)",
        "exit 1, 3 × symlink_outside_root, each named",
        "nothing written anywhere (s3 unchanged too)",
    );
}

/// Rebuild the legacy table with an extra column `question TEXT NOT NULL` (SQLite
/// cannot add one by ALTER TABLE without a default).
fn add_not_null_column(s: &Store) {
    s.conn()
        .execute_batch(
            "CREATE TABLE s2 (id TEXT PRIMARY KEY, user_id TEXT, status TEXT, current_step TEXT, cost REAL, created_at TEXT, updated_at TEXT, state TEXT, question TEXT NOT NULL);
             INSERT INTO s2 SELECT *, 'why?' FROM sessions;
             DROP TABLE sessions;
             ALTER TABLE s2 RENAME TO sessions;",
        )
        .unwrap();
}

fn create_in_pg(db: &TestDb, id: &str) {
    db.client()
        .batch_execute(&format!(
            "INSERT INTO sessions (id, user_id, status, current_step, cost, created_at, updated_at) VALUES ('{id}', 'u9', 'running', 'pg', 1.25, '2025-01-01T00:00:00Z', '2025-01-01T00:00:01Z');
             INSERT INTO session_state (session_id, state, updated_at) VALUES ('{id}', '{{\"made\": \"in postgres\"}}', now());"
        ))
        .unwrap();
}

#[test]
fn rollback_refuses_up_front_a_row_the_legacy_table_cannot_hold() {
    let s = Store::new();
    for i in 0..3 {
        s.session(&format!("s{i}"), &format!("{{\"legacy\": {i}}}"));
    }
    add_not_null_column(&s);
    let db = cut_over(&s, "rb_not_null");
    edit_in_pg(&db, &["s0", "s2"], 1);
    create_in_pg(&db, "made-in-pg");
    let r = refused_alike(&s, &db, "schema_mismatch", &[]);
    let e = r.error("schema_mismatch");
    assert!(
        e.message.contains("\"question\"") && e.message.contains("sessions in "),
        "names the table and the column: {}",
        e.message
    );
    assert!(e.message.contains("made-in-pg"), "{}", e.message);
    assert!(
        !s.root().join("backups").exists()
            || std::fs::read_dir(s.root().join("backups"))
                .unwrap()
                .flatten()
                .all(|e| !e.path().join("rollback").exists()),
        "refused before any journal"
    );
    row(
        "legacy table with a NOT NULL column sessiondb cannot fill",
        "rollback (dry run and --dry-run=false)",
        "exit 1 both, schema_mismatch naming sessions.question",
        "nothing written, config unchanged",
    );
}

#[test]
fn rollback_refuses_up_front_a_value_a_strict_column_refuses() {
    let s = Store::new();
    s.conn()
        .execute_batch(
            "DROP TABLE sessions;
             CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id TEXT, status TEXT, current_step TEXT, cost INTEGER, created_at TEXT, updated_at TEXT, state TEXT) STRICT;",
        )
        .unwrap();
    for i in 0..3 {
        let id = format!("s{i}");
        s.row(
            &id,
            &"u",
            &"running",
            &"plan",
            &2,
            &"2024-03-01T10:00:00Z",
            &"2024-03-01T10:00:00Z",
            &rusqlite::types::Null,
        );
        s.state_file(&id, format!("{{\"legacy\": {i}}}").as_bytes());
    }
    let db = cut_over(&s, "rb_strict");
    edit_in_pg(&db, &["s0", "s1"], 1);
    db.client()
        .batch_execute("UPDATE sessions SET cost = 0.5 WHERE id = 's1'")
        .unwrap();
    let r = refused_alike(&s, &db, "schema_mismatch", &[]);
    let e = r.error("schema_mismatch");
    assert!(
        e.message.contains("STRICT")
            && e.message.contains("\"cost\"")
            && e.message.contains("\"s1\""),
        "{}",
        e.message
    );
    row(
        "STRICT legacy table, a cost its INTEGER column refuses",
        "rollback (dry run and --dry-run=false)",
        "exit 1 both, schema_mismatch naming sessions.cost and the session",
        "nothing written, config unchanged",
    );
}

#[test]
fn rollback_undoes_a_round_that_the_legacy_table_refuses_at_commit_and_a_rerun_completes() {
    let (s, db) = store_cut_over(4, "rb_trigger");
    // What only SQLite can tell: a trigger refusing new rows.
    s.conn()
        .execute_batch(
            "CREATE TRIGGER no_new BEFORE INSERT ON sessions BEGIN SELECT RAISE(ABORT, 'the application forbids new sessions here'); END;",
        )
        .unwrap();
    edit_in_pg(&db, &["s0", "s1", "s3"], 1);
    create_in_pg(&db, "made-in-pg");
    let before = snapshot(&s);
    let config = std::fs::read(&s.config).unwrap();
    step(&s, &db, &["rollback"]).expect(exit::OK);
    let r = step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::PROBLEMS);
    let e = r.error("schema_mismatch");
    assert!(e.message.contains("made-in-pg"), "{}", e.message);
    assert_eq!(legacy_store_state(&r), "unchanged", "{}", r.stdout);
    assert_same(
        &snapshot(&s),
        &before,
        "the staged state files were taken back, no folder left for made-in-pg",
    );
    assert_eq!(std::fs::read(&s.config).unwrap(), config);
    let journal = r
        .report
        .artifacts
        .iter()
        .find(|a| a.kind == "journal")
        .expect("the journal is named");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&journal.path).unwrap()).unwrap();
    assert_eq!(j["state"], "undone", "{j}");
    assert_eq!(j["files"].as_array().unwrap().len(), 4);
    // Fixed, a rerun brings everything back.
    s.conn().execute_batch("DROP TRIGGER no_new").unwrap();
    let again = step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::OK);
    assert_eq!(again.count("exported"), 4);
    assert_eq!(legacy_store_state(&again), "complete");
    let v = step(&s, &db, &["verify"]).expect(exit::OK);
    assert_eq!(v.count("different") + v.count("missing"), 0);
    row(
        "legacy table refusing a row at commit (a trigger)",
        "rollback --dry-run=false, then again",
        "exit 1 (schema_mismatch), then 0",
        "staged files undone (store byte-identical), config unchanged; the rerun exported 4, verify 0 differences",
    );
}

#[test]
fn rollback_on_a_full_disk_leaves_the_legacy_store_untouched_and_a_rerun_completes() {
    if !sessiondb::fsutil::is_root() {
        eprintln!("note: skipped: needs root to mount a tmpfs");
        return;
    }
    let s = Store::new();
    // The sessions folder on a small filesystem: room for the store, not for the export.
    let fs = crate::support::Tmpfs::mount(&s.sessions, "64k");
    for i in 0..8 {
        s.session(&format!("s{i}"), &format!("{{\"legacy\": {i}}}"));
    }
    let db = cut_over(&s, "rb_full_disk");
    let pad = "x".repeat(12 * 1024);
    db.client()
        .batch_execute(&format!(
            "UPDATE session_state SET state = state || '{{\"pad\": \"{pad}\"}}'"
        ))
        .unwrap();
    let before = snapshot(&s);
    let config = std::fs::read(&s.config).unwrap();
    let r = step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::OPERATIONAL);
    let e = r.error("disk_space");
    assert!(
        e.path
            .as_deref()
            .is_some_and(|p| p.starts_with(s.sessions.to_str().unwrap())),
        "{}",
        r.stdout
    );
    assert_same(&snapshot(&s), &before, "untouched, no temporary file left");
    assert_eq!(std::fs::read(&s.config).unwrap(), config);
    assert_eq!(legacy_store_state(&r), "unchanged", "{}", r.stdout);
    // Room made, the rerun completes it.
    fs.remount("4m");
    let again = step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::OK);
    assert_eq!(again.count("exported"), 8);
    let v = step(&s, &db, &["verify"]).expect(exit::OK);
    assert_eq!(v.count("different") + v.count("missing"), 0);
    assert!(
        std::fs::read_to_string(&s.config)
            .unwrap()
            .contains("backend = \"sqlite\"")
    );
    row(
        "full disk mid-export (sessions folder on a 64k tmpfs)",
        "rollback --dry-run=false, then again",
        "exit 3 (disk_space naming the file), then 0",
        "legacy store byte-identical after the failure; the rerun exported 8, verify 0 differences",
    );
}

#[test]
fn set_default_and_rollback_edit_a_symlinked_config_where_it_leads_and_keep_the_link() {
    let s = Store::new();
    s.session("s0", r#"{"legacy": 0}"#);
    // Config management's layout: the config is a link to the file it manages.
    let managed = s.root().join("managed/sessiondb.toml");
    std::fs::create_dir_all(managed.parent().unwrap()).unwrap();
    std::fs::rename(&s.config, &managed).unwrap();
    symlink("managed/sessiondb.toml", &s.config).unwrap();
    let is_link = || {
        std::fs::symlink_metadata(&s.config)
            .unwrap()
            .file_type()
            .is_symlink()
    };
    let db = TestDb::new("rb_config_link");
    step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    step(&s, &db, &["verify"]).expect(exit::OK);
    let r = step(&s, &db, &["set-default", "--dry-run=false"]).expect(exit::OK);
    assert!(r.has_warning("config_symlink"), "{}", r.stdout);
    assert!(
        is_link(),
        "set-default replaced the link with a regular file"
    );
    assert!(
        std::fs::read_to_string(&managed)
            .unwrap()
            .contains("backend = \"postgres\"")
    );
    edit_in_pg(&db, &["s0"], 1);
    let r = step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::OK);
    assert!(r.has_warning("config_symlink"), "{}", r.stdout);
    assert_eq!(
        r.report.details["plan"]["config"]["target"],
        std::fs::canonicalize(&managed)
            .unwrap()
            .display()
            .to_string()
    );
    assert!(is_link(), "rollback replaced the link with a regular file");
    assert!(
        std::fs::read_to_string(&managed)
            .unwrap()
            .contains("backend = \"sqlite\"  # the application's backend")
    );
    row(
        "config that is a symlink (config management)",
        "set-default, rollback --dry-run=false",
        "exit 0, config_symlink warning",
        "the file the link leads to edited atomically, the link kept",
    );
}

/// A Kubernetes ConfigMap volume: `sessiondb.toml -> ..data/sessiondb.toml`,
/// `..data -> ..<timestamp>/`, the file inside that folder. The config's paths are
/// absolute (its folder is not the store's).
fn configmap(s: &Store, backend: &str) -> PathBuf {
    let cm = s.root().join("cm");
    let stamp = cm.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir_all(&stamp).unwrap();
    let r = s.root().display();
    std::fs::write(
        stamp.join("sessiondb.toml"),
        format!(
            "[sessiondb]\nbackend = \"{backend}\"\n\n[sqlite]\npath = \"{r}/data/app.db\"\nsessions_dir = \"{r}/sessions\"\n\n[backup]\ndir = \"{r}/backups\"\n"
        ),
    )
    .unwrap();
    symlink("..2026_01_01_00_00_00.000000001", cm.join("..data")).unwrap();
    symlink("..data/sessiondb.toml", cm.join("sessiondb.toml")).unwrap();
    cm.join("sessiondb.toml")
}

#[test]
fn a_kubernetes_configmap_config_is_refused_before_anything_is_written() {
    let (s, db) = store_cut_over(2, "rb_configmap");
    edit_in_pg(&db, &["s0"], 1);
    let cm = configmap(&s, "postgres");
    let cm_tree = tree(&s.root().join("cm"));
    let before = snapshot(&s);
    for args in [&["rollback"][..], &["rollback", "--dry-run=false"]] {
        let r = sessiondb(args)
            .config(&cm)
            .env("DATABASE_URL", &db.url)
            .expect(exit::PROBLEMS);
        let e = r.error("config_read_only");
        assert!(
            e.message.contains("ConfigMap") && e.message.contains("..data"),
            "{}",
            e.message
        );
    }
    assert_same(&snapshot(&s), &before, "nothing exported");
    // And set-default on a ConfigMap that says sqlite.
    let cm2 = {
        std::fs::remove_dir_all(s.root().join("cm")).unwrap();
        configmap(&s, "sqlite")
    };
    let cm2_tree = tree(&s.root().join("cm"));
    for args in [
        &["set-default"][..],
        &["set-default", "--dry-run=false", "--force"],
    ] {
        let r = sessiondb(args)
            .config(&cm2)
            .env("DATABASE_URL", &db.url)
            .expect(exit::PROBLEMS);
        assert!(r.has_error("config_read_only"), "{}", r.stdout);
    }
    assert_eq!(
        tree(&s.root().join("cm")),
        cm2_tree,
        "the mount is untouched"
    );
    let _ = cm_tree;
    row(
        "config on a Kubernetes ConfigMap mount (..data links)",
        "rollback, set-default (dry run and real)",
        "exit 1, config_read_only naming the mount",
        "nothing exported, the mount untouched",
    );
}

#[test]
fn exported_state_files_keep_the_stores_modes() {
    let (s, db) = store_cut_over(4, "rb_modes");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let set =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    // This store's files are 0600 in 0750 folders; one file is 0640.
    for i in 0..4 {
        set(&s.sessions.join(format!("s{i}")), 0o750);
        set(&s.sessions.join(format!("s{i}/state.json")), 0o600);
    }
    set(&s.sessions.join("s1/state.json"), 0o640);
    edit_in_pg(&db, &["s0", "s1"], 1);
    create_in_pg(&db, "made-in-pg");
    step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::OK);
    assert_eq!(mode(&s.sessions.join("s0/state.json")), 0o600);
    assert_eq!(
        mode(&s.sessions.join("s1/state.json")),
        0o640,
        "a replaced file keeps its own mode"
    );
    assert_eq!(
        mode(&s.sessions.join("made-in-pg/state.json")),
        0o600,
        "a new file gets the store's usual mode"
    );
    assert_eq!(mode(&s.sessions.join("made-in-pg")), 0o750);
    assert_eq!(
        std::fs::read_to_string(s.sessions.join("made-in-pg/state.json")).unwrap(),
        r#"{"made": "in postgres"}"#
    );
    row(
        "state files of modes 0600/0640 in 0750 folders",
        "rollback --dry-run=false",
        "exit 0",
        "a replaced file keeps its mode, a new one gets the store's (0600, folder 0750)",
    );
}

#[test]
fn rollback_names_every_export_and_its_backup_restores_the_replaced_bytes() {
    let n = 120;
    let (s, db) = store_cut_over(n, "rb_report");
    let ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    let pre: BTreeMap<String, Vec<u8>> = ids
        .iter()
        .map(|i| {
            (
                i.clone(),
                std::fs::read(s.sessions.join(i).join("state.json")).unwrap(),
            )
        })
        .collect();
    edit_in_pg(&db, &ids.iter().map(String::as_str).collect::<Vec<_>>(), 7);
    let reports = s.root().join("reports");
    let r = step(&s, &db, &["rollback", "--dry-run=false"])
        .arg("--report-dir")
        .arg(&reports)
        .expect(exit::OK);
    assert_eq!(r.count("exported"), n as u64);
    assert_eq!(r.count("files_written"), n as u64);
    assert_eq!(legacy_store_state(&r), "complete");
    let inline = r.report.details["exported"].as_array().unwrap();
    assert_eq!(inline.len(), 100, "the first 100 inline");
    assert_eq!(inline[0]["file_action"], "replace");
    assert_eq!(inline[0]["row"], "update");
    let side = std::fs::read_to_string(reports.join("rollback-exported.jsonl")).unwrap();
    let mut listed: Vec<String> = side
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["session"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    listed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want, "all of them in the side file");
    // The backup holds every file the export replaced: restoring from it gives the
    // bytes from before the rollback.
    let backup = PathBuf::from(
        &r.report
            .artifacts
            .iter()
            .find(|a| a.kind == "backup")
            .unwrap()
            .path,
    );
    let journal = &r
        .report
        .artifacts
        .iter()
        .find(|a| a.kind == "journal")
        .unwrap()
        .path;
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(journal).unwrap()).unwrap();
    assert_eq!(j["state"], "done");
    let files = j["files"].as_array().unwrap();
    assert_eq!(files.len(), n);
    for f in files {
        let id = f["session"].as_str().unwrap();
        let copy = backup.join(f["backup_copy"].as_str().unwrap());
        let dest = s.sessions.join(id).join("state.json");
        assert_ne!(std::fs::read(&dest).unwrap(), pre[id], "{id} was exported");
        std::fs::copy(&copy, &dest).unwrap();
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            pre[id],
            "{id}: restored from the backup"
        );
        assert_eq!(
            f["replaces"]["sha256"].as_str().unwrap(),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&pre[id]))
        );
    }
    row(
        &format!("{n} sessions exported"),
        "rollback --dry-run=false --report-dir",
        "exit 0, 100 named inline, all in rollback-exported.jsonl",
        &format!("the journal's backup copies restore all {n} replaced files byte for byte"),
    );
}

#[test]
fn the_runtime_store_never_writes_through_a_symlink() {
    use sessiondb::store;
    let s = Store::new();
    for i in 0..3 {
        s.session(&format!("s{i}"), &format!("{{\"legacy\": {i}}}"));
    }
    let outside = s.root().join("outside");
    write(&outside.join("state.json"), b"{\"outside\": 1}");
    write(&outside.join("b.json"), b"{\"outside\": 2}");
    // s0: the folder links outside; s1: state.json links outside; s2: the folder links
    // to another session's folder inside the store.
    std::fs::remove_dir_all(s.sessions.join("s0")).unwrap();
    symlink(&outside, s.sessions.join("s0")).unwrap();
    std::fs::remove_file(s.sessions.join("s1/state.json")).unwrap();
    symlink(outside.join("b.json"), s.sessions.join("s1/state.json")).unwrap();
    std::fs::create_dir_all(s.sessions.join("elsewhere")).unwrap();
    std::fs::remove_dir_all(s.sessions.join("s2")).unwrap();
    symlink("elsewhere", s.sessions.join("s2")).unwrap();
    let before = tree(&s.sessions);
    let outside_before = tree(&outside);
    let env = sessiondb::config::Env(Default::default());
    let cfg = sessiondb::config::Config::load(Some(&s.config), &env).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let st = store::open_with(&cfg, &env, store::Options::default())
            .await
            .unwrap();
        for (id, path) in [
            ("s0", s.sessions.join("s0")),
            ("s1", s.sessions.join("s1/state.json")),
            ("s2", s.sessions.join("s2")),
        ] {
            let e = st
                .put_state(id, serde_json::json!({"new": id}))
                .await
                .unwrap_err();
            assert_eq!(e.code(), "symlink_outside_root", "{id}: {e}");
            assert!(!e.is_transient(), "{id}: a refusal is final");
            match &e {
                store::Error::UnsafePath {
                    id: got, path: p, ..
                } => {
                    assert_eq!((got.as_str(), p), (id, &path));
                }
                other => panic!("{id}: not the typed refusal: {other:?}"),
            }
        }
        st.close().await.unwrap();
    });
    assert_eq!(tree(&s.sessions), before, "nothing written in the store");
    assert_eq!(tree(&outside), outside_before, "nothing written outside");
    row(
        "sessions/<id> and state.json symlinks (outside, inside)",
        "runtime store put_state (SQLite + files)",
        "store::Error::UnsafePath, symlink_outside_root, not transient",
        "nothing written in the store or outside",
    );
}

#[test]
fn sessions_a_rollback_exported_keep_their_row_versions_so_a_later_change_is_a_conflict() {
    // A session created and one edited on PostgreSQL, rolled back into the legacy store:
    // the ledger records the target rows' versions with the export, so the catch-up that
    // follows warns nothing about unknown versions, and a hand edit of one of those rows
    // afterwards is a conflict rather than invisible.
    let (s, db) = store_cut_over(3, "rollback_row_versions");
    create_in_pg(&db, "made-in-pg");
    edit_in_pg(&db, &["s1"], 7);
    step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::OK);
    let r = step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    assert!(!r.has_warning("row_versions_unknown"), "{}", r.stdout);
    let unknown: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM sessiondb_ledger WHERE session_id IN ('made-in-pg', 's1') AND sessions_xmin IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(unknown, 0);
    db.client()
        .batch_execute("UPDATE sessions SET current_step = 'by hand' WHERE id = 'made-in-pg'")
        .unwrap();
    let r = step(&s, &db, &["migrate-state", "--dry-run=false"]).run();
    assert_eq!(r.code, exit::PROBLEMS, "{}", r.stdout);
    assert!(r.has_error("conflict"), "{}", r.stdout);
}
