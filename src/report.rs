//! The report: a versioned public format (SPEC §5), apart from the domain types.
//! Nothing but [`emit`] writes stdout.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::redact;

pub const SCHEMA: &str = "sessiondb.report/v1";

/// A step's `details` (SPEC §5): a struct whose every field is optional and left out of
/// the report until the step sets it. Fields are written with their value's type;
/// the macro makes each `Option<T>`, skipped while `None`.
#[macro_export]
macro_rules! details {
    ($(#[$m:meta])* $vis:vis struct $name:ident {
        $($(#[$fm:meta])* $fvis:vis $f:ident : $t:ty),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(Debug, Default, serde::Serialize)]
        $vis struct $name {
            $(
                $(#[$fm])*
                #[serde(skip_serializing_if = "Option::is_none")]
                $fvis $f: Option<$t>,
            )*
        }
    };
}
/// How many named items a report lists inline; the rest go to a file.
pub const INLINE_LIMIT: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub id: String,
    pub status: CheckStatus,
    pub summary: String,
    #[serde(default)]
    pub details: serde_json::Value,
}

/// A warning or an error: a stable code, a message, and what it is about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The path's bytes in hex, when they are not UTF-8 (`path` is then lossy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
}

impl Finding {
    pub fn new(code: &str, message: impl Into<String>) -> Finding {
        Finding {
            code: code.to_owned(),
            message: message.into(),
            session: None,
            path: None,
            path_hex: None,
        }
    }
    pub fn session(mut self, id: &str) -> Finding {
        self.session = Some(id.to_owned());
        self
    }
    pub fn path(mut self, p: &Path) -> Finding {
        use std::os::unix::ffi::OsStrExt;
        self.path = Some(p.display().to_string());
        self.path_hex = p
            .to_str()
            .is_none()
            .then(|| hex::encode(p.as_os_str().as_bytes()));
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    pub kind: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub step: String,
    pub tool_version: String,
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub dry_run: Option<bool>,
    pub status: Status,
    pub exit_code: i32,
    pub source: serde_json::Value,
    pub target: Option<String>,
    pub checks: Vec<Check>,
    pub counts: BTreeMap<String, u64>,
    pub warnings: Vec<Finding>,
    pub errors: Vec<Finding>,
    pub next_steps: Vec<String>,
    pub artifacts: Vec<Artifact>,
    /// Step-specific detail (named sessions, the plan, nested step reports).
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Warnings not listed, by code (see [`Report::warn`]).
    #[serde(skip)]
    truncated: BTreeMap<String, u64>,
}

impl Report {
    pub fn new(step: &str, run_id: &str) -> Report {
        let now = now_rfc3339();
        Report {
            schema: SCHEMA.to_owned(),
            step: step.to_owned(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            run_id: run_id.to_owned(),
            started_at: now.clone(),
            finished_at: now,
            duration_ms: 0,
            dry_run: None,
            status: Status::Ok,
            exit_code: 0,
            source: serde_json::Value::Null,
            target: None,
            checks: Vec::new(),
            counts: BTreeMap::new(),
            warnings: Vec::new(),
            errors: Vec::new(),
            next_steps: Vec::new(),
            artifacts: Vec::new(),
            details: serde_json::Map::new(),
            truncated: BTreeMap::new(),
        }
    }

    pub fn check(
        &mut self,
        id: &str,
        status: CheckStatus,
        summary: impl Into<String>,
        details: serde_json::Value,
    ) {
        self.checks.push(Check {
            id: id.to_owned(),
            status,
            summary: summary.into(),
            details,
        });
    }

    /// Add a warning (once). At most [`INLINE_LIMIT`] of one code are listed; the rest
    /// are counted, and [`Report::finish`] adds one `warnings_truncated` finding per
    /// code, so that a store with thousands of the same oddity gives a readable report.
    pub fn warn(&mut self, f: Finding) {
        if self.warnings.contains(&f) {
            return;
        }
        if self.warnings.iter().filter(|w| w.code == f.code).count() >= INLINE_LIMIT {
            *self.truncated.entry(f.code).or_default() += 1;
        } else {
            self.warnings.push(f);
        }
    }

    /// How many warnings of `code` are counted but not listed (see [`Report::warn`]).
    pub fn unlisted(&self, code: &str) -> u64 {
        self.truncated.get(code).copied().unwrap_or(0)
    }

    /// Whether any warnings are counted but not listed.
    pub fn has_unlisted(&self) -> bool {
        !self.truncated.is_empty()
    }

    pub fn count(&mut self, key: &str, n: u64) {
        self.counts.insert(key.to_owned(), n);
    }

    /// An artifact, named by its absolute path (whatever form the step holds it in).
    pub fn artifact(&mut self, kind: &str, path: &Path) {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        self.artifacts.push(Artifact {
            kind: kind.to_owned(),
            path: abs.display().to_string(),
        });
    }

    /// Fold a step's typed details into the envelope's `details` (an object; a value
    /// that serializes to `null` leaves it empty). A value that does not serialize is
    /// a bug: its error takes the place of the details rather than lose the report.
    pub fn set_details(&mut self, details: &impl Serialize) {
        self.details = match serde_json::to_value(details) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(serde_json::Value::Null) => serde_json::Map::new(),
            Ok(other) => serde_json::Map::from_iter([("value".to_owned(), other)]),
            Err(e) => serde_json::Map::from_iter([(
                "details_error".to_owned(),
                serde_json::Value::String(e.to_string()),
            )]),
        };
    }

    pub fn has_failed_check(&self) -> bool {
        self.checks.iter().any(|c| c.status == CheckStatus::Fail)
    }

    /// Set `status` and `exit_code` from what the step found: an error's exit code,
    /// else 1 for failed checks or problems, else 0; `warn` when warnings were raised.
    pub fn finish(&mut self, error_exit: Option<i32>, problems: bool, started: std::time::Instant) {
        self.finished_at = now_rfc3339();
        self.duration_ms = started.elapsed().as_millis() as u64;
        // Kept (not serialized) after: the summary on stderr folds them into their code.
        for (code, n) in &self.truncated {
            let f = Finding::new(
                "warnings_truncated",
                format!("{n} more `{code}` warning(s) not listed (the first {INLINE_LIMIT} are)"),
            );
            if !self.warnings.contains(&f) {
                self.warnings.push(f);
            }
        }
        let (status, code) = match error_exit {
            Some(1) => (Status::Fail, 1),
            Some(code) => (Status::Error, code),
            None if problems || self.has_failed_check() => (Status::Fail, crate::exit::PROBLEMS),
            None if !self.warnings.is_empty()
                || self.checks.iter().any(|c| c.status == CheckStatus::Warn) =>
            {
                (Status::Warn, crate::exit::OK)
            }
            None => (Status::Ok, crate::exit::OK),
        };
        self.status = status;
        self.exit_code = code;
    }

    /// The report with every secret the configuration and the environment hold masked
    /// in its values ([`redact::value`]): the last resort behind the redaction done where
    /// each connection string is built into a field. Ids and file names are kept as
    /// they are.
    pub fn redacted(&self) -> Report {
        let mut v = serde_json::to_value(self).expect("a report always serializes");
        if !redact::value(&mut v) {
            return self.clone();
        }
        // Back through the struct, so that the fields keep their order.
        let mut r: Report = serde_json::from_value(v).expect("a redacted report is a report");
        r.truncated = self.truncated.clone();
        r
    }

    /// The report as redacted, pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.redacted()).expect("a report always serializes")
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Write the report: stdout (always, exactly one document), `--report-file`, and
/// `<report-dir>/<step>.json`. Returns the files written; a failure to write one of them
/// is returned as an error after stdout was written.
pub fn emit(
    report: &Report,
    report_file: Option<&Path>,
    report_dir: Option<&Path>,
) -> Result<Vec<PathBuf>, String> {
    let json = report.to_json();
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{json}");
    let _ = stdout.flush();
    let mut written = Vec::new();
    let mut targets: Vec<PathBuf> = Vec::new();
    if let Some(f) = report_file {
        targets.push(f.to_path_buf());
    }
    if let Some(d) = report_dir {
        targets.push(d.join(format!("{}.json", report.step)));
    }
    for t in targets {
        if let Some(parent) = t.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::fsutil::create_private_dir_all(parent)
                .map_err(|e| format!("cannot create report folder {}: {e}", parent.display()))?;
        }
        crate::fsutil::write_atomic(&t, format!("{json}\n").as_bytes(), 0o600)
            .map_err(|e| format!("cannot write report {}: {e}", t.display()))?;
        written.push(t);
    }
    Ok(written)
}

/// A path as report text (lossy where it is not UTF-8: `serde` refuses such a path,
/// and a report is written whatever its paths hold). For `#[serde(serialize_with)]`.
pub fn lossy_path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// [`lossy_path`] of an optional path.
pub fn lossy_opt_path<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => lossy_path(p, s),
        None => s.serialize_none(),
    }
}

/// Write a full list of named items (e.g. every invalid record) as JSON Lines next to
/// the report, when a report folder was given and the list is not empty. Returns the
/// path written.
pub fn write_list<T: Serialize>(
    report_dir: Option<&Path>,
    name: &str,
    items: &[T],
) -> Option<Result<PathBuf, String>> {
    let dir = report_dir?;
    let path = dir.join(name);
    if items.is_empty() {
        // No empty side file; and none left from an earlier run to be taken for this one.
        let _ = std::fs::remove_file(&path);
        return None;
    }
    let mut buf = Vec::new();
    for it in items {
        let mut v = serde_json::to_value(it).unwrap_or_default();
        let line = if redact::value(&mut v) {
            serde_json::to_string(&v)
        } else {
            serde_json::to_string(it)
        };
        buf.extend_from_slice(line.unwrap_or_default().as_bytes());
        buf.push(b'\n');
    }
    Some(
        crate::fsutil::create_private_dir_all(dir)
            .and_then(|_| crate::fsutil::write_atomic(&path, &buf, 0o600))
            .map(|_| path.clone())
            .map_err(|e| format!("cannot write {}: {e}", path.display())),
    )
}

/// Copy a JSON Lines file (the quarantine's index of a run) beside the report as `name`,
/// each line redacted as [`write_list`] does, streamed. Returns the path written.
pub fn copy_list(report_dir: &Path, name: &str, from: &Path) -> Result<PathBuf, String> {
    use std::io::BufRead;
    let path = report_dir.join(name);
    let src =
        std::fs::File::open(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    crate::fsutil::create_private_dir_all(report_dir)
        .and_then(|_| {
            crate::fsutil::write_atomic_with(&path, 0o600, |w| {
                for line in std::io::BufReader::new(src).lines() {
                    let line = line?;
                    w.write_all(redact::text(&line).as_bytes())?;
                    w.write_all(b"\n")?;
                }
                Ok(())
            })
        })
        .map(|_| path.clone())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_of_one_code_are_listed_up_to_the_limit_then_counted() {
        let mut r = Report::new("verify", "run");
        for i in 0..INLINE_LIMIT + 150 {
            r.warn(Finding::new("state_conflict", format!("session s{i}")));
        }
        // A repeat of a listed warning is neither listed twice nor counted.
        r.warn(Finding::new("state_conflict", "session s0"));
        r.warn(Finding::new("backend_drift", "drift"));
        r.finish(None, false, std::time::Instant::now());
        let listed = r
            .warnings
            .iter()
            .filter(|w| w.code == "state_conflict")
            .count();
        assert_eq!(listed, INLINE_LIMIT);
        let t: Vec<_> = r
            .warnings
            .iter()
            .filter(|w| w.code == "warnings_truncated")
            .collect();
        assert_eq!(t.len(), 1);
        assert!(
            t[0].message.starts_with("150 more `state_conflict`"),
            "{}",
            t[0].message
        );
        assert!(r.warnings.iter().any(|w| w.code == "backend_drift"));
        assert_eq!(r.status, Status::Warn);
    }
}
