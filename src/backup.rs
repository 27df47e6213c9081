//! Backups of the legacy store (SPEC §4 `backup`): a timestamped, owner-only folder
//! under `backup.dir` that holds everything needed to put the store back as it was.
//!
//! ```text
//! <backup.dir>/<YYYYmmddTHHMMSSZ>-<8 hex>/     0700, every file 0600
//!   INCOMPLETE              written first, removed last
//!   sqlite/app.db           one-step online-backup snapshot of the database
//!   sessions.jsonl          every resolved valid session, one per line
//!   invalid.jsonl           every invalid record with its raw bytes in hex
//!   state/<id>/state.json   byte-exact copies (the whole <id>/ with --include-uploads)
//!   json/session-db.json    the deprecated JSON store, when configured
//!   config/sessiondb.toml   the config file
//!   manifest.json           written atomically, after the self-check passed
//! ```
//!
//! Kill-safety: a folder that holds `INCOMPLETE`, or no `manifest.json`, is not a
//! backup, whatever else it holds; [`matching`] and [`check`] say so. The writing
//! process holds a lock on the marker (`flock`, gone with the process), and the marker
//! names it. Nothing here deletes a backup: besides the marker it just wrote, the only
//! thing removed is the folder of a failed backup (`find_failed` says which), before a
//! new backup is written. Nothing here writes to the source: the database is opened
//! read-only and the state files are only read; a file of the store the tool may not
//! read is noted in the manifest (`unreadable`), not copied.
//!
//! `sessions.jsonl` is resolved from the SQLite *copy* (plus the state files and the
//! JSON store), so the dump and `sqlite/app.db` describe the same snapshot of a live
//! database.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, SqliteSource};
use crate::error::{Error, Result};
use crate::report::Finding;
use crate::source::{self, Item, Source, fields, sqlite};

/// The manifest's `format`.
pub const FORMAT: &str = "sessiondb.backup/v1";
/// Present while a backup is being written; a folder holding it is not a backup.
pub const MARKER: &str = "INCOMPLETE";
pub const MANIFEST: &str = "manifest.json";
pub const SQLITE_COPY: &str = "sqlite/app.db";
pub const SESSIONS_JSONL: &str = "sessions.jsonl";
pub const INVALID_JSONL: &str = "invalid.jsonl";
pub const STATE_DIR: &str = "state";
pub const JSON_COPY: &str = "json/session-db.json";
pub const CONFIG_COPY: &str = "config/sessiondb.toml";

/// How long the database copy retries while SQLite says busy or locked.
const BUSY_RETRY: Duration = Duration::from_secs(30);
const BUSY_PAUSE_MAX: Duration = Duration::from_millis(250);
const SCAN_BATCH: usize = 1000;
const COPY_BUF: usize = 64 * 1024;

/// What to back up beyond the default.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Copy the whole `<id>/` folder (uploads, logs), not only `state.json`.
    pub include_uploads: bool,
}

// ---- the manifest ------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub tool_version: String,
    pub created_at: String,
    pub run_id: String,
    pub source: ManifestSource,
    /// [`Source::quick_fingerprint`] taken before anything was copied.
    pub source_fingerprint: String,
    /// The same, taken after everything was copied: differs when the store was written
    /// to during the backup.
    pub fingerprint_after: String,
    pub include_uploads: bool,
    pub counts: ManifestCounts,
    pub files: Vec<FileEntry>,
    pub skipped_symlinks: Vec<Skipped>,
    /// Entries that are neither files nor folders, or that vanished or kept changing.
    #[serde(default)]
    pub skipped_other: Vec<Skipped>,
    /// Files of the store that the backup was not allowed to read (their path and the
    /// error): not copied. The backup is complete without them; the records they hold
    /// are invalid (`unreadable`) and quarantined without bytes by `migrate-state`.
    #[serde(default)]
    pub unreadable: Vec<Skipped>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestSource {
    pub config: PathBuf,
    pub sqlite: Option<PathBuf>,
    pub sessions_dir: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ManifestCounts {
    pub sessions: u64,
    pub invalid: u64,
    pub sqlite_rows: u64,
    pub state_files: u64,
    pub bytes: u64,
}

/// One file of the backup: its path relative to the backup folder, size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    /// The path's bytes in hex, when they are not UTF-8 (`path` is then lossy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    pub bytes: u64,
    pub sha256: Digest32,
}

/// A SHA-256 digest: 64 hex digits in the manifest, 32 bytes in memory (a backup of a
/// million files holds a million of them).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest32(pub [u8; 32]);

impl std::fmt::Display for Digest32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for Digest32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Digest32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.as_bytes(), &mut out).map_err(|_| {
            serde::de::Error::custom(format!("{text:?} is not a SHA-256 in hex (64 digits)"))
        })?;
        Ok(Digest32(out))
    }
}

impl FileEntry {
    /// The path relative to the backup folder, exactly as written.
    pub fn rel_path(&self) -> PathBuf {
        match self.path_hex.as_deref().and_then(|h| hex::decode(h).ok()) {
            Some(b) => PathBuf::from(OsStr::from_bytes(&b)),
            None => PathBuf::from(&self.path),
        }
    }
}

/// Something in the sessions folder that was not copied, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
    pub reason: String,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest> {
        read_manifest(dir, |m: &Manifest| &m.format)
    }
}

