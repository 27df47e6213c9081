//! The blob store that the backups of one `backup.dir` share: the bytes of every file
//! copied from the store (state files, uploads, the JSON store), each under the name of
//! its SHA-256, written once.
//!
//! ```text
//! <backup.dir>/blobs/              0700
//!   LOCK                           flock: shared while a backup writes, exclusive while
//!                                  `backup --prune` removes blobs
//!   <2 hex>/<64 hex>               0400, never changed once written
//!   <2 hex>/.tmp-<pid>-<uuid>      being written; renamed to its name when whole
//! ```
//!
//! A backup lists each file with its SHA-256 and `blob: true`; its bytes are the blob
//! of that name. A later backup that finds a file unchanged (its stamp, see
//! [`super::walk`]) lists the same blob without reading the file: that is what makes it
//! cost in proportion to the change. Deleting a backup's folder removes nothing here,
//! so it never damages another backup; the blobs that no backup lists any more are
//! removed by `backup --prune` alone, under the exclusive lock, so never while a backup
//! is being written. A blob is written to a temporary name and renamed, so a name always
//! holds whole bytes; a blob found already there with the right size is compared
//! before it is relied on, and replaced when it differs.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use super::manifest::Digest32;
use crate::error::{Error, Result};

/// The folder of the blob store, in `backup.dir`.
pub const DIR: &str = "blobs";
const LOCK: &str = "LOCK";
const TEMP_PREFIX: &str = ".tmp-";

/// Where the blob `sha` is under the store `root`.
pub fn path_in(root: &Path, sha: &Digest32) -> PathBuf {
    root.join(rel(sha))
}

fn rel(sha: &Digest32) -> PathBuf {
    let hex = sha.to_string();
    PathBuf::from(&hex[..2]).join(hex)
}

/// How the store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A backup writes: a shared lock, waited for while a prune removes blobs.
    Write,
    /// `backup --prune` removes blobs: the exclusive lock, or `lock_held` at once.
    Sweep,
}

/// The blob store, open and locked.
pub(super) struct Blobs {
    root: PathBuf,
    fd: File,
    made: Vec<AtomicBool>,
    _lock: File,
}

/// What [`Blobs::put`] did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Put {
    pub sha: Digest32,
    pub bytes: u64,
    /// Written now (else the store held these bytes already).
    pub fresh: bool,
}

/// What [`Blobs::sweep`] found (and, unless a dry run, removed).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Swept {
    /// Blobs no kept backup lists.
    pub blobs: u64,
    pub bytes: u64,
    /// Temporary files of backups that died while writing them.
    pub temps: u64,
    pub temp_bytes: u64,
}

fn werr(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| Error::Write {
        path: path.to_path_buf(),
        source: e,
    }
}

impl Blobs {
    /// Open (and create, 0700) the store of `backup_dir`, locked as `mode` says. The
    /// store must be a folder, not a link.
    pub(super) fn open(backup_dir: &Path, mode: Mode) -> Result<Blobs> {
        let root = backup_dir.join(DIR);
        match fs::symlink_metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::UnsafePath {
                    code: "symlink_outside_root",
                    path: root.clone(),
                    message: format!(
                        "{} is not a folder (a link?): the blob store of the backups must be one",
                        root.display()
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                crate::fsutil::create_private_dir_all(&root).map_err(werr(&root))?;
            }
            Err(e) => return Err(Error::read(&root, e)),
        }
        let lock_path = root.join(LOCK);
        let lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(werr(&lock_path))?;
        match mode {
            Mode::Write => {
                if flock(&lock, libc::LOCK_SH | libc::LOCK_NB).is_err() {
                    tracing::info!(
                        "waiting for `backup --prune` to finish with {}",
                        root.display()
                    );
                    flock(&lock, libc::LOCK_SH).map_err(werr(&lock_path))?;
                }
            }
            Mode::Sweep => {
                if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
                    return Err(Error::LockHeld {
                        holder: format!(
                            "a backup is being written under {} (it holds {} shared; its folder still has its INCOMPLETE marker): prune once it is done",
                            backup_dir.display(),
                            lock_path.display()
                        ),
                        pid: None,
                    });
                }
            }
        }
        let fd = File::open(&root).map_err(|e| Error::read(&root, e))?;
        Ok(Blobs {
            root,
            fd,
            made: (0..256).map(|_| AtomicBool::new(false)).collect(),
            _lock: lock,
        })
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn path(&self, sha: &Digest32) -> PathBuf {
        path_in(&self.root, sha)
    }

