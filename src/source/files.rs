//! State files: `<sessions_dir>/<id>/state.json`. Symlinks that leave the store are
//! recorded, never followed; unreadable and oversized files are invalid records, and so
//! is a special file (a FIFO, a socket, a device: `not_regular_file`), never opened.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::Invalid;
use crate::canon::MAX_STATE_BYTES;

fn invalid(
    id: &str,
    code: &'static str,
    path: &Path,
    message: String,
    raw: Vec<u8>,
) -> Box<Invalid> {
    Box::new(Invalid {
        id: Some(id.to_owned()),
        code,
        message: format!("session {id}: {}: {message}", path.display()),
        path: Some(path.to_path_buf()),
        record: "state_file",
        raw,
    })
}

/// Whether `p`, with every link resolved, stays under `root`.
fn inside(root: Option<&Path>, p: &Path) -> bool {
    match (root, std::fs::canonicalize(p)) {
        (Some(root), Ok(real)) => real.starts_with(root),
        _ => false,
    }
}

/// [`read_state`], reached relative to the open sessions folder `dir_fd` (`dir` its
/// path): the folder `<id>` opened without following a link, then its `state.json`
/// looked at and opened relative to that, one path component each, where
/// [`read_state`] walks the whole path four times (a tenth of a full scan's time on a
/// large store). Anything but the plain case — a folder or a file that is a link,
/// anything but a regular file, an oversized file, an error, a file that kept
/// changing — is left to [`read_state`], its checks and its messages.
pub(crate) fn read_state_at(
    dir_fd: &std::fs::File,
    dir: &Path,
    root: Option<&Path>,
    id: &str,
) -> Result<Option<(Vec<u8>, PathBuf)>, Box<Invalid>> {
    match plain_state(dir_fd, id) {
        Plain::Read(bytes) => Ok(Some((bytes, dir.join(id).join("state.json")))),
        Plain::Absent => Ok(None),
        Plain::Other => read_state(dir, root, id),
    }
}

/// What [`plain_state`] found.
enum Plain {
    /// A regular file in a real folder, read whole.
    Read(Vec<u8>),
    /// No folder `<id>`, or no `state.json` in it.
    Absent,
    /// Anything else: for [`read_state`] to judge.
    Other,
}

fn plain_state(dir_fd: &std::fs::File, id: &str) -> Plain {
    let name = std::ffi::OsStr::new("state.json");
    let folder = match crate::fsutil::open_dir_at(dir_fd, std::ffi::OsStr::new(id)) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Plain::Absent,
        Err(_) => return Plain::Other,
    };
    // Looked at before it is opened: a device is never opened (some have effects).
    match crate::fsutil::lstat_at(&folder, Path::new(name)) {
        Ok(m) if m.mode & libc::S_IFMT == libc::S_IFREG && m.size as usize <= MAX_STATE_BYTES => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Plain::Absent,
        _ => return Plain::Other,
    }
    match read_whole_by(|| crate::fsutil::reopen_regular_at(&folder, name)) {
        Ok(Whole::Read(bytes)) => Plain::Read(bytes),
        Ok(Whole::Gone) => Plain::Absent,
        Ok(Whole::KeptChanging(_)) | Err(_) => Plain::Other,
    }
}

/// Read the state file of `id` if there is one.
pub(crate) fn read_state(
    dir: &Path,
    root: Option<&Path>,
    id: &str,
) -> Result<Option<(Vec<u8>, PathBuf)>, Box<Invalid>> {
    let folder = dir.join(id);
    match std::fs::symlink_metadata(&folder) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(invalid(
                id,
                "unreadable",
                &folder,
                e.to_string(),
                Vec::new(),
            ));
        }
        Ok(m) if m.file_type().is_symlink() && !inside(root, &folder) => {
            let target = std::fs::read_link(&folder)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            return Err(invalid(
                id,
                "symlink_outside_root",
                &folder,
                format!("the folder is a symlink to {target}, outside the store: not followed"),
                target.into_bytes(),
            ));
        }
        Ok(_) => {}
    }
    let path = folder.join("state.json");
    let meta = match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(invalid(id, "unreadable", &path, e.to_string(), Vec::new())),
        Ok(m) => m,
    };
    if meta.file_type().is_symlink() && !inside(root, &path) {
        {
            let target = std::fs::read_link(&path)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            return Err(invalid(
                id,
                "symlink_outside_root",
                &path,
                format!("a symlink to {target}, outside the store: not followed"),
                target.into_bytes(),
            ));
        }
    }
    // A link inside the store is followed; a file that was no link is opened without
    // following one (`O_NOFOLLOW`), so that swapping in a link after this look does not
    // lead the read out of the store.
    let follow = meta.file_type().is_symlink();
    let meta = std::fs::metadata(&path)
        .map_err(|e| invalid(id, "unreadable", &path, e.to_string(), Vec::new()))?;
    if meta.is_dir() {
        return Err(invalid(
            id,
            "unreadable",
            &path,
            "a folder, not a regular file".into(),
            Vec::new(),
        ));
    }
    if !meta.is_file() {
        // A FIFO would block the read, a device never end it: never opened.
        return Err(not_regular(
            id,
            &path,
            crate::fsutil::NotRegular {
                what: crate::fsutil::kind_of(&meta),
                expected: "a regular file",
            },
        ));
    }
    if meta.len() as usize > MAX_STATE_BYTES {
        return Err(invalid(
            id,
            "too_large",
            &path,
            format!(
                "{} bytes, over the {} byte limit of a jsonb value",
                meta.len(),
                MAX_STATE_BYTES
            ),
            Vec::new(),
        ));
    }
    match read_whole_with(&path, follow) {
        Ok(Whole::Read(bytes)) => Ok(Some((bytes, path))),
        Ok(Whole::Gone) => Ok(None),
        Ok(Whole::KeptChanging(bytes)) => Err(invalid(
            id,
            "state_changing",
            &path,
            format!(
                "the file kept changing while it was read ({READ_TRIES} tries): something rewrites it in place; run again once it settles (the last bytes read are kept)"
            ),
            bytes,
        )),
        Err(e) => Err(match crate::fsutil::not_regular(&e) {
            Some(nr) => not_regular(id, &path, nr),
            None => invalid(id, "unreadable", &path, e.to_string(), Vec::new()),
        }),
    }
}

