//! What the operator sees on stderr (issue 18): progress for every long phase, in a
//! log and on a terminal.

use sessiondb::exit;

use crate::support::pg::TestDb;
use crate::support::sessiondb;
use crate::support::store::Store;

/// 20 sessions in SQLite, and a JSON store holding 5 of them again and 3 of its own:
/// 23 sessions (the old estimate counted 28).
fn store() -> Store {
    let s = Store::new();
    for i in 0..20 {
        s.session(&format!("s{i:02}"), &format!("{{\"n\": {i}}}"));
    }
    // The sessions SQLite holds too, with SQLite's metadata (`Store::session`).
    let rec = |id: &str| {
        if id.starts_with('s') {
            format!(
                r#"{{"id": "{id}", "user_id": "user-1", "status": "running", "current_step": "plan", "cost": 0.25, "created_at": "2024-03-01T10:00:00Z", "updated_at": "2024-03-01 10:05:00.123456"}}"#
            )
        } else {
            format!(
                r#"{{"id": "{id}", "user_id": "u", "status": "done", "current_step": "end", "cost": 1.5, "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z", "state": {{"j": 1}}}}"#
            )
        }
    };
    let ids = ["s00", "s01", "s02", "s03", "s04", "j1", "j2", "j3"];
    let recs: Vec<String> = ids.iter().map(|i| rec(i)).collect();
    s.json_store(&format!(
        r#"{{"version": 1, "sessions": [{}]}}"#,
        recs.join(", ")
    ));
    s
}

const SESSIONS: u64 = 23;

/// The plain line of `phase` ending as `how` (`start`, `done`): its words after the
/// time stamp, which must be an RFC 3339 UTC time.
fn line<'a>(stderr: &'a str, phase: &str, how: &str) -> Vec<&'a str> {
    let found: Vec<Vec<&str>> = stderr
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|w| w.len() >= 3 && w[1] == phase && w[2] == how)
        .collect();
    assert_eq!(found.len(), 1, "one `{phase} {how}` line in:\n{stderr}");
    let w = &found[0];
    assert!(
        chrono::DateTime::parse_from_rfc3339(w[0]).is_ok() && w[0].ends_with('Z'),
        "time stamp {:?} in:\n{stderr}",
        w[0]
    );
    w[1..].to_vec()
}

/// `phase` started and ended with `n/n <unit>`, and its end line says its rate and
/// duration.
fn counted(stderr: &str, phase: &str, n: u64, unit: &str) {
    let total = format!("0/{n}");
    assert_eq!(
        line(stderr, phase, "start")[2..],
        [total.as_str(), unit],
        "{stderr}"
    );
    let end = line(stderr, phase, "done");
    let all = format!("{n}/{n}");
    assert_eq!(end[2..4], [all.as_str(), unit], "{stderr}");
    assert!(end[4].ends_with("/s") && end[5].ends_with('s'), "{stderr}");
}

/// A phase without a count: a start line and an end line with its duration.
fn timed(stderr: &str, phase: &str) {
    line(stderr, phase, "start");
    let end = line(stderr, phase, "done");
    let secs = end[2].strip_suffix('s').expect("a duration");
    assert!(secs.parse::<f64>().is_ok(), "{stderr}");
}

