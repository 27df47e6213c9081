//! Test support: a throwaway PostgreSQL, a database per test, and a fluent runner for
//! the real binaries that decodes stdout into the real report type.

pub mod pg;
pub mod store;

use std::path::{Path, PathBuf};
use std::process::Command;

use sessiondb::report::{Finding, Report};

/// The result of running one of the binaries.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub report: Report,
}

impl Run {
    pub fn count(&self, k: &str) -> u64 {
        *self
            .report
            .counts
            .get(k)
            .unwrap_or_else(|| panic!("no count {k} in {:?}", self.report.counts))
    }
    pub fn check(&self, id: &str) -> &sessiondb::report::Check {
        self.report
            .checks
            .iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("no check {id}: {}", self.stdout))
    }
    pub fn has_warning(&self, code: &str) -> bool {
        self.report.warnings.iter().any(|w| w.code == code)
    }
    pub fn has_error(&self, code: &str) -> bool {
        self.report.errors.iter().any(|w| w.code == code)
    }
    /// The first error of `code` (the test fails, showing the report, without one).
    pub fn error(&self, code: &str) -> &Finding {
        self.first(&self.report.errors, code, "error")
    }
    /// The first warning of `code` (the test fails, showing the report, without one).
    pub fn warning(&self, code: &str) -> &Finding {
        self.first(&self.report.warnings, code, "warning")
    }
    fn first<'a>(&self, findings: &'a [Finding], code: &str, kind: &str) -> &'a Finding {
        findings
            .iter()
            .find(|f| f.code == code)
            .unwrap_or_else(|| panic!("no {code} {kind}: {}", self.stdout))
    }
}

/// A command under test: one of the binaries, with a clean environment.
pub struct Cmd {
    cmd: Command,
    desc: String,
}

/// Variables a test must never inherit from the machine.
pub const SCRUB: &[&str] = &[
    "DATABASE_URL",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSERVICE",
    "SESSIONDB_CONFIG",
    "SESSIONDB_REPORT_DIR",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
    "SESSIONDB_LOG",
    "SESSIONDB_PROGRESS_SECS",
];

pub fn bin_path(name: &str) -> PathBuf {
    match name {
        "sessiondb" => PathBuf::from(env!("CARGO_BIN_EXE_sessiondb")),
        "preflight" => PathBuf::from(env!("CARGO_BIN_EXE_preflight")),
        "backup" => PathBuf::from(env!("CARGO_BIN_EXE_backup")),
        "migrate-state" => PathBuf::from(env!("CARGO_BIN_EXE_migrate-state")),
        "verify" => PathBuf::from(env!("CARGO_BIN_EXE_verify")),
        "set-default" => PathBuf::from(env!("CARGO_BIN_EXE_set-default")),
        "rollback" => PathBuf::from(env!("CARGO_BIN_EXE_rollback")),
        other => panic!("no binary {other}"),
    }
}

/// `sessiondb <args>` (or another binary with [`Cmd::bin`]).
pub fn sessiondb(args: &[&str]) -> Cmd {
    Cmd::bin("sessiondb", args)
}

