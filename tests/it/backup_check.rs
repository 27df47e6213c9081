//! The backup a run stands on is checked (issue 15.4): before its first write,
//! `migrate-state` checks that every file its backup's manifest lists is there with its
//! size (`--verify-backup`: its SHA-256 too), and refuses a damaged backup it was given,
//! by the dry run exactly as by the real run; a damaged backup it found itself is
//! passed over with a warning.

use std::path::{Path, PathBuf};

use sessiondb::exit;

use crate::faults::row;
use crate::support::store::Store;
use crate::support::{Cmd, Run, pg::TestDb, sessiondb};

fn migrate(s: &Store, db: &TestDb, args: &[&str]) -> Cmd {
    let mut a = vec!["migrate-state"];
    a.extend_from_slice(args);
    sessiondb(&a).config(&s.config).env("DATABASE_URL", &db.url)
}

fn tables(db: &TestDb) -> i64 {
    db.client()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .unwrap()
        .get(0)
}

fn store_with(n: usize) -> Store {
    let s = Store::new();
    for i in 0..n {
        s.session(&format!("s{i:05}"), &format!("{{\"n\": {i}}}"));
    }
    s
}

fn take(s: &Store) -> PathBuf {
    let r = sessiondb(&["backup"]).config(&s.config).expect(exit::OK);
    PathBuf::from(r.report.details["backup"].as_str().unwrap())
}

/// The error of `code`, which must name the backup.
fn refusal<'a>(r: &'a Run, code: &str, dir: &Path) -> &'a sessiondb::report::Finding {
    let e = r
        .report
        .errors
        .iter()
        .find(|e| e.code == code)
        .unwrap_or_else(|| panic!("no {code} error: {}", r.stdout));
    assert!(
        e.message.contains(dir.to_str().unwrap()),
        "the message names the backup: {e:?}"
    );
    e
}

#[test]
fn a_damaged_backup_given_is_refused_by_the_dry_run_and_the_real_run() {
    let s = store_with(3);
    let db = TestDb::new("bc_given");
    let dir = take(&s);
    let d = dir.to_str().unwrap();
    let state = crate::backup::stored(&dir, "state/s00001/state.json");
    let good = std::fs::read(&state).unwrap();

    // A listed file gone: refused, naming it, by both runs (the real run loaded, exit 0).
    std::fs::remove_file(&state).unwrap();
    for args in [&["--backup", d][..], &["--dry-run=false", "--backup", d]] {
        let r = migrate(&s, &db, args).expect(exit::PROBLEMS);
        let e = refusal(&r, "backup_damaged", &dir);
        assert!(e.message.contains("state/s00001/state.json"), "{e:?}");
        assert!(e.message.contains("1 of 7"), "{e:?}");
        assert_eq!(tables(&db), 0, "{args:?} wrote to the target");
    }

    // Another size: the same.
    let mut longer = good.clone();
    longer.push(b' ');
    std::fs::write(&state, &longer).unwrap();
    let r = migrate(&s, &db, &["--backup", d]).expect(exit::PROBLEMS);
    refusal(&r, "backup_damaged", &dir);

    // The same size, one byte changed: only the checksums (--verify-backup) see it.
    let mut flipped = good.clone();
    flipped[2] ^= 0x01;
    std::fs::write(&state, &flipped).unwrap();
    migrate(&s, &db, &["--backup", d]).expect(exit::OK);
    for args in [
        &["--backup", d, "--verify-backup"][..],
        &["--dry-run=false", "--backup", d, "--verify-backup"],
    ] {
        let r = migrate(&s, &db, args).expect(exit::PROBLEMS);
        let e = refusal(&r, "backup_damaged", &dir);
        assert!(e.message.contains("SHA-256"), "{e:?}");
        assert_eq!(tables(&db), 0);
    }
    std::fs::write(&state, &good).unwrap();

    // The manifest gone: the dry run said "would use the backup".
    let m = dir.join("manifest.json");
    std::fs::rename(&m, dir.join("manifest.away")).unwrap();
    for args in [&["--backup", d][..], &["--dry-run=false", "--backup", d]] {
        let r = migrate(&s, &db, args).expect(exit::PROBLEMS);
        refusal(&r, "backup_incomplete", &dir);
        assert_eq!(tables(&db), 0);
    }
    std::fs::rename(dir.join("manifest.away"), &m).unwrap();

    // Sound again: checked, then used.
    let r = migrate(
        &s,
        &db,
        &["--dry-run=false", "--backup", d, "--verify-backup"],
    )
    .expect(exit::OK);
    assert_eq!(r.report.details["backup"], d);
    assert_eq!(r.report.details["backup_check"]["files"], 7);
    assert_eq!(r.report.details["backup_check"]["checksums"], true);
    row(
        "the backup given to migrate-state damaged (a file gone, resized, a byte flipped, no manifest)",
        "migrate-state [--dry-run=false] --backup DIR [--verify-backup]",
        "refused (exit 1: backup_damaged / backup_incomplete) by dry and real runs",
        "nothing written to the target; the sound backup then used",
    );
}

#[test]
fn a_damaged_backup_found_automatically_is_passed_over_with_a_warning() {
    let s = store_with(3);
    let db = TestDb::new("bc_found");
    let dir = take(&s);
    std::fs::remove_file(dir.join("sessions.jsonl")).unwrap();

    let dry = migrate(&s, &db, &[]).expect(exit::OK);
    let w = dry.warning("backup_damaged");
    assert!(w.message.contains(dir.to_str().unwrap()), "{w:?}");
    assert!(w.message.contains("sessions.jsonl"), "{w:?}");
    let said = dry.report.details["backup"].as_str().unwrap();
    assert!(said.starts_with("would take a backup"), "{said}");

    let real = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    assert!(real.has_warning("backup_damaged"), "{}", real.stdout);
    let used = PathBuf::from(real.report.details["backup"].as_str().unwrap());
    assert_ne!(used, dir);
    assert!(sessiondb::backup::is_complete(&used));
    assert_eq!(real.count("inserted"), 3);
    row(
        "the newest matching backup damaged (a file gone)",
        "migrate-state [--dry-run=false]",
        "warned (backup_damaged) by dry and real runs, exit 0",
        "the real run took a new backup and loaded 3 sessions",
    );
}
