//! `sessiond`, the HTTP service on the runtime store, end to end: the real binary on a
//! SQLite + files store and on PostgreSQL, across a migration, a cutover and a rollback,
//! and `verify --smoke-url` against it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use sessiondb::exit;
use sessiondb::report::CheckStatus;

use crate::support::pg::{self, TestDb};
use crate::support::store::Store;
use crate::support::{Cmd, Run, SCRUB, sessiondb};

/// A running `sessiond`, killed if the test fails before stopping it.
pub(crate) struct Service {
    child: Option<Child>,
    pub(crate) url: String,
    stderr: Arc<Mutex<String>>,
    drain: Option<JoinHandle<()>>,
}

impl Service {
    /// Start on `config`; with `database_url`, the runtime gating picks PostgreSQL.
    pub(crate) fn start(config: &Path, database_url: Option<&str>) -> Service {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
        cmd.arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for k in SCRUB {
            cmd.env_remove(k);
        }
        if let Some(u) = database_url {
            cmd.env("DATABASE_URL", u);
        }
        let mut child = cmd.spawn().expect("start sessiond");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let drain = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut s = Service {
            child: Some(child),
            url: String::new(),
            stderr,
            drain: Some(drain),
        };
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = s.child.as_mut().unwrap().wait();
            s.drain.take().unwrap().join().unwrap();
            panic!(
                "sessiond did not say where it listens: {line:?}\n{}",
                s.stderr.lock().unwrap()
            );
        };
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        s.url = url.to_owned();
        s
    }

    pub(crate) fn client(&self) -> Client {
        Client {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .new_agent(),
            base: self.url.clone(),
        }
    }

    /// SIGTERM, wait, and return everything it wrote on stderr; it must exit 0.
    pub(crate) fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        self.drain.take().unwrap().join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(status.success(), "sessiond exited {status}\n{stderr}");
        stderr
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("sessiond stderr:\n{}", self.stderr.lock().unwrap());
        }
    }
}

/// A blocking client on one sessiond that remembers the last state it sent for each
/// session.
pub(crate) struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let resp = match body {
            Some(b) => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(b),
            None if method == "GET" => self.agent.get(&url).call(),
            None => self.agent.post(&url).send(""),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let text = resp.body_mut().read_to_string().unwrap();
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {url}: not JSON ({e}): {text}"));
        (resp.status().as_u16(), v)
    }

    pub(crate) fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None)
    }

    pub(crate) fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.call("POST", path, Some(body))
    }

    pub(crate) fn create(&self, written: &mut BTreeMap<String, Value>, id: &str, state: Value) {
        let body = json!({"id": id, "user_id": "u-http", "status": "running",
                          "current_step": "start", "cost": 0.5, "state": state});
        let (code, v) = self.post("/api/sessions", &body.to_string());
        assert_eq!(code, 201, "create {id}: {v}");
        assert_eq!(v["id"], id);
        written.insert(id.to_owned(), state);
    }

    pub(crate) fn progress(&self, written: &mut BTreeMap<String, Value>, id: &str, state: Value) {
        let (code, v) = self.post(&format!("/api/sessions/{id}/progress"), &state.to_string());
        assert_eq!(code, 202, "progress {id}: {v}");
        written.insert(id.to_owned(), state);
    }

    /// A session created and moved through three progress updates.
    pub(crate) fn session_with_progress(&self, written: &mut BTreeMap<String, Value>, id: &str) {
        self.create(written, id, json!({"progress": 0, "phase": "new"}));
        for i in 1..=3 {
            self.progress(
                written,
                id,
                json!({"progress": i, "phase": format!("step {i}"), "id": id}),
            );
        }
    }
}

fn step(s: &Store, db: &TestDb, args: &[&str]) -> Cmd {
    sessiondb(args)
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
}

fn assert_no_password(what: &str, text: &str) {
    let p = pg::password();
    if p.len() >= 4 {
        assert!(!text.contains(&p), "{what} shows the password:\n{text}");
    }
}

fn assert_smoke_passed(r: &Run, checks: &[&str]) {
    for id in checks {
        assert_eq!(r.check(id).status, CheckStatus::Pass, "{id}: {}", r.stdout);
    }
    assert_no_password("verify --smoke-url", &r.stdout);
    assert_no_password("verify --smoke-url", &r.stderr);
}

/// The smoke probe's session and the state it last sent.
fn smoke_session(r: &Run) -> (String, Value) {
    let d = &r.check("smoke_write").details;
    (
        d["session"].as_str().unwrap().to_owned(),
        d["state"].clone(),
    )
}

