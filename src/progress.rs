//! Progress on stderr for the long steps (the planning pass and the load of
//! `migrate-state`): a line redrawn in place on a terminal, a plain line every few
//! seconds otherwise, nothing with `--quiet`. stdout stays the report's.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

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
