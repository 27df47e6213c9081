//! The runtime session store (SPEC §7): what the application uses to read and write
//! sessions, before and after the switch to PostgreSQL.
//!
//! [`open`] picks the backend by the runtime gating of SPEC §3:
//!
//! - a PostgreSQL URL in `postgres.url_env` (default `DATABASE_URL`): **PostgreSQL**, a
//!   pool of `pool_size + max_overflow` connections (`DB_POOL_SIZE`, `DB_MAX_OVERFLOW`
//!   win over the file);
//! - a SQLite URL there, or nothing: **SQLite + state files** from `[sqlite]`;
//! - and if the file says `backend = "json"`: the deprecated **JSON store**, read-only.
//!
//! It logs (with `tracing`) which backend it opened and why, warns `backend_drift` when
//! that is not the configured `sessiondb.backend` and `json_backend_deprecated` for the
//! JSON store; the warnings are also data ([`Store::warnings`], [`Store::health`]).
//!
//! Every backend has the same operations with the same semantics: ids are compared
//! bytewise, states are validated as jsonb validates them and returned in jsonb's
//! canonical text ([`State`]), each write of a state also sets the session's
//! `updated_at`. Progress updates go through [`Store::progress`], which coalesces them
//! per session over a window (350 ms by default) and writes only the last state of each
//! window.
//!
//! On an application's own tables (SPEC §9) the same calls read and write them as they
//! are: fields at their mapped columns, the other columns as [`Extra`] (JSON, converted
//! to each column's type), the parent rows a session references checked or created
//! ([`NewSession::parents`]). See `docs/embedding.md`, "Application schemas".
//!
//! The API is async, on tokio: PostgreSQL through `tokio-postgres` and a `deadpool`
//! pool, SQLite and the state files on tokio's blocking pool. A [`Store`] is cheap to
//! clone and share between tasks (an axum `State`, for one).
//!
//! ```no_run
//! use sessiondb::config::{Config, Env};
//! use sessiondb::store::{self, NewSession, Page};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let env = Env::from_process();
//! let config = Config::load(None, &env)?;
//! let store = store::open(&config, &env).await?;
//! for w in store.warnings() {
//!     eprintln!("warning {}: {}", w.code, w.message);
//! }
//!
//! let s = store
//!     .create(NewSession {
//!         user_id: Some("u-1".into()),
//!         state: Some(json!({"step": "plan"}).into()),
//!         ..NewSession::default()
//!     })
//!     .await?;
//! // Frequent progress: coalesced, written at most once per window.
//! for i in 0..100 {
//!     store.progress(&s.id, json!({"step": "run", "done": i}))?;
//! }
//! let first_page = store.list(Page::first(50)).await?;
//! # let _ = first_page;
//! store.close().await?; // writes everything pending
//! # Ok(())
//! # }
//! ```

mod error;
mod json;
mod layout;
mod pg;
mod progress;
mod sqlite;
mod state;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{self, Config, Env};
use crate::redact;
use crate::report::Finding;
use crate::source::fields::{self, Raw};

pub use crate::config::Backend;
pub use crate::source::Meta;
pub use error::{Error, Result};
pub use layout::Extra;
pub use progress::{BatchOptions, ProgressFailure, ProgressStats, Receipt};
pub use state::{State, StateInput, merge_patch};

/// How to open the store. `Options::default()` is what [`open`] uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// Progress batching.
    pub batch: BatchOptions,
    /// PostgreSQL: how long a request waits for a free connection before failing with
    /// `pool_exhausted`.
    pub acquire_timeout: Duration,
    /// SQLite: how long a statement waits for another process's lock.
    pub sqlite_busy_timeout: Duration,
    /// PostgreSQL: apply the sessiondb schema if it is missing (a fresh database).
    /// Without it, a missing schema fails the open.
    pub apply_schema: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: BatchOptions::default(),
            acquire_timeout: Duration::from_secs(5),
            sqlite_busy_timeout: Duration::from_secs(5),
            apply_schema: true,
        }
    }
}

