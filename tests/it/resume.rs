//! A load killed at any moment, or cut off by a PostgreSQL restart, is finished by
//! running it again: exact counts, no duplicates, no half-written session.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sessiondb::exit;

use crate::support::store::Store;
use crate::support::{bin_path, pg, sessiondb};

fn assert_complete(url: &str, s: &Store, n: i64) {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let q = |c: &mut postgres::Client, sql: &str| -> i64 { c.query_one(sql, &[]).unwrap().get(0) };
    assert_eq!(q(&mut c, "SELECT count(*) FROM sessions"), n);
    assert_eq!(q(&mut c, "SELECT count(*) FROM session_state"), n);
    assert_eq!(
        q(
            &mut c,
            "SELECT count(*) FROM sessiondb_ledger WHERE status = 'migrated'"
        ),
        n
    );
    assert_eq!(
        q(
            &mut c,
            "SELECT count(*) FROM session_state WHERE (state->>'i')::int IS NULL"
        ),
        0,
        "no half-written state"
    );
    let v = sessiondb(&["verify"])
        .config(&s.config)
        .env("DATABASE_URL", url)
        .expect(exit::OK);
    assert_eq!(
        v.count("missing") + v.count("different") + v.count("extra"),
        0
    );
    let again = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", url)
        .expect(exit::OK);
    assert_eq!((again.count("inserted"), again.count("updated")), (0, 0));
}

#[test]
fn kill_dash_nine_at_random_moments_then_rerun_completes() {
    let n = 6000;
    let s = Store::new();
    s.bulk(n, 1500);
    let db = pg::TestDb::new("resume_kill");
    // Seeded by the clock, printed so a failure can be replayed.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill moments seed {seed}");
    let mut x = seed | 1;
    let mut kills = 0;
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let after = Duration::from_millis(150 + x % 1200);
        let mut child = Command::new(bin_path("migrate-state"))
            .args([
                "--dry-run=false",
                "--batch-size",
                "100",
                "--quiet",
                "--config",
            ])
            .arg(&s.config)
            .env("DATABASE_URL", &db.url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < after {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let _ = child.wait();
    }
    eprintln!("killed {kills} runs");
    let r = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &db.url)
        .expect(exit::OK);
    assert_eq!(
        r.count("inserted") + r.count("unchanged"),
        n as u64,
        "{}",
        r.stdout
    );
    assert_complete(&db.url, &s, n as i64);
    crate::faults::row(
        &format!("kill -9 at random moments ({kills} of 4 runs killed, {n} sessions)"),
        "migrate-state --dry-run=false",
        "rerun exit 0",
        &format!("{n} sessions, no duplicate, verify passes, second run changes nothing"),
    );
}

#[test]
fn postgres_restart_mid_load_then_rerun_completes() {
    let n = 6000;
    let s = Store::new();
    s.bulk(n, 1500);
    let dir = crate::support::TempDir::new();
    let pgdir = dir.path().join("pg");
    let out = Command::new(env!("CARGO_MANIFEST_DIR").to_owned() + "/scripts/pg-ephemeral")
        .arg("start")
        .arg(&pgdir)
        .env("PG_EPHEMERAL_FAST", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    struct Stop(std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new(env!("CARGO_MANIFEST_DIR").to_owned() + "/scripts/pg-ephemeral")
                .arg("stop")
                .arg(&self.0)
                .output();
        }
    }
    let _stop = Stop(pgdir.clone());
    let child = Command::new(bin_path("migrate-state"))
        .args(["--dry-run=false", "--batch-size", "100", "--config"])
        .arg(&s.config)
        .env("DATABASE_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Restart once some batches are committed.
    let t0 = Instant::now();
    loop {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let exists: bool = c
            .query_one("SELECT to_regclass('sessiondb_ledger') IS NOT NULL", &[])
            .unwrap()
            .get(0);
        let done: i64 = if exists {
            c.query_one("SELECT count(*) FROM sessiondb_ledger", &[])
                .unwrap()
                .get(0)
        } else {
            0
        };
        if done > 0 || t0.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pg_ctl = |args: &[&str]| {
        let bindir = String::from_utf8(
            Command::new("pg_config")
                .arg("--bindir")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_owned();
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(format!("{bindir}/pg_ctl"));
            c
        } else {
            Command::new(format!("{bindir}/pg_ctl"))
        };
        let st = cmd
            .arg("-D")
            .arg(pgdir.join("data"))
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    };
    pg_ctl(&["restart", "-m", "fast", "-w"]);
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().unwrap();
    let report: sessiondb::report::Report = serde_json::from_slice(&out.stdout).unwrap();
    if code != exit::OK {
        assert_eq!(
            code,
            exit::OPERATIONAL,
            "a lost connection is an operational failure: {report:?}"
        );
        assert!(!report.errors.is_empty());
    }
    let r = sessiondb(&["migrate-state", "--dry-run=false"])
        .config(&s.config)
        .env("DATABASE_URL", &url)
        .expect(exit::OK);
    assert_eq!(
        r.count("inserted") + r.count("unchanged"),
        n as u64,
        "{}",
        r.stdout
    );
    assert_complete(&url, &s, n as i64);
    crate::faults::row(
        "PostgreSQL restarted mid-load",
        "migrate-state --dry-run=false",
        &format!("exit {code}, rerun exit 0"),
        &format!("{n} sessions, verify passes"),
    );
}