/// The state the legacy store holds for a session, canonical, and whether its row is there.
fn legacy_state(s: &Store, id: &str) -> (bool, Option<String>) {
    let rows: i64 = s
        .conn()
        .query_row("SELECT count(*) FROM sessions WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    let file = std::fs::read(s.sessions.join(id).join("state.json")).ok();
    (
        rows == 1,
        file.map(|b| sessiondb::canon::canonicalize(&b).unwrap()),
    )
}

fn canonical(v: &Value) -> String {
    sessiondb::canon::canonicalize(v.to_string().as_bytes()).unwrap()
}

#[test]
fn sessiond_serves_across_migration_cutover_and_rollback_and_loses_nothing() {
    let s = Store::new();
    s.bulk(1000, 200);
    let db = TestDb::new("sessiond_e2e");
    let mut written: BTreeMap<String, Value> = BTreeMap::new();
    let mut logs = Vec::new();

    // 1. On SQLite + files: the application writes through sessiond while migrate-state
    //    copies the store.
    let svc = Service::start(&s.config, None);
    let c = svc.client();
    let (code, h) = c.get("/api/health");
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["backend"], "sqlite");
    assert_eq!(h["reachable"], true);
    assert!(h["drift"].is_null(), "{h}");
    for i in 0..3 {
        c.session_with_progress(&mut written, &format!("pre-{i}"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, c) = (stop.clone(), svc.client());
        std::thread::spawn(move || {
            let mut mine = BTreeMap::new();
            let mut i = 0;
            while i < 5 || !stop.load(Ordering::Relaxed) {
                c.session_with_progress(&mut mine, &format!("live-{i}"));
                // Progress on a session of the legacy store, too.
                let legacy = format!("k{:07}", i % 150);
                c.progress(
                    &mut mine,
                    &legacy,
                    json!({"progress": i, "touched": "live"}),
                );
                i += 1;
            }
            mine
        })
    };
    let m = step(&s, &db, &["migrate-state", "--dry-run=false"]).run();
    stop.store(true, Ordering::Relaxed);
    written.extend(writer.join().unwrap());
    assert_eq!(m.code, exit::OK, "{}\n{}", m.stdout, m.stderr);
    // Status shows what is stored: the last update lands within the window (+ slack).
    let deadline = std::time::Instant::now() + Duration::from_millis(350 + 1000);
    let st = loop {
        let (code, st) = c.get("/api/sessions/live-0/status");
        assert_eq!(code, 200, "{st}");
        if st["progress"] == 3 || std::time::Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    assert_eq!(
        (st["status"].as_str(), st["progress"].as_i64()),
        (Some("running"), Some(3)),
        "{st}"
    );
    // A burst, then SIGTERM at once: what is pending in the window must be flushed.
    let mut burst = BTreeMap::new();
    for i in 0..5 {
        c.progress(
            &mut burst,
            &format!("live-{i}"),
            json!({"progress": 100, "final": "burst-1"}),
        );
    }
    logs.push(svc.stop());
    for (id, state) in &burst {
        assert_eq!(
            legacy_state(&s, id).1.as_deref(),
            Some(canonical(state).as_str()),
            "{id}: pending progress lost at shutdown"
        );
    }
    written.extend(burst);

    // 2. Catch up, verify, switch.
    let catchup = step(&s, &db, &["migrate-state", "--dry-run=false"]).expect(exit::OK);
    assert!(catchup.count("inserted") + catchup.count("updated") > 0);
    step(&s, &db, &["verify"]).expect(exit::OK);
    step(&s, &db, &["set-default", "--dry-run=false"]).expect(exit::OK);

    // 3. On PostgreSQL: smoke, then more writes.
    let svc = Service::start(&s.config, Some(&db.url));
    let c = svc.client();
    let (code, h) = c.get("/api/health");
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["backend"], "postgres");
    assert!(h["pool"]["max_size"].as_u64().unwrap() > 0, "{h}");
    assert!(h["drift"].is_null(), "{h}");
    let smoke = step(&s, &db, &["verify", "--smoke-url", &svc.url]).expect(exit::OK);
    assert_smoke_passed(
        &smoke,
        &["sessions", "smoke_health", "smoke_status", "smoke_write"],
    );
    assert!(
        smoke.check("smoke_status").details["sampled"].as_u64() == Some(20),
        "{}",
        smoke.stdout
    );
    let (id, state) = smoke_session(&smoke);
    written.insert(id, state);
    for i in 0..4 {
        c.session_with_progress(&mut written, &format!("pg-{i}"));
    }
    c.progress(
        &mut written,
        "pre-1",
        json!({"progress": 7, "on": "postgres"}),
    );
    c.progress(
        &mut written,
        "k0000149",
        json!({"progress": 8, "on": "postgres"}),
    );
    let (code, v) = c.post(
        "/api/sessions",
        &json!({"id": "pg-0", "state": {}}).to_string(),
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    c.progress(
        &mut written,
        "pg-3",
        json!({"progress": 99, "final": "burst-2"}),
    );
    logs.push(svc.stop());
    let flushed: String = db
        .client()
        .query_one(
            "SELECT state::text FROM session_state WHERE session_id = 'pg-3'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(flushed, canonical(&written["pg-3"]));

    // 4. Roll back, 5. restart on SQLite and smoke again (no PostgreSQL URL: probes only).
    let rb = step(&s, &db, &["rollback", "--dry-run=false"]).expect(exit::OK);
    assert!(rb.count("exported") >= 6, "{}", rb.stdout);
    let svc = Service::start(&s.config, None);
    let c = svc.client();
    let smoke = sessiondb(&["verify", "--smoke-url", &svc.url])
        .config(&s.config)
        .expect(exit::OK);
    assert_smoke_passed(&smoke, &["smoke_health", "smoke_status", "smoke_write"]);
    assert_eq!(smoke.check("verify").status, CheckStatus::Skip);
    let (id, state) = smoke_session(&smoke);
    written.insert(id, state);
    c.session_with_progress(&mut written, "back-0");
    logs.push(svc.stop());

    // Every session written through the service, at any point, is in the legacy store
    // with its last state.
    assert!(written.len() > 20, "{}", written.len());
    for (id, state) in &written {
        let (row, file) = legacy_state(&s, id);
        assert!(row, "{id}: no row in the legacy store");
        assert_eq!(
            file.as_deref(),
            Some(canonical(state).as_str()),
            "{id}: not its last state"
        );
    }
    for l in &logs {
        assert_no_password("sessiond", l);
        assert!(l.contains("POST /api/sessions 201"), "no request log:\n{l}");
    }
}

#[test]
fn sessiond_answers_json_errors_and_503_when_the_store_is_down() {
    let s = Store::new();
    s.session(
        "a",
        r#"{"progress": {"done": 1, "of": 4}, "big": 123456789012345678901234567890}"#,
    );
    let svc = Service::start(&s.config, None);
    let c = svc.client();
    let code_of =
        |(status, v): (u16, Value)| (status, v["error"]["code"].as_str().map(str::to_owned));

    let (code, st) = c.get("/api/sessions/a/status");
    assert_eq!(code, 200);
    assert_eq!(st["progress"], json!({"done": 1, "of": 4}));
    assert_eq!(st["cost"], 0.25);
    let (code, sum) = c.get("/api/sessions/a/summary");
    assert_eq!(code, 200);
    assert_eq!(sum["state"]["keys"], json!(["big", "progress"]), "{sum}");
    assert_eq!(sum["session"]["user_id"], "user-1");

    assert_eq!(
        code_of(c.get("/api/sessions/nope/status")),
        (404, Some("not_found".into()))
    );
    assert_eq!(
        code_of(c.get("/api/sessions/nope/summary")),
        (404, Some("not_found".into()))
    );
    assert_eq!(
        code_of(c.post("/api/sessions/nope/progress", "{}")),
        (404, Some("not_found".into()))
    );
    assert_eq!(
        code_of(c.post("/api/sessions/a/progress", "{\"x\": ")),
        (400, Some("invalid_json".into()))
    );
    assert_eq!(
        code_of(c.post("/api/sessions/a/progress", r#"{"x": "\u0000"}"#)),
        (400, Some("jsonb_incompatible_nul".into()))
    );
    assert_eq!(
        code_of(c.post("/api/sessions", "not json")),
        (400, Some("invalid_json".into()))
    );
    assert_eq!(
        code_of(c.post("/api/sessions", r#"{"id": "b", "state": {"x": "\u0000"}}"#)),
        (400, Some("jsonb_incompatible_nul".into()))
    );
    assert_eq!(
        code_of(c.post("/api/sessions", r#"{"id": "a"}"#)),
        (409, Some("conflict".into()))
    );
    // Numbers are kept exactly: the state never goes through f64.
    let (code, _) = c.post(
        "/api/sessions/a/progress",
        r#"{"progress": 1.50, "n": 98765432109876543210}"#,
    );
    assert_eq!(code, 202);

    // The sessions folder disappears (a volume unmounted): health says so with 503.
    let moved = s.root().join("sessions-away");
    std::fs::rename(&s.sessions, &moved).unwrap();
    let (code, h) = c.get("/api/health");
    assert_eq!(code, 503, "{h}");
    assert_eq!(h["reachable"], false);
    assert!(h["error"].as_str().is_some(), "{h}");
    std::fs::rename(&moved, &s.sessions).unwrap();
    assert_eq!(c.get("/api/health").0, 200);
    svc.stop();
    assert_eq!(
        legacy_state(&s, "a").1.as_deref(),
        Some(r#"{"n": 98765432109876543210, "progress": 1.50}"#)
    );
}

#[test]
fn sessiond_health_shows_drift_and_a_lost_database_and_never_the_password() {
    let s = Store::new();
    s.session("a", r#"{"progress": 1}"#);
    let db = TestDb::new("sessiond_health");
    // The config still says sqlite, the environment says PostgreSQL: backend_drift.
    let svc = Service::start(&s.config, Some(&db.url));
    let c = svc.client();
    let (code, h) = c.get("/api/health");
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["backend"], "postgres");
    assert_eq!(h["drift"]["code"], "backend_drift", "{h}");
    assert!(h["pool"]["max_size"].as_u64().unwrap() >= 1, "{h}");
    c.post(
        "/api/sessions",
        &json!({"id": "p1", "state": {"progress": 0}}).to_string(),
    );
    assert_no_password("health", &h.to_string());
    // The database goes away under it: 503, with the reason, still no password.
    pg::admin()
        .batch_execute(&format!("DROP DATABASE \"{}\" WITH (FORCE)", db.name))
        .unwrap();
    let (code, h) = c.get("/api/health");
    assert_eq!(code, 503, "{h}");
    assert_eq!(h["reachable"], false);
    assert!(h["error"].as_str().is_some_and(|e| !e.is_empty()), "{h}");
    assert_no_password("health", &h.to_string());
    let (code, v) = c.get("/api/sessions/p1/status");
    assert_eq!(code, 503, "{v}");
    assert_no_password("an error", &v.to_string());
    let log = svc.stop();
    assert_no_password("sessiond", &log);
    assert!(log.contains("backend_drift"), "{log}");
}

#[test]
fn sessiond_without_a_config_exits_2_and_prints_nothing_on_stdout() {
    let dir = crate::support::TempDir::new();
    let out = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.toml"),
        "{out:?}"
    );
}

#[test]
fn sessiond_smoke_fails_with_exit_1_when_the_service_is_down() {
    let s = Store::new();
    s.session("a", "{}");
    // Port 9 (discard) on loopback: nothing listens there.
    let r = sessiondb(&["verify", "--smoke-url", "http://127.0.0.1:9"])
        .config(&s.config)
        .expect(exit::PROBLEMS);
    for id in ["smoke_health", "smoke_status", "smoke_write"] {
        assert_eq!(r.check(id).status, CheckStatus::Fail, "{id}: {}", r.stdout);
    }
}

// ---- an application's own schema (SPEC §9, issue 17) --------------------------------

use crate::support::store::{AppStore, is_sqlalchemy_time};

/// Through HTTP, on the application's own tables: create with extra columns (and a new
/// user), progress, status and summary with mapped fields and extras, refusals as
/// errors with their codes. Returns after SIGTERM (which writes pending progress).
pub(crate) fn app_over_http(app: &AppStore, user: &str, database_url: Option<&str>) {
    let svc = Service::start(&app.config, database_url);
    let c = svc.client();
    let body = json!({
        "id": "session_http_1", "user_id": user, "status": "running", "current_step": "intake",
        "state": {"progress": 0},
        "extra": {"question": "Asked over HTTP?", "is_deleted": false}
    });
    let (code, v) = c.post("/api/sessions", &body.to_string());
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        v["extra"],
        json!({"question": "Asked over HTTP?", "is_deleted": false, "last_total_tokens": null})
    );
    assert_eq!(v["cost"], Value::Null);
    for i in 1..=3 {
        let (code, v) = c.post(
            "/api/sessions/session_http_1/progress",
            &json!({"progress": i}).to_string(),
        );
        assert_eq!(code, 202, "{v}");
    }
    let (code, st) = c.get("/api/sessions/session_http_1/status");
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["status"], "running");
    assert_eq!(st["current_step"], "intake");
    assert_eq!(st["cost"], Value::Null);
    assert_eq!(st["extra"]["question"], "Asked over HTTP?");
    assert_eq!(st["extra"]["is_deleted"], false);

    // A user who does not exist: 409, unless "parents" creates it.
    let mut body = json!({
        "id": "session_http_2", "user_id": "user-http", "status": "running", "current_step": "intake",
        "extra": {"question": "Mine?", "is_deleted": false}
    });
    let (code, v) = c.post("/api/sessions", &body.to_string());
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (409, Some("parent_not_found")),
        "{v}"
    );
    body["parents"] = json!({"users": {"external_id": "auth0|http"}});
    let (code, v) = c.post("/api/sessions", &body.to_string());
    assert_eq!(code, 201, "{v}");
    // A NOT NULL column not given, a value of the wrong type, an unknown column: 400.
    for (extra, code_wanted, needle) in [
        (
            json!({"is_deleted": false}),
            "missing_value",
            "sessions.question",
        ),
        (
            json!({"question": "q", "is_deleted": "no"}),
            "invalid_value",
            "is_deleted",
        ),
        (
            json!({"question": "q", "is_deleted": false, "colour": "red"}),
            "unknown_column",
            "colour",
        ),
    ] {
        let body = json!({"id": "session_http_bad", "user_id": user, "status": "s",
                          "current_step": "c", "extra": extra});
        let (code, v) = c.post("/api/sessions", &body.to_string());
        assert_eq!(
            (code, v["error"]["code"].as_str()),
            (400, Some(code_wanted)),
            "{v}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
    let (code, _) = c.get("/api/sessions/session_http_bad/status");
    assert_eq!(code, 404);
    svc.stop();

    // Started again: every progress update is there; the summary has the extras.
    let svc = Service::start(&app.config, database_url);
    let c = svc.client();
    let (code, st) = c.get("/api/sessions/session_http_1/status");
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["progress"], json!(3));
    let (code, sm) = c.get("/api/sessions/session_http_1/summary");
    assert_eq!(code, 200, "{sm}");
    assert_eq!(sm["session"]["user_id"], user);
    assert_eq!(sm["session"]["extra"]["question"], "Asked over HTTP?");
    assert_eq!(sm["state"]["keys"], json!(["progress"]));
    let (code, sm) = c.get("/api/sessions/session_http_2/summary");
    assert_eq!(code, 200, "{sm}");
    assert_eq!(sm["session"]["user_id"], "user-http");
    assert_eq!(sm["state"], Value::Null);
    svc.stop();
}

#[test]
fn sessiond_serves_the_applications_own_tables_on_sqlite() {
    let app = AppStore::new(5);
    let (user, ..) = app.user();
    app_over_http(&app, &user, None);
    let c = app.conn();
    let (q, del, c_at, cost, ext): (String, i64, String, Option<f64>, String) = c
        .query_row(
            "SELECT s.question, s.is_deleted, s.created_at, s.last_cost_usd, u.external_id
               FROM sessions s JOIN users u ON u.id = s.user_id
              WHERE s.id = 'session_http_2' AND s.is_deleted = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(
        (q.as_str(), del, cost, ext.as_str()),
        ("Mine?", 0, None, "auth0|http")
    );
    assert!(is_sqlalchemy_time(&c_at), "{c_at}");
    let file = std::fs::read_to_string(app.sessions.join("session_http_1/state.json")).unwrap();
    assert_eq!(file, r#"{"progress": 3}"#);
}

#[test]
fn sessiond_serves_the_applications_own_tables_on_postgres() {
    let app = AppStore::new(5);
    let (user, ..) = app.user();
    let db = TestDb::new("sessiond_app_pg");
    app.pg_tables(&db);
    app_over_http(&app, &user, Some(&db.url));
    let r = db
        .client()
        .query_one(
            "SELECT s.question, s.is_deleted, s.last_cost_usd, st.state::text, st.updated_at = s.updated_at,
                    pg_catalog.pg_typeof(s.created_at)::text
               FROM sessions s JOIN users u ON u.id = s.user_id
               JOIN session_state st ON st.session_id = s.id
              WHERE s.id = 'session_http_1' AND NOT s.is_deleted",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "Asked over HTTP?");
    assert!(!r.get::<_, bool>(1));
    assert_eq!(r.get::<_, Option<f64>>(2), None);
    assert_eq!(r.get::<_, String>(3), r#"{"progress": 3}"#);
    assert!(
        r.get::<_, bool>(4),
        "session_state.updated_at is the session's"
    );
    assert_eq!(r.get::<_, String>(5), "timestamp without time zone");
    let ext: String = db
        .client()
        .query_one("SELECT external_id FROM users WHERE id = 'user-http'", &[])
        .unwrap()
        .get(0);
    assert_eq!(ext, "auth0|http");
}
