//! The backup folders of `backup.dir`: their names, the `INCOMPLETE` marker that a
//! backup holds locked while it writes, and the leftovers of failed backups, which the
//! next backup removes (the one thing, besides `backup --prune`, that removes a folder).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{MANIFEST, MARKER, create_file, sync_dir};
use crate::error::{Error, Result};
use crate::report::Finding;

/// `<backup.dir>/<UTC timestamp>-<8 hex>`.
pub(super) fn folder_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &id[..8]
    )
}

/// Whether `name` is a backup folder's name, as [`folder_name`] makes them.
pub(super) fn is_folder_name(name: &str) -> bool {
    let b = name.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 25
        && digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Create `backup_dir` (0700 if missing), a fresh backup folder in it (0700), and its
/// marker, first of all. The marker names the process writing the backup, which holds
/// an exclusive lock on it (`flock`) until it is done: the returned file.
pub(super) fn create_folder(backup_dir: &Path, run_id: &str) -> Result<(PathBuf, File)> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |e| Error::Write { path, source: e }
    };
    crate::fsutil::create_private_dir_all(backup_dir).map_err(werr(backup_dir))?;
    let dir = backup_dir.join(folder_name());
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(werr(&dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(werr(&dir))?;
    let marker = dir.join(MARKER);
    let mut f = create_file(&marker)?;
    lock(&f, true).map_err(werr(&marker))?;
    writeln!(
        f,
        "this backup is incomplete until manifest.json exists and this file is gone\n\
         pid {}\nhost {}\nrun {run_id}\n\
         (a folder still holding this file is not a backup: the next backup removes it \
         once no process holds a lock on this file)",
        std::process::id(),
        hostname(),
    )
    .and_then(|_| f.sync_all())
    .map_err(werr(&marker))?;
    sync_dir(&dir)?;
    Ok((dir, f))
}

pub(super) fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `flock` on `f`: exclusive and waiting when `wait`, else exclusive or fail at once.
pub(super) fn lock(f: &File, wait: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: `f` is an open descriptor for the call's duration.
    if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a marker says about the process that wrote it: its pid and host, when it names
/// them (markers written before they did name nothing).
pub(super) fn marker_writer(text: &str) -> (Option<u32>, Option<&str>) {
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' '))
            .map(str::trim)
    };
    (field("pid").and_then(|p| p.parse().ok()), field("host"))
}

/// Whether process `pid` runs on this machine.
pub(super) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 checks for the process only; nothing is sent.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The folders under `backup_dir` that are leftovers of failed backups, as of a backup
/// that began at `began` (`own`: its own folder, never one of them). A folder is one
/// only when all of these hold:
///
/// - it is a folder (not a link) directly under `backup_dir`, named as backups are;
/// - it still holds the `INCOMPLETE` marker, a regular file: it is not a backup (a
///   folder without the marker is never touched, whatever else it holds or lacks);
/// - the marker was last written before `began`: the backup it belongs to began first;
/// - no process holds the marker's lock: no live backup is writing it (a killed one
///   lost its lock with its life);
/// - the marker names no live process of this host (and a marker from another host
///   is left alone unless it names nothing: older markers did not).
///
/// Each returned folder comes with its marker open and locked: hold it while removing.
fn find_failed(
    backup_dir: &Path,
    own: Option<&Path>,
    began: std::time::SystemTime,
) -> Vec<(PathBuf, File)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(backup_dir) else {
        return out;
    };
    let host = hostname();
    for entry in rd.flatten() {
        let dir = entry.path();
        let named = entry.file_name().to_str().is_some_and(is_folder_name);
        if !named || Some(dir.as_path()) == own {
            continue;
        }
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let marker = dir.join(MARKER);
        let Ok(meta) = fs::symlink_metadata(&marker) else {
            continue;
        };
        if !meta.is_file() || meta.modified().map_or(true, |m| m >= began) {
            continue;
        }
        let Ok(f) = File::open(&marker) else {
            continue;
        };
        if lock(&f, false).is_err() {
            continue;
        }
        // Still the marker it was (the backup may have finished in between)?
        let same = fs::symlink_metadata(&marker)
            .is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
        if !same || dir.join(MANIFEST).exists() {
            continue;
        }
        let text = fs::read_to_string(&marker).unwrap_or_default();
        match marker_writer(&text) {
            (Some(pid), Some(h)) if h == host => {
                if pid != std::process::id() && process_alive(pid) {
                    continue;
                }
            }
            (_, Some(_)) => continue,
            (_, None) => {}
        }
        out.push((dir, f));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The leftovers of failed backups that a backup beginning now would remove
/// (see [`find_failed`]); nothing is removed.
pub fn failed_backups(
    backup_dir: &Path,
    own: Option<&Path>,
    began: std::time::SystemTime,
) -> Vec<PathBuf> {
    find_failed(backup_dir, own, began)
        .into_iter()
        .map(|(d, _)| d)
        .collect()
}

/// Remove the leftovers of failed backups (see [`find_failed`]): they hold nothing
/// anyone relies on, and they may hold the room this backup needs. What cannot be
/// removed is warned about (`backup_cleanup`); the backup goes on.
pub(super) fn remove_failed_backups(
    backup_dir: &Path,
    own: &Path,
    began: std::time::SystemTime,
    warnings: &mut Vec<Finding>,
) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for (dir, _held) in find_failed(backup_dir, Some(own), began) {
        tracing::info!(
            "removing {}: a backup that never finished (its INCOMPLETE marker, no live writer)",
            dir.display()
        );
        match fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(dir),
            Err(e) => warnings.push(
                Finding::new(
                    "backup_cleanup",
                    format!(
                        "{}: a backup that never finished could not be removed: {e}",
                        dir.display()
                    ),
                )
                .path(&dir),
            ),
        }
    }
    if !removed.is_empty() {
        let _ = sync_dir(backup_dir);
    }
    removed
}