/// What choosing a backup needs of its manifest, read without building its file list.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestHead {
    pub format: String,
    pub created_at: String,
    pub source_fingerprint: String,
    pub fingerprint_after: String,
    pub counts: ManifestCounts,
}

impl ManifestHead {
    pub fn read(dir: &Path) -> Result<ManifestHead> {
        read_manifest(dir, |m: &ManifestHead| &m.format)
    }
}

/// Read `dir`'s manifest as a `T`, refusing another format than ours.
fn read_manifest<T: serde::de::DeserializeOwned>(
    dir: &Path,
    format: impl Fn(&T) -> &str,
) -> Result<T> {
    let path = dir.join(MANIFEST);
    let file = File::open(&path).map_err(|e| Error::Unreadable {
        path: path.clone(),
        source: e,
    })?;
    // Parsed as it is read: the manifest of a million files is 150 MB of text.
    let m: T =
        serde_json::from_reader(io::BufReader::with_capacity(1 << 20, file)).map_err(|e| {
            Error::Unreadable {
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            }
        })?;
    if format(&m) != FORMAT {
        return Err(Error::Unreadable {
            path,
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("format {:?}, expected {FORMAT:?}", format(&m)),
            ),
        });
    }
    Ok(m)
}

// ---- the plan ----------------------------------------------------------------------------

/// What a backup of this store would copy, measured without copying (the dry run).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The folder a backup taken now would be written to.
    pub dir: PathBuf,
    pub include_uploads: bool,
    /// The database and its WAL, as they are now.
    pub sqlite_bytes: Option<u64>,
    pub state_files: u64,
    pub state_bytes: u64,
    /// Other files of the `<id>/` folders (with --include-uploads).
    pub other_files: u64,
    pub other_bytes: u64,
    pub json_bytes: Option<u64>,
    pub config_bytes: u64,
    /// Roughly what the backup will take: the copies, plus the JSON Lines dump (about
    /// the state again).
    pub estimated_bytes: u64,
    /// Free space where the backup would go (its nearest existing folder).
    pub available: Option<u64>,
    pub skipped_symlinks: Vec<Skipped>,
    pub skipped_other: Vec<Skipped>,
    /// Entries the backup would not be allowed to read (their error).
    pub unreadable: Vec<Skipped>,
    /// Folders of failed backups that a backup taken now would remove first.
    pub would_remove: Vec<PathBuf>,
}

/// Measure a backup of `cfg`'s store without writing anything.
pub fn plan(cfg: &Config, opts: &Options) -> Result<Plan> {
    // A FIFO or a device in the store is refused here, in the dry run too.
    Source::from_config(cfg).check_paths()?;
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).ok();
    let sqlite_bytes = cfg
        .sqlite
        .as_ref()
        .map(|s| size(&s.path).unwrap_or(0) + size(&wal_path(&s.path)).unwrap_or(0));
    let mut p = Plan {
        dir: cfg.backup_dir.join(folder_name()),
        include_uploads: opts.include_uploads,
        sqlite_bytes,
        state_files: 0,
        state_bytes: 0,
        other_files: 0,
        other_bytes: 0,
        json_bytes: cfg.json_path.as_deref().map(|j| size(j).unwrap_or(0)),
        config_bytes: size(&cfg.path).unwrap_or(0),
        estimated_bytes: 0,
        available: crate::fsutil::available_space(&crate::fsutil::nearest_existing(
            &cfg.backup_dir,
        ))
        .ok(),
        skipped_symlinks: Vec::new(),
        skipped_other: Vec::new(),
        unreadable: Vec::new(),
        would_remove: failed_backups(&cfg.backup_dir, None, std::time::SystemTime::now()),
    };
    if let Some(s) = &cfg.sqlite {
        walk_sessions(&s.sessions_dir, opts.include_uploads, |found| {
            match found {
                Found::Dir { .. } => {}
                Found::File {
                    len, state: true, ..
                } => {
                    p.state_files += 1;
                    p.state_bytes += len;
                }
                Found::File { len, .. } => {
                    p.other_files += 1;
                    p.other_bytes += len;
                }
                Found::Skip(s, SkipKind::Symlink) => p.skipped_symlinks.push(s),
                Found::Skip(s, SkipKind::Other) => p.skipped_other.push(s),
                Found::Skip(s, SkipKind::Unreadable) => p.unreadable.push(s),
            }
            Ok(())
        })?;
    }
    p.estimated_bytes = p.sqlite_bytes.unwrap_or(0)
        + p.state_bytes * 2
        + p.other_bytes
        + p.json_bytes.unwrap_or(0) * 2
        + p.config_bytes;
    Ok(p)
}

// ---- taking a backup ---------------------------------------------------------------------

/// A backup that was written and passed its self-check.
#[derive(Debug)]
pub struct BackupResult {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// What the scan of the store warned about (orphans, state conflicts...), and the
    /// backup's own warnings (skipped symlinks, a store written to during the backup).
    pub warnings: Vec<Finding>,
    /// The first invalid records (all are in `invalid.jsonl`).
    pub invalid: Vec<Finding>,
    /// Folders of failed backups removed before this one was written
    /// ([`failed_backups`]).
    pub removed_incomplete: Vec<PathBuf>,
}

