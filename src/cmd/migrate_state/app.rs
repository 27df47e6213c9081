//! migrate-state on a mapped store (SPEC §9): the same resolve → lock → plan → act as
//! the default shape, on the application's own tables. The plan ([`plan_mapped`], which
//! preflight shares) reads the source's shape, plans the target both ways
//! (`pg::app::plan`: every `schema_mismatch` before a write), rehearses the schema,
//! and classifies every row of every copied table with `plan::decide` (the source's
//! `v2:` hash, the ledger's, the target's as read back); the real run then creates
//! the tables when none existed, applies the versions, and loads the parents first,
//! then the sessions with their states, a batch a transaction with its ledger rows.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use postgres::GenericClient;

use super::known::{Known, Looked};
use super::{Args, Details, OnConflict};
use crate::config::{Config, IndexBuildTiming};
use crate::driver::{Ctx, Step};
use crate::error::{Error, Result};
use crate::pg::app::{self, AppTarget, Row, TableCounts};
use crate::pg::ledger::{runs, tables};
use crate::pg::lock::Guard;
use crate::pg::{self, schema};
use crate::plan::{self, Action, ConflictInfo};
use crate::progress::{Phase, Unit};
use crate::report::{Finding, INLINE_LIMIT};
use crate::source::Invalid;
use crate::source::app::{AppStore, Copied};

/// What the mapped plan read and decided.
pub(crate) struct MappedPlan {
    pub store: AppStore,
    pub copied: Vec<Copied>,
    pub target: AppTarget,
    /// Per table of `target.tables`: the ledger's hashes and the target's, by key, held
    /// by the server for the load on the same connection.
    known: Vec<Known>,
    pub counts: Vec<TableCounts>,
    /// Per table: what the load has to do there, by the plan's classification.
    to_load: Vec<ToLoad>,
    pub invalid: Vec<Invalid>,
    pub conflicts: Vec<ConflictInfo>,
    /// A parent row that does not convert: the run refuses.
    pub bad_rows: Vec<String>,
}

/// What the load has to do in one table, by the plan: so that its pass is in proportion
/// to what changed, not to the store. A table where nothing is to be written or
/// recorded is not read again; of the sessions table, only the sessions to write have
/// their state files read again and canonicalised (the SQLite rows, cheap, are read
/// again in full, in the same read transaction and order).
#[derive(Debug, Default)]
struct ToLoad {
    /// Rows to insert, update, adopt into the ledger, or that conflict (written with
    /// `--on-conflict source-wins`).
    rows: u64,
    /// The sessions table's such keys (its session ids), while they fit in
    /// [`KEEP_KEYS_BYTES`]; `None` past it (then every session is read again).
    keys: Option<HashSet<String>>,
    key_bytes: usize,
}

/// The most bytes of session ids a plan keeps for its load ([`ToLoad::keys`]).
const KEEP_KEYS_BYTES: usize = 8 << 20;

impl ToLoad {
    fn new(sessions: bool) -> ToLoad {
        ToLoad {
            keys: sessions.then(HashSet::new),
            ..ToLoad::default()
        }
    }

    /// A row the load has to look at again.
    fn add(&mut self, key: &str) {
        self.rows += 1;
        if let Some(keys) = &mut self.keys {
            // The id's bytes, its `String` and its slot in the set.
            self.key_bytes += key.len() + 64;
            if self.key_bytes > KEEP_KEYS_BYTES {
                self.keys = None;
            } else {
                keys.insert(key.to_owned());
            }
        }
    }
}

/// Whether the config's store is the application's own schema (then the mapped path runs).
pub(crate) use crate::source::app::is_mapped;

/// The keys of a batch of rows, for [`Known::look`].
fn keys_of(rows: &[Row]) -> Vec<&str> {
    rows.iter().map(|r| r.key.as_str()).collect()
}

