//! verify on a mapped store (SPEC §9): every row of every copied table (parents, the
//! sessions table, children) compared with the target, the target's rows decoded by
//! their PostgreSQL type into `Value`s and hashed as the source's rows converted to
//! those types are (`v2:`, with the canonical state for a session), in one
//! repeatable-read snapshot. A session whose hash differs is named with the first
//! column (or `state`) that differs.
//!
//! Memory stays flat in the tables' size: the source's rows of a table go into a
//! temporary table of verify's transaction ([`Held`]: each row's key, hash and a digest
//! of each column), then the target's rows are read through a portal, a batch at a
//! time, each batch taking its held rows out by key; what is left is missing.

use std::collections::HashMap;
use std::io::Write;

use serde_json::json;

use super::{Details, Difference, Found, check_gin, check_schema};
use crate::config::Config;
use crate::driver::Ctx;
use crate::error::{Error, Result};
use crate::pg::app::{self, Row, TablePlan};
use crate::report::{CheckStatus, Finding};
use crate::source::Source;
use crate::source::app::AppStore;
use crate::value::Value;

/// The source's rows of one table while verify reads the target's: a temporary table
/// of its transaction (`ON COMMIT DROP`), keyed by the row's key text (as bytes: any
/// text a key may hold), with the row's `v2:` hash and [`digests`] of its columns.
struct Held;

/// Held rows taken out by key: each one's hash and column digests.
type Taken = HashMap<Vec<u8>, Vec<(String, String)>>;

const HELD: &str = "pg_temp.sessiondb_verify_rows";

impl Held {
    fn create(tx: &mut postgres::Transaction<'_>) -> Result<Held> {
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE {HELD} (key pg_catalog.bytea NOT NULL, hash pg_catalog.text NOT NULL, cols pg_catalog.text NOT NULL) ON COMMIT DROP;
             CREATE INDEX ON {HELD} (key)"
        ))
        .map_err(|e| Error::pg("preparing verify", "", e))?;
        Ok(Held)
    }

    /// Empty it for the next table.
    fn clear(&self, tx: &mut postgres::Transaction<'_>) -> Result<()> {
        tx.batch_execute(&format!("TRUNCATE {HELD}"))
            .map_err(|e| Error::pg("preparing verify", "", e))
    }

    /// A row as a line of `COPY ... FROM STDIN` (text format).
    fn line(out: &mut Vec<u8>, row: &Row) {
        out.extend_from_slice(b"\\\\x");
        out.extend_from_slice(hex::encode(row.key.as_bytes()).as_bytes());
        out.push(b'\t');
        out.extend_from_slice(row.hash.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(digests(&row.values).as_bytes());
        out.push(b'\n');
    }

    /// Take the held rows of `keys` out: by key, their hash and column digests (more
    /// than one when the source holds the key more than once).
    fn take(&self, tx: &mut postgres::Transaction<'_>, keys: &[&[u8]]) -> Result<Taken> {
        let rows = tx
            .query(
                &format!(
                    "DELETE FROM {HELD} WHERE key OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.bytea[]) RETURNING key, hash, cols"
                ),
                &[&keys],
            )
            .map_err(|e| Error::pg("comparing rows", "", e))?;
        let mut out: Taken = HashMap::with_capacity(rows.len());
        for r in rows {
            out.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
        }
        Ok(out)
    }

    /// The keys still held: the source's rows the target does not have, in key order.
    fn left(&self, tx: &mut postgres::Transaction<'_>) -> Result<Vec<String>> {
        Ok(tx
            .query(&format!("SELECT key FROM {HELD} ORDER BY key"), &[])
            .map_err(|e| Error::pg("looking for missing rows", "", e))?
            .iter()
            .map(|r| String::from_utf8_lossy(r.get::<_, &[u8]>(0)).into_owned())
            .collect())
    }
}