/// A state file that is not a regular file: an invalid record without bytes (none were
/// read), which quarantine records by its path and message.
fn not_regular(id: &str, path: &Path, nr: crate::fsutil::NotRegular) -> Box<Invalid> {
    invalid(id, "not_regular_file", path, nr.to_string(), Vec::new())
}

/// How many times a state file that changes under the reader is read again.
pub const READ_TRIES: u32 = 5;

/// What [`read_whole`] got.
pub enum Whole {
    Read(Vec<u8>),
    /// Deleted before it could be read.
    Gone,
    /// Still changing after [`READ_TRIES`] tries: the last bytes read.
    KeptChanging(Vec<u8>),
}

/// Read a file whole, and only whole. An in-place rewrite during the read would give a
/// mix of two versions that may even parse, so the file's size and times must be the
/// same before and after the read; a file written in the last second is read twice,
/// 100 ms apart, and must read the same (file times move in clock ticks, so a write in
/// the same tick as the first look would not show in them).
///
/// The caller has looked at `path` and found a regular file. It is opened without
/// blocking and its descriptor checked ([`crate::fsutil::reopen_regular`], links
/// followed): a FIFO, a device or a pseudo-file swapped in since is an error that
/// [`crate::fsutil::not_regular`] recognises, and nothing of it is read. No read goes past the size the file had
/// when it was opened (one byte more shows that it grew, and it is read again).
pub fn read_whole(path: &Path) -> std::io::Result<Whole> {
    read_whole_with(path, true)
}

/// [`read_whole`]; a symlink at `path` is refused unless `follow`.
pub(crate) fn read_whole_with(path: &Path, follow: bool) -> std::io::Result<Whole> {
    read_whole_by(|| crate::fsutil::reopen_regular(path, follow))
}

/// [`read_whole`] of the file that `open` opens (each try opens it again), with the
/// metadata of the descriptor as opened.
fn read_whole_by(
    open: impl Fn() -> std::io::Result<(std::fs::File, std::fs::Metadata)>,
) -> std::io::Result<Whole> {
    use std::io::Read;
    let read = || -> std::io::Result<Option<(Vec<u8>, bool, bool)>> {
        let (f, before) = match open() {
            Ok(opened) => opened,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::with_capacity(before.len() as usize + 1);
        (&f).take(before.len() + 1).read_to_end(&mut buf)?;
        let after = f.metadata()?;
        let stable = same_version(&before, &after) && buf.len() as u64 == after.len();
        let recent = after
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_none_or(|age| age < std::time::Duration::from_secs(1));
        Ok(Some((buf, stable, recent)))
    };
    let mut last = Vec::new();
    for attempt in 0..READ_TRIES {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(20 * attempt as u64));
        }
        let Some((bytes, stable, recent)) = read()? else {
            return Ok(Whole::Gone);
        };
        if stable && !recent {
            return Ok(Whole::Read(bytes));
        }
        if stable {
            // Long enough apart that a writer paused mid-version (descheduled, say) has
            // moved on by the second read.
            std::thread::sleep(std::time::Duration::from_millis(100));
            match read()? {
                None => return Ok(Whole::Gone),
                Some((again, true, _)) if again == bytes => return Ok(Whole::Read(bytes)),
                Some((again, _, _)) => last = again,
            }
        } else {
            last = bytes;
        }
    }
    Ok(Whole::KeptChanging(last))
}

/// Whether two looks at one open file saw the same version of it.
pub(crate) fn same_version(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (
        a.len(),
        a.mtime(),
        a.mtime_nsec(),
        a.ctime(),
        a.ctime_nsec(),
    ) == (
        b.len(),
        b.mtime(),
        b.mtime_nsec(),
        b.ctime(),
        b.ctime_nsec(),
    )
}
