//! `migrate-state` (SPEC §4): load every session into PostgreSQL. A dry run (the
//! default) walks the same plan as the real run and stops before the first write.
//!
//! resolve (config, target, source, options) → the writers' lock (a dry run sees it
//! free, or refuses `lock_held`) → plan: every read that decides what to write — the
//! schema versions (rehearsed when some are pending), the target's tables against
//! the data, the ledger's view of the target, a planning pass over the source that
//! classifies every session, the backup the run stands on (chosen and checked) — and
//! every refusal it can already know → the dry run prints the plan; the real run acts
//! on it: the backup (taken if none), the schema, then the load, one transaction a
//! batch with its ledger rows. Killed at any moment, it is finished by running it
//! again; run again, it changes nothing; later, it copies only what changed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backup::{self, Checked, Depth, SUMMARY_PROBLEMS};
use crate::config::{Config, IndexBuildTiming, Target};
use crate::driver::{Common, Ctx, DryRun, Step};
use crate::error::{Error, Result};
use crate::pg::classify::Classifier;
use crate::pg::constraints::{self, Fit, Problem};
use crate::pg::ledger::{self, runs, versions};
use crate::pg::lock::Guard;
use crate::pg::rows::Rows;
use crate::pg::schema::IndexBuild;
use crate::pg::{self, load, schema};
use crate::plan::{Action, ConflictInfo, Counts};
use crate::progress::{Phase, Unit};
use crate::report::{Finding, INLINE_LIMIT, lossy_opt_path};
use crate::source::order::ScanOrder;
use crate::source::{Invalid, Item, KnownFn, Reader, Session, Source};

pub(crate) mod app;
mod known;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnConflict {
    /// Write nothing at all and name the conflicts.
    Fail,
    /// Leave conflicting target rows as they are.
    Skip,
    /// Overwrite conflicting target rows with the source.
    SourceWins,
}

/// Sessions per transaction, unless `--batch-size` says.
pub const DEFAULT_BATCH_SIZE: u32 = 1000;
/// Connections writing into an empty target, unless `--jobs` says.
pub const DEFAULT_JOBS: u32 = 2;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub dry: DryRun,
    /// What to do with a target row that differs from what sessiondb last wrote there.
    #[arg(long, value_enum, default_value = "fail")]
    pub on_conflict: OnConflict,
    /// Set invalid records aside (raw bytes under the backup's quarantine/) instead of refusing.
    #[arg(long)]
    pub quarantine: bool,
    /// The backup of the current source to rely on (else the newest matching one, else a new one).
    #[arg(long, value_name = "DIR")]
    pub backup: Option<PathBuf>,
    /// Check the backup relied on against its manifest's SHA-256 sums, not only that
    /// every listed file is there with its size.
    #[arg(long)]
    pub verify_backup: bool,
    /// Compare every session with the target, trusting neither the source stamps nor
    /// the ledger's row versions (reads the whole source and every target row).
    #[arg(long)]
    pub recheck: bool,
    /// Sessions per transaction.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Connections writing at once into an empty target (each commits whole batches).
    #[arg(long, default_value_t = DEFAULT_JOBS, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub jobs: u32,
}

impl Args {
    /// The flags as the binary has them without any of its own (the umbrella's
    /// `migrate to postgres` builds on this).
    pub fn new(common: Common, dry: DryRun) -> Args {
        Args {
            common,
            dry,
            on_conflict: OnConflict::Fail,
            quarantine: false,
            backup: None,
            verify_backup: false,
            recheck: false,
            batch_size: DEFAULT_BATCH_SIZE,
            jobs: DEFAULT_JOBS,
        }
    }
}

crate::details! {
    /// `details` of a migrate-state report. The dry run fills the plan's fields, the real
    /// run those of what it did; a refusal leaves what was known when it was refused.
    pub struct Details {
        pub on_conflict: OnConflict,
        pub recheck: bool,
        /// Schema versions not applied yet.
        pub schema_pending: Vec<i32>,
        /// What the target's tables or constraints refuse of the data.
        pub target_problems: Vec<Problem>,
        /// Sessions the ledger's stamps recognised without reading them.
        pub unchanged_by_stamp: u64,
        /// The first [`INLINE_LIMIT`] conflicts (all in `migrate-state-conflicts.jsonl`).
        pub conflicts: Vec<ConflictInfo>,
        /// The first [`INLINE_LIMIT`] invalid records (all in `migrate-state-invalid.jsonl`).
        pub invalid: Vec<Finding>,
        /// The check of the backup the run stands on.
        pub backup_check: BackupCheck,
        /// The dry run: what it would use or take; the real run: the backup folder.
        pub backup: String,
        pub would_apply_schema_versions: Vec<i32>,
        /// How the dry run says the load would write.
        pub load: &'static str,
        /// The planning pass's counts, in a real run.
        pub planned: Counts,
        pub removed_incomplete: Vec<PathBuf>,
        pub schema_applied: Vec<i32>,
        pub row_versions: RowVersions,
        /// How the load got its sessions: `kept_from_plan`, `read_again_changed` (what the
        /// planning pass read, read again), `second_scan`, `single_scan`.
        pub load_read: &'static str,
        /// How the backup this run took wrote `sessions.jsonl`: `kept_from_plan` (from
        /// what the planning pass read, the store unchanged since), `read_again_changed`
        /// (the sessions the pass read, too many to keep, read again from the database
        /// copy by id; the others' lines carried by the stamps the pass saw),
        /// `database_copy` (every session resolved from the copy).
        pub backup_dumps_read: &'static str,
        pub gin_index_build_ms: u64,
        /// How a load into an empty target built the GIN index (`postgres.index_build`)
        /// and the memory its work had (`postgres.index_build_memory`).
        pub index_build: schema::IndexBuild,
        pub phases_ms: PhasesMs,
        pub skipped_conflicts: Vec<ConflictInfo>,
        /// The quarantine folder of the backup.
        #[serde(serialize_with = "lossy_opt_path")]
        pub quarantine: PathBuf,
        /// The first [`INLINE_LIMIT`] records this run set aside (all in its index).
        pub quarantined: Vec<QuarantineLine>,
        /// A mapped store (SPEC §9): the target as planned (created or used as it is).
        pub app_target: crate::pg::app::AppTarget,
        /// A mapped store: per copied table, what the plan found or the load did.
        pub app_tables: Vec<crate::pg::app::TableCounts>,
        /// A mapped store: every incompatibility of the target (`schema_mismatch`).
        pub schema_mismatches: Vec<crate::pg::catalog::Misfit>,
    }
}

/// `details.backup_check`: the backup a run stands on, checked.
#[derive(Debug, Serialize)]
pub struct BackupCheck {
    #[serde(serialize_with = "crate::report::lossy_path")]
    pub dir: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub sound: u64,
    pub checksums: bool,
    pub problems: u64,
    pub first_problems: Vec<backup::Problem>,
    pub ms: u64,
}

impl BackupCheck {
    fn of(c: &Checked) -> BackupCheck {
        BackupCheck {
            dir: c.dir.clone(),
            files: c.files,
            bytes: c.bytes,
            sound: c.sound,
            checksums: c.checksums,
            problems: c.problem_count,
            first_problems: c.problems.clone(),
            ms: c.ms,
        }
    }
}

/// `details.row_versions`: what the ledger learned of the target's row versions.
#[derive(Debug, Serialize)]
pub struct RowVersions {
    pub learned: u64,
    pub rewritten_as_they_were: u64,
    pub changed_in_target: usize,
}

/// `details.phases_ms`: where a real run went.
#[derive(Debug, Default, Serialize)]
pub struct PhasesMs {
    pub plan: u64,
    pub backup: u64,
    pub load: u64,
    pub index: u64,
    pub analyze: u64,
}

