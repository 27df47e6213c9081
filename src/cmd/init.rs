//! `sessiondb init` (SPEC §9): propose a commented `sessiondb.toml` for a store. The
//! inspection and the proposal are `crate::init`; this is the flags and the report.
//!
//! stdout carries exactly one JSON report, as for every step: the proposed text is in
//! its `details.proposed_config`. With `--print` nothing is written and the text also
//! goes to stderr, for people; without it, the text is written to `--out` (default: the
//! config path `--config`, `$SESSIONDB_CONFIG` or `./sessiondb.toml` names), never over
//! an existing file unless `--force` (the old one is kept beside it).

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use crate::config;
use crate::driver::{Common, Ctx, Step};
use crate::error::{Error, Result};
use crate::init;
use crate::report::{CheckStatus, Finding, Report};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The SQLite database (else the application's sqlite:/// $DATABASE_URL, else the
    /// config being replaced, else the one database near the config's folder).
    #[arg(long, value_name = "PATH")]
    pub sqlite: Option<PathBuf>,
    /// The sessions table (else `sessions`).
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,
    /// The folder of <id>/state.json (else sessions/ beside the config or the database).
    #[arg(long, value_name = "DIR")]
    pub sessions_dir: Option<PathBuf>,
    /// The deprecated JSON store (else session-db.json or sessions.json nearby).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Where to write the config (else --config, $SESSIONDB_CONFIG, ./sessiondb.toml).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Write nothing: the proposal goes to stderr (and, as always, into the report).
    #[arg(long)]
    pub print: bool,
    /// Replace an existing config (kept beside it as <name>.<time>.bak).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: Common,
}

crate::details! {
    /// `details` of an init report: the proposal, and what the inspection found.
    pub struct Details {
        pub proposed_config: String,
        pub extra_columns: Vec<init::ColumnNote>,
        pub parent_tables: Vec<init::TableNote>,
        pub child_tables: Vec<init::TableNote>,
        pub other_tables: Vec<(String, String)>,
        pub undecided: Vec<String>,
    }
}

impl Step for Args {
    const NAME: &'static str = "init";
    const ABOUT: &'static str = "Inspect an existing store and write a commented sessiondb.toml for it; reads the store, writes only the config (--print: nothing).";
    type Details = Details;
    crate::step_flags!();
    fn run(&self, ctx: &mut Ctx, d: &mut Details) -> Result<()> {
        let out = match &self.out {
            Some(p) => p.clone(),
            None => config::discover(self.common.config.as_deref(), &ctx.env).0,
        };
        let out = std::path::absolute(&out).map_err(|e| Error::Unreadable {
            path: out.clone(),
            source: e,
        })?;
        let opts = init::Options {
            out: out.clone(),
            sqlite: self.sqlite.clone(),
            sessions_dir: self.sessions_dir.clone(),
            json: self.json.clone(),
            table: self.table.clone(),
        };
        let found = init::inspect(&opts, &ctx.env)?;
        let text = found.render();
        let (_, shape) = found.validate(&text, &ctx.env)?;
        report(ctx, &found, &shape, d);
        d.proposed_config = Some(text.clone());
        if self.print {
            let _ = std::io::stderr().write_all(crate::redact::text(&text).as_bytes());
            ctx.report.check(
                "config",
                CheckStatus::Skip,
                format!("not written (--print); it would go to {}", out.display()),
                json!({"path": out}),
            );
        } else {
            let kept = init::write_config(&out, &text, self.force)?;
            ctx.report.artifact("config", &out);
            if let Some(k) = &kept {
                ctx.report.artifact("previous_config", k);
            }
            ctx.report.check(
                "config",
                CheckStatus::Pass,
                format!(
                    "written to {}{}",
                    out.display(),
                    kept.map(|k| format!(" (the previous one kept as {})", k.display()))
                        .unwrap_or_default()
                ),
                json!({"path": out}),
            );
            tracing::info!("wrote {}", out.display());
        }
        let cfg = format!("--config {}", out.display());
        ctx.report.next_steps.push(format!(
            "review {} (every REVIEW line), then: sessiondb check {cfg}",
            out.display()
        ));
        ctx.report
            .next_steps
            .push(format!("sessiondb preflight {cfg}"));
        Ok(())
    }
}