#[test]
fn every_long_phase_logs_its_start_and_end_with_true_totals() {
    let s = store();
    let db = TestDb::new("op_progress");
    let run = |args: &[&str]| {
        sessiondb(args)
            .config(&s.config)
            .env("DATABASE_URL", &db.url)
    };

    let r = run(&["preflight"]).expect(exit::OK);
    counted(&r.stderr, "scan", SESSIONS, "sessions");

    let r = run(&["migrate-state"]).expect(exit::OK);
    assert_eq!(r.count("sessions"), SESSIONS, "{}", r.stdout);
    counted(&r.stderr, "plan", SESSIONS, "sessions");

    let r = run(&["migrate-state", "--dry-run=false"]).expect(exit::OK);
    for phase in ["backup-database", "gin-index", "analyze"] {
        timed(&r.stderr, phase);
    }
    counted(&r.stderr, "backup-sessions", SESSIONS, "sessions");
    counted(&r.stderr, "load", SESSIONS, "sessions");
    // The state files: counted by the sessions folder's entries (20 `<id>/` folders, a
    // true total once the walk has listed them), then read back.
    counted(&r.stderr, "backup-files", 20, "folders");
    // The self-check reads back every byte written: done/total in human sizes, equal.
    let check = line(&r.stderr, "backup-self-check", "done")[2..].join(" ");
    let (done, total) = check.split_once('/').expect("done/total");
    assert!(
        done.ends_with("kB") && total.starts_with(done),
        "{}",
        r.stderr
    );

    let r = run(&["verify"]).expect(exit::OK);
    counted(&r.stderr, "verify", SESSIONS, "sessions");

    let r = run(&["backup"]).expect(exit::OK);
    counted(&r.stderr, "backup-sessions", SESSIONS, "sessions");
    line(&r.stderr, "backup-self-check", "done");

    // --quiet: none of it.
    let r = run(&["verify", "--quiet"]).expect(exit::OK);
    assert!(!r.stderr.contains(" verify "), "{}", r.stderr);
}

#[test]
fn on_a_terminal_each_phase_ends_with_one_line() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("util-linux `script` is needed to run a command under a pseudo-terminal");
    }
    let s = store();
    let db = TestDb::new("op_progress_tty");
    let bin = crate::support::bin_path("sessiondb");
    let out = s.root().join("report.json");
    // stdout to a file, stderr to the pseudo-terminal that `script` records.
    let cmdline = format!(
        "'{}' migrate-state --dry-run=false --config '{}' > '{}'",
        bin.display(),
        s.config.display(),
        out.display()
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-q", "-e", "-c", &cmdline, "/dev/null"]);
    for k in crate::support::SCRUB {
        cmd.env_remove(k);
    }
    cmd.env("DATABASE_URL", &db.url);
    cmd.stdin(std::process::Stdio::null());
    let o = cmd.output().expect("script runs");
    let tty = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(exit::OK), "{tty}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).unwrap()).expect("the report on stdout");
    assert_eq!(report["counts"]["sessions"], SESSIONS);
    // Each phase's closing line, without a time stamp (the terminal shows the time).
    let lines = terminal_lines(&tty);
    let load = format!("load done {SESSIONS}/{SESSIONS} sessions");
    for want in [
        load.as_str(),
        "backup-database done",
        "backup-files done 20/20 folders",
        "backup-self-check done",
        "gin-index done",
        "analyze done",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "no line starting {want:?} on the terminal:\n{lines:#?}"
        );
    }
    // Bars, not a log: no time-stamped start lines.
    assert!(!tty.contains(" load start "), "{tty}");
}