impl Step for Args {
    const NAME: &'static str = "migrate-state";
    const ABOUT: &'static str = "Load every session of the legacy store into PostgreSQL, on a verified backup; a dry run unless --dry-run=false, which writes to PostgreSQL and the backup folder.";
    type Details = Details;
    crate::step_flags!(dry);
    fn run(&self, ctx: &mut Ctx, details: &mut Details) -> Result<()> {
        run(ctx, self, details)
    }
}

/// What resolve makes of flags, config and environment, before any I/O but the
/// config's.
struct Resolved<'a> {
    args: &'a Args,
    cfg: Config,
    target: Target,
    src: Source,
    schema: String,
    /// A bounded wait for row locks the application holds (`SESSIONDB_LOCK_TIMEOUT`).
    lock_timeout: String,
    batch: usize,
    run_id: String,
    run_uuid: uuid::Uuid,
}

/// The plan: every read that decides what a real run writes, and what it found.
struct Plan {
    status: schema::Status,
    fit: Fit,
    classifier: Classifier,
    known: Option<Box<KnownFn<'static>>>,
    /// The source's quick fingerprint, which names its backup.
    fingerprint: String,
    /// The planning pass read the store after `fingerprint` was taken (its own stats
    /// gave it, or it was taken first): a backup may then write its dumps from what the
    /// pass read, checked against the fingerprint after ([`backup::take_after_scan`]).
    read_after_fingerprint: bool,
    /// When the source was opened for the planning pass (the JSON store's records read).
    opened_at: std::time::SystemTime,
    /// The backup to stand on (`None`: the real run takes one).
    backup: Option<Checked>,
    /// The planning pass; `None` when a real run into an empty target provably needs
    /// none (see [`needs_pass`]).
    pass: Option<Planned>,
    /// The source, still open when the planning pass did not read it.
    reader: Option<Reader>,
    estimate: u64,
    plan_time: Duration,
}

pub fn run(ctx: &mut Ctx, args: &Args, d: &mut Details) -> Result<()> {
    let r = resolve(ctx, args, d)?;
    if app::is_mapped(&r.cfg) {
        return app::run(ctx, r, d);
    }
    let lock = Guard::take(&r.target, &r.schema, &r.run_id, args.dry.dry_run)?;
    let mut client =
        pg::connect_writer(&r.target, &r.lock_timeout, r.cfg.postgres.toast_compression)?;
    let plan = plan(ctx, &r, &mut client, d)?;
    if args.dry.dry_run {
        show(ctx, &r, &plan, d);
    }
    if let Some(p) = &plan.pass {
        refuse_if_needed(ctx, p, args, d)?;
    }
    if args.dry.dry_run {
        return Ok(());
    }
    act(ctx, &r, client, plan, lock, d)
}

/// Flags, config and environment: the target, the source, the run's options.
fn resolve<'a>(ctx: &mut Ctx, args: &'a Args, d: &mut Details) -> Result<Resolved<'a>> {
    let cfg = ctx.config()?;
    let target = ctx.target(Some(&cfg))?;
    let run_id = ctx.run_id();
    d.on_conflict = Some(args.on_conflict);
    d.recheck = Some(args.recheck);
    Ok(Resolved {
        args,
        src: Source::from_config(&cfg),
        schema: cfg.postgres.schema.clone(),
        lock_timeout: ctx
            .env
            .get("SESSIONDB_LOCK_TIMEOUT")
            .unwrap_or("30s")
            .to_owned(),
        batch: args.batch_size as usize,
        run_uuid: uuid::Uuid::parse_str(&run_id).expect("run ids are uuids"),
        run_id,
        cfg,
        target,
    })
}

/// Every read that decides what to write, under the lock, in the order a refusal is
/// found: the schema versions, the tables' shape, the ledger's view of the target, the
/// backup, the planning pass.
fn plan(
    ctx: &mut Ctx,
    r: &Resolved<'_>,
    c: &mut postgres::Client,
    d: &mut Details,
) -> Result<Plan> {
    let t0 = Instant::now();
    let status = schema::status(c, &r.schema)?;
    if let Some(p) = status.problems() {
        return Err(Error::SchemaVersions { message: p });
    }
    d.schema_pending = Some(status.pending.clone());
    // The target's tables as they are: a shape that cannot take the data is refused
    // before anything else (SPEC §9), and the versions to apply must apply.
    let fit = Fit::read(c, &r.schema)?;
    refuse_problems(ctx, d, fit.shape_problems())?;
    if !status.pending.is_empty() {
        schema::rehearse(c, &r.schema, &r.run_id)?;
    }
    // One open for the estimate and the planning pass: the JSON store's index is built once.
    let opened_at = std::time::SystemTime::now();
    let reader = r.src.open()?;
    let estimate = reader.estimate()?;
    let classifier = Classifier::new(c, &r.schema, &fit, r.args.recheck)?;
    warn_versions(ctx, &classifier, r.args.dry.dry_run);
    let known = known_stamps(&r.target, &r.schema, &classifier, r.args.recheck)?;
    let mut plan = Plan {
        status,
        fit,
        classifier,
        known,
        fingerprint: String::new(),
        read_after_fingerprint: false,
        opened_at,
        backup: None,
        pass: None,
        reader: Some(reader),
        estimate,
        plan_time: Duration::ZERO,
    };
    // The source's fingerprint names its backup. A dry run and a catch-up always plan,
    // and take the fingerprint from the stats the pass makes anyway; a real first load
    // may skip the pass, which depends on the backup, so it takes the fingerprint first.
    if r.args.dry.dry_run || !plan.classifier.target_empty {
        let reader = plan
            .reader
            .take()
            .expect("opened above")
            .with_fingerprint()?;
        let p = plan_pass(reader, c, &plan, r)?;
        plan.fingerprint = scanned_fingerprint(&p, &r.src)?;
        plan.read_after_fingerprint = p.summary.fingerprint.is_some();
        if r.args.dry.dry_run {
            // Shown before the backup is chosen: a refused backup leaves them known.
            report_planned(ctx, &p, r.args.quarantine, d);
        }
        plan.pass = Some(p);
    } else {
        plan.fingerprint = r.src.quick_fingerprint()?;
        plan.read_after_fingerprint = true;
    }
    plan.backup = choose_backup(ctx, &r.cfg, r.args, &plan.fingerprint, d)?;
    if plan.pass.is_none() && needs_pass(r.args, &plan) {
        let reader = plan.reader.take().expect("not read yet");
        plan.pass = Some(plan_pass(reader, c, &plan, r)?);
    }
    plan.plan_time = t0.elapsed();
    Ok(plan)
}

/// Whether a real first load needs its planning pass: constraints that depend on the
/// values need every session checked; invalid records need refusing unless
/// `--quarantine` (skipped only when the backup counted none).
fn needs_pass(args: &Args, plan: &Plan) -> bool {
    let known_invalid = plan
        .backup
        .as_ref()
        .and_then(|c| c.head.as_ref())
        .map(|m| m.counts.invalid);
    plan.fit.needs_data()
        || !(plan.classifier.target_empty && (args.quarantine || known_invalid == Some(0)))
}

