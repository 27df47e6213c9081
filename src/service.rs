//! `sessiond`: a small HTTP service on the runtime store (SPEC §7), what the application
//! runs on both sides of the switch, and what `verify --smoke-url` probes.
//!
//! The store is opened exactly as the application opens it ([`store::open_with`]: the
//! same `sessiondb.toml` and the runtime gating of SPEC §3 pick the backend). Routes:
//!
//! - `GET /api/health`: probes the store now; 200 when it answers, 503 when not.
//! - `POST /api/sessions`: create (`id`, `user_id`, `status`, `current_step`, `cost`,
//!   `state`, all optional; on an application's own table, `extra`: its other columns by
//!   name, and `parents`: rows to create when missing, `{"users": {"external_id": ..}}`);
//!   201, or 409 for an id that exists or a parent row that does not.
//! - `GET /api/sessions/{id}/status`: status, current_step, progress (the state's
//!   top-level `progress` member), cost and the extra columns (`extra`), as stored
//!   (progress still in its batching window is not visible yet).
//! - `GET /api/sessions/{id}/summary`: metadata with the extra columns, and the state's
//!   size and top-level keys.
//! - `POST /api/sessions/{id}/progress`: the body is the new state, queued on the
//!   batched progress writer; 202.
//!
//! Errors are `{"error": {"code", "message"}}`: 404 for an unknown session, 400 for a
//! body that is not JSON or a state jsonb would refuse (or an extra column the table
//! cannot hold: `unknown_column`, `missing_value`, `invalid_value`), 409 for an existing
//! id or a missing parent row (`parent_not_found`), 503 when
//! the store is unreachable. States are taken as raw text, never through `f64`, so
//! numbers are kept exactly as jsonb keeps them.
//!
//! stdout carries one line, `listening on http://ADDR`, once the socket is bound; request
//! logs and everything else go to stderr, redacted. SIGTERM or SIGINT stops accepting,
//! lets requests in flight finish, then closes the store, which writes every pending
//! progress update.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State as Shared};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use crate::canon::{self, Node};
use crate::config::{Config, Env};
use crate::redact;
use crate::store::{self, BatchOptions, NewSession, Store};

/// Largest request body: bigger states are refused with 413 before they are read whole.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How many top-level keys a summary names.
const SUMMARY_KEYS: usize = 50;

/// Sessions known to exist, remembered so that progress updates skip the lookup; forgotten
/// wholesale past this many.
const KNOWN_IDS: usize = 100_000;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "sessiond",
    version,
    about = "An HTTP service on the runtime session store (SQLite + files, or PostgreSQL)."
)]
pub struct Args {
    /// The config file (else $SESSIONDB_CONFIG, else ./sessiondb.toml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Progress updates of one session within this window are coalesced into one write.
    #[arg(long, value_name = "MS", default_value_t = 350)]
    pub progress_window_ms: u64,
    /// Only warnings and errors on stderr (no request log).
    #[arg(long)]
    pub quiet: bool,
}

/// Why the service could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Config(#[from] crate::error::Error),
    #[error("cannot open the session store: {0}")]
    Store(#[from] store::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("flushing pending progress at shutdown: {0}")]
    Close(store::Error),
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Failure::Config(e) | Failure::Store(store::Error::Backend(e)) => e.exit_code(),
            _ => crate::exit::OPERATIONAL,
        }
    }
}

/// The `sessiond` binary: parse, serve until a signal, exit with a code of `crate::exit`.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() {
                crate::exit::USAGE
            } else {
                crate::exit::OK
            };
            return ExitCode::from(code as u8);
        }
    };
    crate::driver::init_tracing(args.quiet);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(crate::exit::OPERATIONAL as u8);
        }
    };
    match rt.block_on(run(args, Env::from_process())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", crate::error::error_chain(&e));
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        }
    }
}

/// Open the store, serve until SIGTERM or SIGINT, then close the store (which flushes).
pub async fn run(args: Args, env: Env) -> Result<(), Failure> {
    let cfg = Config::load(args.config.as_deref(), &env)?;
    for line in &cfg.provenance {
        tracing::info!("{line}");
    }
    let window = Duration::from_millis(args.progress_window_ms);
    let opts = store::Options {
        batch: BatchOptions {
            window,
            ..BatchOptions::default()
        },
        ..store::Options::default()
    };
    let store = store::open_with(&cfg, &env, opts).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Failure::Listen {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Failure::Listen {
        addr: args.listen,
        source,
    })?;
    announce(addr);
    tracing::info!("sessiond: serving {} on http://{addr}", store.describe());
    axum::serve(listener, router(store.clone(), window))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(Failure::Serve)?;
    let pending = store.progress_stats().pending_sessions;
    tracing::info!("sessiond: stopping; writing {pending} session(s) with pending progress");
    store.close().await.map_err(Failure::Close)?;
    let stats = store.progress_stats();
    tracing::info!(
        "sessiond: stopped; progress: {} update(s) received, {} write(s) succeeded, {} failure(s)",
        stats.updates_received,
        stats.writes_succeeded,
        stats.failures
    );
    Ok(())
}