/// Take a backup of `cfg`'s store: see the module documentation. On an error the folder
/// is left as it is, with its `INCOMPLETE` marker and without a manifest, for the next
/// backup to remove. A state file (or upload) the tool may not read is noted in the
/// manifest's `unreadable` and warned about, not copied: the backup is complete without
/// it.
pub fn take(cfg: &Config, opts: &Options, run_id: &str) -> Result<BackupResult> {
    let started = std::time::SystemTime::now();
    let src = Source::from_config(cfg);
    // Resolve before acting: the store must be readable before a folder is created.
    if src.sqlite.is_none() && src.json_path.is_none() {
        return Err(Error::NoLegacyStore);
    }
    src.check_paths()?;
    if let Some(s) = &src.sqlite {
        let conn = sqlite::open(&s.path)?;
        sqlite::check_table(&conn, &s.path)?;
        if !s.sessions_dir.is_dir() {
            return Err(Error::Unreadable {
                path: s.sessions_dir.clone(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "sqlite.sessions_dir is not a folder (is a volume missing?)",
                ),
            });
        }
    }
    let fingerprint_before = src.quick_fingerprint()?;

    // The marker stays locked while this process writes: no other backup removes it.
    let (dir, _writing) = create_folder(&cfg.backup_dir, run_id)?;
    tracing::info!("backup folder: {}", dir.display());
    let mut warnings = Vec::new();
    // Before copying: a failed backup's leftovers may hold the room this one needs.
    let removed_incomplete = remove_failed_backups(&cfg.backup_dir, &dir, started, &mut warnings);
    let mut files: Vec<FileEntry> = Vec::new();
    let mut counts = ManifestCounts::default();

    // 1. The database: one snapshot, read in one transaction.
    let mut rows_before = None;
    if let Some(s) = &src.sqlite {
        tracing::info!("copying {} (online backup)", s.path.display());
        let dest = dir.join(SQLITE_COPY);
        mkdirs(dest.parent().expect("a file in a folder"))?;
        let spin = crate::progress::Phase::spinner("backup-database");
        rows_before = Some(copy_sqlite(&s.path, &dest)?);
        spin.finish();
        files.push(hash_file(&dir, Path::new(SQLITE_COPY))?);
    }

    // 2. Every resolved session and every invalid record, from the copy.
    tracing::info!("writing {SESSIONS_JSONL} and {INVALID_JSONL}");
    let copy_source = Source {
        sqlite: src.sqlite.as_ref().map(|s| SqliteSource {
            path: dir.join(SQLITE_COPY),
            sessions_dir: s.sessions_dir.clone(),
        }),
        json_path: src.json_path.clone(),
    };
    let mut sessions = Sink::create(&dir, Path::new(SESSIONS_JSONL))?;
    let mut invalid = Sink::create(&dir, Path::new(INVALID_JSONL))?;
    let mut invalid_findings = Vec::new();
    let reader = copy_source.open()?;
    let phase = crate::progress::Phase::bar(
        "backup-sessions",
        reader.estimate()?,
        crate::progress::Unit::Sessions,
    );
    let summary = reader.scan(SCAN_BATCH, |items| {
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
                Item::Known { .. } => {
                    unreachable!("a scan without a known function reads everything")
                }
            }
        }
        Ok(())
    })?;
    phase.finish();
    files.push(sessions.finish()?);
    files.push(invalid.finish()?);
    counts.sessions = summary.sessions;
    counts.invalid = summary.invalid;
    warnings.extend(summary.warnings);

    // 3. The state files (and with --include-uploads, everything in each <id>/).
    let mut skipped_symlinks = Vec::new();
    let mut skipped_other = Vec::new();
    let mut unreadable = Vec::new();
    if let Some(s) = &src.sqlite {
        tracing::info!("copying state files from {}", s.sessions_dir.display());
        let phase = crate::progress::Phase::counter("backup-files", crate::progress::Unit::Files);
        walk_sessions(&s.sessions_dir, opts.include_uploads, |found| {
            if matches!(found, Found::File { .. }) {
                phase.inc(1);
            }
            match found {
                Found::Dir { rel } => mkdirs(&dir.join(STATE_DIR).join(rel))?,
                Found::File {
                    src, rel, state, ..
                } => {
                    let rel = Path::new(STATE_DIR).join(rel);
                    let copied = if state {
                        copy_state_file(&src, &dir, &rel)?
                    } else {
                        copy_file(&src, &dir, &rel)?
                    };
                    let skip = |reason: String| Skipped {
                        path: src.clone(),
                        target: None,
                        reason,
                    };
                    match copied {
                        Copied::File(entry) => {
                            counts.state_files += u64::from(state);
                            files.push(entry);
                        }
                        Copied::KeptChanging(entry) => {
                            skipped_other.push(skip(format!("kept changing while the backup ran ({} tries): the copy may mix two versions; back up again once it settles", crate::source::READ_TRIES)));
                            counts.state_files += u64::from(state);
                            files.push(entry);
                        }
                        Copied::Gone => {
                            skipped_other.push(skip("vanished while the backup ran".into()))
                        }
                        Copied::Unreadable(e) => unreadable.push(skip(e.to_string())),
                    }
                }
                Found::Skip(s, SkipKind::Symlink) => skipped_symlinks.push(s),
                Found::Skip(s, SkipKind::Other) => skipped_other.push(s),
                Found::Skip(s, SkipKind::Unreadable) => unreadable.push(s),
            }
            Ok(())
        })?;
        phase.finish();
    }
    for s in &skipped_symlinks {
        warnings.push(
            Finding::new(
                "symlink_outside_root",
                format!("{}: {}: not copied", s.path.display(), s.reason),
            )
            .path(&s.path),
        );
    }
    for s in &skipped_other {
        warnings.push(
            Finding::new(
                "backup_skipped",
                format!("{}: {}: not copied", s.path.display(), s.reason),
            )
            .path(&s.path),
        );
    }
    for s in &unreadable {
        warnings.push(
            Finding::new(
                "backup_unreadable",
                format!(
                    "{}: cannot be read ({}): not copied; the backup is complete without it and notes it in its manifest",
                    s.path.display(),
                    s.reason
                ),
            )
            .path(&s.path),
        );
    }

    // 4. The JSON store and the config, as they are.
    // Without either the backup could not put the store back: they must be copied.
    for (from, rel) in src
        .json_path
        .iter()
        .map(|j| (j, JSON_COPY))
        .chain([(&cfg.path, CONFIG_COPY)])
    {
        let source = match copy_file(from, &dir, Path::new(rel))? {
            Copied::File(e) | Copied::KeptChanging(e) => {
                files.push(e);
                continue;
            }
            Copied::Gone => io::Error::new(io::ErrorKind::NotFound, "vanished while copying"),
            Copied::Unreadable(e) => e,
        };
        return Err(Error::Unreadable {
            path: from.clone(),
            source,
        });
    }

    let fingerprint_after = src.quick_fingerprint()?;
    if fingerprint_after != fingerprint_before {
        warnings.push(Finding::new(
            "source_changed",
            "the store was written to while the backup ran: the database copy is one \
             consistent snapshot, the state files were copied as they were when read; \
             a later migrate-state takes a fresh backup",
        ));
    }
    sync_filesystem(&dir)?;

    // 5. Read back everything written before calling it a backup.
    tracing::info!("self-check: re-reading {} files", files.len());
    let mut problems = check_files(&dir, &files);
    if let Some(before) = rows_before {
        match check_sqlite_copy(&dir.join(SQLITE_COPY)) {
            Ok(rows) if rows < before => problems.push(format!(
                "{SQLITE_COPY} holds {rows} rows, the source held {before} when counted"
            )),
            Ok(rows) => counts.sqlite_rows = rows,
            Err(msg) => problems.push(msg),
        }
    }
    if !problems.is_empty() {
        return Err(Error::BackupSelfCheck {
            dir,
            message: problems.join("; "),
        });
    }

    files.sort_by(|a, b| a.path.cmp(&b.path));
    counts.bytes = files.iter().map(|f| f.bytes).sum();
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: crate::report::now_rfc3339(),
        run_id: run_id.to_owned(),
        source: ManifestSource {
            config: cfg.path.clone(),
            sqlite: src.sqlite.as_ref().map(|s| s.path.clone()),
            sessions_dir: src.sqlite.as_ref().map(|s| s.sessions_dir.clone()),
            json: src.json_path.clone(),
        },
        source_fingerprint: fingerprint_before,
        fingerprint_after,
        include_uploads: opts.include_uploads,
        counts,
        files,
        skipped_symlinks,
        skipped_other,
        unreadable,
    };

    // 6. The manifest last, then the marker goes: only now is this a backup.
    // Streamed to the file: at a million files the text would be as large again in memory.
    let mpath = dir.join(MANIFEST);
    crate::fsutil::write_atomic_with(&mpath, 0o600, |w| {
        serde_json::to_writer_pretty(&mut *w, &manifest).map_err(io::Error::other)?;
        w.write_all(b"\n")
    })
    .map_err(|e| Error::Write {
        path: mpath.clone(),
        source: e,
    })?;
    let marker = dir.join(MARKER);
    fs::remove_file(&marker).map_err(|e| Error::Write {
        path: marker,
        source: e,
    })?;
    sync_dir(&dir)?;
    Ok(BackupResult {
        dir,
        manifest,
        warnings,
        invalid: invalid_findings,
        removed_incomplete,
    })
}

