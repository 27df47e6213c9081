//! `verify` (SPEC §4): prove the copy session by session. Read-only on the data: it
//! compares every source session with the target — metadata fields, and the state by a
//! SHA-256 of its canonical jsonb text computed on both sides — and before calling a
//! state different it asks PostgreSQL to compare the source text as jsonb with the
//! stored value, so a difference is never false. It records its result in the
//! bookkeeping table `sessiondb_verifications`, which `set-default` reads.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::json;

use crate::canon::{self, Node, Spanned};
use crate::cli::{Common, Ctx, Step};
use crate::config::Backend;
use crate::error::{Error, Result};
use crate::pg::constraints::{Fit, get};
use crate::pg::{self, qualified, schema};
use crate::report::{CheckStatus, Finding, INLINE_LIMIT};
use crate::source::{Item, Meta, Session, Source, fields};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Check N random sessions instead of all of them.
    #[arg(long, value_name = "N")]
    pub sample: Option<u64>,
    /// Then probe a running sessiond at this URL (health, status against the database,
    /// a write through the batched progress writer); see `sessiondb::smoke`.
    #[arg(long, value_name = "URL")]
    pub smoke_url: Option<String>,
}

impl Step for Args {
    const NAME: &'static str = "verify";
    fn common(&self) -> &Common {
        &self.common
    }
    fn run(&self, ctx: &mut Ctx) -> Result<()> {
        match &self.smoke_url {
            None => run(ctx, self.sample),
            Some(url) => crate::smoke::run(ctx, url, |ctx| run(ctx, self.sample)),
        }
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

/// A ledger row: status and content hash.
type LedgerRow = (String, Option<String>);

struct TargetRow {
    meta: Meta,
    state_sha: Option<String>,
}

pub fn run(ctx: &mut Ctx, sample: Option<u64>) -> Result<()> {
    let cfg = ctx.config()?;
    let t = ctx.target(Some(&cfg))?;
    let src = Source::from_config(&cfg);
    let schema_name = cfg.postgres.schema.clone();
    let mut c = pg::connect(&t)?;
    let fingerprint = src.quick_fingerprint()?;

    // The schema and the index.
    let st = schema::status(&mut c, &schema_name)?;
    // Versions only sessiondb's bookkeeping needs may be pending (a newer sessiondb
    // than the last load): the next migrate-state applies them.
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
    if !schema::table_exists(&mut c, &schema_name, "sessions")?
        || !schema::table_exists(&mut c, &schema_name, "sessiondb_ledger")?
    {
        ctx.problems = true;
        ctx.report
            .next_steps
            .push("migrate-state --dry-run=false".into());
        return Ok(());
    }
    // Tables whose columns cannot hold the data are not read as if they could.
    let fit = Fit::read(&mut c, &schema_name)?;
    let shape = fit.shape_problems();
    if !shape.is_empty() {
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
        return Ok(());
    }
    let gin = schema::index_state(&mut c, &schema_name)?;
    match &gin {
        Some((name, true, opc)) => ctx.report.check(
            "gin_index",
            CheckStatus::Pass,
            format!("{name} ({opc}) is valid"),
            json!({"name": name, "opclass": opc}),
        ),
        Some((name, false, _)) => ctx.report.check(
            "gin_index",
            CheckStatus::Fail,
            format!("{name} is invalid: REINDEX INDEX {name}"),
            json!({"name": name}),
        ),
        None => ctx.report.check(
            "gin_index",
            CheckStatus::Fail,
            "no GIN index on session_state.state",
            json!({}),
        ),
    }

    // Sampling: reservoir over the ids, then compare only those.
    let sampled: Option<std::collections::HashSet<String>> = match sample {
        Some(n) => Some(sample_ids(&src, n)?),
        None => None,
    };

    let mut counts = VerifyCounts::default();
    let mut diffs: Vec<Difference> = Vec::new();
    let mut tx = c
        .transaction()
        .map_err(|e| Error::pg("starting a transaction", &t.display, e))?;
    tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; CREATE TEMP TABLE pg_temp.sessiondb_verify_ids (id text PRIMARY KEY) ON COMMIT DROP")
        .map_err(|e| Error::pg("preparing verify", &t.display, e))?;
    let sessions_t = qualified(&schema_name, "sessions");
    let state_t = qualified(&schema_name, "session_state");
    let ledger_t = qualified(&schema_name, "sessiondb_ledger");
    let fetch_sql = format!(
        "SELECT s.id, {},
                pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(st.state::text, 'UTF8')), 'hex'), l.status, l.content_hash, u.id
           FROM pg_catalog.unnest($1::text[]) AS u(id)
           LEFT JOIN {sessions_t} s ON s.id OPERATOR(pg_catalog.=) u.id
           LEFT JOIN {state_t} st ON st.session_id OPERATOR(pg_catalog.=) u.id
           LEFT JOIN {ledger_t} l ON l.session_id = u.id",
        fit.meta_select("s")
    );
    let summary = src.open()?.scan(1000, |items| {
        let mut batch: Vec<Session> = Vec::with_capacity(items.len());
        let mut invalid_ids = Vec::new();
        for it in items {
            match it {
                Item::Session(s) => {
                    counts.sessions += 1;
                    if sampled.as_ref().is_none_or(|set| set.contains(&s.id)) {
                        batch.push(s);
                    }
                }
                Item::Invalid(i) => {
                    counts.sessions += 1;
                    invalid_ids.push(i);
                }
                Item::Known { .. } => unreachable!("verify reads every session"),
            }
        }
        let ids: Vec<&str> = batch.iter().map(|s| s.id.as_str()).collect();
        if sampled.is_none() {
            let all: Vec<&str> = ids.iter().copied().chain(invalid_ids.iter().filter_map(|i| i.id.as_deref())).collect();
            tx.execute("INSERT INTO pg_temp.sessiondb_verify_ids SELECT DISTINCT pg_catalog.unnest($1::text[]) ON CONFLICT DO NOTHING", &[&all])
                .map_err(|e| Error::pg("recording source ids", "", e))?;
        }
        // Invalid records: quarantined by a run (the ledger holds each under its key,
        // records without a usable id too), or not.
        if !invalid_ids.is_empty() {
            let keys: Vec<String> = invalid_ids.iter().map(|i| i.ledger_key()).collect();
            let rows = tx
                .query(&format!("SELECT session_id FROM {ledger_t} WHERE session_id OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[]) AND status OPERATOR(pg_catalog.=) 'quarantined'"), &[&keys])
                .map_err(|e| Error::pg("reading the ledger", "", e))?;
            let q: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
            for (i, key) in invalid_ids.into_iter().zip(keys) {
                if q.contains(&key) {
                    counts.quarantined += 1;
                    diffs.push(Difference {
                        session: i.id.unwrap_or_default(),
                        kind: "quarantined",
                        field: None,
                        path: i.path.as_ref().map(|p| p.display().to_string()),
                        detail: Some(format!("quarantined by a run ({}): {}", i.code, i.message)),
                    });
                } else {
                    counts.invalid += 1;
                    diffs.push(Difference {
                        session: i.id.unwrap_or_default(),
                        kind: "invalid",
                        field: None,
                        path: i.path.as_ref().map(|p| p.display().to_string()),
                        detail: Some(format!("invalid in the source ({}) and not quarantined: {}", i.code, i.message)),
                    });
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let rows = tx.query(&fetch_sql, &[&ids]).map_err(|e| Error::pg("reading target rows", "", e))?;
        let mut by_id: HashMap<String, (Option<TargetRow>, Option<LedgerRow>)> = HashMap::with_capacity(rows.len());
        for r in &rows {
            let t = "sessions";
            let id: String = r.get(10);
            let exists: Option<String> = r.get(0);
            let trow = match exists {
                Some(_) => Some(TargetRow {
                    meta: Meta { user_id: get(r, 1, t)?, status: get(r, 2, t)?, current_step: get(r, 3, t)?, cost: get(r, 4, t)?, created_at: get(r, 5, t)?, updated_at: get(r, 6, t)? },
                    state_sha: r.get(7),
                }),
                None => None,
            };
            let ledger: Option<String> = r.get(8);
            by_id.insert(id, (trow, ledger.map(|l| (l, r.get(9)))));
        }
        for s in &batch {
            counts.checked += 1;
            let (trow, ledger) = by_id.remove(&s.id).unwrap_or((None, None));
            let drifted = matches!(&ledger, Some((status, Some(h))) if status == "migrated" && *h != s.content_hash());
            if drifted {
                counts.drifted += 1;
            }
            let Some(trow) = trow else {
                counts.missing += 1;
                diffs.push(Difference { session: s.id.clone(), kind: "missing", field: None, path: None, detail: None });
                continue;
            };
            let mut d = compare_meta(&s.meta, &trow.meta);
            if d.is_none() {
                d = compare_state(&mut tx, &state_t, s, trow.state_sha.as_deref())?;
            }
            match d {
                None => counts.matching += 1,
                Some(mut d) => {
                    counts.different += 1;
                    d.session = s.id.clone();
                    if drifted {
                        d.kind = "drifted";
                    }
                    diffs.push(d);
                }
            }
        }
        Ok(())
    })?;
    for w in &summary.warnings {
        ctx.report.warn(w.clone());
    }
    if sampled.is_none() {
        let extra = tx
            .query(&format!("SELECT s.id FROM {sessions_t} s WHERE NOT EXISTS (SELECT 1 FROM pg_temp.sessiondb_verify_ids v WHERE v.id OPERATOR(pg_catalog.=) s.id) ORDER BY s.id"), &[])
            .map_err(|e| Error::pg("looking for extra sessions", "", e))?;
        counts.extra = extra.len() as u64;
        for r in extra {
            diffs.push(Difference {
                session: r.get(0),
                kind: "extra",
                field: None,
                path: None,
                detail: Some("in the target, not in the source".into()),
            });
        }
    }
    tx.commit().map_err(|e| Error::pg("ending verify", "", e))?;

    let failed = counts.missing + counts.extra + counts.different + counts.invalid > 0
        || ctx.report.has_failed_check();
    ctx.report.check(
        "sessions",
        if counts.missing + counts.extra + counts.different + counts.invalid > 0 { CheckStatus::Fail } else { CheckStatus::Pass },
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
    ctx.report.detail(
        "differences",
        diffs.iter().take(INLINE_LIMIT).collect::<Vec<_>>(),
    );
    ctx.report.detail("source_fingerprint", &fingerprint);
    if let Some(Ok(p)) =
        crate::report::write_list(ctx.report_dir(), "verify-differences.jsonl", &diffs)
    {
        ctx.report.artifact("differences", &p);
    }
    let phase = phase(&mut c, &schema_name, cfg.backend)?;
    let changed_in_target = diffs.iter().filter(|d| d.kind == "different").count();
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
    if !failed {
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
    } else {
        ctx.problems = true;
    }
    // Record the verification (bookkeeping only).
    let run = uuid::Uuid::parse_str(&ctx.run_id()).expect("uuid");
    let passed = !failed && sample.is_none();
    c.execute(
        &format!("INSERT INTO {} (run_id, source_fingerprint, passed, sample, counts) VALUES ($1, $2, $3, $4, $5)", qualified(&schema_name, "sessiondb_verifications")),
        &[&run, &fingerprint, &passed, &sample.map(|n| n as i32), &serde_json::to_value(&counts).unwrap_or_default()],
    )
    .map_err(|e| Error::pg("recording the verification", &t.display, e))?;
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
    let set = crate::cutover::latest(c, schema_name, "set_default")?;
    let back = crate::cutover::latest(c, schema_name, "rollback")?;
    Ok(match (set, back) {
        (s, Some(b)) if s.as_ref().is_none_or(|s| s.id < b.id) => Phase::RolledBack {
            at: b.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
        _ => Phase::Before,
    })
}

fn compare_meta(a: &Meta, b: &Meta) -> Option<Difference> {
    let fields: [(&str, Option<String>, Option<String>); 6] = [
        ("user_id", a.user_id.clone(), b.user_id.clone()),
        ("status", a.status.clone(), b.status.clone()),
        (
            "current_step",
            a.current_step.clone(),
            b.current_step.clone(),
        ),
        (
            "cost",
            a.cost.map(|c| format!("{c:?}")),
            b.cost.map(|c| format!("{c:?}")),
        ),
        (
            "created_at",
            a.created_at.as_ref().map(fields::fmt_ts),
            b.created_at.as_ref().map(fields::fmt_ts),
        ),
        (
            "updated_at",
            a.updated_at.as_ref().map(fields::fmt_ts),
            b.updated_at.as_ref().map(fields::fmt_ts),
        ),
    ];
    fields
        .into_iter()
        .find(|(_, x, y)| x != y)
        .map(|(name, x, y)| Difference {
            session: String::new(),
            kind: "different",
            field: Some(name.to_owned()),
            path: None,
            detail: Some(format!("source {:?}, target {:?}", x, y)),
        })
}

/// Compare the state by hash; where the hashes disagree, let PostgreSQL decide, and
/// name the first JSON path that differs.
fn compare_state(
    tx: &mut postgres::Transaction<'_>,
    state_t: &str,
    s: &Session,
    target_sha: Option<&str>,
) -> Result<Option<Difference>> {
    let src_sha = s
        .state
        .as_ref()
        .map(|st| st.hash()["v1:".len()..].to_owned());
    if src_sha.as_deref() == target_sha {
        return Ok(None);
    }
    let diff = |path: Option<String>, detail: &str| {
        Some(Difference {
            session: String::new(),
            kind: "different",
            field: Some("state".into()),
            path,
            detail: Some(detail.to_owned()),
        })
    };
    let (Some(st), Some(_)) = (&s.state, target_sha) else {
        return Ok(diff(
            None,
            if s.state.is_some() {
                "the target has no state"
            } else {
                "the source has no state, the target has one"
            },
        ));
    };
    let raw = std::str::from_utf8(&st.raw).unwrap_or_default();
    let row = tx
        .query_one(&format!("SELECT ($1::text::jsonb)::text = state::text, state::text FROM {state_t} WHERE session_id OPERATOR(pg_catalog.=) $2::text"), &[&raw, &s.id])
        .map_err(|e| Error::pg("comparing a state", "", e))?;
    let equal: bool = row.get(0);
    if equal {
        tracing::warn!(
            "session {}: hashes differ but PostgreSQL finds the states equal (a canonicalisation gap; not a difference)",
            s.id
        );
        return Ok(None);
    }
    let target_text: String = row.get(1);
    let path = match (
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
    Ok(diff(path, "the states differ"))
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

/// N ids chosen at random from the source.
fn sample_ids(src: &Source, n: u64) -> Result<std::collections::HashSet<String>> {
    Ok(src.sample(n as usize, |s| s.id)?.into_iter().collect())
}