/// The one line sessiond writes to stdout: where it listens, once the socket is bound.
fn announce(addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{addr}");
    let _ = out.flush();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); stop with SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    let name = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term => "SIGTERM",
    };
    tracing::info!("sessiond: {name} received: finishing requests in flight");
}

// ---- the routes --------------------------------------------------------------------------

#[derive(Clone)]
struct App {
    store: Store,
    window: Duration,
    known: Arc<Mutex<HashSet<String>>>,
}

impl App {
    fn remember(&self, id: &str) {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if k.len() >= KNOWN_IDS {
            k.clear();
        }
        k.insert(id.to_owned());
    }

    /// 404 unless the session exists.
    async fn ensure_exists(&self, id: &str) -> Result<(), ApiError> {
        let known = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id);
        if known {
            return Ok(());
        }
        match self.store.get(id).await? {
            Some(_) => {
                self.remember(id);
                Ok(())
            }
            None => Err(ApiError::not_found(id)),
        }
    }
}

/// The service's routes on a store (the store is not closed when the router is dropped).
pub fn router(store: Store, window: Duration) -> Router {
    let app = App {
        store,
        window,
        known: Arc::new(Mutex::new(HashSet::new())),
    };
    Router::new()
        .route("/api/health", get(health))
        .route("/api/sessions", post(create))
        .route("/api/sessions/{id}/status", get(status))
        .route("/api/sessions/{id}/summary", get(summary))
        .route("/api/sessions/{id}/progress", post(progress))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(log_request))
        .with_state(app)
}

async fn log_request(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        "{method} {path} {} {}ms",
        resp.status().as_u16(),
        started.elapsed().as_millis()
    );
    resp
}

