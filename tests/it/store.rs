//! The runtime store (`sessiondb::store`) on its three backends: the same operations
//! with the same results, the JSON store's refusals, atomic state files, unsafe ids,
//! the warnings as data, the progress batching, and failures that surface.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::json;
use sessiondb::config::{Config, Env};
use sessiondb::store::{
    self, Backend, BatchOptions, MetaPatch, NewSession, Options, Page, State, Store,
};

use crate::support::pg::{self, TestDb};
use crate::support::store::Store as Legacy;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Sqlite,
    Postgres,
    Json,
}

/// A legacy store, its config, and (for PostgreSQL) a database of its own.
struct Fx {
    kind: Kind,
    legacy: Legacy,
    db: Option<TestDb>,
    env: Env,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Run an async test body; the fixture is built and dropped outside the runtime (the
/// test harness's PostgreSQL helpers are blocking).
fn run<F: Future<Output = ()>>(f: F) {
    rt().block_on(f)
}

const SEED: &[(&str, &str)] = &[
    ("b-2", r#"{"step": "plan", "n": 2}"#),
    ("a-1", r#"{"step": "plan", "n": 1, "x": [1.50, "é"]}"#),
    ("Z", r#"{"n": 0}"#),
    ("é-3", r#"{"n": 3}"#),
    ("c", "[]"),
];

impl Fx {
    fn new(kind: Kind, label: &str) -> Fx {
        let legacy = Legacy::new();
        let mut env = HashMap::new();
        let db = match kind {
            Kind::Sqlite => None,
            Kind::Postgres => {
                legacy.write_config("postgres", "");
                let db = TestDb::new(label);
                env.insert("DATABASE_URL".to_owned(), db.url.clone());
                Some(db)
            }
            Kind::Json => {
                // The states as text: `1.50` stays `1.50`, as the legacy file holds it.
                let records: Vec<String> = SEED
                    .iter()
                    .map(|(id, st)| {
                        format!(
                            r#"{{"id": {}, "user_id": "u-1", "status": "running", "current_step": "plan",
                                "cost": 0.25, "created_at": "2024-03-01T10:00:00Z",
                                "updated_at": "2024-03-01T10:05:00Z", "state": {st}}}"#,
                            json!(id)
                        )
                    })
                    .collect();
                legacy.json_store(&format!(
                    r#"{{"version": 1, "sessions": [{}]}}"#,
                    records.join(",\n")
                ));
                legacy.write_config("json", "");
                None
            }
        };
        Fx {
            kind,
            legacy,
            db,
            env: Env(env),
        }
    }

    fn config(&self) -> Config {
        Config::load(Some(&self.legacy.config), &self.env).unwrap()
    }

    async fn open(&self) -> Store {
        self.open_with(Options::default()).await
    }

    async fn open_with(&self, opts: Options) -> Store {
        store::open_with(&self.config(), &self.env, opts)
            .await
            .unwrap_or_else(|e| panic!("open {:?}: {e}", self.kind))
    }

    /// The seed sessions: written through the store, or (JSON) already in the file.
    async fn seeded(&self, opts: Options) -> Store {
        let s = self.open_with(opts).await;
        if self.kind != Kind::Json {
            for (id, st) in SEED {
                s.create(NewSession {
                    id: Some(id.to_string()),
                    user_id: Some("u-1".into()),
                    status: Some("running".into()),
                    current_step: Some("plan".into()),
                    cost: Some(0.25),
                    state: Some((*st).into()),
                    ..NewSession::default()
                })
                .await
                .unwrap();
            }
        }
        s
    }
}

fn opts_window(ms: u64) -> Options {
    Options {
        batch: BatchOptions {
            window: Duration::from_millis(ms),
            ..BatchOptions::default()
        },
        ..Options::default()
    }
}

fn ids(page: &[store::SessionSummary]) -> Vec<&str> {
    page.iter().map(|s| s.id.as_str()).collect()
}

// ---- the same body on every backend -------------------------------------------------

async fn reads_and_writes(fx: &Fx) {
    let s = fx.seeded(Options::default()).await;
    assert_eq!(
        s.backend(),
        match fx.kind {
            Kind::Sqlite => Backend::Sqlite,
            Kind::Postgres => Backend::Postgres,
            Kind::Json => Backend::Json,
        }
    );

    // get: metadata and the state in jsonb's canonical text.
    let a = s.get("a-1").await.unwrap().expect("a-1 exists");
    assert_eq!(a.meta.user_id.as_deref(), Some("u-1"));
    assert_eq!(a.meta.cost, Some(0.25));
    assert_eq!(
        a.state.as_ref().unwrap().as_str(),
        r#"{"n": 1, "x": [1.50, "é"], "step": "plan"}"#
    );
    assert!(s.get("nope").await.unwrap().is_none());
    assert!(s.state("nope").await.unwrap().is_none());

    // list: keyset paging in bytewise id order, every session exactly once.
    let mut seen = Vec::new();
    let mut page = Page::first(2);
    loop {
        let got = s.list(page.clone()).await.unwrap();
        assert!(got.len() <= 2);
        if got.is_empty() {
            break;
        }
        seen.extend(got.iter().map(|x| x.id.clone()));
        page = Page::after(got.last().unwrap().id.clone(), 2);
    }
    assert_eq!(seen, vec!["Z", "a-1", "b-2", "c", "é-3"]);
    assert_eq!(
        ids(&s.list(Page::after("b-2", 10)).await.unwrap()),
        vec!["c", "é-3"]
    );

    if fx.kind == Kind::Json {
        json_refuses_every_write(&s).await;
        return;
    }

    // A JSON null is a state (not SQL NULL).
    s.put_state("c", "null").await.unwrap();
    assert_eq!(s.state("c").await.unwrap().unwrap().as_str(), "null");

    // create: a generated id; an existing id refused, nothing overwritten.
    let made = s
        .create(NewSession {
            state: Some(json!({"fresh": true}).into()),
            ..NewSession::default()
        })
        .await
        .unwrap();
    assert_eq!(made.id.len(), 36, "a UUID: {}", made.id);
    assert_eq!(
        s.get(&made.id)
            .await
            .unwrap()
            .unwrap()
            .state
            .unwrap()
            .as_str(),
        r#"{"fresh": true}"#
    );
    let dup = s
        .create(NewSession {
            id: Some("a-1".into()),
            state: Some(json!({"overwrite": 1}).into()),
            ..NewSession::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), "conflict", "{dup}");
    assert_eq!(s.get("a-1").await.unwrap().unwrap(), a);

    // put_state: a Value or raw text; jsonb's refusals are refused and change nothing.
    s.put_state("a-1", json!({"step": "run", "n": 5}))
        .await
        .unwrap();
    let after = s.get("a-1").await.unwrap().unwrap();
    assert_eq!(after.state.unwrap().as_str(), r#"{"n": 5, "step": "run"}"#);
    assert!(after.meta.updated_at > a.meta.updated_at);
    assert_eq!(after.meta.created_at, a.meta.created_at);
    s.put_state("a-1", r#"{"n":6, "n":7}"#).await.unwrap();
    assert_eq!(
        s.state("a-1").await.unwrap().unwrap().as_str(),
        r#"{"n": 7}"#
    );
    for (bad, code) in [
        (r#"{"x": "a\u0000b"}"#, "jsonb_incompatible_nul"),
        ("{\"x\": ", "invalid_json"),
        ("[1e1073741823]", "invalid_json"),
    ] {
        let e = s.put_state("a-1", bad).await.unwrap_err();
        assert_eq!(e.code(), code, "{bad}: {e}");
    }
    let e = s
        .put_state("a-1", json!({"x": "a\u{0}b"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "jsonb_incompatible_nul");
    assert_eq!(
        s.state("a-1").await.unwrap().unwrap().as_str(),
        r#"{"n": 7}"#
    );
    let e = s.put_state("nope", json!(1)).await.unwrap_err();
    assert_eq!(e.code(), "not_found");

    // update_meta: only the fields given.
    let m = s
        .update_meta(
            "b-2",
            MetaPatch {
                status: Some("done".into()),
                cost: Some(1.5),
                ..MetaPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(m.meta.status.as_deref(), Some("done"));
    assert_eq!(m.meta.current_step.as_deref(), Some("plan"));
    assert_eq!(m.meta.cost, Some(1.5));
    assert_eq!(s.get("b-2").await.unwrap().unwrap().meta, m.meta);
    let e = s
        .update_meta("nope", MetaPatch::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "not_found");
    let e = s
        .update_meta(
            "b-2",
            MetaPatch {
                cost: Some(f64::NAN),
                ..MetaPatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_cost");
    let e = s
        .create(NewSession {
            id: Some("bad\u{1}id".into()),
            ..NewSession::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_id");

    // A receipt waits for the batched write.
    s.progress("c", json!({"p": 1}))
        .unwrap()
        .durable()
        .await
        .unwrap();
    assert_eq!(s.state("c").await.unwrap().unwrap().as_str(), r#"{"p": 1}"#);
    s.close().await.unwrap();
    assert_eq!(s.get("c").await.unwrap_err().code(), "closed");
}

async fn json_refuses_every_write(s: &Store) {
    let errs = [
        s.create(NewSession::default()).await.unwrap_err(),
        s.put_state("a-1", json!({})).await.unwrap_err(),
        s.update_meta("a-1", MetaPatch::default())
            .await
            .unwrap_err(),
        s.progress("a-1", json!({})).unwrap_err(),
        s.progress_merge("a-1", json!({})).unwrap_err(),
    ];
    for e in errs {
        assert_eq!(e.code(), "json_backend_deprecated", "{e}");
        assert!(e.to_string().contains("read-only"), "{e}");
    }
    assert!(
        s.warnings()
            .iter()
            .any(|w| w.code == "json_backend_deprecated")
    );
    let h = s.health().await;
    assert!(h.reachable);
    assert_eq!(h.backend, Backend::Json);
    assert!(h.drift.is_none());
    assert!(
        h.warnings
            .iter()
            .any(|w| w.code == "json_backend_deprecated")
    );
}

#[test]
fn store_reads_and_writes_sqlite() {
    let fx = Fx::new(Kind::Sqlite, "sqlite");
    run(reads_and_writes(&fx));
}

#[test]
fn store_reads_and_writes_postgres() {
    let fx = Fx::new(Kind::Postgres, "store_rw");
    run(reads_and_writes(&fx));
}

#[test]
fn store_reads_and_refuses_writes_json() {
    let fx = Fx::new(Kind::Json, "json");
    run(reads_and_writes(&fx));
}

/// The JSON backend keeps an index and reads states from the file when asked: a file
/// rewritten after the store opened is refused with `source_changed`, naming the file,
/// rather than served half old, half new.
#[test]
fn store_json_file_rewritten_after_open_is_source_changed() {
    let fx = Fx::new(Kind::Json, "json_changed");
    run(async {
        let s = fx.open().await;
        assert!(s.get("a-1").await.unwrap().is_some());
        // The deprecated application writes the file again (same records, new layout).
        let text = std::fs::read_to_string(&fx.legacy.json).unwrap();
        std::fs::write(&fx.legacy.json, text.replace(", ", ",  ")).unwrap();
        for e in [
            s.get("a-1").await.unwrap_err(),
            s.state("b-2").await.unwrap_err(),
        ] {
            assert_eq!(e.code(), "source_changed", "{e}");
            let msg = e.to_string();
            assert!(msg.contains(&fx.legacy.json.display().to_string()), "{msg}");
            assert!(msg.contains("changed while it was being read"), "{msg}");
        }
        // What is in memory still answers; a store opened now reads the new file.
        assert_eq!(s.list(Page::first(10)).await.unwrap().len(), SEED.len());
        let again = fx.open().await;
        assert!(again.get("a-1").await.unwrap().is_some());
    });
}

/// Writing through the store and reading back gives the same text on SQLite and
/// PostgreSQL, and the legacy files stay readable by the migration.
#[test]
fn store_backends_agree() {
    let sq = Fx::new(Kind::Sqlite, "agree");
    let pgx = Fx::new(Kind::Postgres, "agree");
    run(async {
        let a = sq.seeded(Options::default()).await;
        let b = pgx.seeded(Options::default()).await;
        for st in [
            json!({"z": 1, "aa": [true, null, 1e2], "b": {"k": "v"}}),
            json!("plain string"),
            json!(12345678901234567u64),
        ] {
            a.put_state("b-2", &st).await.unwrap();
            b.put_state("b-2", &st).await.unwrap();
            assert_eq!(a.state("b-2").await.unwrap(), b.state("b-2").await.unwrap());
        }
        let la = a.list(Page::first(100)).await.unwrap();
        let lb = b.list(Page::first(100)).await.unwrap();
        assert_eq!(ids(&la), ids(&lb));
        a.close().await.unwrap();
        b.close().await.unwrap();
    });
}

// ---- SQLite + files ------------------------------------------------------------------

fn temp_files(dir: &std::path::Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

#[test]
fn store_sqlite_state_files_are_written_atomically() {
    let fx = Fx::new(Kind::Sqlite, "atomic");
    // A session the legacy application wrote: its state in a file, pretty-printed.
    fx.legacy.session("legacy", "{\n  \"step\": \"plan\"\n}\n");
    let file = fx.legacy.sessions.join("legacy/state.json");
    run(async {
        let s = fx.open().await;
        assert_eq!(
            s.state("legacy").await.unwrap().unwrap().as_str(),
            r#"{"step": "plan"}"#
        );
        let before = std::fs::read(&file).unwrap();
        let row_before = s.get("legacy").await.unwrap().unwrap();

        // Refused by validation: nothing written, no temp file.
        let e = s
            .put_state("legacy", r#"{"a": "\u0000"}"#)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "jsonb_incompatible_nul");
        assert_eq!(std::fs::read(&file).unwrap(), before);

        // A write that fails at the rename (state.json is a folder here): the error
        // surfaces, no temp file stays, the row is unchanged.
        let other = fx.legacy.sessions.join("blocked/state.json");
        fx.legacy.session("blocked", "{}");
        std::fs::remove_file(&other).unwrap();
        std::fs::create_dir_all(other.join("inside")).unwrap();
        let e = s.put_state("blocked", json!({"new": 1})).await.unwrap_err();
        assert!(e.to_string().contains("state.json"), "{e}");
        assert_eq!(
            s.get("blocked").await.unwrap_err().code(),
            "unreadable",
            "a folder where state.json belongs is reported, not read"
        );
        let row = fx
            .legacy
            .conn()
            .query_row(
                "SELECT updated_at FROM sessions WHERE id = 'blocked'",
                [],
                |r| r.get::<_, String>(0),
            )
            .unwrap();
        assert_eq!(row, "2024-03-01 10:05:00.123456");

        // A good write replaces the whole file, and keeps its mode.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        s.put_state("legacy", json!({"step": "run"})).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            r#"{"step": "run"}"#
        );
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let row_after = s.get("legacy").await.unwrap().unwrap();
        assert!(row_after.meta.updated_at > row_before.meta.updated_at);
        assert_eq!(temp_files(fx.legacy.root()), Vec::<String>::new());

        // The column is kept in step where it held state (so the two never disagree).
        fx.legacy.row(
            &"both",
            &"u",
            &"running",
            &"plan",
            &1,
            &"2024-03-01T10:00:00Z",
            &"2024-03-01T10:00:00Z",
            &r#"{"old": true}"#,
        );
        fx.legacy.state_file("both", br#"{"old": true}"#);
        s.put_state("both", json!({"new": true})).await.unwrap();
        let col: String = fx
            .legacy
            .conn()
            .query_row("SELECT state FROM sessions WHERE id = 'both'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(col, r#"{"new": true}"#);

        // An orphan state file is never overwritten by a create.
        fx.legacy.state_file("orphan", b"{\"keep\": 1}");
        let e = s
            .create(NewSession {
                id: Some("orphan".into()),
                state: Some(json!({}).into()),
                ..NewSession::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), "conflict", "{e}");
        assert_eq!(
            std::fs::read(fx.legacy.sessions.join("orphan/state.json")).unwrap(),
            b"{\"keep\": 1}"
        );
        s.close().await.unwrap();
    });
}

#[test]
fn store_sqlite_unsafe_ids_keep_state_in_the_column() {
    let fx = Fx::new(Kind::Sqlite, "unsafe");
    run(async {
        let s = fx.open().await;
        for id in ["../escape", "a/b", "..", "x\\y"] {
            s.create(NewSession {
                id: Some(id.into()),
                state: Some(json!({"id": id}).into()),
                ..NewSession::default()
            })
            .await
            .unwrap();
            s.put_state(id, json!({"id": id, "v": 2})).await.unwrap();
            s.progress(id, json!({"id": id, "v": 3})).unwrap();
        }
        s.flush().await.unwrap();
        for id in ["../escape", "a/b", "..", "x\\y"] {
            let col: String = fx
                .legacy
                .conn()
                .query_row("SELECT state FROM sessions WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .unwrap();
            let want = State::from_value(&json!({"id": id, "v": 3})).unwrap();
            assert_eq!(col, want.as_str());
            assert_eq!(s.state(id).await.unwrap().unwrap(), want);
        }
        // Nothing was written as a path: the sessions folder is empty, nothing escaped.
        assert_eq!(std::fs::read_dir(&fx.legacy.sessions).unwrap().count(), 0);
        assert!(!fx.legacy.root().join("escape").exists());
        assert!(!fx.legacy.root().join("a").exists());
        s.close().await.unwrap();
    });
}

// ---- gating and warnings as data -----------------------------------------------------

#[test]
fn store_gating_and_warnings_are_data() {
    let db = TestDb::new("gating");
    // Configured sqlite, but DATABASE_URL is PostgreSQL: postgres, with backend_drift.
    let fx = Fx::new(Kind::Sqlite, "gating");
    let mut env = fx.env.clone();
    env.0.insert(
        "DATABASE_URL".into(),
        db.url.replace("postgresql://", "postgresql+asyncpg://"),
    );
    let cfg = fx.config();
    run(async {
        let s = store::open(&cfg, &env).await.unwrap();
        assert_eq!(s.backend(), Backend::Postgres);
        assert!(s.warnings().iter().any(|w| w.code == "backend_drift"));
        let h = s.health().await;
        assert!(h.reachable);
        let drift = h.drift.expect("drift");
        assert!(drift.message.contains("sqlite"), "{}", drift.message);
        assert!(!s.describe().contains(&pg::password()), "{}", s.describe());
        let pool = h.pool.expect("pool stats");
        assert_eq!(pool.max_size, 30);
        assert_eq!((pool.pool_size, pool.max_overflow), (10, 20));
        let body = serde_json::to_string(&s.health().await).unwrap();
        assert!(body.contains("backend_drift") && !body.contains(&pg::password()));
        s.close().await.unwrap();

        // Configured postgres, no URL: sqlite + files, with backend_drift.
        fx.legacy.write_config("postgres", "");
        let cfg = fx.config();
        let s = store::open(&cfg, &Env::default()).await.unwrap();
        assert_eq!(s.backend(), Backend::Sqlite);
        assert!(s.health().await.drift.is_some());
        s.close().await.unwrap();

        // A SQLite URL means sqlite too; configured sqlite: no drift.
        fx.legacy.write_config("sqlite", "");
        let mut env = Env::default();
        env.0.insert(
            "DATABASE_URL".into(),
            "sqlite+aiosqlite:///data/app.db".into(),
        );
        let s = store::open(&fx.config(), &env).await.unwrap();
        assert_eq!(s.backend(), Backend::Sqlite);
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());
        assert!(s.health().await.drift.is_none());
        s.close().await.unwrap();
    });
    // Configured json, no URL: the JSON store, read-only, deprecation warned.
    let js = Fx::new(Kind::Json, "gating");
    run(async {
        let s = js.open().await;
        assert_eq!(s.backend(), Backend::Json);
        assert_eq!(
            s.warnings()
                .iter()
                .filter(|w| w.code == "json_backend_deprecated")
                .count(),
            1
        );
        assert!(!s.warnings().iter().any(|w| w.code == "backend_drift"));
    });
}

// ---- batching ------------------------------------------------------------------------

async fn last_state_wins(fx: &Fx) {
    let window = 200;
    let s = fx.seeded(opts_window(window)).await;
    let t0 = Instant::now();
    let mut last = None;
    for i in 0..20 {
        last = Some(s.progress("a-1", json!({"i": i})).unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    last.unwrap().durable().await.unwrap();
    let elapsed = t0.elapsed();
    assert_eq!(
        s.state("a-1").await.unwrap().unwrap().as_str(),
        r#"{"i": 19}"#
    );
    let st = s.progress_stats();
    assert_eq!(st.updates_received, 20);
    // At most one write per window: the first opens at t0, the last lands by `elapsed`.
    let bound = (elapsed.as_millis() as u64).div_ceil(window);
    assert!(
        st.writes_issued <= bound && st.writes_issued >= 2,
        "{st:?} over {elapsed:?}"
    );
    assert_eq!(st.writes_issued, st.writes_succeeded);
    // Every update's wait for its durable write: about a window, never much more.
    assert!(
        st.latency_max_ms >= window && st.latency_max_ms < window + 1000,
        "{st:?}"
    );
    s.close().await.unwrap();
}

#[test]
fn store_batching_last_state_wins_sqlite() {
    let fx = Fx::new(Kind::Sqlite, "lsw");
    run(last_state_wins(&fx));
}

#[test]
fn store_batching_last_state_wins_postgres() {
    let fx = Fx::new(Kind::Postgres, "lsw");
    run(last_state_wins(&fx));
}

/// With a window far longer than the test, nothing is written until flush or close,
/// and then everything is.
async fn flush_and_close_write_everything(fx: &Fx) {
    let s = fx.open_with(opts_window(60_000)).await;
    for i in 0..40 {
        s.create(NewSession {
            id: Some(format!("f{i:02}")),
            ..NewSession::default()
        })
        .await
        .unwrap();
    }
    for round in 0..5 {
        for i in 0..40 {
            s.progress(&format!("f{i:02}"), json!({"round": round, "i": i}))
                .unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.progress_stats().writes_issued, 0);
    assert_eq!(s.progress_stats().pending_sessions, 40);
    assert!(s.state("f00").await.unwrap().is_none());
    s.flush().await.unwrap();
    let st = s.progress_stats();
    assert_eq!((st.updates_received, st.writes_issued), (200, 40));
    assert!(st.transactions <= 2, "{st:?}");
    for i in 0..40 {
        assert_eq!(
            s.state(&format!("f{i:02}"))
                .await
                .unwrap()
                .unwrap()
                .as_str(),
            format!(r#"{{"i": {i}, "round": 4}}"#)
        );
    }
    // close() writes what is pending too; then a new store sees it.
    for i in 0..40 {
        s.progress(&format!("f{i:02}"), json!({"closed": i}))
            .unwrap();
    }
    s.close().await.unwrap();
    assert_eq!(s.progress("f00", json!(1)).unwrap_err().code(), "closed");
    let again = fx.open().await;
    for i in 0..40 {
        assert_eq!(
            again
                .state(&format!("f{i:02}"))
                .await
                .unwrap()
                .unwrap()
                .as_str(),
            format!(r#"{{"closed": {i}}}"#)
        );
    }
    // Dropped without close: written in the background while the runtime runs.
    let s = fx.open_with(opts_window(60_000)).await;
    s.progress("f07", json!({"dropped": true})).unwrap();
    drop(s);
    let t0 = Instant::now();
    loop {
        let st = again.state("f07").await.unwrap().unwrap();
        if st.as_str() == r#"{"dropped": true}"# {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "not written: {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    again.close().await.unwrap();
}

#[test]
fn store_flush_and_close_write_everything_sqlite() {
    let fx = Fx::new(Kind::Sqlite, "flush");
    run(flush_and_close_write_everything(&fx));
}

#[test]
fn store_flush_and_close_write_everything_postgres() {
    let fx = Fx::new(Kind::Postgres, "flush");
    run(flush_and_close_write_everything(&fx));
}

/// Several tasks update one session at once: with whole states the last to arrive
/// wins; with merge patches every task's changes land.
async fn concurrent_tasks(fx: &Fx) {
    let s = fx.seeded(opts_window(50)).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for n in 0..50 {
                last = s.progress("c", json!({"task": t, "n": n})).unwrap().seq();
                s.progress_merge("b-2", json!({format!("t{t}"): n, "last": {"t": t}}))
                    .unwrap();
                if n % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            (t, last)
        }));
    }
    let mut lasts = Vec::new();
    for t in tasks {
        lasts.push(t.await.unwrap());
    }
    s.flush().await.unwrap();
    let (winner, _) = lasts.iter().max_by_key(|(_, seq)| *seq).unwrap();
    assert_eq!(
        s.state("c").await.unwrap().unwrap().to_value().unwrap(),
        json!({"task": winner, "n": 49})
    );
    let merged = s.state("b-2").await.unwrap().unwrap().to_value().unwrap();
    for t in 0..8 {
        assert_eq!(merged[format!("t{t}")], json!(49), "{merged}");
    }
    // The stored state is the base of the patches.
    assert_eq!((&merged["step"], &merged["n"]), (&json!("plan"), &json!(2)));
    let st = s.progress_stats();
    assert_eq!(st.updates_received, 800);
    assert!(st.writes_issued < 100, "{st:?}");

    // A state serde_json cannot hold exactly (1.50) is not patched, never rounded.
    let e = s
        .progress_merge("a-1", json!({"more": 1}))
        .unwrap()
        .durable()
        .await
        .unwrap_err();
    let store::Error::ProgressFailed { failures } = &e else {
        panic!("{e}")
    };
    assert_eq!(failures[0].error.code(), "merge_unsupported");
    assert!(s.flush().await.is_err());
    assert!(
        s.state("a-1")
            .await
            .unwrap()
            .unwrap()
            .as_str()
            .contains("1.50")
    );
    s.close().await.unwrap();
}

#[test]
fn store_concurrent_tasks_sqlite() {
    let fx = Fx::new(Kind::Sqlite, "conc");
    run(concurrent_tasks(&fx));
}

#[test]
fn store_concurrent_tasks_postgres() {
    let fx = Fx::new(Kind::Postgres, "conc");
    run(concurrent_tasks(&fx));
}

/// A write for a session that does not exist fails at once (no retry) and does not
/// hold back the others in its transaction.
#[test]
fn store_progress_for_a_missing_session_fails_alone() {
    let fx = Fx::new(Kind::Postgres, "missing");
    run(async {
        let s = fx.seeded(opts_window(20)).await;
        let mut failures = s.subscribe_failures();
        let r = s.progress("ghost", json!({"x": 1})).unwrap();
        s.progress("a-1", json!({"ok": 1})).unwrap();
        s.progress("b-2", json!({"ok": 2})).unwrap();
        let e = r.durable().await.unwrap_err();
        assert_eq!(e.code(), "progress_write_failed");
        let f = failures.recv().await.unwrap();
        assert_eq!((f.session.as_str(), f.attempts), ("ghost", 1));
        assert_eq!(f.error.code(), "not_found");
        assert_eq!(f.state.as_ref().unwrap().as_str(), r#"{"x": 1}"#);
        let e = s.flush().await.unwrap_err();
        assert!(e.to_string().contains("ghost"), "{e}");
        assert_eq!(
            s.state("a-1").await.unwrap().unwrap().as_str(),
            r#"{"ok": 1}"#
        );
        assert_eq!(
            s.state("b-2").await.unwrap().unwrap().as_str(),
            r#"{"ok": 2}"#
        );
        // Reported once: the next flush is clean.
        s.flush().await.unwrap();
        s.close().await.unwrap();
    });
}

// ---- failures ------------------------------------------------------------------------

fn retrying(attempts: u32) -> Options {
    Options {
        batch: BatchOptions {
            window: Duration::from_millis(20),
            max_attempts: attempts,
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            ..BatchOptions::default()
        },
        ..Options::default()
    }
}

/// The application's role loses UPDATE on `sessions`: the write is retried, then the
/// failure surfaces (flush, the receipt, the channel, the counters) with its state.
/// Once the privilege is back, writes land again.
#[test]
fn store_postgres_write_failure_surfaces_after_retries() {
    let fx = Fx::new(Kind::Postgres, "revoke");
    let db = fx.db.as_ref().unwrap();
    let role = format!("app_{}", &db.name[db.name.len() - 8..]);
    let admin_sql = |sql: String| {
        let mut c = db.client();
        c.batch_execute(&sql).unwrap();
    };
    let runtime = rt();
    // The schema, owned by the superuser; the application's role may read and write.
    runtime.block_on(async {
        fx.open().await.close().await.unwrap();
    });
    admin_sql(format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'app-pw-123';
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};"
    ));
    let url = db
        .url
        .replacen("postgres:", &format!("{role}:"), 1)
        .replace(&pg::password(), "app-pw-123");
    let mut env = fx.env.clone();
    env.0.insert("DATABASE_URL".into(), url);
    let cfg = fx.config();
    let s = runtime.block_on(async {
        let s = store::open_with(&cfg, &env, retrying(3)).await.unwrap();
        s.create(NewSession {
            id: Some("r1".into()),
            ..NewSession::default()
        })
        .await
        .unwrap();
        s
    });
    admin_sql(format!("REVOKE UPDATE ON sessions FROM {role}"));
    runtime.block_on(async {
        let mut failures = s.subscribe_failures();
        let t0 = Instant::now();
        let r = s.progress("r1", json!({"lost?": "no, surfaced"})).unwrap();
        let e = r.durable().await.unwrap_err();
        assert_eq!(e.code(), "progress_write_failed");
        let f = failures.recv().await.unwrap();
        assert_eq!(f.attempts, 3);
        assert_eq!(f.error.code(), "permission_denied", "{}", f.error);
        assert_eq!(
            f.state.as_ref().unwrap().as_str(),
            r#"{"lost?": "no, surfaced"}"#
        );
        // Two backoffs (20 ms, 40 ms) happened before giving up.
        assert!(t0.elapsed() >= Duration::from_millis(60));
        let st = s.progress_stats();
        assert_eq!((st.write_errors, st.failures), (3, 1), "{st:?}");
        let e = s.flush().await.unwrap_err();
        assert_eq!(e.code(), "progress_write_failed");
        assert!(!e.to_string().contains("app-pw-123"), "{e}");
        assert!(s.state("r1").await.unwrap().is_none());
    });
    admin_sql(format!("GRANT UPDATE ON sessions TO {role}"));
    runtime.block_on(async {
        s.progress("r1", json!({"back": true}))
            .unwrap()
            .durable()
            .await
            .unwrap();
        assert_eq!(
            s.state("r1").await.unwrap().unwrap().as_str(),
            r#"{"back": true}"#
        );
        s.close().await.unwrap();
    });
    drop(runtime);
    admin_sql(format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}; DROP ROLE {role}"
    ));
}

/// Another process holds SQLite's write lock: writes are retried with backoff and land
/// when it lets go; held for longer than the retries, the failure surfaces.
#[test]
fn store_sqlite_busy_database_is_retried_then_surfaced() {
    let fx = Fx::new(Kind::Sqlite, "busy");
    let mut opts = retrying(4);
    opts.sqlite_busy_timeout = Duration::from_millis(30);
    run(async {
        let s = fx.seeded(opts).await;
        let lock = |hold: Duration| {
            let db = fx.legacy.db.clone();
            std::thread::spawn(move || {
                let c = rusqlite::Connection::open(db).unwrap();
                c.execute_batch("BEGIN EXCLUSIVE").unwrap();
                std::thread::sleep(hold);
                c.execute_batch("COMMIT").unwrap();
            })
        };
        // Held briefly: retried, then written.
        let h = lock(Duration::from_millis(150));
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.progress("a-1", json!({"busy": 1}))
            .unwrap()
            .durable()
            .await
            .unwrap();
        h.join().unwrap();
        let st = s.progress_stats();
        assert!(st.write_errors >= 1 && st.failures == 0, "{st:?}");
        assert_eq!(
            s.state("a-1").await.unwrap().unwrap().as_str(),
            r#"{"busy": 1}"#
        );

        // Held through every attempt: surfaced, state handed back.
        let h = lock(Duration::from_millis(1500));
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.progress("a-1", json!({"busy": 2})).unwrap();
        let e = s.flush().await.unwrap_err();
        let store::Error::ProgressFailed { failures } = &e else {
            panic!("{e}")
        };
        assert_eq!(failures[0].attempts, 4);
        assert_eq!(
            failures[0].error.code(),
            "sqlite_error",
            "{}",
            failures[0].error
        );
        h.join().unwrap();
        assert_eq!(
            s.state("a-1").await.unwrap().unwrap().as_str(),
            r#"{"busy": 1}"#
        );
        s.close().await.unwrap();
    });
}

/// A pool of one connection, held by a request stuck on a lock: the next request
/// fails with `pool_exhausted` after the acquire timeout, not never.
#[test]
fn store_postgres_pool_exhaustion_is_a_clear_error() {
    let mut fx = Fx::new(Kind::Postgres, "pool");
    fx.env.0.insert("DB_POOL_SIZE".into(), "1".into());
    fx.env.0.insert("DB_MAX_OVERFLOW".into(), "0".into());
    let url = fx.db.as_ref().unwrap().url.clone();
    run(async {
        let s = fx
            .seeded(Options {
                acquire_timeout: Duration::from_millis(300),
                ..Options::default()
            })
            .await;
        assert_eq!(s.health().await.pool.unwrap().max_size, 1);
        let (blocker, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        blocker
            .batch_execute("BEGIN; LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let stuck = {
            let s = s.clone();
            tokio::spawn(async move { s.get("a-1").await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        let e = s.get("b-2").await.unwrap_err();
        assert_eq!(e.code(), "pool_exhausted", "{e}");
        assert!(e.to_string().contains("DB_POOL_SIZE"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        let h = s.health().await;
        assert!(!h.reachable);
        blocker.batch_execute("ROLLBACK").await.unwrap();
        assert!(stuck.await.unwrap().unwrap().is_some());
        assert!(s.health().await.reachable);
        s.close().await.unwrap();
    });
}

// ---- an application's own schema (SPEC §9, issue 17) --------------------------------

use crate::support::store::{AppStore, is_sqlalchemy_time};

fn extra(v: serde_json::Value) -> store::Extra {
    serde_json::from_value(v).unwrap()
}

/// A new session of the application: its question, not deleted, no cost yet.
fn app_session(id: &str, user: &str, question: Option<&str>) -> NewSession {
    let mut e = json!({"is_deleted": false});
    if let Some(q) = question {
        e["question"] = json!(q);
    }
    NewSession {
        id: Some(id.into()),
        user_id: Some(user.into()),
        status: Some("running".into()),
        current_step: Some("intake".into()),
        state: Some(json!({"step": 0}).into()),
        extra: extra(e),
        ..NewSession::default()
    }
}

/// What both backends must do with the application's own tables: create with extra
/// columns, progress, read back, patch, refuse what does not fit, create a user only
/// when asked. Returns (the first session, the user created for the second).
async fn app_store_round_trip(s: &Store, user: &str) {
    let created = s
        .create(app_session(
            "session_new_1",
            user,
            Some("Ship it on Friday?"),
        ))
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    assert_eq!(
        created.extra,
        extra(
            json!({"question": "Ship it on Friday?", "is_deleted": false, "last_total_tokens": null})
        )
    );
    assert_eq!(created.meta.user_id.as_deref(), Some(user));
    assert_eq!(created.meta.cost, None, "no cost given: NULL");
    for i in 1..=5 {
        s.progress("session_new_1", json!({"step": i})).unwrap();
    }
    s.flush().await.unwrap();
    let got = s.get("session_new_1").await.unwrap().unwrap();
    assert_eq!(got.state.as_ref().unwrap().as_str(), r#"{"step": 5}"#);
    assert_eq!(got.extra, created.extra);
    assert_eq!(got.meta.created_at, created.meta.created_at);
    assert!(got.meta.updated_at >= created.meta.updated_at);

    // The fixture's own sessions read with their extras; a page carries them too.
    let page = s.list(Page::first(3)).await.unwrap();
    assert_eq!(page.len(), 3);
    for p in &page {
        assert!(p.extra["question"].is_string(), "{p:?}");
        assert!(p.extra["is_deleted"].is_boolean(), "{p:?}");
    }

    // Mapped fields and extras patched: cost → last_cost_usd, a soft delete.
    let m = s
        .update_meta(
            "session_new_1",
            MetaPatch {
                cost: Some(0.5),
                status: Some("completed".into()),
                extra: extra(json!({"is_deleted": true, "last_total_tokens": 1234})),
                ..MetaPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(m.meta.cost, Some(0.5));
    assert_eq!(m.extra["is_deleted"], json!(true));
    assert_eq!(m.extra["last_total_tokens"], json!(1234));

    // A user who does not exist: refused, naming the table and the value...
    let e = s
        .create(app_session("session_new_2", "user-nobody", Some("q")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "parent_not_found", "{e}");
    assert!(
        e.to_string().contains("users") && e.to_string().contains("user-nobody"),
        "{e}"
    );
    assert!(s.get("session_new_2").await.unwrap().is_none());
    // ...unless the store is asked to create the user, with the session.
    let mut n = app_session("session_new_2", "user-new", Some("q"));
    n.parents.insert(
        "users".into(),
        extra(json!({"external_id": "auth0|new", "display_name": "Ada"})),
    );
    s.create(n.clone()).await.unwrap();
    // Creating the user again (get or create) leaves the row as it is.
    n.id = Some("session_new_3".into());
    n.parents.insert(
        "users".into(),
        extra(json!({"external_id": "auth0|new", "display_name": "Other"})),
    );
    s.create(n).await.unwrap();

    // Refusals, each naming the column; nothing written.
    let e = s
        .create(app_session("session_bad", user, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "missing_value", "{e}");
    assert!(e.to_string().contains("sessions.question"), "{e}");
    let mut bad = app_session("session_bad", user, Some("q"));
    bad.extra.insert("is_deleted".into(), json!("no"));
    assert_eq!(s.create(bad).await.unwrap_err().code(), "invalid_value");
    let mut bad = app_session("session_bad", user, Some("q"));
    bad.extra.insert("nope".into(), json!(1));
    let e = s.create(bad).await.unwrap_err();
    assert_eq!(e.code(), "unknown_column", "{e}");
    assert!(e.to_string().contains("nope"), "{e}");
    let mut bad = app_session("session_bad", user, Some("q"));
    bad.extra.insert("last_cost_usd".into(), json!(1.0));
    let e = s.create(bad).await.unwrap_err();
    assert_eq!(e.code(), "unknown_column", "{e}");
    assert!(e.to_string().contains("give it as cost"), "{e}");
    assert!(s.get("session_bad").await.unwrap().is_none());
}

#[test]
fn store_app_schema_on_sqlite_writes_the_rows_the_application_reads() {
    let app = AppStore::new(12);
    let (user, ..) = app.user();
    let env = Env::default();
    let cfg = Config::load(Some(&app.config), &env).unwrap();
    run(async {
        let s = store::open_with(&cfg, &env, opts_window(20))
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
        assert_eq!(s.backend(), Backend::Sqlite);
        app_store_round_trip(&s, &user).await;
        s.close().await.unwrap();
    });

    // The application's own query: sessions joined to users, filtered on is_deleted.
    let c = app.conn();
    type Row = (
        String,
        i64,
        String,
        String,
        String,
        Option<f64>,
        Option<i64>,
        String,
    );
    let row = |id: &str, deleted: i64| -> Option<Row> {
        c.query_row(
            "SELECT s.question, s.is_deleted, typeof(s.is_deleted), s.created_at, s.updated_at,
                    s.last_cost_usd, s.last_total_tokens, u.external_id
               FROM sessions s JOIN users u ON u.id = s.user_id
              WHERE s.id = ?1 AND s.is_deleted = ?2",
            rusqlite::params![id, deleted],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .optional()
        .unwrap()
    };
    use rusqlite::OptionalExtension;
    // Soft-deleted by the patch: gone from the application's list, there with 1.
    assert!(row("session_new_1", 0).is_none());
    let (q, del, del_ty, c_at, u_at, cost, tokens, _) = row("session_new_1", 1).unwrap();
    assert_eq!(
        (q.as_str(), del, del_ty.as_str()),
        ("Ship it on Friday?", 1, "integer")
    );
    assert!(is_sqlalchemy_time(&c_at), "{c_at}");
    assert!(is_sqlalchemy_time(&u_at), "{u_at}");
    assert!(u_at >= c_at);
    assert_eq!((cost, tokens), (Some(0.5), Some(1234)));
    let (q, del, _, c_at, _, cost, tokens, ext) = row("session_new_2", 0).unwrap();
    assert_eq!(
        (q.as_str(), del, cost, tokens),
        ("q", 0, None, None),
        "NULL cost stays NULL"
    );
    assert!(is_sqlalchemy_time(&c_at), "{c_at}");
    assert_eq!(ext, "auth0|new");
    // The user created with the session: its columns, SQLAlchemy's timestamps; the
    // second create did not touch it.
    let (name, uc, uu): (String, String, String) = c
        .query_row(
            "SELECT display_name, created_at, updated_at FROM users WHERE id = 'user-new'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(name, "Ada");
    assert!(
        is_sqlalchemy_time(&uc) && is_sqlalchemy_time(&uu),
        "{uc} {uu}"
    );
    // State in the file, never in the application's (empty on SQLite) session_state.
    let file = std::fs::read_to_string(app.sessions.join("session_new_1/state.json")).unwrap();
    assert_eq!(file, r#"{"step": 5}"#);
    let n: i64 = c
        .query_row("SELECT count(*) FROM session_state", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);

    // [postgres.fill]: a constant for the NOT NULL column a session leaves out.
    app.append_config("\n[postgres.fill]\n\"sessions.question\" = \"(no question)\"\n");
    let cfg = Config::load(Some(&app.config), &env).unwrap();
    run(async {
        let s = store::open(&cfg, &env).await.unwrap();
        let got = s
            .create(app_session("session_filled", &user, None))
            .await
            .unwrap();
        assert_eq!(got.extra["question"], json!("(no question)"));
        s.close().await.unwrap();
    });
    let q: String = c
        .query_row(
            "SELECT question FROM sessions WHERE id = 'session_filled'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(q, "(no question)");
}

#[test]
fn store_app_schema_on_postgres_writes_the_rows_the_application_reads() {
    let app = AppStore::new(8);
    let (user, ..) = app.user();
    let db = TestDb::new("store_app_pg");
    app.pg_tables(&db);
    // Far from UTC: naive timestamps must be written as they are, never shifted.
    db.client()
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET timezone TO 'Pacific/Kiritimati'",
            db.name
        ))
        .unwrap();
    // The application's own sessions, as a load would have left them (a few, by hand).
    db.client()
        .batch_execute(&format!(
            "INSERT INTO sessions VALUES
               ('session_old_1', '{user}', 'Old one', 'final', 'completed', '2025-12-10 14:08:48.347371',
                '2025-12-10 14:09:00.000001', false, 0.25, 100),
               ('session_old_2', '{user}', 'Old two', 'final', 'completed', '2025-12-10 15:08:48',
                '2025-12-10 15:09:00', true, NULL, NULL),
               ('session_old_3', '{user}', 'Old three', 'intake', 'pending', '2025-12-11 08:00:00',
                '2025-12-11 08:00:00', false, NULL, NULL)"
        ))
        .unwrap();
    let env = Env(HashMap::from([("DATABASE_URL".to_owned(), db.url.clone())]));
    let cfg = Config::load(Some(&app.config), &env).unwrap();
    let created_at = run_value(async {
        let s = store::open_with(&cfg, &env, opts_window(20))
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
        assert_eq!(s.backend(), Backend::Postgres);
        let old = s.get("session_old_1").await.unwrap().unwrap();
        assert_eq!(
            old.meta.created_at.unwrap().naive_utc().to_string(),
            "2025-12-10 14:08:48.347371"
        );
        assert_eq!(old.meta.cost, Some(0.25));
        assert_eq!(
            old.extra,
            extra(json!({"question": "Old one", "is_deleted": false, "last_total_tokens": 100}))
        );
        app_store_round_trip(&s, &user).await;
        let created = s.get("session_new_2").await.unwrap().unwrap();
        s.close().await.unwrap();
        created.meta.created_at.unwrap()
    });

    // The application's own queries.
    let mut c = db.client();
    let rows = c
        .query(
            "SELECT s.id, s.question, s.is_deleted, s.created_at, s.updated_at, s.last_cost_usd,
                    s.last_total_tokens, u.external_id, st.state::text, st.updated_at
               FROM sessions s JOIN users u ON u.id = s.user_id
               LEFT JOIN session_state st ON st.session_id = s.id
              WHERE NOT s.is_deleted AND s.id LIKE 'session_new%'
              ORDER BY s.created_at DESC",
            &[],
        )
        .unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        ids,
        ["session_new_3", "session_new_2"],
        "session_new_1 is soft-deleted"
    );
    let r = &rows[1];
    let c_at: chrono::NaiveDateTime = r.get(3);
    assert_eq!(c_at, created_at.naive_utc(), "naive UTC, not shifted");
    assert_eq!(r.get::<_, Option<f64>>(5), None, "NULL cost stays NULL");
    assert_eq!(r.get::<_, String>(7), "auth0|new");
    assert_eq!(
        r.get::<_, Option<String>>(8).as_deref(),
        Some(r#"{"step": 0}"#)
    );
    let st_upd: chrono::NaiveDateTime = r.get(9);
    assert_eq!(
        st_upd,
        r.get::<_, chrono::NaiveDateTime>(4),
        "session_state.updated_at filled"
    );
    let r = c
        .query_one(
            "SELECT s.is_deleted, s.last_cost_usd, s.last_total_tokens, s.status, st.state::text,
                    st.updated_at, s.updated_at
               FROM sessions s JOIN session_state st ON st.session_id = s.id WHERE s.id = 'session_new_1'",
            &[],
        )
        .unwrap();
    assert!(r.get::<_, bool>(0));
    assert_eq!(r.get::<_, Option<f64>>(1), Some(0.5));
    assert_eq!(r.get::<_, Option<i32>>(2), Some(1234));
    assert_eq!(r.get::<_, String>(3), "completed");
    assert_eq!(r.get::<_, String>(4), r#"{"step": 5}"#);
    assert!(r.get::<_, chrono::NaiveDateTime>(5) <= r.get::<_, chrono::NaiveDateTime>(6));
    let (name, uc): (String, chrono::NaiveDateTime) = {
        let r = c
            .query_one(
                "SELECT display_name, created_at FROM users WHERE id = 'user-new'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(name, "Ada", "created once, never updated");
    assert_eq!(uc, created_at.naive_utc());
    // The application's tables as they were: its GIN index alone, no sessiondb schema.
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_indexes WHERE tablename = 'session_state' AND indexdef LIKE '%USING gin%'),
                    pg_catalog.to_regclass('public.sessiondb_schema_versions') IS NULL",
            &[],
        )
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, bool>(1)), (1, true));
}

/// Run an async block and return its value.
fn run_value<T, F: Future<Output = T>>(f: F) -> T {
    rt().block_on(f)
}

#[test]
fn store_app_schema_on_postgres_never_creates_default_tables_for_a_mapped_config() {
    let app = AppStore::new(3);
    let db = TestDb::new("store_app_pg_empty");
    let env = Env(HashMap::from([("DATABASE_URL".to_owned(), db.url.clone())]));
    let cfg = Config::load(Some(&app.config), &env).unwrap();
    let e = run_value(store::open(&cfg, &env)).unwrap_err();
    assert_eq!(e.code(), "schema_mismatch", "{e}");
    let msg = sessiondb::error::error_chain(&e);
    assert!(
        msg.contains("\"sessions\"") && msg.contains("start the application once"),
        "{msg}"
    );
    // Nothing made: no SPEC §2 `sessions` with the wrong columns, no bookkeeping.
    let n: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // The application's tables without session_state: named too.
    app.pg_tables(&db);
    db.client()
        .batch_execute("DROP TABLE session_state")
        .unwrap();
    let e = run_value(store::open(&cfg, &env)).unwrap_err();
    assert_eq!(e.code(), "schema_mismatch", "{e}");
    assert!(
        sessiondb::error::error_chain(&e).contains("session_state"),
        "{e}"
    );
}
