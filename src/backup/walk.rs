//! The files of the sessions folder, in the order of the manifest's list, and what a
//! backup does with each: shares the earlier backup's blob when the file has not
//! changed, else copies it.
//!
//! **Order.** The folder's names are listed and sorted as the paths `state/<name>/...`
//! sort (a name compared as if followed by `/`), and each `<id>/` folder is walked with
//! its entries sorted the same way, so that the files come out in the byte order of
//! their paths: the order of the manifest's list. The earlier backup's list is read
//! beside it ([`BaseCursor`]), one entry at a time: nothing grows with the number of
//! files but the list of names.
//!
//! **Unchanged.** A file is unchanged when its stamp is the one the earlier backup
//! recorded when it read it: device, inode, size, modification and change times (to the
//! nanosecond) and mode. Rewriting a file changes its mtime and ctime; replacing it
//! changes its inode; setting its mtime back (`touch -d`, `utimensat`) still moves its
//! ctime, which nothing but the kernel sets. A stamp is only recorded for a file whose
//! mtime and ctime were both at least [`SETTLE`] old when it was looked at, and that
//! looked the same after it was read: a write in the same clock tick as the read could
//! otherwise leave the same size and times on other bytes (the "racy git" problem; the
//! catch-up's ledger stamps follow the same rule). A symlinked file gets no stamp: it is
//! read every time. Nothing else is trusted: no stamp, no sharing.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use super::blobs::{Blobs, Put};
use super::manifest::{FileEntry, Skipped};
use crate::error::{Error, Result};

/// A file modified or changed this recently gets no stamp (see the module's doc).
pub(super) const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);
/// Files looked at, and copied, in parallel at once.
pub(super) const CHUNK: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SkipKind {
    Symlink,
    Other,
    /// The tool may not read it: its error is the reason.
    Unreadable,
}

/// How far a walk is when it hands over a chunk: the sessions folder's entries walked,
/// of how many (a true total for the progress line, known once the folder is listed).
#[derive(Debug, Clone, Copy)]
pub(super) struct Walked {
    pub entries: u64,
    pub of: u64,
}

/// A file the walk found, not looked at yet.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    /// Its path in the store.
    pub src: PathBuf,
    /// Relative to the sessions folder.
    pub rel: PathBuf,
    /// `<id>/state.json` itself.
    pub state: bool,
    /// Reached through real folders only: stat-ed relative to the open sessions folder.
    pub at_root: bool,
}

/// What the walk found, in path order.
#[derive(Debug)]
pub(super) enum Found {
    File(Candidate),
    Skip(Skipped, SkipKind),
}

/// What a file of the store looked like (`lstat`, or `stat` of a link's target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub mode: u32,
}

impl Stat {
    pub(super) fn of(m: &fs::Metadata) -> Stat {
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            mode: m.mode(),
        }
    }
}

/// Whether the file last changed (its mtime and ctime) at least [`SETTLE`] before `now`.
pub(super) fn settled(s: &Stat, now: std::time::SystemTime) -> bool {
    let Ok(now) = now.duration_since(std::time::UNIX_EPOCH) else {
        return false;
    };
    let settled = |(secs, nanos): (i64, i64)| {
        secs >= 0
            && std::time::Duration::new(secs as u64, nanos.clamp(0, 999_999_999) as u32) + SETTLE
                <= now
    };
    settled(s.mtime) && settled(s.ctime)
}

/// `f1:` + 128 bits of SHA-256 over the stat, or `None` when the file changed within
/// [`SETTLE`] of `now` (a time taken before the stat).
pub(super) fn stamp(s: &Stat, now: std::time::SystemTime) -> Option<String> {
    if !settled(s, now) {
        return None;
    }
    let mut h = Sha256::new();
    h.update(b"f1\0");
    for v in [
        s.dev as i64,
        s.ino as i64,
        s.size as i64,
        s.mtime.0,
        s.mtime.1,
        s.ctime.0,
        s.ctime.1,
        s.mode as i64,
    ] {
        h.update(v.to_le_bytes());
    }
    Some(format!("f1:{}", hex::encode(&h.finalize()[..16])))
}

/// How one file was looked at.
#[derive(Debug)]
pub(super) enum Looked {
    /// A regular file: its stat, and its stamp when it may be trusted.
    File {
        stat: Stat,
        stamp: Option<String>,
    },
    /// No such file (a session folder without `state.json`).
    Missing,
    Skip(Skipped, SkipKind),
}