/// A short digest of each column's canonical value, in the table plan's column order
/// (eight hex digits each): enough to name the first column that differs once the
/// rows' hashes (the proof) disagree.
fn digests(values: &[Value]) -> String {
    let mut out = String::with_capacity(values.len() * 8);
    for v in values {
        // FNV-1a, 32 bits: the same on both sides, in every process.
        let mut h: u32 = 0x811c_9dc5;
        let mut eat = |b: u8| {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        };
        match v.canonical() {
            None => eat(b'N'),
            Some(text) => {
                eat(b'S');
                text.bytes().for_each(&mut eat);
            }
        }
        out.push_str(&format!("{h:08x}"));
    }
    out
}

/// The first column whose digest differs, else `state` for a session, else `row`.
fn first_diff(t: &TablePlan, source: &str, target: &str) -> String {
    let at = (0..t.columns.len())
        .find(|&i| source.get(i * 8..i * 8 + 8) != target.get(i * 8..i * 8 + 8));
    match at {
        Some(i) => t.columns[i].name.clone(),
        None if t.sessions => "state".into(),
        None => "row".into(),
    }
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
    let held = Held::create(&mut tx)?;
    let mut tables_check = Vec::new();
    let mut buf = Vec::new();
    for t in &target.tables {
        let src = &copied[t.source];
        let name = |key: &str| {
            if t.sessions {
                key.to_owned()
            } else {
                format!("{}:{key}", t.name)
            }
        };
        let mut diffs = Vec::new();
        let (mut invalid, mut read) = (0u64, 0u64);
        held.clear(&mut tx)?;
        let mut copy = tx
            .copy_in(&format!("COPY {HELD} (key, hash, cols) FROM STDIN"))
            .map_err(|e| Error::pg("starting COPY", "", e))?;
        let mut send = |buf: &mut Vec<u8>| {
            copy.write_all(buf).map_err(|e| Error::Database {
                context: "sending the source's rows to verify's temporary table".into(),
                message: e.to_string(),
            })?;
            buf.clear();
            Ok::<(), Error>(())
        };
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
                                read += 1;
                                Held::line(&mut buf, &row);
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
                send(&mut buf)
            })?;
        } else {
            store.rows(src, 1000, |rows| {
                for raws in rows {
                    match t.convert(&raws, None) {
                        Ok(row) => {
                            read += 1;
                            Held::line(&mut buf, &row);
                        }
                        Err(e) => {
                            invalid += 1;
                            let mut df = Difference::new(&t.name, "invalid");
                            df.detail = Some(e.message);
                            diffs.push(df);
                        }
                    }
                }
                send(&mut buf)
            })?;
        }
        copy.finish()
            .map_err(|e| Error::pg("loading verify's temporary table (COPY)", "", e))?;
        // Its statistics, so that each batch takes its rows out by the index.
        tx.batch_execute(&format!("ANALYZE {HELD}"))
            .map_err(|e| Error::pg("preparing verify", "", e))?;
        let rows = read + invalid;
        let (mut matching, mut different, mut extra) = (0u64, 0u64, 0u64);
        let st = t.sessions.then_some(&target.state);
        t.read_batches(&mut tx, schema_name, st, |tx, batch| {
            let keys: Vec<&[u8]> = batch.iter().map(|r| r.key.as_bytes()).collect();
            let mut source = held.take(tx, &keys)?;
            for row in &batch {
                let Some(mut same_key) = source.remove(row.key.as_bytes()) else {
                    extra += 1;
                    diffs.push(Difference::new(&name(&row.key), "extra"));
                    continue;
                };
                let (hash, cols) = same_key.swap_remove(0);
                if hash == row.hash {
                    matching += 1;
                } else {
                    different += 1;
                    let mut df = Difference::new(&name(&row.key), "different");
                    df.field = Some(first_diff(t, &cols, &digests(&row.values)));
                    diffs.push(df);
                }
                // The source holds this key more than once: the target has one row.
                for _ in same_key {
                    different += 1;
                    let mut df = Difference::new(&name(&row.key), "different");
                    df.detail = Some("the source holds this key more than once".into());
                    diffs.push(df);
                }
            }
            Ok(())
        })?;
        let missing_keys = held.left(&mut tx)?;
        let missing = missing_keys.len() as u64;
        for k in &missing_keys {
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
