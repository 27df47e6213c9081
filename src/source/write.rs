//! Writing into the legacy store's sessions folder: rollback's export and the runtime
//! store's SQLite + files backend both write `<sessions_dir>/<id>/state.json` here, and
//! only here.
//!
//! Nothing is written through a symlink, nor outside the sessions folder. The folder
//! is opened once (a link to the folder itself, such as a volume mounted elsewhere, is
//! followed then: it is the store), and every component below it — `<id>/`,
//! `state.json`, the temporary files — is reached relative to that open folder with
//! calls that never follow a link (`openat` with `O_NOFOLLOW | O_DIRECTORY`, `fstatat`
//! with `AT_SYMLINK_NOFOLLOW`, `renameat`). A `<id>/` or a `state.json` that is a
//! symlink is refused (`symlink_outside_root`), one that is a FIFO, a device or a
//! regular file where a folder belongs is refused (`not_regular_file`), and a link
//! swapped in between the check and the write makes the write fail rather than follow
//! it. Ids are single path components ([`super::fields::path_safe`]), so no `..` can
//! climb out.
//!
//! A replaced `state.json` keeps its own permissions (and, when running as root, its
//! owner); a new one gets the permissions most state files of the store have (looked up
//! on a few of them), else 0644, and the owner of its folder.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsutil::{Dir, Entry};

pub const STATE_FILE: &str = "state.json";
const DEFAULT_FILE_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;
/// How many `<id>/` folders are looked at to learn the store's usual modes.
const SAMPLE: usize = 16;

/// What is at a session's place in the sessions folder, as a writer may find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// No `<id>/` folder.
    NoFolder,
    /// The folder, without `state.json`.
    NoFile { folder: Entry },
    /// The folder and a regular `state.json`.
    File { folder: Entry, file: Entry },
}

impl Slot {
    pub fn file(&self) -> Option<&Entry> {
        match self {
            Slot::File { file, .. } => Some(file),
            _ => None,
        }
    }
}

/// When a write is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// At once: the file and its folder are synced (one write).
    Each,
    /// By the caller, for many writes at once, with [`Sessions::sync`].
    Later,
}

/// The SHA-256 of a file's bytes and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigest {
    pub bytes: u64,
    pub sha256: [u8; 32],
}

impl FileDigest {
    pub fn of(b: &[u8]) -> FileDigest {
        FileDigest {
            bytes: b.len() as u64,
            sha256: Sha256::digest(b).into(),
        }
    }
    pub fn hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// The sessions folder, opened for writing state files.
#[derive(Debug)]
pub struct Sessions {
    root: Dir,
    /// The filesystem the sessions folder is on.
    dev: u64,
    /// The usual (file, folder) permissions of the store, looked up once.
    modes: OnceLock<(u32, u32)>,
}

fn osstr(s: &str) -> &OsStr {
    OsStr::new(s)
}

impl Sessions {
    /// Open `dir` (the configured `sqlite.sessions_dir`).
    pub fn open(dir: &Path) -> Result<Sessions> {
        let root = Dir::open(dir).map_err(|e| Error::Unreadable {
            path: dir.to_path_buf(),
            source: if e.raw_os_error() == Some(libc::ENOTDIR) {
                io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "sqlite.sessions_dir is not a folder",
                )
            } else {
                e
            },
        })?;
        let dev = root
            .stat_self()
            .map_err(|e| Error::Unreadable {
                path: dir.to_path_buf(),
                source: e,
            })?
            .dev;
        Ok(Sessions {
            root,
            dev,
            modes: OnceLock::new(),
        })
    }

    /// The sessions folder, as configured.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// `<sessions_dir>/<id>`.
    pub fn folder_path(&self, id: &str) -> PathBuf {
        self.root.path().join(id)
    }

    /// `<sessions_dir>/<id>/state.json`.
    pub fn file_path(&self, id: &str) -> PathBuf {
        self.folder_path(id).join(STATE_FILE)
    }