/// An error response: `{"error": {"code", "message"}}`, the message redacted.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    fn not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("session {id:?} not found"),
        )
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> ApiError {
        use store::Error as E;
        let status = match &e {
            E::NotFound { .. } => StatusCode::NOT_FOUND,
            E::AlreadyExists { .. } => StatusCode::CONFLICT,
            E::InvalidId { .. }
            | E::InvalidField { .. }
            | E::InvalidState { .. }
            | E::UnknownColumn { .. }
            | E::MissingValue { .. }
            | E::MergeUnsupported { .. } => StatusCode::BAD_REQUEST,
            E::ParentNotFound { .. } => StatusCode::CONFLICT,
            E::ReadOnly { .. } => StatusCode::FORBIDDEN,
            E::PoolExhausted { .. } | E::Closed | E::Backend(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::InvalidRecord { .. } | E::UnsafePath { .. } | E::ProgressFailed { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status.is_server_error() {
            tracing::error!("{}", crate::error::error_chain(&e));
        }
        ApiError::new(status, e.code(), crate::error::error_chain(&e))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "unreadable"
        };
        ApiError::new(status, code, r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        redact::value(&mut body);
        (self.status, axum::Json(body)).into_response()
    }
}

async fn health(Shared(app): Shared<App>) -> Response {
    let h = app.store.health().await;
    let code = if h.reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::to_value(&h).unwrap_or_else(|_| json!({}));
    if let Some(o) = body.as_object_mut() {
        o.insert(
            "status".into(),
            json!(if h.reachable { "ok" } else { "unavailable" }),
        );
        o.insert("store".into(), json!(app.store.describe()));
        o.insert(
            "progress_window_ms".into(),
            json!(app.window.as_millis() as u64),
        );
    }
    // The last resort on the values (the target is redacted where it is built): ids and
    // paths in the warnings are data, kept as they are.
    redact::value(&mut body);
    let text = body.to_string();
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

/// `POST /api/sessions`. The state is kept as raw text, so numbers stay exact.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: Option<String>,
    user_id: Option<String>,
    status: Option<String>,
    current_step: Option<String>,
    cost: Option<f64>,
    state: Option<Box<RawValue>>,
    /// The table's extra columns by name (an application's own schema, SPEC §9).
    #[serde(default)]
    extra: store::Extra,
    /// Parent rows to create when missing: `{"users": {"external_id": "..."}}`.
    #[serde(default)]
    parents: BTreeMap<String, store::Extra>,
}

/// A session's metadata, as the service returns it.
#[derive(Debug, Serialize)]
struct SessionBody {
    id: String,
    user_id: Option<String>,
    status: Option<String>,
    current_step: Option<String>,
    cost: Option<f64>,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    /// The extra columns (`{}` on SPEC §1's table).
    extra: store::Extra,
}

impl SessionBody {
    fn new(id: String, m: store::Meta, extra: store::Extra) -> SessionBody {
        SessionBody {
            id,
            user_id: m.user_id,
            status: m.status,
            current_step: m.current_step,
            cost: m.cost,
            created_at: m.created_at,
            updated_at: m.updated_at,
            extra,
        }
    }
}

fn invalid_json(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_json",
        format!("invalid request body: {e}"),
    )
}

async fn create(
    Shared(app): Shared<App>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let b: CreateBody = serde_json::from_slice(&body).map_err(invalid_json)?;
    let s = app
        .store
        .create(NewSession {
            id: b.id,
            user_id: b.user_id,
            status: b.status,
            current_step: b.current_step,
            cost: b.cost,
            state: b.state.map(|r| r.get().to_owned().into()),
            extra: b.extra,
            parents: b.parents,
        })
        .await?;
    app.remember(&s.id);
    Ok((
        StatusCode::CREATED,
        axum::Json(SessionBody::new(s.id, s.meta, s.extra)),
    )
        .into_response())
}

#[derive(Debug, Serialize)]
struct StatusBody {
    id: String,
    status: Option<String>,
    current_step: Option<String>,
    /// The state's top-level `progress` member, as stored.
    progress: Option<Box<RawValue>>,
    cost: Option<f64>,
    updated_at: Option<DateTime<Utc>>,
    /// The extra columns (`{}` on SPEC §1's table).
    extra: store::Extra,
}

async fn status(Shared(app): Shared<App>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let s = app
        .store
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    app.remember(&id);
    let progress = s.state.as_ref().and_then(|st| member(st, "progress"));
    Ok(axum::Json(StatusBody {
        id: s.id,
        status: s.meta.status,
        current_step: s.meta.current_step,
        progress,
        cost: s.meta.cost,
        updated_at: s.meta.updated_at,
        extra: s.extra,
    })
    .into_response())
}

/// A top-level member of a state, as its exact text.
fn member(st: &store::State, key: &str) -> Option<Box<RawValue>> {
    let raw = st.as_str().as_bytes();
    let doc = canon::parse(raw).ok()?;
    let text = std::str::from_utf8(doc.get(key)?.text(raw)).ok()?;
    RawValue::from_string(text.to_owned()).ok()
}

#[derive(Debug, Serialize)]
struct StateSummary {
    /// Bytes of the canonical text.
    bytes: usize,
    /// `object`, `array`, `string`, `number`, `boolean` or `null`.
    kind: &'static str,
    /// Top-level keys of an object, in jsonb's order, at most 50.
    keys: Vec<String>,
    key_count: usize,
    /// Elements of an array.
    #[serde(skip_serializing_if = "Option::is_none")]
    len: Option<usize>,
}

fn describe(st: &store::State) -> StateSummary {
    let mut s = StateSummary {
        bytes: st.as_str().len(),
        kind: "null",
        keys: Vec::new(),
        key_count: 0,
        len: None,
    };
    let Ok(doc) = canon::parse(st.as_str().as_bytes()) else {
        return s;
    };
    s.kind = match &doc.node {
        Node::Null => "null",
        Node::Bool(_) => "boolean",
        Node::Number { .. } => "number",
        Node::String(_) => "string",
        Node::Array(items) => {
            s.len = Some(items.len());
            "array"
        }
        Node::Object(members) => {
            s.key_count = members.len();
            s.keys = members
                .iter()
                .take(SUMMARY_KEYS)
                .map(|(k, _)| k.clone())
                .collect();
            "object"
        }
    };
    s
}

#[derive(Debug, Serialize)]
struct SummaryBody {
    #[serde(rename = "session")]
    meta: SessionBody,
    state: Option<StateSummary>,
}

async fn summary(Shared(app): Shared<App>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let s = app
        .store
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    app.remember(&id);
    let state = s.state.as_ref().map(describe);
    Ok(axum::Json(SummaryBody {
        meta: SessionBody::new(s.id, s.meta, s.extra),
        state,
    })
    .into_response())
}

async fn progress(
    Shared(app): Shared<App>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let text = String::from_utf8(body.to_vec()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_utf8",
            format!("the state is not UTF-8: {e}"),
        )
    })?;
    app.ensure_exists(&id).await?;
    let receipt = app.store.progress(&id, text)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "id": id,
            "seq": receipt.seq(),
            "window_ms": app.window.as_millis() as u64,
        })),
    )
        .into_response())
}
