//! `backup`: a verified, owner-only copy of the legacy store, and `backup --verify`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sessiondb::backup::{self, Manifest};
use sessiondb::config::{Config, Env};
use sessiondb::exit;
use sessiondb::source::Source;
use sha2::{Digest, Sha256};

use crate::support::store::Store;
use crate::support::{Run, Tmpfs, sessiondb, write};

fn fingerprint(s: &Store) -> String {
    let cfg = Config::load(Some(&s.config), &Env::default()).unwrap();
    Source::from_config(&cfg).quick_fingerprint().unwrap()
}

fn backup_dir(s: &Store) -> PathBuf {
    s.root().join("backups")
}

/// Run `backup` with `args`, expecting exit 0; returns the run and the backup folder.
fn take(s: &Store, args: &[&str]) -> (Run, PathBuf) {
    let mut all = vec!["backup"];
    all.extend_from_slice(args);
    let r = sessiondb(&all).config(&s.config).expect(exit::OK);
    let dir = PathBuf::from(r.report.details["backup"].as_str().expect("details.backup"));
    (r, dir)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

fn sha256(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_type().is_dir())
        .map(|e| {
            e.path()
                .strip_prefix(dir)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    out.sort();
    out
}

/// Where the backup `dir` keeps the bytes of the file it lists as `rel` (its own folder,
/// or the blob store beside it).
pub fn stored(dir: &Path, rel: &str) -> PathBuf {
    let m = Manifest::read(dir).unwrap();
    let f = m
        .files
        .iter()
        .find(|f| f.path == rel)
        .unwrap_or_else(|| panic!("{rel} is not listed in {}", dir.display()));
    backup::stored_path(dir, f)
}

fn jsonl(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Three sessions (two with state files, one with its state only in the SQLite column),
/// an uploads folder, an orphan state file.
fn small_store() -> Store {
    let s = Store::new();
    s.session("s1", "{\"b\": 1,   \"a\": [1, 2, 3]}\n");
    s.session("s2", "{\"step\":\"upload\"}");
    s.row(
        &"col-only",
        &"user-2",
        &"done",
        &"end",
        &1.5,
        &"2024-03-02T10:00:00Z",
        &1709373600,
        &"{ \"from\" : \"column\" }",
    );
    write(
        &s.sessions.join("s2/uploads/photo.bin"),
        [0u8, 159, 146, 150, 255],
    );
    write(&s.sessions.join("s2/log.txt"), "a log line\n");
    s.state_file("orphan1", b"{\"orphan\": true}");
    s
}

#[test]
fn full_backup_lists_every_file_with_its_hash_and_owner_only_modes() {
    let s = small_store();
    let (r, dir) = take(&s, &[]);
    assert_eq!(r.report.dry_run, Some(false));
    assert_eq!(r.count("sessions"), 3);
    assert_eq!(r.count("invalid"), 0);
    assert_eq!(r.count("files"), 7);
    assert!(r.has_warning("orphan_state_file"), "{}", r.stdout);
    let kinds: Vec<&str> = r.report.artifacts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, ["backup", "manifest"]);
    assert!(
        r.report
            .next_steps
            .iter()
            .any(|n| n.contains("--backup") && n.contains(dir.to_str().unwrap())),
        "{:?}",
        r.report.next_steps
    );
    assert!(dir.starts_with(backup_dir(&s)));
    let name = dir.file_name().unwrap().to_str().unwrap();
    assert_eq!(name.len(), "20240301T100000Z-0123abcd".len(), "{name}");
    assert_eq!(&name[8..9], "T");
    assert_eq!(&name[15..17], "Z-");

    let m = Manifest::read(&dir).unwrap();
    assert_eq!(m.format, backup::FORMAT);
    assert_eq!(m.run_id, r.report.run_id);
    assert_eq!(m.counts.sessions, 3);
    assert_eq!(m.counts.sqlite_rows, 3);
    assert_eq!(m.counts.state_files, 3);
    let listed: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        listed,
        [
            "config/sessiondb.toml",
            "invalid.jsonl",
            "sessions.jsonl",
            "sqlite/app.db",
            "state/orphan1/state.json",
            "state/s1/state.json",
            "state/s2/state.json",
        ]
    );
    // The folder holds exactly what is listed and not kept as a blob, plus the
    // manifest; no marker. The state files are blobs beside it.
    let mut on_disk = files_under(&dir);
    on_disk.retain(|f| f != "manifest.json");
    let own: Vec<&str> = m
        .files
        .iter()
        .filter(|f| !f.blob)
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(on_disk, own);
    assert!(
        m.files
            .iter()
            .filter(|f| f.path.starts_with("state/"))
            .all(|f| f.blob)
    );
    for f in &m.files {
        let p = backup::stored_path(&dir, f);
        assert_eq!(sha256(&p), f.sha256.to_string(), "{}", f.path);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), f.bytes, "{}", f.path);
    }
    assert_eq!(m.counts.bytes, m.files.iter().map(|f| f.bytes).sum::<u64>());
    // Modes: every folder 0700, every file read-only to its owner (0400), the backup
    // dir itself and the blob store 0700.
    assert_eq!(mode(&backup_dir(&s)), 0o700);
    for e in walkdir::WalkDir::new(&dir)
        .into_iter()
        .chain(walkdir::WalkDir::new(
            backup_dir(&s).join(backup::BLOBS_DIR),
        ))
    {
        let e = e.unwrap();
        if e.file_name() == "LOCK" {
            continue;
        }
        let want = if e.file_type().is_dir() { 0o700 } else { 0o400 };
        assert_eq!(mode(e.path()), want, "{}", e.path().display());
    }
    // Byte-exact copies.
    for id in ["s1", "s2", "orphan1"] {
        assert_eq!(
            std::fs::read(stored(&dir, &format!("state/{id}/state.json"))).unwrap(),
            std::fs::read(s.sessions.join(id).join("state.json")).unwrap()
        );
    }
    assert_eq!(
        std::fs::read(dir.join("config/sessiondb.toml")).unwrap(),
        std::fs::read(&s.config).unwrap()
    );
    // One line a session, the state text as the store holds it.
    let lines = jsonl(&dir.join("sessions.jsonl"));
    assert_eq!(lines.len(), 3);
    let by_id = |id: &str| lines.iter().find(|l| l["id"] == id).unwrap().clone();
    // A state from a state file is not written twice: the line names the file the
    // backup keeps, with its SHA-256.
    assert_eq!(by_id("s1")["state_text"], serde_json::Value::Null);
    assert_eq!(by_id("s1")["state_file"], "state/s1/state.json");
    assert_eq!(
        by_id("s1")["state_sha256"],
        hex::encode(Sha256::digest("{\"b\": 1,   \"a\": [1, 2, 3]}\n"))
    );
    assert_eq!(
        by_id("s1")["state_sha256"].as_str().unwrap(),
        m.files
            .iter()
            .find(|f| f.path == "state/s1/state.json")
            .unwrap()
            .sha256
            .to_string()
    );
    assert_eq!(by_id("s1")["state_origin"], "state_file");
    assert_eq!(by_id("s1")["updated_at"], "2024-03-01T10:05:00.123456Z");
    assert_eq!(by_id("col-only")["state_text"], "{ \"from\" : \"column\" }");
    assert_eq!(by_id("col-only")["state_origin"], "sqlite_column");
    assert_eq!(
        by_id("col-only")["updated_at"],
        "2024-03-02T10:00:00.000000Z"
    );
    assert_eq!(by_id("col-only")["cost"], 1.5);
    assert!(
        by_id("s2")["content_hash"]
            .as_str()
            .unwrap()
            .starts_with("v1:")
    );
    // The copy is one self-contained file that SQLite reads as it is.
    let copy = rusqlite::Connection::open_with_flags(
        dir.join("sqlite/app.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let n: i64 = copy
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 3);
    drop(copy);
    assert!(!dir.join("sqlite/app.db-wal").exists());

    // The newest complete backup of this very store is found.
    assert_eq!(
        backup::find_matching(&backup_dir(&s), &fingerprint(&s)),
        Some(dir.clone())
    );
    assert_eq!(
        backup::find_matching(&backup_dir(&s), "q1:another-store"),
        None
    );

    // With --include-uploads, each session's whole folder.
    let (r2, dir2) = take(&s, &["--include-uploads"]);
    assert_ne!(dir2, dir);
    assert_eq!(r2.count("files"), 9);
    for f in ["s2/uploads/photo.bin", "s2/log.txt"] {
        let kept = stored(&dir2, &format!("state/{f}"));
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            std::fs::read(s.sessions.join(f)).unwrap()
        );
        assert_eq!(mode(&kept), 0o400);
    }
    assert_eq!(Manifest::read(&dir2).unwrap().counts.state_files, 3);
    // Both backups are kept.
    assert!(dir.join("manifest.json").exists());
}

