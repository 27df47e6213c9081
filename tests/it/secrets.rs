//! No output of any command ever contains a password: stdout, stderr, and every file
//! the commands write (reports, lists, backups), on passing and failing runs.

use std::path::Path;

use sessiondb::exit;

use crate::support::store::Store;
use crate::support::{Run, pg, sessiondb};

fn scan_tree(root: &Path, secret: &str, skip: &dyn Fn(&Path) -> bool) {
    for e in walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
    {
        if e.file_type().is_file() && !skip(e.path()) {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the password appears in {}",
                e.path().display()
            );
        }
    }
}

fn clean(r: &Run, secret: &str, what: &str) {
    assert!(
        !r.stdout.contains(secret),
        "{what}: password in stdout:\n{}",
        r.stdout
    );
    assert!(
        !r.stderr.contains(secret),
        "{what}: password in stderr:\n{}",
        r.stderr
    );
}

#[test]
fn no_command_prints_the_password() {
    let s = Store::new();
    s.session("a", r#"{"x": 1}"#);
    s.session("b", r#"{"x": "\u0000"}"#);
    let db = pg::TestDb::new("secrets");
    let secret = pg::password();
    assert!(secret.len() >= 8, "the test cluster has a real password");
    let reports = s.root().join("reports");
    let run = |args: &[&str], url: &str| -> Run {
        let r = sessiondb(args)
            .config(&s.config)
            .env("DATABASE_URL", url)
            .arg("--report-dir")
            .arg(&reports)
            .run();
        clean(&r, &secret, &args.join(" "));
        r
    };
    let url = db.url.clone();
    // Passing and failing runs of every command.
    for args in [
        &["check"][..],
        &["check", "--backend", "postgres"],
        &["preflight"],
        &["preflight", "--quarantine"],
        &["backup"],
        &["backup", "--dry-run"],
        &["migrate-state"],
        &["migrate-state", "--dry-run=false"],
        &["migrate-state", "--dry-run=false", "--quarantine"],
        &["verify"],
        &["set-default"],
        &["set-default", "--dry-run=false"],
        &["set-default", "--dry-run=false", "--force"],
        &["rollback"],
        &["rollback", "--dry-run=false"],
        &["migrate", "to", "postgres"],
    ] {
        run(args, &url);
    }
    // A wrong password and an unreachable server, in URL and keyword forms.
    let wrong = url.replace(&secret, "WrongPassw0rd!");
    let r = run(&["check", "--backend", "postgres"], &wrong);
    assert!(!r.stdout.contains("WrongPassw0rd!") && !r.stderr.contains("WrongPassw0rd!"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("postgresql://u:{secret}@127.0.0.1:{port}/x");
    for args in [
        &["preflight"][..],
        &["migrate-state", "--dry-run=false"],
        &["verify"],
        &["rollback"],
    ] {
        let r = run(args, &down);
        assert_ne!(r.code, exit::OK);
    }
    let kw = format!("host=127.0.0.1 port={port} user=u password={secret} dbname=x");
    run(&["check", "--backend", "postgres"], &kw);
    scan_tree(s.root(), &secret, &|_| false);
    crate::faults::row(
        "password in DATABASE_URL (URL and keyword forms)",
        "every command, passing and failing",
        "0 secrets found",
        "stdout, stderr, every file written",
    );
}

#[test]
fn a_password_in_the_config_file_is_warned_and_never_printed() {
    let s = Store::new();
    s.session("a", r#"{"x": 1}"#);
    let db = pg::TestDb::new("secrets_file");
    let secret = pg::password();
    s.write_config("sqlite", &format!("\n[postgres]\nurl = \"{}\"\n", db.url));
    let r = sessiondb(&["preflight"]).config(&s.config).run();
    clean(&r, &secret, "preflight");
    assert!(r.has_warning("secret_in_config"), "{}", r.stdout);
    let r = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .expect(exit::OK);
    clean(&r, &secret, "migrate-state");
    // The backup copies the config file as it is (a secret at rest, warned); nothing else holds it.
    scan_tree(s.root(), &secret, &|p| {
        p == s.config || p.ends_with("config/sessiondb.toml")
    });
}

/// A password in a config file that other users can read: the warning says who can read
/// it and gives the fix (`chmod 600 FILE`); once the file is the owner's alone, it is the
/// plain secret-at-rest warning.
#[test]
fn a_password_in_a_config_file_others_can_read_is_warned_with_chmod_600() {
    use std::os::unix::fs::PermissionsExt;
    let s = Store::new();
    s.session("a", r#"{"x": 1}"#);
    let db = pg::TestDb::new("secrets_mode");
    s.write_config("sqlite", &format!("\n[postgres]\nurl = \"{}\"\n", db.url));
    let secret_warning = |mode: u32| {
        std::fs::set_permissions(&s.config, std::fs::Permissions::from_mode(mode)).unwrap();
        let r = sessiondb(&["check", "--backend", "sqlite"])
            .config(&s.config)
            .expect(sessiondb::exit::OK);
        clean(&r, &pg::password(), "check");
        r.report
            .warnings
            .iter()
            .find(|w| w.code == "secret_in_config")
            .unwrap_or_else(|| panic!("no secret_in_config: {}", r.stdout))
            .clone()
    };
    let w = secret_warning(0o644);
    let path = s.config.display().to_string();
    assert!(
        w.message
            .contains("mode 0644: every user of this machine can read it")
            && w.message.contains(&format!("`chmod 600 {path}`")),
        "{}",
        w.message
    );
    assert_eq!(w.path.as_deref(), Some(path.as_str()));
    let w = secret_warning(0o600);
    assert!(
        !w.message.contains("chmod") && w.message.contains("a secret at rest"),
        "{}",
        w.message
    );
}
