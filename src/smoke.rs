//! `verify --smoke-url URL`: probes of a running `sessiond` (see [`crate::service`]),
//! each a check of the verify report:
//!
//! - `smoke_health`: `GET /api/health` answers 200 and says the store is reachable;
//! - `smoke_status`: for up to 20 random sessions of the database the service uses,
//!   `GET /api/sessions/{id}/status` agrees with it on status, current_step and cost;
//! - `smoke_write`: a new session and three progress updates through the service; the
//!   last state must be in the database within the service's batching window + 1 s.
//!
//! "The database the service uses" is the one its health names: PostgreSQL (the
//! target, `session_state`) or the legacy store (SQLite + state files), read directly,
//! not through the service. The probe session is named `smoke-…` and stays: it is a
//! real write, like the application's.
//!
//! `verify` runs its comparison first when there is a target with sessiondb's tables,
//! then these probes on the same config and connection; without one (an application
//! still on SQLite, or after a rollback) only the probes run.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::canon;
use crate::config::Config;
use crate::driver::Ctx;
use crate::error::Result;
use crate::pg::rows::{self, Status as Row};
use crate::report::CheckStatus;
use crate::source::Source;

/// Most sessions the status probe compares.
pub const STATUS_SAMPLE: usize = 20;
/// How long after the batching window the last progress update may take to land.
pub const WRITE_GRACE: Duration = Duration::from_secs(1);
/// The window assumed when the service does not say.
const DEFAULT_WINDOW_MS: u64 = 350;

/// What the probes compare the service with.
enum Backing {
    Postgres {
        client: Box<postgres::Client>,
        schema: String,
    },
    Legacy {
        source: Source,
        sessions_dir: Option<std::path::PathBuf>,
    },
    /// The service's store is not one this verify can read (no URL for its PostgreSQL).
    Unavailable(String),
}

/// The probes, on the config verify loaded and the connection it made (`None`: no
/// target is configured).
pub fn probe(ctx: &mut Ctx, url: &str, cfg: &Config, pg: Option<postgres::Client>) -> Result<()> {
    let schema_name = cfg.postgres.schema.clone();
    let probe = Probe::new(url);
    let health = probe.health(ctx);
    let backing = match health.as_ref().map(|h| h.backend.as_str()) {
        Some("postgres") => match pg {
            Some(client) => Backing::Postgres {
                client: Box::new(client),
                schema: schema_name,
            },
            None => Backing::Unavailable(format!(
                "the service runs on PostgreSQL but this verify has no URL for it: set {}",
                cfg.postgres.url_env
            )),
        },
        Some(_) => Backing::Legacy {
            source: Source::from_config(cfg),
            sessions_dir: cfg.sqlite.as_ref().map(|s| s.sessions_dir.clone()),
        },
        None => Backing::Unavailable("the service did not answer its health probe".into()),
    };
    let mut backing = backing;
    probe.status(ctx, &mut backing)?;
    let window = health.as_ref().map_or(DEFAULT_WINDOW_MS, |h| h.window_ms);
    let writable = health.as_ref().is_none_or(|h| h.backend != "json");
    probe.write(ctx, &mut backing, Duration::from_millis(window), writable)?;

    if ctx
        .report
        .checks
        .iter()
        .any(|c| c.id.starts_with("smoke_") && c.status == CheckStatus::Fail)
    {
        ctx.problems = true;
    }
    Ok(())
}

struct Health {
    backend: String,
    window_ms: u64,
}

/// A blocking HTTP client on one service.
struct Probe {
    agent: ureq::Agent,
    base: String,
    /// `base` with any password masked: what reports and messages show.
    display: String,
}

/// A response: status and body text, or why there was none.
type Answer = std::result::Result<(u16, String), String>;

impl Probe {
    fn new(url: &str) -> Probe {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build()
            .new_agent();
        crate::redact::register_in(url);
        let base = url.trim_end_matches('/').to_owned();
        Probe {
            agent,
            display: crate::redact::url(&base),
            base,
        }
    }