#[test]
fn symlink_leaving_the_sessions_folder_is_recorded_and_not_followed() {
    let s = small_store();
    let outside = s.root().join("elsewhere");
    write(&outside.join("state.json"), "{\"secret\": 1}");
    write(&outside.join("passwd"), "root:x:0:0\n");
    std::os::unix::fs::symlink(&outside, s.sessions.join("evil")).unwrap();
    std::os::unix::fs::symlink(outside.join("passwd"), s.sessions.join("s1/passwd")).unwrap();
    let (r, dir) = take(&s, &["--include-uploads"]);
    assert!(r.has_warning("symlink_outside_root"), "{}", r.stdout);
    let m = Manifest::read(&dir).unwrap();
    let skipped: Vec<&Path> = m
        .skipped_symlinks
        .iter()
        .map(|k| k.path.as_path())
        .collect();
    assert!(
        skipped.contains(&s.sessions.join("evil").as_path()),
        "{skipped:?}"
    );
    assert!(
        skipped.contains(&s.sessions.join("s1/passwd").as_path()),
        "{skipped:?}"
    );
    assert!(!dir.join("state/evil").exists());
    assert!(!dir.join("state/s1/passwd").exists());
}

/// A database big enough that copying and dumping it takes a while.
fn big_store(rows: usize, state_len: usize) -> Store {
    let s = Store::new();
    let mut c = s.conn();
    let tx = c.transaction().unwrap();
    {
        let mut ins = tx
            .prepare("INSERT INTO sessions VALUES (?1, 'u', 'running', 'plan', 0.5, '2024-03-01T10:00:00Z', '2024-03-01T10:00:00Z', ?2)")
            .unwrap();
        for i in 0..rows {
            let state = format!("{{\"n\": {i}, \"pad\": \"{}\"}}", "x".repeat(state_len));
            ins.execute(rusqlite::params![format!("s{i:06}"), state])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    s
}

#[test]
fn live_writer_during_backup_gives_one_consistent_snapshot() {
    let s = big_store(20_000, 400);
    for i in 0..20 {
        s.state_file(&format!("s{i:06}"), format!("{{\"file\": {i}}}").as_bytes());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, db) = (stop.clone(), written.clone(), s.db.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                c.execute(
                    "INSERT INTO sessions VALUES (?1, 'w', 'running', 'plan', 1, '2024-03-01T10:00:00Z', '2024-03-01T10:00:00Z', '{\"w\": true}')",
                    [format!("w{n}")],
                )
                .unwrap();
                n += 1;
                written.store(n, Ordering::SeqCst);
            }
            n
        })
    };
    while written.load(Ordering::SeqCst) < 50 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let count = || -> u64 {
        let c = s.conn();
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c.query_row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    };
    let before = count();
    let w_before = written.load(Ordering::SeqCst);
    let (r, dir) = take(&s, &[]);
    let after = count();
    let w_after = written.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let total = writer.join().unwrap();
    assert!(
        w_after > w_before,
        "the writer kept writing during the backup ({w_before} → {w_after})"
    );
    assert!(total >= w_after);

    let copy = rusqlite::Connection::open_with_flags(
        dir.join("sqlite/app.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let rows: u64 = copy
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64;
    assert!(
        before <= rows && rows <= after,
        "copy holds {rows} rows, the source {before} before and {after} after"
    );
    // One snapshot: the writer's rows in the copy are exactly its first k inserts.
    let mut ws: Vec<u64> = copy
        .prepare("SELECT substr(id, 2) FROM sessions WHERE id LIKE 'w%'")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|x| x.unwrap().parse().unwrap())
        .collect();
    ws.sort();
    let k = ws.len() as u64;
    assert_eq!(ws, (0..k).collect::<Vec<_>>());
    assert_eq!(rows, 20_000 + k);
    // The dump describes the same snapshot as the copy.
    let m = Manifest::read(&dir).unwrap();
    assert_eq!(m.counts.sqlite_rows, rows);
    assert_eq!(r.count("sessions"), rows);
    let lines = std::fs::read_to_string(dir.join("sessions.jsonl"))
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(lines, rows);
    assert_ne!(
        m.source_fingerprint, m.fingerprint_after,
        "the store changed while the backup ran"
    );
    assert!(r.has_warning("source_changed"), "{}", r.stdout);
    sessiondb(&["backup", "--verify", dir.to_str().unwrap()]).expect(exit::OK);
}

