//! TLS with libpq's `sslmode`, against a dedicated cluster with `ssl = on` (its
//! certificate signed by a test CA, for `localhost` and `127.0.0.1`): verify-full and
//! verify-ca connect encrypted, a wrong CA and a wrong host name fail as `tls_failed`
//! naming what is wrong, `require` refuses a server without SSL, and the runtime
//! store's pool goes over TLS too. No output holds the password.

use std::collections::HashMap;
use std::path::PathBuf;

use sessiondb::config::{Config, Env};
use sessiondb::exit;
use sessiondb::store::{self, NewSession};

use crate::support::pg::{self, SslCluster, TestDb};
use crate::support::store::Store;
use crate::support::{Run, TempDir, sessiondb};

fn cluster() -> &'static SslCluster {
    pg::ssl_cluster()
}

fn ca() -> PathBuf {
    cluster().certs.join("ca.crt")
}

fn other_ca() -> PathBuf {
    cluster().certs.join("other-ca.crt")
}

/// The superuser's password on the SSL cluster.
fn password() -> String {
    let u = &cluster().admin_url;
    let userinfo = u["postgresql://".len()..].split('@').next().unwrap();
    userinfo.split_once(':').unwrap().1.to_owned()
}

/// `db`'s URL with `query` appended.
fn url(db: &TestDb, query: &str) -> String {
    format!("{}?{query}", db.url)
}

/// `db`'s URL reached by another host name: `host` is what TLS checks, the connection
/// goes to 127.0.0.1 (`hostaddr`), so no name has to resolve.
fn url_as_host(db: &TestDb, host: &str, query: &str) -> String {
    let after = db.url.split_once('@').unwrap().1; // 127.0.0.1:PORT/db
    let (hostport, dbname) = after.split_once('/').unwrap();
    let port = hostport.rsplit_once(':').unwrap().1;
    format!(
        "postgresql://postgres:{}@{host}:{port}/{dbname}?hostaddr=127.0.0.1&{query}",
        password()
    )
}

fn no_password(r: &Run, pw: &str) {
    assert!(
        !r.stdout.contains(pw) && !r.stderr.contains(pw),
        "the password leaked:\n{}\n{}",
        r.stdout,
        r.stderr
    );
}

fn check(database_url: &str, code: i32) -> Run {
    let d = TempDir::new();
    let r = sessiondb(&["check", "--backend", "postgres"])
        .cwd(d.path())
        .env("HOME", d.path())
        .env("DATABASE_URL", database_url)
        .expect(code);
    no_password(&r, &password());
    r
}

/// The TLS protocol the server reports for the check's session (`pg_stat_ssl`).
fn session_tls(r: &Run) -> Option<String> {
    r.check("postgres_connectivity").details["tls"]
        .as_str()
        .map(str::to_owned)
}

fn error_message(r: &Run, code: &str) -> String {
    r.report
        .errors
        .iter()
        .find(|e| e.code == code)
        .unwrap_or_else(|| panic!("no error {code}: {}", r.stdout))
        .message
        .clone()
}