/// Open the store, plan the target, and (when it fits) classify every row. Read-only
/// on both sides. The source stays in its one read transaction for the load.
pub(crate) fn plan_mapped(
    c: &mut impl GenericClient,
    cfg: &Config,
    step: &str,
    batch: usize,
) -> Result<MappedPlan> {
    let store = AppStore::open(cfg, step)?;
    store.begin()?;
    let copied = store.tables()?;
    let target = app::plan(
        c,
        &cfg.postgres.schema,
        &store.shape,
        &copied,
        &cfg.app.fill,
        cfg.postgres.gin_opclass.as_sql(),
    )?;
    let mut p = MappedPlan {
        store,
        copied,
        target,
        known: Vec::new(),
        counts: Vec::new(),
        to_load: Vec::new(),
        invalid: Vec::new(),
        conflicts: Vec::new(),
        bad_rows: Vec::new(),
    };
    if !p.target.fits() {
        return Ok(p);
    }
    let schema = &cfg.postgres.schema;
    for (n, t) in p.target.tables.iter().enumerate() {
        let st = t.sessions.then_some(&p.target.state);
        tracing::info!("planning table {}", t.name);
        let known = Known::gather(c, schema, n, t, st, p.target.creates)?;
        let phase = Phase::counter("plan", Unit::Rows);
        let mut counts = TableCounts {
            table: t.name.clone(),
            ..TableCounts::default()
        };
        let mut to_load = ToLoad::new(t.sessions);
        let src = &p.copied[t.source];
        // `id`: the session's id, for the sessions table (its rows are read again by it).
        let mut tally = |row: &Row,
                         id: Option<&str>,
                         looked: &Looked,
                         counts: &mut TableCounts,
                         conflicts: &mut Vec<ConflictInfo>| {
            counts.rows += 1;
            let (a, why) =
                plan::decide(&row.hash, looked.ledger(&row.key), looked.target(&row.key));
            if a != Action::Unchanged {
                to_load.add(id.unwrap_or(&row.key));
            }
            match a {
                Action::Insert => counts.inserted += 1,
                Action::Update => counts.updated += 1,
                Action::Unchanged | Action::Adopt => counts.unchanged += 1,
                Action::Conflict => conflicts.push(ConflictInfo {
                    session: if t.sessions {
                        row.key.clone()
                    } else {
                        format!("{}:{}", t.name, row.key)
                    },
                    reason: why.unwrap_or("conflict").to_owned(),
                }),
            }
        };
        if t.sessions {
            let (invalid, conflicts) = (&mut p.invalid, &mut p.conflicts);
            p.store.sessions(src, batch, |items| {
                phase.inc(items.len() as u64);
                let mut good = Vec::with_capacity(items.len());
                let mut ids = Vec::with_capacity(items.len());
                for it in items {
                    match it {
                        Err(inv) => {
                            counts.invalid += 1;
                            invalid.push(*inv);
                        }
                        Ok(s) => match p.target.session_row(&s) {
                            Ok((row, _)) => {
                                good.push(row);
                                ids.push(s.id);
                            }
                            Err(e) => {
                                counts.invalid += 1;
                                invalid.push(Invalid {
                                    id: Some(s.id.clone()),
                                    code: e.code,
                                    message: format!("session {}: {}", s.id, e.message),
                                    path: Some(p.store.db.clone()),
                                    record: "sqlite_row",
                                    raw: Vec::new(),
                                });
                            }
                        },
                    }
                }
                let looked = known.look(c, &keys_of(&good))?;
                for (row, id) in good.iter().zip(&ids) {
                    tally(row, Some(id), &looked, &mut counts, conflicts);
                }
                Ok(())
            })?;
        } else {
            let (bad, conflicts) = (&mut p.bad_rows, &mut p.conflicts);
            p.store.rows(src, batch, |rows| {
                phase.inc(rows.len() as u64);
                let mut good = Vec::with_capacity(rows.len());
                for raws in rows {
                    match t.convert(&raws, None) {
                        Ok(row) => good.push(row),
                        Err(e) => {
                            counts.invalid += 1;
                            bad.push(format!("table {}: {}", t.name, e.message));
                        }
                    }
                }
                let looked = known.look(c, &keys_of(&good))?;
                good.iter()
                    .for_each(|row| tally(row, None, &looked, &mut counts, conflicts));
                Ok(())
            })?;
        }
        phase.finish();
        p.counts.push(counts);
        p.known.push(known);
        p.to_load.push(to_load);
    }
    Ok(p)
}

