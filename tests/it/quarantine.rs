//! Quarantine never blocks the way (issue 15.3): records set aside by
//! `migrate-state --quarantine` count as `quarantined` in verify whatever they are (no
//! usable id, an unreadable file), the backup notes unreadable files instead of
//! aborting, a rerun reuses what the quarantine holds, the report names each record,
//! and the leftovers of failed backups are removed by the next backup.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sessiondb::exit;

use crate::faults::row;
use crate::support::store::Store;
use crate::support::{Cmd, Run, Tmpfs, chown_tree, is_root, nobody, pg::TestDb, sessiondb, write};

fn on(s: &Store, db: &TestDb, args: &[&str]) -> Cmd {
    sessiondb(args)
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
}

fn store_with(n: usize) -> Store {
    let s = Store::new();
    for i in 0..n {
        s.session(&format!("s{i:05}"), &format!("{{\"n\": {i}}}"));
    }
    s
}

/// A SQLite row whose id sessiondb refuses; its state in the legacy column.
fn bad_id_row(s: &Store, id: &str) {
    s.row(
        &id,
        &"u",
        &"running",
        &"plan",
        &0.5,
        &"2024-03-01T10:00:00Z",
        &"2024-03-01T10:00:00Z",
        &format!("{{\"row\": {:?}}}", id),
    );
}

fn quarantine_dir(r: &Run) -> PathBuf {
    PathBuf::from(
        &r.report
            .artifacts
            .iter()
            .find(|a| a.kind == "quarantine")
            .unwrap_or_else(|| panic!("no quarantine artifact: {}", r.stdout))
            .path,
    )
}

/// The raw files under a quarantine folder, sorted.
fn raw_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".raw"))
        .collect();
    v.sort();
    v
}