fn verify(dir: &Path, code: i32) -> Run {
    sessiondb(&["backup", "--verify", dir.to_str().unwrap()]).expect(code)
}

#[test]
fn verify_names_damaged_missing_and_incomplete() {
    let s = small_store();
    let (_, dir) = take(&s, &[]);
    let r = verify(&dir, 0);
    assert_eq!(r.report.dry_run, None);
    assert_eq!(r.count("files"), 7);

    // One flipped byte in a copied state file (its blob).
    let state = stored(&dir, "state/s1/state.json");
    let good = std::fs::read(&state).unwrap();
    let mut bad = good.clone();
    bad[3] ^= 0x01;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&state, &bad).unwrap();
    let r = verify(&dir, 1);
    assert_eq!(r.report.errors.len(), 1, "{}", r.stdout);
    assert_eq!(r.report.errors[0].code, "backup_damaged");
    assert_eq!(
        r.report.errors[0].path.as_deref(),
        Some(state.to_str().unwrap())
    );
    std::fs::write(&state, &good).unwrap();
    verify(&dir, 0);

    // A file gone.
    let dump = dir.join("sessions.jsonl");
    let kept = std::fs::read(&dump).unwrap();
    std::fs::remove_file(&dump).unwrap();
    let r = verify(&dir, 1);
    assert!(r.has_error("backup_missing_file"), "{}", r.stdout);
    assert_eq!(
        r.report.errors[0].path.as_deref(),
        Some(dump.to_str().unwrap())
    );
    std::fs::write(&dump, kept).unwrap();
    verify(&dir, 0);

    // A backup that never finished: the marker, or no manifest.
    let fp = fingerprint(&s);
    assert_eq!(
        backup::find_matching(&backup_dir(&s), &fp),
        Some(dir.clone())
    );
    std::fs::write(dir.join("INCOMPLETE"), "").unwrap();
    let r = verify(&dir, 1);
    assert!(r.has_error("backup_incomplete"), "{}", r.stdout);
    assert_eq!(backup::find_matching(&backup_dir(&s), &fp), None);
    std::fs::remove_file(dir.join("INCOMPLETE")).unwrap();
    std::fs::rename(dir.join("manifest.json"), dir.join("manifest.json.away")).unwrap();
    let r = verify(&dir, 1);
    assert!(r.has_error("backup_incomplete"), "{}", r.stdout);
    assert_eq!(backup::find_matching(&backup_dir(&s), &fp), None);
}