/// The dry run's account of the plan: what it read and would write, the backup it
/// would use or take, the schema versions it would apply, how it would load.
fn show(ctx: &mut Ctx, r: &Resolved<'_>, plan: &Plan, d: &mut Details) {
    let p = plan.pass.as_ref().expect("a dry run always plans");
    d.backup = Some(match &plan.backup {
        Some(c) if r.args.backup.is_some() => {
            format!("would use the backup {}", c.dir.display())
        }
        Some(c) => format!("would use the matching backup {}", c.dir.display()),
        None => format!("would take a backup under {}", r.cfg.backup_dir.display()),
    });
    d.would_apply_schema_versions = Some(plan.status.pending.clone());
    d.load = Some(if !plan.classifier.target_empty {
        "staging table and upserts"
    } else if r.cfg.postgres.index_build == IndexBuildTiming::DuringLoad {
        "COPY into the empty target, the GIN index filled during it"
    } else {
        "COPY into the empty target, GIN index built after"
    });
    let args = r.args;
    let c = &p.counts;
    let writes = c.inserted
        + c.updated
        + c.invalid
        + if args.on_conflict == OnConflict::SourceWins {
            c.conflicts
        } else {
            0
        };
    let ch = &plan.classifier.changes;
    let bookkeeping = !plan.status.pending.is_empty()
        || (!plan.classifier.target_empty
            && (!ch.tracked || ch.unknown > 0 || !ch.rewritten.is_empty()));
    ctx.report.next_steps.push(if writes == 0 && !bookkeeping {
        "nothing to write: the target holds every session as the source has it; verify".into()
    } else {
        let mut cmd = "migrate-state --dry-run=false".to_owned();
        match args.on_conflict {
            OnConflict::Fail => {}
            OnConflict::Skip => cmd.push_str(" --on-conflict skip"),
            OnConflict::SourceWins => cmd.push_str(" --on-conflict source-wins"),
        }
        if args.recheck {
            cmd.push_str(" --recheck");
        }
        if args.quarantine {
            cmd.push_str(" --quarantine");
        }
        format!("{cmd} to write what this plan says")
    });
}

/// The real run, on the plan: the backup it stands on (taken when there is none), the
/// schema with the ledger's row versions, the load, then the index and statistics.
fn act(
    ctx: &mut Ctx,
    r: &Resolved<'_>,
    mut client: postgres::Client,
    mut plan: Plan,
    mut lock: Guard,
    d: &mut Details,
) -> Result<()> {
    let mut phases = PhasesMs {
        plan: plan.plan_time.as_millis() as u64,
        ..PhasesMs::default()
    };
    if let Some(p) = &plan.pass {
        d.planned = Some(p.counts.clone());
    }
    let t_backup = Instant::now();
    // What the planning pass read, for the backup's dumps: kept, or read again by id
    // (no invalid record among them: those are read from the copy, named as its).
    let scanned = match &plan.pass {
        Some(Planned {
            replay,
            read_ids,
            invalid,
            order: Some(order),
            ..
        }) if plan.read_after_fingerprint => match (replay, read_ids) {
            (Some(items), _) => Some(backup::ScanRead::Kept(items)),
            (None, Some((ids, _))) if invalid.is_empty() => Some(backup::ScanRead::Again(ids)),
            _ => None,
        }
        .map(|read| backup::Scanned {
            order,
            read,
            opened_at: plan.opened_at,
        }),
        _ => None,
    };
    let backup_dir = backup_for(ctx, r, plan.backup.take(), &plan.fingerprint, scanned, d)?;
    apply_schema(r, &mut client, &plan, d)?;
    runs::record_start(
        &mut client,
        &r.schema,
        &runs::RunStart {
            run_id: &r.run_uuid,
            step: Args::NAME,
            source_fingerprint: &plan.fingerprint,
            backup: &backup_dir,
        },
    )?;
    let fresh = plan.classifier.target_empty;
    let mut index = if fresh {
        index_build(r, &mut client)?
    } else {
        None
    };
    if !fresh || index.as_ref().is_some_and(IndexBuild::during_load) {
        schema::ensure_gin_index(&mut client, &r.schema, r.cfg.postgres.gin_opclass.as_sql())?;
    }
    phases.backup = t_backup.elapsed().as_millis() as u64;
    let t_load = Instant::now();
    let counts = load(
        ctx,
        r,
        &mut client,
        &mut plan,
        &backup_dir,
        index.as_ref(),
        d,
    )?;
    phases.load = t_load.elapsed().as_millis() as u64;
    if !lock.alive() {
        tracing::warn!("the lock connection was lost during the run");
    }
    // Fresh statistics after a load that changed much of the target; small catch-ups
    // leave it to autovacuum (ANALYZE reads a 30,000-row sample of the states).
    let analyze = (counts.inserted + counts.updated) * 10 > counts.sessions;
    let rows = Rows::new(&r.schema, &plan.fit);
    let t_index = Instant::now();
    let mut sessions_analyzed = false;
    if let Some(mut build) = index.take() {
        let spin = Phase::spinner("gin-index");
        // The build (or the final move of the pending list) is one process's work: the
        // other core gathers the sessions table's statistics meanwhile, on a connection
        // of its own (a build's lock on session_state keeps an ANALYZE of that one
        // waiting).
        let built = std::thread::scope(|s| {
            let beside = analyze.then(|| {
                s.spawn(|| {
                    pg::connect_writer(&r.target, &r.lock_timeout, r.cfg.postgres.toast_compression)
                        .is_ok_and(|mut c| rows.analyze_sessions(&mut c))
                })
            });
            let built = build.finish(&mut client, &r.schema, r.cfg.postgres.gin_opclass.as_sql());
            sessions_analyzed = beside.is_some_and(|h| h.join().unwrap_or(false));
            built
        });
        built?;
        spin.finish();
        if let Some(why) = &build.pending_list_left {
            ctx.report.warn(Finding::new(
                "gin_pending_list_left",
                format!(
                    "the GIN index's pending list was not moved into it after the load ({why}): \
                     the rows are loaded and found through it; autovacuum moves it later"
                ),
            ));
        }
        d.index_build = Some(build);
        d.gin_index_build_ms = Some(t_index.elapsed().as_millis() as u64);
    }
    phases.index = t_index.elapsed().as_millis() as u64;
    let t_analyze = Instant::now();
    if analyze {
        let spin = Phase::spinner("analyze");
        if sessions_analyzed {
            rows.analyze_state(&mut client);
        } else {
            rows.analyze(&mut client);
        }
        spin.finish();
    }
    phases.analyze = t_analyze.elapsed().as_millis() as u64;
    d.phases_ms = Some(phases);
    runs::record_end(&mut client, &r.schema, &r.run_uuid, "done", &counts)?;
    ctx.report.next_steps.push("verify".into());
    drop(lock);
    Ok(())
}

/// The backup the run stands on: the one chosen and checked by the plan, else a new one.
fn backup_for(
    ctx: &mut Ctx,
    r: &Resolved<'_>,
    chosen: Option<Checked>,
    fingerprint: &str,
    scanned: Option<backup::Scanned<'_>>,
    d: &mut Details,
) -> Result<PathBuf> {
    let dir = match chosen {
        Some(c) => c.dir,
        None => {
            tracing::info!("no sound backup of the current source: taking one");
            let opts = backup::Options {
                fingerprint_before: Some(fingerprint.to_owned()),
                ..backup::Options::default()
            };
            // The dumps from what the planning pass read, kept or read again by id.
            let again = matches!(
                scanned,
                Some(backup::Scanned {
                    read: backup::ScanRead::Again(_),
                    ..
                })
            );
            let taken = backup::take_after_scan(&r.cfg, &opts, &r.run_id, scanned)?;
            for w in taken
                .warnings
                .iter()
                .filter(|w| w.code == "backup_unreadable" || w.code == "source_changed")
            {
                ctx.report.warn(w.clone());
            }
            if !taken.removed_incomplete.is_empty() {
                d.removed_incomplete = Some(taken.removed_incomplete);
            }
            d.backup_dumps_read = Some(if taken.dumps_from_scan && again {
                "read_again_changed"
            } else if taken.dumps_from_scan {
                "kept_from_plan"
            } else {
                "database_copy"
            });
            taken.dir
        }
    };
    ctx.report.artifact("backup", &dir);
    d.backup = Some(dir.display().to_string());
    Ok(dir)
}

