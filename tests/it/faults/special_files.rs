//! Special files (issue 14.3): a FIFO, a device, a socket or a file of `/proc` at each
//! configured path, and as a state file, is refused with `not_regular_file` naming it, by
//! every command. Each run is killed after [`LIMIT`], which fails the test: before the fix
//! a FIFO config or database hung forever, and `json.path = "/dev/zero"` read without end.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sessiondb::exit;

use crate::faults::row;
use crate::support::pg::TestDb;
use crate::support::store::Store;
use crate::support::{Run, TempDir, sessiondb};

/// Far above any of these commands' normal time: a fail-safe against a hang, not a
/// timing assertion.
const LIMIT: Duration = Duration::from_secs(90);

/// The special files every configured path is tried with: a FIFO and a unix socket made
/// here (the listener lives as long as this), `/dev/zero`, and a file of `/proc`.
struct Specials {
    _dir: TempDir,
    _listener: UnixListener,
    files: Vec<(&'static str, PathBuf)>,
}

pub(crate) fn mkfifo(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", p.display());
}

/// A character device like /dev/zero (1, 5) at `p`; false when this process may not make
/// devices (not root, or no CAP_MKNOD).
fn mknod_zero(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path; makedev has no preconditions.
    unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 5)) == 0 }
}

fn specials() -> Specials {
    let dir = TempDir::new();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let sock = dir.path().join("sock");
    let listener = UnixListener::bind(&sock).unwrap();
    Specials {
        files: vec![
            ("a FIFO", fifo),
            ("/dev/zero", PathBuf::from("/dev/zero")),
            ("a unix socket", sock),
            ("/proc/self/status", PathBuf::from("/proc/self/status")),
        ],
        _dir: dir,
        _listener: listener,
    }
}

/// Which configured path gets the special file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum At {
    Config,
    Sqlite,
    Json,
    SessionsDir,
}