/// A session to create. A missing `id` is generated (a UUID); `created_at` and
/// `updated_at` are now.
///
/// On an application's own table (SPEC §9) the fields go to their mapped columns
/// (`cost` → `last_cost_usd`), and `extra` gives the table's other columns by name
/// (`{"question": "...", "is_deleted": false}`), each converted to its column's type.
/// A NOT NULL column left out is filled from `[postgres.fill]` (on either backend), or
/// by its default; else the create fails with `missing_value`, naming it.
///
/// The session's references (`user_id REFERENCES users(id)`) must exist, else
/// `parent_not_found`; `parents` names rows to create when they are missing (by primary
/// key, never updated): `{"users": {"external_id": "auth0|42"}}` creates the user whose
/// `id` is the session's `user_id`, its `created_at`/`updated_at` now, in the same
/// transaction as the session.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    pub id: Option<String>,
    pub user_id: Option<String>,
    pub status: Option<String>,
    pub current_step: Option<String>,
    pub cost: Option<f64>,
    pub state: Option<StateInput>,
    /// The table's extra columns, by name.
    pub extra: Extra,
    /// Parent rows to create if missing: table → its columns (the key taken from the
    /// session's reference when not given).
    pub parents: BTreeMap<String, Extra>,
}

/// A session: its metadata, its extra columns and its state.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: String,
    pub meta: Meta,
    /// The extra columns of an application's own table (empty on SPEC §1's).
    pub extra: Extra,
    pub state: Option<State>,
}

/// A session without its state, as [`Store::list`] returns them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionSummary {
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: Extra,
}

/// Metadata to change: each `Some` field is set, each `None` left as it is; each extra
/// column named is set (`null` to clear a nullable one).
#[derive(Debug, Clone, Default)]
pub struct MetaPatch {
    pub status: Option<String>,
    pub current_step: Option<String>,
    pub cost: Option<f64>,
    pub extra: Extra,
}

/// One page of a listing: sessions whose id sorts (bytewise) after `after`, at most
/// `limit` of them, in id order. Pass the last id of a page to get the next.
#[derive(Debug, Clone)]
pub struct Page {
    pub after: Option<String>,
    pub limit: u32,
}

impl Page {
    /// Most sessions one page returns.
    pub const MAX_LIMIT: u32 = 10_000;

    pub fn first(limit: u32) -> Page {
        Page { after: None, limit }
    }

    pub fn after(id: impl Into<String>, limit: u32) -> Page {
        Page {
            after: Some(id.into()),
            limit,
        }
    }
}

/// The PostgreSQL pool, for a health endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    /// `pool_size + max_overflow`.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Open and idle.
    pub available: usize,
    /// Requests waiting for a connection.
    pub waiting: usize,
    pub pool_size: u32,
    pub max_overflow: u32,
}

/// What a health endpoint reports.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub backend: Backend,
    /// The database (or files) answered just now.
    pub reachable: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `backend_drift`, when the configured backend is not the one in use.
    pub drift: Option<Finding>,
    /// Every warning raised when the store opened (drift and deprecation included).
    pub warnings: Vec<Finding>,
    pub pool: Option<PoolStats>,
    pub progress: ProgressStats,
}

/// Open the store the configuration and the environment call for (see the module
/// documentation), with [`Options::default`].
pub async fn open(cfg: &Config, env: &Env) -> Result<Store> {
    open_with(cfg, env, Options::default()).await
}