/// The schema, in a transaction with the ledger's row versions: learned where not
/// known yet (a ledger from before schema version 2), recorded anew for rows rewritten
/// as they were.
fn apply_schema(
    r: &Resolved<'_>,
    client: &mut postgres::Client,
    plan: &Plan,
    d: &mut Details,
) -> Result<()> {
    let mut tx = client
        .transaction()
        .map_err(|e| Error::pg("starting a transaction", &r.target.display, e))?;
    let applied = schema::apply(&mut tx, &r.schema, &r.run_id)?;
    let ch = &plan.classifier.changes;
    let learned = if !ch.tracked || ch.unknown > 0 {
        versions::learn_unknown(&mut tx, &r.schema)?
    } else {
        0
    };
    let relearned = versions::relearn(&mut tx, &r.schema, &ch.rewritten)?;
    tx.commit()
        .map_err(|e| Error::pg("committing the schema", &r.target.display, e))?;
    // What is applied now is no longer pending: one report never says both.
    if let Some(p) = &mut d.schema_pending {
        p.retain(|v| !applied.contains(v));
    }
    d.schema_applied = Some(applied);
    d.row_versions = Some(RowVersions {
        learned,
        rewritten_as_they_were: relearned,
        changed_in_target: ch.changed.len(),
    });
    Ok(())
}

/// The GIN index work of a load into an empty target, by `postgres.index_build`: none
/// when it is to be built after the load and is there already (a run killed after its
/// build).
fn index_build(r: &Resolved<'_>, c: &mut postgres::Client) -> Result<Option<IndexBuild>> {
    let when = r.cfg.postgres.index_build;
    if when == IndexBuildTiming::AfterLoad && schema::index_state(c, &r.schema)?.is_some() {
        return Ok(None);
    }
    Ok(Some(IndexBuild::plan(
        c,
        r.cfg.postgres.index_build_memory_kb,
        when,
        r.args.jobs,
    )))
}

/// The load: the items the planning pass kept, else a scan of the source; into an
/// empty target by the writers, else a batch at a time. What was committed is counted
/// and reported, and recorded in the run, also when the load fails.
fn load(
    ctx: &mut Ctx,
    r: &Resolved<'_>,
    client: &mut postgres::Client,
    plan: &mut Plan,
    backup_dir: &Path,
    index: Option<&IndexBuild>,
    d: &mut Details,
) -> Result<Counts> {
    let progress = Phase::bar("load", plan.estimate, Unit::Sessions);
    let mut out = Loaded::default();
    let known = plan.known.as_deref();
    let (feed, read) = match plan.pass.take() {
        Some(Planned {
            replay: Some(items),
            summary,
            known,
            ..
        }) => {
            out.counts.sessions += known;
            out.counts.unchanged += known;
            out.not_read += known;
            // Sessions the plan found unchanged are not read again: counted as done.
            progress.inc(known);
            (Feed::Replay(items, summary), "kept_from_plan")
        }
        Some(Planned {
            read_ids: Some((ids, _)),
            summary,
            known: unread,
            ..
        }) if known.is_some() => {
            out.counts.sessions += unread;
            out.counts.unchanged += unread;
            out.not_read += unread;
            progress.inc(unread);
            (Feed::Only(known, ids, summary), "read_again_changed")
        }
        Some(_) => (Feed::Scan(known, None), "second_scan"),
        None => (
            Feed::Scan(known, plan.reader.take().map(Box::new)),
            "single_scan",
        ),
    };
    d.load_read = Some(read);
    let lc = LoadCtx {
        src: &r.src,
        schema: &r.schema,
        run_uuid: r.run_uuid,
        run_id: &r.run_id,
        backup_dir,
        args: r.args,
    };
    let result = if plan.classifier.target_empty {
        let jobs = (0..r.args.jobs)
            .map(|_| {
                let mut c = pg::connect_writer(
                    &r.target,
                    &r.lock_timeout,
                    r.cfg.postgres.toast_compression,
                )?;
                if let Some(b) = index {
                    b.set_writer_memory(&mut c)?;
                }
                Ok(c)
            })
            .collect::<Result<Vec<_>>>()?;
        load_fresh(&lc, jobs, feed, &mut out, &progress)
    } else {
        load_incremental(&lc, client, &plan.classifier, feed, &mut out, &progress)
    };
    if result.is_ok() {
        progress.finish();
    } else {
        drop(progress);
    }
    if let Some(q) = &out.quarantine {
        report_quarantine(ctx, q, d);
    }
    out.counts.to_report(&mut ctx.report);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = runs::record_end(client, &r.schema, &r.run_uuid, "failed", &out.counts);
            ctx.report.next_steps.push("fix the cause, then run migrate-state --dry-run=false again: committed batches are kept and skipped".into());
            return Err(e);
        }
    };
    for w in &summary.warnings {
        ctx.report.warn(w.clone());
    }
    ctx.report.count("quarantined", out.quarantined);
    d.unchanged_by_stamp = Some(out.not_read);
    d.skipped_conflicts = Some(out.skipped.iter().take(INLINE_LIMIT).cloned().collect());
    if let Some(Ok(path)) = crate::report::write_list(
        ctx.report_dir(),
        "migrate-state-skipped.jsonl",
        &out.skipped,
    ) {
        ctx.report.artifact("skipped_conflicts", &path);
    }
    Ok(out.counts)
}

/// What the planning pass found.
#[derive(Default)]
struct Planned {
    counts: Counts,
    conflicts: Vec<ConflictInfo>,
    invalid: Vec<Invalid>,
    /// Sessions the ledger's stamps recognised without reading them.
    known: u64,
    /// Every item that was read (not recognised by its stamp), kept while they fit in
    /// [`REPLAY_LIMIT`]: the load then writes these instead of scanning the source a
    /// second time, so a catch-up reads the store once.
    replay: Option<Vec<Item>>,
    /// The ids of the sessions and invalid records that were read, kept while they fit
    /// in [`READ_IDS_LIMIT`]: when the replay does not fit, the load reads these again
    /// and passes over the rest unread ([`Feed::Only`]), so that a catch-up of a large
    /// store still reads in proportion to what changed.
    read_ids: Option<(Arc<HashSet<String>>, usize)>,
    /// The scan's order, the sessions not read as their ids and stamps, for a real run:
    /// [`ORDER_MEMORY`] of it in memory and the rest in a file with no name in
    /// `backup.dir` (without that folder, in memory while it fits in [`ORDER_LIMIT`], and
    /// not begun for a store too large for it). With the replay, or the ids read again,
    /// every item of the scan, from which a backup taken next writes its dumps instead of
    /// resolving its database copy (every state file stat-ed again).
    order: Option<ScanOrder>,
    summary: crate::source::Summary,
    /// What the target's constraints refuse of the data read.
    problems: Vec<Problem>,
}

/// The most state bytes (original and canonical) the planning pass keeps for the load.
const REPLAY_LIMIT: usize = 32 << 20;
/// The most bytes the ids of the sessions read take in the planning pass (counted with
/// a set's overhead: some 100,000 UUIDs).
const READ_IDS_LIMIT: usize = 8 << 20;
/// The most bytes of the scan's order the planning pass keeps when it cannot write it
/// out.
const ORDER_LIMIT: usize = 24 << 20;
/// The bytes of the scan's order held in memory when the rest is written out.
const ORDER_MEMORY: usize = 1 << 20;
/// What the order takes per session, at most about: its tag, a 36-character id (a
/// UUID's) and its 35-character stamp, each with its length (81), rounded up.
const ORDER_BYTES: u64 = 96;

fn session_bytes(s: &Session) -> usize {
    s.state
        .as_ref()
        .map_or(0, |st| st.raw.len() + st.canonical.len())
        + 256
}

impl Planned {
    /// Keep a batch for the load while what is kept fits in [`REPLAY_LIMIT`].
    fn keep(&mut self, kept: &mut usize, sessions: Vec<Session>, invalid: &[Invalid]) {
        let Some(r) = &mut self.replay else {
            return;
        };
        *kept += invalid
            .iter()
            .map(|i| i.raw.len() + i.message.len() + 256)
            .sum::<usize>()
            + sessions.iter().map(session_bytes).sum::<usize>();
        if *kept > REPLAY_LIMIT {
            self.replay = None;
            self.drop_order_if_unread();
            return;
        }
        r.extend(invalid.iter().cloned().map(Item::Invalid));
        r.extend(sessions.into_iter().map(Item::Session));
    }

