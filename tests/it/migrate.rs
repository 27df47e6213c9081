//! `migrate-state` against a real PostgreSQL: dry run, load, rerun, catch-up,
//! refusal, quarantine, conflicts, the lock, kills.

use sessiondb::exit;

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

fn count(db: &TestDb, sql: &str) -> i64 {
    db.client().query_one(sql, &[]).unwrap().get(0)
}

fn store_with(n: usize) -> Store {
    let s = Store::new();
    for i in 0..n {
        s.session(&format!("s{i:05}"), &format!("{{\"agents\": [{{\"name\": \"a{i}\", \"n\": {i}}}], \"pct\": 1.50, \"big\": 12345678901234567890}}"));
    }
    s
}

#[test]
fn dry_run_is_the_default_and_writes_nothing() {
    let s = store_with(5);
    let db = TestDb::new("mig_dry");
    let r = migrate(&s, &db, &[]).expect(exit::OK);
    assert_eq!(r.report.dry_run, Some(true));
    assert_eq!(r.count("inserted"), 5);
    assert_eq!(tables(&db), 0, "a dry run creates no table");
    assert!(
        !s.root().join("backups").exists(),
        "a dry run takes no backup"
    );
    let r = migrate(&s, &db, &["--dry-run=true"]).expect(exit::OK);
    assert_eq!(r.count("inserted"), 5);
    let r = migrate(&s, &db, &["--dry-run"]).expect(exit::OK);
    assert_eq!(r.report.dry_run, Some(true));
    assert_eq!(tables(&db), 0);
}

#[test]
fn load_then_rerun_changes_nothing() {
    let s = store_with(25);
    // A session with its state only in the SQLite column, and one without any state.
    s.row(
        &"col-only",
        &"u",
        &"done",
        &"end",
        &"0.5",
        &1_709_287_200i64,
        &1_709_287_200_123i64,
        &r#"{"from": "column", "x": 1e2}"#,
    );
    s.row(
        &"no-state",
        &rusqlite::types::Null,
        &"new",
        &rusqlite::types::Null,
        &rusqlite::types::Null,
        &rusqlite::types::Null,
        &rusqlite::types::Null,
        &rusqlite::types::Null,
    );
    let db = TestDb::new("mig_rerun");
    let r = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    assert_eq!(r.count("inserted"), 27, "{}", r.stdout);
    assert!(r.report.artifacts.iter().any(|a| a.kind == "backup"));
    assert_eq!(count(&db, "SELECT count(*) FROM sessions"), 27);
    assert_eq!(count(&db, "SELECT count(*) FROM session_state"), 26);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sessiondb_ledger WHERE status = 'migrated'"
        ),
        27
    );
    let mut c = db.client();
    let row = c.query_one("SELECT s.cost, s.created_at::text, st.state::text FROM sessions s JOIN session_state st ON st.session_id = s.id WHERE s.id = 'col-only'", &[]).unwrap();
    assert_eq!(row.get::<_, f64>(0), 0.5);
    assert_eq!(row.get::<_, String>(2), r#"{"x": 100, "from": "column"}"#);
    let big: String = c
        .query_one(
            "SELECT state->>'big' FROM session_state WHERE session_id = 's00003'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        big, "12345678901234567890",
        "big integers are loaded from the original text, exactly"
    );
    let idx: i64 = c.query_one("SELECT count(*) FROM pg_indexes WHERE tablename = 'session_state' AND indexdef ILIKE '%gin%'", &[]).unwrap().get(0);
    assert_eq!(idx, 1, "the GIN index is built");
    let again = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    assert_eq!(
        (
            again.count("inserted"),
            again.count("updated"),
            again.count("unchanged")
        ),
        (0, 0, 27),
        "{}",
        again.stdout
    );
}

