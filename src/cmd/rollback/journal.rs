//! The rollback journal: how an export into the legacy store is either finished or
//! undone, whatever moment it is killed at.
//!
//! SQLite rows and state files cannot be written in one atomic step, so each round of
//! an export is written in this order, with a journal in the backup taken just before
//! (`<backup>/rollback/round-<n>.json`, 0600):
//!
//! 1. the journal, `prepared`: for each state file, the temporary name its new bytes
//!    go to, whether its `<id>/` folder is created, the SHA-256 of the file it replaces
//!    (and where the backup holds those bytes) and of its new content; each row;
//! 2. every new state file under its temporary name in its own folder, synced;
//! 3. the rows, in one SQLite transaction; before it commits, the digest of each row as
//!    written goes into the journal (`sealed`);
//! 4. the commit; then each temporary file renamed over `state.json` (atomic, synced);
//! 5. the journal `done`.
//!
//! Until the commit, the legacy store is untouched (only temporary files were added).
//! After it, everything needed to finish is on disk. A later rollback (or the failed
//! one itself, at once) reads an unfinished journal and decides from the facts: when
//! the rows are as the sealed journal says they were written, or a state file already
//! holds its new bytes in place of its temporary file, the commit happened and the
//! round is **rolled forward** (the remaining renames); otherwise it is **rolled back**
//! (the temporary files and the folders it created removed). Either way the journal
//! ends `done` or `undone`. A running rollback holds `rollback/LOCK` (an `flock`, which
//! the kernel drops when the process dies), so its journal is never taken for a dead
//! one.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::legacy;
use crate::error::{Error, Result};
use crate::source::write::{FileDigest, STATE_FILE, Sessions, Sync};

pub const DIR: &str = "rollback";
pub const FORMAT: &str = "sessiondb.rollback-journal/v1";
const LOCK: &str = "LOCK";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Temporary files may be being written; the rows are not committed.
    Prepared,
    /// The rows' digests are recorded: the transaction may have committed.
    Sealed,
    /// Every row and state file is in.
    Done,
    /// Nothing of it is in: temporary files and created folders removed.
    Undone,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JDigest {
    pub bytes: u64,
    pub sha256: String,
}

impl From<FileDigest> for JDigest {
    fn from(d: FileDigest) -> JDigest {
        JDigest {
            bytes: d.bytes,
            sha256: d.hex(),
        }
    }
}

impl JDigest {
    fn is(&self, d: Option<FileDigest>) -> bool {
        d.is_some_and(|d| d.bytes == self.bytes && d.hex() == self.sha256)
    }
}

/// A key value of a mapped row, with its SQLite storage class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JKey {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    /// Hex.
    Blob(String),
}

impl From<&rusqlite::types::Value> for JKey {
    fn from(v: &rusqlite::types::Value) -> JKey {
        use rusqlite::types::Value as V;
        match v {
            V::Null => JKey::Null,
            V::Integer(i) => JKey::Integer(*i),
            V::Real(f) => JKey::Real(*f),
            V::Text(t) => JKey::Text(t.clone()),
            V::Blob(b) => JKey::Blob(hex::encode(b)),
        }
    }
}

impl JKey {
    pub fn to_sql(&self) -> rusqlite::types::Value {
        use rusqlite::types::Value as V;
        match self {
            JKey::Null => V::Null,
            JKey::Integer(i) => V::Integer(*i),
            JKey::Real(f) => V::Real(*f),
            JKey::Text(t) => V::Text(t.clone()),
            JKey::Blob(h) => V::Blob(hex::decode(h).unwrap_or_default()),
        }
    }
}

/// One state file of a round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JFile {
    pub session: String,
    /// Its new bytes' name inside `<id>/` until the rename.
    pub temp: String,
    /// Whether `<id>/` is created by this round (removed again when it is undone).
    pub creates_folder: bool,
    /// The file it replaces (`None`: there was none).
    pub replaces: Option<JDigest>,
    /// Where the backup holds the bytes it replaces, relative to the backup folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_copy: Option<PathBuf>,
    pub new: JDigest,
}

/// One row of a round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JRow {
    pub session: String,
    pub insert: bool,
    /// A mapped store's row: its table (the sessions table too) and the key it is
    /// found by ([`legacy::mapped_digest`]); absent for SPEC §1's `sessions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Vec<(String, JKey)>>,
    /// The row's digest as written ([`legacy::row_digest`]), once sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub format: String,
    pub run_id: String,
    pub round: u32,
    pub state: State,
    pub created_at: String,
    pub updated_at: String,
    pub sqlite: PathBuf,
    pub sessions_dir: PathBuf,
    pub files: Vec<JFile>,
    pub rows: Vec<JRow>,
}

