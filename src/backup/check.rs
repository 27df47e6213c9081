//! Checking a backup against its manifest ([`check`], [`verify`]), as deeply as asked:
//! every listed file there at its size, or its SHA-256 too and the SQLite copy sound.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::manifest::{Digest32, FileEntry, MANIFEST, ManifestHead, stored_path, stream_manifest};
use super::sqlite_copy::check_sqlite_copy;
use super::{MARKER, SQLITE_COPY};
use crate::error::{Error, Result};
use crate::report::Finding;

// ---- checking a backup -------------------------------------------------------------------

/// Something wrong with a backup: `backup_incomplete`, `backup_missing_file` or
/// `backup_damaged`, and the file it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub code: &'static str,
    pub path: PathBuf,
    pub message: String,
}

impl Problem {
    pub fn finding(&self) -> Finding {
        Finding::new(self.code, self.message.clone()).path(&self.path)
    }
}

/// How deeply [`check`] reads a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Every file the manifest lists is there, a regular file of the listed size: one
    /// `stat` a file, what every `migrate-state` run does before its first write.
    Sizes,
    /// And each file's SHA-256 matches, and the SQLite copy passes `integrity_check`:
    /// `backup --verify`, `migrate-state --verify-backup`.
    Checksums,
}

/// What [`check`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub dir: PathBuf,
    /// Whether the files' SHA-256 were compared ([`Depth::Checksums`]).
    pub checksums: bool,
    /// Files the manifest lists, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Listed files found sound.
    pub sound: u64,
    /// How many problems, of which the first are in `problems`.
    pub problem_count: u64,
    pub problems: Vec<Problem>,
    /// How long the check took.
    pub ms: u64,
    /// The manifest's head, when it could be read.
    #[serde(skip)]
    pub head: Option<ManifestHead>,
}

impl Checked {
    /// A finished backup whose every listed file checked out.
    pub fn is_sound(&self) -> bool {
        self.head.is_some() && self.problem_count == 0
    }

    /// The code of the refusal to rely on it: `backup_incomplete` (never finished),
    /// else `backup_damaged`.
    pub fn code(&self) -> &'static str {
        if self.problems.iter().any(|p| p.code == "backup_incomplete") {
            "backup_incomplete"
        } else {
            "backup_damaged"
        }
    }

    /// What is wrong, in one line: the count and the first few problems.
    pub fn summary(&self) -> String {
        if self.head.is_none() || self.code() == "backup_incomplete" {
            let first = self.problems.first().map_or("", |p| p.message.as_str());
            return format!("{} is not a complete backup: {first}", self.dir.display());
        }
        let shown: Vec<&str> = self
            .problems
            .iter()
            .take(SUMMARY_PROBLEMS)
            .map(|p| p.message.as_str())
            .collect();
        let more = self.problem_count.saturating_sub(shown.len() as u64);
        format!(
            "{} is damaged: {} of {} listed files {} ({}{})",
            self.dir.display(),
            self.problem_count,
            self.files,
            if self.checksums {
                "are missing or differ from the manifest"
            } else {
                "are missing or of another size than the manifest says"
            },
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        )
    }
}

/// How many problems a one-line summary names.
pub const SUMMARY_PROBLEMS: usize = 5;
/// Listed files checked at once, in parallel.
const CHECK_CHUNK: usize = 4096;

/// Whether `dir` is a finished backup: a manifest and no marker. Says nothing about
/// its contents: see [`check`].
pub fn is_complete(dir: &Path) -> bool {
    !dir.join(MARKER).exists() && dir.join(MANIFEST).is_file()
}

/// Check an existing backup against its manifest, as deeply as `depth` says: the marker
/// is gone, and every listed file is there with its size (and its SHA-256, and the
/// SQLite copy passes `integrity_check`). The manifest is streamed, the files checked
/// a chunk at a time in parallel: a manifest of a million files is never held whole.
/// The first `keep` problems are kept (all are counted). `Err` only when `dir` cannot
/// be read at all.
pub fn check(dir: &Path, depth: Depth, keep: usize) -> Result<Checked> {
    let t0 = Instant::now();
    let mut out = check_inner(dir, depth, keep)?;
    out.ms = t0.elapsed().as_millis() as u64;
    Ok(out)
}