/// The report: what was found, each guess, and what could not be decided.
fn report(
    ctx: &mut Ctx,
    f: &init::Inspection,
    shape: &crate::source::shape::Shape,
    d: &mut Details,
) {
    let r = &mut ctx.report;
    report_store(r, f, shape);
    report_target(r, f);
    r.count("sessions", f.rows);
    r.count("state_files", f.state_files);
    d.extra_columns = Some(f.extras.clone());
    d.parent_tables = Some(f.parents.clone());
    d.child_tables = Some(f.children.clone());
    d.other_tables = Some(f.other_tables.clone());
    d.undecided = Some(f.undecided.clone());
    for w in &f.warnings {
        r.warn(w.clone());
    }
    for u in &f.undecided {
        r.warn(Finding::new("init_undecided", u.clone()));
    }
}

/// The store found: `sqlite`, `mapping`, `sessions_dir`, `json_store`.
fn report_store(r: &mut Report, f: &init::Inspection, shape: &crate::source::shape::Shape) {
    r.source = json!({
        "sqlite": f.sqlite.path,
        "sessions_dir": f.sessions_dir.as_ref().map(|d| &d.path),
        "json": f.json.as_ref().map(|j| &j.path),
    });
    if let Some(t) = &f.target {
        r.target = Some(t.display.clone());
    }
    r.check(
        "sqlite",
        CheckStatus::Pass,
        format!(
            "{} ({}): table {:?}, {} row(s)",
            f.sqlite.path.display(),
            f.sqlite.how,
            f.table,
            f.rows
        ),
        json!({"tables": f.tables_in_database}),
    );
    r.check(
        "mapping",
        if f.guesses.iter().any(|g| g.why.starts_with("undecided")) {
            CheckStatus::Warn
        } else {
            CheckStatus::Pass
        },
        format!(
            "{} shape; {}",
            match shape.mode {
                crate::source::shape::Mode::Default => "the default",
                crate::source::shape::Mode::Mapped => "a mapped",
            },
            f.guesses
                .iter()
                .map(|g| format!(
                    "{} → {}",
                    g.field,
                    g.column.as_deref().unwrap_or("(absent)")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        json!({"mode": shape.mode, "guesses": f.guesses}),
    );
    match &f.sessions_dir {
        Some(d) => r.check(
            "sessions_dir",
            CheckStatus::Pass,
            format!(
                "{} ({}): {} state file(s)",
                d.path.display(),
                d.how,
                f.state_files
            ),
            json!({}),
        ),
        None => r.check(
            "sessions_dir",
            CheckStatus::Warn,
            "no sessions folder found",
            json!({}),
        ),
    }
    match &f.json {
        Some(j) => r.check(
            "json_store",
            CheckStatus::Pass,
            format!("{} ({})", j.path.display(), j.how),
            json!({"keys": f.json_keys, "guesses": f.json_guesses}),
        ),
        None => r.check(
            "json_store",
            CheckStatus::Skip,
            "no JSON store found",
            json!({}),
        ),
    }
}

/// The target, read-only: whether each table it would use fits.
fn report_target(r: &mut Report, f: &init::Inspection) {
    match &f.target {
        None => r.check(
            "target",
            CheckStatus::Skip,
            format!(
                "no target configured (${} is not a PostgreSQL URL)",
                f.url_env
            ),
            json!({}),
        ),
        Some(t) => {
            let fits = t.error.is_none() && t.tables.iter().all(|n| n.fit.fits());
            r.check(
                "target",
                if fits {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Warn
                },
                match &t.error {
                    Some(e) => format!("{}: could not be read: {e}", t.display),
                    None => t
                        .tables
                        .iter()
                        .map(|n| {
                            format!(
                                "{} {}",
                                n.table,
                                if !n.exists {
                                    "will be created"
                                } else if n.fit.fits() {
                                    "fits"
                                } else {
                                    "does not fit"
                                }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                },
                json!({"tables": t.tables, "schema": t.schema}),
            );
        }
    }
}
