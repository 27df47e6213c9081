//! Ids and file names that hold anything (issue 14.4, 14.5). A report stays valid JSON
//! and holds the exact value whatever the data, and never the password whatever the
//! connection string; stderr never shows a raw control character or a line the data
//! made up. Before the fix the masking ran over the finished JSON text: a folder named
//! `password=x`, or a `?password=` in the URL, ate the closing quote of a field.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use proptest::prelude::*;
use sessiondb::exit;

use crate::faults::row;
use crate::support::pg::TestDb;
use crate::support::store::Store;
use crate::support::{Run, TempDir, sessiondb};

/// A port nothing listens on: the target is refused at once.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The connection string forms, each with `password`; and every form the password may
/// take in it (none may reach any output).
fn url_forms(password: &str, port: u16) -> Vec<(String, Vec<String>)> {
    let kw = password.replace('\\', "\\\\").replace('\'', "\\'");
    let enc = pct(password);
    let mut forms = vec![password.to_owned(), enc.clone(), kw.clone()];
    // And as each stands inside a JSON string.
    for i in 0..forms.len() {
        let j = serde_json::to_string(&forms[i]).unwrap();
        forms.push(j[1..j.len() - 1].to_owned());
    }
    vec![
        (
            format!("postgres://app:{enc}@127.0.0.1:{port}/db"),
            forms.clone(),
        ),
        (
            format!("postgresql://app@127.0.0.1:{port}/db?sslmode=disable&password={enc}"),
            forms.clone(),
        ),
        (
            format!("host=127.0.0.1 port={port} user=app password='{kw}' dbname=db"),
            forms,
        ),
    ]
}

/// No form of the password anywhere in `text`.
fn assert_clean(text: &str, forms: &[String], what: &str) {
    for f in forms {
        assert!(
            !text.contains(f.as_str()),
            "{what}: the password ({f}) is in:\n{text}"
        );
    }
}

