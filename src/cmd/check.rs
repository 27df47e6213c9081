//! `sessiondb check [--backend json|sqlite|postgres] [--report]` (SPEC §4): read-only
//! checks of one backend. Always says which backend it checked and against what.

use serde_json::json;

use crate::config::{self, Backend, Config};
use crate::driver::{Common, Ctx, Step};
use crate::error::{Error, Result};
use crate::pg::{self, lock, schema, server};
use crate::report::{CheckStatus, Finding};
use crate::source::shape::Shape;
use crate::source::{Item, Source, sqlite};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// The backend to check (default: detected from the config and the runtime gating).
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// List every finding instead of the first few.
    #[arg(long)]
    pub report: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BackendArg {
    Json,
    Sqlite,
    Postgres,
}

/// Findings listed inline without --report.
const FEW: usize = 10;

crate::details! {
    /// `details` of a check report: which backend, chosen how, checked against what.
    pub struct Details {
        pub backend: Backend,
        pub chosen_by: String,
        /// The file path, or the redacted URL.
        pub checked_against: String,
    }
}

impl Step for Args {
    const NAME: &'static str = "check";
    const ABOUT: &'static str = "Check one backend (the JSON store, SQLite and its state files, or PostgreSQL) and list what is wrong with it; read-only, writes nothing.";
    type Details = Details;
    crate::step_flags!();
    fn run(&self, ctx: &mut Ctx, d: &mut Details) -> Result<()> {
        let forced = self.backend.map(|b| match b {
            BackendArg::Json => Backend::Json,
            BackendArg::Sqlite => Backend::Sqlite,
            BackendArg::Postgres => Backend::Postgres,
        });
        // PostgreSQL needs no file: a missing config is fine when it is forced or gated.
        let cfg = match ctx.config() {
            Ok(c) => Some(c),
            Err(Error::ConfigNotFound { .. })
                if forced == Some(Backend::Postgres) || gated_postgres(ctx) =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        let (backend, why) = match (forced, &cfg) {
            (Some(b), _) => (b, "--backend".to_owned()),
            (None, Some(c)) => {
                let rt = config::runtime(&c.postgres.url_env, &ctx.env)?;
                if rt.backend == Backend::Postgres {
                    (Backend::Postgres, rt.reason)
                } else {
                    (
                        c.backend,
                        format!("sessiondb.backend in {}", c.path.display()),
                    )
                }
            }
            (None, None) => (
                Backend::Postgres,
                format!("${} is a PostgreSQL URL", config::DEFAULT_URL_ENV),
            ),
        };
        tracing::info!("checking the {backend} backend (chosen by {why})");
        d.backend = Some(backend);
        d.chosen_by = Some(why);
        let mut findings = Vec::new();
        match backend {
            Backend::Postgres => check_postgres(ctx, cfg.as_ref(), &mut findings, d)?,
            Backend::Sqlite => check_sqlite(
                ctx,
                cfg.as_ref().expect("sqlite needs a config"),
                &mut findings,
                d,
            )?,
            Backend::Json => check_json(
                ctx,
                cfg.as_ref().expect("json needs a config"),
                &mut findings,
                d,
            )?,
        }
        let total = findings.len();
        ctx.report.count("findings", total as u64);
        let shown = if self.report { total } else { total.min(FEW) };
        for f in findings.into_iter().take(shown) {
            ctx.report.errors.push(f);
        }
        if shown < total {
            ctx.report.next_steps.push(format!(
                "{} more findings: run again with --report to list them all",
                total - shown
            ));
        }
        if total > 0 {
            ctx.problems = true;
        }
        Ok(())
    }
}

fn gated_postgres(ctx: &Ctx) -> bool {
    config::runtime(config::DEFAULT_URL_ENV, &ctx.env)
        .map(|r| r.backend == Backend::Postgres)
        .unwrap_or(false)
}

fn against(d: &mut Details, what: String) {
    tracing::info!("checked against {what}");
    d.checked_against = Some(what);
}

fn check_sqlite(
    ctx: &mut Ctx,
    cfg: &Config,
    findings: &mut Vec<Finding>,
    d: &mut Details,
) -> Result<()> {
    let Some(s) = &cfg.sqlite else {
        return Err(Error::ConfigInvalid {
            path: cfg.path.clone(),
            message: "backend is sqlite but there is no [sqlite] table".into(),
        });
    };
    against(d, s.path.display().to_string());
    let r = &mut ctx.report;
    if let Err(e) = sqlite::check_header(&s.path) {
        r.check(
            "sqlite_header",
            CheckStatus::Fail,
            e.to_string(),
            json!({"path": s.path}),
        );
        findings.push(Finding::new(e.code(), e.to_string()).path(&s.path));
        return Ok(());
    }
    r.check(
        "sqlite_header",
        CheckStatus::Pass,
        "the file is a SQLite database",
        json!({"path": s.path}),
    );
    let conn = match sqlite::open(&s.path) {
        Ok(c) => c,
        Err(e) => {
            r.check("sqlite_open", CheckStatus::Fail, e.to_string(), json!({}));
            findings.push(Finding::new(e.code(), e.to_string()).path(&s.path));
            return Ok(());
        }
    };
    match sqlite::quick_check(&conn, &s.path) {
        Ok(problems) if problems.is_empty() => r.check(
            "sqlite_quick_check",
            CheckStatus::Pass,
            "quick_check: ok",
            json!({}),
        ),
        Ok(problems) => {
            r.check(
                "sqlite_quick_check",
                CheckStatus::Fail,
                format!("quick_check found {} problem(s)", problems.len()),
                json!({"problems": problems}),
            );
            findings.push(
                Finding::new(
                    "sqlite_corrupt",
                    format!("{}: {}", s.path.display(), problems.join("; ")),
                )
                .path(&s.path),
            );
            return Ok(());
        }
        Err(e) => {
            r.check(
                "sqlite_quick_check",
                CheckStatus::Fail,
                e.to_string(),
                json!({}),
            );
            findings.push(Finding::new(e.code(), e.to_string()).path(&s.path));
            return Ok(());
        }
    }
    if crate::source::app::is_mapped(cfg) {
        return check_mapped(ctx, cfg, &conn, &s.path, findings);
    }
    if let Err(e) = sqlite::check_table(&conn, &s.path) {
        r.check("sqlite_schema", CheckStatus::Fail, e.to_string(), json!({}));
        findings.push(Finding::new(e.code(), e.to_string()).path(&s.path));
        return Ok(());
    }
    r.check(
        "sqlite_schema",
        CheckStatus::Pass,
        "table sessions has every column",
        json!({"columns": sqlite::COLUMNS}),
    );
    drop(conn);
    // Without the JSON store: this checks the SQLite + files backend alone. Its ids
    // only say which state files without a row are a JSON-only session's, not orphans.
    let src = Source {
        sqlite: cfg.sqlite.clone(),
        json_path: None,
        json_fields: Default::default(),
    };
    let json_ids: Option<std::collections::HashSet<String>> =
        cfg.json_path.as_deref().and_then(|p| {
            let (records, _) = crate::source::load_json_store_of(cfg, p).ok()?;
            Some(records.into_iter().filter_map(|r| r.id.ok()).collect())
        });
    let owned = scan_into(ctx, &src, "state_files", findings, json_ids.as_ref())?;
    if owned > 0 {
        let json = cfg.json_path.as_deref().unwrap_or(std::path::Path::new(""));
        ctx.report.check(
            "json_owned_state_files",
            CheckStatus::Pass,
            format!(
                "{owned} state files have no row in SQLite but belong to sessions of the JSON store {} (`check --backend json` reads them)",
                json.display()
            ),
            json!({"state_files": owned, "json_store": json}),
        );
    }
    Ok(())
}

/// Whether `w` is an `orphan_state_file` warning about `<id>/state.json` where `id`
/// is a session of the JSON store: not an orphan (preflight and the load resolve it
/// from the JSON store).
fn json_owned(w: &Finding, json_ids: &std::collections::HashSet<String>) -> bool {
    w.code == "orphan_state_file"
        && w.path.as_deref().is_some_and(|p| {
            std::path::Path::new(p)
                .parent()
                .and_then(|d| d.file_name())
                .and_then(|n| n.to_str())
                .is_some_and(|id| json_ids.contains(id))
        })
}

/// A store mapped by the config (SPEC §9): its shape is read as the config says (the
/// mapping must resolve against the table); reading its sessions is not wired yet.
fn check_mapped(
    ctx: &mut Ctx,
    cfg: &Config,
    conn: &rusqlite::Connection,
    db: &std::path::Path,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    let r = &mut ctx.report;
    match Shape::read(conn, db, &cfg.path, &cfg.app) {
        Ok(shape) => {
            for w in &shape.warnings {
                r.warn(w.clone());
            }
            let mapped: Vec<String> = shape
                .mapping
                .iter()
                .filter_map(|m| m.column.as_ref().map(|c| format!("{} → {c}", m.field)))
                .collect();
            r.check(
                "sqlite_schema",
                CheckStatus::Pass,
                format!(
                    "table {:?} read as {} maps it: {}; {} extra column(s); {} table(s) copied with it",
                    shape.sessions.name,
                    cfg.path.display(),
                    mapped.join(", "),
                    shape.extras.len(),
                    shape.parents.len() + shape.children.len()
                ),
                serde_json::json!({
                    "table": shape.sessions.name,
                    "mapping": shape.mapping,
                    "extra_columns": shape.extras,
                    "ignored_columns": shape.ignored,
                    "parent_tables": shape.parents.iter().map(|t| &t.name).collect::<Vec<_>>(),
                    "child_tables": shape.children.iter().map(|t| &t.name).collect::<Vec<_>>(),
                    "mode": shape.mode,
                }),
            );
            read_mapped(ctx, cfg, findings)?;
        }
        Err(e) => {
            r.check("sqlite_schema", CheckStatus::Fail, e.to_string(), json!({}));
            findings.push(Finding::new(e.code(), e.to_string()).path(db));
        }
    }
    Ok(())
}

/// The `state_files` check of a mapped store: every session read as the mapping says,
/// its state from its file (else the mapped column), the invalid ones named.
fn read_mapped(ctx: &mut Ctx, cfg: &Config, findings: &mut Vec<Finding>) -> Result<()> {
    let store = crate::source::app::AppStore::open(cfg, "check")?;
    store.begin()?;
    let tables = store.tables();
    let (mut sessions, mut with_state, mut invalid) = (0u64, 0u64, Vec::new());
    let read = tables.and_then(|tables| {
        let t = tables
            .iter()
            .find(|t| t.sessions)
            .expect("the sessions table is copied");
        store.sessions(t, 1000, |items| {
            for it in items {
                match it {
                    Ok(s) => {
                        sessions += 1;
                        with_state += u64::from(s.state.is_some());
                    }
                    Err(i) => invalid.push(i.finding()),
                }
            }
            Ok(())
        })
    });
    store.end();
    read?;
    let status = if invalid.is_empty() {
        CheckStatus::Pass
    } else {
        CheckStatus::Fail
    };
    ctx.report.check(
        "state_files",
        status,
        format!(
            "{sessions} session(s) read as the config maps them, {with_state} with state, {} invalid",
            invalid.len()
        ),
        json!({"sessions": sessions, "with_state": with_state}),
    );
    ctx.report.count("sessions", sessions);
    findings.extend(invalid);
    Ok(())
}

fn check_json(
    ctx: &mut Ctx,
    cfg: &Config,
    findings: &mut Vec<Finding>,
    d: &mut Details,
) -> Result<()> {
    let Some(p) = &cfg.json_path else {
        return Err(Error::ConfigInvalid {
            path: cfg.path.clone(),
            message: "backend is json but there is no [json] path".into(),
        });
    };
    against(d, p.display().to_string());
    match crate::source::load_json_store_of(cfg, p) {
        Ok(_) => ctx.report.check(
            "json_parse",
            CheckStatus::Pass,
            "the file parses and has the JSON store's structure",
            json!({"path": p}),
        ),
        Err(e) => {
            ctx.report.check(
                "json_parse",
                CheckStatus::Fail,
                e.to_string(),
                json!({"path": p}),
            );
            findings.push(Finding::new(e.code(), e.to_string()).path(p));
            return Ok(());
        }
    }
    let src = Source {
        sqlite: None,
        json_path: Some(p.clone()),
        json_fields: crate::source::JsonFields::new(&cfg.app.json_fields),
    };
    scan_into(ctx, &src, "json_records", findings, None)?;
    Ok(())
}

/// Resolve every session of `src`, listing invalid records and warnings. The state
/// files without a row that are sessions of `json_ids` (the JSON store of a SQLite
/// check) are not warned about: returns how many.
fn scan_into(
    ctx: &mut Ctx,
    src: &Source,
    id: &str,
    findings: &mut Vec<Finding>,
    json_ids: Option<&std::collections::HashSet<String>>,
) -> Result<u64> {
    let reader = src.open()?;
    let mut invalid = Vec::new();
    let phase =
        crate::progress::Phase::bar("scan", reader.estimate()?, crate::progress::Unit::Sessions);
    let mut summary = reader.scan(1000, |items| {
        phase.inc(items.len() as u64);
        for it in items {
            if let Item::Invalid(inv) = it {
                invalid.push(inv.finding());
            }
        }
        Ok(())
    })?;
    phase.finish();
    let mut owned = 0;
    for w in &summary.warnings {
        if json_ids.is_some_and(|ids| json_owned(w, ids)) {
            owned += 1;
            continue;
        }
        ctx.report.warn(w.clone());
    }
    summary.orphans = summary.orphans.saturating_sub(owned);
    let status = if invalid.is_empty() {
        CheckStatus::Pass
    } else {
        CheckStatus::Fail
    };
    ctx.report.check(
        id,
        status,
        format!(
            "{} sessions readable, {} invalid",
            summary.sessions, summary.invalid
        ),
        serde_json::to_value(&summary).unwrap_or_default(),
    );
    ctx.report.count("sessions", summary.sessions);
    ctx.report.count("invalid", summary.invalid);
    findings.extend(invalid);
    Ok(owned)
}

fn check_postgres(
    ctx: &mut Ctx,
    cfg: Option<&Config>,
    findings: &mut Vec<Finding>,
    d: &mut Details,
) -> Result<()> {
    let t = ctx.target(cfg)?;
    let schema_name = cfg.map_or(config::DEFAULT_SCHEMA, |c| &c.postgres.schema);
    against(d, t.display.clone());
    let mut c = match connect_or_fail(ctx, &t) {
        Ok(c) => c,
        Err(e) => {
            findings.push(Finding::new(e.code(), e.to_string()));
            return Ok(());
        }
    };
    let info = server::Info::read(&mut c, &t.display)?;
    check_server(ctx, &t, &info, findings);
    check_permissions(ctx, &mut c, schema_name, &info.user, findings)?;
    check_schema(ctx, &mut c, schema_name, findings)?;
    let ext = server::extensions(&mut c, &t.display)?;
    ctx.report.check(
        "postgres_extensions",
        CheckStatus::Pass,
        format!("{} extension(s)", ext.len()),
        json!({"extensions": ext}),
    );
    check_indexes(ctx, &mut c, schema_name, &t.display, findings)?;
    let h = server::Health::read(&mut c, &t.display)?;
    ctx.report.check(
        "postgres_health",
        if h.strained() {
            CheckStatus::Warn
        } else {
            CheckStatus::Pass
        },
        format!(
            "{}/{} connections, {} lock wait(s), {} query(ies) running over 5 minutes",
            h.connections, h.max_connections, h.lock_waits, h.long_running
        ),
        serde_json::to_value(h).unwrap_or_default(),
    );
    if let Some(holder) = lock::holder(&mut c, schema_name)? {
        ctx.report.warn(Finding::new(
            "lock_held",
            format!("a sessiondb writer is running: {holder}"),
        ));
    }
    Ok(())
}

/// Connect to the target; when that fails, the `postgres_connectivity` check says why
/// (check and preflight alike).
pub(crate) fn connect_or_fail(ctx: &mut Ctx, t: &config::Target) -> Result<postgres::Client> {
    pg::connect(t).inspect_err(|e| {
        ctx.report.check(
            "postgres_connectivity",
            CheckStatus::Fail,
            e.to_string(),
            json!({"target": t.display}),
        )
    })
}

/// `postgres_connectivity` and `postgres_version` (UTF8, or a finding).
fn check_server(
    ctx: &mut Ctx,
    t: &config::Target,
    info: &server::Info,
    findings: &mut Vec<Finding>,
) {
    ctx.report.check(
        "postgres_connectivity",
        CheckStatus::Pass,
        format!(
            "connected to {} as {}, {} (sslmode={})",
            t.display,
            info.user,
            info.carried(),
            t.tls.mode
        ),
        json!({"database": info.database, "user": info.user, "sslmode": t.tls.mode.as_str(), "tls": info.tls, "search_path": info.search_path}),
    );
    ctx.report.check(
        "postgres_version",
        if info.utf8() {
            CheckStatus::Pass
        } else {
            CheckStatus::Fail
        },
        format!(
            "PostgreSQL {}, server_encoding {}",
            info.server_version, info.server_encoding
        ),
        json!({"server_version": info.server_version, "server_encoding": info.server_encoding}),
    );
    if !info.utf8() {
        findings.push(Finding::new(
            "server_encoding",
            format!(
                "server_encoding is {}; sessiondb needs UTF8",
                info.server_encoding
            ),
        ));
    }
}

/// `postgres_permissions`: the probe preflight uses, so that the two agree.
fn check_permissions(
    ctx: &mut Ctx,
    c: &mut postgres::Client,
    schema_name: &str,
    user: &str,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    let perms = pg::Permissions::probe(c, schema_name)?;
    if let Some(p) = report_permissions(ctx, &perms, user, false) {
        findings.push(Finding::new("permission_denied", p));
    }
    Ok(())
}

/// The `postgres_permissions` check of `check` and `preflight` alike; the problem, if
/// the role cannot migrate into the schema. A role without TEMPORARY fails preflight
/// (`migrating`: every step after it needs temporary tables) and is a warning in
/// `check`, which also vets the runtime store's role (that needs none).
pub(crate) fn report_permissions(
    ctx: &mut Ctx,
    perms: &pg::Permissions,
    user: &str,
    migrating: bool,
) -> Option<String> {
    let problem = perms.problem(user);
    let temporary = perms.temporary_problem(user);
    let (status, summary, problem) = match (problem, temporary) {
        (Some(p), _) => (CheckStatus::Fail, p.clone(), Some(p)),
        (None, Some(t)) if migrating => (CheckStatus::Fail, t.clone(), Some(t)),
        (None, Some(t)) => (
            CheckStatus::Warn,
            format!("{}; {t} (the runtime store needs none)", perms.summary()),
            None,
        ),
        (None, None) => (CheckStatus::Pass, perms.summary(), None),
    };
    ctx.report.check(
        "postgres_permissions",
        status,
        summary,
        serde_json::to_value(perms).unwrap_or_default(),
    );
    problem
}

/// `postgres_schema`: the versions applied and pending.
fn check_schema(
    ctx: &mut Ctx,
    c: &mut postgres::Client,
    schema_name: &str,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    let st = schema::status(c, schema_name)?;
    let schema_status = if st.problems().is_some() {
        CheckStatus::Fail
    } else if st.pending.is_empty() {
        CheckStatus::Pass
    } else {
        CheckStatus::Warn
    };
    ctx.report.check(
        "postgres_schema",
        schema_status,
        format!(
            "schema versions applied {:?}, pending {:?}",
            st.applied, st.pending
        ),
        serde_json::to_value(&st).unwrap_or_default(),
    );
    if let Some(p) = st.problems() {
        findings.push(Finding::new("schema_mismatch", p));
    }
    Ok(())
}

/// `postgres_indexes`: every index valid, and the GIN index; two GIN indexes warned.
fn check_indexes(
    ctx: &mut Ctx,
    c: &mut postgres::Client,
    schema_name: &str,
    target: &str,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    let invalid_idx = server::invalid_indexes(c, schema_name, target)?;
    let gin = schema::index_state(c, schema_name)?;
    ctx.report.check(
        "postgres_indexes",
        if invalid_idx.is_empty() {
            CheckStatus::Pass
        } else {
            CheckStatus::Fail
        },
        match (&gin, invalid_idx.is_empty()) {
            (_, false) => format!("invalid index(es): {}", invalid_idx.join(", ")),
            (Some((name, _, opc)), true) => format!("indexes valid; GIN index {name} ({opc})"),
            (None, true) => "indexes valid; no GIN index on session_state yet".into(),
        },
        json!({"invalid": invalid_idx, "gin": gin}),
    );
    for i in &invalid_idx {
        findings.push(Finding::new(
            "invalid_index",
            format!("index {i} is invalid: REINDEX it"),
        ));
    }
    if let Some(w) = schema::duplicate_gin(c, schema_name)? {
        ctx.report.warn(w);
    }
    Ok(())
}