    /// Whether the blob `sha` is there, a regular file of `bytes` bytes.
    pub(super) fn has(&self, sha: &Digest32, bytes: u64) -> bool {
        crate::fsutil::lstat_at(&self.fd, &rel(sha)).is_ok_and(|m| {
            !m.is_symlink && m.mode & libc::S_IFMT == libc::S_IFREG && m.size == bytes
        })
    }

    /// The fan-out folder of `sha`, created (0700) the first time.
    fn fanout(&self, sha: &Digest32) -> Result<PathBuf> {
        let dir = self.root.join(&sha.to_string()[..2]);
        let made = &self.made[sha.0[0] as usize];
        if !made.load(Ordering::Relaxed) {
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                        return Err(Error::UnsafePath {
                            code: "not_regular_file",
                            path: dir.clone(),
                            message: format!("{} is not a folder", dir.display()),
                        });
                    }
                }
                Err(e) => return Err(werr(&dir)(e)),
            }
            made.store(true, Ordering::Relaxed);
        }
        Ok(dir)
    }

    /// Keep `bytes` as a blob: written unless the store holds them already.
    pub(super) fn put(&self, bytes: &[u8]) -> Result<Put> {
        let sha = Digest32(Sha256::digest(bytes).into());
        let len = bytes.len() as u64;
        if self.has(&sha, len) && self.holds(&sha, |b| b == bytes) && self.durable(&sha) {
            return Ok(Put {
                sha,
                bytes: len,
                fresh: false,
            });
        }
        let mut w = self.writer_for(&sha)?;
        w.write(bytes)?;
        w.commit(sha)?;
        Ok(Put {
            sha,
            bytes: len,
            fresh: true,
        })
    }

    /// Whether the blob `sha` reads as `same` says (a blob found there before this
    /// backup relies on it: it may be the torn leftover of a crash).
    fn holds(&self, sha: &Digest32, same: impl FnOnce(&[u8]) -> bool) -> bool {
        fs::read(self.path(sha)).is_ok_and(|b| same(&b))
    }

    fn writer_for(&self, sha: &Digest32) -> Result<BlobWriter> {
        let dir = self.fanout(sha)?;
        self.temp_in(dir)
    }

    fn temp_in(&self, dir: PathBuf) -> Result<BlobWriter> {
        let temp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(werr(&temp))?;
        Ok(BlobWriter {
            out: io::BufWriter::with_capacity(64 * 1024, file),
            temp,
            hasher: Sha256::new(),
            bytes: 0,
            root: self.root.clone(),
            done: false,
        })
    }

    /// A blob written as a stream (a file too large to hold: an upload, the JSON store):
    /// its name is known at the end.
    pub(super) fn writer(&self) -> Result<BlobWriter> {
        crate::fsutil::create_private_dir_all(&self.root).map_err(werr(&self.root))?;
        self.temp_in(self.root.clone())
    }

    /// Finish a streamed blob: renamed to its name, or dropped when the store holds the
    /// same bytes already.
    pub(super) fn finish(&self, mut w: BlobWriter) -> Result<Put> {
        w.flush()?;
        let sha = Digest32(w.hasher.clone().finalize().into());
        let bytes = w.bytes;
        if self.has(&sha, bytes) && self.same_file(&sha, &w.temp) && self.durable(&sha) {
            return Ok(Put {
                sha,
                bytes,
                fresh: false,
            });
        }
        let dir = self.fanout(&sha)?;
        let temp = dir.join(w.temp.file_name().expect("a temp file name"));
        fs::rename(&w.temp, &temp).map_err(werr(&w.temp))?;
        w.temp = temp;
        w.commit(sha)?;
        Ok(Put {
            sha,
            bytes,
            fresh: true,
        })
    }

    /// A blob found already there may be the unsynced write of a backup that died
    /// before its end: synced before this backup lists it as shared (it does not sync
    /// what it shares). Cheap when it is on disk already.
    fn durable(&self, sha: &Digest32) -> bool {
        File::open(self.path(sha))
            .and_then(|f| f.sync_data())
            .is_ok()
    }

    /// Whether the blob `sha` holds the same bytes as `other`.
    fn same_file(&self, sha: &Digest32, other: &Path) -> bool {
        let digest = |p: &Path| -> io::Result<[u8; 32]> {
            let mut f = File::open(p)?;
            let mut h = Sha256::new();
            io::copy(&mut f, &mut h)?;
            Ok(h.finalize().into())
        };
        matches!((digest(&self.path(sha)), digest(other)), (Ok(a), Ok(b)) if a == b)
    }

    /// Every blob that `keep` does not name, and every temporary file (with the
    /// exclusive lock held no backup is writing one): counted, and removed when
    /// `remove`. Names that are neither are left alone.
    pub(super) fn sweep(&self, keep: &HashSet<Digest32>, remove: bool) -> Result<Swept> {
        let mut out = Swept::default();
        let rd = fs::read_dir(&self.root).map_err(|e| Error::read(&self.root, e))?;
        for fan in rd.flatten() {
            let is_fan = fan.file_name().len() == 2
                && fan.file_name().to_str().is_some_and(|n| {
                    n.bytes()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                })
                && fan.file_type().is_ok_and(|t| t.is_dir());
            if !is_fan {
                continue;
            }
            let dir = fan.path();
            let inner = fs::read_dir(&dir).map_err(|e| Error::read(&dir, e))?;
            for e in inner.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                let Ok(meta) = e.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let temp = name.starts_with(TEMP_PREFIX);
                let unlisted = name.len() == 64
                    && fan
                        .file_name()
                        .to_str()
                        .is_some_and(|f| name.starts_with(f))
                    && Digest32::parse(name).is_some_and(|d| !keep.contains(&d));
                if !(temp || unlisted) {
                    continue;
                }
                if remove {
                    fs::remove_file(e.path()).map_err(werr(&e.path()))?;
                }
                if temp {
                    out.temps += 1;
                    out.temp_bytes += meta.len();
                } else {
                    out.blobs += 1;
                    out.bytes += meta.len();
                }
            }
        }
        // Streamed blobs are written at the top before their name is known.
        for e in fs::read_dir(&self.root)
            .map_err(|e| Error::read(&self.root, e))?
            .flatten()
        {
            let name = e.file_name();
            if name.to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX))
                && e.file_type().is_ok_and(|t| t.is_file())
            {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                if remove {
                    fs::remove_file(e.path()).map_err(werr(&e.path()))?;
                }
                out.temps += 1;
                out.temp_bytes += len;
            }
        }
        if remove {
            let _ = self.fd.sync_all();
        }
        Ok(out)
    }
}