/// The refusals a mapped plan knows, the same for the dry run and the real run.
pub(crate) fn refusal(ctx: &mut Ctx, p: &MappedPlan, args: &Args, d: &mut Details) -> Result<()> {
    let would = if args.dry.dry_run {
        "would refuse"
    } else {
        "refused"
    };
    if let Some(e) = p.target.refusal() {
        // The first is the run's error; the others are listed beside it.
        for m in p.target.misfits.iter().skip(1) {
            ctx.report.errors.push(Finding::new(
                "schema_mismatch",
                format!(
                    "{}{}: {}; fix: {}",
                    m.table,
                    m.column
                        .as_deref()
                        .map(|c| format!(".{c}"))
                        .unwrap_or_default(),
                    m.message,
                    m.fix
                ),
            ));
        }
        d.schema_mismatches = Some(p.target.misfits.clone());
        return Err(e);
    }
    if let Some(b) = p.bad_rows.first() {
        return Err(Error::InvalidRecords {
            message: format!(
                "{} row(s) of the copied tables do not convert to their target column: {would}, nothing written (e.g. {b})",
                p.bad_rows.len()
            ),
            quarantine: false,
        });
    }
    if !p.invalid.is_empty() {
        d.invalid = Some(
            p.invalid
                .iter()
                .take(INLINE_LIMIT)
                .map(Invalid::finding)
                .collect(),
        );
        if args.quarantine {
            return Err(Error::SchemaNotWired {
                step: Args::NAME.into(),
                config: ctx
                    .common
                    .config
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("sessiondb.toml")),
                keys:
                    "--quarantine on a mapped store (fix the invalid records in the source instead)"
                        .into(),
            });
        }
        return Err(Error::InvalidRecords {
            message: format!(
                "{} invalid record(s): {would}, nothing written (e.g. {})",
                p.invalid.len(),
                p.invalid[0].message
            ),
            quarantine: false,
        });
    }
    if !p.conflicts.is_empty() {
        d.conflicts = Some(p.conflicts.iter().take(INLINE_LIMIT).cloned().collect());
        if args.on_conflict == OnConflict::Fail {
            return Err(super::refuse_conflicts(ctx, &p.conflicts, "row(s)", would));
        }
    }
    Ok(())
}

/// The application's tables created (when none existed), then sessiondb's versions
/// applied, in the caller's transaction. Version 1 creates SPEC §2's `sessions` table if
/// there is none: for an application whose sessions table has another name, that empty
/// table, created by this very transaction, is dropped again (the application's schema
/// gets nothing it does not have).
fn create_and_apply(
    tx: &mut postgres::Transaction<'_>,
    p: &MappedPlan,
    schema_name: &str,
    run_id: &str,
) -> Result<Vec<i32>> {
    p.target.create(tx)?;
    let had_default = schema::table_exists(tx, schema_name, crate::config::DEFAULT_TABLE)?;
    let applied = schema::apply(tx, schema_name, run_id)?;
    let ours = p.target.sessions().name == crate::config::DEFAULT_TABLE;
    if !had_default && !ours && schema::table_exists(tx, schema_name, crate::config::DEFAULT_TABLE)?
    {
        tx.batch_execute(&format!(
            "DROP TABLE {}",
            pg::qualified(schema_name, crate::config::DEFAULT_TABLE)
        ))
        .map_err(|e| Error::pg("dropping the default sessions table", "", e))?;
    }
    Ok(applied)
}

/// Rehearse what the real run applies: the tables created, the versions applied, in
/// a transaction rolled back.
fn rehearse(
    c: &mut postgres::Client,
    p: &MappedPlan,
    schema_name: &str,
    run_id: &str,
) -> Result<()> {
    let mut tx = c
        .transaction()
        .map_err(|e| Error::pg("starting the rehearsal", "", e))?;
    create_and_apply(&mut tx, p, schema_name, run_id)?;
    tx.rollback()
        .map_err(|e| Error::pg("rolling the rehearsal back", "", e))?;
    Ok(())
}

