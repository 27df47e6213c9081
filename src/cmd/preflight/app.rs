//! preflight on a mapped store (SPEC §9): the source's shape, the target planned both
//! ways with every `schema_mismatch` named (table, column, fix), and every row of every
//! copied table classified as migrate-state's planning pass classifies it (the same
//! function, `migrate_state::app::plan_mapped`). Read-only on both sides, but for the
//! plan's temporary tables (`migrate_state/known.rs`), its session's own.

use serde_json::json;

use crate::config::Config;
use crate::driver::Ctx;
use crate::error::Result;
use crate::report::{CheckStatus, Finding, INLINE_LIMIT};

pub(super) fn run(ctx: &mut Ctx, cfg: &Config, quarantine: bool) -> Result<()> {
    let sqlite_ok = super::check_sqlite(ctx, cfg);
    let mut pg = super::connect_target(ctx, cfg);
    // The state files' sizes are not summed for a mapped store: the estimate is the database's.
    let state_bytes = 0u64;
    match (pg.as_mut(), sqlite_ok) {
        (Some(c), true) => {
            match crate::cmd::migrate_state::app::plan_mapped(c, cfg, "preflight", 1000) {
                Err(e) => {
                    ctx.report
                        .check("app_schema", CheckStatus::Fail, e.to_string(), json!({}));
                    ctx.report
                        .errors
                        .push(Finding::new(e.code(), e.to_string()));
                    ctx.problems = true;
                }
                Ok(p) => {
                    p.store.end();
                    for w in &p.store.shape.warnings {
                        ctx.report.warn(w.clone());
                    }
                    let t = &p.target;
                    if t.fits() {
                        let tables: Vec<&str> = t.tables.iter().map(|x| x.name.as_str()).collect();
                        ctx.report.check(
                            "app_schema",
                            CheckStatus::Pass,
                            if t.creates {
                                format!(
                                    "the target has none of the application's tables: migrate-state creates {} and session_state",
                                    tables.join(", ")
                                )
                            } else {
                                format!(
                                    "the application's tables ({}, session_state) take the data as they are{}",
                                    tables.join(", "),
                                    match &t.state.gin {
                                        Some(g) => format!("; its GIN index {g} is used"),
                                        None => String::new(),
                                    }
                                )
                            },
                            json!({"target": t, "notes": t.notes}),
                        );
                    } else {
                        for m in &t.misfits {
                            ctx.report
                                .errors
                                .push(Finding::new("schema_mismatch", m.error().to_string()));
                        }
                        ctx.report.check(
                            "app_schema",
                            CheckStatus::Fail,
                            t.misfits
                                .iter()
                                .map(|m| m.error().to_string())
                                .collect::<Vec<_>>()
                                .join("; "),
                            json!({"problems": t.misfits, "target": t}),
                        );
                        ctx.problems = true;
                    }
                    if t.fits() {
                        let bad = p.invalid.len() + p.bad_rows.len();
                        let status = if bad == 0 {
                            CheckStatus::Pass
                        } else {
                            CheckStatus::Fail
                        };
                        for i in p.invalid.iter().take(INLINE_LIMIT) {
                            ctx.report.errors.push(i.finding());
                        }
                        for b in p.bad_rows.iter().take(INLINE_LIMIT) {
                            ctx.report
                                .errors
                                .push(Finding::new("invalid_value", b.clone()));
                        }
                        if bad > 0 {
                            ctx.problems = true;
                        }
                        let summary = if bad == 0 {
                            "every row converts to its target column".to_owned()
                        } else {
                            format!(
                                "{bad} row(s) do not convert to their target column: migrate-state would refuse{}",
                                if quarantine {
                                    " (--quarantine does not apply to a mapped store yet)"
                                } else {
                                    ""
                                }
                            )
                        };
                        ctx.report.check(
                            "constraints",
                            status,
                            summary,
                            json!({"tables": p.counts}),
                        );
                        for w in p.conflicts.iter().take(INLINE_LIMIT) {
                            ctx.report.warn(Finding::new(
                                "conflict",
                                format!("{}: {}", w.session, w.reason),
                            ));
                        }
                        for tc in &p.counts {
                            if p.target
                                .tables
                                .iter()
                                .any(|x| x.sessions && x.name == tc.table)
                            {
                                ctx.report.count("sessions", tc.rows);
                                ctx.report.count("inserted", tc.inserted);
                                ctx.report.count("updated", tc.updated);
                                ctx.report.count("unchanged", tc.unchanged);
                                ctx.report.count("invalid", tc.invalid);
                            }
                        }
                    }
                }
            }
        }
        _ => ctx.report.check(
            "app_schema",
            CheckStatus::Skip,
            "not checked: the source or the target could not be read",
            json!({}),
        ),
    }
    let estimate = super::estimate_backup(cfg, state_bytes);
    super::check_backup_location(ctx, &cfg.backup_dir, estimate);
    Ok(())
}