/// A blob being written, hashed as it goes. Dropped unfinished, its temporary file goes.
pub(super) struct BlobWriter {
    out: io::BufWriter<File>,
    temp: PathBuf,
    hasher: Sha256,
    bytes: u64,
    root: PathBuf,
    done: bool,
}

impl BlobWriter {
    pub(super) fn write(&mut self, b: &[u8]) -> Result<()> {
        self.hasher.update(b);
        self.bytes += b.len() as u64;
        self.out.write_all(b).map_err(werr(&self.temp))
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(werr(&self.temp))
    }

    /// Read-only, then renamed to the blob's name (over a damaged one, if any). The
    /// backup syncs its filesystem once before its manifest is written.
    fn commit(&mut self, sha: Digest32) -> Result<()> {
        self.flush()?;
        self.out
            .get_ref()
            .set_permissions(fs::Permissions::from_mode(0o400))
            .map_err(werr(&self.temp))?;
        let to = path_in(&self.root, &sha);
        fs::rename(&self.temp, &to).map_err(werr(&to))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Copy everything `from` reads into `w` (the streamed blob of a large file).
pub(super) fn copy_into(from: &mut impl Read, w: &mut BlobWriter) -> io::Result<Result<()>> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(Ok(())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Err(e) = w.write(&buf[..n]) {
            return Ok(Err(e));
        }
    }
}

fn flock(f: &File, op: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `f` is an open descriptor for the call's duration.
    if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