/// migrate-state on a mapped config: the whole step, from what resolve made.
pub(super) fn run(ctx: &mut Ctx, r: super::Resolved<'_>, d: &mut Details) -> Result<()> {
    let args = r.args;
    let (cfg, target_cfg) = (&r.cfg, &r.target);
    let (schema_name, run_id, run_uuid) = (&r.schema, &r.run_id, r.run_uuid);
    let mut lock = Guard::take(target_cfg, schema_name, run_id, args.dry.dry_run)?;
    let t_plan = Instant::now();
    let mut c = pg::connect_writer(
        target_cfg,
        &r.lock_timeout,
        r.cfg.postgres.toast_compression,
    )?;
    // The plan.
    let status = schema::status(&mut c, schema_name)?;
    if let Some(p) = status.problems() {
        return Err(Error::SchemaVersions { message: p });
    }
    d.schema_pending = Some(status.pending.clone());
    let p = plan_mapped(&mut c, cfg, Args::NAME, r.batch)?;
    for w in &p.store.shape.warnings {
        ctx.report.warn(w.clone());
    }
    d.app_target = Some(p.target.clone());
    d.app_tables = Some(p.counts.clone());
    refusal(ctx, &p, args, d)?;
    rehearse(&mut c, &p, schema_name, run_id)?;
    let fingerprint = r.src.quick_fingerprint()?;
    let chosen = super::choose_backup(ctx, cfg, args, &fingerprint, d)?;
    let writes: u64 = p.counts.iter().map(|t| t.inserted + t.updated).sum::<u64>()
        + if args.on_conflict == OnConflict::SourceWins {
            p.conflicts.len() as u64
        } else {
            0
        };
    if args.dry.dry_run {
        d.backup = Some(match &chosen {
            Some(c) => format!("would use the matching backup {}", c.dir.display()),
            None => format!("would take a backup under {}", cfg.backup_dir.display()),
        });
        d.would_apply_schema_versions = Some(status.pending.clone());
        d.load = Some(if p.target.creates {
            "create the application's tables, then upserts by primary key, parents first"
        } else {
            "upserts by primary key into the application's tables, parents first"
        });
        ctx.report
            .next_steps
            .push(if writes == 0 && status.pending.is_empty() {
                "nothing to write: the target holds every row as the source has it; verify".into()
            } else {
                "migrate-state --dry-run=false to write what this plan says".into()
            });
        p.store.end();
        return Ok(());
    }
    // The real run.
    let mut phases = super::PhasesMs {
        plan: t_plan.elapsed().as_millis() as u64,
        ..super::PhasesMs::default()
    };
    let t_backup = Instant::now();
    let backup_dir = super::backup_for(ctx, &r, chosen, &fingerprint, None, d)?;
    phases.backup = t_backup.elapsed().as_millis() as u64;
    let t_load = Instant::now();
    let p_ref = &p;
    let (schema_name, run_id) = (schema_name.as_str(), run_id.as_str());
    {
        let mut tx = c
            .transaction()
            .map_err(|e| Error::pg("starting a transaction", &target_cfg.display, e))?;
        let applied = create_and_apply(&mut tx, p_ref, schema_name, run_id)?;
        tx.commit()
            .map_err(|e| Error::pg("committing the schema", &target_cfg.display, e))?;
        d.schema_applied = Some(applied);
    }
    runs::record_start(
        &mut c,
        schema_name,
        &runs::RunStart {
            run_id: &run_uuid,
            step: Args::NAME,
            source_fingerprint: &fingerprint,
            backup: &backup_dir,
        },
    )?;
    let loaded = load(&mut c, &p, args, schema_name, &run_uuid);
    let counts = match loaded {
        Ok(c) => c,
        Err(e) => {
            let _ = runs::record_end(&mut c, schema_name, &run_uuid, "failed", &p.counts);
            p.store.end();
            return Err(e);
        }
    };
    p.store.end();
    phases.load = t_load.elapsed().as_millis() as u64;
    let t_index = Instant::now();
    if p.target.state.gin.is_none() && schema::index_state(&mut c, schema_name)?.is_none() {
        // One connection loads a mapped store: the index is built after it, whatever
        // `postgres.index_build` says (filling the pending list pays on parallel streams).
        let mut build = schema::IndexBuild::plan(
            &mut c,
            cfg.postgres.index_build_memory_kb,
            IndexBuildTiming::AfterLoad,
            1,
        );
        build.finish(&mut c, schema_name, cfg.postgres.gin_opclass.as_sql())?;
        d.index_build = Some(build);
    }
    phases.index = t_index.elapsed().as_millis() as u64;
    // A mapped load runs no ANALYZE of its own: `analyze` stays 0.
    d.phases_ms = Some(phases);
    for t in &counts {
        if t.sessions_table {
            ctx.report.count("sessions", t.counts.rows);
            ctx.report.count("inserted", t.counts.inserted);
            ctx.report.count("updated", t.counts.updated);
            ctx.report.count("unchanged", t.counts.unchanged);
        }
    }
    let done: Vec<TableCounts> = counts.into_iter().map(|t| t.counts).collect();
    d.app_tables = Some(done.clone());
    runs::record_end(&mut c, schema_name, &run_uuid, "done", &done)?;
    ctx.report.next_steps.push("verify".into());
    if !lock.alive() {
        tracing::warn!("the lock connection was lost during the run");
    }
    drop(lock);
    Ok(())
}

