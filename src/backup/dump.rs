//! The JSON Lines dumps: `sessions.jsonl` (every resolved valid session, one a line) and
//! `invalid.jsonl` (every invalid record with its raw bytes in hex).
//!
//! They are resolved from the SQLite *copy* (plus the state files and the JSON store),
//! so that the dump and `sqlite/app.db` describe the same snapshot of a live database.
//! A session whose state comes from its state file names that file
//! (`state_file: "state/<id>/state.json"`, with the SHA-256 and size of the bytes it was
//! resolved from) instead of holding its text a second time: the backup holds those
//! bytes under that path. A state from the SQLite column or the JSON store is written
//! out (`state_text`, or `state_hex` for bytes that are not UTF-8).
//!
//! Each line carries the session's source stamp (`stamp`, the `s3:` of
//! [`crate::source::Reader::scan_with`]: its SQLite row's raw fields, its JSON store
//! record, its state file's inode, size, times and mode; none when a file changed in
//! the last two seconds). A backup taken against an earlier one carries the earlier
//! line of every session whose stamp has not moved, without reading its state file
//! again ([`Carry`]); the earlier dump is hashed as it is read and must match its
//! manifest, else the dump is resolved again from scratch.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::{Digest32, FileEntry};
use crate::error::{Error, Result};
use crate::report::Finding;
use crate::source::order::Entry;
use crate::source::{self, Item, Source, Summary, fields};

pub const SESSIONS_JSONL: &str = "sessions.jsonl";
pub const INVALID_JSONL: &str = "invalid.jsonl";
const SCAN_BATCH: usize = 1000;
/// Lines of the earlier dump read ahead, at most, to find one session's line.
const LOOKAHEAD: usize = 64;
/// Lines of the earlier dump held, at most, while they wait for their session.
const PENDING_MAX: usize = 8192;

/// What the dumps hold.
pub(super) struct Dumped {
    pub sessions: FileEntry,
    pub invalid: FileEntry,
    pub summary: Summary,
    /// The first invalid records (all are in `invalid.jsonl`).
    pub invalid_findings: Vec<Finding>,
    /// Lines carried over from the earlier dump.
    pub carried: u64,
}

/// The earlier backup's dump, and what its manifest says of it.
#[derive(Clone)]
pub(super) struct BaseDump {
    pub path: PathBuf,
    pub listed: FileEntry,
}

/// Write both dumps of `src` (whose database is the backup's copy) into `dir`. With
/// `base`, the sessions whose stamp has not moved are carried over from it; when the
/// earlier dump turns out not to match its manifest, everything is resolved again.
pub(super) fn write(dir: &Path, src: &Source, base: Option<BaseDump>) -> Result<Dumped> {
    let Some(base) = base else {
        return write_with(dir, src, None);
    };
    // An earlier dump that is not there as its manifest lists it is not read at all.
    let there =
        fs::symlink_metadata(&base.path).is_ok_and(|m| m.is_file() && m.len() == base.listed.bytes);
    if !there {
        tracing::warn!(
            "{} is not there as its manifest lists it: resolving every session again",
            base.path.display()
        );
        return write_with(dir, src, None);
    }
    let described = base.path.display().to_string();
    match write_with(dir, src, Some(base)) {
        Err(Error::BackupSelfCheck { message, .. }) if message.starts_with(BASE_DAMAGED) => {
            tracing::warn!("{message}: {described} not used; resolving every session again");
            for name in [SESSIONS_JSONL, INVALID_JSONL] {
                let p = dir.join(name);
                fs::remove_file(&p).map_err(|e| Error::Write { path: p, source: e })?;
            }
            write_with(dir, src, None)
        }
        other => other,
    }
}

