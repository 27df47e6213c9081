//! The driver shared by every binary and the umbrella: parse a step's flags, run it,
//! fold its typed details into the report, emit the report (even on an error or a
//! panic), exit with its code. It knows no command: the commands implement [`Step`]
//! (`crate::cmd`), the umbrella's enum lives beside them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

use crate::config::{self, Config, Env, Target};
use crate::error::{Error, Result};
use crate::redact;
use crate::report::{self, Finding, Report};
use crate::term;

// The flags every step takes (flattened into each command's flags). Plain comments
// here, not doc comments: clap would show a struct's doc as the step's own help.
#[derive(Debug, Clone, Args, Default)]
pub struct Common {
    /// The config file (else $SESSIONDB_CONFIG, else ./sessiondb.toml).
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long, value_name = "PATH", global = true)]
    pub report_file: Option<PathBuf>,
    /// Write the report as <DIR>/<step>.json, with full lists beside it.
    #[arg(long, value_name = "DIR", env = "SESSIONDB_REPORT_DIR", global = true)]
    pub report_dir: Option<PathBuf>,
    /// No progress and no summary on stderr (the report is still printed).
    #[arg(long, global = true)]
    pub quiet: bool,
}

// `--dry-run`, `--dry-run=true`, `--dry-run=false`. Dry run is the default; a bare
// `--dry-run false` is a usage error (with a hint), never a silent real or dry run.
#[derive(Debug, Clone, Args)]
pub struct DryRun {
    /// Say what would be done without doing it (the default); --dry-run=false to act.
    #[arg(
        long = "dry-run",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_value = "true",
        default_missing_value = "true",
        value_parser = clap::builder::BoolValueParser::new()
    )]
    pub dry_run: bool,
}

/// One step of the toolkit: its flags, its report's details, and its driver.
pub trait Step: Args {
    const NAME: &'static str;
    /// The first line of the step's `--help`: what it does, and whether it writes.
    const ABOUT: &'static str;
    /// The step's own part of the report: `details` (SPEC §5), filled as the step goes
    /// and folded into the envelope when it ends, whether it succeeded or not.
    type Details: serde::Serialize + Default;
    fn common(&self) -> &Common;
    /// `Some` for steps that change something; `None` for read-only steps.
    fn dry_run(&self) -> Option<bool> {
        None
    }
    fn run(&self, ctx: &mut Ctx, details: &mut Self::Details) -> Result<()>;
}

/// The accessors every command's `impl Step` would otherwise repeat: `common` (its
/// flattened [`Common`], field `common`) and, given `dry`, `dry_run` (its flattened
/// [`DryRun`], field `dry`).
#[macro_export]
macro_rules! step_flags {
    () => {
        fn common(&self) -> &$crate::driver::Common {
            &self.common
        }
    };
    (dry) => {
        $crate::step_flags!();
        fn dry_run(&self) -> Option<bool> {
            Some(self.dry.dry_run)
        }
    };
}

/// What a step works with: the report it fills, the environment, its flags.
pub struct Ctx {
    pub report: Report,
    pub env: Env,
    pub common: Common,
    /// Set when the step found problems (exit 1) without an error.
    pub problems: bool,
    started: Instant,
    /// The config as [`Ctx::config`] loaded it: its path and backend, to judge
    /// `backend_drift` again against the file as the step leaves it.
    loaded: Option<(PathBuf, config::Backend)>,
}

impl Ctx {
    pub fn new(step: &str, common: Common, env: Env) -> Ctx {
        let run_id = uuid::Uuid::new_v4().to_string();
        Ctx {
            report: Report::new(step, &run_id),
            env,
            common,
            problems: false,
            started: Instant::now(),
            loaded: None,
        }
    }

    pub fn run_id(&self) -> String {
        self.report.run_id.clone()
    }