impl Journal {
    pub fn read(path: &Path) -> Result<Journal> {
        let f = File::open(path).map_err(|e| Error::Unreadable {
            path: path.to_path_buf(),
            source: e,
        })?;
        let j: Journal =
            serde_json::from_reader(io::BufReader::new(f)).map_err(|e| Error::Unreadable {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })?;
        if j.format != FORMAT {
            return Err(Error::Unreadable {
                path: path.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("format {:?}, expected {FORMAT:?}", j.format),
                ),
            });
        }
        Ok(j)
    }

    fn write(&mut self, path: &Path) -> Result<()> {
        self.updated_at = crate::report::now_rfc3339();
        crate::fsutil::write_atomic_with(path, 0o600, |w| {
            serde_json::to_writer_pretty(&mut *w, &*self).map_err(io::Error::other)?;
            w.write_all(b"\n")
        })
        .map_err(|e| Error::Write {
            path: path.to_path_buf(),
            source: e,
        })
    }
}

/// `flock` on `rollback/LOCK`: held by the run whose journals they are.
fn try_lock(dir: &Path, create: bool) -> Result<Option<File>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK);
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o600)
        .open(&path)
    {
        Ok(f) => f,
        // No lock file: nobody ever held it.
        Err(e) if !create && e.kind() == io::ErrorKind::NotFound => {
            return Ok(Some(File::open(dir).map_err(|e| Error::Unreadable {
                path: dir.to_path_buf(),
                source: e,
            })?));
        }
        Err(e) => return Err(Error::Write { path, source: e }),
    };
    // SAFETY: a valid descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(Error::Write { path, source: e });
    }
    Ok(Some(f))
}

/// A journal being written by this run.
pub struct Open {
    pub path: PathBuf,
    pub journal: Journal,
    _lock: File,
}

impl Open {
    /// Write the `prepared` journal of `round` into `backup`.
    pub fn create(backup: &Path, mut journal: Journal) -> Result<Open> {
        let dir = backup.join(DIR);
        crate::fsutil::create_private_dir_all(&dir).map_err(|e| Error::Write {
            path: dir.clone(),
            source: e,
        })?;
        let lock = try_lock(&dir, true)?.ok_or_else(|| Error::LockHeld {
            holder: format!("another rollback holds {}", dir.join(LOCK).display()),
            pid: None,
        })?;
        let path = dir.join(format!("round-{}.json", journal.round));
        journal.write(&path)?;
        Ok(Open {
            path,
            journal,
            _lock: lock,
        })
    }

    /// Record the rows' digests as written: from now on the transaction may commit.
    pub fn seal(&mut self, digests: Vec<String>) -> Result<()> {
        for (r, d) in self.journal.rows.iter_mut().zip(digests) {
            r.digest = Some(d);
        }
        self.journal.state = State::Sealed;
        self.journal.write(&self.path)?;
        crate::fault::kill_point("sealed", self.journal.round);
        Ok(())
    }

    pub fn set(&mut self, state: State) -> Result<()> {
        self.journal.state = state;
        self.journal.write(&self.path)
    }
}

/// The state of the journal at `path`.
fn read_state(path: &Path) -> Result<State> {
    #[derive(Deserialize)]
    struct Head {
        state: State,
    }
    let f = File::open(path).map_err(|e| Error::Unreadable {
        path: path.to_path_buf(),
        source: e,
    })?;
    let h: Head =
        serde_json::from_reader(io::BufReader::new(f)).map_err(|e| Error::Unreadable {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
    Ok(h.state)
}

/// Every journal under `backup_dir` that is neither done nor undone, oldest first.
pub fn unfinished(backup_dir: &Path) -> Result<Vec<(PathBuf, Journal)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(backup_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(Error::Unreadable {
                path: backup_dir.to_path_buf(),
                source: e,
            });
        }
    };
    for e in rd.flatten() {
        let dir = e.path().join(DIR);
        let Ok(inner) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in inner.flatten() {
            let name = f.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with("round-") && name.ends_with(".json")) {
                continue;
            }
            // Most journals are done: only their state is read (the file lists are
            // skipped, not built).
            if !matches!(read_state(&f.path())?, State::Prepared | State::Sealed) {
                continue;
            }
            out.push((f.path(), Journal::read(&f.path())?));
        }
    }
    out.sort_by(|a, b| (&a.1.created_at, a.1.round).cmp(&(&b.1.created_at, b.1.round)));
    Ok(out)
}

/// What the next run does with an unfinished journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The rows committed: the remaining state files are renamed into place.
    RollForward,
    /// The rows did not commit: the temporary files and created folders are removed.
    RollBack,
    /// Its rollback still runs (it holds the journal's lock): left alone.
    Running,
}