/// The sessions folder, open for the walk.
pub(super) struct Walker {
    dir: PathBuf,
    root: PathBuf,
    fd: File,
    include_uploads: bool,
}

fn skipped(path: &Path, target: Option<PathBuf>, reason: impl Into<String>) -> Skipped {
    Skipped {
        path: path.to_path_buf(),
        target,
        reason: reason.into(),
    }
}

/// Where a symlink leads: inside the sessions folder (followed), or not (skipped).
enum Link {
    Inside(PathBuf),
    Skip(Skipped),
}

impl Walker {
    pub(super) fn open(dir: &Path, include_uploads: bool) -> Result<Walker> {
        let root = fs::canonicalize(dir).map_err(|e| Error::read(dir, e))?;
        let fd = crate::fsutil::open_dir(dir).map_err(|e| Error::read(dir, e))?;
        Ok(Walker {
            dir: dir.to_path_buf(),
            root,
            fd,
            include_uploads,
        })
    }

    fn resolve_link(&self, link: &Path) -> Link {
        let target = fs::read_link(link).ok();
        match fs::canonicalize(link) {
            Err(_) => Link::Skip(skipped(link, target, "a symlink that leads nowhere")),
            Ok(real) if !real.starts_with(&self.root) => Link::Skip(skipped(
                link,
                target,
                "a symlink that leaves the sessions folder: not followed",
            )),
            Ok(real) => Link::Inside(real),
        }
    }

    /// Walk `<dir>/<id>/state.json` (or everything under each `<id>/`) in path order,
    /// never following a symlink that leaves the folder, handing `visit` a chunk of at
    /// most [`CHUNK`] files at a time. Plain files directly in the folder are not
    /// session data.
    pub(super) fn walk(
        &self,
        mut visit: impl FnMut(Vec<Found>, Walked) -> Result<()>,
    ) -> Result<()> {
        let names = Names::list(&self.dir).map_err(|e| Error::read(&self.dir, e))?;
        let mut chunk = Vec::with_capacity(CHUNK);
        for i in 0..names.len() {
            let (name, kind) = names.get(i);
            self.visit_folder(name, kind, &mut chunk)?;
            if chunk.len() >= CHUNK {
                let walked = Walked {
                    entries: i as u64 + 1,
                    of: names.len() as u64,
                };
                visit(std::mem::take(&mut chunk), walked)?;
            }
        }
        if !chunk.is_empty() {
            let n = names.len() as u64;
            visit(chunk, Walked { entries: n, of: n })?;
        }
        Ok(())
    }

