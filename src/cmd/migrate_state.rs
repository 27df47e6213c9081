//! `migrate-state` (SPEC §4): load every session into PostgreSQL. A dry run (the
//! default) walks the same plan as the real run and stops before the first write.
//! A real run: the writers' lock, a verified backup, a planning pass that refuses
//! invalid records and conflicts before anything is written, the schema, then the
//! load, one transaction a batch with its ledger rows. Killed at any moment, it is
//! finished by running it again; run again, it changes nothing; later, it copies only
//! what changed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::{Common, Ctx, DryRun, Step};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pg::constraints::{Fit, Problem};
use crate::pg::{self, WriterLock, ledger, load, schema};
use crate::plan::{Action, ConflictInfo, Counts, Planner};
use crate::report::{Finding, INLINE_LIMIT};
use crate::source::{Invalid, Item, KnownFn, Session, Source};

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
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Connections writing at once into an empty target (each commits whole batches).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub jobs: u32,
}

impl Step for Args {
    const NAME: &'static str = "migrate-state";
    fn common(&self) -> &Common {
        &self.common
    }
    fn dry_run(&self) -> Option<bool> {
        Some(self.dry.dry_run)
    }
    fn run(&self, ctx: &mut Ctx) -> Result<()> {
        run(ctx, self)
    }
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
    summary: crate::source::Summary,
    /// What the target's constraints refuse of the data read.
    problems: Vec<Problem>,
}

/// The most state bytes (original and canonical) the planning pass keeps for the load.
const REPLAY_LIMIT: usize = 32 << 20;

fn session_bytes(s: &Session) -> usize {
    s.state
        .as_ref()
        .map_or(0, |st| st.raw.len() + st.canonical.len())
        + 256
}

/// Scan the whole source and classify every session, writing nothing; check what was
/// read against the target's constraints (the same checks as preflight's).
#[allow(clippy::too_many_arguments)]
fn plan_pass(
    reader: crate::source::Reader,
    client: &mut postgres::Client,
    planner: &Planner,
    fit: &Fit,
    known: Option<&KnownFn<'_>>,
    batch: usize,
    progress: &mut Progress,
) -> Result<Planned> {
    let mut p = Planned {
        replay: Some(Vec::new()),
        ..Planned::default()
    };
    let mut stats = fit.needs_data().then(|| fit.stats());
    let mut kept = 0usize;
    let summary = reader.scan_with(batch, known, |items| {
        let mut sessions = Vec::with_capacity(items.len());
        let mut unchanged = 0u64;
        for it in items {
            match it {
                Item::Session(s) => sessions.push(s),
                Item::Invalid(i) => {
                    if let Some(r) = &mut p.replay {
                        kept += i.raw.len() + i.message.len() + 256;
                        r.push(Item::Invalid(i.clone()));
                    }
                    p.invalid.push(i)
                }
                Item::Known { .. } => unchanged += 1,
            }
        }
        let cl = planner.classify(client, &sessions)?;
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
        progress.tick(sessions.len() as u64 + unchanged, 0);
        if let Some(r) = &mut p.replay {
            kept += sessions.iter().map(session_bytes).sum::<usize>();
            r.extend(sessions.into_iter().map(Item::Session));
        }
        if kept > REPLAY_LIMIT {
            p.replay = None;
        }
        Ok(())
    })?;
    p.counts.invalid = p.invalid.len() as u64;
    p.summary = summary;
    if let Some(st) = &stats {
        p.problems = fit.data_problems(client, st)?;
    }
    Ok(p)
}

/// The source's fingerprint that a planning pass took from its own stats (taken again
/// only if that pass could not give it).
fn scanned_fingerprint(p: &Planned, src: &Source) -> Result<String> {
    match &p.summary.fingerprint {
        Some(fp) => Ok(fp.clone()),
        None => src.quick_fingerprint(),
    }
}