/// `preflight` on a store whose sessions folder holds a state file under each of `names`
/// (orphans: the report names them), against `url`. Checks that stdout and the report
/// file are one valid report each, hold every name exactly and no form of the password,
/// and that stderr holds none either.
fn preflight_reports(names: &[String], url: &str, forms: &[String]) {
    let s = Store::new();
    s.session("ok1", r#"{"a": 1}"#);
    for n in names {
        s.state_file(n, br#"{"orphan": true}"#);
    }
    let file = s.root().join("out/report.json");
    let r = sessiondb(&["preflight"])
        .config(&s.config)
        .env("DATABASE_URL", url)
        .arg("--report-file")
        .arg(&file)
        .run();
    assert_ne!(r.code, exit::OK, "the target is unreachable");
    let from_file = std::fs::read_to_string(&file).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&from_file)
        .unwrap_or_else(|e| panic!("--report-file: {e}\n{from_file}"));
    assert_eq!(parsed["step"], "preflight");
    for n in names {
        assert!(
            r.report
                .warnings
                .iter()
                .any(|w| w.code == "orphan_state_file" && w.session.as_deref() == Some(n)),
            "the report does not hold {n:?} exactly:\n{}",
            r.stdout
        );
    }
    let target = r.report.target.as_deref().expect("the target is named");
    assert!(target.contains("***"), "{target}");
    assert_clean(&r.stdout, forms, "stdout");
    assert_clean(&from_file, forms, "--report-file");
    assert_clean(&r.stderr, forms, "stderr");
}

#[test]
fn a_session_named_like_a_password_keeps_the_report_valid() {
    let names: Vec<String> = [
        "password=x",
        "password='y z'",
        "a&password=b",
        "sslpassword=k",
        "postgres:__u:pw@h",
        "q\"uote\\back",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let port = closed_port();
    for (url, forms) in url_forms("S3cret-'q\\\"pw", port) {
        preflight_reports(&names, &url, &forms);
    }
    row(
        "ids like password=x; ?password= and keyword DSNs",
        "preflight (stdout, --report-file, stderr)",
        "valid JSON, ids exact",
        "no form of the password anywhere",
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Arbitrary folder names and passwords, through the real binary.
    #[test]
    fn any_names_and_any_password_give_a_valid_report_without_it(
        names in prop::collection::vec("(password=|sslpassword=|)[^/\u{0}]{1,20}", 1..4),
        pw in "[A-Za-z0-9 !#$%&()*+,;<=>?@\\[\\]^_`{|}~'\"\\\\-]{6,14}",
        form in 0usize..3,
    ) {
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| n != "." && n != ".." && n != "ok1" && n.len() <= 200)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let pw = format!("Pw{pw}");
        let (url, forms) = url_forms(&pw, closed_port()).swap_remove(form);
        preflight_reports(&names, &url, &forms);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The same in the library, many more cases: a report holding arbitrary ids, paths
    /// and messages, and the target of any URL form, serialises to valid JSON with the
    /// values exact, and neither it nor the stderr summary holds the password.
    #[test]
    fn reports_and_summaries_never_hold_the_password(
        ids in prop::collection::vec(any::<String>(), 1..5),
        pw in "[A-Za-z0-9 !#$%&()*+,;<=>?@\\[\\]^_`{|}~'\"\\\\-]{6,14}",
        form in 0usize..3,
    ) {
        use sessiondb::report::{Finding, Report};
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<String> = ids.into_iter().filter(|i| seen.insert(i.clone())).collect();
        let pw = format!("Pw{pw}");
        let (url, forms) = url_forms(&pw, 5432).swap_remove(form);
        let env = sessiondb::config::Env(
            [("DATABASE_URL".to_owned(), url)].into_iter().collect(),
        );
        let settings = sessiondb::config::PostgresSettings::defaults();
        sessiondb::config::runtime("DATABASE_URL", &env).unwrap();
        let t = sessiondb::config::target(&settings, None, &env).unwrap().unwrap();
        let mut r = Report::new("verify", "run");
        r.target = Some(t.display.clone());
        for id in &ids {
            r.warn(
                Finding::new("orphan_state_file", format!("session {id}: {id}/state.json"))
                    .session(id)
                    .path(Path::new(id)),
            );
            r.next_steps.push(format!("look at {id}"));
        }
        r.set_details(&serde_json::json!({ "ids": ids }));
        r.finish(None, false, std::time::Instant::now());
        let json = r.to_json();
        let back: sessiondb::report::Report = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{json}"));
        for (w, id) in back.warnings.iter().zip(&ids) {
            prop_assert_eq!(w.session.as_deref(), Some(id.as_str()));
        }
        assert_clean(&json, &forms, "report");
        assert_clean(&sessiondb::driver::summary(&r.redacted()), &forms, "summary");
    }
}

/// Whether any string in `v` satisfies `f`.
fn any_string(v: &serde_json::Value, f: &dyn Fn(&str) -> bool) -> bool {
    match v {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(a) => a.iter().any(|x| any_string(x, f)),
        serde_json::Value::Object(o) => o.values().any(|x| any_string(x, f)),
        _ => false,
    }
}

/// The ids and names of [`control_characters_in_names_never_reach_the_terminal_raw`]: an orphan folder with ESC, CR and LF, one
/// whose name is not UTF-8, and a SQLite id with ESC, CR and LF.
const EVIL_DIR: &str = "e\x1b[31mvil\rX\nFORGED: orphan";
const EVIL_ID: &str = "id\x1b[2J\r\nFORGED: id";
const BAD_UTF8: &[u8] = b"bad\xff\xfe\x1b[0m";

/// No raw ESC or CR on stderr, and every line is one the tool wrote.
fn assert_terminal_safe(r: &Run, what: &str) {
    assert!(
        !r.stderr.contains('\x1b'),
        "{what}: raw ESC on stderr:\n{:?}",
        r.stderr
    );
    assert!(
        !r.stderr.contains('\r'),
        "{what}: raw CR on stderr:\n{:?}",
        r.stderr
    );
    for line in r.stderr.lines() {
        assert!(
            !line.starts_with("FORGED"),
            "{what}: a forged line: {line:?}\n{}",
            r.stderr
        );
    }
}

#[test]
fn control_characters_in_names_never_reach_the_terminal_raw() {
    // The store itself lives under a name with control characters, so that the paths in
    // the log lines carry them too.
    let parent = TempDir::new();
    let s = Store::new();
    let root = parent.path().join("store\x1b[31m\r\nFORGED: log");
    std::fs::rename(s.root(), &root).unwrap_or_else(|_| {
        // Another filesystem: copy is not needed, the store is small.
        panic!("cannot move the store under {}", parent.path().display())
    });
    let config = root.join("sessiondb.toml");
    let sessions = root.join("sessions");
    let conn = rusqlite::Connection::open(root.join("data/app.db")).unwrap();
    for id in ["ok1", EVIL_ID] {
        conn.execute(
            "INSERT INTO sessions VALUES (?1, 'u', 'running', 'plan', 0.5, '2024-03-01T10:00:00Z', '2024-03-01T10:00:00Z', '{\"a\": 1}')",
            [id],
        )
        .unwrap();
    }
    drop(conn);
    crate::support::write(&sessions.join("ok1/state.json"), r#"{"a": 1}"#);
    crate::support::write(&sessions.join(EVIL_DIR).join("state.json"), "{}");
    let bad = sessions.join(std::ffi::OsStr::from_bytes(BAD_UTF8));
    crate::support::write(&bad.join("state.json"), "{}");
    let db = TestDb::new("terminal_safe");
    let evil_id_shown = format!("{EVIL_ID:?}");
    let run = |args: &[&str]| {
        let r = sessiondb(args)
            .config(&config)
            .env("DATABASE_URL", &db.url)
            .run();
        let what = args.join(" ");
        assert_terminal_safe(&r, &what);
        // The data is on stderr, escaped (not dropped).
        assert!(
            r.stderr.contains("\\x1b[31m"),
            "{what}: the names are not shown:\n{}",
            r.stderr
        );
        r
    };
    let holds_exact = |r: &Run, what: &str, names_invalid_id: bool| {
        let all: Vec<_> = r.report.warnings.iter().chain(&r.report.errors).collect();
        assert!(
            all.iter().any(|f| f.session.as_deref() == Some(EVIL_DIR)),
            "{what}: the folder name is not in the report exactly:\n{}",
            r.stdout
        );
        let hex: String = sessions
            .join(std::ffi::OsStr::from_bytes(BAD_UTF8))
            .join("state.json")
            .as_os_str()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            all.iter()
                .any(|f| f.path_hex.as_deref() == Some(hex.as_str())),
            "{what}: the non-UTF-8 name is not in the report losslessly:\n{}",
            r.stdout
        );
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert!(
            !names_invalid_id || any_string(&v, &|s| s.contains(&evil_id_shown)),
            "{what}: the invalid id is not named ({evil_id_shown}):\n{}",
            r.stdout
        );
    };
    let r = run(&["check", "--backend", "sqlite"]);
    assert_eq!(r.code, exit::PROBLEMS, "{}", r.stdout);
    holds_exact(&r, "check", true);
    let r = run(&["preflight"]);
    holds_exact(&r, "preflight", true);
    let r = run(&["backup"]);
    assert_eq!(r.code, exit::OK, "{}", r.stdout);
    let r = run(&["migrate-state", "--dry-run=false", "--quarantine"]);
    assert_eq!(r.code, exit::OK, "{}", r.stdout);
    // The invalid id is in the quarantine, not the report.
    holds_exact(&r, "migrate-state", false);
    let r = run(&["verify"]);
    holds_exact(&r, "verify", false);
    row(
        "ids and folder names with ESC, CR, LF, invalid UTF-8",
        "check, preflight, backup, migrate-state, verify",
        "stderr: escaped, no raw ESC/CR, no forged line",
        "reports hold the exact values",
    );
}