/// [`open`] with options.
pub async fn open_with(cfg: &Config, env: &Env, opts: Options) -> Result<Store> {
    let rt = config::runtime(&cfg.postgres.url_env, env)?;
    let mut warnings = cfg.warnings.clone();
    let drift = config::drift(cfg.backend, &rt, &cfg.path);
    if let Some(d) = &drift {
        warnings.push(d.clone());
    }
    let (db, location, concurrency) = match rt.backend {
        Backend::Postgres => {
            let target = config::target(&cfg.postgres, Some(&cfg.path), env)?.ok_or_else(|| {
                crate::error::Error::NoTarget {
                    url_env: cfg.postgres.url_env.clone(),
                    config: cfg.path.display().to_string(),
                }
            })?;
            let pg = pg::PgStore::open(
                &target,
                &cfg.postgres,
                &cfg.app,
                &cfg.path,
                opts.acquire_timeout,
                opts.apply_schema,
            )
            .await?;
            let pool = (cfg.postgres.pool_size + cfg.postgres.max_overflow) as usize;
            let loc = format!(
                "{} (pool {} + {} overflow, schema {})",
                pg.display(),
                cfg.postgres.pool_size,
                cfg.postgres.max_overflow,
                cfg.postgres.schema
            );
            (Db::Postgres(Box::new(pg)), loc, (pool / 4).clamp(1, 4))
        }
        _ if cfg.backend == Backend::Json => {
            // The JSON store's records are read with SPEC §1's keys only, so far.
            if cfg.app.json_fields.iter().any(|(f, k)| k != f.name()) {
                return Err(Error::Backend(crate::error::Error::SchemaNotWired {
                    step: "the runtime JSON store".into(),
                    config: cfg.path.clone(),
                    keys: "[json.fields]".into(),
                }));
            }
            let path =
                cfg.json_path
                    .as_ref()
                    .ok_or_else(|| crate::error::Error::ConfigInvalid {
                        path: cfg.path.clone(),
                        message: "backend = \"json\" but [json] has no path".into(),
                    })?;
            let (js, more) = json::JsonStore::open(path).await?;
            warnings.extend(more);
            let loc = format!("{} (read-only)", js.path().display());
            (Db::Json(js), loc, 1)
        }
        _ => {
            let s = cfg
                .sqlite
                .as_ref()
                .ok_or_else(|| crate::error::Error::ConfigInvalid {
                    path: cfg.path.clone(),
                    message: "the runtime backend is sqlite but the config has no [sqlite] table"
                        .into(),
                })?;
            let st = sqlite::SqliteStore::open(
                &s.path,
                &s.sessions_dir,
                &cfg.path,
                &cfg.app,
                opts.sqlite_busy_timeout,
            )
            .await?;
            let loc = st.display();
            (Db::Sqlite(st), loc, 1)
        }
    };
    let backend = db.backend();
    let reason = if backend == Backend::Json {
        format!(
            "{}, and {} says backend = \"json\"",
            rt.reason,
            cfg.path.display()
        )
    } else {
        rt.reason.clone()
    };
    tracing::info!(
        backend = backend.as_str(),
        "session store: {backend} at {location} ({reason})",
    );
    for w in &warnings {
        tracing::warn!(code = %w.code, "{}", w.message);
    }
    let db = Arc::new(db);
    let batcher = progress::Batcher::start(db.clone(), opts.batch, concurrency);
    Ok(Store {
        inner: Arc::new(Inner {
            db,
            backend,
            // The target's display is redacted where it is built; paths are data.
            description: format!("{backend} at {location} ({reason})"),
            warnings,
            drift,
            batcher,
            closed: AtomicBool::new(false),
        }),
    })
}

/// The application's session store. Clones share one store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Db>,
    backend: Backend,
    description: String,
    warnings: Vec<Finding>,
    drift: Option<Finding>,
    batcher: progress::Batcher,
    closed: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner.description)
    }
}

/// The three backends.
pub(crate) enum Db {
    Postgres(Box<pg::PgStore>),
    Sqlite(sqlite::SqliteStore),
    Json(json::JsonStore),
}

impl Db {
    fn backend(&self) -> Backend {
        match self {
            Db::Postgres(_) => Backend::Postgres,
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Json(_) => Backend::Json,
        }
    }

    pub(crate) async fn state(&self, id: &str) -> Result<Option<State>> {
        match self {
            Db::Postgres(p) => p.state(id).await,
            Db::Sqlite(s) => s.state(id).await,
            Db::Json(j) => j.state(id),
        }
    }

    pub(crate) async fn write_states(
        &self,
        items: Vec<(String, State)>,
        at: DateTime<Utc>,
    ) -> Result<Vec<Option<Error>>> {
        match self {
            Db::Postgres(p) => {
                let refs: Vec<(&str, &State)> =
                    items.iter().map(|(i, s)| (i.as_str(), s)).collect();
                p.write_states(&refs, at).await
            }
            Db::Sqlite(s) => s.write_states(items, at).await,
            Db::Json(j) => Err(j.read_only("progress")),
        }
    }
}

/// A new session, checked: what every backend writes.
#[derive(Clone)]
pub(crate) struct ValidNew {
    pub id: String,
    pub meta: Meta,
    pub extra: Extra,
    pub parents: BTreeMap<String, Extra>,
    pub state: Option<State>,
    /// Its creation time (`created_at`, `updated_at`, and new parent rows').
    pub at: DateTime<Utc>,
}

/// Now, to the microsecond (what PostgreSQL keeps), so every backend returns the same.
pub(crate) fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