    /// One entry of the sessions folder: its files, or why it was skipped.
    fn visit_folder(&self, name: &OsStr, kind: Kind, out: &mut Vec<Found>) -> Result<()> {
        let folder = self.dir.join(name);
        let kind = match kind {
            Kind::Unknown => match fs::symlink_metadata(&folder) {
                Ok(m) if m.file_type().is_symlink() => Kind::Link,
                Ok(m) if m.is_dir() => Kind::Dir,
                Ok(_) => Kind::Other,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    out.push(Found::Skip(
                        skipped(&folder, None, e.to_string()),
                        SkipKind::Unreadable,
                    ));
                    return Ok(());
                }
            },
            k => k,
        };
        let at_root = match kind {
            Kind::Dir => true,
            Kind::Link => match self.resolve_link(&folder) {
                Link::Inside(real) if real.is_dir() => false,
                Link::Inside(_) => return Ok(()),
                Link::Skip(s) => {
                    out.push(Found::Skip(s, SkipKind::Symlink));
                    return Ok(());
                }
            },
            _ => return Ok(()),
        };
        if !self.include_uploads {
            out.push(Found::File(Candidate {
                src: folder.join("state.json"),
                rel: Path::new(name).join("state.json"),
                state: true,
                at_root,
            }));
            return Ok(());
        }
        let walk = walkdir::WalkDir::new(&folder)
            .min_depth(1)
            .follow_links(false)
            .sort_by(|a, b| {
                path_order(
                    a.file_name().as_bytes(),
                    a.file_type().is_dir(),
                    b.file_name().as_bytes(),
                    b.file_type().is_dir(),
                )
            });
        for e in walk {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    let path = err.path().unwrap_or(&folder).to_path_buf();
                    out.push(Found::Skip(
                        skipped(&path, None, err.to_string()),
                        SkipKind::Unreadable,
                    ));
                    continue;
                }
            };
            if e.file_type().is_dir() {
                continue;
            }
            let sub = e.path().strip_prefix(&folder).unwrap_or(e.path());
            out.push(Found::File(Candidate {
                src: e.path().to_path_buf(),
                rel: Path::new(name).join(sub),
                state: e.depth() == 1 && e.file_name() == "state.json",
                at_root: false,
            }));
        }
        Ok(())
    }

    /// Look at a candidate: a regular file (with its stamp), nothing, or a reason to
    /// skip it. `now` was taken before the look.
    /// [`Walker::look`] at every file of a chunk, in parallel (`None` for the skipped).
    pub(super) fn look_all(&self, chunk: &[Found]) -> Vec<Option<Looked>> {
        use rayon::prelude::*;
        let now = std::time::SystemTime::now();
        chunk
            .par_iter()
            .map(|f| match f {
                Found::File(c) => Some(self.look(c, now)),
                Found::Skip(..) => None,
            })
            .collect()
    }

    pub(super) fn look(&self, c: &Candidate, now: std::time::SystemTime) -> Looked {
        let skip = |reason: String, kind| Looked::Skip(skipped(&c.src, None, reason), kind);
        if c.at_root {
            return match crate::fsutil::lstat_at(&self.fd, &c.rel) {
                Ok(m) if m.is_symlink => self.look_link(c),
                Ok(m) if m.mode & libc::S_IFMT == libc::S_IFREG => {
                    let stat = Stat {
                        dev: m.dev,
                        ino: m.ino,
                        size: m.size,
                        mtime: m.mtime,
                        ctime: m.ctime,
                        mode: m.mode,
                    };
                    Looked::File {
                        stamp: stamp(&stat, now),
                        stat,
                    }
                }
                Ok(_) => skip("not a regular file".into(), SkipKind::Other),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Looked::Missing,
                Err(e) => skip(e.to_string(), SkipKind::Unreadable),
            };
        }
        match fs::symlink_metadata(&c.src) {
            Ok(m) if m.file_type().is_symlink() => self.look_link(c),
            Ok(m) if m.is_file() => {
                let stat = Stat::of(&m);
                Looked::File {
                    stamp: stamp(&stat, now),
                    stat,
                }
            }
            Ok(_) => skip("not a regular file".into(), SkipKind::Other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Looked::Missing,
            Err(e) => skip(e.to_string(), SkipKind::Unreadable),
        }
    }

    /// A symlinked file: followed when it leads to a file inside the folder; no stamp.
    fn look_link(&self, c: &Candidate) -> Looked {
        let skip = |reason: &str, kind| Looked::Skip(skipped(&c.src, None, reason), kind);
        match self.resolve_link(&c.src) {
            Link::Inside(real) => match fs::metadata(real) {
                Ok(m) if m.is_file() => Looked::File {
                    stat: Stat::of(&m),
                    stamp: None,
                },
                Ok(_) => skip("a symlink to a folder: not followed", SkipKind::Other),
                Err(e) => Looked::Skip(skipped(&c.src, None, e.to_string()), SkipKind::Unreadable),
            },
            Link::Skip(s) => Looked::Skip(s, SkipKind::Symlink),
        }
    }

    /// The same look again, after reading: whether the file is still what was stat-ed.
    pub(super) fn unchanged_since(&self, c: &Candidate, stat: &Stat) -> bool {
        let again = if c.at_root {
            crate::fsutil::lstat_at(&self.fd, &c.rel)
                .ok()
                .map(|m| Stat {
                    dev: m.dev,
                    ino: m.ino,
                    size: m.size,
                    mtime: m.mtime,
                    ctime: m.ctime,
                    mode: m.mode,
                })
        } else {
            fs::symlink_metadata(&c.src).ok().map(|m| Stat::of(&m))
        };
        again.as_ref() == Some(stat)
    }
}