/// `<backup.dir>/<UTC timestamp>-<8 hex>`.
fn folder_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &id[..8]
    )
}

/// Whether `name` is a backup folder's name, as [`folder_name`] makes them.
fn is_folder_name(name: &str) -> bool {
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
fn create_folder(backup_dir: &Path, run_id: &str) -> Result<(PathBuf, File)> {
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

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `flock` on `f`: exclusive and waiting when `wait`, else exclusive or fail at once.
fn lock(f: &File, wait: bool) -> io::Result<()> {
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
fn marker_writer(text: &str) -> (Option<u32>, Option<&str>) {
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' '))
            .map(str::trim)
    };
    (field("pid").and_then(|p| p.parse().ok()), field("host"))
}

/// Whether process `pid` runs on this machine.
fn process_alive(pid: u32) -> bool {
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
fn remove_failed_backups(
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

fn wal_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", db.display()))
}

/// A new file, owner-only, never an existing one.
fn create_file(path: &Path) -> Result<File> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Write {
            path: path.to_path_buf(),
            source: e,
        })?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Write {
            path: path.to_path_buf(),
            source: e,
        })?;
    Ok(f)
}

fn mkdirs(dir: &Path) -> Result<()> {
    crate::fsutil::create_private_dir_all(dir).map_err(|e| Error::Write {
        path: dir.to_path_buf(),
        source: e,
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Write {
            path: dir.to_path_buf(),
            source: e,
        })
}

/// Flush every file of the backup to disk at once (one `syncfs`, not one fsync a file).
fn sync_filesystem(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir).map_err(|e| Error::Write {
        path: dir.to_path_buf(),
        source: e,
    })?;
    // SAFETY: `d` is an open descriptor for the call's duration.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(Error::Write {
            path: dir.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A relative path as the manifest writes it.
fn manifest_path(rel: &Path) -> (String, Option<String>) {
    match rel.to_str() {
        Some(s) => (s.to_owned(), None),
        None => (
            rel.to_string_lossy().into_owned(),
            Some(hex::encode(rel.as_os_str().as_bytes())),
        ),
    }
}

/// A file being written into the backup, hashed as it goes.
struct Sink {
    out: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
    path: PathBuf,
    rel: PathBuf,
}

impl Sink {
    fn create(dir: &Path, rel: &Path) -> Result<Sink> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            mkdirs(parent)?;
        }
        Ok(Sink {
            out: BufWriter::with_capacity(COPY_BUF, create_file(&path)?),
            hasher: Sha256::new(),
            bytes: 0,
            path,
            rel: rel.to_path_buf(),
        })
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
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

    fn finish(self) -> Result<FileEntry> {
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
        let (p, path_hex) = manifest_path(&self.rel);
        Ok(FileEntry {
            path: p,
            path_hex,
            bytes: self.bytes,
            sha256: Digest32(self.hasher.finalize().into()),
        })
    }
}