#[test]
fn dry_run_creates_nothing() {
    let s = small_store();
    for flag in ["--dry-run", "--dry-run=true"] {
        let r = sessiondb(&["backup", flag])
            .config(&s.config)
            .expect(exit::OK);
        assert_eq!(r.report.dry_run, Some(true));
        assert!(r.count("bytes") > 0);
        assert_eq!(r.count("state_files"), 3);
        let planned = r.report.details["plan"]["dir"].as_str().unwrap();
        assert!(planned.starts_with(backup_dir(&s).to_str().unwrap()));
        assert!(!backup_dir(&s).exists(), "{flag} created the backup folder");
    }
    let r = sessiondb(&["backup", "--dry-run", "false"])
        .config(&s.config)
        .expect(exit::USAGE);
    assert!(r.has_error("usage"));
    assert!(!backup_dir(&s).exists());
    take(&s, &["--dry-run=false"]);
    assert!(backup_dir(&s).exists());
}

#[test]
fn full_disk_is_disk_space_and_leaves_an_incomplete_folder() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "note: skipped full_disk_is_disk_space_and_leaves_an_incomplete_folder: needs root to mount a tmpfs"
        );
        return;
    }
    let s = big_store(300, 1000);
    let fp = fingerprint(&s);
    let backups = backup_dir(&s);
    let _fs = Tmpfs::mount(&backups, "64k");
    let r = sessiondb(&["backup"])
        .config(&s.config)
        .expect(exit::OPERATIONAL);
    assert!(r.has_error("disk_space"), "{}", r.stdout);
    let err = r
        .report
        .errors
        .iter()
        .find(|e| e.code == "disk_space")
        .unwrap();
    let path = err.path.as_deref().expect("the error names the path");
    assert!(path.starts_with(backups.to_str().unwrap()), "{path}");
    let folders: Vec<PathBuf> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with(backup::BLOBS_DIR))
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    let partial = &folders[0];
    assert!(partial.join("INCOMPLETE").exists());
    assert!(!partial.join("manifest.json").exists());
    assert_eq!(backup::find_matching(&backups, &fp), None);
    let v = verify(partial, 1);
    assert!(v.has_error("backup_incomplete"), "{}", v.stdout);
}

