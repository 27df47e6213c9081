//! What each run did, in the target's bookkeeping tables: the writing runs
//! (`sessiondb_runs`), the verifications `set-default` stands on
//! (`sessiondb_verifications`) and the cutovers and rollbacks (`sessiondb_cutovers`),
//! each read into a type of its own.

use std::path::Path;

use postgres::GenericClient;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::pg::{qualified, schema::table_exists};

const RUNS: &str = "sessiondb_runs";
const VERIFICATIONS: &str = "sessiondb_verifications";
const CUTOVERS: &str = "sessiondb_cutovers";

/// A writing run as it starts: who runs it, on which source, standing on which backup.
pub struct RunStart<'a> {
    pub run_id: &'a uuid::Uuid,
    pub step: &'a str,
    pub source_fingerprint: &'a str,
    pub backup: &'a Path,
}

/// The machine's name, for the run record.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn record_start(c: &mut impl GenericClient, schema: &str, run: &RunStart<'_>) -> Result<()> {
    c.execute(
        &format!(
            "INSERT INTO {} (run_id, step, host, pid, tool_version, source_fingerprint, backup) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            qualified(schema, RUNS)
        ),
        &[run.run_id, &run.step, &hostname(), &(std::process::id() as i32), &env!("CARGO_PKG_VERSION"), &run.source_fingerprint, &run.backup.display().to_string()],
    )
    .map_err(|e| Error::pg("recording the run", "", e))?;
    Ok(())
}

/// The run's end: `done` or `failed`, with its counts.
pub fn record_end(
    c: &mut impl GenericClient,
    schema: &str,
    run: &uuid::Uuid,
    status: &str,
    counts: &impl Serialize,
) -> Result<()> {
    let counts = serde_json::to_value(counts).unwrap_or_default();
    c.execute(
        &format!(
            "UPDATE {} SET finished_at = pg_catalog.now(), status = $2, counts = $3 WHERE run_id = $1",
            qualified(schema, RUNS)
        ),
        &[run, &status, &counts],
    )
    .map_err(|e| Error::pg("recording the run", "", e))?;
    Ok(())
}

/// A recorded verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub run_id: uuid::Uuid,
    pub source_fingerprint: String,
    pub passed: bool,
}

/// Record a verify run: `passed` only for a full verify that found nothing.
pub fn record_verification(
    c: &mut impl GenericClient,
    schema: &str,
    v: &Verification,
    sample: Option<u64>,
    counts: &impl Serialize,
) -> Result<()> {
    c.execute(
        &format!(
            "INSERT INTO {} (run_id, source_fingerprint, passed, sample, counts) VALUES ($1, $2, $3, $4, $5)",
            qualified(schema, VERIFICATIONS)
        ),
        &[&v.run_id, &v.source_fingerprint, &v.passed, &sample.map(|n| n as i32), &serde_json::to_value(counts).unwrap_or_default()],
    )
    .map_err(|e| Error::pg("recording the verification", "", e))?;
    Ok(())
}

/// The newest verification, if any was recorded.
pub fn latest_verification(
    c: &mut impl GenericClient,
    schema: &str,
) -> Result<Option<Verification>> {
    if !table_exists(c, schema, VERIFICATIONS)? {
        return Ok(None);
    }
    let rows = c
        .query(
            &format!(
                "SELECT run_id, source_fingerprint, passed FROM {} ORDER BY verified_at DESC LIMIT 1",
                qualified(schema, VERIFICATIONS)
            ),
            &[],
        )
        .map_err(|e| Error::pg("reading verifications", "", e))?;
    Ok(rows.first().map(|r| Verification {
        run_id: r.get(0),
        source_fingerprint: r.get(1),
        passed: r.get(2),
    }))
}

/// The kind of a cutover record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SetDefault,
    Rollback,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::SetDefault => "set_default",
            Kind::Rollback => "rollback",
        }
    }
}

/// A recorded cutover or rollback.
#[derive(Debug, Clone, Serialize)]
pub struct Cutover {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub kind: String,
    pub from_backend: String,
    pub to_backend: String,
    pub config_path: String,
}

/// A cutover or rollback to record, in the transaction of nothing else: the config
/// edit it records is already on disk.
pub struct NewCutover<'a> {
    pub kind: Kind,
    pub from: &'a str,
    pub to: &'a str,
    pub config_path: &'a Path,
    pub config_sha256: &'a str,
    pub verify_run: Option<uuid::Uuid>,
    pub run_id: &'a uuid::Uuid,
}

pub fn record_cutover(c: &mut impl GenericClient, schema: &str, n: &NewCutover<'_>) -> Result<()> {
    c.execute(
        &format!(
            "INSERT INTO {} (kind, from_backend, to_backend, config_path, config_sha256, verify_run_id, run_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            qualified(schema, CUTOVERS)
        ),
        &[&n.kind.as_str(), &n.from, &n.to, &n.config_path.display().to_string(), &n.config_sha256, &n.verify_run, n.run_id],
    )
    .map_err(|e| Error::pg("recording the cutover", "", e))?;
    Ok(())
}

/// The newest record of `kind`, if any.
pub fn latest_cutover(
    c: &mut impl GenericClient,
    schema: &str,
    kind: Kind,
) -> Result<Option<Cutover>> {
    if !table_exists(c, schema, CUTOVERS)? {
        return Ok(None);
    }
    let rows = c
        .query(
            &format!("SELECT id, at, kind, from_backend, to_backend, config_path FROM {} WHERE kind = $1 ORDER BY id DESC LIMIT 1", qualified(schema, CUTOVERS)),
            &[&kind.as_str()],
        )
        .map_err(|e| Error::pg("reading cutovers", "", e))?;
    Ok(rows.first().map(|r| Cutover {
        id: r.get(0),
        at: r.get(1),
        kind: r.get(2),
        from_backend: r.get(3),
        to_backend: r.get(4),
        config_path: r.get(5),
    }))
}