/// What copying one file of the store gave. Errors writing the backup are `Err`;
/// errors reading the store's file are [`Copied::Unreadable`], for the caller to judge.
enum Copied {
    File(FileEntry),
    /// Copied, but it kept changing while read: the last read was copied.
    KeptChanging(FileEntry),
    /// It no longer exists.
    Gone,
    /// The tool may not read it (or reading it failed): nothing of it was kept.
    Unreadable(io::Error),
}

/// Copy `src`'s bytes to `<dir>/<rel>` (0600). Only a regular file is read: a FIFO or a
/// device swapped in since it was looked at is refused (`Unreadable`, with
/// `not_regular_file` inside), never a hang or an endless copy.
fn copy_file(src: &Path, dir: &Path, rel: &Path) -> Result<Copied> {
    let mut from = match crate::fsutil::open_regular(src, true) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Copied::Gone),
        Err(e) => return Ok(Copied::Unreadable(e)),
    };
    let mut sink = Sink::create(dir, rel)?;
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Not a copy: the part written goes (this run created it).
                let path = sink.path.clone();
                drop(sink);
                let _ = fs::remove_file(path);
                return Ok(Copied::Unreadable(e));
            }
        };
        sink.write(&buf[..n])?;
    }
    sink.finish().map(Copied::File)
}

/// Copy a state file read whole (see [`crate::source::read_whole`]): never a mix of two
/// versions of a file rewritten in place during the copy.
fn copy_state_file(src: &Path, dir: &Path, rel: &Path) -> Result<Copied> {
    use crate::source::Whole;
    let (bytes, whole) = match crate::source::read_whole(src) {
        Ok(Whole::Read(b)) => (b, true),
        Ok(Whole::KeptChanging(b)) => (b, false),
        Ok(Whole::Gone) => return Ok(Copied::Gone),
        Err(e) => return Ok(Copied::Unreadable(e)),
    };
    let mut sink = Sink::create(dir, rel)?;
    sink.write(&bytes)?;
    let entry = sink.finish()?;
    Ok(if whole {
        Copied::File(entry)
    } else {
        Copied::KeptChanging(entry)
    })
}

/// Hash a file already written into the backup.
fn hash_file(dir: &Path, rel: &Path) -> Result<FileEntry> {
    let path = dir.join(rel);
    let (bytes, sha256) = sha256_file(&path).map_err(|e| Error::Unreadable {
        path: path.clone(),
        source: e,
    })?;
    let (p, path_hex) = manifest_path(rel);
    Ok(FileEntry {
        path: p,
        path_hex,
        bytes,
        sha256,
    })
}

fn sha256_file(path: &Path) -> io::Result<(u64, Digest32)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
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

// ---- the database copy -------------------------------------------------------------------

/// The error for a failure writing the copy: a full disk is `disk_space`.
fn dest_err(dest: &Path, e: rusqlite::Error) -> Error {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return Error::Write {
            path: dest.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
    }
    sqlite::map_err(dest, e)
}