    /// Note the ids of what a batch read (see [`Planned::read_ids`]). A record with no
    /// usable id needs no note: a restricted scan always reads those.
    fn note_read(&mut self, sessions: &[Session], invalid: &[Invalid]) {
        let Some((ids, bytes)) = &mut self.read_ids else {
            return;
        };
        let read = sessions
            .iter()
            .map(|s| &s.id)
            .chain(invalid.iter().filter_map(|i| i.id.as_ref()));
        let set = Arc::get_mut(ids).expect("only the planning pass holds the ids");
        for id in read {
            *bytes += id.len() + 48;
            set.insert(id.clone());
        }
        if *bytes > READ_IDS_LIMIT {
            self.read_ids = None;
            self.drop_order_if_unread();
        }
    }

    /// The order serves the dumps only with what was read: kept, or its ids to read
    /// them again. With neither, it goes.
    fn drop_order_if_unread(&mut self) {
        if self.replay.is_none() && self.read_ids.is_none() {
            self.order = None;
        }
    }

    /// Note a batch's order for the backup's dumps (see [`Planned::order`]): the items
    /// kept are in it invalid records first, as [`Planned::keep`] keeps them.
    fn note_order(&mut self, items: &[Item]) {
        let Some(o) = &mut self.order else {
            return;
        };
        let mut fits = true;
        for it in items {
            if let Item::Invalid(i) = it {
                fits &= o.read(i.id.as_deref());
            }
        }
        for it in items {
            fits &= match it {
                Item::Known { id, stamp } => o.known(id, stamp),
                Item::Session(s) => o.read(Some(&s.id)),
                Item::Invalid(_) => true,
            };
        }
        if !fits {
            self.order = None;
        }
    }
}

/// Scan the whole source and classify every session, writing nothing; check what was
/// read against the target's constraints (the same checks as preflight's).
fn plan_pass(
    reader: Reader,
    client: &mut postgres::Client,
    plan: &Plan,
    r: &Resolved<'_>,
) -> Result<Planned> {
    let progress = Phase::bar("plan", plan.estimate, Unit::Sessions);
    let mut p = Planned {
        replay: Some(Vec::new()),
        read_ids: Some((Arc::new(HashSet::new()), 0)),
        // Only a real run that may take its own backup writes its dumps from the order.
        order: (!r.args.dry.dry_run && r.args.backup.is_none())
            .then(|| scan_order(r, plan.estimate))
            .flatten(),
        ..Planned::default()
    };
    let batch = r.batch;
    let fit = &plan.fit;
    let mut stats = fit.needs_data().then(|| fit.stats());
    let mut kept = 0usize;
    let summary = reader.scan_with(batch, plan.known.as_deref(), |items| {
        progress.inc(items.len() as u64);
        p.note_order(&items);
        let mut sessions = Vec::with_capacity(items.len());
        let mut invalid = Vec::new();
        let mut unchanged = 0u64;
        for it in items {
            match it {
                Item::Session(s) => sessions.push(s),
                Item::Invalid(i) => invalid.push(i),
                Item::Known { .. } => unchanged += 1,
            }
        }
        let cl = plan.classifier.classify(client, &sessions)?;
        if let Some(st) = &mut stats {
            sessions.iter().for_each(|s| st.add(s));
        }
        for (s, a) in sessions.iter().zip(cl.actions) {
            p.counts.add(a);
            p.counts.bytes += s.state.as_ref().map_or(0, |st| st.raw.len() as u64);
        }
        p.counts.unchanged += unchanged;
        p.known += unchanged;
        p.counts.sessions += sessions.len() as u64 + unchanged;
        p.conflicts.extend(cl.conflicts);
        p.note_read(&sessions, &invalid);
        p.keep(&mut kept, sessions, &invalid);
        p.invalid.extend(invalid);
        Ok(())
    })?;
    progress.finish();
    p.counts.invalid = p.invalid.len() as u64;
    p.summary = summary;
    if let Some(st) = &stats {
        p.problems = fit.data_problems(client, st)?;
    }
    Ok(p)
}

/// The order a real run's planning pass keeps for the backup's dumps: written out
/// past [`ORDER_MEMORY`] into `backup.dir` when that folder takes a file with no name;
/// else in memory, not begun when the store is too large for it (about 60 bytes a
/// session).
fn scan_order(r: &Resolved<'_>, estimate: u64) -> Option<ScanOrder> {
    match ScanOrder::spilling(&r.cfg.backup_dir, ORDER_MEMORY) {
        Ok(o) => Some(o),
        Err(e) => {
            let fits = estimate.saturating_mul(ORDER_BYTES) <= ORDER_LIMIT as u64;
            tracing::info!(
                "the scan's order stays in memory ({}): {} has no room for a file with no name: {e}",
                if fits {
                    "it fits"
                } else {
                    "not kept: too large"
                },
                r.cfg.backup_dir.display()
            );
            fits.then(|| ScanOrder::new(ORDER_LIMIT, (estimate * ORDER_BYTES) as usize))
        }
    }
}

/// The source's fingerprint that a planning pass took from its own stats (taken again
/// only if that pass could not give it).
fn scanned_fingerprint(p: &Planned, src: &Source) -> Result<String> {
    match &p.summary.fingerprint {
        Some(fp) => Ok(fp.clone()),
        None => src.quick_fingerprint(),
    }
}

fn report_planned(ctx: &mut Ctx, p: &Planned, quarantine: bool, d: &mut Details) {
    p.counts.to_report(&mut ctx.report);
    // What the scan warned of (orphan state files, duplicate ids, states that disagree),
    // as the real run reports it from the same scan.
    for w in &p.summary.warnings {
        ctx.report.warn(w.clone());
    }
    d.unchanged_by_stamp = Some(p.known);
    d.conflicts = Some(p.conflicts.iter().take(INLINE_LIMIT).cloned().collect());
    d.invalid = Some(
        p.invalid
            .iter()
            .take(INLINE_LIMIT)
            .map(Invalid::finding)
            .collect(),
    );
    if let Some(Ok(path)) = crate::report::write_list(
        ctx.report_dir(),
        "migrate-state-conflicts.jsonl",
        &p.conflicts,
    ) {
        ctx.report.artifact("conflicts", &path);
    }
    if let Some(Ok(path)) =
        crate::report::write_list(ctx.report_dir(), "migrate-state-invalid.jsonl", &p.invalid)
    {
        ctx.report.artifact("invalid_records", &path);
    }
    if quarantine {
        for i in p.invalid.iter().take(INLINE_LIMIT) {
            ctx.report.warn(i.finding());
        }
    }
}

/// The backup a run stands on, chosen and checked before anything is written: the dry
/// run and the real run call this one function, so the dry run refuses what the real
/// run would. `--backup DIR`: that folder, which must be a complete backup with every
/// listed file present at its size (`--verify-backup`: its SHA-256 too), else the run is
/// refused (`backup_incomplete`, `backup_damaged`), naming the backup and what is wrong.
/// Without it: the newest complete backup of the current source that checks out; one
/// that does not is passed over with a warning (the real run takes a sound one of its
/// own: refusing would leave the operator nothing to do but delete it). `None`: a
/// backup must be taken.
fn choose_backup(
    ctx: &mut Ctx,
    cfg: &Config,
    args: &Args,
    fp: &str,
    d: &mut Details,
) -> Result<Option<Checked>> {
    let depth = if args.verify_backup {
        Depth::Checksums
    } else {
        Depth::Sizes
    };
    let not_a_backup = |dir: &Path, e: Error| format!("{} is not a backup: {e}", dir.display());
    if let Some(dir) = &args.backup {
        let c =
            backup::check(dir, depth, SUMMARY_PROBLEMS).map_err(|e| Error::BackupIncomplete {
                message: not_a_backup(dir, e),
            })?;
        d.backup_check = Some(BackupCheck::of(&c));
        return given_backup(ctx, c, fp).map(Some);
    }
    for dir in backup::matching(&cfg.backup_dir, fp) {
        let c = match backup::check(&dir, depth, SUMMARY_PROBLEMS) {
            Ok(c) => c,
            Err(e) => {
                ctx.report.warn(
                    Finding::new(
                        "backup_incomplete",
                        format!("the matching backup {}: passed over", not_a_backup(&dir, e)),
                    )
                    .path(&dir),
                );
                continue;
            }
        };
        if c.is_sound() {
            tracing::info!("using the matching backup {}", dir.display());
            d.backup_check = Some(BackupCheck::of(&c));
            return Ok(Some(c));
        }
        ctx.report.warn(
            Finding::new(
                c.code(),
                format!("the matching backup {}: passed over", c.summary()),
            )
            .path(&dir),
        );
    }
    Ok(None)
}