/// Both dumps written from what the caller read of the store just before (`scanned`,
/// migrate-state's planning pass), instead of resolving the database copy again: the
/// lines a scan of the copy would write (but a stamp the pass could not take yet, of a
/// file changed in the two seconds before it looked, which a later look may take). The
/// sessions the pass read are its kept items, or (too many to keep) read again from
/// `copy` by id, every other row passed over unstat-ed. The caller
/// ([`super::Taking::settle`]) writes the dumps again from the copy should the store
/// turn out to have changed since. A session the pass did not read (its stamp known)
/// takes its earlier line from `base`, which must hold it with the same stamp. `None`
/// when these items cannot give the dump (a session not carried, an invalid record,
/// whose messages would name the store and not the copy, a read again that does not
/// match the pass's, or a base that is not there as listed): nothing is left written,
/// and the caller resolves the copy as without them.
pub(super) fn write_scanned(
    dir: &Path,
    scanned: super::Scanned<'_>,
    base: Option<&BaseDump>,
    copy: &Source,
) -> Result<Option<Dumped>> {
    if let super::ScanRead::Kept(items) = scanned.read {
        if items.iter().any(|i| !matches!(i, Item::Session(_))) {
            return Ok(None);
        }
    }
    let (reads, unread) = scanned.order.counts();
    // The earlier dump only when a session was not read (and then it must be there).
    let base = base.filter(|b| {
        unread > 0
            && fs::symlink_metadata(&b.path).is_ok_and(|m| m.is_file() && m.len() == b.listed.bytes)
    });
    if unread > 0 && base.is_none() {
        return Ok(None);
    }
    let mut lines = Lines {
        sessions: Sink::create(dir, Path::new(SESSIONS_JSONL))?,
        carry: match base {
            Some(b) => Some(Carry::open(&b.path)?),
            None => None,
        },
        summary: Summary::default(),
        carried: 0,
        whole: true,
        phase: crate::progress::Phase::bar(
            "backup-sessions",
            reads + unread,
            crate::progress::Unit::Sessions,
        ),
    };
    let invalid = Sink::create(dir, Path::new(INVALID_JSONL))?;
    let mut entries = scanned.order.entries();
    match scanned.read {
        super::ScanRead::Kept(items) => {
            for item in items {
                lines.read(item, &mut entries)?;
            }
        }
        super::ScanRead::Again(ids) => {
            // The copy's rows of the sessions read, in the scan's order as the pass's.
            copy.open()?.only(ids.clone()).scan(SCAN_BATCH, |items| {
                for item in &items {
                    lines.read(item, &mut entries)?;
                }
                Ok(())
            })?;
        }
    }
    // The sessions not read after the last one read.
    while lines.whole {
        match entries.next() {
            None => break,
            Some(Ok(Entry::Known { id, stamp })) => lines.known(&id, &stamp)?,
            Some(_) => lines.whole = false,
        }
    }
    let Lines {
        sessions,
        carry,
        summary,
        carried,
        mut whole,
        phase,
    } = lines;
    phase.inc(summary.sessions % SCAN_BATCH as u64);
    phase.finish();
    // The earlier dump is what its manifest lists.
    if whole {
        if let (Some(c), Some(b)) = (carry, base) {
            whole = c.finish()? == (b.listed.bytes, b.listed.sha256);
        }
    }
    if !whole {
        drop((sessions, invalid));
        for name in [SESSIONS_JSONL, INVALID_JSONL] {
            let p = dir.join(name);
            fs::remove_file(&p).map_err(|e| Error::Write { path: p, source: e })?;
        }
        return Ok(None);
    }
    Ok(Some(Dumped {
        sessions: sessions.finish()?,
        invalid: invalid.finish()?,
        summary,
        invalid_findings: Vec::new(),
        carried,
    }))
}

/// `sessions.jsonl` being written in the order of a scan ([`write_scanned`]): a session
/// read, or the earlier line of one not read. `whole` turns `false` at the first entry
/// these cannot give; nothing more is written then.
struct Lines {
    sessions: Sink,
    carry: Option<Carry>,
    summary: Summary,
    carried: u64,
    whole: bool,
    phase: crate::progress::Phase,
}

impl Lines {
    /// A session read, after the sessions not read before it in the order: the order's
    /// next read entry must be this very session, else nothing more is written.
    fn read(
        &mut self,
        item: &Item,
        entries: &mut impl Iterator<Item = std::io::Result<Entry>>,
    ) -> Result<()> {
        let Item::Session(s) = item else {
            self.whole = false;
            return Ok(());
        };
        if self.whole && self.known_until_read(entries)?.as_deref() == Some(&s.id) {
            self.session(s)?;
        } else {
            self.whole = false;
        }
        Ok(())
    }

    fn session(&mut self, s: &source::Session) -> Result<()> {
        // Its earlier line, if any, is passed over as a scan of the copy does: the lines
        // of the sessions not read are found after it.
        if let Some(c) = self.carry.as_mut() {
            c.pass(&s.id);
        }
        self.sessions.line(&session_line(s))?;
        self.summary.state_bytes += s.state.as_ref().map_or(0, |st| st.raw.len() as u64);
        self.counted();
        Ok(())
    }

