//! The PostgreSQL backend: a deadpool pool of `pool_size + max_overflow` connections,
//! verified on checkout, with a bounded acquire timeout; writes go to `sessions` and
//! `session_state` in one statement or transaction.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};

use postgres::types::ToSql;

use super::error::{Error, Result};
use super::layout::{self, Col, Extra, FieldWrites, Fk, Layout, RowValues, TableModel};
use super::state::State;
use super::{Meta, MetaPatch, Page, PoolStats, SessionSummary, ValidNew};
use crate::config::{AppSchema, DEFAULT_TABLE, PostgresSettings, Target};
use crate::error::Error as CrateError;
use crate::pg::catalog::{self, TargetTable};
use crate::pg::{ident, qualified, schema};
use crate::redact;
use crate::source::fields::Raw;
use crate::source::shape::{Field, Mode};
use crate::value::sqlite::Form;
use crate::value::{PgType, Value};

/// Where state lives (SPEC §2; the application's ORM makes the same table).
const STATE_TABLE: &str = "session_state";

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
    schema: String,
    layout: Layout,
    state: StateTable,
    sql: Sql,
    reaper: tokio::task::JoinHandle<()>,
}

/// Where a session's state lives on PostgreSQL: `session_state (session_id, state,
/// updated_at)`, as sessiondb or the application made it.
#[derive(Debug, Clone)]
struct StateTable {
    name: String,
    session_id: String,
    state: String,
    /// `json` or `jsonb`.
    state_ty: PgType,
    /// Its `updated_at`, filled on every write (absent: not stamped).
    updated: Option<Col>,
}

/// The statements, built from the layout with the configured schema quoted in.
struct Sql {
    /// The read list of `get`: the six metadata columns of `s` (NULL for an absent
    /// one), the state of `st` as text, then the extras.
    get: String,
    state: String,
    /// `s.id` and the read list with a NULL state (no join), for `list`.
    list: String,
    /// What an INSERT or UPDATE of the sessions table returns: the read list with a
    /// NULL state, unqualified.
    returning: String,
    insert_state: String,
    write_states: String,
    /// `(SELECT ... FROM input JOIN s ...)`: whether `$3` / `$4` (the two updated_at)
    /// are bound.
    stamps: (bool, bool),
}

