//! The shared driver: flags, config errors, reports on stdout.

use sessiondb::exit;

use crate::support::{Cmd, TempDir, sessiondb};

#[test]
fn dry_run_with_a_space_is_a_usage_error() {
    let r = Cmd::bin("migrate-state", &["--dry-run", "false"]).expect(exit::USAGE);
    assert!(r.has_error("usage"), "{}", r.stdout);
    let r = sessiondb(&["rollback", "--dry-run", "false"]).expect(exit::USAGE);
    assert!(r.has_error("usage"));
}

#[test]
fn missing_config_names_the_file_and_how_it_was_found() {
    let d = TempDir::new();
    let p = d.path().join("nope.toml");
    let r = sessiondb(&["preflight"]).config(&p).expect(exit::USAGE);
    assert!(r.has_error("config_not_found"));
    assert!(
        r.report.errors[0].message.contains("nope.toml"),
        "{}",
        r.stdout
    );
    assert!(r.report.errors[0].message.contains("--config"));
    let r = sessiondb(&["preflight"])
        .env("SESSIONDB_CONFIG", &p)
        .expect(exit::USAGE);
    assert!(
        r.report.errors[0].message.contains("SESSIONDB_CONFIG"),
        "{}",
        r.stdout
    );
    let r = sessiondb(&["preflight"]).cwd(d.path()).expect(exit::USAGE);
    assert!(
        r.report.errors[0].message.contains("sessiondb.toml"),
        "{}",
        r.stdout
    );
}

#[test]
fn malformed_config_names_file_line_and_expectation() {
    let d = TempDir::new();
    let p = d.path().join("sessiondb.toml");
    std::fs::write(
        &p,
        "[sessiondb]\nbackend = \"sqlite\"\n\n[postgres]\npool_size = \"ten\"\n",
    )
    .unwrap();
    let r = sessiondb(&["preflight"]).config(&p).expect(exit::USAGE);
    assert!(r.has_error("config_invalid"), "{}", r.stdout);
    let m = &r.report.errors[0].message;
    assert!(
        m.contains("sessiondb.toml") && m.contains("line 5") && m.contains("integer"),
        "{m}"
    );
}

#[test]
fn report_dir_and_report_file_get_the_same_report() {
    let d = TempDir::new();
    let p = d.path().join("missing.toml");
    let rd = d.path().join("reports");
    let rf = d.path().join("one.json");
    let r = sessiondb(&["preflight", "--report-dir"])
        .arg(&rd)
        .arg("--report-file")
        .arg(&rf)
        .config(&p)
        .expect(exit::USAGE);
    let a = std::fs::read_to_string(rd.join("preflight.json")).unwrap();
    let b = std::fs::read_to_string(&rf).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.trim(), r.stdout.trim());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&rf).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