/// The order of two entries of one folder as their paths sort: a folder's name as if
/// followed by `/` (every path under it begins so).
fn path_order(a: &[u8], a_dir: bool, b: &[u8], b_dir: bool) -> std::cmp::Ordering {
    let key = |n: &[u8], dir: bool, i: usize| -> Option<u8> {
        match i.cmp(&n.len()) {
            std::cmp::Ordering::Less => Some(n[i]),
            std::cmp::Ordering::Equal if dir => Some(b'/'),
            _ => None,
        }
    };
    let mut i = 0;
    loop {
        match (key(a, a_dir, i), key(b, b_dir, i)) {
            (Some(x), Some(y)) if x == y => i += 1,
            (x, y) => return x.cmp(&y),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Link,
    Other,
    Unknown,
}

/// The sessions folder's names and their types (from the listing itself), sorted in
/// path order, in one buffer: a million names are a few allocations.
struct Names {
    buf: Vec<u8>,
    /// Each name's start and end in `buf` (12 bytes a name with its kind).
    spans: Vec<(u32, u32, Kind)>,
}

impl Names {
    fn list(dir: &Path) -> io::Result<Names> {
        let mut names = Names {
            buf: Vec::new(),
            spans: Vec::new(),
        };
        for e in fs::read_dir(dir)? {
            let Ok(e) = e else { continue };
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => Kind::Dir,
                Ok(t) if t.is_symlink() => Kind::Link,
                Ok(_) => Kind::Other,
                Err(_) => Kind::Unknown,
            };
            if kind == Kind::Other {
                continue;
            }
            let start = names.buf.len();
            names.buf.extend_from_slice(e.file_name().as_bytes());
            let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(names.buf.len()))
            else {
                return Err(io::Error::other("more than 4 GB of names in one folder"));
            };
            names.spans.push((start, end, kind));
        }
        names.buf.shrink_to_fit();
        names.spans.shrink_to_fit();
        let buf = &names.buf;
        let name = |s: &(u32, u32, Kind)| &buf[s.0 as usize..s.1 as usize];
        // Every kept entry may be a folder: each sorts as `name/`.
        names
            .spans
            .sort_unstable_by(|a, b| path_order(name(a), true, name(b), true));
        Ok(names)
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn get(&self, i: usize) -> (&OsStr, Kind) {
        let (s, e, k) = self.spans[i];
        (OsStr::from_bytes(&self.buf[s as usize..e as usize]), k)
    }
}

// ---- the earlier backup's list -----------------------------------------------------------

/// The earlier backup's manifest, read one entry at a time beside the walk (a thread
/// parses it into a small bounded channel).
pub(super) struct BaseCursor {
    pub dir: PathBuf,
    rx: Option<std::sync::mpsc::Receiver<FileEntry>>,
    next: Option<FileEntry>,
    /// Entries passed over that are not under `state/` (the dump, the JSON store...).
    pub others: Vec<FileEntry>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BaseCursor {
    pub(super) fn open(dir: &Path) -> BaseCursor {
        let (tx, rx) = std::sync::mpsc::sync_channel::<FileEntry>(4096);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (dir, stop) = (dir.to_path_buf(), stop.clone());
            std::thread::spawn(move || {
                let res = super::manifest::stream_until(&dir, &mut |e| {
                    !stop.load(Ordering::Relaxed) && tx.send(e).is_ok()
                });
                if let Err(e) = res {
                    if !stop.load(Ordering::Relaxed) {
                        tracing::warn!(
                            "the earlier backup's manifest could not be read to its end ({e}): the rest is copied"
                        );
                    }
                }
            })
        };
        BaseCursor {
            dir: dir.to_path_buf(),
            rx: Some(rx),
            next: None,
            others: Vec::new(),
            stop,
            thread: Some(thread),
        }
    }

    /// The earlier entry whose path is `key`, if the list has one: entries before it
    /// are passed over (kept in [`Self::others`] when not under `state/`).
    pub(super) fn seek(&mut self, key: &[u8]) -> Option<FileEntry> {
        loop {
            if self.next.is_none() {
                self.next = self.rx.as_ref()?.recv().ok();
            }
            let next = self.next.as_ref()?;
            match next.key().as_ref().cmp(key) {
                std::cmp::Ordering::Less => {
                    let passed = self.next.take().expect("just looked at");
                    if !passed.path.starts_with("state/") {
                        self.others.push(passed);
                    }
                }
                std::cmp::Ordering::Equal => return self.next.take(),
                std::cmp::Ordering::Greater => return None,
            }
        }
    }

    /// The entry of `path` (not under `state/`), wherever the cursor is.
    pub(super) fn other(&mut self, path: &str) -> Option<FileEntry> {
        if let Some(e) = self.seek(path.as_bytes()) {
            return Some(e);
        }
        self.others.iter().find(|e| e.path == path).cloned()
    }
}

impl Drop for BaseCursor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.rx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- copying -----------------------------------------------------------------------------

/// What copying one file of the store gave. Errors writing the backup are `Err`;
/// errors reading the store's file are [`Copied::Unreadable`], for the caller to judge.
pub(super) enum Copied {
    File(FileEntry),
    /// Copied, but it kept changing while read: the last read was copied.
    KeptChanging(FileEntry),
    /// It no longer exists.
    Gone,
    /// The tool may not read it (or reading it failed): nothing of it was kept.
    Unreadable(io::Error),
}

fn blob_entry(rel: &Path, put: Put, stamp: Option<String>) -> FileEntry {
    let mut e = FileEntry::new(rel, put.bytes, put.sha);
    e.blob = true;
    e.stamp = stamp;
    e.shared = !put.fresh;
    e
}

/// Copy a state file read whole (see [`crate::source::read_whole`]) into a blob: never
/// a mix of two versions of a file rewritten in place during the copy. `rel` is its
/// path in the backup.
pub(super) fn copy_state(blobs: &Blobs, src: &Path, rel: &Path) -> Result<Copied> {
    use crate::source::Whole;
    let (bytes, whole) = match crate::source::read_whole(src) {
        Ok(Whole::Read(b)) => (b, true),
        Ok(Whole::KeptChanging(b)) => (b, false),
        Ok(Whole::Gone) => return Ok(Copied::Gone),
        Err(e) => return Ok(Copied::Unreadable(e)),
    };
    let entry = blob_entry(rel, blobs.put(&bytes)?, None);
    Ok(if whole {
        Copied::File(entry)
    } else {
        Copied::KeptChanging(entry)
    })
}

/// Copy any other file of the store (an upload, the JSON store) into a blob, streamed.
/// Only a regular file is read: a FIFO or a device swapped in since it was looked at
/// is refused (`Unreadable`, with `not_regular_file` inside), never a hang or an
/// endless copy.
pub(super) fn copy_other(blobs: &Blobs, src: &Path, rel: &Path) -> Result<Copied> {
    let mut from = match crate::fsutil::open_regular(src, true) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Copied::Gone),
        Err(e) => return Ok(Copied::Unreadable(e)),
    };
    let mut w = blobs.writer()?;
    match super::blobs::copy_into(&mut from, &mut w) {
        Err(e) => Ok(Copied::Unreadable(e)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => Ok(Copied::File(blob_entry(rel, blobs.finish(w)?, None))),
    }
}

