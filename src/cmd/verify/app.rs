//! verify on a mapped store (SPEC §9): every row of every copied table (parents, the
//! sessions table, children) compared with the target, the target's rows decoded by
//! their PostgreSQL type into `Value`s and hashed as the source's rows converted to
//! those types are (`v2:`, with the canonical state for a session), in one
//! repeatable-read snapshot. A session whose hash differs is named with the first
//! column (or `state`) that differs.

use std::collections::HashMap;

use serde_json::json;

use super::{Details, Difference, Found, check_gin, check_schema};
use crate::config::Config;
use crate::driver::Ctx;
use crate::error::{Error, Result};
use crate::pg::app::{self, TablePlan};
use crate::report::{CheckStatus, Finding};
use crate::source::Source;
use crate::source::app::AppStore;
use crate::value::Value;

/// A source row as verify keeps it: its hash, values and canonical state.
struct Kept {
    hash: String,
    values: Vec<Value>,
    state: Option<String>,
}

fn first_diff(t: &TablePlan, a: &Kept, values: &[Value], state: Option<&str>) -> String {
    for (i, c) in t.columns.iter().enumerate() {
        if a.values[i] != values[i] {
            return c.name.clone();
        }
    }
    if a.state.as_deref() != state {
        return "state".into();
    }
    "row".into()
}

pub(super) fn verify_mapped(
    ctx: &mut Ctx,
    cfg: &Config,
    c: &mut postgres::Client,
    sample: Option<u64>,
    d: &mut Details,
) -> Result<()> {
    let schema_name = &cfg.postgres.schema;
    let fingerprint = Source::from_config(cfg).quick_fingerprint()?;
    check_schema(ctx, c, schema_name)?;
    let store = AppStore::open(cfg, "verify")?;
    store.begin()?;
    let copied = store.tables()?;
    let target = app::plan(
        c,
        schema_name,
        &store.shape,
        &copied,
        &cfg.app.fill,
        cfg.postgres.gin_opclass.as_sql(),
    )?;
    if target.creates {
        store.end();
        ctx.problems = true;
        ctx.report.check(
            "target_tables",
            CheckStatus::Fail,
            "the target has none of the application's tables yet".to_owned(),
            json!({}),
        );
        ctx.report
            .next_steps
            .push("migrate-state --dry-run=false".into());
        return Ok(());
    }
    if !target.fits() {
        store.end();
        for m in &target.misfits {
            ctx.report
                .errors
                .push(Finding::new("schema_mismatch", m.error().to_string()));
        }
        ctx.report.check(
            "target_tables",
            CheckStatus::Fail,
            target
                .misfits
                .iter()
                .map(|m| m.error().to_string())
                .collect::<Vec<_>>()
                .join("; "),
            json!({"problems": target.misfits}),
        );
        ctx.problems = true;
        return Ok(());
    }
    check_gin(ctx, c, schema_name)?;
    let mut found = Found::default();
    let mut tx = c
        .transaction()
        .map_err(|e| Error::pg("starting a transaction", "", e))?;
    tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .map_err(|e| Error::pg("preparing verify", "", e))?;
    let mut tables_check = Vec::new();
    for t in &target.tables {
        let src = &copied[t.source];
        let mut kept: HashMap<String, Kept> = HashMap::new();
        let name = |key: &str| {
            if t.sessions {
                key.to_owned()
            } else {
                format!("{}:{key}", t.name)
            }
        };
        let mut diffs = Vec::new();
        let mut invalid = 0u64;
        if t.sessions {
            store.sessions(src, 1000, |items| {
                for it in items {
                    match it {
                        Err(inv) => {
                            invalid += 1;
                            let mut df =
                                Difference::new(inv.id.as_deref().unwrap_or(""), "invalid");
                            df.detail = Some(inv.message.clone());
                            diffs.push(df);
                        }
                        Ok(s) => match target.session_row(&s) {
                            Ok((row, _)) => {
                                kept.insert(
                                    row.key,
                                    Kept {
                                        hash: row.hash,
                                        values: row.values,
                                        state: s.state.map(|st| st.canonical),
                                    },
                                );
                            }
                            Err(e) => {
                                invalid += 1;
                                let mut df = Difference::new(&s.id, "invalid");
                                df.detail = Some(e.message);
                                diffs.push(df);
                            }
                        },
                    }
                }
                Ok(())
            })?;
        } else {
            store.rows(src, 1000, |rows| {
                for raws in rows {
                    match t.convert(&raws, None) {
                        Ok(row) => {
                            kept.insert(
                                row.key,
                                Kept {
                                    hash: row.hash,
                                    values: row.values,
                                    state: None,
                                },
                            );
                        }
                        Err(e) => {
                            invalid += 1;
                            let mut df = Difference::new(&t.name, "invalid");
                            df.detail = Some(e.message);
                            diffs.push(df);
                        }
                    }
                }
                Ok(())
            })?;
        }
        let rows = kept.len() as u64 + invalid;
        let (mut matching, mut different, mut extra) = (0u64, 0u64, 0u64);
        let st = t.sessions.then_some(&target.state);
        t.read(&mut tx, schema_name, st, |row, state| {
            match kept.remove(&row.key) {
                None => {
                    extra += 1;
                    diffs.push(Difference::new(&name(&row.key), "extra"));
                }
                Some(k) if k.hash == row.hash => matching += 1,
                Some(k) => {
                    different += 1;
                    let mut df = Difference::new(&name(&row.key), "different");
                    df.field = Some(first_diff(t, &k, &row.values, state.as_deref()));
                    diffs.push(df);
                }
            }
            Ok(())
        })?;
        let missing = kept.len() as u64;
        let mut missing_keys: Vec<&String> = kept.keys().collect();
        missing_keys.sort();
        for k in missing_keys {
            diffs.push(Difference::new(&name(k), "missing"));
        }
        tables_check.push(json!({
            "table": t.name, "rows": rows, "matching": matching, "missing": missing,
            "extra": extra, "different": different, "invalid": invalid,
        }));
        if t.sessions {
            let fc = &mut found.counts;
            fc.sessions = rows;
            fc.checked = rows;
            fc.matching = matching;
            fc.missing += missing;
            fc.extra += extra;
            fc.different += different;
            fc.invalid += invalid;
        } else {
            // Parent rows count as differences of the copy too.
            let fc = &mut found.counts;
            fc.missing += missing;
            fc.extra += extra;
            fc.different += different;
            fc.invalid += invalid;
        }
        found.diffs.extend(diffs);
    }
    drop(tx);
    store.end();
    let bad: u64 = tables_check
        .iter()
        .map(|t| {
            ["missing", "extra", "different", "invalid"]
                .iter()
                .map(|k| t[k].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum();
    ctx.report.check(
        "tables",
        if bad == 0 {
            CheckStatus::Pass
        } else {
            CheckStatus::Fail
        },
        format!(
            "{} table(s) compared row by row (parents, sessions, children)",
            tables_check.len()
        ),
        json!({"tables": tables_check}),
    );
    super::conclude(ctx, cfg, c, found, fingerprint, sample, d)
}
