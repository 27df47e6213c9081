//! `verify` (SPEC §4): prove the copy session by session. Read-only on the data: it
//! compares every source session with the target — metadata fields, and the state by a
//! SHA-256 of its canonical jsonb text computed on both sides — and before calling a
//! state different it asks PostgreSQL to compare the source text as jsonb with the
//! stored value, so a difference is never false. It records its result in the
//! bookkeeping table `sessiondb_verifications`, which `set-default` reads. With
//! `--smoke-url` it then probes a running `sessiond` ([`crate::smoke`]) on the same
//! config and connection.

use std::collections::HashSet;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::json;

use crate::canon::{self, Node, Spanned};
use crate::config::{Backend, Config, Target};
use crate::driver::{Common, Ctx, Step};
use crate::error::{Error, Result};
use crate::pg::constraints::Fit;
use crate::pg::ledger::{self, LedgerRow, runs};
use crate::pg::rows::{IdSet, Rows, TargetRow};
use crate::pg::{self, schema};
use crate::report::{CheckStatus, Finding, INLINE_LIMIT};
use crate::source::{Invalid, Item, META_FIELDS, Session, Source};

mod app;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Check N random sessions instead of all of them.
    #[arg(long, value_name = "N")]
    pub sample: Option<u64>,
    /// Then probe a running sessiond at this URL: its health, its status against the
    /// database, and one write through its batched progress writer.
    #[arg(long, value_name = "URL")]
    pub smoke_url: Option<String>,
}

crate::details! {
    /// `details` of a verify report.
    pub struct Details {
        /// The first [`INLINE_LIMIT`] differences (all in `verify-differences.jsonl`).
        pub differences: Vec<Difference>,
        /// The source's quick fingerprint the verification is recorded against.
        pub source_fingerprint: String,
    }
}

impl Step for Args {
    const NAME: &'static str = "verify";
    const ABOUT: &'static str = "Compare every session in PostgreSQL with the legacy store, session by session, and record the result; writes only that record (sessiondb_verifications).";
    type Details = Details;
    crate::step_flags!();
    fn run(&self, ctx: &mut Ctx, details: &mut Details) -> Result<()> {
        run(ctx, self, details)
    }
}