/// The names of the folder's entries, for tests of the order.
#[cfg(test)]
fn sorted(names: &[(&str, bool)]) -> Vec<String> {
    let mut v: Vec<(std::ffi::OsString, bool)> = names
        .iter()
        .map(|(n, d)| (std::ffi::OsString::from(n), *d))
        .collect();
    v.sort_by(|a, b| path_order(a.0.as_bytes(), a.1, b.0.as_bytes(), b.1));
    v.into_iter()
        .map(|(n, d)| format!("{}{}", n.to_string_lossy(), if d { "/" } else { "" }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_sort_as_their_paths_do() {
        // "a/x" > "a-b/x" > "a.txt": byte order of whole paths, not of names.
        assert_eq!(
            sorted(&[("a", true), ("a-b", true), ("a.txt", false), ("ab", false)]),
            ["a-b/", "a.txt", "a/", "ab"]
        );
        let mut paths = vec!["a/x", "a-b/x", "a.txt", "ab"];
        paths.sort();
        assert_eq!(paths, ["a-b/x", "a.txt", "a/x", "ab"]);
    }

    #[test]
    fn a_file_changed_within_the_settle_time_gets_no_stamp() {
        let now = std::time::SystemTime::now();
        let secs = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let mut s = Stat {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: (secs - 10, 0),
            ctime: (secs - 10, 0),
            mode: 0o100600,
        };
        let old = stamp(&s, now).expect("settled");
        s.ctime = (secs - 1, 0);
        assert_eq!(stamp(&s, now), None, "ctime within 2 s");
        s.ctime = (secs - 10, 1);
        assert_ne!(stamp(&s, now).unwrap(), old, "ctime to the nanosecond");
        s.ctime = (secs - 10, 0);
        s.mtime = (secs, 0);
        assert_eq!(stamp(&s, now), None, "mtime within 2 s");
    }
}