/// An unfinished journal, and what is (or would be) done with it.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub journal: PathBuf,
    pub run_id: String,
    pub round: u32,
    pub action: Action,
    /// State files already in place / still to rename (roll forward), or temporary
    /// files to remove (roll back).
    pub files: usize,
    pub rows: usize,
    /// Whether it was carried out (false in a dry run).
    pub done: bool,
}

fn conflict(j: &Path, message: String) -> Error {
    Error::JournalConflict {
        message: format!(
            "{}: {message}; the legacy store is left as it is: compare it with the journal and the backup beside it, then move the journal away to go on",
            j.display()
        ),
    }
}

/// Decide what to do with journal `j`, read-only.
pub fn decide(path: &Path, j: &Journal) -> Result<Action> {
    let lock_dir = path.parent().unwrap_or(Path::new("."));
    if try_lock(lock_dir, false)?.is_none() {
        return Ok(Action::Running);
    }
    decide_unlocked(path, j)
}

fn decide_unlocked(path: &Path, j: &Journal) -> Result<Action> {
    if j.state == State::Prepared {
        return Ok(Action::RollBack);
    }
    let sessions = Sessions::open(&j.sessions_dir)?;
    let conn = crate::source::sqlite::open(&j.sqlite)?;
    let committed = rows_as_sealed(&conn, &j.sqlite, j)?;
    let mut installed_any = false;
    let mut missing = Vec::new();
    for f in &j.files {
        let now = sessions.digest(&f.session, STATE_FILE)?;
        let temp = sessions.digest(&f.session, &f.temp)?;
        let in_place = f.new.is(now);
        if in_place && temp.is_none() && f.replaces.as_ref() != Some(&f.new) {
            installed_any = true;
        }
        if !in_place && !f.new.is(temp) {
            missing.push(f.session.clone());
        }
    }
    if !(committed || installed_any) {
        return Ok(Action::RollBack);
    }
    if let Some(first) = missing.first() {
        return Err(conflict(
            path,
            format!(
                "its rows committed, but {} state file(s) hold neither their new bytes nor a complete temporary file (e.g. session {first:?})",
                missing.len()
            ),
        ));
    }
    Ok(Action::RollForward)
}

fn rows_as_sealed(conn: &Connection, db: &Path, j: &Journal) -> Result<bool> {
    for r in &j.rows {
        let Some(want) = &r.digest else {
            return Ok(false);
        };
        let now = match (&r.table, &r.key) {
            (Some(t), Some(k)) => {
                let key: Vec<(String, rusqlite::types::Value)> =
                    k.iter().map(|(c, v)| (c.clone(), v.to_sql())).collect();
                legacy::mapped_digest(conn, db, t, &key)?
            }
            _ => legacy::row_digest(conn, db, &r.session)?,
        };
        if now != *want {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Finish or undo journal `path` (holding its lock, or being the run that holds it).
pub fn recover(path: &Path, j: &mut Journal, lock_held: bool) -> Result<Recovery> {
    let lock_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let _lock = if lock_held {
        None
    } else {
        match try_lock(&lock_dir, false)? {
            Some(l) => Some(l),
            None => {
                return Ok(Recovery {
                    journal: path.to_path_buf(),
                    run_id: j.run_id.clone(),
                    round: j.round,
                    action: Action::Running,
                    files: 0,
                    rows: 0,
                    done: false,
                });
            }
        }
    };
    let action = decide_unlocked(path, j)?;
    let sessions = Sessions::open(&j.sessions_dir)?;
    let mut files = 0;
    match action {
        Action::RollForward => {
            for f in &j.files {
                if !f.new.is(sessions.digest(&f.session, STATE_FILE)?) {
                    sessions.install(&f.session, &f.temp, Sync::Later)?;
                    files += 1;
                } else {
                    sessions.discard(&f.session, &f.temp, false)?;
                }
            }
            sessions.sync()?;
            j.state = State::Done;
        }
        Action::RollBack => {
            for f in &j.files {
                sessions.discard(&f.session, &f.temp, f.creates_folder)?;
                files += 1;
            }
            sessions.sync()?;
            j.state = State::Undone;
        }
        Action::Running => unreachable!("the lock is held here"),
    }
    j.write(path)?;
    Ok(Recovery {
        journal: path.to_path_buf(),
        run_id: j.run_id.clone(),
        round: j.round,
        action,
        files,
        rows: j.rows.len(),
        done: true,
    })
}

/// What a dry run reports of journal `path`.
pub fn describe(path: &Path, j: &Journal) -> Result<Recovery> {
    let action = decide(path, j)?;
    Ok(Recovery {
        journal: path.to_path_buf(),
        run_id: j.run_id.clone(),
        round: j.round,
        action,
        files: j.files.len(),
        rows: j.rows.len(),
        done: false,
    })
}