/// The backup given with `--backup`, checked: refused unless sound; warned when it was
/// taken from an older state of the source.
fn given_backup(ctx: &mut Ctx, c: Checked, fp: &str) -> Result<Checked> {
    let dir = &c.dir;
    if !c.is_sound() {
        ctx.report.next_steps.push(format!(
            "do not rely on {}: take a new backup with `backup`, or leave out --backup and migrate-state --dry-run=false takes one",
            dir.display()
        ));
        let message = format!("the backup {}: refused", c.summary());
        return Err(if c.code() == "backup_incomplete" {
            Error::BackupIncomplete { message }
        } else {
            Error::BackupDamaged { message }
        });
    }
    if c.head.as_ref().is_some_and(|h| h.source_fingerprint != fp) {
        ctx.report.warn(Finding::new(
            "backup_stale",
            format!(
                "the backup {} was taken from an older state of the source",
                dir.display()
            ),
        ));
    }
    tracing::info!(
        "using the backup {}: {} listed files present{}",
        dir.display(),
        c.files,
        if c.checksums {
            ", their SHA-256 match"
        } else {
            " at their sizes"
        }
    );
    Ok(c)
}

/// One line of a quarantine's index: the record, and where its raw bytes are.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineLine {
    pub id: Option<String>,
    pub code: &'static str,
    pub message: String,
    #[serde(serialize_with = "lossy_opt_path")]
    pub path: Option<PathBuf>,
    pub record: &'static str,
    /// The file under `quarantine/` holding the raw bytes (`None`: there are none).
    pub raw_file: Option<String>,
    pub bytes: usize,
    pub sha256: String,
    /// Whether the file was already there, from an earlier run.
    pub reused: bool,
}

/// Invalid records set aside under the backup's `quarantine/`: each record's raw bytes
/// in a file of their own, and this run's index (`index-<run>.ndjson`, one
/// [`QuarantineLine`] a record). A record whose bytes the quarantine already holds (the
/// same id, code and SHA-256 in an earlier run's index, the file still there with those
/// bytes) is pointed at, not copied again; an unreadable file has no bytes to keep: its
/// line says where it is and why.
struct Quarantine {
    dir: PathBuf,
    index: std::fs::File,
    index_path: PathBuf,
    n: u64,
    run8: String,
    /// What earlier runs' indexes say the quarantine holds: (id, code, SHA-256) → file.
    held: std::collections::HashMap<HeldKey, String>,
    /// This run's first [`INLINE_LIMIT`] index lines, for the report.
    listed: Vec<QuarantineLine>,
    total: u64,
    reused: u64,
}

type HeldKey = (Option<String>, String, String);

impl Quarantine {
    fn new(backup: &Path, run_id: &str) -> Result<Quarantine> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = backup.join("quarantine");
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |e| Error::Write { path, source: e }
        };
        crate::fsutil::create_private_dir_all(&dir).map_err(werr(&dir))?;
        let held = Self::read_held(&dir);
        let run8 = run_id.chars().take(8).collect::<String>();
        let index_path = dir.join(format!("index-{run_id}.ndjson"));
        let index = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&index_path)
            .map_err(werr(&index_path))?;
        Ok(Quarantine {
            index_path,
            index,
            dir,
            n: 0,
            run8,
            held,
            listed: Vec::new(),
            total: 0,
            reused: 0,
        })
    }

    /// Every raw file the indexes in `dir` name, by (id, code, SHA-256). A line that
    /// does not parse (the torn end of a run killed mid-write) is passed over.
    fn read_held(dir: &Path) -> std::collections::HashMap<HeldKey, String> {
        use std::io::BufRead;
        let mut held = std::collections::HashMap::new();
        let Ok(rd) = std::fs::read_dir(dir) else {
            return held;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("index-") && name.ends_with(".ndjson")) {
                continue;
            }
            let Ok(f) = std::fs::File::open(e.path()) else {
                continue;
            };
            for line in std::io::BufReader::new(f).lines().map_while(|l| l.ok()) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let (Some(code), Some(sha), Some(raw)) = (
                    v["code"].as_str(),
                    v["sha256"].as_str(),
                    v["raw_file"].as_str(),
                ) else {
                    continue;
                };
                let id = v["id"].as_str().map(str::to_owned);
                held.entry((id, code.to_owned(), sha.to_owned()))
                    .or_insert_with(|| raw.to_owned());
            }
        }
        held
    }

    /// Whether `name` in the quarantine holds exactly `raw`.
    fn holds(&self, name: &str, raw: &[u8]) -> bool {
        let safe = Path::new(name)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        safe && std::fs::read(self.dir.join(name)).is_ok_and(|b| b == raw)
    }

    /// The file holding `i`'s raw bytes: one an earlier run wrote, else a new one
    /// (`None` for an unreadable file: there are no bytes).
    fn raw_file(&mut self, i: &Invalid, sha: &str) -> Result<(Option<String>, bool)> {
        if i.code == "unreadable" {
            return Ok((None, false));
        }
        let key: HeldKey = (i.id.clone(), i.code.to_owned(), sha.to_owned());
        if let Some(name) = self.held.get(&key).filter(|n| self.holds(n, &i.raw)) {
            return Ok((Some(name.clone()), true));
        }
        self.n += 1;
        let name = format!("{}-{:06}-{}.raw", self.run8, self.n, i.code);
        let path = self.dir.join(&name);
        crate::fsutil::write_atomic(&path, &i.raw, 0o600).map_err(|e| Error::Write {
            path: path.clone(),
            source: e,
        })?;
        self.held.insert(key, name.clone());
        Ok((Some(name), false))
    }

    /// Set a batch of records aside; their index lines are appended in one write.
    fn add(&mut self, batch: &[Invalid]) -> Result<()> {
        use std::io::Write;
        let mut lines = Vec::new();
        for i in batch {
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&i.raw));
            let (raw_file, reused) = self.raw_file(i, &sha)?;
            self.reused += u64::from(reused);
            let line = QuarantineLine {
                id: i.id.clone(),
                code: i.code,
                message: i.message.clone(),
                path: i.path.clone(),
                record: i.record,
                raw_file,
                bytes: i.raw.len(),
                sha256: sha,
                reused,
            };
            lines.extend_from_slice(serde_json::to_string(&line).unwrap_or_default().as_bytes());
            lines.push(b'\n');
            if self.listed.len() < INLINE_LIMIT {
                self.listed.push(line);
            }
            self.total += 1;
        }
        self.index
            .write_all(&lines)
            .and_then(|_| self.index.sync_data())
            .map_err(|e| Error::Write {
                path: self.index_path.clone(),
                source: e,
            })
    }
}

