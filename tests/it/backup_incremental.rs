//! Incremental backups (SPEC §4, issue 19.1) and `backup --prune` (issue 18.5): a
//! later backup shares what did not change, each stays whole on its own, and prune
//! keeps what it must.

use std::path::{Path, PathBuf};

use sessiondb::backup::{self, Manifest};
use sessiondb::exit;

use crate::support::pg::TestDb;
use crate::support::store::Store;
use crate::support::{Cmd, Run, sessiondb, write};

/// Files younger than this get no stamp and are read again (walk.rs: `SETTLE`).
const SETTLE: std::time::Duration = std::time::Duration::from_millis(2100);

fn take(s: &Store) -> (Run, PathBuf) {
    let r = sessiondb(&["backup"]).config(&s.config).expect(exit::OK);
    let dir = PathBuf::from(r.report.details["backup"].as_str().expect("details.backup"));
    (r, dir)
}

fn sha_of(dir: &Path, rel: &str) -> String {
    let m = Manifest::read(dir).unwrap();
    m.files
        .iter()
        .find(|f| f.path == rel)
        .unwrap_or_else(|| panic!("{rel} not listed in {}", dir.display()))
        .sha256
        .to_string()
}

fn verify(dir: &Path, code: i32) -> Run {
    sessiondb(&["backup", "--verify", dir.to_str().unwrap()]).expect(code)
}

/// Rewrite one state file in place (same inode, new bytes).
fn rewrite(s: &Store, id: &str, text: &str) {
    write(&s.sessions.join(id).join("state.json"), text);
}

/// A store of `n` sessions old enough for their stamps to be trusted.
fn settled_store(n: usize) -> Store {
    let s = Store::new();
    s.bulk(n, 600);
    std::thread::sleep(SETTLE);
    s
}

#[test]
fn a_second_backup_copies_only_the_changed_file_and_leaves_the_first_as_it_was() {
    let s = settled_store(20);
    let (r1, dir1) = take(&s);
    assert_eq!(r1.count("files"), 24, "{}", r1.stdout);
    let changed = "state/k0000007/state.json";
    let before = sha_of(&dir1, changed);
    let kept1 = backup::stored_path(
        &dir1,
        Manifest::read(&dir1)
            .unwrap()
            .files
            .iter()
            .find(|f| f.path == changed)
            .unwrap(),
    );
    let bytes1 = std::fs::read(&kept1).unwrap();

    rewrite(&s, "k0000007", "{\"i\": 7, \"changed\": true}");
    let (r2, dir2) = take(&s);
    assert_ne!(dir1, dir2);
    // One file copied, every other one shared with the first backup.
    assert_eq!(r2.count("files_copied"), 1, "{}", r2.stdout);
    assert_eq!(r2.count("files_shared"), 19, "{}", r2.stdout);
    assert_eq!(r2.count("sessions_carried"), 19, "{}", r2.stdout);
    let m2 = Manifest::read(&dir2).unwrap();
    let sharing = m2.sharing.as_ref().expect("the second backup shares");
    assert_eq!(sharing.base, dir1);
    assert_eq!(sharing.files_copied, 1);
    // The manifest still lists every file with its checksum.
    assert_eq!(m2.counts.state_files, 20);
    assert_eq!(
        m2.files
            .iter()
            .filter(|f| f.path.starts_with("state/"))
            .count(),
        20
    );
    let m1 = Manifest::read(&dir1).unwrap();
    for f in m2.files.iter().filter(|f| f.path.starts_with("state/")) {
        let earlier = m1.files.iter().find(|e| e.path == f.path).unwrap();
        if f.path == changed {
            assert_ne!(f.sha256, earlier.sha256);
        } else {
            assert_eq!(f.sha256, earlier.sha256, "{}", f.path);
            assert_eq!(
                backup::stored_path(&dir2, f),
                backup::stored_path(&dir1, earlier),
                "{} is shared, not copied",
                f.path
            );
        }
    }
    // The file changed in the store is not changed inside the first backup.
    assert_eq!(sha_of(&dir1, changed), before);
    assert_eq!(std::fs::read(&kept1).unwrap(), bytes1);
    verify(&dir1, exit::OK);
    let v2 = verify(&dir2, exit::OK);
    assert_eq!(v2.count("files"), 24);
    // A third backup with nothing changed copies nothing.
    let (r3, _) = take(&s);
    assert_eq!(r3.count("files_copied"), 0, "{}", r3.stdout);
    assert_eq!(r3.count("files_shared"), 20, "{}", r3.stdout);
}

