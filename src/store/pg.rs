//! The PostgreSQL backend: a deadpool pool of `pool_size + max_overflow` connections,
//! verified on checkout, with a bounded acquire timeout; writes go to `sessions` and
//! `session_state` in one statement or transaction.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};

use super::error::{Error, Result};
use super::state::State;
use super::{Meta, MetaPatch, Page, PoolStats, SessionSummary, ValidNew};
use crate::config::{PostgresSettings, Target};
use crate::error::Error as CrateError;
use crate::pg::{qualified, schema};
use crate::redact;

/// Idle connections beyond `pool_size` are closed after this long unused (the overflow).
const OVERFLOW_IDLE: Duration = Duration::from_secs(30);

pub(crate) struct PgStore {
    pool: Pool,
    /// The redacted URL, for messages.
    target: String,
    /// The whole target, to type a failed connection (`tls_failed`...) as `connect` does.
    conn_target: Target,
    pool_size: u32,
    max_overflow: u32,
    acquire_timeout: Duration,
    sql: Sql,
    reaper: tokio::task::JoinHandle<()>,
}

/// The statements, with the configured schema quoted in.
struct Sql {
    get: String,
    state: String,
    insert_session: String,
    insert_state: String,
    put_state: String,
    write_states: String,
    update_meta: String,
    list: String,
}

impl Sql {
    fn new(schema: &str) -> Sql {
        let sessions = qualified(schema, "sessions");
        let state = qualified(schema, "session_state");
        Sql {
            get: format!(
                "SELECT s.user_id, s.status, s.current_step, s.cost, s.created_at, s.updated_at, st.state::text
                   FROM {sessions} s LEFT JOIN {state} st ON st.session_id OPERATOR(pg_catalog.=) s.id
                  WHERE s.id OPERATOR(pg_catalog.=) $1::text"
            ),
            state: format!(
                "SELECT state::text FROM {state} WHERE session_id OPERATOR(pg_catalog.=) $1::text"
            ),
            insert_session: format!(
                "INSERT INTO {sessions} (id, user_id, status, current_step, cost, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING"
            ),
            insert_state: format!(
                "INSERT INTO {state} (session_id, state, updated_at) VALUES ($1, $2::text::jsonb, $3)"
            ),
            put_state: format!(
                "WITH s AS (UPDATE {sessions} SET updated_at = $3 WHERE id OPERATOR(pg_catalog.=) $1::text RETURNING id)
                 INSERT INTO {state} AS t (session_id, state, updated_at)
                      SELECT s.id, $2::text::jsonb, $3 FROM s
                 ON CONFLICT (session_id) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at"
            ),
            write_states: format!(
                "WITH input AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS u(id, state)),
                      s AS (UPDATE {sessions} t SET updated_at = $3 FROM input WHERE t.id OPERATOR(pg_catalog.=) input.id RETURNING t.id)
                 INSERT INTO {state} AS t (session_id, state, updated_at)
                      SELECT input.id, input.state::jsonb, $3 FROM input JOIN s ON s.id OPERATOR(pg_catalog.=) input.id
                 ON CONFLICT (session_id) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
                 RETURNING t.session_id"
            ),
            update_meta: format!(
                "UPDATE {sessions} SET status = coalesce($2, status), current_step = coalesce($3, current_step),
                        cost = coalesce($4, cost), updated_at = $5
                  WHERE id OPERATOR(pg_catalog.=) $1::text RETURNING user_id, status, current_step, cost, created_at, updated_at"
            ),
            // Ids compare bytewise ("C"), as SQLite and the JSON store order them.
            list: format!(
                "SELECT id, user_id, status, current_step, cost, created_at, updated_at FROM {sessions}
                  WHERE $1::text IS NULL OR id COLLATE pg_catalog.\"C\" OPERATOR(pg_catalog.>) $1::text
                  ORDER BY id COLLATE pg_catalog.\"C\" LIMIT $2"
            ),
        }
    }
}