/// A store with one session in SQLite and one in the JSON store, migrated into `db` (so
/// that every command gets past its target-side checks to the source).
fn migrated(label: &str) -> (Store, TestDb) {
    let s = Store::new();
    s.session("s1", r#"{"a": 1}"#);
    s.json_store(r#"{"version": 1, "sessions": [{"id": "j1", "user_id": "u", "status": "done", "current_step": "end", "cost": 1.5, "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z", "state": {"b": 2}}]}"#);
    let db = TestDb::new(label);
    sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    (s, db)
}

/// The store's config with `at` pointing at `special`; for [`At::Config`] the config
/// itself is the special file. Returns the config to run with.
fn configure(s: &Store, at: At, special: &Path) -> PathBuf {
    if at == At::Config {
        return special.to_path_buf();
    }
    let pick = |a: At, own: &Path| -> String {
        if a == at {
            special.display().to_string()
        } else {
            own.display().to_string()
        }
    };
    std::fs::write(
        &s.config,
        format!(
            "[sessiondb]\nbackend = \"sqlite\"\n[sqlite]\npath = \"{}\"\nsessions_dir = \"{}\"\n[json]\npath = \"{}\"\n[backup]\ndir = \"backups\"\n",
            pick(At::Sqlite, &s.db),
            pick(At::SessionsDir, &s.sessions),
            pick(At::Json, &s.json),
        ),
    )
    .unwrap();
    s.config.clone()
}

/// Every command, as an operator would run it; `check` checks the backend that holds the
/// path (the JSON store is no part of the sqlite backend).
fn commands(at: At) -> Vec<Vec<&'static str>> {
    let check = match at {
        At::Json => vec!["check", "--backend", "json"],
        _ => vec!["check", "--backend", "sqlite"],
    };
    vec![
        check,
        vec!["preflight"],
        vec!["backup", "--dry-run"],
        vec!["backup"],
        vec!["migrate-state"],
        vec!["migrate-state", "--dry-run=false"],
        vec!["verify"],
        vec!["set-default"],
        vec!["set-default", "--dry-run=false", "--force"],
        vec!["rollback"],
        vec!["rollback", "--dry-run=false"],
    ]
}

/// The run refused `path` with `not_regular_file`: an error naming it, and a failing exit.
fn assert_refused(r: &Run, path: &Path, what: &str) {
    let p = path.display().to_string();
    let named = r.report.errors.iter().any(|e| {
        e.code == "not_regular_file"
            && (e.path.as_deref() == Some(p.as_str()) || e.message.contains(&p))
    });
    assert!(
        named,
        "{what}: no not_regular_file error naming {p}\n{}",
        r.stdout
    );
    assert_ne!(r.code, exit::OK, "{what}: refused, yet exit 0");
}

/// Every command against the special files at `at`.
fn refused_everywhere(at: At, label: &str) {
    let (s, db) = migrated(label);
    let sp = specials();
    let config_before = std::fs::read(&s.config).unwrap();
    let mut runs = 0;
    for (kind, special) in &sp.files {
        let config = configure(&s, at, special);
        for args in commands(at) {
            let what = format!("{kind} as {at:?}: {}", args.join(" "));
            let r = sessiondb(&args)
                .config(&config)
                .env("DATABASE_URL", &db.url)
                .run_within(LIMIT);
            assert_refused(&r, special, &what);
            if at == At::Config {
                // A configuration error, named as such.
                assert_eq!(r.code, exit::USAGE, "{what}\n{}", r.stdout);
            }
            runs += 1;
        }
    }
    // Nothing was switched or rewritten on the way.
    if at != At::Config {
        std::fs::write(&s.config, &config_before).unwrap();
    }
    let r = sessiondb(&["verify"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(r.count("sessions"), 2, "{}", r.stdout);
    row(
        &format!("FIFO, /dev/zero, socket, /proc file as {at:?}"),
        "every command (11 forms)",
        &format!("{runs} runs: not_regular_file naming the path, none hung"),
        "store and target unchanged (verify ok)",
    );
}

#[test]
fn special_file_as_the_config_is_refused_by_every_command() {
    refused_everywhere(At::Config, "special_config");
}

#[test]
fn special_file_as_sqlite_path_is_refused_by_every_command() {
    refused_everywhere(At::Sqlite, "special_sqlite");
}

#[test]
fn special_file_as_json_path_is_refused_by_every_command() {
    refused_everywhere(At::Json, "special_json");
}

#[test]
fn special_file_as_sessions_dir_is_refused_by_every_command() {
    refused_everywhere(At::SessionsDir, "special_sessions_dir");
}

#[test]
fn a_config_over_one_mib_is_refused_unread() {
    let s = Store::new();
    let text = std::fs::read_to_string(&s.config).unwrap();
    let pad = format!("# {}\n", "x".repeat(1000)).repeat(1100);
    std::fs::write(&s.config, format!("{text}{pad}")).unwrap();
    let r = sessiondb(&["check", "--backend", "sqlite"])
        .config(&s.config)
        .run_within(LIMIT);
    assert_eq!(r.code, exit::USAGE, "{}", r.stdout);
    let e = &r.report.errors[0];
    assert_eq!(e.code, "config_invalid", "{}", r.stdout);
    assert!(e.message.contains("too large"), "{}", e.message);
    row(
        "config file of 1.1 MB",
        "check",
        "config_invalid (too large), exit 2",
        "read stops at 1 MiB",
    );
}

/// A state file that is a FIFO, a socket or a character device: an invalid record
/// `not_regular_file` (path and message, no bytes), never opened; no command hangs.
#[test]
fn special_state_file_is_an_invalid_record_never_read() {
    let (s, db) = migrated("special_state");
    type Make = Box<dyn Fn(&Path)>;
    let mut kinds: Vec<(&str, Make)> = vec![
        ("a FIFO", Box::new(|p: &Path| mkfifo(p))),
        (
            "a unix socket",
            Box::new(|p: &Path| {
                // The socket file outlives its listener.
                drop(UnixListener::bind(p).unwrap());
            }),
        ),
    ];
    let probe = s.root().join("probe-dev");
    if mknod_zero(&probe) {
        std::fs::remove_file(&probe).unwrap();
        kinds.push((
            "a character device (1, 5: zero)",
            Box::new(|p: &Path| assert!(mknod_zero(p))),
        ));
    } else {
        eprintln!("note: no character device state file: this process may not mknod");
    }
    let reports = s.root().join("reports");
    for (n, (kind, make)) in kinds.iter().enumerate() {
        // A session of its own for each kind: the ones before are quarantined by now.
        let id = format!("sp{n}");
        s.session(&id, r#"{"b": 2}"#);
        let state = s.sessions.join(&id).join("state.json");
        std::fs::remove_file(&state).unwrap();
        make(&state);
        let run = |args: &[&str]| -> Run {
            sessiondb(args)
                .config(&s.config)
                .env("DATABASE_URL", &db.url)
                .arg("--report-dir")
                .arg(&reports)
                .run_within(LIMIT)
        };
        let names_it = |r: &Run, what: &str| {
            let f = r
                .report
                .errors
                .iter()
                .chain(&r.report.warnings)
                .find(|f| f.code == "not_regular_file" && f.session.as_deref() == Some(&id))
                .unwrap_or_else(|| {
                    panic!("{kind}: {what}: no not_regular_file for {id}\n{}", r.stdout)
                });
            assert_eq!(f.path.as_deref(), state.to_str(), "{kind}: {what}");
        };
        let r = run(&["check", "--backend", "sqlite"]);
        assert_eq!(r.code, exit::PROBLEMS, "{}", r.stdout);
        names_it(&r, "check");
        let r = run(&["preflight"]);
        assert_eq!(r.code, exit::PROBLEMS, "{}", r.stdout);
        names_it(&r, "preflight");
        // Backup skips the file (as before) and lists the invalid record.
        let r = run(&["backup"]);
        assert_eq!(r.code, exit::OK, "{}", r.stdout);
        assert!(r.has_warning("backup_skipped"), "{kind}: {}", r.stdout);
        assert!(
            r.stdout.contains("not_regular_file"),
            "{kind}: {}",
            r.stdout
        );
        let r = run(&["migrate-state", "--dry-run=false"]);
        assert_eq!(r.code, exit::PROBLEMS, "{}", r.stdout);
        assert!(
            r.stdout.contains("not_regular_file"),
            "{kind}: {}",
            r.stdout
        );
        let r = run(&["verify"]);
        assert_eq!(r.code, exit::PROBLEMS, "{}", r.stdout);
        assert!(
            r.stdout.contains("not_regular_file"),
            "{kind}: {}",
            r.stdout
        );
        // Quarantined by path and message, without bytes.
        let r = run(&["migrate-state", "--dry-run=false", "--quarantine"]);
        assert!(r.count("quarantined") >= 1, "{kind}: {}", r.stdout);
        let q = r
            .report
            .artifacts
            .iter()
            .find(|a| a.kind == "quarantine")
            .expect("quarantine artifact");
        let line = std::fs::read_dir(&q.path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".ndjson"))
            .flat_map(|p| {
                let text = std::fs::read_to_string(p).unwrap();
                text.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .find(|l| l["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{kind}: {id} not in the quarantine index"));
        assert_eq!(line["code"], "not_regular_file", "{kind}: {line}");
        assert_eq!(line["path"].as_str(), state.to_str(), "{kind}: {line}");
        assert_eq!(line["bytes"], 0, "{kind}: no bytes were read: {line}");
        // The other steps do not hang either, and leave the file as it is.
        for args in [&["set-default"][..], &["rollback", "--dry-run=false"]] {
            let r = run(args);
            assert_ne!(
                r.report.status,
                sessiondb::report::Status::Error,
                "{kind}: {}",
                r.stdout
            );
        }
        let m = std::fs::symlink_metadata(&state).unwrap();
        assert!(!m.is_file(), "{kind}: the special file was left as it is");
    }
    row(
        "state.json is a FIFO, a socket, a device",
        "check, preflight, backup, migrate-state, verify, set-default, rollback",
        "invalid record not_regular_file (quarantinable, no bytes); backup skips it",
        "none hung; the file is left as it is",
    );
}

/// `sessiond` (the runtime store's service) at each configured path: it exits with a
/// configuration error naming the file, instead of hanging in its open or serving.
#[test]
fn sessiond_refuses_special_files_at_every_configured_path() {
    let s = Store::new();
    s.session("s1", r#"{"a": 1}"#);
    s.json_store(r#"{"version": 1, "sessions": []}"#);
    let sp = specials();
    let mut runs = 0;
    for (kind, special) in &sp.files {
        for at in [At::Config, At::Sqlite, At::SessionsDir, At::Json] {
            let config = configure(&s, at, special);
            if at == At::Json {
                // The runtime store reads the JSON store only when it is the backend.
                let text = std::fs::read_to_string(&config).unwrap();
                std::fs::write(
                    &config,
                    text.replace("backend = \"sqlite\"", "backend = \"json\""),
                )
                .unwrap();
            }
            let what = format!("sessiond with {kind} as {at:?}");
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"));
            cmd.arg("--config")
                .arg(&config)
                .args(["--listen", "127.0.0.1:0"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            for k in crate::support::SCRUB {
                cmd.env_remove(k);
            }
            let mut child = cmd.spawn().unwrap();
            let deadline = std::time::Instant::now() + LIMIT;
            let status = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break st;
                }
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{what}: still running after {LIMIT:?}: it hung or served");
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert_eq!(status.code(), Some(exit::USAGE), "{what}\n{stderr}");
            let p = special.display().to_string();
            assert!(
                stderr.contains(&format!("{p} is "))
                    && stderr.contains("refused without reading it"),
                "{what}: stderr does not name the refusal\n{stderr}"
            );
            runs += 1;
        }
    }
    row(
        "FIFO, /dev/zero, socket, /proc file at each configured path",
        "sessiond (the runtime store's open)",
        &format!("{runs} runs: exit 2 naming the path, none hung"),
        "-",
    );
}

/// The runtime store, embedded: `store::open` refuses a FIFO database, and reading a
/// session whose state file became a FIFO is an `invalid_record` error
/// `not_regular_file`, not a hang.
#[test]
fn runtime_store_refuses_special_files() {
    let s = Store::new();
    s.session("s1", r#"{"a": 1}"#);
    let env = sessiondb::config::Env::default();
    let rt = Background(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap(),
    ));
    let sp = specials();
    let fifo = &sp.files[0].1;
    configure(&s, At::Sqlite, fifo);
    let cfg = sessiondb::config::Config::load(Some(&s.config), &env).unwrap();
    let opened = rt
        .block_on(async { tokio::time::timeout(LIMIT, sessiondb::store::open(&cfg, &env)).await });
    let Err(e) = opened.expect("store::open hung on a FIFO database") else {
        panic!("store::open opened a FIFO database");
    };
    assert_eq!(e.code(), "not_regular_file", "{e}");
    assert!(e.to_string().contains(&fifo.display().to_string()), "{e}");

    s.write_config("sqlite", "");
    let cfg = sessiondb::config::Config::load(Some(&s.config), &env).unwrap();
    let store = rt
        .block_on(sessiondb::store::open(&cfg, &env))
        .expect("a sound store opens");
    let state = s.sessions.join("s1").join("state.json");
    std::fs::remove_file(&state).unwrap();
    mkfifo(&state);
    let got = rt.block_on(async { tokio::time::timeout(LIMIT, store.state("s1")).await });
    let e = got
        .expect("reading a FIFO state file hung")
        .expect_err("a FIFO state file is refused");
    assert_eq!(e.code(), "not_regular_file", "{e}");
    rt.block_on(store.close()).unwrap();
}

/// A runtime that is not waited for when dropped (also when the test fails): a blocking
/// task hung on a FIFO must not hold the test.
struct Background(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for Background {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("live")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