    /// Load the config: its warnings and the drift warning go into the report, where
    /// each setting came from goes to stderr.
    pub fn config(&mut self) -> Result<Config> {
        let cfg = Config::load(self.common.config.as_deref(), &self.env)?;
        cfg.require_default_schema(&self.report.step)?;
        for line in &cfg.provenance {
            tracing::info!("{line}");
        }
        for w in &cfg.warnings {
            self.report.warn(w.clone());
        }
        let rt = config::runtime(&cfg.postgres.url_env, &self.env)?;
        tracing::info!(
            "runtime backend: {} ({}); configured: {}",
            rt.backend,
            rt.reason,
            cfg.backend
        );
        if let Some(w) = config::drift(cfg.backend, &rt, &cfg.path) {
            self.report.warn(w);
        }
        self.report.source = cfg.source_json();
        self.loaded = Some((cfg.path.clone(), cfg.backend));
        Ok(cfg)
    }

    /// `backend_drift` judged against the config as it is now: a step that switched
    /// the backend (set-default, rollback, the umbrella) leaves a report whose warning
    /// speaks of the file it left, not of the one it found.
    fn refresh_drift(&mut self) {
        let Some((path, was)) = self.loaded.clone() else {
            return;
        };
        let Ok(cfg) = Config::load(Some(&path), &self.env) else {
            return;
        };
        if cfg.backend == was {
            return;
        }
        let Ok(rt) = config::runtime(&cfg.postgres.url_env, &self.env) else {
            return;
        };
        self.report.warnings.retain(|w| w.code != "backend_drift");
        if let Some(w) = config::drift(cfg.backend, &rt, &cfg.path) {
            self.report.warn(w);
        }
        self.report.source = cfg.source_json();
    }

    /// The PostgreSQL target, required.
    pub fn target(&mut self, cfg: Option<&Config>) -> Result<Target> {
        self.target_if_any(cfg)?.ok_or_else(|| Error::NoTarget {
            url_env: cfg
                .map_or(config::DEFAULT_URL_ENV, |c| &c.postgres.url_env)
                .to_owned(),
            config: cfg
                .map(|c| c.path.display().to_string())
                .unwrap_or_else(|| "the config".into()),
        })
    }

    /// The PostgreSQL target when one is configured (`verify --smoke-url` probes a
    /// service on the legacy store without one).
    pub fn target_if_any(&mut self, cfg: Option<&Config>) -> Result<Option<Target>> {
        let settings = cfg.map_or_else(config::PostgresSettings::defaults, |c| c.postgres.clone());
        let t = config::target(&settings, cfg.map(|c| c.path.as_path()), &self.env)?;
        if let Some(t) = &t {
            tracing::info!("database URL from {}: {}", t.origin, t.display);
            tracing::info!("TLS: {}", t.tls.describe());
            self.report.target = Some(t.display.clone());
        }
        Ok(t)
    }

    pub fn report_dir(&self) -> Option<&Path> {
        self.common.report_dir.as_deref()
    }
}

/// Run a step to its end: the report is emitted whatever happens, even on a panic.
pub fn run_step<S: Step>(step: &S) -> i32 {
    init_tracing(step.common().quiet);
    let mut report = execute(step, Env::from_process());
    finish(&mut report, step.common())
}

/// Run a step and return its finished report, without emitting it (the umbrella's
/// `migrate to postgres` nests the reports of its steps).
pub fn execute<S: Step>(step: &S, env: Env) -> Report {
    let mut ctx = Ctx::new(S::NAME, step.common().clone(), env);
    crate::progress::set_quiet(step.common().quiet);
    ctx.report.dry_run = step.dry_run();
    if step.dry_run() == Some(true) {
        tracing::info!(
            "{}: dry run: nothing will be written (pass --dry-run=false to act)",
            S::NAME
        );
    }
    let mut details = S::Details::default();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        step.run(&mut ctx, &mut details)
    }));
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(panic) => Some(Error::panicked(panic.as_ref())),
    };
    let mut seen: Vec<String> = error.iter().map(|e| e.code().to_owned()).collect();
    let mut error_exit = error.map(|e| {
        ctx.report.errors.push(e.finding());
        for s in e.next_steps() {
            if !ctx.report.next_steps.contains(&s) {
                ctx.report.next_steps.push(s);
            }
        }
        if e.exit_code() == crate::exit::PROBLEMS {
            ctx.problems = true;
        }
        e.exit_code()
    });
    // An error a step reported as a finding (preflight and check go on after a failed
    // connection) gets its way out too; a refused login ends every step with exit 3.
    for code in ctx
        .report
        .errors
        .iter()
        .map(|f| f.code.clone())
        .collect::<Vec<_>>()
    {
        if seen.contains(&code) {
            continue;
        }
        if code == "auth_failed" && error_exit.is_none() {
            error_exit = Some(crate::exit::OPERATIONAL);
        }
        let steps = crate::error::next_steps_for(&code);
        if !steps.iter().any(|s| ctx.report.next_steps.contains(s)) {
            ctx.report.next_steps.extend(steps);
        }
        seen.push(code);
    }
    ctx.report.set_details(&details);
    ctx.refresh_drift();
    let problems = ctx.problems;
    ctx.report.finish(error_exit, problems, ctx.started);
    ctx.report
}