/// Copy the live database at `src` to the new file `dest` with SQLite's online backup
/// API, all pages in one step inside one read transaction, so the copy is one snapshot.
/// Busy and locked are retried with a short backoff for up to [`BUSY_RETRY`]. The copy
/// is left in rollback-journal mode: one self-contained file. Returns the rows the
/// source held in that snapshot.
fn copy_sqlite(src: &Path, dest: &Path) -> Result<u64> {
    let from = sqlite::open(src)?;
    drop(create_file(dest)?);
    let mut to = Connection::open_with_flags(
        dest,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| dest_err(dest, e))?;
    // No shared-memory file next to the copy, ever.
    to.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(|e| dest_err(dest, e))?;

    let deadline = Instant::now() + BUSY_RETRY;
    let mut pause = Duration::from_millis(5);
    let mut wait = |what: &str| -> Result<()> {
        if Instant::now() >= deadline {
            return Err(Error::Sqlite {
                path: src.to_path_buf(),
                message: format!(
                    "{what}: still busy after {}s of retries; another process holds a lock",
                    BUSY_RETRY.as_secs()
                ),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(BUSY_PAUSE_MAX);
        Ok(())
    };
    let busy = |e: &rusqlite::Error| {
        matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    };

    // The read transaction that the count and the copy share.
    let rows = loop {
        let begun = from.execute_batch("BEGIN DEFERRED").and_then(|_| {
            from.query_row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0))
        });
        match begun {
            Ok(n) => break n as u64,
            Err(e) if busy(&e) => {
                let _ = from.execute_batch("ROLLBACK");
                wait("starting a read transaction")?;
            }
            Err(e) => return Err(sqlite::map_err(src, e)),
        }
    };
    let copied = (|| {
        let backup = Backup::new(&from, &mut to).map_err(|e| dest_err(dest, e))?;
        loop {
            match backup.step(-1) {
                Ok(StepResult::Done) => return Ok(()),
                Ok(StepResult::Busy | StepResult::Locked) => wait("copying")?,
                Ok(_) => {}
                Err(e) if busy(&e) => wait("copying")?,
                Err(e) => return Err(dest_err(dest, e)),
            }
        }
    })();
    let _ = from.execute_batch("COMMIT");
    copied?;
    let mode: String = to
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|e| dest_err(dest, e))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(Error::Sqlite {
            path: dest.to_path_buf(),
            message: format!("cannot leave WAL mode on the copy (journal_mode is {mode})"),
        });
    }
    to.close().map_err(|(_, e)| dest_err(dest, e))?;
    Ok(rows)
}

/// `PRAGMA integrity_check` and the row count of a copy; `Err` says what is wrong.
fn check_sqlite_copy(path: &Path) -> std::result::Result<u64, String> {
    let rel = SQLITE_COPY;
    let conn = sqlite::open(path).map_err(|e| format!("{rel}: {e}"))?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| format!("{rel}: {e}"))?;
    let found: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| format!("{rel}: integrity_check: {e}"))?;
    if found != ["ok"] {
        return Err(format!(
            "{rel}: integrity_check: {}",
            found.into_iter().take(5).collect::<Vec<_>>().join("; ")
        ));
    }
    sqlite::count(&conn, path).map_err(|e| format!("{rel}: {e}"))
}

// ---- the JSON Lines dump -----------------------------------------------------------------

#[derive(Serialize)]
struct SessionLine<'a> {
    id: &'a str,
    user_id: Option<&'a str>,
    status: Option<&'a str>,
    current_step: Option<&'a str>,
    cost: Option<f64>,
    created_at: Option<String>,
    updated_at: Option<String>,
    /// The state exactly as the store holds it.
    state_text: Option<&'a str>,
    /// Only when the state's bytes are not UTF-8 (never for a valid session).
    #[serde(skip_serializing_if = "Option::is_none")]
    state_hex: Option<String>,
    state_origin: Option<&'a source::Origin>,
    meta_origin: &'a source::Origin,
    content_hash: String,
}

fn session_line(s: &source::Session) -> SessionLine<'_> {
    let raw = s.state.as_ref().map(|st| st.raw.as_slice());
    let text = raw.and_then(|r| std::str::from_utf8(r).ok());
    SessionLine {
        id: &s.id,
        user_id: s.meta.user_id.as_deref(),
        status: s.meta.status.as_deref(),
        current_step: s.meta.current_step.as_deref(),
        cost: s.meta.cost,
        created_at: s.meta.created_at.as_ref().map(fields::fmt_ts),
        updated_at: s.meta.updated_at.as_ref().map(fields::fmt_ts),
        state_text: text,
        state_hex: match (raw, text) {
            (Some(r), None) => Some(hex::encode(r)),
            _ => None,
        },
        state_origin: s.state.as_ref().map(|st| &st.origin),
        meta_origin: &s.meta_origin,
        content_hash: s.content_hash(),
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

// ---- the sessions folder -----------------------------------------------------------------

enum SkipKind {
    Symlink,
    Other,
    /// The tool may not read it: its error is the reason.
    Unreadable,
}

/// What the walk of the sessions folder found. `rel` is relative to the sessions folder.
enum Found {
    Dir {
        rel: PathBuf,
    },
    File {
        src: PathBuf,
        rel: PathBuf,
        len: u64,
        /// `<id>/state.json` itself.
        state: bool,
    },
    Skip(Skipped, SkipKind),
}

/// Walk `<dir>/<id>/state.json` (or everything under each `<id>/`), never following a
/// symlink that leaves `dir`. Plain files directly in `dir` are not session data.
fn walk_sessions(
    dir: &Path,
    include_uploads: bool,
    mut visit: impl FnMut(Found) -> Result<()>,
) -> Result<()> {
    let unreadable = |path: &Path, e: io::Error| Error::Unreadable {
        path: path.to_path_buf(),
        source: e,
    };
    let root = fs::canonicalize(dir).map_err(|e| unreadable(dir, e))?;
    let skip_unreadable = |path: &Path, reason: String| {
        Found::Skip(
            Skipped {
                path: path.to_path_buf(),
                target: None,
                reason,
            },
            SkipKind::Unreadable,
        )
    };
    for entry in fs::read_dir(dir).map_err(|e| unreadable(dir, e))? {
        let entry = entry.map_err(|e| unreadable(dir, e))?;
        let name = entry.file_name();
        let folder = entry.path();
        let meta = match fs::symlink_metadata(&folder) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                visit(skip_unreadable(&folder, e.to_string()))?;
                continue;
            }
        };
        if meta.file_type().is_symlink() {
            match resolve_link(&root, &folder) {
                Link::Inside(real) if real.is_dir() => {}
                Link::Inside(_) => continue,
                Link::Skip(s) => {
                    visit(s)?;
                    continue;
                }
            }
        } else if !meta.is_dir() {
            continue;
        }
        if !include_uploads {
            let rel = Path::new(&name).join("state.json");
            if let Some(found) = consider_file(&root, &folder.join("state.json"), rel, true) {
                visit(found)?;
            }
            continue;
        }
        visit(Found::Dir {
            rel: PathBuf::from(&name),
        })?;
        for e in walkdir::WalkDir::new(&folder)
            .min_depth(1)
            .follow_links(false)
        {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    let path = err.path().unwrap_or(&folder).to_path_buf();
                    visit(skip_unreadable(&path, err.to_string()))?;
                    continue;
                }
            };
            let sub = e.path().strip_prefix(&folder).unwrap_or(e.path());
            let rel = Path::new(&name).join(sub);
            if e.file_type().is_dir() {
                visit(Found::Dir { rel })?;
                continue;
            }
            let state = e.depth() == 1 && e.file_name() == "state.json";
            if let Some(found) = consider_file(&root, e.path(), rel, state) {
                visit(found)?;
            }
        }
    }
    Ok(())
}