    fn known(&mut self, id: &str, stamp: &str) -> Result<()> {
        let line = self.carry.as_mut().and_then(|c| {
            c.known(&[(id, stamp)]);
            c.take(id)
        });
        let Some(line) = line else {
            self.whole = false;
            return Ok(());
        };
        self.sessions.write(&line)?;
        self.sessions.write(b"\n")?;
        self.carried += 1;
        self.counted();
        Ok(())
    }

    /// The sessions not read up to the next one read, whose id it returns: `None` when
    /// the order ends, or cannot be read, or a line cannot be carried, first.
    fn known_until_read(
        &mut self,
        entries: &mut impl Iterator<Item = std::io::Result<Entry>>,
    ) -> Result<Option<String>> {
        loop {
            match entries.next() {
                Some(Ok(Entry::Read { id })) => return Ok(Some(id)),
                Some(Ok(Entry::Known { id, stamp })) => {
                    self.known(&id, &stamp)?;
                    if !self.whole {
                        return Ok(None);
                    }
                }
                _ => return Ok(None),
            }
        }
    }

    fn counted(&mut self) {
        self.summary.sessions += 1;
        if self.summary.sessions % SCAN_BATCH as u64 == 0 {
            self.phase.inc(SCAN_BATCH as u64);
        }
    }
}

/// The dumps of a store whose sessions are not SPEC §1's (a mapped store, SPEC §9):
/// both files empty, `summary` counted from the database copy.
pub(super) fn write_empty(dir: &Path, summary: Summary) -> Result<Dumped> {
    let sessions = Sink::create(dir, Path::new(SESSIONS_JSONL))?.finish()?;
    let invalid = Sink::create(dir, Path::new(INVALID_JSONL))?.finish()?;
    Ok(Dumped {
        sessions,
        invalid,
        summary,
        invalid_findings: Vec::new(),
        carried: 0,
    })
}

const BASE_DAMAGED: &str = "the earlier backup's dump differs from its manifest";

fn write_with(dir: &Path, src: &Source, base: Option<BaseDump>) -> Result<Dumped> {
    let mut sessions = Sink::create(dir, Path::new(SESSIONS_JSONL))?;
    let mut invalid = Sink::create(dir, Path::new(INVALID_JSONL))?;
    let mut invalid_findings = Vec::new();
    let carry = match &base {
        Some(b) => Some(Mutex::new(Carry::open(&b.path)?)),
        None => None,
    };
    let known = |pairs: &[(&str, &str)]| -> Result<HashSet<String>> {
        let c = carry.as_ref().expect("known is only given with a carry");
        Ok(c.lock().expect("carry lock").known(pairs))
    };
    let known_fn: Option<&source::KnownFn<'_>> = match carry {
        Some(_) => Some(&known),
        None => None,
    };
    let mut carried = 0u64;
    let reader = src.open()?;
    let phase = crate::progress::Phase::bar(
        "backup-sessions",
        reader.estimate()?,
        crate::progress::Unit::Sessions,
    );
    let summary = reader.scan_with(SCAN_BATCH, known_fn, |items| {
        phase.inc(items.len() as u64);
        for item in items {
            match item {
                Item::Session(s) => sessions.line(&session_line(&s))?,
                Item::Invalid(i) => {
                    if invalid_findings.len() < crate::report::INLINE_LIMIT {
                        invalid_findings.push(i.finding());
                    }
                    invalid.line(&invalid_line(&i))?
                }
                Item::Known { id, .. } => {
                    let c = carry.as_ref().expect("known items only with a carry");
                    let line = c.lock().expect("carry lock").take(&id).ok_or_else(|| {
                        Error::BackupSelfCheck {
                            dir: dir.to_path_buf(),
                            message: format!("session {id:?}: its earlier line was not kept"),
                        }
                    })?;
                    sessions.write(&line)?;
                    sessions.write(b"\n")?;
                    carried += 1;
                }
            }
        }
        Ok(())
    })?;
    phase.finish();
    if let (Some(c), Some(b)) = (carry, base) {
        let (bytes, sha) = c.into_inner().expect("carry lock").finish()?;
        if (bytes, sha) != (b.listed.bytes, b.listed.sha256) {
            return Err(Error::BackupSelfCheck {
                dir: dir.to_path_buf(),
                message: format!(
                    "{BASE_DAMAGED} ({bytes} bytes, SHA-256 {sha}; listed: {} bytes, {})",
                    b.listed.bytes, b.listed.sha256
                ),
            });
        }
    }
    Ok(Dumped {
        sessions: sessions.finish()?,
        invalid: invalid.finish()?,
        summary,
        invalid_findings,
        carried,
    })
}