/// What a backup added under `backups/` since `before` (the paths there then): the
/// bytes of its files, and what files and folders take on disk (whole blocks).
fn added(backups: &Path, before: &std::collections::HashSet<PathBuf>) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut disk) = (0, 0);
    // A new name of a file that was there (the database copy, hard-linked) takes no room.
    let inodes: std::collections::HashSet<u64> = before
        .iter()
        .filter_map(|p| p.symlink_metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.ino())
        .collect();
    for e in walkdir::WalkDir::new(backups).min_depth(1) {
        let e = e.unwrap();
        if before.contains(e.path()) {
            continue;
        }
        let m = e.path().symlink_metadata().unwrap();
        if m.is_file() && inodes.contains(&m.ino()) {
            continue;
        }
        if m.is_file() {
            bytes += m.len();
        }
        disk += m.blocks() * 512;
    }
    (bytes, disk)
}

/// The estimate of "backup of about N into ..." (the `backup_space` check) is an
/// honest upper bound of what the backup takes, on a generated store: a first backup
/// (every state file copied, each in whole blocks; the manifest; the blob store's
/// folders) and an incremental one (the dumps, the manifest; the database copy, unchanged,
/// is the first one's hard-linked).
#[test]
fn the_size_estimate_bounds_what_the_backup_takes_and_is_not_far_over() {
    let d = crate::support::TempDir::new();
    let out = d.path().join("store");
    sessiondb(&[
        "generate-fixture",
        "--out",
        out.to_str().unwrap(),
        "--sessions",
        "3000",
        "--seed",
        "5",
    ])
    .expect(exit::OK);
    let cfg = out.join("sessiondb.toml");
    let backups = out.join("backups");
    // Files younger than 2 s get no stamp and are never shared (walk.rs: `SETTLE`); an
    // incremental backup copies only what changed once they have settled.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    for round in ["first", "incremental"] {
        let before: std::collections::HashSet<PathBuf> = walkdir::WalkDir::new(&backups)
            .into_iter()
            .filter_map(|e| e.ok().map(|e| e.into_path()))
            .collect();
        let r = sessiondb(&["backup"]).config(&cfg).expect(exit::OK);
        let est = r.check("backup_space").details["estimated_bytes"]
            .as_u64()
            .unwrap();
        let (bytes, disk) = added(&backups, &before);
        assert!(
            est >= bytes && est >= disk,
            "{round}: estimated {est}, wrote {bytes} bytes taking {disk} on disk"
        );
        assert!(
            est <= disk + disk / 2,
            "{round}: estimated {est}, far over the {disk} the backup takes"
        );
    }
}