/// Name what a run set aside: the first [`INLINE_LIMIT`] records in
/// `details.quarantined` (id, code, raw file), every one of them in
/// `migrate-state-quarantined.jsonl` beside the report (with `--report-dir`), and one
/// `quarantined` warning.
fn report_quarantine(ctx: &mut Ctx, q: &Quarantine, d: &mut Details) {
    ctx.report.artifact("quarantine", &q.dir);
    d.quarantine = Some(q.dir.clone());
    d.quarantined = Some(q.listed.clone());
    if let Some(dir) = ctx.report_dir().filter(|_| q.total > 0) {
        match crate::report::copy_list(dir, "migrate-state-quarantined.jsonl", &q.index_path) {
            Ok(path) => ctx.report.artifact("quarantined", &path),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    if q.total == 0 {
        return;
    }
    let named: Vec<String> = q
        .listed
        .iter()
        .take(5)
        .map(|l| {
            format!(
                "{} ({})",
                l.id.as_ref().map_or_else(
                    || "a record without a usable id".to_owned(),
                    |i| format!("{i:?}")
                ),
                l.code
            )
        })
        .collect();
    ctx.report.warn(
        Finding::new(
            "quarantined",
            format!(
                "{} invalid record(s) set aside under {} ({}{}; {} already held there, not copied again); every one is listed in {}",
                q.total,
                q.dir.display(),
                named.join(", "),
                if q.total > named.len() as u64 { ", ..." } else { "" },
                q.reused,
                q.index_path.display()
            ),
        )
        .path(&q.dir),
    );
}

/// What the load did, kept also when it fails (the report shows what was committed).
#[derive(Default)]
struct Loaded {
    counts: Counts,
    quarantined: u64,
    skipped: Vec<ConflictInfo>,
    quarantine: Option<Quarantine>,
    not_read: u64,
}

impl Loaded {
    /// The batch's sessions to write and invalid records; sessions the ledger's stamps
    /// recognised are counted unchanged here.
    fn split(&mut self, items: Vec<Item>) -> (Vec<Session>, Vec<Invalid>) {
        let mut sessions = Vec::with_capacity(items.len());
        let mut invalid = Vec::new();
        for it in items {
            match it {
                Item::Session(s) => sessions.push(s),
                Item::Invalid(i) => invalid.push(i),
                Item::Known { .. } => {
                    self.counts.sessions += 1;
                    self.counts.unchanged += 1;
                    self.not_read += 1;
                }
            }
        }
        (sessions, invalid)
    }

    /// Save the raw bytes of invalid records under the backup's quarantine/; the ids
    /// and codes to record in the ledger with the batch.
    fn set_aside(
        &mut self,
        lc: &LoadCtx<'_>,
        invalid: &[Invalid],
    ) -> Result<Vec<(String, &'static str)>> {
        if invalid.is_empty() {
            return Ok(Vec::new());
        }
        if !lc.args.quarantine {
            return Err(Error::InvalidRecords {
                message: format!(
                    "{} invalid record(s) appeared in the source during the run (e.g. {}); rerun with --quarantine or fix them",
                    invalid.len(),
                    invalid[0].message
                ),
                quarantine: true,
            });
        }
        let q = match &mut self.quarantine {
            Some(q) => q,
            None => self
                .quarantine
                .insert(Quarantine::new(lc.backup_dir, lc.run_id)?),
        };
        q.add(invalid)?;
        Ok(invalid.iter().map(|i| (i.ledger_key(), i.code)).collect())
    }

    /// A committed batch, counted.
    fn committed(&mut self, counts: &Counts, invalid: u64, skipped: Vec<ConflictInfo>) {
        let c = &mut self.counts;
        c.sessions += counts.sessions;
        c.inserted += counts.inserted;
        c.updated += counts.updated;
        c.unchanged += counts.unchanged;
        c.conflicts += counts.conflicts;
        c.bytes += counts.bytes;
        c.invalid += invalid;
        self.quarantined += invalid;
        self.skipped.extend(skipped);
    }
}

/// What a load needs to know besides its connection.
struct LoadCtx<'a> {
    src: &'a Source,
    schema: &'a str,
    run_uuid: uuid::Uuid,
    run_id: &'a str,
    backup_dir: &'a Path,
    args: &'a Args,
}

/// Where the load's items come from.
enum Feed<'k> {
    /// What the planning pass read, in order, with its scan summary.
    Replay(Vec<Item>, crate::source::Summary),
    /// What the planning pass read, read again: a scan of the source that passes over
    /// every other session unread ([`Reader::only`]), its ledger's stamps asked as in
    /// [`Feed::Scan`]; the planning pass's scan summary.
    Only(
        Option<&'k KnownFn<'k>>,
        Arc<HashSet<String>>,
        crate::source::Summary,
    ),
    /// A scan of the source (skipping what the ledger's stamps recognise), on the store
    /// as the plan opened it when no planning pass read it (one SQLite connection and
    /// one JSON-store index for the whole run, and a JSON store rewritten since fails
    /// with `source_changed`), else opened again.
    Scan(Option<&'k KnownFn<'k>>, Option<Box<Reader>>),
}

impl Feed<'_> {
    fn run(
        self,
        src: &Source,
        batch: usize,
        mut f: impl FnMut(Vec<Item>) -> Result<()>,
    ) -> Result<crate::source::Summary> {
        match self {
            Feed::Replay(items, summary) => {
                let mut it = items.into_iter();
                loop {
                    let chunk: Vec<Item> = it.by_ref().take(batch).collect();
                    if chunk.is_empty() {
                        return Ok(summary);
                    }
                    f(chunk)?;
                }
            }
            Feed::Only(known, ids, summary) => {
                src.open()?.only(ids).scan_with(batch, known, f)?;
                Ok(summary)
            }
            Feed::Scan(known, reader) => {
                let reader = match reader {
                    Some(r) => *r,
                    None => src.open()?,
                };
                reader.scan_with(batch, known, f)
            }
        }
    }
}

/// Load into an empty target: batches rendered here, in parallel, and committed by
/// `clients.len()` writer threads (COPY straight into the tables, no staging).
fn load_fresh(
    lc: &LoadCtx<'_>,
    clients: Vec<postgres::Client>,
    feed: Feed<'_>,
    out: &mut Loaded,
    progress: &Phase,
) -> Result<crate::source::Summary> {
    std::thread::scope(|scope| {
        let writers = load::Writers::start(scope, clients, lc.schema, lc.run_uuid);
        let scanned = feed.run(lc.src, lc.args.batch_size as usize, |items| {
            let read = items.len() as u64;
            let (sessions, invalid) = out.split(items);
            let quarantined = out.set_aside(lc, &invalid)?;
            let rendered = load::render_fresh(&sessions, &lc.run_uuid);
            let n = sessions.len() as u64;
            drop(sessions);
            writers.send(load::Job {
                rendered,
                sessions: n,
                invalid: invalid.len() as u64,
                quarantined,
            })?;
            progress.inc(read);
            Ok(())
        });
        let (written, failed) = writers.finish();
        out.counts.sessions += written.sessions;
        out.counts.inserted += written.sessions;
        out.counts.bytes += written.state_bytes;
        out.counts.invalid += written.invalid;
        out.quarantined += written.invalid;
        match failed {
            Some(e) => Err(e),
            None => scanned,
        }
    })
}

/// Load into a target that already holds sessions: each batch classified against the
/// ledger and the target inside its transaction, then staged and upserted.
fn load_incremental(
    lc: &LoadCtx<'_>,
    client: &mut postgres::Client,
    classifier: &Classifier,
    feed: Feed<'_>,
    out: &mut Loaded,
    progress: &Phase,
) -> Result<crate::source::Summary> {
    feed.run(lc.src, lc.args.batch_size as usize, |items| {
        let read = items.len() as u64;
        let (sessions, invalid) = out.split(items);
        if sessions.is_empty() && invalid.is_empty() {
            progress.inc(read);
            return Ok(());
        }
        out.set_aside(lc, &invalid)?;
        let mut tx = client
            .transaction()
            .map_err(|e| Error::pg("starting a batch", "", e))?;
        let cl = classifier.classify(&mut tx, &sessions)?;
        ledger::restamp(&mut tx, lc.schema, &cl.restamp)?;
        let w = sort_batch(lc.args.on_conflict, &sessions, &cl.actions)?;
        if !w.write.sessions.is_empty() {
            load::upsert(&mut tx, lc.schema, &lc.run_uuid, &w.write)?;
        }
        ledger::adopt(&mut tx, lc.schema, &lc.run_uuid, &w.adopt)?;
        let refs: Vec<&Invalid> = invalid.iter().collect();
        ledger::record_quarantined(&mut tx, lc.schema, &lc.run_uuid, &refs)?;
        tx.commit()
            .map_err(|e| Error::pg("committing a batch", "", e))?;
        // Committed: count it.
        out.committed(&w.counts, invalid.len() as u64, w.skipped);
        progress.inc(read);
        Ok(())
    })
}