// ---- carrying the earlier dump's lines ---------------------------------------------------

/// The earlier dump, read ahead of the scan: which sessions it holds with the stamp they
/// still have, and their lines until they are written. It is read in order and
/// hashed whole; lines are found within [`LOOKAHEAD`] of where the scan is (the scans
/// read in the same order), so that only a window of it is ever held. A line not found
/// so is simply not carried: its session is read again.
struct Carry {
    path: PathBuf,
    reader: io::BufReader<File>,
    hasher: Sha256,
    bytes: u64,
    eof: bool,
    pending: HashMap<String, (Option<String>, Vec<u8>)>,
    order: VecDeque<String>,
    ready: HashMap<String, Vec<u8>>,
}

#[derive(Deserialize)]
struct LineKey<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    stamp: Option<Cow<'a, str>>,
}

impl Carry {
    fn open(path: &Path) -> Result<Carry> {
        let f = File::open(path).map_err(|e| Error::read(path, e))?;
        Ok(Carry {
            path: path.to_path_buf(),
            reader: io::BufReader::with_capacity(1 << 20, f),
            hasher: Sha256::new(),
            bytes: 0,
            eof: false,
            pending: HashMap::new(),
            order: VecDeque::new(),
            ready: HashMap::new(),
        })
    }

    /// The next line (without its newline), hashed; `None` at the end.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        if self.eof {
            return None;
        }
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => {
                // A read error leaves the hash short: the dump is not carried.
                self.eof = true;
                return None;
            }
            Ok(n) => {
                self.hasher.update(&line);
                self.bytes += n as u64;
            }
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        Some(line)
    }

    /// Read ahead until the line of `id`, at most [`LOOKAHEAD`] lines; the others wait.
    fn find(&mut self, id: &str) -> Option<(Option<String>, Vec<u8>)> {
        if let Some(found) = self.pending.remove(id) {
            return Some(found);
        }
        for _ in 0..LOOKAHEAD {
            let line = self.next_line()?;
            let Ok(key) = serde_json::from_slice::<LineKey<'_>>(&line) else {
                continue;
            };
            let stamp = key.stamp.map(Cow::into_owned);
            if key.id == id {
                return Some((stamp, line));
            }
            let k = key.id.into_owned();
            self.order.push_back(k.clone());
            self.pending.insert(k, (stamp, line));
            while self.pending.len() > PENDING_MAX {
                match self.order.pop_front() {
                    Some(old) => {
                        self.pending.remove(&old);
                    }
                    None => break,
                }
            }
        }
        None
    }

    /// The ids among `pairs` (id, stamp) whose earlier line has the same stamp; their
    /// lines are kept until [`Self::take`].
    fn known(&mut self, pairs: &[(&str, &str)]) -> HashSet<String> {
        let mut out = HashSet::new();
        for &(id, stamp) in pairs {
            if let Some((Some(was), line)) = self.find(id) {
                if was == stamp {
                    self.ready.insert(id.to_owned(), line);
                    out.insert(id.to_owned());
                }
            }
        }
        out
    }

    fn take(&mut self, id: &str) -> Option<Vec<u8>> {
        self.ready.remove(id)
    }

    /// Pass over the earlier line of `id` (a session read again), if it is near.
    fn pass(&mut self, id: &str) {
        self.find(id);
    }

    /// Hash the rest: the earlier dump's size and SHA-256, read whole.
    fn finish(mut self) -> Result<(u64, Digest32)> {
        let mut buf = vec![0u8; 1 << 16];
        if !self.eof {
            loop {
                match io::Read::read(&mut self.reader, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.hasher.update(&buf[..n]);
                        self.bytes += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::read(&self.path, e)),
                }
            }
        }
        Ok((self.bytes, Digest32(self.hasher.finalize().into())))
    }
}

// ---- the lines ---------------------------------------------------------------------------