fn report_planned(ctx: &mut Ctx, p: &Planned, quarantine: bool) {
    p.counts.to_report(&mut ctx.report);
    ctx.report.detail("unchanged_by_stamp", p.known);
    ctx.report.detail(
        "conflicts",
        p.conflicts.iter().take(INLINE_LIMIT).collect::<Vec<_>>(),
    );
    ctx.report.detail(
        "invalid",
        p.invalid
            .iter()
            .take(INLINE_LIMIT)
            .map(Invalid::finding)
            .collect::<Vec<_>>(),
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
    for i in p.invalid.iter().take(INLINE_LIMIT) {
        if quarantine {
            ctx.report.warn(i.finding());
        }
    }
}

pub fn run(ctx: &mut Ctx, args: &Args) -> Result<()> {
    let cfg = ctx.config()?;
    let t = ctx.target(Some(&cfg))?;
    let src = Source::from_config(&cfg);
    let schema_name = cfg.postgres.schema.clone();
    let batch = args.batch_size as usize;
    // A bounded wait for row locks the application holds; SESSIONDB_LOCK_TIMEOUT overrides.
    let lock_timeout = ctx
        .env
        .get("SESSIONDB_LOCK_TIMEOUT")
        .unwrap_or("30s")
        .to_owned();
    let mut client = connect(&t, &lock_timeout)?;
    let mut phases = Phases::default();
    let st = schema::status(&mut client, &schema_name)?;
    if let Some(p) = st.problems() {
        return Err(Error::Refused {
            code: "schema_mismatch",
            message: p,
        });
    }
    ctx.report.detail("schema_pending", &st.pending);
    ctx.report.detail("on_conflict", args.on_conflict);
    ctx.report.detail("recheck", args.recheck);
    // The target's tables as they are: a shape that cannot take the data is refused
    // before anything else (SPEC §9), by the dry run as by the real run.
    let fit = Fit::read(&mut client, &schema_name)?;
    refuse_problems(ctx, &fit.shape_problems())?;
    // One open for the estimate and the planning pass: the JSON store's index is built once.
    let mut reader = Some(src.open()?);
    let estimate = reader.as_ref().map_or(Ok(0), |r| r.estimate())?;
    let mut progress = Progress::new("planning", estimate, ctx.common.quiet);

    if args.dry.dry_run {
        let planner = Planner::new(&mut client, &schema_name, &fit, args.recheck)?;
        warn_versions(ctx, &planner, true);
        let known = known_stamps(&t, &schema_name, &planner, args.recheck)?;
        let p = plan_pass(
            reader.take().expect("opened above").with_fingerprint()?,
            &mut client,
            &planner,
            &fit,
            known.as_deref(),
            batch,
            &mut progress,
        )?;
        let fp = scanned_fingerprint(&p, &src)?;
        progress.done();
        report_planned(ctx, &p, args.quarantine);
        // The same choice and check as the real run, refusing what it would refuse.
        let backup = match choose_backup(ctx, &cfg, args, &fp)? {
            Some(c) if args.backup.is_some() => {
                format!("would use the backup {}", c.dir.display())
            }
            Some(c) => format!("would use the matching backup {}", c.dir.display()),
            None => format!("would take a backup under {}", cfg.backup_dir.display()),
        };
        ctx.report.detail("backup", &backup);
        ctx.report
            .detail("would_apply_schema_versions", &st.pending);
        ctx.report.detail(
            "load",
            if planner.target_empty {
                "COPY into the empty target, GIN index built after"
            } else {
                "staging table and upserts"
            },
        );
        refuse_if_needed(ctx, &p, args, true)?;
        let c = &p.counts;
        let writes = c.inserted
            + c.updated
            + c.invalid
            + if args.on_conflict == OnConflict::SourceWins {
                c.conflicts
            } else {
                0
            };
        let ch = &planner.changes;
        let bookkeeping = !st.pending.is_empty()
            || (!planner.target_empty
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
        return Ok(());
    }

    // A real run: lock, backup, plan, schema, load.
    let run_id = ctx.run_id();
    let run_uuid = uuid::Uuid::parse_str(&run_id).expect("run ids are uuids");
    let mut lock = WriterLock::acquire(&t, &schema_name, &run_id)?;
    tracing::info!("holding the writers' lock for run {run_id}");
    let planner = Planner::new(&mut client, &schema_name, &fit, args.recheck)?;
    warn_versions(ctx, &planner, false);
    let fresh = planner.target_empty;
    let known = known_stamps(&t, &schema_name, &planner, args.recheck)?;
    let t_plan = Instant::now();
    // The source's fingerprint names its backup. A catch-up always plans, and takes the
    // fingerprint from the stats its planning pass makes anyway; a first load may skip
    // the plan, which depends on the backup, so it takes the fingerprint first.
    let (fp, mut plan) = if fresh {
        (src.quick_fingerprint()?, None)
    } else {
        let p = plan_pass(
            reader.take().expect("opened above").with_fingerprint()?,
            &mut client,
            &planner,
            &fit,
            known.as_deref(),
            batch,
            &mut progress,
        )?;
        (scanned_fingerprint(&p, &src)?, Some(p))
    };
    // Before the first write: the backup to stand on, checked (else one is taken below).
    let existing = choose_backup(ctx, &cfg, args, &fp)?;
    // A first load skips the planning pass when the backup counted no invalid record.
    let known_invalid = existing
        .as_ref()
        .and_then(|c| c.head.as_ref())
        .map(|m| m.counts.invalid);
    // Constraints that depend on the values need every session checked first.
    let needs_plan = fit.needs_data() || !(fresh && (args.quarantine || known_invalid == Some(0)));
    if needs_plan && plan.is_none() {
        plan = Some(plan_pass(
            reader.take().expect("opened above"),
            &mut client,
            &planner,
            &fit,
            known.as_deref(),
            batch,
            &mut progress,
        )?);
    }
    let mut planned = None;
    if let Some(p) = plan {
        progress.done();
        if let Err(e) = refuse_if_needed(ctx, &p, args, false) {
            report_planned(ctx, &p, args.quarantine);
            return Err(e);
        }
        ctx.report.detail("planned", &p.counts);
        planned = Some(p);
    }
    phases.plan = t_plan.elapsed();
    let t_backup = Instant::now();
    let backup_dir = match existing {
        Some(c) => c.dir,
        None => {
            tracing::info!("no sound backup of the current source: taking one");
            let taken = crate::backup::take(&cfg, &crate::backup::Options::default(), &run_id)?;
            for w in taken
                .warnings
                .iter()
                .filter(|w| w.code == "backup_unreadable")
            {
                ctx.report.warn(w.clone());
            }
            if !taken.removed_incomplete.is_empty() {
                ctx.report
                    .detail("removed_incomplete", &taken.removed_incomplete);
            }
            taken.dir
        }
    };
    ctx.report.artifact("backup", &backup_dir);
    ctx.report.detail("backup", &backup_dir);

    // The schema, in a transaction.
    {
        let mut tx = client
            .transaction()
            .map_err(|e| Error::pg("starting a transaction", &t.display, e))?;
        let applied = schema::apply(&mut tx, &schema_name, &run_id)?;
        // The ledger's row versions: learned where not known yet (a ledger from before
        // schema version 2), recorded anew for rows rewritten as they were.
        let ch = &planner.changes;
        let learned = if !ch.tracked || ch.unknown > 0 {
            ledger::learn_unknown(&mut tx, &schema_name)?
        } else {
            0
        };
        let relearned = ledger::relearn(&mut tx, &schema_name, &ch.rewritten)?;
        tx.commit()
            .map_err(|e| Error::pg("committing the schema", &t.display, e))?;
        ctx.report.detail("schema_applied", &applied);
        ctx.report.detail(
            "row_versions",
            json!({"learned": learned, "rewritten_as_they_were": relearned, "changed_in_target": ch.changed.len()}),
        );
    }
    record_run_start(&mut client, &schema_name, &run_uuid, &fp, &backup_dir)?;
    if !fresh {
        schema::ensure_gin_index(&mut client, &schema_name, cfg.postgres.gin_opclass.as_sql())?;
    }

    phases.backup = t_backup.elapsed();

    // The load: the items the planning pass kept, else a second scan of the source.
    let mut progress = Progress::new("loading", estimate, ctx.common.quiet);
    let mut out = Loaded::default();
    let (feed, read) = match planned {
        Some(Planned {
            replay: Some(items),
            summary,
            known,
            ..
        }) => {
            out.counts.sessions += known;
            out.counts.unchanged += known;
            out.not_read += known;
            (Feed::Replay(items, summary), "kept_from_plan")
        }
        Some(_) => (Feed::Scan(known.as_deref()), "second_scan"),
        None => (Feed::Scan(known.as_deref()), "single_scan"),
    };
    // How the load got its sessions: kept from the planning pass (what changed fit in
    // memory), a second scan of the source, or the only scan (no planning pass needed).
    ctx.report.detail("load_read", read);
    let lc = LoadCtx {
        src: &src,
        schema: &schema_name,
        run_uuid,
        run_id: &run_id,
        backup_dir: &backup_dir,
        args,
    };
    let t_load = Instant::now();
    let result = if fresh {
        let jobs = (0..args.jobs)
            .map(|_| connect(&t, &lock_timeout))
            .collect::<Result<Vec<_>>>()?;
        load_fresh(&lc, jobs, feed, &mut out, &mut progress)
    } else {
        load_incremental(&lc, &mut client, &planner, feed, &mut out, &mut progress)
    };
    progress.done();
    phases.load = t_load.elapsed();
    let Loaded {
        counts,
        quarantined,
        skipped,
        quarantine: quarantine_files,
        not_read,
    } = out;
    if let Some(q) = &quarantine_files {
        report_quarantine(ctx, q);
    }
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            counts.to_report(&mut ctx.report);
            let _ = record_run_end(&mut client, &schema_name, &run_uuid, "failed", &counts);
            ctx.report.next_steps.push("fix the cause, then run migrate-state --dry-run=false again: committed batches are kept and skipped".into());
            return Err(e);
        }
    };
    if !lock.alive() {
        tracing::warn!("the lock connection was lost during the run");
    }
    for w in &summary.warnings {
        ctx.report.warn(w.clone());
    }
    let t_index = Instant::now();
    if fresh {
        client
            .batch_execute("SET maintenance_work_mem = '512MB'")
            .map_err(|e| Error::pg("raising maintenance_work_mem", "", e))?;
        schema::ensure_gin_index(&mut client, &schema_name, cfg.postgres.gin_opclass.as_sql())?;
        ctx.report
            .detail("gin_index_build_ms", t_index.elapsed().as_millis() as u64);
    }
    phases.index = t_index.elapsed();
    // Fresh statistics after a load that changed much of the target; small catch-ups
    // leave it to autovacuum (ANALYZE reads a 30,000-row sample of the states).
    let t_analyze = Instant::now();
    if (counts.inserted + counts.updated) * 10 > counts.sessions {
        let _ = client.batch_execute(&format!(
            "ANALYZE {}, {}",
            pg::qualified(&schema_name, "sessions"),
            pg::qualified(&schema_name, "session_state")
        ));
    }
    phases.analyze = t_analyze.elapsed();
    ctx.report.detail("phases_ms", phases.report());
    counts.to_report(&mut ctx.report);
    ctx.report.count("quarantined", quarantined);
    ctx.report.detail("unchanged_by_stamp", not_read);
    record_run_end(&mut client, &schema_name, &run_uuid, "done", &counts)?;
    ctx.report.detail(
        "skipped_conflicts",
        skipped.iter().take(INLINE_LIMIT).collect::<Vec<_>>(),
    );
    if let Some(Ok(path)) =
        crate::report::write_list(ctx.report_dir(), "migrate-state-skipped.jsonl", &skipped)
    {
        ctx.report.artifact("skipped_conflicts", &path);
    }
    ctx.report.next_steps.push("verify".into());
    drop(lock);
    Ok(())
}