/// One named difference.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub session: String,
    /// `missing`, `extra`, `different`, `drifted`, `quarantined`, `invalid`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The first JSON path where the states differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Difference {
    fn new(session: &str, kind: &'static str) -> Difference {
        Difference {
            session: session.to_owned(),
            kind,
            field: None,
            path: None,
            detail: None,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct VerifyCounts {
    pub sessions: u64,
    pub checked: u64,
    pub matching: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    pub drifted: u64,
    pub quarantined: u64,
    pub invalid: u64,
}

impl VerifyCounts {
    /// Whether the copy is not the source: a session missing, extra, different, or
    /// invalid and not quarantined.
    fn differs(&self) -> bool {
        self.missing + self.extra + self.different + self.invalid > 0
    }

    /// `b`'s counts added to these.
    fn add(&mut self, b: &VerifyCounts) {
        self.sessions += b.sessions;
        self.checked += b.checked;
        self.matching += b.matching;
        self.missing += b.missing;
        self.extra += b.extra;
        self.different += b.different;
        self.drifted += b.drifted;
        self.quarantined += b.quarantined;
        self.invalid += b.invalid;
    }
}

/// What the comparison found.
#[derive(Default)]
struct Found {
    counts: VerifyCounts,
    diffs: Vec<Difference>,
}

pub fn run(ctx: &mut Ctx, args: &Args, d: &mut Details) -> Result<()> {
    let cfg = ctx.config()?;
    let Some(url) = &args.smoke_url else {
        let t = ctx.target(Some(&cfg))?;
        let mut c = pg::connect(&t)?;
        return verify_copy(ctx, &cfg, &t, &mut c, args.sample, d);
    };
    // The probes need no target when the service runs on the legacy store.
    let t = ctx.target_if_any(Some(&cfg))?;
    let mut client = t.as_ref().map(pg::connect).transpose()?;
    let schema_name = &cfg.postgres.schema;
    let tables = match &mut client {
        Some(c) => has_tables(c, schema_name)?,
        None => false,
    };
    match (&t, &mut client) {
        (Some(t), Some(c)) if tables => verify_copy(ctx, &cfg, t, c, args.sample, d)?,
        _ => {
            let why = match &t {
                None => format!(
                    "no PostgreSQL target ({} does not hold a PostgreSQL URL): only the smoke probes ran",
                    cfg.postgres.url_env
                ),
                Some(_) => {
                    "the target has no sessiondb tables yet: only the smoke probes ran".into()
                }
            };
            ctx.report
                .check("verify", CheckStatus::Skip, why, json!({}));
        }
    }
    crate::smoke::probe(ctx, url, &cfg, client)
}

fn has_tables(c: &mut postgres::Client, schema_name: &str) -> Result<bool> {
    Ok(schema::table_exists(c, schema_name, "sessions")? && ledger::exists(c, schema_name)?)
}

/// The verification proper: the schema and the index, every session compared, the
/// result recorded.
fn verify_copy(
    ctx: &mut Ctx,
    cfg: &Config,
    t: &Target,
    c: &mut postgres::Client,
    sample: Option<u64>,
    d: &mut Details,
) -> Result<()> {
    if crate::cmd::migrate_state::app::is_mapped(cfg) {
        return app::verify_mapped(ctx, cfg, c, sample, d);
    }
    let schema_name = &cfg.postgres.schema;
    let src = Source::from_config(cfg);
    check_schema(ctx, c, schema_name)?;
    if !has_tables(c, schema_name)? {
        ctx.problems = true;
        ctx.report
            .next_steps
            .push("migrate-state --dry-run=false".into());
        return Ok(());
    }
    // Tables whose columns cannot hold the data are not read as if they could.
    let fit = Fit::read(c, schema_name)?;
    if !check_tables(ctx, &fit) {
        return Ok(());
    }
    check_gin(ctx, c, schema_name)?;
    let (found, fingerprint) = compare_all(ctx, &src, t, c, &fit, schema_name, sample)?;
    conclude(ctx, cfg, c, found, fingerprint, sample, d)
}

/// What every verification ends with, of either shape: the findings reported, the
/// advice, and the verification recorded (bookkeeping only; it passes only whole).
fn conclude(
    ctx: &mut Ctx,
    cfg: &Config,
    c: &mut postgres::Client,
    found: Found,
    fingerprint: String,
    sample: Option<u64>,
    d: &mut Details,
) -> Result<()> {
    let failed = found.counts.differs() || ctx.report.has_failed_check();
    report_found(ctx, &found, sample, d);
    d.source_fingerprint = Some(fingerprint.clone());
    advise(ctx, cfg, c, &found, failed)?;
    if failed {
        ctx.problems = true;
    }
    let v = runs::Verification {
        run_id: uuid::Uuid::parse_str(&ctx.run_id()).expect("run ids are uuids"),
        source_fingerprint: fingerprint,
        passed: !failed && sample.is_none(),
    };
    runs::record_verification(c, &cfg.postgres.schema, &v, sample, &found.counts)
}

/// The `schema` check. Versions only sessiondb's bookkeeping needs may be pending (a
/// newer sessiondb than the last load): the next migrate-state applies them.
fn check_schema(ctx: &mut Ctx, c: &mut postgres::Client, schema_name: &str) -> Result<()> {
    let st = schema::status(c, schema_name)?;
    let (status, summary) = match st.problems() {
        Some(p) => (CheckStatus::Fail, p),
        None if !st.pending_for_store().is_empty() => (
            CheckStatus::Fail,
            format!(
                "schema versions {:?} not applied: nothing was migrated yet",
                st.pending
            ),
        ),
        None if !st.pending.is_empty() => (
            CheckStatus::Warn,
            format!(
                "schema versions {:?} applied; {:?} (sessiondb's bookkeeping) not yet: the next migrate-state --dry-run=false applies them",
                st.applied, st.pending
            ),
        ),
        None => (
            CheckStatus::Pass,
            format!("schema versions {:?} applied", st.applied),
        ),
    };
    ctx.report.check(
        "schema",
        status,
        summary,
        serde_json::to_value(&st).unwrap_or_default(),
    );
    Ok(())
}

/// The `target_tables` check, when their shape cannot take the data: `false`.
fn check_tables(ctx: &mut Ctx, fit: &Fit) -> bool {
    let shape = fit.shape_problems();
    if shape.is_empty() {
        return true;
    }
    ctx.report.check(
        "target_tables",
        CheckStatus::Fail,
        shape
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        json!({"problems": shape}),
    );
    for p in &shape {
        ctx.report
            .errors
            .push(Finding::new(p.code, p.message.clone()));
    }
    ctx.problems = true;
    ctx.report.next_steps.push(
        "fix the target tables as each problem says (preflight's constraints check names them too), then migrate-state --dry-run=false and verify again".into(),
    );
    false
}

/// The `gin_index` check.
fn check_gin(ctx: &mut Ctx, c: &mut postgres::Client, schema_name: &str) -> Result<()> {
    let (status, summary, details) = match schema::index_state(c, schema_name)? {
        Some((name, true, opc)) => (
            CheckStatus::Pass,
            format!("{name} ({opc}) is valid"),
            json!({"name": name, "opclass": opc}),
        ),
        Some((name, false, _)) => (
            CheckStatus::Fail,
            format!("{name} is invalid: REINDEX INDEX {name}"),
            json!({"name": name}),
        ),
        None => (
            CheckStatus::Fail,
            "no GIN index on session_state.state".to_owned(),
            json!({}),
        ),
    };
    ctx.report.check("gin_index", status, summary, details);
    Ok(())
}

/// Connections that compare batches at once, besides the one that holds the snapshot:
/// the server's side of a batch (each state printed as jsonb text and hashed) then runs
/// while the next batches are read and hashed here.
const COMPARERS: usize = 2;

/// Batches read ahead of the comparers (each about 1000 sessions).
const READ_AHEAD: usize = 2;

/// Every source session (or a sample of them) against the target, in one
/// repeatable-read snapshot; then the target's sessions the source does not have.
///
/// The snapshot's connection keeps the ids seen and finds the extras; [`COMPARERS`]
/// more connections, each in that very snapshot (`pg_export_snapshot`), compare the
/// batches as the scan hands them over, so reading the source and the server's hashing
/// overlap. The differences come out in the scan's order whatever the comparers' pace.
fn compare_all(
    ctx: &mut Ctx,
    src: &Source,
    t: &Target,
    c: &mut postgres::Client,
    fit: &Fit,
    schema_name: &str,
    sample: Option<u64>,
) -> Result<(Found, String)> {
    // Sampling: reservoir over the ids, then compare only those.
    let sampled: Option<HashSet<String>> = match sample {
        Some(n) => Some(src.sample(n as usize, |s| s.id)?.into_iter().collect()),
        None => None,
    };
    let rows = Rows::new(schema_name, fit);
    let mut found = Found::default();
    let mut tx = c
        .transaction()
        .map_err(|e| Error::pg("starting a transaction", "", e))?;
    tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .map_err(|e| Error::pg("preparing verify", "", e))?;
    let snapshot = export_snapshot(&mut tx)?;
    let ids = IdSet::create(&mut tx)?;
    // The fingerprint the verification is recorded against, from the stats the scan
    // makes (and the orphan search from what they found): no pass of its own.
    let reader = src.open()?.with_fingerprint()?;
    let phase = crate::progress::Phase::bar(
        "verify",
        reader.estimate()?,
        crate::progress::Unit::Sessions,
    );
    // A server (or role) with no connection to spare: the snapshot's own compares.
    let mut clients = Vec::with_capacity(COMPARERS);
    for _ in 0..COMPARERS {
        match pg::connect(t) {
            Ok(c) => clients.push(c),
            Err(e) => {
                tracing::warn!(
                    "verify compares on {} connection(s) instead of {}: another one was refused: {e}",
                    clients.len() + 1,
                    COMPARERS + 1
                );
                break;
            }
        }
    }
    let comparers = clients
        .iter_mut()
        .map(|c| join_snapshot(c, &snapshot))
        .collect::<Result<Vec<_>>>()?;
    let comparing_here = comparers.is_empty();
    let (to_compare, batches) = std::sync::mpsc::sync_channel::<(usize, Vec<Session>)>(READ_AHEAD);
    let batches = Mutex::new(batches);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let (summary, compared) = std::thread::scope(|scope| {
        let workers: Vec<_> = comparers
            .into_iter()
            .map(|wtx| {
                let (batches, failed, rows) = (&batches, &failed, &rows);
                scope.spawn(move || comparer(wtx, batches, failed, rows))
            })
            .collect();
        let mut seq = 0;
        let mut own = Vec::new();
        let summary = reader.scan(1000, |items| {
            phase.inc(items.len() as u64);
            let (batch, invalid) = found.split(items, sampled.as_ref());
            if sampled.is_none() {
                let all: Vec<&str> = batch
                    .iter()
                    .map(|s| s.id.as_str())
                    .chain(invalid.iter().filter_map(|i| i.id.as_deref()))
                    .collect();
                ids.add(&mut tx, &all)?;
            }
            seq += 1;
            if !invalid.is_empty() {
                let mut part = Found::default();
                part.invalid(&mut tx, schema_name, invalid)?;
                own.push((seq, part));
            }
            if let Some(e) = take_failure(&failed) {
                return Err(e);
            }
            if comparing_here && !batch.is_empty() {
                let mut part = Found::default();
                part.compare(&mut tx, &rows, &batch)?;
                own.push((seq, part));
            } else if !batch.is_empty() && to_compare.send((seq, batch)).is_err() {
                // Every comparer stopped: the first one's error says why.
                return Err(take_failure(&failed).unwrap_or_else(|| Error::Internal {
                    message: "verify: the comparers stopped".into(),
                }));
            }
            Ok(())
        });
        drop(to_compare);
        // The invalid records' findings first, as each batch had them before its sessions.
        let mut compared: Vec<(usize, Found)> = own;
        for w in workers {
            match w.join() {
                Ok(done) => compared.extend(done),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        (summary, compared)
    });
    let summary = summary?;
    if let Some(e) = take_failure(&failed) {
        return Err(e);
    }
    phase.finish();
    found.absorb(compared);
    for w in &summary.warnings {
        ctx.report.warn(w.clone());
    }
    if sampled.is_none() {
        for id in ids.extra(&mut tx, schema_name)? {
            found.counts.extra += 1;
            let mut d = Difference::new(&id, "extra");
            d.detail = Some("in the target, not in the source".into());
            found.diffs.push(d);
        }
    }
    tx.commit().map_err(|e| Error::pg("ending verify", "", e))?;
    let fingerprint = match summary.fingerprint {
        Some(f) => f,
        None => src.quick_fingerprint()?,
    };
    Ok((found, fingerprint))
}

/// A comparer: the batches it takes from the scan compared on its own connection, each
/// numbered as the scan numbered it; on an error, the error left for the scan to see.
fn comparer(
    mut tx: postgres::Transaction<'_>,
    batches: &Mutex<std::sync::mpsc::Receiver<(usize, Vec<Session>)>>,
    failed: &Mutex<Option<Error>>,
    rows: &Rows,
) -> Vec<(usize, Found)> {
    let mut done = Vec::new();
    loop {
        let next = batches.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((seq, batch)) = next else { break };
        let mut part = Found::default();
        if let Err(e) = part.compare(&mut tx, rows, &batch) {
            failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e);
            break;
        }
        done.push((seq, part));
    }
    // Read-only: ending it changes nothing either way.
    let _ = tx.commit();
    done
}

/// The first comparer's error, if one failed (taken: it is reported once).
fn take_failure(failed: &Mutex<Option<Error>>) -> Option<Error> {
    failed.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// The snapshot of `tx` exported for the comparers' connections.
fn export_snapshot(tx: &mut postgres::Transaction<'_>) -> Result<String> {
    let id: String = tx
        .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
        .map_err(|e| Error::pg("exporting verify's snapshot", "", e))?
        .get(0);
    // The server's own format (hex digits and dashes); anything else is not quoted into SQL.
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(Error::Internal {
            message: format!("unexpected snapshot id {id:?}"),
        });
    }
    Ok(id)
}

/// A read-only transaction on `c` in verify's snapshot, for a comparer.
fn join_snapshot<'c>(
    c: &'c mut postgres::Client,
    snapshot: &str,
) -> Result<postgres::Transaction<'c>> {
    let mut tx = pg::read_only_snapshot(c)?;
    tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
        .map_err(|e| Error::pg("joining verify's snapshot", "", e))?;
    Ok(tx)
}

impl Found {
    /// Findings made batch by batch, numbered in the scan's order, folded into these in
    /// that order (a stable sort: within a batch, the order they are given in).
    fn absorb(&mut self, mut parts: Vec<(usize, Found)>) {
        parts.sort_by_key(|(seq, _)| *seq);
        for (_, p) in parts {
            self.counts.add(&p.counts);
            self.diffs.extend(p.diffs);
        }
    }

    /// A batch's sessions to compare (those sampled) and its invalid records.
    fn split(
        &mut self,
        items: Vec<Item>,
        sampled: Option<&HashSet<String>>,
    ) -> (Vec<Session>, Vec<Invalid>) {
        let mut batch = Vec::with_capacity(items.len());
        let mut invalid = Vec::new();
        for it in items {
            self.counts.sessions += 1;
            match it {
                Item::Session(s) if sampled.is_none_or(|set| set.contains(&s.id)) => batch.push(s),
                Item::Session(_) => {}
                Item::Invalid(i) => invalid.push(i),
                Item::Known { .. } => unreachable!("verify reads every session"),
            }
        }
        (batch, invalid)
    }

    /// Invalid records: quarantined by a run (the ledger holds each under its key,
    /// records without a usable id too), or not.
    fn invalid(
        &mut self,
        tx: &mut postgres::Transaction<'_>,
        schema_name: &str,
        invalid: Vec<Invalid>,
    ) -> Result<()> {
        if invalid.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = invalid.iter().map(Invalid::ledger_key).collect();
        let q = ledger::quarantined(tx, schema_name, &keys)?;
        for (i, key) in invalid.into_iter().zip(keys) {
            let quarantined = q.contains(&key);
            let mut d = Difference::new(
                i.id.as_deref().unwrap_or_default(),
                if quarantined {
                    "quarantined"
                } else {
                    "invalid"
                },
            );
            d.path = i.path.as_ref().map(|p| p.display().to_string());
            d.detail = Some(if quarantined {
                self.counts.quarantined += 1;
                format!("quarantined by a run ({}): {}", i.code, i.message)
            } else {
                self.counts.invalid += 1;
                format!(
                    "invalid in the source ({}) and not quarantined: {}",
                    i.code, i.message
                )
            });
            self.diffs.push(d);
        }
        Ok(())
    }

    /// Compare a batch of sessions with their target rows.
    fn compare(
        &mut self,
        tx: &mut postgres::Transaction<'_>,
        rows: &Rows,
        batch: &[Session],
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = batch.iter().map(|s| s.id.as_str()).collect();
        let mut by_id = rows.compare(tx, &ids)?;
        // Missing or different, in the batch's order: then asked of the ledger whether
        // the source changed since sessiondb wrote them (drifted), in one query.
        let mut unequal = Vec::new();
        for s in batch {
            self.counts.checked += 1;
            let Some(target) = by_id.remove(&s.id) else {
                unequal.push((s, Difference::new(&s.id, "missing")));
                continue;
            };
            let d = match compare(s, &target) {
                Some(d) if d.detail.as_deref() == Some(STATES_DIFFER) => {
                    confirm_state(tx, rows, s, d)?
                }
                d => d,
            };
            match d {
                None => self.counts.matching += 1,
                Some(mut d) => {
                    d.session = s.id.clone();
                    unequal.push((s, d));
                }
            }
        }
        if unequal.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = unequal.iter().map(|(s, _)| s.id.as_str()).collect();
        let ledger = ledger::rows(tx, rows.schema(), &ids)?;
        for (s, mut d) in unequal {
            // Hashing the whole session again is asked only of these (for every
            // matching one it was a tenth of verify's own work).
            let drifted = ledger
                .get(&s.id)
                .and_then(LedgerRow::written)
                .is_some_and(|h| h != s.content_hash());
            if drifted {
                self.counts.drifted += 1;
            }
            if d.kind == "missing" {
                self.counts.missing += 1;
            } else {
                self.counts.different += 1;
                if drifted {
                    d.kind = "drifted";
                }
            }
            self.diffs.push(d);
        }
        Ok(())
    }
}

/// The first difference between a source session and its target row: a metadata
/// field, else the state by its hash (confirmed by PostgreSQL before it is called a
/// difference: [`confirm_state`]).
pub fn compare(s: &Session, t: &TargetRow) -> Option<Difference> {
    let (a, b) = (s.meta.texts(), t.meta.texts());
    if let Some(i) = (0..META_FIELDS.len()).find(|&i| a[i] != b[i]) {
        let mut d = Difference::new("", "different");
        d.field = Some(META_FIELDS[i].to_owned());
        d.detail = Some(format!(
            "source {:?}, target {:?}",
            a[i].as_deref(),
            b[i].as_deref()
        ));
        return Some(d);
    }
    let src_sha = s
        .state
        .as_ref()
        .map(|st| st.hash()["v1:".len()..].to_owned());
    if src_sha.as_deref() == t.state_sha.as_deref() {
        return None;
    }
    let mut d = Difference::new("", "different");
    d.field = Some("state".into());
    d.detail = Some(
        match (&s.state, &t.state_sha) {
            (Some(_), None) => "the target has no state",
            (None, _) => "the source has no state, the target has one",
            (Some(_), Some(_)) => STATES_DIFFER,
        }
        .into(),
    );
    Some(d)
}

/// The detail of a state that both sides have and whose hashes disagree.
const STATES_DIFFER: &str = "the states differ";

/// Where the state hashes disagree and both sides have a state, let PostgreSQL decide,
/// and name the first JSON path that differs.
fn confirm_state(
    tx: &mut postgres::Transaction<'_>,
    rows: &Rows,
    s: &Session,
    mut d: Difference,
) -> Result<Option<Difference>> {
    let Some(st) = &s.state else {
        return Ok(Some(d));
    };
    let raw = std::str::from_utf8(&st.raw).unwrap_or_default();
    let (equal, target_text) = rows.state_equals(tx, &s.id, raw)?;
    if equal {
        tracing::warn!(
            "session {}: hashes differ but PostgreSQL finds the states equal (a canonicalisation gap; not a difference)",
            s.id
        );
        return Ok(None);
    }
    d.path = match (
        canon::parse(st.canonical.as_bytes()),
        canon::parse(target_text.as_bytes()),
    ) {
        (Ok(a), Ok(b)) => first_diff(
            &a,
            st.canonical.as_bytes(),
            &b,
            target_text.as_bytes(),
            "$".to_owned(),
        ),
        _ => Some("$".to_owned()),
    };
    Ok(Some(d))
}

/// The `sessions` check, the counts, the differences (inline and in a file).
fn report_found(ctx: &mut Ctx, found: &Found, sample: Option<u64>, d: &mut Details) {
    let counts = &found.counts;
    ctx.report.check(
        "sessions",
        if counts.differs() { CheckStatus::Fail } else { CheckStatus::Pass },
        format!(
            "{} checked: {} matching, {} missing, {} extra, {} different ({} drifted in the source since migrated), {} quarantined, {} invalid",
            counts.checked, counts.matching, counts.missing, counts.extra, counts.different, counts.drifted, counts.quarantined, counts.invalid
        ),
        json!({"sample": sample}),
    );
    for (k, v) in [
        ("sessions", counts.sessions),
        ("checked", counts.checked),
        ("missing", counts.missing),
        ("extra", counts.extra),
        ("different", counts.different),
        ("drifted", counts.drifted),
        ("quarantined", counts.quarantined),
        ("invalid", counts.invalid),
    ] {
        ctx.report.count(k, v);
    }
    if counts.quarantined > 0 {
        ctx.report.warn(Finding::new(
            "quarantined",
            format!(
                "{} invalid record(s) were quarantined by a run and are not in the target",
                counts.quarantined
            ),
        ));
    }
    d.differences = Some(found.diffs.iter().take(INLINE_LIMIT).cloned().collect());
    if let Some(Ok(p)) =
        crate::report::write_list(ctx.report_dir(), "verify-differences.jsonl", &found.diffs)
    {
        ctx.report.artifact("differences", &p);
    }
}

/// The next steps, by what was found and where the cutover stands.
fn advise(
    ctx: &mut Ctx,
    cfg: &Config,
    c: &mut postgres::Client,
    found: &Found,
    failed: bool,
) -> Result<()> {
    let counts = &found.counts;
    let phase = phase(c, &cfg.postgres.schema, cfg.backend)?;
    let changed_in_target = found.diffs.iter().filter(|d| d.kind == "different").count();
    if changed_in_target > 0 {
        ctx.report.next_steps.push(match &phase {
            Phase::CutOver => format!(
                "{changed_in_target} session(s) differ from the legacy store although it did not change: the config says backend = \"postgres\", so these are the application's writes since the cutover; nothing to repair (rollback --dry-run=false would bring them back into the legacy store)"
            ),
            _ => format!(
                "{changed_in_target} session(s) differ in the target although their source did not change since sessiondb wrote them (kind \"different\" in details.differences): someone changed the target. Check a few on both sides. If the source is right: migrate-state --dry-run=false --on-conflict source-wins rewrites them (run it first without --dry-run=false: it names each conflict; add --recheck if it names fewer than {changed_in_target}). If the target is right (the application already writes there), do not overwrite it: see runbooks/incident.md"
            ),
        });
    }
    if counts.drifted > 0 || counts.missing > 0 {
        ctx.report.next_steps.push("the source changed or sessions are missing: run a catch-up migrate-state --dry-run=false, then verify again".into());
    }
    if counts.extra > 0 {
        ctx.report.next_steps.push("extra sessions exist only in PostgreSQL (written by the application after a cutover, or deleted from the source): inspect them before a rollback".into());
    }
    if failed {
        return Ok(());
    }
    let url_env = &cfg.postgres.url_env;
    match &phase {
        Phase::Before => ctx
            .report
            .next_steps
            .push("set-default --dry-run=false".into()),
        Phase::CutOver => ctx.report.next_steps.extend([
            "the cutover is done (the config says backend = \"postgres\"): smoke-test the running application (verify --smoke-url URL) and monitor it (errors, latency, sessiondb check --backend postgres)".to_owned(),
            "to go back: rollback --dry-run=false".to_owned(),
        ]),
        Phase::RolledBack { at } => ctx.report.next_steps.extend([
            format!("restart the application on sqlite (unset {url_env} or point it at the SQLite URL): the config says backend = \"sqlite\" since the rollback of {at}"),
            "to cut over again later: migrate-state --dry-run=false, verify, then set-default --dry-run=false".to_owned(),
        ]),
    }
    Ok(())
}

/// Where the cutover stands, for the advice: before it, done, or rolled back.
enum Phase {
    Before,
    CutOver,
    RolledBack { at: String },
}

fn phase(c: &mut postgres::Client, schema_name: &str, backend: Backend) -> Result<Phase> {
    if backend == Backend::Postgres {
        return Ok(Phase::CutOver);
    }
    let set = runs::latest_cutover(c, schema_name, runs::Kind::SetDefault)?;
    let back = runs::latest_cutover(c, schema_name, runs::Kind::Rollback)?;
    Ok(match (set, back) {
        (s, Some(b)) if s.as_ref().is_none_or(|s| s.id < b.id) => Phase::RolledBack {
            at: b.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
        _ => Phase::Before,
    })
}

/// The first JSON path where two canonical documents differ.
fn first_diff(a: &Spanned, ab: &[u8], b: &Spanned, bb: &[u8], path: String) -> Option<String> {
    match (&a.node, &b.node) {
        (Node::Object(x), Node::Object(y)) => {
            for ((ka, va), (kb, vb)) in x.iter().zip(y) {
                if ka != kb {
                    return Some(format!("{path}.{}", if ka < kb { ka } else { kb }));
                }
                if let Some(p) = first_diff(va, ab, vb, bb, format!("{path}.{ka}")) {
                    return Some(p);
                }
            }
            (x.len() != y.len()).then(|| {
                let k = if x.len() > y.len() {
                    &x[y.len()].0
                } else {
                    &y[x.len()].0
                };
                format!("{path}.{k}")
            })
        }
        (Node::Array(x), Node::Array(y)) => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                if let Some(p) = first_diff(va, ab, vb, bb, format!("{path}[{i}]")) {
                    return Some(p);
                }
            }
            (x.len() != y.len()).then(|| format!("{path}[{}]", x.len().min(y.len())))
        }
        _ => (ab[a.span.clone()] != bb[b.span.clone()]).then_some(path),
    }
}