/// `(id, code, raw_file)` of each record in the report's inline list, sorted.
fn listed(r: &Run) -> Vec<(String, String, Option<String>)> {
    let mut v: Vec<_> = r.report.details["quarantined"]
        .as_array()
        .unwrap_or_else(|| panic!("no details.quarantined: {}", r.stdout))
        .iter()
        .map(|q| {
            (
                q["id"].as_str().unwrap_or_default().to_owned(),
                q["code"].as_str().unwrap().to_owned(),
                q["raw_file"].as_str().map(str::to_owned),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn records_without_a_usable_id_once_quarantined_do_not_block_verify_or_set_default() {
    let s = store_with(3);
    bad_id_row(&s, "");
    bad_id_row(&s, "two\nlines");
    let db = TestDb::new("q_no_id");
    let rd = s.root().join("reports");
    let rd_s = rd.to_str().unwrap();
    let first = on(
        &s,
        &db,
        &[
            "migrate-state",
            "--dry-run=false",
            "--quarantine",
            "--report-dir",
            rd_s,
        ],
    )
    .expect(exit::OK);
    assert_eq!(first.count("quarantined"), 2, "{}", first.stdout);

    // verify: a warning, not a failure (it was exit 1, `invalid` 2).
    let v = on(&s, &db, &["verify"]).expect(exit::OK);
    assert_eq!(
        (v.count("quarantined"), v.count("invalid")),
        (2, 0),
        "{}",
        v.stdout
    );
    assert!(v.has_warning("quarantined"), "{}", v.stdout);

    // The report names each record: inline, and in the side file.
    let qdir = quarantine_dir(&first);
    let inline = listed(&first);
    assert_eq!(inline.len(), 2, "{}", first.stdout);
    for (id, code, raw) in &inline {
        assert_eq!((id.as_str(), code.as_str()), ("", "invalid_id"));
        let raw = raw.as_deref().expect("a raw file");
        assert!(qdir.join(raw).is_file(), "{raw}");
    }
    let side = rd.join("migrate-state-quarantined.jsonl");
    let lines = std::fs::read_to_string(&side).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(
        first
            .report
            .artifacts
            .iter()
            .any(|a| a.kind == "quarantined" && Path::new(&a.path) == side)
    );

    // A rerun sets them aside again, reusing the files the quarantine holds.
    let before = raw_files(&qdir);
    assert_eq!(before.len(), 2);
    let again = on(
        &s,
        &db,
        &["migrate-state", "--dry-run=false", "--quarantine"],
    )
    .expect(exit::OK);
    assert_eq!(again.count("quarantined"), 2);
    assert_eq!(quarantine_dir(&again), qdir, "the same backup's quarantine");
    assert_eq!(raw_files(&qdir), before, "no new copy of the same bytes");
    assert_eq!(
        listed(&again),
        inline,
        "the index points at the files it holds"
    );

    // verify passed, so the cutover goes ahead without --force.
    on(&s, &db, &["verify"]).expect(exit::OK);
    on(&s, &db, &["set-default", "--dry-run=false"]).expect(exit::OK);

    // An invalid record that no run quarantined still fails verify.
    bad_id_row(&s, "tab\there");
    let v = on(&s, &db, &["verify"]).expect(exit::PROBLEMS);
    assert_eq!(
        (v.count("quarantined"), v.count("invalid")),
        (2, 1),
        "{}",
        v.stdout
    );
    row(
        "ids empty or with control characters, quarantined",
        "migrate-state --quarantine (twice), verify, set-default",
        "verify exit 0 (2 quarantined), set-default exit 0",
        "rerun wrote no new raw file; an unquarantined one still fails verify",
    );
}

#[test]
fn an_unreadable_state_file_is_quarantined_and_noted_by_the_backup() {
    if !is_root() {
        eprintln!(
            "note: skipped an_unreadable_state_file_is_quarantined_and_noted_by_the_backup: needs root to run as another user"
        );
        return;
    }
    let s = store_with(2);
    s.session("locked", "{\"secret\": 1}");
    let locked = s.sessions.join("locked/state.json");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let (uid, gid) = nobody();
    chown_tree(s.root(), uid, gid);
    std::fs::set_permissions(s.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = TestDb::new("q_unreadable");

    // `backup` notes it and is complete (it was exit 3: the copy aborted).
    let b = sessiondb(&["backup"])
        .config(&s.config)
        .user(uid, gid)
        .expect(exit::OK);
    let w = b.warning("backup_unreadable");
    assert_eq!(w.path.as_deref(), Some(locked.to_str().unwrap()));
    assert!(w.message.contains("Permission denied"), "{w:?}");
    let bdir = PathBuf::from(b.report.details["backup"].as_str().unwrap());
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bdir.join("manifest.json")).unwrap()).unwrap();
    let noted = m["unreadable"].as_array().expect("manifest.unreadable");
    assert_eq!(noted.len(), 1, "{noted:?}");
    assert_eq!(noted[0]["path"], locked.to_str().unwrap());
    assert!(
        noted[0]["reason"]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "{noted:?}"
    );
    assert!(!bdir.join("state/locked/state.json").exists());
    assert!(sessiondb::backup::is_complete(&bdir));
    sessiondb(&["backup", "--verify", bdir.to_str().unwrap()])
        .user(uid, gid)
        .expect(exit::OK);

    // migrate-state --quarantine sets it aside (its path and the error, no bytes).
    let r = on(
        &s,
        &db,
        &["migrate-state", "--dry-run=false", "--quarantine"],
    )
    .user(uid, gid)
    .expect(exit::OK);
    assert_eq!(r.count("quarantined"), 1, "{}", r.stdout);
    assert_eq!(
        listed(&r),
        vec![("locked".into(), "unreadable".into(), None)],
        "{}",
        r.stdout
    );
    let q = &r.report.details["quarantined"][0];
    assert_eq!(q["path"], locked.to_str().unwrap());
    assert!(
        q["message"].as_str().unwrap().contains("Permission denied"),
        "{q}"
    );
    assert!(
        raw_files(&quarantine_dir(&r)).is_empty(),
        "no bytes to keep"
    );

    let v = on(&s, &db, &["verify"]).user(uid, gid).expect(exit::OK);
    assert_eq!(
        (v.count("quarantined"), v.count("invalid")),
        (1, 0),
        "{}",
        v.stdout
    );
    row(
        "a mode-000 state file, run as an ordinary user",
        "backup; migrate-state --quarantine; verify",
        "backup exit 0 (noted in its manifest), load exit 0, verify exit 0",
        &format!(
            "quarantined with its path and error; {} sessions verified",
            v.count("checked")
        ),
    );
}

/// A folder left by a failed backup: its marker (as the tool wrote it before it kept a
/// lock on it), a partial copy, times in the past.
fn leftover(backups: &Path, name: &str) -> PathBuf {
    let dir = backups.join(name);
    write(&dir.join("state/s00001/state.json"), "{\"n\": 1}");
    write(
        &dir.join("INCOMPLETE"),
        "this backup is incomplete until manifest.json exists and this file is gone\n",
    );
    age(&dir.join("INCOMPLETE"), 3600);
    dir
}

/// Set a file's modification time `secs` seconds in the past (negative: the future).
fn age(p: &Path, secs: i64) {
    let now = std::time::SystemTime::now();
    let t = if secs >= 0 {
        now - std::time::Duration::from_secs(secs as u64)
    } else {
        now + std::time::Duration::from_secs((-secs) as u64)
    };
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn the_next_backup_removes_failed_backups_but_never_a_live_or_complete_one() {
    let s = store_with(2);
    let complete = PathBuf::from(
        sessiondb(&["backup"])
            .config(&s.config)
            .expect(exit::OK)
            .report
            .details["backup"]
            .as_str()
            .unwrap(),
    );
    let backups = s.root().join("backups");
    let dead = leftover(&backups, "20200101T000000Z-deadbeef");
    // Being written by a live process: it holds a lock on the marker.
    let live = leftover(&backups, "20200101T000000Z-11111111");
    let held = std::fs::File::open(live.join("INCOMPLETE")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor.
    assert_eq!(
        unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    // Begun after the run started (a clock ahead, another host): not ours to judge.
    let newer = leftover(&backups, "20200101T000000Z-22222222");
    age(&newer.join("INCOMPLETE"), -3600);
    // Not named as a backup folder: never touched, whatever it holds.
    let foreign = leftover(&backups, "keep-me");

    let r = sessiondb(&["backup"]).config(&s.config).expect(exit::OK);
    assert!(!dead.exists(), "the dead leftover is removed: {}", r.stdout);
    let removed: Vec<&str> = r.report.details["removed_incomplete"]
        .as_array()
        .unwrap_or_else(|| panic!("no details.removed_incomplete: {}", r.stdout))
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(removed, vec![dead.to_str().unwrap()]);
    for kept in [&live, &newer, &foreign, &complete] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
    assert!(live.join("INCOMPLETE").exists());
    assert!(sessiondb::backup::is_complete(&complete));
    drop(held);
    row(
        "failed backups left behind (a dead one, a live one, a newer one, a foreign folder)",
        "backup",
        "exit 0",
        "only the dead INCOMPLETE folder removed; live, newer, foreign and complete kept",
    );
}

/// Bytes in use on the filesystem holding `dir`.
fn used_bytes(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path and a struct statvfs fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

#[test]
fn a_backup_that_failed_on_a_full_disk_does_not_block_the_next_one() {
    if !is_root() {
        eprintln!(
            "note: skipped a_backup_that_failed_on_a_full_disk_does_not_block_the_next_one: needs root to mount a tmpfs"
        );
        return;
    }
    let s = Store::new();
    s.bulk(300, 1000);
    let backups = s.root().join("backups");
    // What one backup of this store takes.
    let need = {
        let _fs = Tmpfs::mount(&backups, "64m");
        sessiondb(&["backup"]).config(&s.config).expect(exit::OK);
        used_bytes(&backups)
    };
    // Room for 1.6 backups, 0.8 of it taken by another file: the first try fails.
    let _fs = Tmpfs::mount(&backups, &(need * 16 / 10).to_string());
    let filler = backups.join("filler");
    std::fs::write(&filler, vec![0u8; (need * 8 / 10) as usize]).unwrap();
    let r = sessiondb(&["backup"])
        .config(&s.config)
        .expect(exit::OPERATIONAL);
    assert!(r.has_error("disk_space"), "{}", r.stdout);
    let partial: Vec<PathBuf> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("INCOMPLETE").exists())
        .collect();
    assert_eq!(partial.len(), 1);
    // The space comes back, but not enough for a second copy beside the partial one.
    std::fs::remove_file(&filler).unwrap();
    let r = sessiondb(&["backup"]).config(&s.config).expect(exit::OK);
    assert!(!partial[0].exists(), "{}", r.stdout);
    let left: Vec<PathBuf> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with(sessiondb::backup::BLOBS_DIR))
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(sessiondb::backup::is_complete(&left[0]));
    row(
        "a backup that failed on a full disk, space freed, backup again",
        "backup",
        "exit 3 (disk_space), then exit 0",
        "the partial folder removed first; one complete backup left",
    );
}