    fn get(&self, path: &str) -> Answer {
        let url = format!("{}{path}", self.base);
        let shown = format!("{}{path}", self.display);
        let mut r = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| format!("GET {shown}: {e}"))?;
        let text = r
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("GET {shown}: reading the body: {e}"))?;
        Ok((r.status().as_u16(), text))
    }

    fn post(&self, path: &str, body: &str) -> Answer {
        let url = format!("{}{path}", self.base);
        let shown = format!("{}{path}", self.display);
        let mut r = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body)
            .map_err(|e| format!("POST {shown}: {e}"))?;
        let text = r
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("POST {shown}: reading the body: {e}"))?;
        Ok((r.status().as_u16(), text))
    }

    fn health(&self, ctx: &mut Ctx) -> Option<Health> {
        let (code, text) = match self.get("/api/health") {
            Ok(a) => a,
            Err(e) => {
                ctx.report.check(
                    "smoke_health",
                    CheckStatus::Fail,
                    format!("the service does not answer: {e}"),
                    json!({"url": self.display}),
                );
                return None;
            }
        };
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let backend = body["backend"].as_str().map(str::to_owned);
        let reachable = body["reachable"].as_bool() == Some(true);
        let ok = code == 200 && reachable && backend.is_some();
        let summary = if ok {
            format!(
                "HTTP 200: {} store reachable{}",
                backend.as_deref().unwrap_or("?"),
                if body["drift"].is_null() {
                    String::new()
                } else {
                    format!(
                        " (backend_drift: {})",
                        body["drift"]["message"].as_str().unwrap_or("")
                    )
                }
            )
        } else {
            format!(
                "HTTP {code}: store {}: {}",
                if reachable {
                    "reachable"
                } else {
                    "unreachable"
                },
                body["error"]
                    .as_str()
                    .or(body["error"]["message"].as_str())
                    .unwrap_or("no reason given")
            )
        };
        ctx.report.check(
            "smoke_health",
            if ok {
                CheckStatus::Pass
            } else {
                CheckStatus::Fail
            },
            summary,
            json!({"url": self.display, "http_status": code, "health": body}),
        );
        backend.map(|backend| Health {
            backend,
            window_ms: body["progress_window_ms"]
                .as_u64()
                .unwrap_or(DEFAULT_WINDOW_MS),
        })
    }

    fn status(&self, ctx: &mut Ctx, backing: &mut Backing) -> Result<()> {
        let rows = match backing {
            Backing::Unavailable(why) => {
                ctx.report
                    .check("smoke_status", CheckStatus::Fail, why.clone(), json!({}));
                return Ok(());
            }
            Backing::Postgres { client, schema } => {
                rows::sample_status(client.as_mut(), schema, STATUS_SAMPLE)?
            }
            Backing::Legacy { source, .. } => sample_legacy(source)?,
        };
        let mut mismatches = Vec::new();
        for row in &rows {
            let path = format!("/api/sessions/{}/status", encode_segment(&row.id));
            let seen = match self.get(&path) {
                Ok((200, text)) => serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
                Ok((code, text)) => {
                    mismatches.push(json!({"session": row.id, "http_status": code, "body": text}));
                    continue;
                }
                Err(e) => {
                    mismatches.push(json!({"session": row.id, "error": e}));
                    continue;
                }
            };
            let fields = [
                ("status", json!(row.status), seen["status"].clone()),
                (
                    "current_step",
                    json!(row.current_step),
                    seen["current_step"].clone(),
                ),
                ("cost", json!(row.cost), seen["cost"].clone()),
            ];
            for (name, db, svc) in fields {
                let same = match (name, &db, &svc) {
                    ("cost", Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                    _ => db == svc,
                };
                if !same {
                    mismatches.push(
                        json!({"session": row.id, "field": name, "database": db, "service": svc}),
                    );
                }
            }
        }
        let ok = mismatches.is_empty();
        ctx.report.check(
            "smoke_status",
            if ok {
                CheckStatus::Pass
            } else {
                CheckStatus::Fail
            },
            if rows.is_empty() {
                "no sessions in the database to compare".to_owned()
            } else if ok {
                format!(
                    "{} random session(s): the service's status, current_step and cost match the database",
                    rows.len()
                )
            } else {
                format!(
                    "{} of {} random session(s) differ between the service and the database",
                    mismatches.len(),
                    rows.len()
                )
            },
            json!({"sampled": rows.len(), "mismatches": mismatches}),
        );
        Ok(())
    }

    fn write(
        &self,
        ctx: &mut Ctx,
        backing: &mut Backing,
        window: Duration,
        writable: bool,
    ) -> Result<()> {
        if !writable {
            ctx.report.check(
                "smoke_write",
                CheckStatus::Skip,
                "the service's store is the read-only JSON store",
                json!({}),
            );
            return Ok(());
        }
        if let Backing::Unavailable(why) = backing {
            ctx.report
                .check("smoke_write", CheckStatus::Fail, why.clone(), json!({}));
            return Ok(());
        }
        let run = ctx.run_id();
        let id = format!("smoke-{}", &run[..8]);
        let fail = |ctx: &mut Ctx, summary: String| {
            ctx.report.check(
                "smoke_write",
                CheckStatus::Fail,
                summary,
                json!({"session": id}),
            );
        };
        let create = json!({
            "id": id, "user_id": "sessiondb-smoke", "status": "smoke",
            "current_step": "probe", "cost": 0.0,
            "state": {"smoke": run, "progress": 0},
        });
        match self.post("/api/sessions", &create.to_string()) {
            Ok((201, _)) => {}
            Ok((code, text)) => {
                fail(ctx, format!("creating {id}: HTTP {code}: {text}"));
                return Ok(());
            }
            Err(e) => {
                fail(ctx, e);
                return Ok(());
            }
        }
        let mut last = String::new();
        let path = format!("/api/sessions/{id}/progress");
        for i in 1..=3 {
            last = json!({"smoke": run, "progress": i, "step": format!("update {i} of 3")})
                .to_string();
            match self.post(&path, &last) {
                Ok((202, _)) => {}
                Ok((code, text)) => {
                    fail(ctx, format!("progress {i} of 3: HTTP {code}: {text}"));
                    return Ok(());
                }
                Err(e) => {
                    fail(ctx, e);
                    return Ok(());
                }
            }
        }
        let sent = Instant::now();
        let expected = canon::canonicalize(last.as_bytes()).expect("our own JSON is valid");
        let deadline = window + WRITE_GRACE;
        let mut seen = None;
        loop {
            seen = stored_state(backing, &id)?.or(seen);
            if seen.as_deref() == Some(expected.as_str()) || sent.elapsed() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let landed = seen.as_deref() == Some(expected.as_str());
        let waited = sent.elapsed().as_millis() as u64;
        let details = json!({
            "session": id, "state": serde_json::from_str::<Value>(&last).unwrap_or_default(),
            "window_ms": window.as_millis() as u64, "waited_ms": waited,
            "stored": seen,
        });
        if !landed {
            ctx.report.check(
                "smoke_write",
                CheckStatus::Fail,
                format!(
                    "the last of three progress updates to {id} was not in the database within {} ms (the batching window + {} s)",
                    deadline.as_millis(),
                    WRITE_GRACE.as_secs()
                ),
                details,
            );
            return Ok(());
        }
        // The service reads back what it wrote.
        let status = self.get(&format!("/api/sessions/{id}/status"));
        let progress = status
            .as_ref()
            .ok()
            .and_then(|(_, t)| serde_json::from_str::<Value>(t).ok())
            .map(|v| v["progress"].clone());
        if progress != Some(json!(3)) {
            ctx.report.check(
                "smoke_write",
                CheckStatus::Fail,
                format!("{id} landed, but the service's status shows progress {progress:?}, not 3"),
                details,
            );
            return Ok(());
        }
        ctx.report.check(
            "smoke_write",
            CheckStatus::Pass,
            format!(
                "created {id}, sent three progress updates; the last was in the database after {waited} ms (window {} ms)",
                window.as_millis()
            ),
            details,
        );
        Ok(())
    }
}

/// A session id as one URL path segment.
fn encode_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Up to [`STATUS_SAMPLE`] sessions of the legacy store, chosen at random in one scan.
/// Only SQLite rows and their files: that is what the runtime SQLite store serves
/// (sessions only in the deprecated JSON store are migrated, not served by it).
fn sample_legacy(src: &Source) -> Result<Vec<Row>> {
    let src = Source {
        sqlite: src.sqlite.clone(),
        json_path: None,
        json_fields: Default::default(),
    };
    src.sample(STATUS_SAMPLE, |s| Row {
        id: s.id,
        status: s.meta.status,
        current_step: s.meta.current_step,
        cost: s.meta.cost,
    })
}

/// The state the database holds for a session now, as canonical text.
fn stored_state(backing: &mut Backing, id: &str) -> Result<Option<String>> {
    match backing {
        Backing::Postgres { client, schema } => rows::state_text(client.as_mut(), schema, id),
        Backing::Legacy { sessions_dir, .. } => {
            let Some(dir) = sessions_dir else {
                return Ok(None);
            };
            // The probe's id is safe as a path component; the store keeps its state here.
            match std::fs::read(dir.join(id).join("state.json")) {
                Ok(bytes) => Ok(canon::canonicalize(&bytes).ok()),
                Err(_) => Ok(None),
            }
        }
        Backing::Unavailable(_) => Ok(None),
    }
}
