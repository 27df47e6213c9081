//! The writers' advisory lock (SPEC §2: one writer at a time). A real run takes it on a
//! dedicated connection before the reads that decide what it writes, and holds it to
//! its end; a dry run looks at it at the same point and refuses the same way while
//! another writer holds it, without taking it (a dry run must not stop a real one).

use postgres::Client;

use super::connect;
use crate::config::Target;
use crate::error::{Error, Result};

/// The advisory lock key of writers on this schema.
pub fn lock_key(schema: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("sessiondb-writer:{schema}").as_bytes());
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Who holds the writers' lock: its PostgreSQL backend pid, and a sentence naming the
/// pid, the role, the application (a sessiondb run carries its run id there), the client
/// host and since when.
#[derive(Debug, Clone)]
pub struct Holder {
    pub pid: i32,
    pub text: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Who holds the writers' lock ([`Holder`]). Advisory locks belong to one database: a
/// writer on another database of the same server holds another lock. A role without
/// `pg_read_all_stats` sees only the pid and role of other roles' sessions; the
/// sentence then says so.
pub fn holder(c: &mut Client, schema: &str) -> Result<Option<Holder>> {
    let key = lock_key(schema);
    let classid = ((key as u64) >> 32) as u32 as i64;
    let objid = (key as u64 & 0xffff_ffff) as i64;
    let rows = c
        .query(
            "SELECT a.pid, a.usename::text, a.application_name,
                    coalesce(a.client_hostname, pg_catalog.host(a.client_addr), CASE WHEN a.backend_start IS NOT NULL THEN 'local socket' END),
                    pg_catalog.to_char(coalesce(a.xact_start, a.backend_start) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.database = (SELECT oid FROM pg_database WHERE datname = pg_catalog.current_database())
                AND l.classid::bigint = $1 AND l.objid::bigint = $2",
            &[&classid, &objid],
        )
        .map_err(|e| Error::pg("looking up the lock holder", "", e))?;
    Ok(rows.first().map(|r| {
        let pid: i32 = r.get(0);
        let role: Option<String> = r.get(1);
        let app: Option<String> = r.get(2);
        let host: Option<String> = r.get(3);
        let since: Option<String> = r.get(4);
        let role = role.unwrap_or_else(|| "?".into());
        let text = match (host, since) {
            (Some(host), Some(since)) => {
                let app = app.unwrap_or_default();
                let run = app
                    .strip_prefix("sessiondb:")
                    .map(|s| format!("sessiondb run {s}"))
                    .unwrap_or_else(|| format!("application_name {app:?}"));
                format!(
                    "PostgreSQL backend pid {pid} (role {role}), {run}, client {host}, connected since {since}"
                )
            }
            _ => format!(
                "PostgreSQL backend pid {pid} (role {role}; its application and client host are not visible to this role: pg_read_all_stats shows them)"
            ),
        };
        Holder { pid, text }
    }))
}

/// The writers' lock, held on a dedicated connection for the whole run and released
/// when dropped (or when the process dies: the server ends the session).
pub struct WriterLock {
    client: Client,
    key: i64,
}

impl WriterLock {
    /// Take the lock or fail at once with `lock_held`, naming the holder.
    pub fn acquire(t: &Target, schema: &str, run_id: &str) -> Result<WriterLock> {
        let mut cfg = t.clone();
        cfg.pg.application_name(&format!("sessiondb:{run_id}"));
        let mut client = connect(&cfg)?;
        let key = lock_key(schema);
        let got: bool = client
            .query_one(
                "SELECT pg_catalog.pg_try_advisory_lock($1::bigint)",
                &[&key],
            )
            .map_err(|e| Error::pg("taking the writer lock", &t.display, e))?
            .get(0);
        if !got {
            return Err(match holder(&mut client, schema)? {
                Some(h) => Error::LockHeld {
                    holder: h.text,
                    pid: Some(h.pid),
                },
                None => Error::LockHeld {
                    holder: "a session that just ended; retry".into(),
                    pid: None,
                },
            });
        }
        Ok(WriterLock { client, key })
    }

    /// Whether the lock's connection is still alive.
    pub fn alive(&mut self) -> bool {
        self.client.simple_query("SELECT 1").is_ok()
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let _ = self.client.execute(
            "SELECT pg_catalog.pg_advisory_unlock($1::bigint)",
            &[&self.key],
        );
    }
}

/// The lock as a step has it: held by a real run, seen free by a dry run.
pub enum Guard {
    Held(Box<WriterLock>),
    /// A dry run: the lock was free when the step looked.
    SeenFree,
}

impl Guard {
    /// Take the lock (`dry_run`: see that it is free), or fail with `lock_held`
    /// naming the holder, before any read that decides what to write.
    pub fn take(t: &Target, schema: &str, run_id: &str, dry_run: bool) -> Result<Guard> {
        // The lock first (no read decides anything before it); then every writer, dry
        // run or not, refuses a schema with planted code before it reads the schema.
        if !dry_run {
            let lock = WriterLock::acquire(t, schema, run_id)?;
            tracing::info!("holding the writers' lock for run {run_id}");
            crate::pg::trust::check(&mut connect(t)?, schema, &["sessions", "session_state"])?;
            return Ok(Guard::Held(Box::new(lock)));
        }
        let mut c = connect(t)?;
        match holder(&mut c, schema)? {
            Some(h) => Err(Error::LockHeld {
                holder: h.text,
                pid: Some(h.pid),
            }),
            None => {
                crate::pg::trust::check(&mut c, schema, &["sessions", "session_state"])?;
                Ok(Guard::SeenFree)
            }
        }
    }

    /// Whether the lock's connection is still alive (a dry run holds none).
    pub fn alive(&mut self) -> bool {
        match self {
            Guard::Held(l) => l.alive(),
            Guard::SeenFree => true,
        }
    }
}