fn check_id(id: &str) -> Result<()> {
    fields::id(&Raw::Text(id.to_owned()))
        .map(|_| ())
        .map_err(|e| Error::InvalidId {
            id: id.to_owned(),
            message: e.message,
        })
}

fn check_text(id: &str, name: &str, v: &Option<String>) -> Result<()> {
    match v {
        Some(s) if s.contains('\0') => Err(Error::InvalidField {
            id: id.to_owned(),
            code: "invalid_text",
            message: format!("{name} holds a NUL character, which PostgreSQL text cannot store"),
        }),
        _ => Ok(()),
    }
}

fn check_cost(id: &str, c: Option<f64>) -> Result<()> {
    match c {
        Some(c) if !c.is_finite() => Err(Error::InvalidField {
            id: id.to_owned(),
            code: "invalid_cost",
            message: format!("cost {c} is not a finite number"),
        }),
        _ => Ok(()),
    }
}

fn state_of(id: &str, s: impl Into<StateInput>) -> Result<State> {
    s.into().into_state().map_err(|e| Error::InvalidState {
        id: id.to_owned(),
        source: e,
    })
}

impl Store {
    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Which backend, where (password redacted), and why.
    pub fn describe(&self) -> &str {
        &self.inner.description
    }

    /// The warnings raised when the store opened: `backend_drift`,
    /// `json_backend_deprecated`, and the configuration's own.
    pub fn warnings(&self) -> &[Finding] {
        &self.inner.warnings
    }