enum Link {
    Inside(PathBuf),
    Skip(Found),
}

/// Where a symlink leads: inside the sessions folder (followed), or not (skipped).
fn resolve_link(root: &Path, link: &Path) -> Link {
    let target = fs::read_link(link).ok();
    let skip = |reason: &str| {
        Link::Skip(Found::Skip(
            Skipped {
                path: link.to_path_buf(),
                target: target.clone(),
                reason: reason.to_owned(),
            },
            SkipKind::Symlink,
        ))
    };
    match fs::canonicalize(link) {
        Err(_) => skip("a symlink that leads nowhere"),
        Ok(real) if !real.starts_with(root) => {
            skip("a symlink that leaves the sessions folder: not followed")
        }
        Ok(real) => Link::Inside(real),
    }
}

/// A file to copy, a reason not to, or nothing (no such file).
fn consider_file(root: &Path, path: &Path, rel: PathBuf, state: bool) -> Option<Found> {
    let skip = |reason: String, kind: SkipKind| {
        Some(Found::Skip(
            Skipped {
                path: path.to_path_buf(),
                target: None,
                reason,
            },
            kind,
        ))
    };
    let skip_other = |reason: String| skip(reason, SkipKind::Other);
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => return skip(e.to_string(), SkipKind::Unreadable),
    };
    let meta = if meta.file_type().is_symlink() {
        match resolve_link(root, path) {
            Link::Inside(real) => match fs::metadata(real) {
                Ok(m) if m.is_file() => m,
                Ok(_) => return skip_other("a symlink to a folder: not followed".into()),
                Err(e) => return skip(e.to_string(), SkipKind::Unreadable),
            },
            Link::Skip(found) => return Some(found),
        }
    } else {
        meta
    };
    if !meta.is_file() {
        return skip_other("not a regular file".into());
    }
    Some(Found::File {
        src: path.to_path_buf(),
        rel,
        len: meta.len(),
        state,
    })
}

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
    let mut chunk: Vec<FileEntry> = Vec::with_capacity(CHECK_CHUNK);
    let mut sqlite_sound = false;
    let phase = crate::progress::Phase::counter("backup-check", crate::progress::Unit::Files);
    let mut run_chunk = |out: &mut Checked, chunk: &mut Vec<FileEntry>| {
        phase.inc(chunk.len() as u64);
        use rayon::prelude::*;
        let results: Vec<std::result::Result<(), Problem>> = chunk
            .par_iter()
            .map(|f| check_entry(dir, &root, &mpath, f, depth))
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
        let bad = match check_sqlite_copy(&path) {
            Ok(rows) if rows != head.counts.sqlite_rows => Some(format!(
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
    let path = dir.join(&rel);
    if depth == Depth::Checksums {
        return check_file(&path, f);
    }
    let problem = |code: &'static str, message: String| Problem {
        code,
        path: path.clone(),
        message,
    };
    match crate::fsutil::lstat_at(root, &rel) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(problem(
            "backup_missing_file",
            format!("{} is missing", f.path),
        )),
        Err(e) => Err(problem(
            "backup_damaged",
            format!("{} cannot be read: {e}", f.path),
        )),
        Ok(m) if m.mode & libc::S_IFMT != libc::S_IFREG => Err(problem(
            "backup_damaged",
            format!("{} is not a regular file", f.path),
        )),
        Ok(m) if m.size != f.bytes => Err(problem(
            "backup_damaged",
            format!(
                "{} has {} bytes, the manifest says {}",
                f.path, m.size, f.bytes
            ),
        )),
        Ok(_) => Ok(()),
    }
}

/// One listed file: present, its size, its hash.
fn check_file(path: &Path, f: &FileEntry) -> std::result::Result<(), Problem> {
    let problem = |code: &'static str, message: String| Problem {
        code,
        path: path.to_path_buf(),
        message,
    };
    match sha256_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(problem(
            "backup_missing_file",
            format!("{} is missing", f.path),
        )),
        Err(e) => Err(problem(
            "backup_damaged",
            format!("{} cannot be read: {e}", f.path),
        )),
        Ok((bytes, _)) if bytes != f.bytes => Err(problem(
            "backup_damaged",
            format!(
                "{} has {bytes} bytes, the manifest says {}",
                f.path, f.bytes
            ),
        )),
        Ok((_, sha)) if sha != f.sha256 => Err(problem(
            "backup_damaged",
            format!(
                "{}: SHA-256 {sha} differs from the manifest's {}",
                f.path, f.sha256
            ),
        )),
        Ok(_) => Ok(()),
    }
}