    fn write_err(&self, path: PathBuf) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Write { path, source }
    }

    /// A refusal of what is at `path` (`entry`), found inside `parent` as `name`.
    fn refusal(
        &self,
        id: &str,
        parent: &Dir,
        name: &OsStr,
        path: PathBuf,
        entry: &Entry,
        want: &str,
    ) -> Error {
        if entry.is_symlink() {
            let to = parent
                .read_link(name)
                .map(|t| format!(" to {}", t.display()))
                .unwrap_or_default();
            Error::UnsafePath {
                code: "symlink_outside_root",
                message: format!(
                    "session {id:?}: {} is a symlink{to}: sessiondb never writes through a symlink (it could lead outside {}); nothing was written there — replace the link with the real {want}, or move it away, and run again",
                    path.display(),
                    self.root.path().display()
                ),
                path,
            }
        } else {
            Error::UnsafePath {
                code: "not_regular_file",
                message: format!(
                    "session {id:?}: {} is {}, where {want} belongs: nothing was written there",
                    path.display(),
                    entry.kind_name()
                ),
                path,
            }
        }
    }

    /// The same refusal for a call that failed because a link or a non-folder stood in
    /// the way (`ELOOP`, `ENOTDIR`): the place changed since it was looked at.
    fn refusal_of_errno(&self, id: &str, path: PathBuf, e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EMLINK) => Error::UnsafePath {
                code: "symlink_outside_root",
                message: format!(
                    "session {id:?}: {} became a symlink while sessiondb was writing: not followed, nothing was written there",
                    path.display()
                ),
                path,
            },
            Some(libc::ENOTDIR) => Error::UnsafePath {
                code: "not_regular_file",
                message: format!(
                    "session {id:?}: {} is no longer a folder: nothing was written there",
                    path.display()
                ),
                path,
            },
            _ => Error::Write { path, source: e },
        }
    }

    /// What is at `<id>/` and `<id>/state.json`; a symlink or a special file at either
    /// is refused.
    pub fn slot(&self, id: &str) -> Result<Slot> {
        let folder_path = self.folder_path(id);
        let folder = match self.root.lstat(osstr(id)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Slot::NoFolder),
            Err(e) => {
                return Err(Error::Unreadable {
                    path: folder_path,
                    source: e,
                });
            }
        };
        if !folder.is_dir() {
            return Err(self.refusal(id, &self.root, osstr(id), folder_path, &folder, "folder"));
        }
        let sub = self
            .root
            .open_dir(osstr(id))
            .map_err(|e| self.refusal_of_errno(id, folder_path.clone(), e))?;
        let path = folder_path.join(STATE_FILE);
        match sub.lstat(osstr(STATE_FILE)) {
            Ok(file) if file.is_file() => Ok(Slot::File { folder, file }),
            Ok(file) => Err(self.refusal(
                id,
                &sub,
                osstr(STATE_FILE),
                path,
                &file,
                "a regular state.json",
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Slot::NoFile { folder }),
            Err(e) => Err(Error::Unreadable { path, source: e }),
        }
    }

    fn folder(&self, id: &str) -> Result<Dir> {
        self.root
            .open_dir(osstr(id))
            .map_err(|e| self.refusal_of_errno(id, self.folder_path(id), e))
    }

    /// `<id>/<name>` opened for reading without following a link (`None`: no such folder
    /// or file; a symlink there is refused, as for a write), with its path for errors.
    fn open_file(&self, id: &str, name: &str) -> Result<Option<(std::fs::File, PathBuf)>> {
        let folder = match self.root.open_dir(osstr(id)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.refusal_of_errno(id, self.folder_path(id), e)),
        };
        let path = self.folder_path(id).join(name);
        match folder.open_read(osstr(name)) {
            Ok(f) => Ok(Some((f, path))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                Err(self.refusal_of_errno(id, path, e))
            }
            Err(e) => Err(Error::Unreadable { path, source: e }),
        }
    }

    /// The digest of `<id>/<name>` as it is now (`None`: no such file), read without
    /// following a link.
    pub fn digest(&self, id: &str, name: &str) -> Result<Option<FileDigest>> {
        let Some((mut f, path)) = self.open_file(id, name)? else {
            return Ok(None);
        };
        let mut h = Sha256::new();
        let n = io::copy(&mut f, &mut h).map_err(|e| Error::Unreadable { path, source: e })?;
        Ok(Some(FileDigest {
            bytes: n,
            sha256: h.finalize().into(),
        }))
    }

    /// The bytes of `<id>/<name>` as it is now (`None`: no such file), read without
    /// following a link (a symlink there is refused, as for a write).
    pub fn read(&self, id: &str, name: &str) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        let Some((mut f, path)) = self.open_file(id, name)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        f.read_to_end(&mut out)
            .map_err(|e| Error::Unreadable { path, source: e })?;
        Ok(Some(out))
    }

    /// The permissions most state files and `<id>/` folders of the store have: a few
    /// are looked at, once.
    pub fn usual_modes(&self) -> (u32, u32) {
        *self.modes.get_or_init(|| {
            let mut files = std::collections::BTreeMap::<u32, usize>::new();
            let mut dirs = std::collections::BTreeMap::<u32, usize>::new();
            for name in self.root.names(SAMPLE).unwrap_or_default() {
                let Ok(e) = self.root.lstat(&name) else {
                    continue;
                };
                if !e.is_dir() {
                    continue;
                }
                *dirs.entry(e.perm).or_default() += 1;
                if let Ok(f) = self
                    .root
                    .open_dir(&name)
                    .and_then(|d| d.lstat(osstr(STATE_FILE)))
                    && f.is_file()
                {
                    *files.entry(f.perm).or_default() += 1;
                }
            }
            let most = |m: &std::collections::BTreeMap<u32, usize>, or: u32| {
                m.iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(p, _)| *p)
                    .unwrap_or(or)
            };
            (
                most(&files, DEFAULT_FILE_MODE),
                most(&dirs, DEFAULT_DIR_MODE),
            )
        })
    }

    /// Create `<id>/` (when `slot` says there is none) and write `bytes` to the new file
    /// `<id>/<temp>`, with the mode and owner `state.json` will have. With `Sync::Each`
    /// the file and its folder are synced here; with `Sync::Later` the caller calls
    /// [`Sessions::sync`] once for many (a folder on another filesystem, a mount inside
    /// the sessions folder, is synced here all the same). Returns whether the folder
    /// was created here.
    pub fn stage(
        &self,
        id: &str,
        slot: &Slot,
        temp: &str,
        bytes: &[u8],
        sync: Sync,
    ) -> Result<bool> {
        let (file_mode, dir_mode) = self.usual_modes();
        let root_owner = self.root.stat_self().ok();
        let made = if *slot == Slot::NoFolder {
            let path = self.folder_path(id);
            self.root
                .mkdir(osstr(id), dir_mode)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => Error::ChangedDuringWrite {
                        message: format!(
                            "session {id:?}: {} appeared while sessiondb was writing: nothing was written there; run again",
                            path.display()
                        ),
                    },
                    _ => Error::Write { path: path.clone(), source: e },
                })?;
            // mkdir applies the umask: set the mode asked for.
            if let Ok(d) = self.root.open_dir(osstr(id)) {
                let _ = set_dir_perm(&d, dir_mode);
                if let (true, Some(o)) = (crate::fsutil::is_root(), root_owner) {
                    let _ = self.root.chown(osstr(id), o.uid, o.gid);
                }
            }
            true
        } else {
            false
        };
        let folder = self.folder(id)?;
        let each = self.sync_each(&folder, sync);
        let path = self.folder_path(id).join(temp);
        let (mode, owner) = match slot {
            Slot::File { file, .. } => (file.perm, Some((file.uid, file.gid))),
            Slot::NoFile { folder } => (file_mode, Some((folder.uid, folder.gid))),
            Slot::NoFolder => (file_mode, root_owner.map(|o| (o.uid, o.gid))),
        };
        let result = (|| -> io::Result<()> {
            let mut f = folder.create_new(osstr(temp), mode)?;
            f.write_all(bytes)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            if let (true, Some((uid, gid))) = (crate::fsutil::is_root(), owner) {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            }
            if each {
                f.sync_all()?;
                folder.sync()?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = folder.unlink(osstr(temp));
            if made {
                let _ = self.root.rmdir(osstr(id));
            }
            return Err(self.write_err(path)(e));
        }
        if made && each {
            self.root
                .sync()
                .map_err(self.write_err(self.dir().to_path_buf()))?;
        }
        Ok(made)
    }

    /// Whether writes into `folder` are synced one by one.
    fn sync_each(&self, folder: &Dir, sync: Sync) -> bool {
        sync == Sync::Each || folder.stat_self().map_or(true, |e| e.dev != self.dev)
    }

    /// Make everything written with `Sync::Later` durable: one `syncfs` of the sessions
    /// folder's filesystem.
    pub fn sync(&self) -> Result<()> {
        self.root
            .sync_filesystem()
            .map_err(self.write_err(self.dir().to_path_buf()))
    }

    /// Put `<id>/<temp>` in place of `<id>/state.json` (one atomic rename inside the
    /// folder; the folder synced as `sync` says).
    pub fn install(&self, id: &str, temp: &str, sync: Sync) -> Result<()> {
        let folder = self.folder(id)?;
        let path = self.file_path(id);
        folder
            .rename(osstr(temp), osstr(STATE_FILE))
            .map_err(self.write_err(path.clone()))?;
        if self.sync_each(&folder, sync) {
            folder.sync().map_err(self.write_err(path))?;
        }
        Ok(())
    }

    /// Remove `<id>/<temp>` if it is there, and `<id>/` when `folder_made` and empty.
    pub fn discard(&self, id: &str, temp: &str, folder_made: bool) -> Result<()> {
        let folder = match self.root.open_dir(osstr(id)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.refusal_of_errno(id, self.folder_path(id), e)),
        };
        match folder.unlink(osstr(temp)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.write_err(self.folder_path(id).join(temp))(e)),
        }
        let _ = folder.sync();
        if folder_made {
            match self.root.rmdir(osstr(id)) {
                Ok(()) => {
                    let _ = self.root.sync();
                }
                // Something else is in it now: it stays.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOTEMPTY) | Some(libc::EEXIST) | Some(libc::ENOENT)
                    ) => {}
                Err(e) => return Err(self.write_err(self.folder_path(id))(e)),
            }
        }
        Ok(())
    }

    /// Write `<id>/state.json` atomically in one go (a temp file, fsync, rename, fsync
    /// of the folder): the runtime store's write. Returns whether `<id>/` was created.
    pub fn write(&self, id: &str, bytes: &[u8]) -> Result<bool> {
        let slot = self.slot(id)?;
        let temp = format!(
            ".{STATE_FILE}.tmp-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let made = self.stage(id, &slot, &temp, bytes, Sync::Each)?;
        if let Err(e) = self.install(id, &temp, Sync::Each) {
            let _ = self.discard(id, &temp, made);
            return Err(e);
        }
        Ok(made)
    }

    /// Remove `<id>/state.json` (when `folder_made`, also `<id>/` if it is then empty):
    /// taking back a file written for a row that did not commit.
    pub fn remove(&self, id: &str, folder_made: bool) -> Result<()> {
        self.discard(id, STATE_FILE, folder_made)
    }

    /// Remove the temporary files that writers of `<id>/state.json` left behind in
    /// processes that no longer run (`.state.json.tmp-<pid>-...`; files of a live process
    /// are left alone). Returns how many were removed.
    pub fn remove_stale_temps(&self, id: &str) -> usize {
        let Ok(folder) = self.root.open_dir(osstr(id)) else {
            return 0;
        };
        let prefix = format!(".{STATE_FILE}.tmp-");
        let mut removed = 0;
        for n in folder.names(usize::MAX).unwrap_or_default() {
            let Some(rest) = n.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if crate::fsutil::process_gone(pid) && folder.unlink(&n).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// The names in `<id>/` (empty when there is no such folder).
    pub fn names_in(&self, id: &str) -> Vec<OsString> {
        self.root
            .open_dir(osstr(id))
            .and_then(|d| d.names(usize::MAX))
            .unwrap_or_default()
    }
}

fn set_dir_perm(d: &Dir, mode: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // fchmod on the folder's own descriptor: no path, no link to follow.
    let fd = d.as_raw_fd();
    // SAFETY: a valid descriptor.
    if unsafe { libc::fchmod(fd, mode as libc::mode_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