impl Cmd {
    pub fn bin(name: &str, args: &[&str]) -> Cmd {
        let mut cmd = Command::new(bin_path(name));
        cmd.args(args);
        for k in SCRUB {
            cmd.env_remove(k);
        }
        Cmd {
            cmd,
            desc: format!("{name} {}", args.join(" ")),
        }
    }
    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Cmd {
        self.cmd.env(k, v);
        self
    }
    pub fn cwd(mut self, d: &Path) -> Cmd {
        self.cmd.current_dir(d);
        self
    }
    pub fn config(mut self, p: &Path) -> Cmd {
        self.cmd.arg("--config").arg(p);
        self
    }
    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Cmd {
        self.cmd.arg(a);
        self
    }
    /// Run as another user (the tests run as root, which reads any file): set the real
    /// and effective ids; std drops the supplementary groups when root does this.
    pub fn user(mut self, uid: u32, gid: u32) -> Cmd {
        use std::os::unix::process::CommandExt;
        self.cmd.uid(uid).gid(gid);
        self
    }
    /// Run; stdout must be exactly one report.
    pub fn run(mut self) -> Run {
        let out = self
            .cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.desc));
        let code = out.status.code().unwrap_or(-1);
        decode(&self.desc, code, &out.stdout, &out.stderr)
    }

    /// Run like [`Cmd::run`], but kill the process if it has not ended within `limit`: a
    /// command that hangs (on a FIFO, say) fails the test, naming itself, instead of
    /// blocking the suite. The limit is a fail-safe, not a timing assertion: pick one far
    /// above the command's normal time.
    pub fn run_within(mut self, limit: std::time::Duration) -> Run {
        use std::io::Read;
        use std::process::Stdio;
        let mut child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.desc));
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
                panic!(
                    "{}: still running after {limit:?}, killed: it hangs\n--- stderr\n{stderr}",
                    self.desc
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let code = status.code().unwrap_or(-1);
        decode(&self.desc, code, &out.join().unwrap(), &err.join().unwrap())
    }

    /// Run like [`Cmd::run`], and also return the process's own peak RSS in MB: its
    /// `ru_maxrss` as `wait4` reports it, so what other tests ran in this process (their
    /// children count in `getrusage(RUSAGE_CHILDREN)`) does not count.
    pub fn run_peak_rss(mut self) -> (Run, f64) {
        use std::io::Read;
        use std::process::Stdio;
        #[expect(
            clippy::zombie_processes,
            reason = "wait4 reaps it, below, to read its rusage"
        )]
        let mut child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.desc));
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                r.read_to_end(&mut v).unwrap();
                v
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let pid = child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: wait4 fills the status and the rusage we pass; the child is ours and
        // not waited for elsewhere (dropping a `Child` does not wait).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(waited, pid, "wait4 {}", std::io::Error::last_os_error());
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        };
        let run = decode(&self.desc, code, &out.join().unwrap(), &err.join().unwrap());
        (run, usage.ru_maxrss as f64 / 1024.0)
    }
    /// Run and assert the exit code.
    pub fn expect(self, code: i32) -> Run {
        let desc = self.desc.clone();
        let r = self.run();
        assert_eq!(
            r.code, code,
            "{desc}: expected exit {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            r.code, r.stdout, r.stderr
        );
        r
    }
}

/// Decode a run's stdout into its one report.
fn decode(desc: &str, code: i32, stdout: &[u8], stderr: &[u8]) -> Run {
    let stdout = String::from_utf8_lossy(stdout).into_owned();
    let stderr = String::from_utf8_lossy(stderr).into_owned();
    let report: Report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{desc}: stdout is not one report ({e}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )
    });
    assert_eq!(
        report.exit_code, code,
        "{desc}: report exit_code differs from the process's\n{stderr}"
    );
    Run {
        code,
        stdout,
        stderr,
        report,
    }
}

/// A temp folder kept when the test fails (its path is printed).
pub struct TempDir(Option<tempfile::TempDir>);

impl TempDir {
    pub fn new() -> TempDir {
        TempDir(Some(
            tempfile::Builder::new()
                .prefix("sessiondb-test-")
                .tempdir()
                .expect("tempdir"),
        ))
    }
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("live").path()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.0.take() {
                eprintln!("kept test folder {}", d.keep().display());
            }
        }
    }
}

/// Write a file, creating its folders.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Whether the tests run as root: needed to run a command as another user ([`Cmd::user`])
/// or to mount a filesystem.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the user `nobody`.
pub fn nobody() -> (u32, u32) {
    let name = std::ffi::CString::new("nobody").unwrap();
    // SAFETY: a valid NUL-terminated name; the result is read at once, before any
    // other getpw* call on this thread.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no user nobody");
    // SAFETY: non-null, as just checked.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// Give every entry under `root` (itself included, links not followed) to `uid:gid`.
pub fn chown_tree(root: &Path, uid: u32, gid: u32) {
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid)).unwrap();
    }
}

/// A tiny tmpfs mounted for one test, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    /// Grow (or shrink) it, keeping what it holds.
    pub fn remount(&self, size: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