#[test]
fn catch_up_copies_exactly_what_changed() {
    let s = store_with(30);
    let db = TestDb::new("mig_catchup");
    migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    s.state_file("s00007", br#"{"changed": true}"#);
    s.conn()
        .execute(
            "UPDATE sessions SET status = 'done' WHERE id = 's00011'",
            [],
        )
        .unwrap();
    s.session("s99999", r#"{"new": 1}"#);
    let plan = migrate(&s, &db, &[]).expect(exit::OK);
    assert_eq!(
        (
            plan.count("inserted"),
            plan.count("updated"),
            plan.count("unchanged")
        ),
        (1, 2, 28)
    );
    let r = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    assert_eq!(
        (
            r.count("inserted"),
            r.count("updated"),
            r.count("unchanged")
        ),
        (1, 2, 28),
        "{}",
        r.stdout
    );
    let mut c = db.client();
    assert_eq!(
        c.query_one(
            "SELECT state::text FROM session_state WHERE session_id = 's00007'",
            &[]
        )
        .unwrap()
        .get::<_, String>(0),
        r#"{"changed": true}"#
    );
    assert_eq!(
        c.query_one("SELECT status FROM sessions WHERE id = 's00011'", &[])
            .unwrap()
            .get::<_, String>(0),
        "done"
    );
}

#[test]
fn invalid_records_are_refused_before_anything_is_written() {
    let s = store_with(3);
    s.session("bad-nul", r#"{"text": "a\u0000b"}"#);
    let db = TestDb::new("mig_refuse");
    let r = migrate(&s, &db, &["--dry-run=false"]).expect(exit::PROBLEMS);
    assert!(r.has_error("invalid_records"), "{}", r.stdout);
    assert!(r.report.errors[0].message.contains("bad-nul"));
    assert_eq!(tables(&db), 0, "nothing written to the target");
    let dry = migrate(&s, &db, &[]).expect(exit::PROBLEMS);
    assert!(dry.has_error("invalid_records"));
}

#[test]
fn quarantine_keeps_the_raw_bytes() {
    let s = store_with(3);
    let raw = b"{\"text\": \"a\\u0000b\",   \"keep\": \"these bytes\"}";
    s.session("bad-nul", std::str::from_utf8(raw).unwrap());
    let db = TestDb::new("mig_quarantine");
    let dry = migrate(&s, &db, &["--quarantine"]).expect(exit::OK);
    assert_eq!(dry.report.status, sessiondb::report::Status::Warn);
    let r = migrate(&s, &db, &["--dry-run=false", "--quarantine"]).expect(exit::OK);
    assert_eq!(r.report.status, sessiondb::report::Status::Warn);
    assert_eq!(r.count("quarantined"), 1);
    assert_eq!(r.count("inserted"), 3);
    let q = r
        .report
        .artifacts
        .iter()
        .find(|a| a.kind == "quarantine")
        .expect("quarantine artifact");
    let dir = std::path::Path::new(&q.path);
    let index = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".ndjson"))
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&index)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["id"], "bad-nul");
    assert_eq!(line["code"], "jsonb_incompatible_nul");
    let kept = std::fs::read(dir.join(line["raw_file"].as_str().unwrap())).unwrap();
    assert_eq!(kept, raw, "the raw bytes are kept exactly");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sessiondb_ledger WHERE status = 'quarantined' AND session_id = 'bad-nul'"
        ),
        1
    );
}