fn check_inner(dir: &Path, depth: Depth, keep: usize) -> Result<Checked> {
    let meta = fs::metadata(dir).map_err(|e| Error::Unreadable {
        path: dir.to_path_buf(),
        source: e,
    })?;
    if !meta.is_dir() {
        return Err(Error::Unreadable {
            path: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a folder"),
        });
    }
    let mut out = Checked {
        dir: dir.to_path_buf(),
        checksums: depth == Depth::Checksums,
        files: 0,
        bytes: 0,
        sound: 0,
        problem_count: 0,
        problems: Vec::new(),
        ms: 0,
        head: None,
    };
    let note = |out: &mut Checked, p: Problem| {
        out.problem_count += 1;
        if out.problems.len() < keep {
            out.problems.push(p);
        }
    };
    let marker = dir.join(MARKER);
    if fs::symlink_metadata(&marker).is_ok() {
        note(
            &mut out,
            Problem {
                code: "backup_incomplete",
                path: marker,
                message: format!(
                    "{} holds the {MARKER} marker: the backup never finished; it is not a backup",
                    dir.display()
                ),
            },
        );
    }
    let mpath = dir.join(MANIFEST);
    // Listed files are stat-ed relative to the open folder: the kernel walks only their
    // own path (as the store's scan does).
    let root = File::open(dir).map_err(|e| Error::Unreadable {
        path: dir.to_path_buf(),
        source: e,
    })?;
    // Blobs, relative to the open blob store (none for a backup that lists no blob).
    let blobs = dir
        .parent()
        .and_then(|p| File::open(p.join(super::blobs::DIR)).ok());
    let mut chunk: Vec<FileEntry> = Vec::with_capacity(CHECK_CHUNK);
    let mut sqlite_sound = false;
    let phase = crate::progress::Phase::counter("backup-check", crate::progress::Unit::Files);
    let mut run_chunk = |out: &mut Checked, chunk: &mut Vec<FileEntry>| {
        use rayon::prelude::*;
        phase.inc(chunk.len() as u64);
        let results: Vec<std::result::Result<(), Problem>> = chunk
            .par_iter()
            .map(|f| check_entry(dir, &root, blobs.as_ref(), &mpath, f, depth))
            .collect();
        for (f, r) in chunk.drain(..).zip(results) {
            out.files += 1;
            out.bytes += f.bytes;
            match r {
                Ok(()) => {
                    out.sound += 1;
                    sqlite_sound |= f.path == SQLITE_COPY && f.path_hex.is_none();
                }
                Err(p) => note(out, p),
            }
        }
    };
    let streamed = stream_manifest(dir, &mut |f| {
        chunk.push(f);
        if chunk.len() >= CHECK_CHUNK {
            run_chunk(&mut out, &mut chunk);
        }
    });
    run_chunk(&mut out, &mut chunk);
    phase.finish();
    let head = match streamed {
        Ok(h) => h,
        Err(Error::Unreadable { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            note(
                &mut out,
                Problem {
                    code: "backup_incomplete",
                    path: mpath,
                    message: format!(
                        "{} has no {MANIFEST}: the backup never finished; it is not a backup",
                        dir.display()
                    ),
                },
            );
            return Ok(out);
        }
        Err(e) => {
            note(
                &mut out,
                Problem {
                    code: "backup_damaged",
                    path: mpath,
                    message: e.to_string(),
                },
            );
            return Ok(out);
        }
    };
    if depth == Depth::Checksums && sqlite_sound {
        let path = dir.join(SQLITE_COPY);
        let bad = match check_sqlite_copy(&path, None) {
            Ok(Some(rows)) if rows != head.counts.sqlite_rows => Some(format!(
                "{SQLITE_COPY} holds {rows} rows, the manifest says {}",
                head.counts.sqlite_rows
            )),
            Ok(_) => None,
            Err(msg) => Some(msg),
        };
        if let Some(message) = bad {
            out.sound -= 1;
            note(
                &mut out,
                Problem {
                    code: "backup_damaged",
                    path,
                    message,
                },
            );
        }
    }
    out.head = Some(head);
    Ok(out)
}

/// `backup --verify`: [`check`] with the checksums, every problem kept.
pub fn verify(dir: &Path) -> Result<Checked> {
    check(dir, Depth::Checksums, usize::MAX)
}

/// One listed file, as deeply as `depth` says.
fn check_entry(
    dir: &Path,
    root: &File,
    blobs: Option<&File>,
    mpath: &Path,
    f: &FileEntry,
    depth: Depth,
) -> std::result::Result<(), Problem> {
    let rel = f.rel_path();
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Problem {
            code: "backup_damaged",
            path: mpath.to_path_buf(),
            message: format!("{MANIFEST} lists {:?}, a path outside the backup", f.path),
        });
    }
    let path = stored_path(dir, f);
    if depth == Depth::Checksums {
        return check_file(&path, f);
    }
    let name = describe(f);
    let problem = |code: &'static str, message: String| Problem {
        code,
        path: path.clone(),
        message,
    };
    let stat = match (f.blob, blobs) {
        (false, _) => crate::fsutil::lstat_at(root, &rel),
        (true, Some(b)) => {
            let hex = f.sha256.to_string();
            crate::fsutil::lstat_at(b, &Path::new(&hex[..2]).join(&hex))
        }
        (true, None) => Err(io::Error::from(io::ErrorKind::NotFound)),
    };
    match stat {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(problem("backup_missing_file", format!("{name} is missing")))
        }
        Err(e) => Err(problem(
            "backup_damaged",
            format!("{name} cannot be read: {e}"),
        )),
        Ok(m) if m.mode & libc::S_IFMT != libc::S_IFREG => Err(problem(
            "backup_damaged",
            format!("{name} is not a regular file"),
        )),
        Ok(m) if m.size != f.bytes => Err(problem(
            "backup_damaged",
            format!("{name} has {} bytes, the manifest says {}", m.size, f.bytes),
        )),
        Ok(_) => Ok(()),
    }
}