#[test]
fn tls_verify_full_with_the_right_ca_connects_encrypted() {
    let db = TestDb::on(&cluster().admin_url, "tls_full");
    let ca = ca();
    // By IP address (the certificate's IP SAN).
    let r = check(
        &url(
            &db,
            &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
        ),
        0,
    );
    let c = r.check("postgres_connectivity");
    assert_eq!(c.details["sslmode"], "verify-full", "{}", r.stdout);
    assert!(
        session_tls(&r).is_some_and(|v| v.starts_with("TLSv1.")),
        "the server says the session is not encrypted: {}",
        r.stdout
    );
    // By DNS name (the certificate's DNS SAN), in libpq's keyword form.
    let port = db
        .url
        .rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap();
    let kw = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user=postgres password={} dbname={} sslmode=verify-full sslrootcert='{}'",
        password(),
        db.name,
        ca.display()
    );
    let r = check(&kw, 0);
    assert!(session_tls(&r).is_some(), "{}", r.stdout);

    // A real load over verify-full; channel_binding=require makes the login
    // SCRAM-SHA-256-PLUS, which the server accepts only if our certificate hash matches.
    let s = Store::new();
    for i in 0..3 {
        s.session(&format!("s{i}"), &format!("{{\"n\": {i}}}"));
    }
    let r = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("HOME", s.root())
        .env(
            "DATABASE_URL",
            url(
                &db,
                &format!(
                    "sslmode=verify-full&sslrootcert={}&channel_binding=require",
                    ca.display()
                ),
            ),
        )
        .expect(exit::OK);
    no_password(&r, &password());
    assert_eq!(r.count("inserted"), 3);
    let n: i64 = db
        .client()
        .query_one("SELECT count(*) FROM session_state", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

#[test]
fn tls_wrong_ca_fails_as_tls_failed_naming_the_ca_file() {
    let db = TestDb::on(&cluster().admin_url, "tls_wrong_ca");
    let other = other_ca();
    let bad = url(
        &db,
        &format!("sslmode=verify-full&sslrootcert={}", other.display()),
    );
    let r = check(&bad, 1);
    let m = error_message(&r, "tls_failed");
    assert!(
        m.contains(&format!(
            "the server's certificate is not signed by the CA in {}",
            other.display()
        )),
        "{m}"
    );
    assert!(m.contains("sslmode=verify-full"), "{m}");
    assert!(
        m.contains("postgresql://postgres:***@127.0.0.1:"),
        "the message names the redacted target: {m}"
    );
    assert!(
        !m.contains("panicked") && !m.contains("stack backtrace"),
        "{m}"
    );

    // A writing step ends with the exit code of an unreachable server.
    let s = Store::new();
    s.session("a", "{}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = sessiondb(&["migrate-state"])
        .config(&s.config)
        .env(
            "DATABASE_URL",
            format!("postgresql://app:Sup3rS3cret!@127.0.0.1:{port}/app"),
        )
        .run();
    assert!(
        unreachable.has_error("postgres_unreachable"),
        "{}",
        unreachable.stdout
    );
    let r = sessiondb(&["migrate-state"])
        .config(&s.config)
        .env("DATABASE_URL", &bad)
        .expect(unreachable.code);
    assert_ne!(r.code, exit::OK);
    assert!(r.has_error("tls_failed"), "{}", r.stdout);
    no_password(&r, &password());
    assert!(
        r.stderr.contains(&other.display().to_string()),
        "{}",
        r.stderr
    );
}

#[test]
fn tls_verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let db = TestDb::on(&cluster().admin_url, "tls_name");
    let q = |mode: &str| format!("sslmode={mode}&sslrootcert={}", ca().display());
    let r = check(&url_as_host(&db, "wrong-name.test", &q("verify-full")), 1);
    let m = error_message(&r, "tls_failed");
    assert!(
        m.contains("the server's certificate is not valid for host wrong-name.test"),
        "{m}"
    );
    assert!(m.contains("localhost") && m.contains("127.0.0.1"), "{m}");

    // The same certificate and name under verify-ca: the chain is enough. From the
    // variables this time (PGSSLMODE, PGSSLROOTCERT).
    let d = TempDir::new();
    let r = sessiondb(&["check", "--backend", "postgres"])
        .cwd(d.path())
        .env("HOME", d.path())
        .env(
            "DATABASE_URL",
            url_as_host(&db, "wrong-name.test", "application_name=tls_test"),
        )
        .env("PGSSLMODE", "verify-ca")
        .env("PGSSLROOTCERT", ca())
        .expect(exit::OK);
    assert_eq!(
        r.check("postgres_connectivity").details["sslmode"],
        "verify-ca"
    );
    assert!(session_tls(&r).is_some(), "{}", r.stdout);

    // require with a root certificate file is verify-ca, as in libpq: the wrong CA fails.
    let r = check(
        &url(
            &db,
            &format!("sslmode=require&sslrootcert={}", other_ca().display()),
        ),
        1,
    );
    assert!(
        error_message(&r, "tls_failed").contains("not signed by the CA"),
        "{}",
        r.stdout
    );
    // ...and without one, require encrypts without checking.
    let r = check(&url(&db, "sslmode=require"), 0);
    assert!(session_tls(&r).is_some(), "{}", r.stdout);
}

#[test]
fn tls_require_against_a_server_without_ssl_fails_clearly() {
    // The shared cluster has no SSL.
    let db = TestDb::new("tls_nossl");
    let pw = pg::password();
    for mode in ["require", "verify-full"] {
        let d = TempDir::new();
        let r = sessiondb(&["check", "--backend", "postgres"])
            .cwd(d.path())
            .env("HOME", d.path())
            .env(
                "DATABASE_URL",
                url(
                    &db,
                    &format!("sslmode={mode}&sslrootcert={}", ca().display()),
                ),
            )
            .expect(exit::PROBLEMS);
        let m = error_message(&r, "tls_failed");
        assert!(m.contains("the server does not support SSL"), "{m}");
        assert!(m.contains(&format!("sslmode={mode}")), "{m}");
        no_password(&r, &pw);
    }
    // prefer (the default) speaks plain text to it.
    let d = TempDir::new();
    let r = sessiondb(&["check", "--backend", "postgres"])
        .cwd(d.path())
        .env("HOME", d.path())
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(
        r.check("postgres_connectivity").details["sslmode"],
        "prefer"
    );
    assert_eq!(session_tls(&r), None, "{}", r.stdout);
}

#[test]
fn tls_verify_without_a_root_certificate_names_the_path_it_looked_for() {
    let db = TestDb::on(&cluster().admin_url, "tls_noroot");
    // No sslrootcert: libpq's default under $HOME (the check sets HOME to its folder).
    let d = TempDir::new();
    let r = sessiondb(&["check", "--backend", "postgres"])
        .cwd(d.path())
        .env("HOME", d.path())
        .env("DATABASE_URL", url(&db, "sslmode=verify-full"))
        .expect(exit::PROBLEMS);
    let m = error_message(&r, "config_invalid");
    let default = d.path().join(".postgresql/root.crt");
    assert!(
        m.contains(&format!(
            "{} (from the default ~/.postgresql/root.crt) does not exist",
            default.display()
        )),
        "{m}"
    );
    assert!(
        m.contains("sslrootcert") && m.contains("PGSSLROOTCERT"),
        "{m}"
    );
    // An unknown mode is a configuration error naming where it came from.
    let s = Store::new();
    let r = sessiondb(&["migrate-state"])
        .config(&s.config)
        .env("DATABASE_URL", url(&db, "sslmode=verify"))
        .expect(exit::USAGE);
    let m = error_message(&r, "config_invalid");
    assert!(
        m.contains("sslmode in $DATABASE_URL") && m.contains("\"verify\""),
        "{m}"
    );
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn tls_runtime_store_pool_connects_over_verify_full() {
    let db = TestDb::on(&cluster().admin_url, "tls_store");
    let legacy = Store::new();
    legacy.write_config("postgres", "");
    let env_with = |ca: &PathBuf| {
        Env(HashMap::from([
            (
                "DATABASE_URL".to_owned(),
                url(
                    &db,
                    &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
                ),
            ),
            ("HOME".to_owned(), legacy.root().display().to_string()),
        ]))
    };
    let env = env_with(&ca());
    let cfg = Config::load(Some(&legacy.config), &env).unwrap();
    rt().block_on(async {
        let s = store::open(&cfg, &env).await.unwrap();
        s.create(NewSession {
            id: Some("over-tls".into()),
            state: Some(serde_json::json!({"step": 1}).into()),
            ..NewSession::default()
        })
        .await
        .unwrap();
        assert!(s.get("over-tls").await.unwrap().is_some());
        // The pool's connections, as the server sees them: every one encrypted.
        let (n, all_ssl): (i64, Option<bool>) = {
            let name = db.name.clone();
            let admin = cluster().admin_url.clone();
            tokio::task::spawn_blocking(move || {
                let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
                let r = c
                    .query_one(
                        "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s
                           JOIN pg_stat_activity a ON a.pid = s.pid
                          WHERE a.datname = $1",
                        &[&name],
                    )
                    .unwrap();
                (r.get(0), r.get(1))
            })
            .await
            .unwrap()
        };
        assert!(n >= 1, "no pool connection on {}", db.name);
        assert_eq!(all_ssl, Some(true), "a pool connection is not encrypted");
        s.close().await.unwrap();

        // The wrong CA: the store does not open, and says why.
        let env = env_with(&other_ca());
        let e = match store::open(&cfg, &env).await {
            Ok(_) => panic!("opened with the wrong CA"),
            Err(e) => e,
        };
        assert_eq!(e.code(), "tls_failed", "{e}");
        let m = e.to_string();
        assert!(m.contains("not signed by the CA"), "{m}");
        assert!(!m.contains(&password()), "{m}");
    });
}
