//! A throwaway PostgreSQL for the tests. `just test` starts one with
//! `scripts/pg-ephemeral` and passes its URL in `SESSIONDB_TEST_ADMIN_URL`; without it,
//! the first test to need a server starts one under the target folder (shared by every
//! test process, guarded by a lock file) and leaves it running for the next.
//! Each test gets its own database, dropped on success and kept on failure.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

static ADMIN_URL: OnceLock<String> = OnceLock::new();

/// The superuser URL of the test cluster (it holds a password).
pub fn admin_url() -> &'static str {
    ADMIN_URL.get_or_init(|| {
        if let Ok(u) = std::env::var("SESSIONDB_TEST_ADMIN_URL") {
            if !u.is_empty() {
                return u;
            }
        }
        start_shared_cluster()
    })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn start_shared_cluster() -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-pg");
    std::fs::create_dir_all(&dir).unwrap();
    let lock_path = dir.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let out = Command::new(repo().join("scripts/pg-ephemeral"))
        .arg("start")
        .arg(&dir)
        .env("PG_EPHEMERAL_FAST", "1")
        .output()
        .expect("run scripts/pg-ephemeral");
    drop(lock);
    assert!(
        out.status.success(),
        "cannot start the test PostgreSQL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn admin() -> postgres::Client {
    postgres::Client::connect(admin_url(), postgres::NoTls).expect("connect to the test cluster")
}

/// The URL of `db` on the test cluster, as the superuser.
pub fn url_for(db: &str) -> String {
    let base = admin_url();
    let (head, _) = base.rsplit_once('/').expect("url has a database");
    format!("{head}/{db}")
}

/// The password in the admin URL.
pub fn password() -> String {
    let u = admin_url();
    let after = &u["postgresql://".len()..];
    let userinfo = after.split('@').next().unwrap();
    userinfo
        .split_once(':')
        .map(|(_, p)| p.to_owned())
        .unwrap_or_default()
}

/// A database of its own for one test: dropped when the test passes, kept (and named on
/// stderr) when it fails.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn new(label: &str) -> TestDb {
        let clean: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!(
            "t_{}_{}",
            &clean[..clean.len().min(40)],
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        admin()
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create test database");
        TestDb {
            url: url_for(&name),
            name,
        }
    }
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept test database {} ({})", self.name, self.url);
            return;
        }
        if let Ok(mut c) = postgres::Client::connect(admin_url(), postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}