/// A connection with the run's bounded `lock_timeout`.
fn connect(t: &crate::config::Target, lock_timeout: &str) -> Result<postgres::Client> {
    let mut c = pg::connect(t)?;
    c.execute(
        "SELECT pg_catalog.set_config('lock_timeout', $1, false)",
        &[&lock_timeout],
    )
    .map_err(|e| Error::pg("setting lock_timeout", &t.display, e))?;
    Ok(c)
}

/// Where each part of a real run went, for the report (`details.phases_ms`).
#[derive(Default)]
struct Phases {
    plan: Duration,
    backup: Duration,
    load: Duration,
    index: Duration,
    analyze: Duration,
}

impl Phases {
    fn report(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_millis() as u64;
        json!({"plan": ms(self.plan), "backup": ms(self.backup), "load": ms(self.load),
               "index": ms(self.index), "analyze": ms(self.analyze)})
    }
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
            return Err(Error::InvalidSource {
                code: "invalid_records",
                message: format!(
                    "{} invalid record(s) appeared in the source during the run (e.g. {}); rerun with --quarantine or fix them",
                    invalid.len(),
                    invalid[0].message
                ),
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
    /// A scan of the source (skipping what the ledger's stamps recognise).
    Scan(Option<&'k KnownFn<'k>>),
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
            Feed::Scan(known) => src.open()?.scan_with(batch, known, f),
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
    progress: &mut Progress,
) -> Result<crate::source::Summary> {
    std::thread::scope(|scope| {
        let writers = load::Writers::start(scope, clients, lc.schema, lc.run_uuid);
        let scanned = feed.run(lc.src, lc.args.batch_size as usize, |items| {
            let (sessions, invalid) = out.split(items);
            let quarantined = out.set_aside(lc, &invalid)?;
            let rendered = load::render_fresh(&sessions, &lc.run_uuid);
            let n = sessions.len() as u64;
            let bytes = rendered.state_bytes;
            drop(sessions);
            writers.send(load::Job {
                rendered,
                sessions: n,
                invalid: invalid.len() as u64,
                quarantined,
            })?;
            progress.tick(n + invalid.len() as u64, bytes);
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
    planner: &Planner,
    feed: Feed<'_>,
    out: &mut Loaded,
    progress: &mut Progress,
) -> Result<crate::source::Summary> {
    let args = lc.args;
    feed.run(lc.src, args.batch_size as usize, |items| {
        let (sessions, invalid) = out.split(items);
        if sessions.is_empty() && invalid.is_empty() {
            progress.tick(0, 0);
            return Ok(());
        }
        out.set_aside(lc, &invalid)?;
        let mut tx = client
            .transaction()
            .map_err(|e| Error::pg("starting a batch", "", e))?;
        let cl = planner.classify(&mut tx, &sessions)?;
        load::restamp(&mut tx, lc.schema, &cl.restamp)?;
        let mut counts = Counts::default();
        let mut skipped = Vec::new();
        let mut write = load::Batch {
            sessions: Vec::new(),
        };
        let mut adopt = Vec::new();
        for (s, a) in sessions.iter().zip(&cl.actions) {
            counts.sessions += 1;
            match a {
                Action::Insert | Action::Update => {
                    counts.add(*a);
                    counts.bytes += s.state.as_ref().map_or(0, |st| st.raw.len() as u64);
                    write.sessions.push((s, s.content_hash()));
                }
                Action::Unchanged => counts.add(*a),
                Action::Adopt => {
                    counts.add(*a);
                    adopt.push((s, s.content_hash()));
                }
                Action::Conflict => match args.on_conflict {
                    OnConflict::Fail => {
                        return Err(Error::Conflict {
                            message: format!("session {} changed in the target during the run; nothing more was written (earlier batches are committed and recorded)", s.id),
                        });
                    }
                    OnConflict::Skip => {
                        counts.conflicts += 1;
                        skipped.push(ConflictInfo {
                            session: s.id.clone(),
                            reason: "skipped (--on-conflict skip)".into(),
                        });
                    }
                    OnConflict::SourceWins => {
                        counts.conflicts += 1;
                        counts.updated += 1;
                        counts.bytes += s.state.as_ref().map_or(0, |st| st.raw.len() as u64);
                        write.sessions.push((s, s.content_hash()));
                    }
                },
            }
        }
        if !write.sessions.is_empty() {
            load::upsert(&mut tx, lc.schema, &lc.run_uuid, &write)?;
        }
        load::adopt(&mut tx, lc.schema, &lc.run_uuid, &adopt)?;
        let refs: Vec<&Invalid> = invalid.iter().collect();
        load::record_quarantined(&mut tx, lc.schema, &lc.run_uuid, &refs)?;
        tx.commit()
            .map_err(|e| Error::pg("committing a batch", "", e))?;
        // Committed: count it.
        let c = &mut out.counts;
        c.sessions += counts.sessions;
        c.inserted += counts.inserted;
        c.updated += counts.updated;
        c.unchanged += counts.unchanged;
        c.conflicts += counts.conflicts;
        c.bytes += counts.bytes;
        c.invalid += invalid.len() as u64;
        out.quarantined += invalid.len() as u64;
        out.skipped.extend(skipped);
        progress.tick(sessions.len() as u64, counts.bytes);
        Ok(())
    })
}

/// The ledger's stamps, asked a batch at a time on a connection of their own: sessions
/// whose sources are stamped exactly as when they were last migrated are not read again,
/// so a catch-up costs in proportion to what changed. Sessions whose target rows changed
/// are read all the same (a conflict to name, or to rewrite from the source). `None`
/// for an empty target, and with `--recheck` (every session is read).
fn known_stamps(
    t: &crate::config::Target,
    schema_name: &str,
    planner: &Planner,
    recheck: bool,
) -> Result<Option<Box<KnownFn<'static>>>> {
    if planner.target_empty || recheck {
        return Ok(None);
    }
    let changed = planner.changes.changed.clone();
    let conn = std::sync::Mutex::new(pg::connect(t)?);
    let sql = format!(
        "SELECT l.session_id FROM {} l JOIN ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS u(i, s)
                 ON l.session_id = u.i AND l.source_stamp = u.s
          WHERE l.status = 'migrated'",
        pg::qualified(schema_name, "sessiondb_ledger")
    );
    Ok(Some(Box::new(move |pairs: &[(&str, &str)]| {
        let ids: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        let stamps: Vec<&str> = pairs.iter().map(|p| p.1).collect();
        let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
        let rows = c
            .query(&sql, &[&ids, &stamps])
            .map_err(|e| Error::pg("reading the ledger's stamps", "", e))?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|id| !changed.contains(id))
            .collect())
    })))
}

/// Warn when the ledger cannot tell which target rows sessiondb wrote: then a change
/// made in the target before this run cannot be seen.
fn warn_versions(ctx: &mut Ctx, planner: &Planner, dry: bool) {
    if planner.target_empty {
        return;
    }
    let ch = &planner.changes;
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
fn refuse_problems(ctx: &mut Ctx, problems: &[Problem]) -> Result<()> {
    let Some(first) = problems.first() else {
        return Ok(());
    };
    ctx.report.detail("target_problems", problems);
    ctx.report.next_steps.push(
        "fix the target tables or the data as each problem says (preflight names them all), then run migrate-state again: nothing was written".into(),
    );
    let code = if problems
        .iter()
        .any(|p| p.code == crate::pg::constraints::SCHEMA_MISMATCH)
    {
        crate::pg::constraints::SCHEMA_MISMATCH
    } else {
        first.code
    };
    Err(Error::Refused {
        code,
        message: format!(
            "the target cannot take the data, nothing written: {}",
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

/// Refuse on what the target's constraints refuse, invalid records (without
/// --quarantine) or conflicts (with --on-conflict fail).
fn refuse_if_needed(ctx: &mut Ctx, p: &Planned, args: &Args, dry: bool) -> Result<()> {
    refuse_problems(ctx, &p.problems)?;
    let would = if dry { "would refuse" } else { "refused" };
    if !p.invalid.is_empty() && !args.quarantine {
        ctx.report
            .next_steps
            .push("fix the invalid records, or pass --quarantine to set them aside".into());
        return Err(Error::InvalidSource {
            code: "invalid_records",
            message: format!(
                "{} invalid record(s): {would}, nothing written (e.g. {})",
                p.invalid.len(),
                p.invalid[0].message
            ),
        });
    }
    if !p.conflicts.is_empty() && args.on_conflict == OnConflict::Fail {
        ctx.report.next_steps.push(
            "the sessions in details.conflicts differ in the target from what sessiondb last wrote there: check which side is right (the target may hold the application's writes); then rerun with --on-conflict skip to keep the target's rows, or --on-conflict source-wins to rewrite them from the source (runbooks/incident.md)"
                .into(),
        );
        return Err(Error::Conflict {
            message: format!(
                "{} session(s) differ in the target from what sessiondb wrote: {would}, nothing written (e.g. {}: {})",
                p.conflicts.len(),
                p.conflicts[0].session,
                p.conflicts[0].reason
            ),
        });
    }
    Ok(())
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
) -> Result<Option<crate::backup::Checked>> {
    use crate::backup::{Depth, SUMMARY_PROBLEMS};
    let depth = if args.verify_backup {
        Depth::Checksums
    } else {
        Depth::Sizes
    };
    let report = |ctx: &mut Ctx, c: &crate::backup::Checked| {
        ctx.report.detail(
            "backup_check",
            json!({
                "dir": c.dir, "files": c.files, "bytes": c.bytes, "sound": c.sound,
                "checksums": c.checksums, "problems": c.problem_count,
                "first_problems": c.problems, "ms": c.ms,
            }),
        );
    };
    let not_a_backup = |d: &Path, e: Error| Error::Refused {
        code: "backup_incomplete",
        message: format!("{} is not a backup: {e}", d.display()),
    };
    if let Some(d) = &args.backup {
        let c = crate::backup::check(d, depth, SUMMARY_PROBLEMS).map_err(|e| not_a_backup(d, e))?;
        report(ctx, &c);
        if !c.is_sound() {
            ctx.report.next_steps.push(format!(
                "do not rely on {}: take a new backup with `backup`, or leave out --backup and migrate-state --dry-run=false takes one",
                d.display()
            ));
            return Err(Error::Refused {
                code: c.code(),
                message: format!("the backup {}: refused", c.summary()),
            });
        }
        if c.head.as_ref().is_some_and(|h| h.source_fingerprint != fp) {
            ctx.report.warn(Finding::new(
                "backup_stale",
                format!(
                    "the backup {} was taken from an older state of the source",
                    d.display()
                ),
            ));
        }
        tracing::info!(
            "using the backup {}: {} listed files present{}",
            d.display(),
            c.files,
            if c.checksums {
                ", their SHA-256 match"
            } else {
                " at their sizes"
            }
        );
        return Ok(Some(c));
    }
    for d in crate::backup::matching(&cfg.backup_dir, fp) {
        let c = match crate::backup::check(&d, depth, SUMMARY_PROBLEMS) {
            Ok(c) => c,
            Err(e) => {
                ctx.report.warn(
                    Finding::new(
                        "backup_incomplete",
                        format!("the matching backup {}: passed over", not_a_backup(&d, e)),
                    )
                    .path(&d),
                );
                continue;
            }
        };
        if c.is_sound() {
            tracing::info!("using the matching backup {}", d.display());
            report(ctx, &c);
            return Ok(Some(c));
        }
        ctx.report.warn(
            Finding::new(
                c.code(),
                format!("the matching backup {}: passed over", c.summary()),
            )
            .path(&d),
        );
    }
    Ok(None)
}

fn record_run_start(
    c: &mut postgres::Client,
    schema: &str,
    run: &uuid::Uuid,
    fingerprint: &str,
    backup: &Path,
) -> Result<()> {
    let host = hostname();
    c.execute(
        &format!(
            "INSERT INTO {} (run_id, step, host, pid, tool_version, source_fingerprint, backup) VALUES ($1, 'migrate-state', $2, $3, $4, $5, $6)",
            pg::qualified(schema, "sessiondb_runs")
        ),
        &[run, &host, &(std::process::id() as i32), &env!("CARGO_PKG_VERSION"), &fingerprint, &backup.display().to_string()],
    )
    .map_err(|e| Error::pg("recording the run", "", e))?;
    Ok(())
}

fn record_run_end(
    c: &mut postgres::Client,
    schema: &str,
    run: &uuid::Uuid,
    status: &str,
    counts: &Counts,
) -> Result<()> {
    let counts = serde_json::to_value(counts).unwrap_or_default();
    c.execute(
        &format!(
            "UPDATE {} SET finished_at = pg_catalog.now(), status = $2, counts = $3 WHERE run_id = $1",
            pg::qualified(schema, "sessiondb_runs")
        ),
        &[run, &status, &counts],
    )
    .map_err(|e| Error::pg("recording the run", "", e))?;
    Ok(())
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Invalid records set aside under the backup's `quarantine/`: each record's raw bytes
/// in a file of their own, and this run's index (`index-<run>.ndjson`, one line a
/// record: id, code, message, path, kind, raw file, size, SHA-256). A record whose
/// bytes the quarantine already holds (the same id, code and SHA-256 in an earlier
/// run's index, the file still there with those bytes) is pointed at, not copied again;
/// an unreadable file has no bytes to keep: its line says where it is and why.
struct Quarantine {
    dir: PathBuf,
    index: std::fs::File,
    index_path: PathBuf,
    n: u64,
    run8: String,
    /// What earlier runs' indexes say the quarantine holds: (id, code, SHA-256) → file.
    held: std::collections::HashMap<HeldKey, String>,
    /// This run's first [`INLINE_LIMIT`] index lines, for the report.
    listed: Vec<serde_json::Value>,
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

    /// Set a batch of records aside; their index lines are appended in one write.
    fn add(&mut self, batch: &[Invalid]) -> Result<()> {
        use std::io::Write;
        let mut lines = Vec::new();
        for i in batch {
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&i.raw));
            let key: HeldKey = (i.id.clone(), i.code.to_owned(), sha.clone());
            let (raw_file, reused) = if i.code == "unreadable" {
                // Not read: there are no bytes, only where it is and the error.
                (None, false)
            } else if let Some(name) = self.held.get(&key).filter(|n| self.holds(n, &i.raw)) {
                (Some(name.clone()), true)
            } else {
                self.n += 1;
                let name = format!("{}-{:06}-{}.raw", self.run8, self.n, i.code);
                let path = self.dir.join(&name);
                crate::fsutil::write_atomic(&path, &i.raw, 0o600).map_err(|e| Error::Write {
                    path: path.clone(),
                    source: e,
                })?;
                self.held.insert(key, name.clone());
                (Some(name), false)
            };
            self.reused += u64::from(reused);
            let line = json!({
                "id": i.id, "code": i.code, "message": i.message, "path": i.path, "record": i.record,
                "raw_file": raw_file, "bytes": i.raw.len(), "sha256": sha, "reused": reused,
            });
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
fn report_quarantine(ctx: &mut Ctx, q: &Quarantine) {
    ctx.report.artifact("quarantine", &q.dir);
    ctx.report.detail("quarantine", &q.dir);
    ctx.report.detail("quarantined", &q.listed);
    if let Some(dir) = ctx.report_dir() {
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
                l["id"].as_str().map_or_else(
                    || "a record without a usable id".to_owned(),
                    |i| format!("{i:?}")
                ),
                l["code"].as_str().unwrap_or_default()
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

/// Progress on stderr: a redrawn line on a terminal, a plain line every few seconds otherwise.
pub struct Progress {
    label: &'static str,
    total: u64,
    done: u64,
    bytes: u64,
    start: Instant,
    last: Instant,
    tty: bool,
    quiet: bool,
}

impl Progress {
    pub fn new(label: &'static str, total: u64, quiet: bool) -> Progress {
        let now = Instant::now();
        Progress {
            label,
            total,
            done: 0,
            bytes: 0,
            start: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
            quiet,
        }
    }

    pub fn tick(&mut self, n: u64, bytes: u64) {
        self.done += n;
        self.bytes += bytes;
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if !self.quiet && self.last.elapsed() >= every {
            self.last = Instant::now();
            self.print(false);
        }
    }

    fn print(&self, end: bool) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done as f64 / secs;
        let mbs = self.bytes as f64 / secs / 1e6;
        let pct = if self.total > 0 {
            (self.done as f64 * 100.0 / self.total as f64).min(100.0)
        } else {
            100.0
        };
        let eta = if rate > 0.0 && self.total > self.done {
            (self.total - self.done) as f64 / rate
        } else {
            0.0
        };
        let line = format!(
            "{}: {}/{} sessions ({pct:.0}%), {rate:.0} sessions/s, {mbs:.1} MB/s, ETA {eta:.0}s",
            self.label, self.done, self.total
        );
        if self.tty {
            eprint!("\r{line}\x1b[K{}", if end { "\n" } else { "" });
        } else {
            eprintln!("{line}");
        }
    }

    pub fn done(&mut self) {
        if !self.quiet && (self.tty || self.start.elapsed() > Duration::from_secs(5)) {
            self.print(true);
        }
    }
}