/// The self-check's half of [`check`]: every file written matches what was recorded.
fn check_files(dir: &Path, files: &[FileEntry]) -> Vec<String> {
    let phase = crate::progress::Phase::bar(
        "backup-self-check",
        files.iter().map(|f| f.bytes).sum(),
        crate::progress::Unit::Bytes,
    );
    let problems = files
        .iter()
        .filter_map(|f| {
            let r = check_file(&dir.join(f.rel_path()), f).err();
            phase.inc(f.bytes);
            r
        })
        .map(|p| p.message)
        .collect();
    phase.finish();
    problems
}

/// Read `dir`'s manifest once, as a stream: each listed file goes to `each` as it is
/// parsed, and the head comes back at the end. Refuses another format than ours.
pub fn stream_manifest(dir: &Path, each: &mut dyn FnMut(FileEntry)) -> Result<ManifestHead> {
    use serde::de::DeserializeSeed;
    let path = dir.join(MANIFEST);
    let bad = |e: String| Error::Unreadable {
        path: path.clone(),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    };
    let file = File::open(&path).map_err(|e| Error::Unreadable {
        path: path.clone(),
        source: e,
    })?;
    let mut de = serde_json::Deserializer::from_reader(io::BufReader::with_capacity(1 << 20, file));
    let head = ManifestSeed { each }
        .deserialize(&mut de)
        .and_then(|h| de.end().map(|_| h))
        .map_err(|e| bad(e.to_string()))?;
    if head.format != FORMAT {
        return Err(bad(format!(
            "format {:?}, expected {FORMAT:?}",
            head.format
        )));
    }
    Ok(head)
}

/// Deserializes a manifest into its head, handing each entry of `files` to `each`.
struct ManifestSeed<'a> {
    each: &'a mut dyn FnMut(FileEntry),
}

impl<'de> serde::de::DeserializeSeed<'de> for ManifestSeed<'_> {
    type Value = ManifestHead;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<ManifestHead, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ManifestSeed<'_> {
    type Value = ManifestHead;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a sessiondb backup manifest (an object)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<ManifestHead, A::Error> {
        use serde::de::Error as _;
        let each = self.each;
        let (mut format, mut created_at, mut before, mut after, mut counts) =
            (None, None, None, None, None);
        let mut files = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "format" => format = Some(map.next_value()?),
                "created_at" => created_at = Some(map.next_value()?),
                "source_fingerprint" => before = Some(map.next_value()?),
                "fingerprint_after" => after = Some(map.next_value()?),
                "counts" => counts = Some(map.next_value()?),
                "files" => {
                    map.next_value_seed(FilesSeed(&mut *each))?;
                    files = true;
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        if !files {
            return Err(A::Error::missing_field("files"));
        }
        Ok(ManifestHead {
            format: format.ok_or_else(|| A::Error::missing_field("format"))?,
            created_at: created_at.ok_or_else(|| A::Error::missing_field("created_at"))?,
            source_fingerprint: before
                .ok_or_else(|| A::Error::missing_field("source_fingerprint"))?,
            fingerprint_after: after.ok_or_else(|| A::Error::missing_field("fingerprint_after"))?,
            counts: counts.ok_or_else(|| A::Error::missing_field("counts"))?,
        })
    }
}

/// The manifest's `files`, each entry handed on as parsed.
struct FilesSeed<'a>(&'a mut dyn FnMut(FileEntry));

impl<'de> serde::de::DeserializeSeed<'de> for FilesSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FilesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the list of files")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<FileEntry>()? {
            (self.0)(entry);
        }
        Ok(())
    }
}

/// The complete backups under `backup_dir` taken of a store whose fingerprint was
/// `fingerprint` (and did not change while they were taken), newest first. Folders with
/// the marker or without a readable manifest are never considered. Does not look at
/// the files: [`check`] the one to rely on.
pub fn matching(backup_dir: &Path, fingerprint: &str) -> Vec<PathBuf> {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let Ok(rd) = fs::read_dir(backup_dir) else {
        return Vec::new();
    };
    for entry in rd.flatten() {
        let dir = entry.path();
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) || !is_complete(&dir) {
            continue;
        }
        let Ok(m) = ManifestHead::read(&dir) else {
            continue;
        };
        if m.source_fingerprint != fingerprint || m.fingerprint_after != fingerprint {
            continue;
        }
        let key = format!("{}\0{}", m.created_at, entry.file_name().to_string_lossy());
        found.push((key, dir));
    }
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, d)| d).collect()
}

/// The newest of [`matching`].
pub fn find_matching(backup_dir: &Path, fingerprint: &str) -> Option<PathBuf> {
    matching(backup_dir, fingerprint).into_iter().next()
}
