//! A throwaway PostgreSQL for the tests. `just test` starts one with
//! `scripts/pg-ephemeral` and passes its URL in `SESSIONDB_TEST_ADMIN_URL`; without it,
//! the first test to need a server starts one under the target folder (shared by every
//! test process, guarded by a lock file) and leaves it running for the next.
//! Each test gets its own database, dropped on success and kept on failure.

use std::path::{Path, PathBuf};
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
    start_cluster(&dir, None, || {})
}

/// Start (or reuse) the cluster in `dir`, under a lock file shared by every test
/// process; `prepare` runs under the lock first. `ssl`: the folder with server.crt/.key.
fn start_cluster(dir: &Path, ssl: Option<&Path>, prepare: impl FnOnce()) -> String {
    std::fs::create_dir_all(dir).unwrap();
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
    prepare();
    let mut cmd = Command::new(repo().join("scripts/pg-ephemeral"));
    cmd.arg("start").arg(dir).env("PG_EPHEMERAL_FAST", "1");
    if let Some(certs) = ssl {
        cmd.env("PG_EPHEMERAL_SSL_DIR", certs);
    }
    let out = cmd.output().expect("run scripts/pg-ephemeral");
    drop(lock);
    assert!(
        out.status.success(),
        "cannot start the test PostgreSQL in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The second, dedicated cluster of the TLS tests, with `ssl = on` (the shared one
/// has no SSL): its superuser URL and the folder of the certificates it was started
/// with — `ca.crt`, the CA that signed its certificate (for `localhost` and
/// `127.0.0.1`), and `other-ca.crt`, an unrelated CA.
pub struct SslCluster {
    pub admin_url: String,
    pub certs: PathBuf,
}

pub fn ssl_cluster() -> &'static SslCluster {
    static SSL: OnceLock<SslCluster> = OnceLock::new();
    SSL.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.join("test-pg-ssl");
        let certs = tmp.join("test-pg-ssl-certs");
        let admin_url = start_cluster(&dir, Some(&certs), || {
            if !certs.join("ca.crt").exists() {
                make_certs(&certs);
                // A cluster left running by an earlier run serves the old certificate.
                let _ = Command::new(repo().join("scripts/pg-ephemeral"))
                    .arg("stop")
                    .arg(&dir)
                    .output();
            }
        });
        SslCluster { admin_url, certs }
    })
}

/// The test PKI, made in-process: a CA, a server certificate it signs (DNS
/// `localhost`, IP `127.0.0.1`) and its key, and an unrelated CA. `ca.crt` is written
/// last: the folder is complete once it exists.
fn make_certs(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(p, key))
    };
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let (ca_pem, issuer) = ca("sessiondb test CA");
    let (other_pem, _) = ca("an unrelated CA");
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = p.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(dir.join("server.key"))
            .unwrap();
        f.write_all(key.serialize_pem().as_bytes()).unwrap();
    }
    std::fs::write(dir.join("other-ca.crt"), other_pem).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_pem).unwrap();
}

pub fn admin() -> postgres::Client {
    postgres::Client::connect(admin_url(), postgres::NoTls).expect("connect to the test cluster")
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
    /// The superuser URL of its cluster.
    admin: String,
}

impl TestDb {
    pub fn new(label: &str) -> TestDb {
        TestDb::on(admin_url(), label)
    }

    /// A database of its own on the cluster of `admin` (a superuser URL).
    pub fn on(admin: &str, label: &str) -> TestDb {
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
        postgres::Client::connect(admin, postgres::NoTls)
            .expect("connect to the test cluster")
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create test database");
        let (head, _) = admin.rsplit_once('/').expect("url has a database");
        TestDb {
            url: format!("{head}/{name}"),
            name,
            admin: admin.to_owned(),
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
        if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A login role of the test cluster (roles are the cluster's, not a database's), dropped
/// with the test. Declare it before the [`TestDb`] it owns objects in: locals drop in
/// reverse order, so the database goes first and the role can then be dropped.
pub struct Role {
    pub name: String,
    pub password: String,
}

impl Role {
    pub fn new(label: &str) -> Role {
        Role::with(label, "")
    }

    /// A role with extra attributes (`SUPERUSER`, ...).
    pub fn with(label: &str, attributes: &str) -> Role {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let r = Role {
            name: format!("{label}_{suffix}"),
            password: format!("pw-{suffix}-role"),
        };
        admin()
            .batch_execute(&format!(
                "CREATE ROLE \"{}\" LOGIN {attributes} PASSWORD '{}'",
                r.name, r.password
            ))
            .unwrap();
        r
    }

    /// The URL of `db` as this role.
    pub fn url(&self, db: &TestDb) -> String {
        let admin = format!("postgres:{}@", password());
        assert!(db.url.contains(&admin));
        db.url
            .replace(&admin, &format!("{}:{}@", self.name, self.password))
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(admin_url(), postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS \"{}\"", self.name));
        }
    }
}