#[test]
fn deleting_the_first_backup_leaves_the_second_sound_and_restorable() {
    let s = settled_store(12);
    let db = TestDb::new("incr_delete_first");
    let (_, dir1) = take(&s);
    rewrite(&s, "k0000003", "{\"i\": 3, \"second\": true}");
    let (r2, dir2) = take(&s);
    assert_eq!(r2.count("files_copied"), 1, "{}", r2.stdout);
    std::fs::remove_dir_all(&dir1).unwrap();

    let v = verify(&dir2, exit::OK);
    assert_eq!(v.count("files"), 16);
    // Written out as plain files, it is the store as it was.
    let out = s.root().join("restored");
    sessiondb(&[
        "backup",
        "--extract",
        dir2.to_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
    ])
    .config(&s.config)
    .expect(exit::OK);
    for i in 0..12 {
        let id = format!("k{i:07}");
        assert_eq!(
            std::fs::read(out.join("state").join(&id).join("state.json")).unwrap(),
            std::fs::read(s.sessions.join(&id).join("state.json")).unwrap(),
            "{id}"
        );
    }
    // And a load stands on it, checked to its checksums.
    let r = sessiondb(&[
        "migrate-state",
        "--dry-run=false",
        "--backup",
        dir2.to_str().unwrap(),
        "--verify-backup",
    ])
    .config(&s.config)
    .env("DATABASE_URL", &db.url)
    .expect(exit::OK);
    assert_eq!(r.count("inserted"), 12, "{}", r.stdout);
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

fn database_linked(dir: &Path) -> bool {
    Manifest::read(dir)
        .unwrap()
        .sharing
        .is_some_and(|s| s.database_linked)
}

#[test]
fn an_unchanged_database_is_the_earlier_copy_linked_and_a_changed_one_is_copied() {
    let s = settled_store(10);
    let (_, dir1) = take(&s);
    let copy = |d: &Path| d.join(backup::SQLITE_COPY);
    let m1 = Manifest::read(&dir1).unwrap();
    let e1 = m1
        .files
        .iter()
        .find(|f| f.path == backup::SQLITE_COPY)
        .unwrap();
    assert!(
        e1.stamp.as_deref().is_some_and(|st| st.starts_with("d1:")),
        "the copy of a settled database records its stamp: {e1:?}"
    );

    // Nothing written to the database: the second backup links the first one's copy.
    rewrite(&s, "k0000002", "{\"i\": 2, \"second\": true}");
    let (r2, dir2) = take(&s);
    assert!(database_linked(&dir2), "{}", r2.stdout);
    assert_eq!(inode(&copy(&dir2)), inode(&copy(&dir1)));
    assert_eq!(
        sha_of(&dir2, backup::SQLITE_COPY),
        sha_of(&dir1, backup::SQLITE_COPY)
    );
    assert_eq!(r2.count("sqlite_rows"), 10, "{}", r2.stdout);
    assert_eq!(r2.count("files_copied"), 1, "{}", r2.stdout);
    // The first backup deleted, the second still holds its database, checked whole.
    std::fs::remove_dir_all(&dir1).unwrap();
    let v = verify(&dir2, exit::OK);
    assert_eq!(v.count("files"), 14, "{}", v.stdout);
    let rows: i64 = rusqlite::Connection::open(copy(&dir2))
        .unwrap()
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 10);

    // A row written: the database is copied again, and the copy holds the new row.
    s.conn()
        .execute(
            "UPDATE sessions SET status = 'done' WHERE id = 'k0000004'",
            [],
        )
        .unwrap();
    std::thread::sleep(SETTLE);
    let (r3, dir3) = take(&s);
    assert!(!database_linked(&dir3), "{}", r3.stdout);
    assert_ne!(inode(&copy(&dir3)), inode(&copy(&dir2)));
    let status: String = rusqlite::Connection::open(copy(&dir3))
        .unwrap()
        .query_row(
            "SELECT status FROM sessions WHERE id = 'k0000004'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "done");
    verify(&dir3, exit::OK);

    // A copy damaged inside the earlier backup is not linked: warned, copied again.
    let damaged = copy(&dir3);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::set_permissions(
        &damaged,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(&damaged, &bytes).unwrap();
    let (r4, dir4) = take(&s);
    assert!(r4.has_warning("backup_damaged"), "{}", r4.stdout);
    assert!(!database_linked(&dir4), "{}", r4.stdout);
    assert_ne!(inode(&copy(&dir4)), inode(&damaged));
    verify(&dir4, exit::OK);
}

// ---- prune -------------------------------------------------------------------------------

fn prune(s: &Store, db_url: &str, args: &[&str]) -> Cmd {
    let mut all = vec!["backup", "--prune"];
    all.extend_from_slice(args);
    sessiondb(&all)
        .config(&s.config)
        .env("DATABASE_URL", db_url)
}

fn folders(s: &Store) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(s.root().join("backups"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.ends_with(backup::BLOBS_DIR))
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<PathBuf>) -> Vec<PathBuf> {
    v.sort();
    v
}

fn blob_count(s: &Store) -> usize {
    walkdir::WalkDir::new(s.root().join("backups").join(backup::BLOBS_DIR))
        .min_depth(2)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .count()
}

/// Three backups of a store that changed between each.
fn three_backups(s: &Store) -> [PathBuf; 3] {
    let (_, a) = take(s);
    rewrite(s, "k0000001", "{\"i\": 1, \"v\": 2}");
    let (_, b) = take(s);
    rewrite(s, "k0000002", "{\"i\": 2, \"v\": 3}");
    let (_, c) = take(s);
    [a, b, c]
}

fn kept_because(r: &Run, dir: &Path) -> Vec<String> {
    r.report.details["prune"]["kept"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["dir"] == dir.to_str().unwrap())
        .map(|l| {
            l["kept_because"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn prune_dry_run_deletes_nothing_and_the_real_run_keeps_the_newest() {
    let s = settled_store(6);
    let db = TestDb::new("prune_dry");
    let [a, b, c] = three_backups(&s);
    // A dead run's leftover.
    let dead = s.root().join("backups/20200101T000000Z-deadbeef");
    write(&dead.join("INCOMPLETE"), "");
    let blobs = blob_count(&s);

    let dry = prune(&s, &db.url, &["--keep", "1"]).expect(exit::OK);
    assert_eq!(dry.report.dry_run, Some(true));
    assert_eq!(dry.count("to_remove"), 2, "{}", dry.stdout);
    assert_eq!(dry.count("leftovers"), 1, "{}", dry.stdout);
    assert!(dry.count("blobs") >= 2, "{}", dry.stdout);
    assert_eq!(
        folders(&s),
        sorted(vec![dead.clone(), a.clone(), b.clone(), c.clone()])
    );
    assert_eq!(blob_count(&s), blobs, "the dry run removed blobs");
    assert!(
        dry.report
            .next_steps
            .iter()
            .any(|n| n.contains("--dry-run=false")),
        "{:?}",
        dry.report.next_steps
    );
    let why = kept_because(&dry, &c);
    assert!(why.iter().any(|w| w.contains("newest complete")), "{why:?}");

    let real = prune(&s, &db.url, &["--keep", "1", "--dry-run=false"]).expect(exit::OK);
    assert_eq!(real.report.dry_run, Some(false));
    assert_eq!(real.count("removed"), 2, "{}", real.stdout);
    assert_eq!(folders(&s), vec![c.clone()]);
    assert!(blob_count(&s) < blobs, "the unlisted blobs were swept");
    // What is left is whole.
    verify(&c, exit::OK);
    // And a backup after it still shares with it.
    let (r, _) = take(&s);
    assert_eq!(r.count("files_copied"), 0, "{}", r.stdout);
}

#[test]
fn prune_keeps_the_newest_backup_of_the_configured_store() {
    // Two stores back up into one folder: the other store's backup is the newest.
    let s = settled_store(3);
    let other = settled_store(3);
    let shared = s.root().join("backups");
    let cfg = std::fs::read_to_string(&other.config).unwrap().replace(
        "dir = \"backups\"",
        &format!("dir = {:?}", shared.to_str().unwrap()),
    );
    std::fs::write(&other.config, cfg).unwrap();
    let db = TestDb::new("prune_source");
    let (_, mine) = take(&s);
    rewrite(&s, "k0000000", "{\"changed\": 1}");
    let r = sessiondb(&["backup"])
        .config(&other.config)
        .expect(exit::OK);
    let theirs = PathBuf::from(r.report.details["backup"].as_str().unwrap());
    assert!(theirs.starts_with(&shared));

    let dry = prune(&s, &db.url, &["--keep", "1"]).expect(exit::OK);
    assert_eq!(dry.count("to_remove"), 0, "{}", dry.stdout);
    let why = kept_because(&dry, &mine);
    assert!(
        why.iter().any(|w| w.contains("the store the config names")),
        "{}",
        dry.stdout
    );
    prune(&s, &db.url, &["--keep", "1", "--dry-run=false"]).expect(exit::OK);
    assert!(mine.join("manifest.json").exists());
    verify(&mine, exit::OK);
}

#[test]
fn prune_keeps_the_backup_a_recorded_cutover_relies_on() {
    let s = settled_store(4);
    let db = TestDb::new("prune_cutover");
    let step = |args: &[&str]| {
        sessiondb(args)
            .config(&s.config)
            .env("DATABASE_URL", &db.url)
    };
    let (_, first) = take(&s);
    step(&[
        "migrate-state",
        "--dry-run=false",
        "--backup",
        first.to_str().unwrap(),
    ])
    .expect(exit::OK);
    step(&["verify"]).expect(exit::OK);
    step(&["set-default", "--dry-run=false"]).expect(exit::OK);
    // The store moves on: two more backups.
    rewrite(&s, "k0000001", "{\"after\": 1}");
    let (_, middle) = take(&s);
    rewrite(&s, "k0000002", "{\"after\": 2}");
    let (_, newest) = take(&s);

    let r = step(&["backup", "--prune", "--keep", "1", "--dry-run=false"]).expect(exit::OK);
    assert_eq!(r.count("removed"), 1, "{}", r.stdout);
    let why = kept_because(&r, &first);
    assert!(why.iter().any(|w| w.contains("cutover #")), "{}", r.stdout);
    assert!(first.join("manifest.json").exists());
    assert!(!middle.exists());
    assert!(newest.join("manifest.json").exists());
    verify(&first, exit::OK);
}

#[test]
fn prune_refuses_when_the_cutover_records_cannot_be_read() {
    let s = settled_store(3);
    let [a, b, c] = three_backups(&s);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://nobody@127.0.0.1:{port}/none");
    for args in [&["--keep", "1"][..], &["--keep", "1", "--dry-run=false"]] {
        let r = prune(&s, &url, args).expect(exit::OPERATIONAL);
        assert!(r.has_error("postgres_unreachable"), "{}", r.stdout);
        assert!(
            r.report
                .next_steps
                .iter()
                .any(|n| n.contains("nothing was removed")),
            "{:?}",
            r.report.next_steps
        );
    }
    // No target configured at all: refused too.
    let r = sessiondb(&["backup", "--prune", "--dry-run=false"])
        .config(&s.config)
        .expect(exit::USAGE);
    assert!(!r.report.errors.is_empty(), "{}", r.stdout);
    assert_eq!(folders(&s), sorted(vec![a, b, c]));
}

fn catch_up(s: &Store, db: &TestDb) -> Cmd {
    sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
}

const JSON_STORE: &str = r#"{"version": 1, "sessions": [{"id": "json-only", "user_id": "u", "status": "done", "current_step": "end", "cost": 1.5, "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z", "state": {"from": "json"}}]}"#;

/// The catch-up's store (with a session only in the JSON store): loaded, then one
/// state file rewritten and one row changed, settled so that every file has its stamp
/// again.
fn changed_after_a_load(n: usize, db: &TestDb) -> (Store, PathBuf) {
    let s = Store::new();
    s.bulk(n, 600);
    s.json_store(JSON_STORE);
    std::thread::sleep(SETTLE);
    let (_, first) = take(&s);
    catch_up(&s, db).expect(exit::OK);
    rewrite(&s, "k0000007", r#"{"changed": 1}"#);
    s.conn()
        .execute(
            "UPDATE sessions SET status = 'done' WHERE id = 'k0000011'",
            [],
        )
        .unwrap();
    std::thread::sleep(SETTLE);
    (s, first)
}

/// The line of `id` in a backup's `sessions.jsonl`.
fn dump_line(dir: &Path, id: &str) -> serde_json::Value {
    std::fs::read_to_string(dir.join("sessions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {}", dir.display()))
}

/// A catch-up's own backup writes `sessions.jsonl` from what its planning pass read
/// (`details.backup_dumps_read`), not by resolving its database copy again: and that
/// dump is, byte for byte, the one a backup resolving every session from scratch
/// writes of the same store.
#[test]
fn a_catch_up_backup_writes_its_dump_from_the_planning_pass_as_a_full_scan_would() {
    let db = TestDb::new("bi_dump_from_plan");
    let (s, first) = changed_after_a_load(40, &db);
    let r = catch_up(&s, &db).expect(exit::OK);
    assert_eq!(r.count("updated"), 2, "{}", r.stdout);
    assert_eq!(
        r.report.details["backup_dumps_read"], "kept_from_plan",
        "{}",
        r.stdout
    );
    let caught = PathBuf::from(r.report.details["backup"].as_str().unwrap());
    assert_ne!(caught, first);
    assert_eq!(dump_line(&caught, "k0000011")["status"], "done");
    assert_eq!(
        dump_line(&caught, "json-only")["state_text"],
        r#"{"from": "json"}"#
    );
    verify(&caught, exit::OK);
    assert_dump_as_from_scratch(&s, &first, &caught);
}

/// The dump of the catch-up's backup `caught` is, byte for byte, the one a backup of the
/// same store with nothing earlier to carry lines from writes (`first` and `caught` are
/// moved aside for it).
fn assert_dump_as_from_scratch(s: &Store, first: &Path, caught: &Path) {
    let aside = s.root().join("aside");
    std::fs::create_dir(&aside).unwrap();
    for d in [first, caught] {
        std::fs::rename(d, aside.join(d.file_name().unwrap())).unwrap();
    }
    let (fresh_run, fresh) = take(s);
    assert!(
        fresh_run.report.details.get("sharing").is_none(),
        "a backup with nothing to share with: {}",
        fresh_run.stdout
    );
    let from_plan = std::fs::read(
        aside
            .join(caught.file_name().unwrap())
            .join("sessions.jsonl"),
    )
    .unwrap();
    let from_scratch = std::fs::read(fresh.join("sessions.jsonl")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&from_plan),
        String::from_utf8_lossy(&from_scratch)
    );
}

/// A catch-up whose changed states do not fit in what its planning pass keeps (32 MB):
/// its backup reads those sessions again from the database copy by id, passing over
/// every other row (`backup_dumps_read: read_again_changed`), carries the other lines
/// by the stamps the pass saw, and writes the very dump a backup from scratch writes.
#[test]
fn a_catch_up_too_large_to_keep_writes_its_dump_from_the_sessions_read_again() {
    let db = TestDb::new("bi_dump_again");
    let (s, first) = changed_after_a_load(40, &db);
    for id in ["k0000002", "k0000021", "k0000033"] {
        rewrite(&s, id, &crate::migrate::big_state(id, 12));
    }
    std::thread::sleep(SETTLE);
    let r = catch_up(&s, &db).expect(exit::OK);
    assert_eq!(r.count("updated"), 5, "{}", r.stdout);
    assert_eq!(
        (
            &r.report.details["load_read"],
            &r.report.details["backup_dumps_read"]
        ),
        (
            &serde_json::json!("read_again_changed"),
            &serde_json::json!("read_again_changed")
        ),
        "{}",
        r.stdout
    );
    let caught = PathBuf::from(r.report.details["backup"].as_str().unwrap());
    assert_eq!(dump_line(&caught, "k0000011")["status"], "done");
    let big = std::fs::read(s.sessions.join("k0000021").join("state.json")).unwrap();
    assert_eq!(
        dump_line(&caught, "k0000021")["state_sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&big))
    );
    verify(&caught, exit::OK);
    assert_dump_as_from_scratch(&s, &first, &caught);
}

/// A write to the store between the planning pass and its backup (the fault point
/// appends to a state file as the backup begins): the dump written from the pass would
/// describe the store as it was, so it is resolved again from the copy, and holds the
/// file as the backup copied it; the run warns that the store changed.
#[test]
fn a_store_written_to_after_the_planning_pass_gets_its_dump_from_the_copy() {
    let db = TestDb::new("bi_dump_redo");
    let (s, _) = changed_after_a_load(40, &db);
    let path = s.sessions.join("k0000003").join("state.json");
    let r = catch_up(&s, &db)
        .env(
            "SESSIONDB_FAULT_APPEND",
            format!("backup={}", path.display()),
        )
        .expect(exit::OK);
    assert!(r.has_warning("source_changed"), "{}", r.stdout);
    assert_eq!(
        r.report.details["backup_dumps_read"], "database_copy",
        "{}",
        r.stdout
    );
    let caught = PathBuf::from(r.report.details["backup"].as_str().unwrap());
    let now = std::fs::read(&path).unwrap();
    assert!(now.ends_with(b" "), "the fault point appended");
    let line = dump_line(&caught, "k0000003");
    assert_eq!(line["state_bytes"], now.len() as u64);
    assert_eq!(
        line["state_sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&now))
    );
    verify(&caught, exit::OK);
}

/// The JSON store is read when the store is opened, before the fingerprint a planning
/// pass starts from looks at it: one written just before the run (within the stamps'
/// two seconds) could have changed in between unseen, so its dump comes from the copy.
#[test]
fn a_json_store_written_just_before_the_catch_up_gets_its_dump_from_the_copy() {
    let db = TestDb::new("bi_dump_json_recent");
    let (s, _) = changed_after_a_load(20, &db);
    s.json_store(&JSON_STORE.replace("\"from\": \"json\"", "\"from\": \"json, again\""));
    let r = catch_up(&s, &db).expect(exit::OK);
    assert_eq!(
        r.report.details["backup_dumps_read"], "database_copy",
        "{}",
        r.stdout
    );
    let caught = PathBuf::from(r.report.details["backup"].as_str().unwrap());
    assert_eq!(
        dump_line(&caught, "json-only")["state_text"],
        r#"{"from": "json, again"}"#
    );
}