/// Emit the report and the human summary; returns the exit code.
fn finish(report: &mut Report, common: &Common) -> i32 {
    // Secrets masked in the values, once: the report and the summary show the same.
    let mut safe = report.redacted();
    if let Err(e) = report::emit(
        &safe,
        common.report_file.as_deref(),
        common.report_dir.as_deref(),
    ) {
        // stdout already holds the report; say so on stderr and fail operationally.
        let line = redact::known_secrets(&format!("error: {e}"));
        let _ = writeln!(std::io::stderr(), "{}", term::escape(&line));
        report.exit_code = crate::exit::OPERATIONAL;
        safe.exit_code = report.exit_code;
    }
    if !common.quiet {
        let _ = writeln!(std::io::stderr(), "{}", summary(&safe));
    }
    report.exit_code
}

/// How many warning codes the summary shows, one line each.
const SUMMARY_CODES: usize = 10;

/// A short human summary for stderr. Every field is [`term::escape`]d: the summary's
/// lines are the tool's, and no id or file name in a message can colour the terminal
/// or add a line of its own.
pub fn summary(r: &Report) -> String {
    let e = |s: &str| term::escape(s).into_owned();
    let mut out = format!(
        "{}: {} (exit {}){}",
        e(&r.step),
        serde_json::to_value(r.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        r.exit_code,
        if r.dry_run == Some(true) {
            " — dry run, nothing written"
        } else {
            ""
        }
    );
    if !r.counts.is_empty() {
        let counts: Vec<String> = r
            .counts
            .iter()
            .map(|(k, v)| match k.as_str() {
                // Sizes for people; the report keeps the exact bytes.
                "bytes" => format!(
                    "bytes={}",
                    crate::progress::human_bytes(*v).replace(' ', "")
                ),
                _ => format!("{}={v}", e(k)),
            })
            .collect();
        out.push_str(&format!("\n  counts: {}", counts.join(" ")));
    }
    for c in &r.checks {
        if c.status != report::CheckStatus::Pass {
            let status = format!("{:?}", c.status).to_lowercase();
            out.push_str(&format!("\n  {status} {}: {}", e(&c.id), e(&c.summary)));
        }
    }
    for f in &r.errors {
        out.push_str(&format!("\n  error {}: {}", e(&f.code), e(&f.message)));
    }
    // One line per code, in the order the codes first came, with how many there were:
    // the report keeps every one.
    let mut codes: Vec<(&str, u64, &Finding)> = Vec::new();
    for w in &r.warnings {
        if w.code == "warnings_truncated" && r.has_unlisted() {
            continue;
        }
        match codes.iter_mut().find(|(c, _, _)| *c == w.code) {
            Some((_, n, _)) => *n += 1,
            None => codes.push((&w.code, 1, w)),
        }
    }
    for (code, n, first) in codes.iter().take(SUMMARY_CODES) {
        let n = n + r.unlisted(code);
        if n == 1 {
            out.push_str(&format!("\n  warning {}: {}", e(code), e(&first.message)));
        } else {
            out.push_str(&format!(
                "\n  warning {} ({n} times): {}; the other {} are in the report",
                e(code),
                e(&first.message),
                n - 1
            ));
        }
    }
    if codes.len() > SUMMARY_CODES {
        out.push_str(&format!(
            "\n  ... and warnings of {} more codes in the report",
            codes.len() - SUMMARY_CODES
        ));
    }
    for s in &r.next_steps {
        out.push_str(&format!("\n  next: {}", e(s)));
    }
    out
}

/// The log's stderr writer. The formatter writes each event whole, in one write ending
/// with its newline: every registered secret is masked in it, and every control
/// character but that final newline escaped ([`term::escape_line`]), so that no id or
/// file name in a message colours the terminal or forges a line.
struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = redact::known_secrets(&String::from_utf8_lossy(buf));
        let line = term::escape_line(&text);
        crate::progress::suspend(|| std::io::stderr().write_all(line.as_bytes()))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Logs on stderr, redacted; `SESSIONDB_LOG` sets the level (`--quiet`: warnings up).
pub fn init_tracing(quiet: bool) {
    let level = match std::env::var("SESSIONDB_LOG").ok().as_deref() {
        Some("error") => tracing::Level::ERROR,
        Some("warn") => tracing::Level::WARN,
        Some("debug") => tracing::Level::DEBUG,
        Some("trace") => tracing::Level::TRACE,
        _ if quiet => tracing::Level::WARN,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(|| RedactingStderr)
        .with_max_level(level)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .try_init();
}

/// Parse a single-step binary's flags (the binary's name is the step's).
pub fn binary<S: Step>() -> ExitCode {
    let cmd = S::augment_args(clap::Command::new(S::NAME).version(env!("CARGO_PKG_VERSION")))
        .about(S::ABOUT);
    let parsed = cmd.try_get_matches().and_then(|m| S::from_arg_matches(&m));
    match parsed {
        Ok(step) => exit_code(run_step(&step)),
        Err(e) => exit_code(usage_error(S::NAME, e)),
    }
}

/// The hint for a flag given its value after a space: `--dry-run false` parses as
/// `--dry-run` and a stray `false`.
fn spaced_value_hint(args: &[String]) -> Option<String> {
    args.windows(2).find_map(|w| {
        let value = w[1].to_ascii_lowercase();
        (w[0] == "--dry-run" && (value == "true" || value == "false"))
            .then(|| format!("did you mean --dry-run={value}? (the value needs an `=`)"))
    })
}

/// A usage error: clap's message on stderr, and still one report on stdout.
pub fn usage_error(step: &str, e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return crate::exit::OK;
    }
    let _ = e.print();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hint = spaced_value_hint(&args);
    if let Some(h) = &hint {
        let _ = writeln!(std::io::stderr(), "hint: {h}");
    }
    let mut report = Report::new(step, &uuid::Uuid::new_v4().to_string());
    let msg = e.render().to_string();
    let mut first = msg
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_owned();
    if let Some(h) = &hint {
        first = format!("{first}: {h}");
    }
    report.errors.push(Finding::new("usage", first));
    report.next_steps = crate::error::next_steps_for("usage")
        .into_iter()
        .map(|s| s.replace("sessiondb <step>", &format!("sessiondb {step}")))
        .collect();
    if let Some(h) = hint {
        report.next_steps.insert(0, h);
    }
    report.finish(Some(crate::exit::USAGE), false, Instant::now());
    let common = Common::default();
    let _ = report::emit(&report, common.report_file.as_deref(), None);
    crate::exit::USAGE
}

pub fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_folds_warnings_of_one_code_and_the_report_keeps_them_all() {
        let mut r = Report::new("migrate-state", "run");
        for i in 0..crate::report::INLINE_LIMIT + 150 {
            r.warn(Finding::new(
                "state_conflict",
                format!("session s{i}: the JSON store differs"),
            ));
        }
        r.warn(Finding::new("backend_drift", "drift"));
        r.finish(None, false, Instant::now());
        let text = summary(&r.redacted());
        let conflict: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("state_conflict"))
            .collect();
        assert_eq!(conflict.len(), 1, "{text}");
        assert!(
            conflict[0].contains("warning state_conflict (250 times): session s0:")
                && conflict[0].ends_with("the other 249 are in the report"),
            "{text}"
        );
        assert!(text.contains("\n  warning backend_drift: drift"), "{text}");
        assert!(!text.contains("warnings_truncated"), "{text}");
        // The report lists them (up to its inline limit) and counts the rest.
        let listed = r
            .warnings
            .iter()
            .filter(|w| w.code == "state_conflict")
            .count();
        assert_eq!(listed, crate::report::INLINE_LIMIT);
        assert!(r.warnings.iter().any(|w| w.code == "warnings_truncated"));
    }
}
