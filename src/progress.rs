//! Progress on stderr for every phase that can take more than a second (the scan and
//! the plan, the backup's copy and self-check, the load, the GIN index and ANALYZE,
//! verify, rollback's export, init's scan). stdout stays the report's.
//!
//! - On a terminal: an `indicatif` bar (done/total, rate, elapsed) or, for a phase
//!   without a count (an index build), a spinner with its elapsed time; when the phase
//!   ends, one line saying what it did and how long it took.
//! - Otherwise (a CI log, a file): plain lines with a UTC time stamp, one when the phase
//!   starts, one every few seconds (`SESSIONDB_PROGRESS_SECS`, default 5) and one when
//!   it ends: `2026-12-01T15:04:05Z load 12000/50000 sessions 4100/s 3.0s`. A periodic
//!   line comes from the count moving ([`Phase::inc`] once the interval has passed) or,
//!   when it stalls (a spinner, a slow batch), from a ticker thread. `0` writes one on
//!   every update (the tests use it, so that a phase without progress is caught).
//! - Nothing under `--quiet` ([`set_quiet`], set by the driver for each step).
//!
//! Log lines written while a bar is drawn go through [`suspend`], so that they do not
//! tear the bar.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// The total of a [`Phase::counter`]: not known.
const OPEN: u64 = u64::MAX;

/// Where every terminal bar is drawn: one line each, so that phases that run at once
/// (a backup's dumps beside its files) each keep their line; a log line is written with
/// them cleared.
fn bars() -> &'static MultiProgress {
    static BARS: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5)))
}

/// No progress at all (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Run `f` (a write to stderr) with the bars on the terminal cleared, then redraw them.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    bars().suspend(f)
}

/// What a phase counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Sessions,
    Files,
    /// The sessions folder's entries (its `<id>/` folders), a backup's walk over them.
    Folders,
    Rows,
    Bytes,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Sessions => "sessions",
            Unit::Files => "files",
            Unit::Folders => "folders",
            Unit::Rows => "rows",
            Unit::Bytes => "bytes",
        }
    }
}

/// A size for people: `815.8 MB` (decimal units, as `df -H`); exact bytes stay in the
/// report.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut i = 0;
    while v >= 999.95 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

/// One phase's progress. Shared by reference between the threads that do the work;
/// [`Phase::finish`] says it ended, a phase dropped unfinished says it stopped.
pub struct Phase {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    name: &'static str,
    /// `None`: a spinner, with no count.
    unit: Option<Unit>,
    total: AtomicU64,
    done: AtomicU64,
    start: Instant,
    /// The interval between periodic plain lines.
    every: Duration,
    /// When the last plain line was written, in milliseconds since `start`.
    last_ms: AtomicU64,
    bar: Option<ProgressBar>,
    ticker: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

impl Phase {
    /// A phase that counts `unit` up to `total`.
    pub fn bar(name: &'static str, total: u64, unit: Unit) -> Phase {
        Phase::start(name, Some(unit), total)
    }

    /// A phase without a count (an index build, ANALYZE): its elapsed time.
    pub fn spinner(name: &'static str) -> Phase {
        Phase::start(name, None, 0)
    }

    /// A phase that counts `unit` without knowing the total beforehand (a walk of a
    /// folder).
    pub fn counter(name: &'static str, unit: Unit) -> Phase {
        Phase::start(name, Some(unit), OPEN)
    }

    /// A phase that shows nothing.
    pub fn hidden() -> Phase {
        Phase { inner: None }
    }

    fn start(name: &'static str, unit: Option<Unit>, total: u64) -> Phase {
        if QUIET.load(Ordering::Relaxed) {
            return Phase::hidden();
        }
        let tty = std::io::stderr().is_terminal();
        Phase::start_with(name, unit, total, tty, interval())
    }

    fn start_with(
        name: &'static str,
        unit: Option<Unit>,
        total: u64,
        tty: bool,
        every: Duration,
    ) -> Phase {
        let bar = tty.then(|| terminal_bar(name, unit, total));
        let inner = Arc::new(Inner {
            name,
            unit,
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            start: Instant::now(),
            every,
            last_ms: AtomicU64::new(0),
            bar,
            ticker: Mutex::new(None),
        });
        if inner.bar.is_none() {
            plain(&inner.line(Some("start")));
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            // Wakes at least every 10 ms when every update is asked for (interval 0).
            let wake = every.max(Duration::from_millis(10));
            let weak = Arc::downgrade(&inner);
            let handle = std::thread::Builder::new()
                .name(format!("progress {name}"))
                .spawn(move || {
                    // Ends when the phase drops its sender (it finished).
                    while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(wake) {
                        match weak.upgrade() {
                            Some(i) => i.periodic(),
                            None => return,
                        }
                    }
                })
                .ok();
            if let Some(h) = handle {
                *inner.ticker.lock().unwrap_or_else(|e| e.into_inner()) = Some((tx, h));
            }
        }
        Phase { inner: Some(inner) }
    }