#[derive(Serialize)]
struct SessionLine<'a> {
    id: &'a str,
    user_id: Option<&'a str>,
    status: Option<&'a str>,
    current_step: Option<&'a str>,
    cost: Option<f64>,
    created_at: Option<String>,
    updated_at: Option<String>,
    /// The state exactly as the store holds it, when it is not a state file's.
    #[serde(skip_serializing_if = "Option::is_none")]
    state_text: Option<&'a str>,
    /// Only when the state's bytes are not UTF-8 (never for a valid session).
    #[serde(skip_serializing_if = "Option::is_none")]
    state_hex: Option<String>,
    /// The backup's copy of the state file the state was resolved from.
    #[serde(skip_serializing_if = "Option::is_none")]
    state_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_bytes: Option<u64>,
    state_origin: Option<&'a source::Origin>,
    meta_origin: &'a source::Origin,
    content_hash: String,
    stamp: Option<&'a str>,
}

fn session_line(s: &source::Session) -> SessionLine<'_> {
    let raw = s.state.as_ref().map(|st| st.raw.as_slice());
    let from_file = s
        .state
        .as_ref()
        .is_some_and(|st| st.origin == source::Origin::StateFile);
    let text = raw
        .filter(|_| !from_file)
        .and_then(|r| std::str::from_utf8(r).ok());
    SessionLine {
        id: &s.id,
        user_id: s.meta.user_id.as_deref(),
        status: s.meta.status.as_deref(),
        current_step: s.meta.current_step.as_deref(),
        cost: s.meta.cost,
        created_at: s.meta.created_at.as_ref().map(fields::fmt_ts),
        updated_at: s.meta.updated_at.as_ref().map(fields::fmt_ts),
        state_text: text,
        state_hex: match (raw, text, from_file) {
            (Some(r), None, false) => Some(hex::encode(r)),
            _ => None,
        },
        state_file: from_file.then(|| format!("{}/{}/state.json", super::STATE_DIR, s.id)),
        state_sha256: raw
            .filter(|_| from_file)
            .map(|r| hex::encode(Sha256::digest(r))),
        state_bytes: raw.filter(|_| from_file).map(|r| r.len() as u64),
        state_origin: s.state.as_ref().map(|st| &st.origin),
        meta_origin: &s.meta_origin,
        content_hash: s.content_hash(),
        stamp: s.stamp.as_deref(),
    }
}

#[derive(Serialize)]
struct InvalidLine<'a> {
    code: &'a str,
    message: &'a str,
    id: Option<&'a str>,
    path: Option<&'a Path>,
    record: &'a str,
    raw_hex: String,
}

fn invalid_line(i: &source::Invalid) -> InvalidLine<'_> {
    InvalidLine {
        code: i.code,
        message: &i.message,
        id: i.id.as_deref(),
        path: i.path.as_deref(),
        record: i.record,
        raw_hex: hex::encode(&i.raw),
    }
}

/// A file being written into the backup's folder, hashed as it goes.
pub(super) struct Sink {
    out: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
    path: PathBuf,
    rel: PathBuf,
}

impl Sink {
    pub(super) fn create(dir: &Path, rel: &Path) -> Result<Sink> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            super::mkdirs(parent)?;
        }
        Ok(Sink {
            out: BufWriter::with_capacity(1 << 16, super::create_file(&path)?),
            hasher: Sha256::new(),
            bytes: 0,
            path,
            rel: rel.to_path_buf(),
        })
    }

    pub(super) fn write(&mut self, b: &[u8]) -> Result<()> {
        self.hasher.update(b);
        self.bytes += b.len() as u64;
        self.out.write_all(b).map_err(|e| Error::Write {
            path: self.path.clone(),
            source: e,
        })
    }

    fn line<T: Serialize>(&mut self, v: &T) -> Result<()> {
        let mut b = serde_json::to_vec(v).expect("a line serializes");
        b.push(b'\n');
        self.write(&b)
    }

    pub(super) fn finish(self) -> Result<FileEntry> {
        let path = self.path;
        self.out
            .into_inner()
            .map_err(|e| Error::Write {
                path: path.clone(),
                source: e.into_error(),
            })?
            .flush()
            .map_err(|e| Error::Write {
                path: path.clone(),
                source: e,
            })?;
        Ok(FileEntry::new(
            &self.rel,
            self.bytes,
            Digest32(self.hasher.finalize().into()),
        ))
    }
}
