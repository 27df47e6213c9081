//! resolve → plan → act (issue 16): a dry run reaches every refusal its real run reaches
//! before the first write, with the same code and exit code, and every writing step
//! takes the writers' lock before the reads that decide what it writes.

use sessiondb::exit;

use crate::faults::row;
use crate::support::pg::{Role, TestDb};
use crate::support::store::Store;
use crate::support::{Cmd, Run, sessiondb};

fn step(s: &Store, url: &str, args: &[&str]) -> Cmd {
    sessiondb(args).config(&s.config).env("DATABASE_URL", url)
}

fn store_with(n: usize) -> Store {
    let s = Store::new();
    for i in 0..n {
        s.session(&format!("s{i:05}"), &format!("{{\"n\": {i}}}"));
    }
    s
}

fn count(db: &TestDb, sql: &str) -> i64 {
    db.client().query_one(sql, &[]).unwrap().get(0)
}

fn backups(s: &Store) -> usize {
    std::fs::read_dir(s.root().join("backups")).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("20"))
            .count()
    })
}

/// Run `args` as a dry run and as a real run (`--dry-run=false` added): both must
/// end with `exit` and an error `code`. Returns both runs.
fn refused_alike(s: &Store, url: &str, args: &[&str], exit: i32, code: &str) -> (Run, Run) {
    let dry = step(s, url, args).run();
    let mut real_args = args.to_vec();
    real_args.push("--dry-run=false");
    let real = step(s, url, &real_args).run();
    for (what, r) in [("dry run", &dry), ("real run", &real)] {
        assert_eq!(
            r.code, exit,
            "{what} of {args:?}: exit {}\n{}\n{}",
            r.code, r.stdout, r.stderr
        );
        assert_eq!(
            r.report.errors.first().map(|e| e.code.as_str()),
            Some(code),
            "{what} of {args:?}: {}",
            r.stdout
        );
    }
    (dry, real)
}

/// Hold the writers' lock on `db` from a connection of the test's, as a running
/// sessiondb writer would.
fn hold_writer_lock(db: &TestDb) -> postgres::Client {
    let mut cfg = db.url.parse::<postgres::Config>().unwrap();
    cfg.application_name("sessiondb:44444444-5555-6666-7777-888888888888");
    let mut c = cfg.connect(postgres::NoTls).unwrap();
    let key = sessiondb::pg::lock_key("public");
    c.execute("SELECT pg_advisory_lock($1)", &[&key]).unwrap();
    c
}

#[test]
fn a_dry_run_refuses_what_the_real_run_refuses_with_the_same_code() {
    // A backup given that is not one (its manifest gone).
    let s = store_with(4);
    let db = TestDb::new("dr_backup");
    let taken = sessiondb(&["backup"]).config(&s.config).expect(exit::OK);
    let dir = taken.report.details["backup"].as_str().unwrap().to_owned();
    std::fs::remove_file(std::path::Path::new(&dir).join("manifest.json")).unwrap();
    refused_alike(
        &s,
        &db.url,
        &["migrate-state", "--backup", &dir],
        exit::PROBLEMS,
        "backup_incomplete",
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        0
    );

    // A target whose table cannot hold the data.
    let db = TestDb::new("dr_mismatch");
    db.client()
        .batch_execute("CREATE TABLE sessions (id text PRIMARY KEY, user_id text, status text, current_step text, cost text, created_at timestamptz, updated_at timestamptz, state jsonb)")
        .unwrap();
    let (dry, _) = refused_alike(
        &s,
        &db.url,
        &["migrate-state"],
        exit::PROBLEMS,
        "schema_mismatch",
    );
    assert!(
        dry.report.errors[0].message.contains("sessions.cost"),
        "{}",
        dry.stdout
    );
    assert_eq!(count(&db, "SELECT count(*) FROM sessions"), 0);

    // A conflict: a target row changed behind sessiondb's back.
    let db = TestDb::new("dr_conflict");
    step(&s, &db.url, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    db.client()
        .batch_execute("UPDATE sessions SET status = 'edited' WHERE id = 's00002'")
        .unwrap();
    refused_alike(&s, &db.url, &["migrate-state"], exit::PROBLEMS, "conflict");
    assert_eq!(
        count(&db, "SELECT count(*) FROM sessions WHERE status = 'edited'"),
        1
    );

    // A role that may not create the tables: the dry run rehearses the schema the real
    // run would apply, and the real run refuses before it takes a backup.
    let s = store_with(4);
    let role = Role::new("dr_nocreate");
    let db = TestDb::new("dr_nocreate");
    db.client()
        .batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .unwrap();
    refused_alike(
        &s,
        &role.url(&db),
        &["migrate-state"],
        exit::OPERATIONAL,
        "permission_denied",
    );
    assert_eq!(backups(&s), 0, "refused before the backup");

    // Another writer holds the lock: every writing step's dry run says so, as its
    // real run does.
    let db = TestDb::new("dr_locked");
    step(&s, &db.url, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    step(&s, &db.url, &["verify"]).expect(exit::OK);
    let holder = hold_writer_lock(&db);
    for args in [&["migrate-state"][..], &["set-default"], &["rollback"]] {
        let (dry, _) = refused_alike(&s, &db.url, args, exit::OPERATIONAL, "lock_held");
        assert!(
            dry.report.errors[0]
                .message
                .contains("44444444-5555-6666-7777-888888888888"),
            "names the holder: {}",
            dry.stdout
        );
    }
    drop(holder);
    step(&s, &db.url, &["set-default"]).expect(exit::OK);
    row(
        "an incomplete backup, a table that cannot hold the data, a conflict, no CREATE, the lock held",
        "migrate-state / set-default / rollback, dry and real",
        "the same code and exit from both runs (backup_incomplete, schema_mismatch, conflict: 1; permission_denied, lock_held: 3)",
        "nothing written, no backup taken",
    );
}

#[test]
fn the_writers_take_the_lock_before_the_reads_that_decide_what_they_write() {
    let s = store_with(3);
    let db = TestDb::new("dr_lock_order");
    step(&s, &db.url, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    step(&s, &db.url, &["verify"]).expect(exit::OK);
    // The first bookkeeping read of each writer fails wherever it happens: the schema
    // versions (migrate-state), the verifications (set-default), the cutovers
    // (rollback), each a view that cannot be planned.
    let mut c = db.client();
    for t in [
        "sessiondb_schema_versions",
        "sessiondb_verifications",
        "sessiondb_cutovers",
    ] {
        c.batch_execute(&format!(
            "ALTER TABLE {t} RENAME TO {t}_real; CREATE VIEW {t} AS SELECT * FROM {t}_real WHERE 1/0 = 1"
        ))
        .unwrap();
    }
    let writers = [&["migrate-state"][..], &["set-default"], &["rollback"]];
    // Held by another writer: refused before any of those reads.
    let holder = hold_writer_lock(&db);
    for args in writers {
        refused_alike(&s, &db.url, args, exit::OPERATIONAL, "lock_held");
    }
    drop(holder);
    // Free: each takes the lock, then reads, and refuses what it reads: a view where its
    // table belongs (pg::trust).
    for args in writers {
        refused_alike(&s, &db.url, args, exit::PROBLEMS, "untrusted_object");
    }
    row(
        "the bookkeeping a writer reads first made unreadable, the lock held by another",
        "migrate-state / set-default / rollback, dry and real",
        "lock_held (the reads come after the lock); with the lock free: untrusted_object",
        "nothing written",
    );
}