    /// `n` more done.
    pub fn inc(&self, n: u64) {
        if let Some(i) = &self.inner {
            i.done.fetch_add(n, Ordering::Relaxed);
            match &i.bar {
                Some(b) => b.inc(n),
                None => i.periodic(),
            }
        }
    }

    /// The total, once known better than at the start.
    pub fn set_total(&self, total: u64) {
        if let Some(i) = &self.inner {
            i.total.store(total, Ordering::Relaxed);
            if let Some(b) = &i.bar {
                b.set_length(total);
            }
        }
    }

    /// How many were counted so far.
    pub fn done(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.done.load(Ordering::Relaxed))
    }

    /// The phase ended: one line with what it did and its duration.
    pub fn finish(mut self) {
        if let Some(i) = self.inner.take() {
            i.end("done");
        }
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        if let Some(i) = self.inner.take() {
            i.end("stopped");
        }
    }
}

impl Inner {
    /// A periodic plain line, if the interval has passed since the last one (the
    /// updating threads and the ticker race for it: one of them writes it).
    fn periodic(&self) {
        if self.every.is_zero() {
            return plain(&self.line(None));
        }
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now < last.saturating_add(self.every.as_millis() as u64) {
            return;
        }
        if self
            .last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            plain(&self.line(None));
        }
    }

    fn end(&self, how: &str) {
        let ticker = self.ticker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((tx, h)) = ticker {
            drop(tx);
            let _ = h.join();
        }
        let line = self.line(Some(how));
        match &self.bar {
            Some(b) => {
                b.finish_and_clear();
                bars().remove(b);
                let done = &line[line.find(' ').map_or(0, |p| p + 1)..];
                let _ = suspend(|| writeln!(std::io::stderr(), "{done}"));
            }
            None => plain(&line),
        }
    }

    /// `<UTC time> <phase> [start|done|stopped] <done>/<total> <unit> <rate>/s <elapsed>s`.
    fn line(&self, what: Option<&str>) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let mut out = format!(
            "{} {}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
            self.name
        );
        if let Some(w) = what {
            out.push(' ');
            out.push_str(w);
        }
        if let Some(unit) = self.unit {
            let done = self.done.load(Ordering::Relaxed);
            let total = self.total.load(Ordering::Relaxed);
            let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
            let count = match (unit, total) {
                (Unit::Bytes, OPEN) => human_bytes(done),
                (Unit::Bytes, _) => format!("{}/{}", human_bytes(done), human_bytes(total)),
                (u, OPEN) => format!("{done} {}", u.name()),
                (u, _) => format!("{done}/{total} {}", u.name()),
            };
            out.push(' ');
            out.push_str(&count);
            if what != Some("start") {
                match unit {
                    Unit::Bytes => out.push_str(&format!(" {}/s", human_bytes(rate as u64))),
                    _ => out.push_str(&format!(" {rate:.0}/s")),
                }
            }
        }
        if what != Some("start") {
            out.push_str(&format!(" {secs:.1}s"));
        }
        out
    }
}

fn plain(line: &str) {
    #[cfg(test)]
    if let Some(lines) = tests::CAPTURED.lock().unwrap().as_mut() {
        lines.push(line.to_owned());
        return;
    }
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `SESSIONDB_PROGRESS_SECS`: seconds between periodic plain lines (5; `0`: a line on
/// every update).
fn interval() -> Duration {
    let secs = std::env::var("SESSIONDB_PROGRESS_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 86_400.0)
        .unwrap_or(5.0);
    Duration::from_secs_f64(secs)
}

fn terminal_bar(name: &'static str, unit: Option<Unit>, total: u64) -> ProgressBar {
    let target = ProgressDrawTarget::hidden();
    let bar = match unit {
        Some(u) if total == OPEN => {
            let b = ProgressBar::with_draw_target(None, target);
            let count = if u == Unit::Bytes {
                "{decimal_bytes} {decimal_bytes_per_sec}".to_owned()
            } else {
                format!("{{pos}} {} {{rate}}", u.name())
            };
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{{spinner}} {{prefix}} {count} {{elapsed}}"
                ))
                .expect("a valid template")
                .with_key("rate", rate),
            );
            b
        }
        None => {
            let b = ProgressBar::with_draw_target(None, target);
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {elapsed}")
                    .expect("a valid template"),
            );
            b
        }
        Some(Unit::Bytes) => {
            let b = ProgressBar::with_draw_target(Some(total), target);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} {elapsed} (ETA {eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b
        }
        Some(u) => {
            let b = ProgressBar::with_draw_target(Some(total), target);
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {} {{rate}} {{elapsed}} (ETA {{eta}})",
                    u.name()
                ))
                .expect("a valid template")
                .with_key("rate", rate)
                .progress_chars("=> "),
            );
            b
        }
    };
    bar.set_prefix(name);
    let bar = bars().add(bar);
    // A spinner turns on its own: nothing counts it forward.
    if total == OPEN || unit.is_none() {
        bar.enable_steady_tick(Duration::from_millis(120));
    }
    bar
}