/// `postgres::Config` wraps the async driver's config without giving it back: copy it.
fn async_config(pg: &postgres::Config) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    if let Some(u) = pg.get_user() {
        c.user(u);
    }
    if let Some(p) = pg.get_password() {
        c.password(p);
    }
    if let Some(d) = pg.get_dbname() {
        c.dbname(d);
    }
    if let Some(o) = pg.get_options() {
        c.options(o);
    }
    if let Some(a) = pg.get_application_name() {
        c.application_name(a);
    }
    for h in pg.get_hosts() {
        match h {
            postgres::config::Host::Tcp(s) => c.host(s),
            postgres::config::Host::Unix(p) => c.host_path(p),
        };
    }
    for a in pg.get_hostaddrs() {
        c.hostaddr(*a);
    }
    for p in pg.get_ports() {
        c.port(*p);
    }
    if let Some(t) = pg.get_connect_timeout() {
        c.connect_timeout(*t);
    }
    c.keepalives(pg.get_keepalives());
    c.keepalives_idle(pg.get_keepalives_idle());
    c.ssl_mode(pg.get_ssl_mode());
    c.ssl_negotiation(pg.get_ssl_negotiation());
    c.target_session_attrs(pg.get_target_session_attrs());
    c.channel_binding(pg.get_channel_binding());
    c
}

fn pg_err(context: &str, target: &str, e: tokio_postgres::Error) -> Error {
    let mapped = match CrateError::pg(context, target, e) {
        CrateError::Database { context, message } => CrateError::Database {
            context,
            message: redact::text(&message),
        },
        CrateError::PostgresUnreachable { target, message } => CrateError::PostgresUnreachable {
            target,
            message: redact::text(&message),
        },
        other => other,
    };
    Error::Backend(mapped)
}