impl Sql {
    fn new(schema: &str, l: &Layout, st: &StateTable) -> Sql {
        let sessions = qualified(schema, &l.sessions.name);
        let state_t = qualified(schema, &st.name);
        let id = ident(l.id_col());
        let (sid, scol) = (ident(&st.session_id), ident(&st.state));
        let sty = st.state_ty.sql();
        let (fields, extras) = l.read_columns();
        let cols = |prefix: &str, state: &str| {
            let mut v: Vec<String> = fields
                .iter()
                .map(|c| match c {
                    Some(c) => format!("{prefix}{}", ident(&c.name)),
                    None => "NULL".into(),
                })
                .collect();
            v.push(state.to_owned());
            v.extend(extras.iter().map(|c| format!("{prefix}{}", ident(&c.name))));
            v.join(", ")
        };
        let get_list = cols("s.", &format!("st.{scol}::pg_catalog.text"));
        let page_list = cols("s.", "NULL::pg_catalog.text");
        let returning = cols("", "NULL::pg_catalog.text");
        let upd = l
            .field_col(Field::UpdatedAt)
            .map(|c| &l.sessions.cols[l.sessions.index(c).expect("mapped columns exist")]);
        let s_cte = match upd {
            Some(c) => format!(
                "UPDATE {sessions} t SET {} = $3::{} FROM input WHERE t.{id} OPERATOR(pg_catalog.=) input.id RETURNING t.{id} AS id",
                ident(&c.name),
                c.ty.sql()
            ),
            // No updated_at to stamp: the row is only locked against a delete.
            None => format!(
                "SELECT t.{id} AS id FROM {sessions} t JOIN input ON t.{id} OPERATOR(pg_catalog.=) input.id FOR KEY SHARE OF t"
            ),
        };
        let n_st = if upd.is_some() { 4 } else { 3 };
        let (st_cols, st_vals, st_set) = match &st.updated {
            Some(c) => (
                format!("{sid}, {scol}, {}", ident(&c.name)),
                format!("input.id, input.state::{sty}, ${n_st}::{}", c.ty.sql()),
                format!(
                    "{scol} = EXCLUDED.{scol}, {u} = EXCLUDED.{u}",
                    u = ident(&c.name)
                ),
            ),
            None => (
                format!("{sid}, {scol}"),
                format!("input.id, input.state::{sty}"),
                format!("{scol} = EXCLUDED.{scol}"),
            ),
        };
        let insert_state = match &st.updated {
            Some(c) => format!(
                "INSERT INTO {state_t} ({sid}, {scol}, {}) VALUES ($1::pg_catalog.text, $2::pg_catalog.text::{sty}, $3::{}) ON CONFLICT ({sid}) DO NOTHING",
                ident(&c.name),
                c.ty.sql()
            ),
            None => format!(
                "INSERT INTO {state_t} ({sid}, {scol}) VALUES ($1::pg_catalog.text, $2::pg_catalog.text::{sty}) ON CONFLICT ({sid}) DO NOTHING"
            ),
        };
        Sql {
            get: format!(
                "SELECT {get_list}
                   FROM {sessions} s LEFT JOIN {state_t} st ON st.{sid} OPERATOR(pg_catalog.=) s.{id}
                  WHERE s.{id} OPERATOR(pg_catalog.=) $1::pg_catalog.text"
            ),
            state: format!(
                "SELECT {scol}::pg_catalog.text FROM {state_t} WHERE {sid} OPERATOR(pg_catalog.=) $1::pg_catalog.text"
            ),
            // Ids compare bytewise ("C"), as SQLite and the JSON store order them.
            list: format!(
                "SELECT s.{id}::pg_catalog.text, {page_list} FROM {sessions} s
                  WHERE $1::pg_catalog.text IS NULL OR s.{id} COLLATE pg_catalog.\"C\" OPERATOR(pg_catalog.>) $1::pg_catalog.text
                  ORDER BY s.{id} COLLATE pg_catalog.\"C\" LIMIT $2"
            ),
            returning,
            insert_state,
            write_states: format!(
                "WITH input AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[])) AS u(id, state)),
                      s AS ({s_cte})
                 INSERT INTO {state_t} AS t ({st_cols})
                      SELECT {st_vals} FROM input JOIN s ON s.id OPERATOR(pg_catalog.=) input.id
                 ON CONFLICT ({sid}) DO UPDATE SET {st_set}
                 RETURNING t.{sid}::pg_catalog.text"
            ),
            stamps: (upd.is_some(), st.updated.is_some()),
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
        app: &AppSchema,
        config: &Path,
        acquire_timeout: Duration,
        apply_schema: bool,
    ) -> Result<PgStore> {
        let Prepared { layout, state } =
            prepare(target, settings, app, config, apply_schema).await?;
        tracing::info!(
            "session store: {} in schema {:?}, state in {:?}",
            layout.summary(),
            settings.schema,
            state.name
        );
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
            sql: Sql::new(&settings.schema, &layout, &state),
            schema: settings.schema.clone(),
            layout,
            state,
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

    fn err<'a>(&'a self, context: &'a str) -> impl Fn(tokio_postgres::Error) -> Error + 'a {
        move |e| pg_err(context, &self.target, e)
    }

    /// The metadata, extras and (at `state_at`) state of a row read with a read list
    /// from column `from` on.
    fn read_row(
        &self,
        id: &str,
        r: &tokio_postgres::Row,
        from: usize,
    ) -> Result<(Meta, Extra, Option<State>)> {
        let l = &self.layout;
        let (fields, extras) = l.read_columns();
        let decode = |i: usize, c: &Col| {
            crate::value::pg::decode(r, i, &c.ty).map_err(|e| Error::InvalidRecord {
                id: id.to_owned(),
                code: "invalid_value",
                message: e.to_string(),
            })
        };
        let mut vals = Vec::with_capacity(fields.len());
        for (k, c) in fields.iter().enumerate() {
            vals.push(match c {
                Some(c) => Some(decode(from + k, c)?),
                None => None,
            });
        }
        let meta = layout::meta_from_values(id, &vals)?;
        let at = from + fields.len();
        let state = r
            .try_get::<_, Option<String>>(at)
            .map_err(|e| Error::InvalidRecord {
                id: id.to_owned(),
                code: "invalid_json",
                message: e.to_string(),
            })?;
        let state = match state {
            None => None,
            Some(t) if self.state.state_ty == PgType::Jsonb => Some(State::from_canonical(t)),
            Some(t) => Some(State::parse(t).map_err(|e| Error::InvalidRecord {
                id: id.to_owned(),
                code: e.code(),
                message: format!("{}.{}: {e}", self.state.name, self.state.state),
            })?),
        };
        let mut ev = Vec::with_capacity(extras.len());
        for (k, c) in extras.iter().enumerate() {
            ev.push(decode(at + 1 + k, c)?);
        }
        Ok((meta, layout::extra_of(&extras, ev), state))
    }

    pub(crate) async fn create(&self, n: &ValidNew) -> Result<(Meta, Extra)> {
        let l = &self.layout;
        let row = l.new_row(&n.id, &n.meta, &n.extra, FieldWrites::Typed)?;
        let plans = l.parent_plans(&n.id, &row, &n.parents, &n.at)?;
        let mut c = self.conn().await?;
        let err = self.err("creating a session");
        let tx = c.transaction().await.map_err(&err)?;
        for p in &plans {
            let parent = &l.parents[p.parent];
            let t = qualified(&self.schema, &parent.name);
            let cond = p
                .key
                .iter()
                .enumerate()
                .map(|(k, (j, _))| {
                    let col = &parent.cols[*j];
                    format!(
                        "{} OPERATOR(pg_catalog.=) ${}::{}",
                        ident(&col.name),
                        k + 1,
                        col.ty.sql()
                    )
                })
                .collect::<Vec<_>>()
                .join(" AND ");
            let args: Vec<&(dyn ToSql + Sync)> = p
                .key
                .iter()
                .map(|(_, v)| v as &(dyn ToSql + Sync))
                .collect();
            let found = tx
                .query_opt(
                    &format!("SELECT 1 FROM {t} WHERE {cond} FOR KEY SHARE"),
                    &args,
                )
                .await
                .map_err(&err)?;
            if found.is_some() {
                continue;
            }
            let Some(r) = &p.create else {
                return Err(p.not_found(&n.id, l));
            };
            let (cols, marks) = insert_lists(parent, r);
            let args: Vec<&(dyn ToSql + Sync)> =
                r.iter().map(|(_, v)| v as &(dyn ToSql + Sync)).collect();
            // Created meanwhile by someone else: theirs stands.
            tx.execute(
                &format!("INSERT INTO {t} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"),
                &args,
            )
            .await
            .map_err(&err)?;
        }
        let (cols, marks) = insert_lists(&l.sessions, &row);
        let ins = tx
            .prepare_cached(&format!(
                "INSERT INTO {} ({cols}) VALUES ({marks}) ON CONFLICT ({}) DO NOTHING RETURNING {}",
                qualified(&self.schema, &l.sessions.name),
                ident(l.id_col()),
                self.sql.returning
            ))
            .await
            .map_err(&err)?;
        let args: Vec<&(dyn ToSql + Sync)> =
            row.iter().map(|(_, v)| v as &(dyn ToSql + Sync)).collect();
        let Some(stored) = tx.query_opt(&ins, &args).await.map_err(&err)? else {
            return Err(Error::AlreadyExists { id: n.id.clone() });
        };
        let (meta, extra, _) = self.read_row(&n.id, &stored, 0)?;
        if let Some(s) = &n.state {
            let st = tx
                .prepare_cached(&self.sql.insert_state)
                .await
                .map_err(&err)?;
            let stamp = self.state_stamp(&n.id, &n.at)?;
            let text = s.as_str();
            let mut args: Vec<&(dyn ToSql + Sync)> = vec![&n.id, &text];
            if let Some(v) = &stamp {
                args.push(v);
            }
            if tx.execute(&st, &args).await.map_err(&err)? == 0 {
                return Err(Error::Backend(CrateError::Conflict {
                    message: format!(
                        "session {:?}: {}.{} already has a row for it without a session (an orphan state); it is never overwritten: remove or migrate it first",
                        n.id, self.schema, self.state.name
                    ),
                }));
            }
        }
        tx.commit().await.map_err(&err)?;
        Ok((meta, extra))
    }

    /// `session_state.updated_at` of a write at `at`, for its column's type.
    fn state_stamp(&self, id: &str, at: &DateTime<Utc>) -> Result<Option<Value>> {
        let Some(c) = &self.state.updated else {
            return Ok(None);
        };
        crate::value::convert(
            &format!("{}.{}", self.state.name, c.name),
            &Raw::Text(crate::source::fields::fmt_ts(at)),
            &c.ty,
        )
        .map(Some)
        .map_err(|e| Error::InvalidField {
            id: id.to_owned(),
            code: e.code,
            message: e.message,
        })
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<(Meta, Extra, Option<State>)>> {
        let c = self.conn().await?;
        let err = self.err("reading a session");
        let st = c.prepare_cached(&self.sql.get).await.map_err(&err)?;
        let row = c.query_opt(&st, &[&id]).await.map_err(&err)?;
        row.map(|r| self.read_row(id, &r, 0)).transpose()
    }

    pub(crate) async fn state(&self, id: &str) -> Result<Option<State>> {
        let c = self.conn().await?;
        let err = self.err("reading a state");
        let st = c.prepare_cached(&self.sql.state).await.map_err(&err)?;
        let row = c.query_opt(&st, &[&id]).await.map_err(&err)?;
        Ok(match row {
            None => None,
            Some(r) => {
                let t: String = r.get(0);
                Some(if self.state.state_ty == PgType::Jsonb {
                    State::from_canonical(t)
                } else {
                    State::parse(t).map_err(|e| Error::InvalidRecord {
                        id: id.to_owned(),
                        code: e.code(),
                        message: format!("{}.{}: {e}", self.state.name, self.state.state),
                    })?
                })
            }
        })
    }

    pub(crate) async fn put_state(&self, id: &str, s: &State, at: DateTime<Utc>) -> Result<()> {
        let r = self.write_states(&[(id, s)], at).await?;
        match r.into_iter().next().flatten() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Write many states in one statement; the ids that are not sessions come back as
    /// `NotFound`.
    pub(crate) async fn write_states(
        &self,
        items: &[(&str, &State)],
        at: DateTime<Utc>,
    ) -> Result<Vec<Option<Error>>> {
        let ids: Vec<&str> = items.iter().map(|(i, _)| *i).collect();
        let states: Vec<&str> = items.iter().map(|(_, s)| s.as_str()).collect();
        let first = ids.first().copied().unwrap_or_default();
        let upd = self
            .layout
            .updated_value(first, &at, FieldWrites::Typed)?
            .map(|(_, v)| v);
        let stamp = self.state_stamp(first, &at)?;
        let c = self.conn().await?;
        let err = self.err("writing progress");
        let st = c
            .prepare_cached(&self.sql.write_states)
            .await
            .map_err(&err)?;
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&ids, &states];
        if let (true, Some(v)) = (self.sql.stamps.0, &upd) {
            args.push(v);
        }
        if let (true, Some(v)) = (self.sql.stamps.1, &stamp) {
            args.push(v);
        }
        let rows = c.query(&st, &args).await.map_err(&err)?;
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
    ) -> Result<(Meta, Extra)> {
        let l = &self.layout;
        let row = l.patch_row(id, p, &at, FieldWrites::Typed)?;
        let c = self.conn().await?;
        let err = self.err("updating a session");
        let sessions = qualified(&self.schema, &l.sessions.name);
        let idc = ident(l.id_col());
        let sql = if row.is_empty() {
            format!(
                "SELECT {} FROM {sessions} WHERE {idc} OPERATOR(pg_catalog.=) $1::pg_catalog.text",
                self.sql.returning
            )
        } else {
            let sets = row
                .iter()
                .enumerate()
                .map(|(k, (j, _))| format!("{} = ${}", ident(&l.sessions.cols[*j].name), k + 2))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "UPDATE {sessions} SET {sets} WHERE {idc} OPERATOR(pg_catalog.=) $1::pg_catalog.text RETURNING {}",
                self.sql.returning
            )
        };
        let st = c.prepare_cached(&sql).await.map_err(&err)?;
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&id];
        args.extend(row.iter().map(|(_, v)| v as &(dyn ToSql + Sync)));
        let r = c
            .query_opt(&st, &args)
            .await
            .map_err(&err)?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        let (meta, extra, _) = self.read_row(id, &r, 0)?;
        Ok((meta, extra))
    }

    pub(crate) async fn list(&self, page: &Page) -> Result<Vec<SessionSummary>> {
        let c = self.conn().await?;
        let err = self.err("listing sessions");
        let st = c.prepare_cached(&self.sql.list).await.map_err(&err)?;
        let limit = page.limit as i64;
        let rows = c.query(&st, &[&page.after, &limit]).await.map_err(&err)?;
        rows.iter()
            .map(|r| {
                let id: String = r.get(0);
                let (meta, extra, _) = self.read_row(&id, r, 1)?;
                Ok(SessionSummary { id, meta, extra })
            })
            .collect()
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

/// What `prepare` found: the layout of the application's tables and where state lives.
struct Prepared {
    layout: Layout,
    state: StateTable,
}

fn mismatch(table: &str, column: Option<&str>, message: String, fix: String) -> CrateError {
    CrateError::SchemaMismatch {
        table: table.to_owned(),
        column: column.map(str::to_owned),
        message,
        fix,
    }
}

/// Whether the target's sessions table is SPEC §2's (SPEC §1's columns, no foreign
/// key) and the config maps nothing: the default layout. Else the application's own.
fn is_default(app: &AppSchema, tables: &BTreeMap<String, TargetTable>) -> bool {
    app.customised().is_empty()
        && tables.get(DEFAULT_TABLE).is_none_or(|t| {
            t.columns.iter().all(|c| Field::parse(&c.name).is_some()) && t.foreign_keys.is_empty()
        })
}

fn model_of(t: &TargetTable, skip: &[String]) -> std::result::Result<TableModel, CrateError> {
    let mut cols = Vec::new();
    for c in &t.columns {
        let skipped = skip.iter().any(|s| s.eq_ignore_ascii_case(&c.name));
        match &c.ty {
            Ok(ty) => cols.push(Col {
                name: c.name.clone(),
                ty: ty.clone(),
                not_null: c.not_null,
                defaulted: c.default.is_some() || c.server_filled,
                // Identity and generated columns: the server's to fill.
                generated: c.server_filled,
                form: Form::default(),
            }),
            // A column the store never writes nor reads can be of any type, as long
            // as a row may leave it out.
            Err(_) if skipped && c.optional() => {}
            Err(e) => {
                return Err(mismatch(
                    &t.name,
                    Some(&c.name),
                    format!("{}.{}: {e}", t.name, c.name),
                    format!(
                        "change the column's type, or (a column of the sessions table that may be left out) list {:?} in sqlite.ignore_columns",
                        c.name
                    ),
                ));
            }
        }
    }
    Ok(TableModel {
        name: t.name.clone(),
        cols,
        nocase: false,
    })
}

/// The layout of the target's tables for the runtime store: the sessions table
/// (`sqlite.table`) with the mapping resolved against its columns, its extras, the
/// parent tables its foreign keys reference (in the same schema), and `session_state`.
fn layout_of(
    schema: &str,
    tables: &BTreeMap<String, TargetTable>,
    app: &AppSchema,
    config: &Path,
    default: bool,
) -> crate::error::Result<Prepared> {
    let fix_tables = "create the application's tables first: start the application once against PostgreSQL so that its ORM creates them, or load them with sessiondb migrate-state".to_owned();
    let t = tables
        .get(&app.table)
        .filter(|t| t.is_table())
        .ok_or_else(|| {
            mismatch(
                &app.table,
                None,
                format!("the target schema {schema:?} has no table {:?}", app.table),
                fix_tables.clone(),
            )
        })?;
    let ignored = &app.ignore_columns;
    let mut fields = BTreeMap::new();
    let mut state_col = None;
    for f in Field::ALL {
        let col = match app.columns.get(&f).map(String::as_str) {
            Some("") => None,
            Some(name) => Some(
                t.column(name)
                    .ok_or_else(|| CrateError::MappingInvalid {
                        config: config.to_path_buf(),
                        key: format!("[sqlite.columns] {f}"),
                        message: format!(
                            "the target table {schema}.{} has no column {name:?} (its columns: {})",
                            t.name,
                            t.columns
                                .iter()
                                .map(|c| c.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })?
                    .name
                    .clone(),
            ),
            None => t
                .column(f.name())
                .filter(|c| !ignored.iter().any(|i| i.eq_ignore_ascii_case(&c.name)))
                .map(|c| c.name.clone()),
        };
        match (f, col) {
            (Field::State, c) => state_col = c,
            (_, Some(c)) => {
                fields.insert(f, c);
            }
            (_, None) => {}
        }
    }
    let Some(id) = fields.get(&Field::Id).cloned() else {
        return Err(CrateError::MappingInvalid {
            config: config.to_path_buf(),
            key: "[sqlite.columns] id".into(),
            message: format!(
                "the target table {schema}.{} has no column \"id\"; map id to the column that holds the session's id",
                t.name
            ),
        });
    };
    let mut skip: Vec<String> = ignored.clone();
    skip.extend(state_col.clone());
    let sessions = model_of(t, &skip)?;
    let id_ty = sessions.col(&id).map(|c| c.ty.clone());
    if !id_ty.as_ref().is_some_and(PgType::is_text) {
        return Err(mismatch(
            &t.name,
            Some(&id),
            format!(
                "the runtime store needs the session id column to hold text; it is {}",
                id_ty
                    .map(|t| t.sql())
                    .unwrap_or_else(|| "of an unsupported type".into())
            ),
            "make it text or character varying".into(),
        ));
    }
    if !t.has_key(std::slice::from_ref(&id)) {
        return Err(mismatch(
            &t.name,
            Some(&id),
            format!("no primary key or unique index on ({id})"),
            format!("add one: ALTER TABLE {} ADD PRIMARY KEY ({id})", t.name),
        ));
    }
    let extras = sessions
        .cols
        .iter()
        .filter(|c| {
            !fields.values().any(|f| f == &c.name)
                && !skip.iter().any(|s| s.eq_ignore_ascii_case(&c.name))
        })
        .map(|c| c.name.clone())
        .collect();
    let mut parents: Vec<TableModel> = Vec::new();
    let mut fks = Vec::new();
    for fk in &t.foreign_keys {
        // A parent in another schema is left to PostgreSQL's own check.
        let Some(pt) = tables
            .get(&fk.parent)
            .filter(|_| fk.parent_schema == schema)
        else {
            continue;
        };
        let idx = match parents.iter().position(|p| p.name == pt.name) {
            Some(i) => i,
            None => {
                parents.push(model_of(pt, &[])?);
                parents.len() - 1
            }
        };
        fks.push(Fk {
            columns: fk.columns.clone(),
            parent: idx,
            parent_columns: fk.parent_columns.clone(),
        });
    }
    let st = tables
        .get(STATE_TABLE)
        .filter(|t| t.is_table())
        .ok_or_else(|| {
            mismatch(
                STATE_TABLE,
                None,
                format!(
                    "the target schema {schema:?} has no table {STATE_TABLE:?}, where the store keeps each session's state"
                ),
                fix_tables.clone(),
            )
        })?;
    let need = |name: &str| {
        st.column(name).ok_or_else(|| {
            mismatch(
                STATE_TABLE,
                Some(name),
                format!("{STATE_TABLE} has no column {name:?}"),
                format!("{STATE_TABLE} needs (session_id, state jsonb, updated_at)"),
            )
        })
    };
    let (sid, scol) = (need("session_id")?, need("state")?);
    let state_ty = match &scol.ty {
        Ok(t @ (PgType::Jsonb | PgType::Json)) => t.clone(),
        _ => {
            return Err(mismatch(
                STATE_TABLE,
                Some(&scol.name),
                format!("{STATE_TABLE}.state is {}, not jsonb", scol.format_type),
                "make it jsonb".into(),
            ));
        }
    };
    if !sid.ty.as_ref().is_ok_and(PgType::is_text) {
        return Err(mismatch(
            STATE_TABLE,
            Some(&sid.name),
            format!("{STATE_TABLE}.session_id is {}, not text", sid.format_type),
            "make it text or character varying".into(),
        ));
    }
    if !st.has_key(std::slice::from_ref(&sid.name)) {
        return Err(mismatch(
            STATE_TABLE,
            Some(&sid.name),
            format!("no primary key or unique index on {STATE_TABLE} (session_id)"),
            format!("add one: ALTER TABLE {STATE_TABLE} ADD PRIMARY KEY (session_id)"),
        ));
    }
    let updated = match st.column("updated_at") {
        None => None,
        Some(c) => match &c.ty {
            Ok(ty) => Some(Col {
                name: c.name.clone(),
                ty: ty.clone(),
                not_null: c.not_null,
                defaulted: c.default.is_some(),
                generated: false,
                form: Form::default(),
            }),
            Err(e) => {
                return Err(mismatch(
                    STATE_TABLE,
                    Some(&c.name),
                    e.to_string(),
                    "make it a timestamp".into(),
                ));
            }
        },
    };
    if let Some(other) = st.columns.iter().find(|c| {
        !c.optional()
            && ![sid.name.as_str(), scol.name.as_str(), "updated_at"].contains(&c.name.as_str())
    }) {
        return Err(mismatch(
            STATE_TABLE,
            Some(&other.name),
            format!(
                "{STATE_TABLE}.{} is NOT NULL without a default, and the store writes only session_id, state and updated_at",
                other.name
            ),
            "give it a default, or allow NULL".into(),
        ));
    }
    Ok(Prepared {
        layout: Layout {
            mode: if default { Mode::Default } else { Mode::Mapped },
            sessions,
            fields,
            state: None,
            extras,
            fks,
            parents,
            fill: app.fill.clone(),
        },
        state: StateTable {
            name: st.name.clone(),
            session_id: sid.name.clone(),
            state: scol.name.clone(),
            state_ty,
            updated,
        },
    })
}

/// `(a, b, c)` and `($1, $2, $3)` of a row to insert.
fn insert_lists(t: &TableModel, row: &RowValues) -> (String, String) {
    let cols = row
        .iter()
        .map(|(j, _)| ident(&t.cols[*j].name))
        .collect::<Vec<_>>()
        .join(", ");
    let marks = (1..=row.len())
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ");
    (cols, marks)
}

/// Check the schema; apply pending versions when asked (a fresh database). A schema
/// edited since it was applied, or applied by a newer sessiondb, is refused.
async fn prepare(
    target: &Target,
    settings: &PostgresSettings,
    app: &AppSchema,
    config: &Path,
    apply: bool,
) -> Result<Prepared> {
    let target = target.clone();
    let schema_name = settings.schema.clone();
    let opclass = settings.gin_opclass.as_sql();
    let (app, config) = (app.clone(), config.to_path_buf());
    let run = tokio::task::spawn_blocking(move || -> crate::error::Result<Prepared> {
        if app.customised().is_empty() {
            // SPEC §2's schema, applied on a fresh database as it always was (tables
            // the application made already are left as they are).
            prepare_default(&target, &schema_name, opclass, apply)?;
        } else {
            // The application's own tables: used as they are, nothing applied; a
            // sessiondb schema there must still be one this version knows.
            let mut c = crate::pg::connect(&target)?;
            let st = schema::status(&mut c, &schema_name)?;
            if let Some(p) = st.problems() {
                return Err(CrateError::SchemaVersions { message: p });
            }
        }
        let mut c = crate::pg::connect(&target)?;
        let tables = catalog::read_tables(&mut c, &schema_name)?;
        let default = is_default(&app, &tables);
        layout_of(&schema_name, &tables, &app, &config, default)
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

/// SPEC §2's schema: check it; apply pending versions when asked (a fresh database). A
/// schema edited since it was applied, or applied by a newer sessiondb, is refused.
fn prepare_default(
    target: &Target,
    schema_name: &str,
    opclass: &str,
    apply: bool,
) -> crate::error::Result<()> {
    {
        let mut c = crate::pg::connect(target)?;
        let st = schema::status(&mut c, schema_name)?;
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
        let applied = schema::apply(&mut tx, schema_name, &run_id);
        let applied = match applied {
            Ok(v) => {
                schema::ensure_gin_index(&mut tx, schema_name, opclass)?;
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
                let mut c = crate::pg::connect(target)?;
                let st = schema::status(&mut c, schema_name)?;
                if st.pending.is_empty() && st.problems().is_none() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }
}