/// `{rate}`: whole items a second (indicatif's `{per_sec}` shows four decimals).
fn rate(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{:.0}/s", state.per_sec());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain lines written while `Some` (all tests' phases: filter by name).
    pub(super) static CAPTURED: Mutex<Option<Vec<String>>> = Mutex::new(None);

    fn captured(phase: &str) -> Vec<String> {
        let mut g = CAPTURED.lock().unwrap();
        let lines = g.get_or_insert_with(Vec::new);
        lines
            .iter()
            .filter(|l| l.split(' ').nth(1) == Some(phase))
            .cloned()
            .collect()
    }

    /// The periodic lines (neither `start` nor `done`) of `phase`.
    fn periodic(phase: &str) -> Vec<String> {
        captured(phase)
            .into_iter()
            .filter(|l| !matches!(l.split(' ').nth(2), Some("start" | "done" | "stopped")))
            .collect()
    }

    #[test]
    fn a_stalled_phase_still_writes_periodic_lines() {
        captured("-"); // start capturing
        let spin = Phase::start_with("test-spin", None, 0, false, Duration::from_millis(1));
        let counter = Phase::start_with(
            "test-stall",
            Some(Unit::Rows),
            10,
            false,
            Duration::from_millis(1),
        );
        counter.inc(3);
        // The ticker writes them: wait for two of each (a generous bound, not a timing).
        let deadline = Instant::now() + Duration::from_secs(30);
        while (periodic("test-spin").len() < 2 || periodic("test-stall").len() < 2)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        spin.finish();
        counter.finish();
        let s = periodic("test-spin");
        assert!(s.len() >= 2, "{s:?}");
        for l in &s {
            let w: Vec<&str> = l.split(' ').collect();
            assert_eq!(w.len(), 3, "{l}");
            assert!(
                w[2].strip_suffix('s').unwrap().parse::<f64>().is_ok(),
                "{l}"
            );
        }
        let c = periodic("test-stall");
        assert!(c.len() >= 2, "{c:?}");
        assert!(c.iter().all(|l| l.contains(" 3/10 rows ")), "{c:?}");
    }

    #[test]
    fn with_interval_zero_every_update_writes_a_line_and_otherwise_not() {
        captured("-");
        let p = Phase::start_with("test-every", Some(Unit::Files), 4, false, Duration::ZERO);
        for _ in 0..4 {
            p.inc(1);
        }
        p.finish();
        let counts: Vec<String> = periodic("test-every")
            .iter()
            .map(|l| l.split(' ').nth(2).unwrap().to_owned())
            .collect();
        for want in ["1/4", "2/4", "3/4", "4/4"] {
            assert!(counts.iter().any(|c| c == want), "{counts:?}");
        }
        let p = Phase::start_with(
            "test-rare",
            Some(Unit::Files),
            4,
            false,
            Duration::from_secs(3600),
        );
        for _ in 0..4 {
            p.inc(1);
        }
        p.finish();
        assert!(periodic("test-rare").is_empty());
        assert_eq!(captured("test-rare").len(), 2);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_000), "1.0 kB");
        assert_eq!(human_bytes(815_788_966), "815.8 MB");
        assert_eq!(human_bytes(69_832_560_640), "69.8 GB");
        assert_eq!(human_bytes(999_960), "1.0 MB");
    }

    #[test]
    fn a_plain_line_names_the_phase_its_count_rate_and_time() {
        let i = Inner {
            name: "load",
            unit: Some(Unit::Sessions),
            total: AtomicU64::new(50_000),
            done: AtomicU64::new(12_000),
            start: Instant::now(),
            every: Duration::from_secs(5),
            last_ms: AtomicU64::new(0),
            bar: None,
            ticker: Mutex::new(None),
        };
        let l = i.line(None);
        let words: Vec<&str> = l.split(' ').collect();
        assert_eq!(words[1..4], ["load", "12000/50000", "sessions"], "{l}");
        assert!(words[0].ends_with('Z') && words[0].contains('T'), "{l}");
        assert!(words[4].ends_with("/s") && words[5].ends_with('s'), "{l}");
        let s = i.line(Some("start"));
        assert!(s.ends_with("load start 12000/50000 sessions"), "{s}");
    }
}