impl PgStore {
    pub(crate) async fn open(
        target: &Target,
        settings: &PostgresSettings,
        acquire_timeout: Duration,
        apply_schema: bool,
    ) -> Result<PgStore> {
        prepare_schema(target, settings, apply_schema).await?;
        let cfg = async_config(&target.pg);
        let tls = crate::pg::tls::connector(target)?;
        let mgr = Manager::from_config(
            cfg,
            tls,
            ManagerConfig {
                // A test query on every checkout: a connection the server dropped is
                // replaced before the application sees it.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let max = (settings.pool_size as usize + settings.max_overflow as usize).max(1);
        let connect = target
            .pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        let pool = Pool::builder(mgr)
            .max_size(max)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(acquire_timeout))
            .create_timeout(Some(connect))
            .recycle_timeout(Some(connect))
            .build()
            .map_err(|e| {
                Error::Backend(CrateError::Database {
                    context: "building the connection pool".into(),
                    message: e.to_string(),
                })
            })?;
        let reaper = tokio::spawn(reap_overflow(pool.clone(), settings.pool_size as usize));
        let store = PgStore {
            pool,
            target: target.display.clone(),
            conn_target: target.clone(),
            pool_size: settings.pool_size,
            max_overflow: settings.max_overflow,
            acquire_timeout,
            sql: Sql::new(&settings.schema),
            reaper,
        };
        // Fail at open, not at the first request, when the server cannot be reached.
        let c = store.conn().await?;
        drop(c);
        Ok(store)
    }

    async fn conn(&self) -> Result<Object> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Timeout(TimeoutType::Wait) => Error::PoolExhausted {
                target: self.target.clone(),
                waited: self.acquire_timeout,
                max: self.pool.status().max_size,
                pool_size: self.pool_size,
                max_overflow: self.max_overflow,
            },
            PoolError::Timeout(_) => Error::Backend(CrateError::PostgresUnreachable {
                target: self.target.clone(),
                message: "timed out connecting".into(),
            }),
            PoolError::Backend(e) => Error::Backend(crate::pg::connect_error(&self.conn_target, e)),
            PoolError::Closed => Error::Closed,
            other => Error::Backend(CrateError::PostgresUnreachable {
                target: self.target.clone(),
                message: redact::text(&other.to_string()),
            }),
        })
    }

    pub(crate) fn display(&self) -> &str {
        &self.target
    }

    pub(crate) fn pool_stats(&self) -> PoolStats {
        let s = self.pool.status();
        PoolStats {
            max_size: s.max_size,
            size: s.size,
            available: s.available,
            waiting: s.waiting,
            pool_size: self.pool_size,
            max_overflow: self.max_overflow,
        }
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        let c = self.conn().await?;
        c.simple_query("SELECT 1")
            .await
            .map_err(|e| pg_err("checking health", &self.target, e))?;
        Ok(())
    }

    pub(crate) async fn create(&self, n: &ValidNew) -> Result<()> {
        let mut c = self.conn().await?;
        let err = |e| pg_err("creating a session", &self.target, e);
        let tx = c.transaction().await.map_err(err)?;
        let ins = tx
            .prepare_cached(&self.sql.insert_session)
            .await
            .map_err(err)?;
        let rows = tx
            .execute(
                &ins,
                &[
                    &n.id,
                    &n.meta.user_id,
                    &n.meta.status,
                    &n.meta.current_step,
                    &n.meta.cost,
                    &n.meta.created_at,
                    &n.meta.updated_at,
                ],
            )
            .await
            .map_err(err)?;
        if rows == 0 {
            return Err(Error::AlreadyExists { id: n.id.clone() });
        }
        if let Some(s) = &n.state {
            let st = tx
                .prepare_cached(&self.sql.insert_state)
                .await
                .map_err(err)?;
            tx.execute(&st, &[&n.id, &s.as_str(), &n.meta.updated_at])
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(())
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<(Meta, Option<State>)>> {
        let c = self.conn().await?;
        let err = |e| pg_err("reading a session", &self.target, e);
        let st = c.prepare_cached(&self.sql.get).await.map_err(err)?;
        let row = c.query_opt(&st, &[&id]).await.map_err(err)?;
        Ok(row.map(|r| {
            (
                Meta {
                    user_id: r.get(0),
                    status: r.get(1),
                    current_step: r.get(2),
                    cost: r.get(3),
                    created_at: r.get(4),
                    updated_at: r.get(5),
                },
                r.get::<_, Option<String>>(6).map(State::from_canonical),
            )
        }))
    }

    pub(crate) async fn state(&self, id: &str) -> Result<Option<State>> {
        let c = self.conn().await?;
        let err = |e| pg_err("reading a state", &self.target, e);
        let st = c.prepare_cached(&self.sql.state).await.map_err(err)?;
        let row = c.query_opt(&st, &[&id]).await.map_err(err)?;
        Ok(row.map(|r| State::from_canonical(r.get(0))))
    }

    pub(crate) async fn put_state(&self, id: &str, s: &State, at: DateTime<Utc>) -> Result<()> {
        let c = self.conn().await?;
        let err = |e| pg_err("writing a state", &self.target, e);
        let st = c.prepare_cached(&self.sql.put_state).await.map_err(err)?;
        let n = c
            .execute(&st, &[&id, &s.as_str(), &at])
            .await
            .map_err(err)?;
        if n == 0 {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        Ok(())
    }

    /// Write many states in one statement; the ids that are not sessions come back as
    /// `NotFound`.
    pub(crate) async fn write_states(
        &self,
        items: &[(&str, &State)],
        at: DateTime<Utc>,
    ) -> Result<Vec<Option<Error>>> {
        let c = self.conn().await?;
        let err = |e| pg_err("writing progress", &self.target, e);
        let ids: Vec<&str> = items.iter().map(|(i, _)| *i).collect();
        let states: Vec<&str> = items.iter().map(|(_, s)| s.as_str()).collect();
        let st = c
            .prepare_cached(&self.sql.write_states)
            .await
            .map_err(err)?;
        let rows = c.query(&st, &[&ids, &states, &at]).await.map_err(err)?;
        let written: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(ids
            .iter()
            .map(|id| {
                (!written.contains(*id)).then(|| Error::NotFound {
                    id: (*id).to_owned(),
                })
            })
            .collect())
    }

    pub(crate) async fn update_meta(
        &self,
        id: &str,
        p: &MetaPatch,
        at: DateTime<Utc>,
    ) -> Result<Meta> {
        let c = self.conn().await?;
        let err = |e| pg_err("updating a session", &self.target, e);
        let st = c.prepare_cached(&self.sql.update_meta).await.map_err(err)?;
        let row = c
            .query_opt(&st, &[&id, &p.status, &p.current_step, &p.cost, &at])
            .await
            .map_err(err)?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        Ok(Meta {
            user_id: row.get(0),
            status: row.get(1),
            current_step: row.get(2),
            cost: row.get(3),
            created_at: row.get(4),
            updated_at: row.get(5),
        })
    }

    pub(crate) async fn list(&self, page: &Page) -> Result<Vec<SessionSummary>> {
        let c = self.conn().await?;
        let err = |e| pg_err("listing sessions", &self.target, e);
        let st = c.prepare_cached(&self.sql.list).await.map_err(err)?;
        let limit = page.limit as i64;
        let rows = c.query(&st, &[&page.after, &limit]).await.map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| SessionSummary {
                id: r.get(0),
                meta: Meta {
                    user_id: r.get(1),
                    status: r.get(2),
                    current_step: r.get(3),
                    cost: r.get(4),
                    created_at: r.get(5),
                    updated_at: r.get(6),
                },
            })
            .collect())
    }

    pub(crate) fn close(&self) {
        self.reaper.abort();
        self.pool.close();
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

/// Close overflow connections: keep `pool_size` idle connections, drop the others once
/// they sat unused for [`OVERFLOW_IDLE`].
async fn reap_overflow(pool: Pool, keep: usize) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let kept = AtomicUsize::new(0);
        pool.retain(|_, m| {
            kept.fetch_add(1, Ordering::Relaxed) < keep || m.last_used() < OVERFLOW_IDLE
        });
    }
}