fn conflict_setup(name: &str) -> (Store, TestDb) {
    let s = store_with(4);
    let db = TestDb::new(name);
    migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    // The application changed s00001 in PostgreSQL; the source changed it too, and s00002.
    db.client().execute("UPDATE session_state SET state = '{\"app\": \"wrote this\"}' WHERE session_id = 's00001'", &[]).unwrap();
    s.state_file("s00001", br#"{"source": "changed"}"#);
    s.state_file("s00002", br#"{"source": "changed too"}"#);
    (s, db)
}

fn state_of(db: &TestDb, id: &str) -> String {
    db.client()
        .query_one(
            "SELECT state::text FROM session_state WHERE session_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0)
}

#[test]
fn conflict_fail_writes_nothing() {
    let (s, db) = conflict_setup("mig_conflict_fail");
    let r = migrate(&s, &db, &["--dry-run=false"]).expect(exit::PROBLEMS);
    assert!(r.has_error("conflict"), "{}", r.stdout);
    assert!(r.stdout.contains("s00001"));
    assert_eq!(state_of(&db, "s00001"), r#"{"app": "wrote this"}"#);
    assert_ne!(
        state_of(&db, "s00002"),
        r#"{"source": "changed too"}"#,
        "nothing at all is written"
    );
}

#[test]
fn conflict_skip_and_source_wins() {
    let (s, db) = conflict_setup("mig_conflict_skip");
    let r = migrate(&s, &db, &["--dry-run=false", "--on-conflict", "skip"]).expect(exit::OK);
    assert_eq!(
        (r.count("conflicts"), r.count("updated")),
        (1, 1),
        "{}",
        r.stdout
    );
    assert_eq!(state_of(&db, "s00001"), r#"{"app": "wrote this"}"#);
    assert_eq!(state_of(&db, "s00002"), r#"{"source": "changed too"}"#);
    let r = migrate(
        &s,
        &db,
        &["--dry-run=false", "--on-conflict", "source-wins"],
    )
    .expect(exit::OK);
    assert_eq!(r.count("conflicts"), 1, "{}", r.stdout);
    assert_eq!(state_of(&db, "s00001"), r#"{"source": "changed"}"#);
    let r = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    assert_eq!(
        (
            r.count("inserted"),
            r.count("updated"),
            r.count("conflicts")
        ),
        (0, 0, 0)
    );
}

#[test]
fn a_second_writer_fails_at_once_naming_the_holder() {
    let s = store_with(2);
    let db = TestDb::new("mig_lock");
    let mut holder = db.url.parse::<postgres::Config>().unwrap();
    holder.application_name("sessiondb:11111111-2222-3333-4444-555555555555");
    let mut c = holder.connect(postgres::NoTls).unwrap();
    let key = sessiondb::pg::lock_key("public");
    c.execute("SELECT pg_advisory_lock($1)", &[&key]).unwrap();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let t0 = std::time::Instant::now();
    let r: Run = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OPERATIONAL);
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "fails at once"
    );
    assert!(r.has_error("lock_held"), "{}", r.stdout);
    let m = &r.report.errors[0].message;
    assert!(
        m.contains(&format!("pid {pid}")) && m.contains("11111111-2222-3333-4444-555555555555"),
        "{m}"
    );
    assert_eq!(tables(&db), 0);
}

#[test]
fn a_catch_up_skips_reading_what_is_stamped_unchanged() {
    let s = store_with(40);
    // And a session only in the JSON store, with its state in a file.
    s.json_store(
        r#"{"version": 1, "sessions": [{"id": "j1", "user_id": "u", "status": "done", "current_step": "end", "cost": 1.5, "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"}]}"#,
    );
    s.state_file("j1", br#"{"from": "file"}"#);
    // Stamps are only trusted for files older than two seconds (the racy-stamp rule).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let db = TestDb::new("mig_stamps");
    migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    let r = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    assert_eq!(r.count("unchanged"), 41);
    assert_eq!(
        r.report.details["unchanged_by_stamp"], 41,
        "nothing was read again: {}",
        r.stdout
    );
    // A changed file is fresh (no stamp) and a changed row changes the stamp: both are read.
    s.state_file("s00005", br#"{"edited": true}"#);
    s.conn()
        .execute(
            "UPDATE sessions SET current_step = 'next' WHERE id = 's00006'",
            [],
        )
        .unwrap();
    let r = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    assert_eq!(
        (r.count("updated"), r.count("unchanged")),
        (2, 39),
        "{}",
        r.stdout
    );
    assert_eq!(r.report.details["unchanged_by_stamp"], 39);
    // The planning pass read the two changed sessions; the load wrote what it kept
    // instead of scanning the store a second time.
    assert_eq!(
        r.report.details["load_read"], "kept_from_plan",
        "{}",
        r.stdout
    );
    let v = sessiondb(&["verify"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(v.count("different"), 0);
}

/// A state of about `mb` MB whose first key is `tag`.
pub(crate) fn big_state(tag: &str, mb: usize) -> String {
    let item = r#"{"text": "lorem ipsum dolor sit amet", "n": 12345}"#;
    let n = (mb << 20) / (item.len() + 2);
    format!(
        "{{\"tag\": \"{tag}\", \"items\": [{}]}}",
        vec![item; n].join(", ")
    )
}

/// A catch-up whose changes do not fit in what the planning pass keeps for the load
/// (32 MB of state): the load reads again only the sessions that pass read, and every
/// change is written, a JSON-only session's too.
#[test]
fn a_catch_up_too_large_to_keep_reads_again_only_what_it_planned() {
    let s = store_with(30);
    for i in 0..3 {
        s.session(&format!("big{i}"), &big_state("a", 12));
    }
    s.json_store(
        r#"{"version": 1, "sessions": [{"id": "j1", "user_id": "u", "status": "done", "current_step": "end", "cost": 1.5, "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"}]}"#,
    );
    s.state_file("j1", br#"{"v": 1}"#);
    // Stamps are only trusted for files older than two seconds (the racy-stamp rule).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let db = TestDb::new("mig_reread");
    migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    // 36 MB of changed state (72 MB with the canonical forms), one small change, and
    // the JSON-only session's state.
    for i in 0..3 {
        s.state_file(&format!("big{i}"), big_state("b", 12).as_bytes());
    }
    s.state_file("s00007", br#"{"edited": true}"#);
    s.state_file("j1", br#"{"v": 2}"#);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    assert_eq!(
        (
            r.count("updated"),
            r.count("unchanged"),
            r.count("sessions")
        ),
        (5, 29, 34),
        "{}",
        r.stdout
    );
    assert_eq!(r.report.details["unchanged_by_stamp"], 29, "{}", r.stdout);
    assert_eq!(
        r.report.details["load_read"], "read_again_changed",
        "{}",
        r.stdout
    );
    let mut c = db.client();
    let tags: Vec<(String, String)> = c
        .query(
            "SELECT session_id, coalesce(state->>'tag', state->>'v', state->>'edited') FROM session_state \
             WHERE session_id IN ('big0', 'big1', 'big2', 's00007', 'j1') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let want: Vec<(String, String)> = [
        ("big0", "b"),
        ("big1", "b"),
        ("big2", "b"),
        ("j1", "2"),
        ("s00007", "true"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(tags, want);
    let v = sessiondb(&["verify"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(
        (v.count("checked"), v.count("different"), v.count("missing")),
        (34, 0, 0),
        "{}",
        v.stdout
    );
    // Run again, it changes nothing.
    let r = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    assert_eq!((r.count("updated"), r.count("unchanged")), (0, 34));
}

#[test]
fn a_catch_up_uses_the_backup_of_the_store_as_it_is_and_takes_one_when_there_is_none() {
    let s = store_with(20);
    s.json_store(
        r#"{"version": 1, "sessions": [{"id": "j1", "user_id": "u", "status": "done", "current_step": "end", "cost": 1.5, "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"}]}"#,
    );
    // A folder with a state file and no metadata anywhere: in the fingerprint all the same.
    s.state_file("zz-orphan", br#"{"orphan": true}"#);
    let db = TestDb::new("mig_fp");
    let backups = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(s.root().join("backups"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.ends_with(sessiondb::backup::BLOBS_DIR))
            .collect();
        v.sort();
        v
    };
    migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    assert_eq!(backups().len(), 1);
    s.state_file("s00003", br#"{"edited": 1}"#);
    let b = sessiondb(&["backup"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    let taken = b.report.details["backup"].as_str().unwrap().to_owned();
    // The catch-up's fingerprint comes from its planning pass's own stats: it must equal
    // the one the backup took, or the backup would not be found. The dry run's too.
    let dry = migrate(&s, &db, &[]).expect(exit::OK);
    assert_eq!(
        dry.report.details["backup"],
        format!("would use the matching backup {taken}").as_str(),
        "{}",
        dry.stdout
    );
    let r = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    assert_eq!(r.report.details["backup"], taken.as_str(), "{}", r.stdout);
    assert!(!r.has_warning("backup_stale"), "{}", r.stdout);
    assert_eq!(backups().len(), 2, "no new backup was taken");
    assert_eq!(r.count("updated"), 1);
    // The store changes again: no backup matches, so the run takes one.
    s.state_file("s00004", br#"{"edited": 2}"#);
    let r = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
    assert_eq!(backups().len(), 3, "{}", r.stdout);
    assert_ne!(r.report.details["backup"], taken.as_str());
    // Naming the older backup works, with a warning that it is older than the store.
    let r = migrate(&s, &db, &["--dry-run=false", "--backup", &taken]).expect(exit::OK);
    assert!(r.has_warning("backup_stale"), "{}", r.stdout);
    assert_eq!(r.count("updated"), 0);
}

#[test]
fn large_states_are_compressed_as_postgres_toast_compression_says() {
    // lz4 by default (the server here is PostgreSQL 15 with lz4), pglz when the config
    // says so; either way the state reads back the same.
    let compression = |db: &TestDb| -> Vec<String> {
        db.client()
            .query(
                "SELECT DISTINCT pg_column_compression(state) FROM session_state WHERE pg_column_compression(state) IS NOT NULL",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    for (extra, want) in [
        ("", "lz4"),
        ("[postgres]\ntoast_compression = \"pglz\"\n", "pglz"),
    ] {
        let s = Store::new();
        s.write_config("sqlite", extra);
        s.bulk(20, 8000);
        let db = TestDb::new(&format!("toast_{want}"));
        migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
        assert_eq!(compression(&db), [want], "config {extra:?}");
        let pad: String = db
            .client()
            .query_one(
                "SELECT state->>'pad' FROM session_state WHERE session_id = 'k0000003'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(pad, "p".repeat(8000 - 40));
        sessiondb(&["verify"])
            .config(&s.config)
            .env("DATABASE_URL", &db.url)
            .expect(exit::OK);
    }
}

#[test]
fn the_gin_index_is_built_with_postgres_index_build_memory_and_looks_as_the_schema_makes_it() {
    // The fresh load's index work gets its memory from the config (8MB by default) and
    // is done when postgres.index_build says: during the load by default (the index
    // created first, each of the two COPY streams' pending-list limit and work_mem half
    // of it, the list moved into the index at the end with maintenance_work_mem), or
    // after it. details.index_build says which; either way the application sees the
    // same index (same definition, no reloptions), holding every row, nothing left in
    // its pending list, and both tables' statistics gathered.
    for (extra, want, strategy, writers) in [
        ("", "8MB", "during_load", Some("4MB")),
        (
            "[postgres]\nindex_build_memory = \"2MB\"\n",
            "2MB",
            "during_load",
            Some("1MB"),
        ),
        (
            "[postgres]\nindex_build = \"after_load\"\n",
            "8MB",
            "after_load",
            None,
        ),
    ] {
        let s = Store::new();
        s.write_config("sqlite", extra);
        s.bulk(40, 3000);
        let db = TestDb::new(&format!("index_mem_{want}_{strategy}"));
        // The dry run says how the load would go.
        let dry = migrate(&s, &db, &[]).expect(exit::OK);
        let how = dry.report.details["load"].as_str().unwrap_or_default();
        assert!(
            how.starts_with("COPY into the empty target")
                && how.contains("filled during") == (strategy == "during_load"),
            "{how}"
        );
        let r = migrate(&s, &db, &["--dry-run=false"]).expect(exit::OK);
        let b = &r.report.details["index_build"];
        assert_eq!(b["configured"], want, "{}", r.stdout);
        assert_eq!(b["maintenance_work_mem"], want, "{}", r.stdout);
        assert_eq!(b["strategy"], strategy, "{}", r.stdout);
        assert_eq!(b["writer_memory"].as_str(), writers, "{}", r.stdout);
        assert_eq!(
            b["pending_list_left"],
            serde_json::Value::Null,
            "{}",
            r.stdout
        );
        let c = &mut db.client();
        let (def, opts, bytes): (String, Option<Vec<String>>, i64) = {
            let row = c
                .query_one(
                    "SELECT pg_get_indexdef(i.indexrelid), ci.reloptions, pg_relation_size(i.indexrelid)
                       FROM pg_index i
                       JOIN pg_class ci ON ci.oid = i.indexrelid
                      WHERE i.indrelid = 'public.session_state'::regclass AND ci.relam = (SELECT oid FROM pg_am WHERE amname = 'gin')",
                    &[],
                )
                .unwrap();
            (row.get(0), row.get(1), row.get(2))
        };
        assert_eq!(
            def,
            "CREATE INDEX session_state_state_gin ON public.session_state USING gin (state)"
        );
        assert_eq!(opts, None);
        assert_eq!(b["index_bytes"].as_i64(), Some(bytes), "{}", r.stdout);
        // Forty small states never fill a pending list: during the load they all wait
        // in it, so an empty list says the final move ran.
        c.batch_execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
            .unwrap();
        let pending: i64 = c
            .query_one(
                "SELECT n_pending_tuples FROM gin_metapage_info(get_raw_page('public.session_state_state_gin', 0))",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(pending, 0, "{strategy}");
        // Every row found through the index.
        c.batch_execute("SET enable_seqscan = off").unwrap();
        let found: i64 = c
            .query_one(
                "SELECT count(*) FROM public.session_state WHERE state ? 'pad'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(found, 40, "{strategy}");
        // Both tables were analyzed (reltuples is -1 until the first ANALYZE; the
        // sessions table's was gathered beside the index work).
        for t in ["sessions", "session_state"] {
            let n: f32 = c
                .query_one(
                    "SELECT reltuples FROM pg_class WHERE oid = $1::text::regclass",
                    &[&format!("public.{t}")],
                )
                .unwrap()
                .get(0);
            assert_eq!(n, 40.0, "{t}");
        }
    }
    // A size without its unit, or out of bounds, is refused naming the setting.
    for bad in ["512", "512kB", "3GB"] {
        let s = Store::new();
        s.write_config(
            "sqlite",
            &format!("[postgres]\nindex_build_memory = {bad:?}\n"),
        );
        let db = TestDb::new("index_mem_bad");
        let r = migrate(&s, &db, &[]).expect(exit::USAGE);
        assert!(r.has_error("config_invalid"), "{}", r.stdout);
        assert!(
            r.report.errors[0]
                .message
                .contains("postgres.index_build_memory"),
            "{}",
            r.stdout
        );
    }
}