/// What a terminal shows, roughly: the text between carriage returns and newlines,
/// with escape sequences (colours, cursor moves, line clears) taken out.
fn terminal_lines(raw: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                chars.next();
            }
            plain.push('\r');
        } else {
            plain.push(c);
        }
    }
    plain
        .split(['\r', '\n'])
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `--help` of a binary, or of `sessiondb <subcommand...>`: its text (exit 0).
fn help(bin: &std::path::Path, args: &[&str]) -> String {
    let o = std::process::Command::new(bin)
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(exit::OK), "{args:?}");
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn every_help_opens_with_what_the_step_does_and_whether_it_writes() {
    let mut helps: Vec<(String, String)> = Vec::new();
    for b in [
        "preflight",
        "backup",
        "migrate-state",
        "verify",
        "set-default",
        "rollback",
    ] {
        helps.push((b.into(), help(&crate::support::bin_path(b), &[])));
    }
    let umbrella = crate::support::bin_path("sessiondb");
    for sub in [
        &["preflight"][..],
        &["backup"],
        &["migrate-state"],
        &["verify"],
        &["set-default"],
        &["rollback"],
        &["check"],
        &["init"],
        &["generate-fixture"],
        &["migrate", "to", "postgres"],
    ] {
        helps.push((format!("sessiondb {}", sub.join(" ")), help(&umbrella, sub)));
    }
    for (name, text) in &helps {
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.ends_with('.')
                && ["writes", "read-only", "dry run"]
                    .iter()
                    .any(|w| first.contains(w)),
            "{name}: the first line must say what the step does and whether it writes: {first:?}"
        );
    }
    // The umbrella and the other commands' help, and sessiond's.
    helps.push(("sessiondb".into(), help(&umbrella, &[])));
    helps.push(("sessiondb migrate".into(), help(&umbrella, &["migrate"])));
    helps.push((
        "sessiond".into(),
        help(std::path::Path::new(env!("CARGO_BIN_EXE_sessiond")), &[]),
    ));
    for (name, text) in &helps {
        for internal in [
            "sessiondb::",
            "flattened",
            "`Args`",
            "[`",
            "SPEC",
            "issue 1",
            "Dry run is the default; a bare",
        ] {
            assert!(
                !text.contains(internal),
                "{name} --help shows {internal:?}:\n{text}"
            );
        }
    }
}

#[test]
fn dry_run_with_a_space_hints_and_reports_its_own_step() {
    for (bin, args, step) in [
        (
            "sessiondb",
            &["migrate-state", "--dry-run", "false"][..],
            "migrate-state",
        ),
        ("sessiondb", &["rollback", "--dry-run", "false"], "rollback"),
        (
            "sessiondb",
            &["migrate", "to", "postgres", "--dry-run", "false"],
            "migrate-to-postgres",
        ),
        ("set-default", &["--dry-run", "false"], "set-default"),
    ] {
        let r = crate::support::Cmd::bin(bin, args).expect(exit::USAGE);
        assert_eq!(r.report.step, step, "{}", r.stdout);
        assert!(r.has_error("usage"), "{}", r.stdout);
        assert!(
            r.stderr.contains("did you mean --dry-run=false?"),
            "{bin} {args:?}: {}",
            r.stderr
        );
        assert!(
            r.report.errors[0]
                .message
                .contains("did you mean --dry-run=false?"),
            "{}",
            r.stdout
        );
        assert!(!r.report.next_steps.is_empty(), "{}", r.stdout);
    }
    // A command line that names no step is the umbrella's.
    let r = sessiondb(&["--no-such-flag"]).expect(exit::USAGE);
    assert_eq!(r.report.step, "sessiondb");
}

/// Every code the error type can put in a report, read from the code that emits them:
/// `Error::code`, the JSON validator's codes, the JSON store's own.
fn emitted_codes() -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap();
    let body = |text: &str, start: &str, end: &str| -> String {
        let i = text.find(start).unwrap_or_else(|| panic!("no {start:?}"));
        let j = i + text[i..].find(end).unwrap();
        text[i..j].to_owned()
    };
    let quoted = |text: &str| -> Vec<String> {
        text.split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .map(str::to_owned)
            .collect()
    };
    let error = read("src/error.rs");
    let mut codes = quoted(&body(&error, "pub fn code(&self)", "pub fn exit_code"));
    let canon = read("src/canon.rs");
    codes.extend(quoted(&body(&canon, "pub fn code(&self)", "pub fn offset")));
    let json = read("src/source/json_store.rs");
    for part in json.split("invalid(").skip(1) {
        if let Some(c) = quoted(&part[..part.len().min(120)]).first() {
            codes.push(c.clone());
        }
    }
    // UnsafePath's codes.
    codes.extend(["symlink_outside_root".into(), "not_regular_file".into()]);
    codes.sort();
    codes.dedup();
    codes
}