    fn open_db(&self) -> Result<&Db> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(&self.inner.db)
    }

    /// Whether the backend answers now, with the warnings, the pool and the progress
    /// counters: what an application's health endpoint shows.
    pub async fn health(&self) -> Health {
        let db = &self.inner.db;
        let ping = match self.open_db() {
            Err(e) => Err(e),
            Ok(Db::Postgres(p)) => p.ping().await,
            Ok(Db::Sqlite(s)) => s.ping().await,
            Ok(Db::Json(j)) => j.ping(),
        };
        Health {
            backend: self.inner.backend,
            reachable: ping.is_ok(),
            error: ping.err().map(|e| redact::text(&e.to_string())),
            drift: self.inner.drift.clone(),
            warnings: self.inner.warnings.clone(),
            pool: match &**db {
                Db::Postgres(p) => Some(p.pool_stats()),
                _ => None,
            },
            progress: self.inner.batcher.stats(),
        }
    }

    /// Create a session; its id is generated when `new.id` is `None`. An id that exists
    /// already is refused (`conflict`); nothing is overwritten.
    pub async fn create(&self, new: NewSession) -> Result<Session> {
        let id = new
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        check_id(&id)?;
        check_text(&id, "user_id", &new.user_id)?;
        check_text(&id, "status", &new.status)?;
        check_text(&id, "current_step", &new.current_step)?;
        check_cost(&id, new.cost)?;
        let state = new.state.map(|s| state_of(&id, s)).transpose()?;
        let at = now();
        let v = ValidNew {
            id,
            meta: Meta {
                user_id: new.user_id,
                status: new.status,
                current_step: new.current_step,
                cost: new.cost,
                created_at: Some(at),
                updated_at: Some(at),
            },
            extra: new.extra,
            parents: new.parents,
            state,
            at,
        };
        let (meta, extra) = match self.open_db()? {
            Db::Postgres(p) => p.create(&v).await?,
            Db::Sqlite(s) => s.create(v.clone()).await?,
            Db::Json(j) => return Err(j.read_only("create")),
        };
        Ok(Session {
            id: v.id,
            meta,
            extra,
            state: v.state,
        })
    }

    /// A session with its state; `None` when there is no such session.
    pub async fn get(&self, id: &str) -> Result<Option<Session>> {
        let found = match self.open_db()? {
            Db::Postgres(p) => p.get(id).await?,
            Db::Sqlite(s) => s.get(id).await?,
            Db::Json(j) => j.get(id)?.map(|(m, s)| (m, Extra::new(), s)),
        };
        Ok(found.map(|(meta, extra, state)| Session {
            id: id.to_owned(),
            meta,
            extra,
            state,
        }))
    }

    /// A session's state; `None` when the session has none, or does not exist.
    pub async fn state(&self, id: &str) -> Result<Option<State>> {
        self.open_db()?.state(id).await
    }

    /// Replace a session's state now (not batched), validated as jsonb validates it:
    /// what jsonb refuses (`\u0000`, for one) is refused and nothing is written. Accepts a
    /// `serde_json::Value`, raw JSON text, or a [`State`].
    ///
    /// Writes that go through [`Store::progress`] for the same session may still be
    /// pending: call [`Store::flush`] first when the order between the two matters.
    pub async fn put_state(&self, id: &str, state: impl Into<StateInput>) -> Result<()> {
        let s = state_of(id, state)?;
        match self.open_db()? {
            Db::Postgres(p) => p.put_state(id, &s, now()).await,
            Db::Sqlite(q) => q.put_state(id, s, now()).await,
            Db::Json(j) => Err(j.read_only("put_state")),
        }
    }

    /// Change metadata fields (and `updated_at`); returns the session's metadata after.
    pub async fn update_meta(&self, id: &str, patch: MetaPatch) -> Result<SessionSummary> {
        check_text(id, "status", &patch.status)?;
        check_text(id, "current_step", &patch.current_step)?;
        check_cost(id, patch.cost)?;
        let (meta, extra) = match self.open_db()? {
            Db::Postgres(p) => p.update_meta(id, &patch, now()).await?,
            Db::Sqlite(s) => s.update_meta(id, patch, now()).await?,
            Db::Json(j) => return Err(j.read_only("update_meta")),
        };
        Ok(SessionSummary {
            id: id.to_owned(),
            meta,
            extra,
        })
    }

    /// One page of sessions in id order (keyset paging: pass the last id seen).
    pub async fn list(&self, page: Page) -> Result<Vec<SessionSummary>> {
        let page = Page {
            limit: page.limit.min(Page::MAX_LIMIT),
            ..page
        };
        match self.open_db()? {
            Db::Postgres(p) => p.list(&page).await,
            Db::Sqlite(s) => s.list(page).await,
            Db::Json(j) => j.list(&page),
        }
    }

    /// A progress update: the session's whole new state, written later, coalesced with
    /// the other updates of its window (see [`BatchOptions`]). Returns at once; the
    /// [`Receipt`] can wait for the write. The state is validated here: an invalid
    /// state is refused now and never queued.
    ///
    /// ```no_run
    /// # async fn demo(store: sessiondb::store::Store) -> sessiondb::store::Result<()> {
    /// use serde_json::json;
    /// store.progress("s-1", json!({"step": 3}))?; // fire and forget
    /// store.progress("s-1", json!({"step": 4}))?.durable().await?; // wait for it
    /// # Ok(()) }
    /// ```
    pub fn progress(&self, id: &str, state: impl Into<StateInput>) -> Result<Receipt> {
        if let Db::Json(j) = self.open_db()? {
            return Err(j.read_only("progress"));
        }
        let s = state_of(id, state)?;
        self.inner.batcher.submit(id, s)
    }

    /// A progress update as a JSON merge patch (RFC 7396) on the session's current
    /// state, applied in the order the updates arrive: concurrent patches from several
    /// tasks all land. The current state is read once when the session has nothing
    /// pending, then patched in memory; writes to the same session by other means
    /// meanwhile are overwritten.
    pub fn progress_merge(&self, id: &str, patch: serde_json::Value) -> Result<Receipt> {
        if let Db::Json(j) = self.open_db()? {
            return Err(j.read_only("progress"));
        }
        // Refuse what can never be part of a valid state before queueing it.
        state_of(id, &patch)?;
        self.inner.batcher.submit_patch(id, patch)
    }

    /// Write every pending progress update now and wait until each is written or has
    /// failed for good. Returns the failures surfaced since the last flush.
    pub async fn flush(&self) -> Result<()> {
        self.inner.batcher.flush().await
    }

    /// Flush, then close: later calls fail with [`Error::Closed`]. Dropping the last
    /// handle without closing writes what is pending in the background, best effort.
    pub async fn close(&self) -> Result<()> {
        let r = self.inner.batcher.close().await;
        self.inner.closed.store(true, Ordering::Release);
        if let Db::Postgres(p) = &*self.inner.db {
            p.close();
        }
        r
    }

    /// The progress writer's counters.
    pub fn progress_stats(&self) -> ProgressStats {
        self.inner.batcher.stats()
    }

    /// Progress failures as they are surfaced (after their retries).
    pub fn subscribe_failures(&self) -> tokio::sync::broadcast::Receiver<Arc<ProgressFailure>> {
        self.inner.batcher.subscribe()
    }
}