/// A listed file as messages name it: its path, and its blob's name when it is one.
fn describe(f: &FileEntry) -> String {
    if f.blob {
        format!("{} (blob {})", f.path, f.sha256)
    } else {
        f.path.clone()
    }
}

/// One listed file, at `path` (where its bytes are): present, its size, its hash.
fn check_file(path: &Path, f: &FileEntry) -> std::result::Result<(), Problem> {
    let name = describe(f);
    let problem = |code: &'static str, message: String| Problem {
        code,
        path: path.to_path_buf(),
        message,
    };
    match sha256_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(problem("backup_missing_file", format!("{name} is missing")))
        }
        Err(e) => Err(problem(
            "backup_damaged",
            format!("{name} cannot be read: {e}"),
        )),
        Ok((bytes, _)) if bytes != f.bytes => Err(problem(
            "backup_damaged",
            format!("{name} has {bytes} bytes, the manifest says {}", f.bytes),
        )),
        Ok((_, sha)) if sha != f.sha256 => Err(problem(
            "backup_damaged",
            format!(
                "{name}: SHA-256 {sha} differs from the manifest's {}",
                f.sha256
            ),
        )),
        Ok(_) => Ok(()),
    }
}

/// The self-check's half of [`check`]: every file this backup wrote reads back as
/// recorded (in parallel). The messages of what does not.
pub(super) fn check_written(dir: &Path, files: &[FileEntry]) -> Vec<String> {
    use rayon::prelude::*;
    files
        .par_iter()
        .filter_map(|f| check_file(&stored_path(dir, f), f).err())
        .map(|p| p.message)
        .collect()
}

/// The size and SHA-256 of the file at `path`, read whole.
pub(super) fn sha256_file(path: &Path) -> io::Result<(u64, Digest32)> {
    sha256_read(File::open(path)?)
}

/// The number of bytes `f` gives to its end, and their SHA-256.
pub(super) fn sha256_read(mut f: impl Read) -> io::Result<(u64, Digest32)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, Digest32(h.finalize().into())))
}