struct Loaded {
    counts: TableCounts,
    sessions_table: bool,
}

/// The load: every table in load order, a batch a transaction with its ledger rows;
/// the rows the plan's classification says to write (re-read in the same SQLite read
/// transaction, so they are the rows the plan saw; a state file is re-read only for a
/// session the plan found to write, so one rewritten after the plan read it unchanged
/// is taken by the next run, as the default shape's catch-up writes what its planning
/// pass read).
fn load(
    c: &mut postgres::Client,
    p: &MappedPlan,
    args: &Args,
    schema_name: &str,
    run_id: &uuid::Uuid,
) -> Result<Vec<Loaded>> {
    let mut out = Vec::new();
    let write_conflicts = args.on_conflict == OnConflict::SourceWins;
    for (ti, t) in p.target.tables.iter().enumerate() {
        let known = &p.known[ti];
        let (planned, to_load) = (&p.counts[ti], &p.to_load[ti]);
        let mut counts = TableCounts {
            table: t.name.clone(),
            ..TableCounts::default()
        };
        if to_load.rows == 0 {
            // Every row as the target and the ledger have it: nothing to read again.
            tracing::info!("table {}: nothing to write", t.name);
            counts.rows = planned.rows;
            counts.unchanged = planned.rows;
            out.push(Loaded {
                counts,
                sessions_table: t.sessions,
            });
            continue;
        }
        let decide = |row: &Row, looked: &Looked, counts: &mut TableCounts| -> (bool, bool) {
            counts.rows += 1;
            let (a, _) = plan::decide(&row.hash, looked.ledger(&row.key), looked.target(&row.key));
            // (write the row, record it in the ledger)
            match a {
                Action::Insert => {
                    counts.inserted += 1;
                    (true, true)
                }
                Action::Update => {
                    counts.updated += 1;
                    (true, true)
                }
                Action::Adopt => {
                    counts.unchanged += 1;
                    (false, true)
                }
                Action::Unchanged => {
                    counts.unchanged += 1;
                    (false, false)
                }
                Action::Conflict if write_conflicts => {
                    counts.updated += 1;
                    (true, true)
                }
                Action::Conflict => (false, false),
            }
        };
        let src = &p.copied[t.source];
        tracing::info!("loading table {}", t.name);
        let among = to_load.keys.as_ref().filter(|_| t.sessions);
        let total = match among {
            Some(keys) => keys.len() as u64,
            None => planned.rows + planned.invalid,
        };
        let phase = Phase::bar("load", total, Unit::Rows);
        // The planned sessions read again, each once however often the source holds
        // its id: a row read twice must not stand for one that could not be read.
        let mut read_again: HashSet<String> = HashSet::new();
        if t.sessions {
            p.store
                .sessions_among(src, args.batch_size as usize, among, |items| {
                    phase.inc(items.len() as u64);
                    let read: Vec<_> = items
                        .into_iter()
                        .flatten()
                        .filter_map(|s| {
                            let (row, updated) = p.target.session_row(&s).ok()?;
                            Some((s, row, updated))
                        })
                        .collect();
                    if among.is_some() {
                        read_again.extend(read.iter().map(|(s, _, _)| s.id.clone()));
                    }
                    let looked = known.look(
                        c,
                        &read.iter().map(|r| r.1.key.as_str()).collect::<Vec<_>>(),
                    )?;
                    let mut rows = Vec::new();
                    for (s, row, updated) in read {
                        let (write, record) = decide(&row, &looked, &mut counts);
                        if write || record {
                            rows.push((s, row, updated, write));
                        }
                    }
                    let mut tx = c
                        .transaction()
                        .map_err(|e| Error::pg("starting a batch", "", e))?;
                    let to_write: Vec<&Row> = rows.iter().filter(|r| r.3).map(|r| &r.1).collect();
                    t.write(&mut tx, schema_name, &to_write)?;
                    let states: Vec<(&str, &crate::source::State, Option<crate::value::Value>)> =
                        rows.iter()
                            .filter(|r| r.3)
                            .filter_map(|(s, _, u, _)| {
                                s.state.as_ref().map(|st| (s.id.as_str(), st, u.clone()))
                            })
                            .collect();
                    p.target.state.write(&mut tx, schema_name, &states)?;
                    let stateless: Vec<&str> = rows
                        .iter()
                        .filter(|(s, _, _, write)| *write && s.state.is_none())
                        .map(|(s, _, _, _)| s.id.as_str())
                        .collect();
                    p.target.state.clear(&mut tx, schema_name, &stateless)?;
                    let ledger_rows: Vec<(&str, &str, Option<String>)> = rows
                        .iter()
                        .map(|(s, r, _, _)| {
                            (
                                s.id.as_str(),
                                r.hash.as_str(),
                                s.state.as_ref().map(|st| st.hash()),
                            )
                        })
                        .collect();
                    tables::record_sessions(&mut tx, schema_name, run_id, &ledger_rows)?;
                    tx.commit()
                        .map_err(|e| Error::pg("committing a batch", "", e))?;
                    Ok(())
                })?;
        } else {
            p.store.rows(src, args.batch_size as usize, |batch| {
                phase.inc(batch.len() as u64);
                let read: Vec<Row> = batch
                    .iter()
                    .filter_map(|raws| t.convert(raws, None).ok())
                    .collect();
                let looked = known.look(c, &keys_of(&read))?;
                let mut rows = Vec::new();
                for row in read {
                    let (write, record) = decide(&row, &looked, &mut counts);
                    if write || record {
                        rows.push((row, write));
                    }
                }
                let mut tx = c
                    .transaction()
                    .map_err(|e| Error::pg("starting a batch", "", e))?;
                let to_write: Vec<&Row> = rows.iter().filter(|r| r.1).map(|r| &r.0).collect();
                t.write(&mut tx, schema_name, &to_write)?;
                let ledger_rows: Vec<(&str, &str)> = rows
                    .iter()
                    .map(|(r, _)| (r.key.as_str(), r.hash.as_str()))
                    .collect();
                tables::record(&mut tx, schema_name, &t.name, run_id, &ledger_rows)?;
                tx.commit()
                    .map_err(|e| Error::pg("committing a batch", "", e))?;
                Ok(())
            })?;
        }
        phase.finish();
        if let Some(keys) = among {
            // The sessions passed over are those the plan found unchanged.
            if read_again.len() < keys.len() {
                return Err(Error::ChangedDuringWrite {
                    message: format!(
                        "table {}: {} of the {} sessions the plan found to write could not be read again (a state file changed, vanished or became invalid since the plan read it): the batches written are whole; run migrate-state --dry-run=false again",
                        t.name,
                        keys.len() - read_again.len(),
                        keys.len()
                    ),
                });
            }
            let passed_over = planned.rows.saturating_sub(counts.rows);
            counts.rows += passed_over;
            counts.unchanged += passed_over;
        }
        out.push(Loaded {
            counts,
            sessions_table: t.sessions,
        });
    }
    Ok(out)
}