/// The codes SPEC §6 lists (docs/contract.md, its twin).
fn contract_codes() -> Vec<String> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/contract.md")).unwrap();
    let i = text.find("## 6.").unwrap();
    let j = i + text[i..].find("\n## 7").unwrap();
    text[i..j]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            !["sslmode", "check", "preflight"].contains(s)
                && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_error_code_has_next_steps_and_a_runbook_row() {
    let runbook =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/runbooks/incident.md"))
            .unwrap();
    let emitted = emitted_codes();
    assert!(emitted.len() > 40, "{emitted:?}");
    let spec = contract_codes();
    assert!(spec.contains(&"auth_failed".to_owned()), "{spec:?}");
    let mut missing = Vec::new();
    for code in emitted.iter().chain(&spec) {
        let steps = sessiondb::error::next_steps_for(code);
        if steps.len() != 2 || steps.iter().any(|s| s.len() < 20) {
            missing.push(format!("{code}: next_steps {steps:?}"));
        }
        if !runbook.contains(&format!("| `{code}` |")) {
            missing.push(format!("{code}: no row in runbooks/incident.md"));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
    // Each row of the table has its four columns.
    for code in &emitted {
        let row = runbook
            .lines()
            .find(|l| l.starts_with(&format!("| `{code}` |")))
            .unwrap();
        assert_eq!(row.matches(" | ").count(), 3, "{row}");
    }
}

#[test]
fn a_missing_config_says_where_it_looked_and_how_to_make_one() {
    let d = crate::support::TempDir::new();
    let r = sessiondb(&["preflight"]).cwd(d.path()).expect(exit::USAGE);
    let m = &r.report.errors[0].message;
    let cwd = std::fs::canonicalize(d.path()).unwrap();
    for want in [
        cwd.to_str().unwrap(),
        "--config",
        "$SESSIONDB_CONFIG",
        "sessiondb init",
    ] {
        assert!(m.contains(want), "{want:?} not in {m}");
    }
    assert!(
        r.report
            .next_steps
            .iter()
            .any(|s| s.contains("sessiondb init")),
        "{}",
        r.stdout
    );
}

#[test]
fn a_wrong_password_is_auth_failed_exit_3_from_every_step() {
    let s = store();
    let db = TestDb::new("op_auth");
    let role = crate::support::pg::Role::new("op_auth");
    let wrong = role.url(&db).replace(&role.password, "not-the-password");
    for args in [
        &["check", "--backend", "postgres"][..],
        &["preflight"],
        &["migrate-state"],
        &["migrate-state", "--dry-run=false"],
        &["verify"],
        &["rollback"],
    ] {
        let r = sessiondb(args)
            .config(&s.config)
            .env("DATABASE_URL", &wrong)
            .expect(exit::OPERATIONAL);
        let e = r
            .report
            .errors
            .iter()
            .find(|e| e.code == "auth_failed")
            .unwrap_or_else(|| panic!("{args:?}: no auth_failed: {}", r.stdout));
        assert!(!r.has_error("permission_denied"), "{}", r.stdout);
        assert!(
            !e.message.contains("auth_failed") && e.message.contains("password"),
            "{}",
            e.message
        );
        assert!(
            r.report
                .next_steps
                .iter()
                .any(|s| s.contains("sessiondb check --backend postgres")),
            "{args:?}: {}",
            r.stdout
        );
    }
}

#[test]
fn an_unreachable_server_does_not_repeat_its_code() {
    let s = store();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgresql://u:p@127.0.0.1:{port}/x");
    let r = sessiondb(&["verify"])
        .config(&s.config)
        .env("DATABASE_URL", &url)
        .expect(exit::OPERATIONAL);
    let e = &r.report.errors[0];
    assert_eq!(e.code, "postgres_unreachable");
    assert!(!e.message.contains("postgres_unreachable"), "{}", e.message);
    assert!(
        !r.stderr
            .contains("postgres_unreachable: postgres_unreachable")
    );
    assert!(!r.report.next_steps.is_empty());
}

#[test]
fn lock_held_names_the_backend_pid_its_run_and_host_and_how_to_end_it() {
    let s = store();
    let db = TestDb::new("op_lock");
    let mut holder = db.url.parse::<postgres::Config>().unwrap();
    holder.application_name("sessiondb:0badc0de-0000-4000-8000-000000000001");
    let mut c = holder.connect(postgres::NoTls).unwrap();
    let key = sessiondb::pg::lock_key("public");
    c.execute("SELECT pg_advisory_lock($1)", &[&key]).unwrap();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let r = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OPERATIONAL);
    let e = r
        .report
        .errors
        .iter()
        .find(|e| e.code == "lock_held")
        .unwrap();
    for want in [
        format!("PostgreSQL backend pid {pid}"),
        "sessiondb run 0badc0de-0000-4000-8000-000000000001".to_owned(),
        "client 127.0.0.1".to_owned(),
        format!("SELECT * FROM pg_stat_activity WHERE pid = {pid}"),
        format!("pg_terminate_backend({pid})"),
    ] {
        assert!(e.message.contains(&want), "{want:?} not in {}", e.message);
    }
    let steps = r.report.next_steps.join("\n");
    assert!(
        steps.contains(&format!("WHERE pid = {pid}"))
            && steps.contains(&format!("pg_terminate_backend({pid})"))
            && steps.contains("dead"),
        "{steps}"
    );
}

#[test]
fn a_first_load_reports_sizes_for_people_absolute_artifacts_and_no_empty_side_file() {
    let s = store();
    let db = TestDb::new("op_first_load");
    let run = |args: &[&str]| {
        sessiondb(args)
            .cwd(s.root())
            .config(&s.config)
            .env("DATABASE_URL", &db.url)
    };
    // A relative report folder: the artifacts still name absolute paths.
    let r = run(&[
        "migrate-state",
        "--dry-run=false",
        "--report-dir",
        "reports",
    ])
    .expect(exit::OK);
    let applied = r.report.details["schema_applied"].as_array().unwrap();
    assert!(!applied.is_empty(), "{}", r.stdout);
    let pending = r.report.details.get("schema_pending");
    assert!(
        pending.is_none_or(|p| p.as_array().unwrap().is_empty()),
        "applied and pending in one report: {}",
        r.stdout
    );
    assert!(!r.report.artifacts.is_empty());
    for a in &r.report.artifacts {
        assert!(std::path::Path::new(&a.path).is_absolute(), "{a:?}");
    }
    // The summary gives the size for people; the report the exact bytes.
    let bytes = r.count("bytes");
    let human = sessiondb::progress::human_bytes(bytes).replace(' ', "");
    assert!(r.stderr.contains(&format!("bytes={human}")), "{}", r.stderr);
    let r = run(&["verify", "--report-dir", "reports"]).expect(exit::OK);
    assert_eq!(r.count("different"), 0, "{}", r.stdout);
    let reports = s.root().join("reports");
    let side: Vec<_> = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    for p in &side {
        assert!(
            std::fs::metadata(p).unwrap().len() > 0,
            "an empty side file: {}",
            p.display()
        );
    }
    assert!(!reports.join("verify-differences.jsonl").exists());
    assert!(!reports.join("migrate-state-skipped.jsonl").exists());
}

#[test]
fn rollback_and_init_log_their_phases_too() {
    let s = Store::new();
    for i in 0..6 {
        s.session(&format!("s{i}"), &format!("{{\"legacy\": {i}}}"));
    }
    let db = TestDb::new("op_rollback_phases");
    let run = |args: &[&str]| {
        sessiondb(args)
            .config(&s.config)
            .env("DATABASE_URL", &db.url)
    };
    run(&["migrate-state", "--dry-run=false"]).expect(exit::OK);
    run(&["verify"]).expect(exit::OK);
    run(&["set-default", "--dry-run=false"]).expect(exit::OK);
    // The application, on PostgreSQL, changes three sessions.
    db.client()
        .batch_execute(
            "UPDATE session_state SET state = state || '{\"pg\": 1}' WHERE session_id IN ('s0', 's1', 's2')",
        )
        .unwrap();
    let r = run(&["rollback", "--dry-run=false"]).expect(exit::OK);
    timed(&r.stderr, "rollback-read");
    counted(&r.stderr, "rollback-export", 3, "sessions");

    // init reads the table and counts the state files of its rows.
    let r = sessiondb(&["init", "--print", "--sqlite", s.db.to_str().unwrap()])
        .cwd(s.root())
        .expect(exit::OK);
    timed(&r.stderr, "init-scan");
    counted(&r.stderr, "init-state-files", 6, "rows");
}

/// The periodic lines of `phase` (neither `start`, `done` nor `stopped`), each checked
/// for its form: `<UTC time> <phase> <done>[/<total>] <unit> <rate>/s <elapsed>s`, the
/// count never past `total` when one is given (sizes in bytes are `12.3 kB/45.6 kB`).
pub(crate) fn periodic(stderr: &str, phase: &str, total: Option<u64>, unit: &str) -> usize {
    let mut n = 0;
    for l in stderr.lines() {
        let w: Vec<&str> = l.split(' ').collect();
        if w.len() < 3 || w[1] != phase || matches!(w[2], "start" | "done" | "stopped") {
            continue;
        }
        n += 1;
        assert!(
            chrono::DateTime::parse_from_rfc3339(w[0]).is_ok() && w[0].ends_with('Z'),
            "time stamp of {l:?}"
        );
        let secs = w[w.len() - 1].strip_suffix('s').expect("elapsed");
        assert!(secs.parse::<f64>().is_ok(), "elapsed of {l:?}");
        assert!(w[w.len() - 2].ends_with("/s"), "rate of {l:?}");
        if unit == "bytes" {
            assert!(
                l.contains('/') && w.len() == 8,
                "a size done/total in {l:?}"
            );
            continue;
        }
        assert_eq!(w.len(), 6, "{l:?}");
        assert_eq!(w[3], unit, "{l:?}");
        match total {
            Some(t) => {
                let (d, tt) = w[2].split_once('/').expect("done/total");
                assert_eq!(tt.parse::<u64>().unwrap(), t, "total of {l:?}");
                assert!(d.parse::<u64>().unwrap() <= t, "{l:?}");
            }
            None => assert!(w[2].parse::<u64>().is_ok(), "a count in {l:?}"),
        }
    }
    n
}

#[test]
fn in_a_log_every_counted_phase_writes_periodic_lines() {
    let s = store();
    let db = TestDb::new("op_progress_periodic");
    // 0: a plain line on every update, so a phase that never reports its count is
    // caught whatever the machine's speed.
    let run = |args: &[&str]| {
        sessiondb(args)
            .config(&s.config)
            .env("DATABASE_URL", &db.url)
            .env("SESSIONDB_PROGRESS_SECS", "0")
    };
    let n = Some(SESSIONS);
    let r = run(&["preflight"]).expect(exit::OK);
    assert!(
        periodic(&r.stderr, "scan", n, "sessions") >= 1,
        "{}",
        r.stderr
    );
    let r = run(&["migrate-state"]).expect(exit::OK);
    assert!(
        periodic(&r.stderr, "plan", n, "sessions") >= 1,
        "{}",
        r.stderr
    );
    let r = run(&["migrate-state", "--dry-run=false"]).expect(exit::OK);
    for (phase, total, unit) in [
        ("backup-sessions", n, "sessions"),
        ("backup-files", Some(20), "folders"),
        ("backup-sync", None, "files"),
        ("backup-self-check", None, "bytes"),
        ("load", n, "sessions"),
    ] {
        assert!(
            periodic(&r.stderr, phase, total, unit) >= 1,
            "no periodic {phase} line:\n{}",
            r.stderr
        );
    }
    let r = run(&["verify"]).expect(exit::OK);
    assert!(
        periodic(&r.stderr, "verify", n, "sessions") >= 1,
        "{}",
        r.stderr
    );
    let r = run(&["backup"]).expect(exit::OK);
    assert!(
        periodic(&r.stderr, "backup-sessions", n, "sessions") >= 1,
        "{}",
        r.stderr
    );
}