/// A classified batch, sorted by what the load does with each session.
struct Sorted<'a> {
    write: load::Batch<'a>,
    adopt: Vec<(&'a Session, String)>,
    skipped: Vec<ConflictInfo>,
    counts: Counts,
}

/// What to write, adopt and skip of a batch, by its actions and `--on-conflict`; a
/// conflict with `--on-conflict fail` stops the load (earlier batches are committed).
fn sort_batch<'a>(
    on_conflict: OnConflict,
    sessions: &'a [Session],
    actions: &[Action],
) -> Result<Sorted<'a>> {
    let mut w = Sorted {
        write: load::Batch {
            sessions: Vec::new(),
        },
        adopt: Vec::new(),
        skipped: Vec::new(),
        counts: Counts::default(),
    };
    let state_bytes = |s: &Session| s.state.as_ref().map_or(0, |st| st.raw.len() as u64);
    for (s, a) in sessions.iter().zip(actions) {
        w.counts.sessions += 1;
        match (a, on_conflict) {
            (Action::Insert | Action::Update, _) => {
                w.counts.add(*a);
                w.counts.bytes += state_bytes(s);
                w.write.sessions.push((s, s.content_hash()));
            }
            (Action::Unchanged, _) => w.counts.add(*a),
            (Action::Adopt, _) => {
                w.counts.add(*a);
                w.adopt.push((s, s.content_hash()));
            }
            (Action::Conflict, OnConflict::Fail) => {
                return Err(Error::Conflict {
                    message: format!(
                        "session {} changed in the target during the run; nothing more was written (earlier batches are committed and recorded)",
                        s.id
                    ),
                });
            }
            (Action::Conflict, OnConflict::Skip) => {
                w.counts.conflicts += 1;
                w.skipped.push(ConflictInfo {
                    session: s.id.clone(),
                    reason: "skipped (--on-conflict skip)".into(),
                });
            }
            (Action::Conflict, OnConflict::SourceWins) => {
                w.counts.conflicts += 1;
                w.counts.updated += 1;
                w.counts.bytes += state_bytes(s);
                w.write.sessions.push((s, s.content_hash()));
            }
        }
    }
    Ok(w)
}

/// The ledger's stamps, asked a batch at a time on a connection of their own: sessions
/// whose sources are stamped exactly as when they were last migrated are not read again,
/// so a catch-up costs in proportion to what changed. Sessions whose target rows changed
/// are read all the same (a conflict to name, or to rewrite from the source). `None`
/// for an empty target, and with `--recheck` (every session is read).
fn known_stamps(
    t: &Target,
    schema_name: &str,
    classifier: &Classifier,
    recheck: bool,
) -> Result<Option<Box<KnownFn<'static>>>> {
    if classifier.target_empty || recheck {
        return Ok(None);
    }
    let changed = classifier.changes.changed.clone();
    let conn = std::sync::Mutex::new(pg::connect(t)?);
    let schema_name = schema_name.to_owned();
    Ok(Some(Box::new(move |pairs: &[(&str, &str)]| {
        let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(ledger::known_stamps(&mut *c, &schema_name, pairs)?
            .into_iter()
            .filter(|id| !changed.contains(id))
            .collect())
    })))
}

/// Warn when the ledger cannot tell which target rows sessiondb wrote: then a change
/// made in the target before this run cannot be seen.
fn warn_versions(ctx: &mut Ctx, classifier: &Classifier, dry: bool) {
    if classifier.target_empty {
        return;
    }
    let ch = &classifier.changes;
    let what = if !ch.tracked {
        "the ledger does not record which target rows sessiondb wrote (it predates schema version 2)".to_owned()
    } else if ch.unknown > 0 {
        format!(
            "{} migrated session(s) have no recorded target row versions",
            ch.unknown
        )
    } else {
        return;
    };
    let then = if dry {
        "the real run records them"
    } else {
        "this run records them as the target is now"
    };
    ctx.report.warn(Finding::new(
        "row_versions_unknown",
        format!(
            "{what}: a change made in the target before they are recorded cannot be seen; {then}. To compare every session with the target once: migrate-state --recheck"
        ),
    ));
}

/// Refuse on what the target's tables or constraints cannot take (`schema_mismatch`
/// for their shape, `constraint` for the data), each named.
fn refuse_problems(ctx: &mut Ctx, d: &mut Details, problems: Vec<Problem>) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    ctx.report.next_steps.push(
        "fix the target tables or the data as each problem says (preflight names them all), then run migrate-state again: nothing was written".into(),
    );
    let message = problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let shape = problems
        .iter()
        .any(|p| p.code == constraints::SCHEMA_MISMATCH);
    d.target_problems = Some(problems);
    Err(if shape {
        Error::TablesUnfit { message }
    } else {
        Error::ConstraintViolated { message }
    })
}

/// Refuse on what the target's constraints refuse, invalid records (without
/// --quarantine) or conflicts (with --on-conflict fail). A real run refused says what
/// its planning pass found, as the dry run does.
fn refuse_if_needed(ctx: &mut Ctx, p: &Planned, args: &Args, d: &mut Details) -> Result<()> {
    let dry = args.dry.dry_run;
    let refused = planned_refusal(ctx, p, args, d);
    if refused.is_err() && !dry {
        report_planned(ctx, p, args.quarantine, d);
    }
    refused
}

fn planned_refusal(ctx: &mut Ctx, p: &Planned, args: &Args, d: &mut Details) -> Result<()> {
    refuse_problems(ctx, d, p.problems.clone())?;
    let would = if args.dry.dry_run {
        "would refuse"
    } else {
        "refused"
    };
    if !p.invalid.is_empty() && !args.quarantine {
        ctx.report
            .next_steps
            .push("fix the invalid records, or pass --quarantine to set them aside".into());
        return Err(Error::InvalidRecords {
            message: format!(
                "{} invalid record(s): {would}, nothing written (e.g. {})",
                p.invalid.len(),
                p.invalid[0].message
            ),
            quarantine: true,
        });
    }
    if !p.conflicts.is_empty() && args.on_conflict == OnConflict::Fail {
        return Err(refuse_conflicts(ctx, &p.conflicts, "session(s)", would));
    }
    Ok(())
}

/// The refusal of a plan whose `conflicts` (target rows changed behind sessiondb's back)
/// `--on-conflict fail` does not allow, with the way out; `what` names the rows.
pub(super) fn refuse_conflicts(
    ctx: &mut Ctx,
    conflicts: &[ConflictInfo],
    what: &str,
    would: &str,
) -> Error {
    ctx.report.next_steps.push(
        "the rows in details.conflicts differ in the target from what sessiondb last wrote there: check which side is right (the target may hold the application's writes); then rerun with --on-conflict skip to keep the target's rows, or --on-conflict source-wins to rewrite them from the source (runbooks/incident.md)"
            .into(),
    );
    Error::Conflict {
        message: format!(
            "{} {what} differ in the target from what sessiondb wrote: {would}, nothing written (e.g. {}: {})",
            conflicts.len(),
            conflicts[0].session,
            conflicts[0].reason
        ),
    }
}