/// Check the schema; apply pending versions when asked (a fresh database). A schema
/// edited since it was applied, or applied by a newer sessiondb, is refused.
async fn prepare_schema(target: &Target, settings: &PostgresSettings, apply: bool) -> Result<()> {
    let target = target.clone();
    let schema_name = settings.schema.clone();
    let opclass = settings.gin_opclass.as_sql();
    let run = tokio::task::spawn_blocking(move || -> crate::error::Result<()> {
        let mut c = crate::pg::connect(&target)?;
        let st = schema::status(&mut c, &schema_name)?;
        if let Some(p) = st.problems() {
            return Err(CrateError::SchemaVersions { message: p });
        }
        if st.pending.is_empty() || (!apply && st.pending_for_store().is_empty()) {
            return Ok(());
        }
        if !apply {
            return Err(CrateError::SchemaPending {
                message: format!(
                    "schema version(s) {:?} are not applied on {}: run `sessiondb migrate-state --dry-run=false` or open the store with apply_schema",
                    st.pending_for_store(),
                    target.display
                ),
            });
        }
        let mut tx = c
            .transaction()
            .map_err(|e| CrateError::pg("starting a transaction", &target.display, e))?;
        tx.batch_execute("SET LOCAL lock_timeout = '10s'")
            .map_err(|e| CrateError::pg("setting lock_timeout", &target.display, e))?;
        let run_id = uuid::Uuid::new_v4().to_string();
        let applied = schema::apply(&mut tx, &schema_name, &run_id);
        let applied = match applied {
            Ok(v) => {
                schema::ensure_gin_index(&mut tx, &schema_name, opclass)?;
                tx.commit()
                    .map_err(|e| CrateError::pg("applying the schema", &target.display, e))
                    .map(|()| v)
            }
            Err(e) => Err(e),
        };
        match applied {
            Ok(v) => {
                tracing::info!(versions = ?v, "applied the session store schema on {}", target.display);
                Ok(())
            }
            // Another process may have applied it at the same moment: fine if it is now.
            Err(e) => {
                let mut c = crate::pg::connect(&target)?;
                let st = schema::status(&mut c, &schema_name)?;
                if st.pending.is_empty() && st.problems().is_none() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    });
    run.await
        .map_err(|e| {
            Error::Backend(CrateError::Database {
                context: "checking the schema".into(),
                message: e.to_string(),
            })
        })?
        .map_err(Error::Backend)
}
