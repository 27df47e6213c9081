//! Backups of the legacy store (SPEC §4 `backup`): a timestamped, owner-only folder
//! under `backup.dir` that, with the blob store beside it, holds everything needed to
//! put the store back as it was.
//!
//! ```text
//! <backup.dir>/
//!   blobs/<2 hex>/<sha256>          0400: the bytes of every file copied from the store,
//!                                   shared by every backup that lists them (blobs.rs)
//!   <YYYYmmddTHHMMSSZ>-<8 hex>/     0700, every file 0400 once sealed
//!     INCOMPLETE                    written first, removed last
//!     sqlite/app.db                 one-step online-backup snapshot of the database
//!     sessions.jsonl                every resolved valid session, one per line (dump.rs)
//!     invalid.jsonl                 every invalid record with its raw bytes in hex
//!     config/sessiondb.toml         the config file
//!     manifest.json                 written atomically, after the self-check passed:
//!                                   every file — state/<id>/state.json (the whole
//!                                   <id>/ with --include-uploads), json/session-db.json —
//!                                   with its size, SHA-256 and where its bytes are
//! ```
//!
//! **Incremental.** A backup taken when `backup.dir` holds a complete backup of the same
//! store (the *base*: the newest) shares with it every file whose stamp has not moved
//! since the base read it (walk.rs says what is trusted), and the lines of
//! `sessions.jsonl` of the sessions whose source stamp has not moved: it reads, copies
//! and writes only what changed, plus the database copy, the dumps and its manifest.
//! Every backup still lists every file with its SHA-256, `backup --verify` still reads
//! everything, and because no backup's bytes are in another backup's folder, deleting
//! a backup (by hand, or with `backup --prune`) never damages another.
//! `backup --extract DIR --to OUT` writes a backup out as plain files.
//!
//! **Kill-safety.** A folder that holds `INCOMPLETE`, or no `manifest.json`, is not a
//! backup, whatever else it holds; [`matching`] and [`check`] say so. The writing
//! process holds a lock on the marker (`flock`, gone with the process), and the marker
//! names it. The only folders removed are those of failed backups (`find_failed` says
//! which), before a new backup is written, and the backups `backup --prune
//! --dry-run=false` removes (prune.rs). Nothing here writes to the source: the
//! database is opened read-only and the state files are only read; a file of the store
//! the tool may not read is noted in the manifest (`unreadable`), not copied.

mod blobs;
mod check;
mod dump;
mod folders;
mod manifest;
pub mod prune;
mod sqlite_copy;
mod walk;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{Config, SqliteSource};
use crate::error::{Error, Result};
use crate::progress::Unit;
use crate::report::Finding;
use crate::source::Source;

pub use blobs::Swept;
pub use check::{Checked, Depth, Problem, SUMMARY_PROBLEMS, check, is_complete, verify};
pub use dump::{INVALID_JSONL, SESSIONS_JSONL};
pub use folders::failed_backups;
pub use manifest::{
    Digest32, FORMAT, FORMAT_V1, FileEntry, MANIFEST, Manifest, ManifestCounts, ManifestHead,
    ManifestSource, Sharing, Skipped, lookup, stored_path, stream_manifest,
};

use blobs::Blobs;
use manifest::Spool;
use walk::{BaseCursor, Copied, Found, Looked, SkipKind, Walker};

/// Present while a backup is being written; a folder holding it is not a backup.
pub const MARKER: &str = "INCOMPLETE";
pub const SQLITE_COPY: &str = "sqlite/app.db";
pub const STATE_DIR: &str = "state";
pub const JSON_COPY: &str = "json/session-db.json";
pub const CONFIG_COPY: &str = "config/sessiondb.toml";
/// The blob store's folder in `backup.dir`.
pub const BLOBS_DIR: &str = blobs::DIR;

/// What to back up beyond the default.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Copy the whole `<id>/` folder (uploads, logs), not only `state.json`.
    pub include_uploads: bool,
    /// The store's quick fingerprint as the caller took it just before (migrate-state's
    /// planning pass, from the stats it made anyway): taken as the fingerprint before,
    /// which saves a pass over every state file. A write to the store since still shows,
    /// in the fingerprint after.
    pub fingerprint_before: Option<String>,
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
    /// The earlier backup whose unchanged files a backup taken now would share.
    pub shares_with: Option<PathBuf>,
    /// Files (and their bytes) found unchanged since it: not copied again.
    pub shared_files: u64,
    pub shared_bytes: u64,
    /// The database has not changed since that backup copied it: its copy would be
    /// shared (a hard link), not taken again.
    pub database_linked: bool,
    /// What the backup will take on disk, a little over rather than under ([`estimate`]):
    /// the database copy, the dumps, the manifest, and the files that changed since the
    /// earlier backup (all of them without one), each rounded up to whole blocks.
    pub estimated_bytes: u64,
    /// The allocation unit of the filesystem the backup goes to (4096 when unknown).
    pub block_bytes: u64,
    /// The files to copy (not shared), each rounded up to whole blocks.
    #[serde(skip)]
    copied_on_disk: u64,
    /// The manifest's entries for the store's files (each listed, shared or not).
    #[serde(skip)]
    manifest_entries: u64,
    /// The blob store's folders are made by this backup (the first one).
    #[serde(skip)]
    new_blob_store: bool,
    /// Free space where the backup would go (its nearest existing folder).
    pub available: Option<u64>,
    pub skipped_symlinks: Vec<Skipped>,
    pub skipped_other: Vec<Skipped>,
    /// Entries the backup would not be allowed to read (their error).
    pub unreadable: Vec<Skipped>,
    /// Folders of failed backups that a backup taken now would remove first.
    pub would_remove: Vec<PathBuf>,
}

/// Measure a backup of `cfg`'s store without writing anything: the same walk as the
/// backup, each file looked at (never read) and compared with the earlier backup.
pub fn plan(cfg: &Config, opts: &Options) -> Result<Plan> {
    // A FIFO or a device in the store is refused here, in the dry run too.
    Source::from_config(cfg).check_paths()?;
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).ok();
    let sqlite_bytes = cfg
        .sqlite
        .as_ref()
        .map(|s| size(&s.path).unwrap_or(0) + size(&wal_path(&s.path)).unwrap_or(0));
    let base = choose_base(&cfg.backup_dir, &manifest_source(cfg), None);
    // Where the backup folder would be created: its filesystem's free space and blocks.
    let dest = crate::fsutil::nearest_existing(&cfg.backup_dir);
    let mut p = Plan {
        dir: cfg.backup_dir.join(folders::folder_name()),
        include_uploads: opts.include_uploads,
        sqlite_bytes,
        state_files: 0,
        state_bytes: 0,
        other_files: 0,
        other_bytes: 0,
        json_bytes: cfg.json_path.as_deref().map(|j| size(j).unwrap_or(0)),
        config_bytes: size(&cfg.path).unwrap_or(0),
        shares_with: base.as_ref().map(|b| b.0.clone()),
        shared_files: 0,
        shared_bytes: 0,
        database_linked: false,
        estimated_bytes: 0,
        block_bytes: crate::fsutil::block_size(&dest)
            .ok()
            .filter(|&b| (512..=1 << 20).contains(&b))
            .unwrap_or(4096),
        copied_on_disk: 0,
        manifest_entries: 0,
        new_blob_store: !cfg.backup_dir.join(BLOBS_DIR).is_dir(),
        available: crate::fsutil::available_space(&dest).ok(),
        skipped_symlinks: Vec::new(),
        skipped_other: Vec::new(),
        unreadable: Vec::new(),
        would_remove: failed_backups(&cfg.backup_dir, None, SystemTime::now()),
    };
    let mut cursor = base.as_ref().map(|(d, _)| BaseCursor::open(d));
    if let (Some(s), Some(cursor)) = (&cfg.sqlite, cursor.as_mut()) {
        let stamp = sqlite_copy::stamp(&s.path, &cfg.app.table, SystemTime::now());
        p.database_linked = stamp.is_some_and(|st| linkable_database(cursor, &st).is_some());
    }
    if let Some(s) = &cfg.sqlite {
        let walker = Walker::open(&s.sessions_dir, opts.include_uploads)?;
        walker.walk(|chunk, _| {
            let looked = walker.look_all(&chunk);
            for (found, looked) in chunk.into_iter().zip(looked) {
                match (found, looked) {
                    (Found::Skip(s, kind), _) | (_, Some(Looked::Skip(s, kind))) => {
                        p.skipped(s, kind)
                    }
                    (Found::File(c), Some(Looked::File { stat, stamp })) => {
                        let rel = Path::new(STATE_DIR).join(&c.rel);
                        let shared = shareable(cursor.as_mut(), &rel, stamp.as_deref(), stat.size);
                        if shared.is_some() {
                            p.shared_files += 1;
                            p.shared_bytes += stat.size;
                        } else {
                            p.copied_on_disk += p.on_disk(stat.size);
                        }
                        p.manifest_entries += MANIFEST_ENTRY + escaped_len(&rel);
                        if c.state {
                            p.state_files += 1;
                            p.state_bytes += stat.size;
                        } else {
                            p.other_files += 1;
                            p.other_bytes += stat.size;
                        }
                    }
                    (Found::File(_), _) => {}
                }
            }
            Ok(())
        })?;
    }
    p.estimated_bytes = estimate(&p);
    Ok(p)
}

/// A manifest entry besides its path: `{"path": "", "bytes": N, "sha256": "<64 hex>",
/// "blob": true, "stamp": "f1:<32 hex>"},` and its indent, 170-odd bytes.
const MANIFEST_ENTRY: u64 = 192;
/// A `sessions.jsonl` line besides the session's metadata (counted through the database
/// and the JSON store): the state file's path, its SHA-256 and size, the origins, the
/// content hash and the stamp, 350-odd bytes with a UUID id.
const DUMP_PER_STATE_FILE: u64 = 512;

/// The bytes a path takes as a JSON string in the manifest.
fn escaped_len(rel: &Path) -> u64 {
    serde_json::to_string(&*rel.to_string_lossy()).map_or(0, |s| s.len() as u64)
}

/// What a backup of `p` will take on disk, an upper bound within a few tens of percent
/// (tests/it/backup.rs compares it with real backups). Each part is rounded up to whole
/// blocks, as the filesystem stores it (at 100,000 sessions of a few kB, the rounding
/// of the state files' copies alone is a quarter of the backup):
/// - the database copy: the database and its WAL as they are now (nothing when the
///   base's copy is linked);
/// - `sessions.jsonl`: every session's metadata and the states that are not in a state
///   file (at most the database and the JSON store again), and per state file its
///   reference ([`DUMP_PER_STATE_FILE`]);
/// - the manifest: one entry per file ([`MANIFEST_ENTRY`] and its path), and its head;
/// - the files copied (state files, uploads with `--include-uploads`), the JSON store's
///   and the config's copies; the files shared with an earlier backup are not copied;
/// - the folders: the backup's own, and the blob store's 257 when this backup makes them.
fn estimate(p: &Plan) -> u64 {
    let sqlite = p.sqlite_bytes.unwrap_or(0);
    let json = p.json_bytes.unwrap_or(0);
    let dump = sqlite + DUMP_PER_STATE_FILE * p.state_files + json;
    let manifest = p.manifest_entries + 2 * (MANIFEST_ENTRY + 64) + 8192;
    let blob_folders = if p.new_blob_store { 257 } else { 0 };
    let folders = (blob_folders + 8) * p.block_bytes;
    let database_copy = if p.database_linked {
        0
    } else {
        p.on_disk(sqlite)
    };
    database_copy
        + p.on_disk(dump)
        + p.on_disk(manifest)
        + p.copied_on_disk
        + p.on_disk(json)
        + p.on_disk(p.config_bytes)
        + folders
}

impl Plan {
    /// `n` bytes as a file takes them on disk: whole blocks.
    fn on_disk(&self, n: u64) -> u64 {
        n.div_ceil(self.block_bytes) * self.block_bytes
    }

    fn skipped(&mut self, s: Skipped, kind: SkipKind) {
        match kind {
            SkipKind::Symlink => self.skipped_symlinks.push(s),
            SkipKind::Other => self.skipped_other.push(s),
            SkipKind::Unreadable => self.unreadable.push(s),
        }
    }
}

/// The earlier backup's entry for `rel` when the file may be shared: a blob listed with
/// the same stamp and size (the blob itself is checked when it is shared).
fn shareable(
    cursor: Option<&mut BaseCursor>,
    rel: &Path,
    stamp: Option<&str>,
    size: u64,
) -> Option<FileEntry> {
    use std::os::unix::ffi::OsStrExt;
    let stamp = stamp?;
    let earlier = cursor?.seek(rel.as_os_str().as_bytes())?;
    (earlier.blob && earlier.stamp.as_deref() == Some(stamp) && earlier.bytes == size)
        .then_some(earlier)
}

/// The base's entry for its database copy, and the copy's path, when `stamp` is the one
/// the base recorded as it copied the database and the copy is there, a regular file of
/// its listed size: the copy a backup taken now may link (its bytes are checked when
/// linked).
fn linkable_database(cursor: &mut BaseCursor, stamp: &str) -> Option<(FileEntry, PathBuf)> {
    let e = cursor
        .other(SQLITE_COPY)
        .filter(|e| !e.blob && e.path_hex.is_none() && e.stamp.as_deref() == Some(stamp))?;
    let earlier = cursor.dir.join(SQLITE_COPY);
    fs::symlink_metadata(&earlier)
        .is_ok_and(|m| m.is_file() && m.len() == e.bytes)
        .then_some((e, earlier))
}

// ---- taking a backup ---------------------------------------------------------------------

/// A backup that was written and passed its self-check.
#[derive(Debug)]
pub struct BackupResult {
    pub dir: PathBuf,
    /// The manifest as written, without its list of files (see [`BackupResult::lookup`]).
    pub manifest: Written,
    /// What the scan of the store warned about (orphans, state conflicts...), and the
    /// backup's own warnings (skipped symlinks, a store written to during the backup).
    pub warnings: Vec<Finding>,
    /// The first invalid records (all are in `invalid.jsonl`).
    pub invalid: Vec<Finding>,
    /// Folders of failed backups removed before this one was written
    /// ([`failed_backups`]).
    pub removed_incomplete: Vec<PathBuf>,
    /// The dumps were written from what the caller read ([`take_after_scan`]), not
    /// resolved from the database copy.
    pub dumps_from_scan: bool,
}

/// What a backup's manifest says besides its list of files, which is never held in
/// memory (it is spooled to a file as the files are copied, then written out).
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub counts: ManifestCounts,
    /// How many files the manifest lists.
    pub files: u64,
    pub source_fingerprint: String,
    pub fingerprint_after: String,
    pub sharing: Option<Sharing>,
    pub skipped_symlinks: Vec<Skipped>,
    pub skipped_other: Vec<Skipped>,
    pub unreadable: Vec<Skipped>,
}

impl BackupResult {
    /// The manifest's entries for these paths (one pass over the manifest).
    pub fn lookup(&self, paths: &HashSet<String>) -> Result<HashMap<String, FileEntry>> {
        lookup(&self.dir, paths)
    }
}

/// Take a backup of `cfg`'s store: see the module documentation. On an error the folder
/// is left as it is, with its `INCOMPLETE` marker and without a manifest, for the next
/// backup to remove. A state file (or upload) the tool may not read is noted in the
/// manifest's `unreadable` and warned about, not copied: the backup is complete without
/// it.
pub fn take(cfg: &Config, opts: &Options, run_id: &str) -> Result<BackupResult> {
    take_after_scan(cfg, opts, run_id, None)
}

/// What a scan of the store read, for [`take_after_scan`]: every item, in the scan's
/// `order`, those read given by `read` and the others ids and stamps.
#[derive(Clone, Copy)]
pub struct Scanned<'a> {
    pub order: &'a crate::source::order::ScanOrder,
    pub read: ScanRead<'a>,
    /// When the scan opened the store (and read the JSON store's records).
    pub opened_at: SystemTime,
}

/// The items a scan read, for [`Scanned`].
#[derive(Clone, Copy)]
pub enum ScanRead<'a> {
    /// Every one, kept in order.
    Kept(&'a [crate::source::Item]),
    /// Their ids, none invalid: the dumps read those sessions again from the database
    /// copy ([`crate::source::Reader::only`]), every other row passed over.
    Again(&'a std::sync::Arc<HashSet<String>>),
}

/// Whether the JSON store, if any, last changed a settle's time before `t` (the
/// backup's rule for a file that may be trusted unchanged, [`walk::settled`]): its
/// records are read when the store is opened, before the fingerprint that a scan's
/// items are checked against looks at it, so a write in between would not show in it.
fn json_store_settled(cfg: &Config, t: SystemTime) -> bool {
    cfg.json_path
        .as_ref()
        .is_none_or(|p| fs::metadata(p).is_ok_and(|m| walk::settled(&walk::Stat::of(&m), t)))
}

/// [`take`], given what the caller read of the store right after it took
/// `opts.fingerprint_before` (`scanned`: the items of migrate-state's planning pass, in
/// the order of its scan, every one of them): the dumps are written from those instead
/// of resolving the database copy a second time. Should the fingerprint after differ
/// from the one before (the store was written to since the caller read it), the dumps
/// are written again from the copy, as without them.
pub fn take_after_scan(
    cfg: &Config,
    opts: &Options,
    run_id: &str,
    scanned: Option<Scanned<'_>>,
) -> Result<BackupResult> {
    let began = SystemTime::now();
    // Resolve before acting: the store must be readable before a folder is created.
    let src = resolve_source(cfg)?;
    let fingerprint_before = match &opts.fingerprint_before {
        Some(f) => f.clone(),
        None => src.quick_fingerprint()?,
    };
    crate::fault::append_point("backup");
    let mut t = Taking::begin(cfg, opts, src, run_id, began)?;
    t.scanned = scanned
        .filter(|s| opts.fingerprint_before.is_some() && json_store_settled(cfg, s.opened_at));
    let rows_before = t.copy_database()?;
    t.dumps_beside_files()?;
    t.copy_json_and_config()?;
    let fingerprint_after = t.settle(&fingerprint_before)?;
    let (spool, sqlite_rows) = t.self_check(rows_before)?;
    t.seal(
        run_id,
        fingerprint_before,
        fingerprint_after,
        sqlite_rows,
        spool,
    )
}

/// The counts of a mapped store's copy: its sessions table's rows.
fn mapped_summary(cfg: &Config, copy: &Path) -> Result<crate::source::Summary> {
    let conn = crate::source::sqlite::open(copy)?;
    let shape = crate::source::shape::Shape::read(&conn, copy, &cfg.path, &cfg.app)?;
    let n: i64 = conn
        .query_row(
            &format!(
                "SELECT count(*) FROM {}",
                crate::source::shape::ident(&shape.sessions.name)
            ),
            [],
            |r| r.get(0),
        )
        .map_err(|e| crate::source::sqlite::map_err(copy, e))?;
    Ok(crate::source::Summary {
        sessions: n as u64,
        sqlite_rows: n as u64,
        warnings: shape.warnings,
        ..Default::default()
    })
}

/// The store `cfg` names, checked readable: a source, its database and table, its
/// sessions folder.
fn resolve_source(cfg: &Config) -> Result<Source> {
    let src = Source::from_config(cfg);
    if src.sqlite.is_none() && src.json_path.is_none() {
        return Err(Error::NoLegacyStore);
    }
    src.check_paths()?;
    if let Some(s) = &src.sqlite {
        let conn = crate::source::sqlite::open(&s.path)?;
        if crate::source::app::is_mapped(cfg) {
            // SPEC §9: the application's own table, read as the config maps it.
            crate::source::shape::Shape::read(&conn, &s.path, &cfg.path, &cfg.app)?;
        } else {
            crate::source::sqlite::check_table(&conn, &s.path)?;
        }
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
    Ok(src)
}

/// The store `cfg` names, as a manifest records it.
pub fn manifest_source(cfg: &Config) -> ManifestSource {
    ManifestSource {
        config: cfg.path.clone(),
        sqlite: cfg.sqlite.as_ref().map(|s| s.path.clone()),
        sessions_dir: cfg.sqlite.as_ref().map(|s| s.sessions_dir.clone()),
        json: cfg.json_path.clone(),
    }
}

/// The newest complete backup under `backup_dir` of the same store (its database,
/// sessions folder and JSON store), in this version's format: the one a new backup
/// shares its unchanged files with. Folders are tried newest first by name (their
/// names begin with their UTC time), and only their manifest's head is read.
fn choose_base(
    backup_dir: &Path,
    source: &ManifestSource,
    own: Option<&Path>,
) -> Option<(PathBuf, ManifestHead)> {
    let mut names: Vec<PathBuf> = fs::read_dir(backup_dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(folders::is_folder_name))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|d| Some(d.as_path()) != own)
        .collect();
    names.sort();
    let same = |s: &ManifestSource| {
        (&s.sqlite, &s.sessions_dir, &s.json)
            == (&source.sqlite, &source.sessions_dir, &source.json)
    };
    names.into_iter().rev().find_map(|d| {
        if !is_complete(&d) {
            return None;
        }
        let head = ManifestHead::read(&d).ok()?;
        (head.format == FORMAT && head.source.as_ref().is_some_and(same)).then_some((d, head))
    })
}

/// A backup being taken: its folder (locked by its marker), the blob store, the
/// earlier backup it shares with, and what it has written so far.
struct Taking<'a> {
    cfg: &'a Config,
    opts: &'a Options,
    src: Source,
    dir: PathBuf,
    /// The marker, locked while this process writes: no other backup removes the folder.
    _writing: File,
    blobs: Blobs,
    base: Option<(ManifestHead, BaseCursor)>,
    spool: Option<Spool>,
    /// The spool once finished (by `settle`).
    spool_path: Option<PathBuf>,
    /// The entries spooled and their bytes, and the bytes of those copied (not shared).
    spooled: (u64, u64),
    spooled_fresh_bytes: u64,
    /// What the caller read of the store ([`take_after_scan`]), for the dumps.
    scanned: Option<Scanned<'a>>,
    /// The dumps were written from `scanned` (and are kept while this is `Some`): what
    /// writes them from the copy instead, should the store have changed since it was read.
    redo_dumps: Option<Dumps<'a>>,
    /// The entries that sort before `state/` (the folder's own files, the JSON store).
    early: Vec<FileEntry>,
    counts: ManifestCounts,
    sharing: Sharing,
    skipped_symlinks: Vec<Skipped>,
    skipped_other: Vec<Skipped>,
    unreadable: Vec<Skipped>,
    warnings: Vec<Finding>,
    invalid_findings: Vec<Finding>,
    removed_incomplete: Vec<PathBuf>,
}

impl<'a> Taking<'a> {
    /// Phase 1: the folder and its marker, the leftovers of failed backups removed (they
    /// may hold the room this one needs), the blob store locked, the base chosen.
    fn begin(
        cfg: &'a Config,
        opts: &'a Options,
        src: Source,
        run_id: &str,
        began: SystemTime,
    ) -> Result<Taking<'a>> {
        let (dir, writing) = folders::create_folder(&cfg.backup_dir, run_id)?;
        tracing::info!("backup folder: {}", dir.display());
        let mut warnings = Vec::new();
        let removed_incomplete =
            folders::remove_failed_backups(&cfg.backup_dir, &dir, began, &mut warnings);
        let blobs = Blobs::open(&cfg.backup_dir, blobs::Mode::Write)?;
        let base = choose_base(&cfg.backup_dir, &manifest_source(cfg), Some(&dir));
        if let Some((d, _)) = &base {
            tracing::info!(
                "sharing the files that did not change with the backup {}",
                d.display()
            );
        }
        let spool = Spool::create(&dir)?;
        Ok(Taking {
            cfg,
            opts,
            src,
            sharing: Sharing {
                base: base.as_ref().map(|b| b.0.clone()).unwrap_or_default(),
                ..Sharing::default()
            },
            base: base.map(|(d, h)| (h, BaseCursor::open(&d))),
            dir,
            _writing: writing,
            blobs,
            spool: Some(spool),
            spool_path: None,
            spooled: (0, 0),
            spooled_fresh_bytes: 0,
            scanned: None,
            redo_dumps: None,
            early: Vec::new(),
            counts: ManifestCounts::default(),
            skipped_symlinks: Vec::new(),
            skipped_other: Vec::new(),
            unreadable: Vec::new(),
            warnings,
            invalid_findings: Vec::new(),
            removed_incomplete,
        })
    }

    /// Phase 2: the database, one snapshot read in one transaction, or the base's copy
    /// of it when the database has not changed since (see [`Taking::link_database`]).
    /// Returns the rows it held then.
    fn copy_database(&mut self) -> Result<Option<u64>> {
        let Some(s) = &self.src.sqlite else {
            return Ok(None);
        };
        let src = s.path.clone();
        let dest = self.dir.join(SQLITE_COPY);
        mkdirs(dest.parent().expect("a file in a folder"))?;
        let now = SystemTime::now();
        let table = self.cfg.app.table.clone();
        let stamp = sqlite_copy::stamp(&src, &table, now);
        if let Some(rows) = self.link_database(stamp.as_deref(), &dest)? {
            return Ok(Some(rows));
        }
        tracing::info!("copying {} (online backup)", src.display());
        let spin = crate::progress::Phase::spinner("backup-database");
        let rows = sqlite_copy::copy_sqlite(&src, &dest, &table)?;
        spin.finish();
        let (bytes, sha) = check::sha256_file(&dest).map_err(|e| Error::read(&dest, e))?;
        let mut e = FileEntry::new(Path::new(SQLITE_COPY), bytes, sha);
        // The stamp holds only when the database did not move while it was copied.
        e.stamp = stamp.filter(|st| sqlite_copy::stamp(&src, &table, now).as_ref() == Some(st));
        self.early.push(e);
        Ok(Some(rows))
    }

    /// The base's database copy, hard-linked into this backup, when the database and its
    /// WAL have the stamp the base recorded as it copied them: a copy taken now would
    /// hold the same rows. Its bytes are read back against the base's SHA-256 here (not
    /// again by the self-check), and its `integrity_check` is the base's; the rows are
    /// the base's count. `None` — copy it — without such a base, when the stamps differ,
    /// when the base's copy is not a regular file of its listed size, when no hard link
    /// can be made (another filesystem), or when its bytes do not match (warned).
    fn link_database(&mut self, stamp: Option<&str>, dest: &Path) -> Result<Option<u64>> {
        let (Some(stamp), Some((head, cursor))) = (stamp, self.base.as_mut()) else {
            return Ok(None);
        };
        let Some((mut e, earlier)) = linkable_database(cursor, stamp) else {
            return Ok(None);
        };
        let rows = head.counts.sqlite_rows;
        if let Err(err) = fs::hard_link(&earlier, dest) {
            tracing::info!(
                "the database copy of {} cannot be linked ({err}): copied",
                cursor.dir.display()
            );
            return Ok(None);
        }
        let read = check::sha256_file(dest);
        if !matches!(&read, Ok((bytes, sha)) if *bytes == e.bytes && *sha == e.sha256) {
            self.warnings.push(Finding::new(
                "backup_damaged",
                format!(
                    "{}: its bytes do not match its manifest; this backup copies the \
                     database again (run backup --verify on that backup)",
                    earlier.display()
                ),
            ));
            fs::remove_file(dest).map_err(|err| Error::Write {
                path: dest.to_path_buf(),
                source: err,
            })?;
            return Ok(None);
        }
        tracing::info!(
            "the database has not changed since {}: its copy is shared (hard link)",
            cursor.dir.display()
        );
        e.shared = true;
        self.sharing.database_linked = true;
        self.early.push(e);
        Ok(Some(rows))
    }

    /// Phases 3 and 4 at once, on their own threads: the dumps (the database copy's rows
    /// and every state file resolved) beside the copy of the sessions folder (every
    /// file looked at, shared or copied). Neither reads what the other writes; one after
    /// the other, each left a core idle for most of its time.
    fn dumps_beside_files(&mut self) -> Result<()> {
        let dumps = self.dumps();
        let (dumped, files) = std::thread::scope(|s| {
            let dumping = s.spawn(|| dumps.write());
            let files = self.copy_sessions_folder();
            let dumped = dumping
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (dumped, files)
        });
        // The dumps' error first: they come first in a backup's order.
        let (dumped, redo) = dumped?;
        self.redo_dumps = redo;
        self.took_dumps(dumped);
        files?;
        self.warn_skipped();
        Ok(())
    }

    /// Phase 3, what it needs: every resolved session and every invalid record, from the
    /// copy; the lines of unchanged sessions carried over from the base's dump.
    fn dumps(&mut self) -> Dumps<'a> {
        let copy = Source {
            sqlite: self.src.sqlite.as_ref().map(|s| SqliteSource {
                path: self.dir.join(SQLITE_COPY),
                sessions_dir: s.sessions_dir.clone(),
            }),
            json_path: self.src.json_path.clone(),
            json_fields: self.src.json_fields.clone(),
        };
        // Lines are only carried between the same versions: they are what this one writes.
        let base = match &mut self.base {
            Some((head, cursor)) if head.tool_version == env!("CARGO_PKG_VERSION") => {
                cursor.other(SESSIONS_JSONL).map(|listed| dump::BaseDump {
                    path: cursor.dir.join(SESSIONS_JSONL),
                    listed,
                })
            }
            _ => None,
        };
        Dumps {
            cfg: self.cfg,
            dir: self.dir.clone(),
            copy,
            base,
            scanned: self.scanned,
        }
    }

    /// The store changed after the caller read it: the dumps written from its items are
    /// replaced by dumps resolved from the database copy, and made durable.
    fn write_dumps_again(&mut self, dumps: Dumps<'a>) -> Result<()> {
        tracing::info!(
            "the store changed after the planning pass read it: {SESSIONS_JSONL} resolved again from the database copy"
        );
        for name in [SESSIONS_JSONL, INVALID_JSONL] {
            let p = self.dir.join(name);
            fs::remove_file(&p).map_err(|e| Error::Write { path: p, source: e })?;
        }
        self.early
            .retain(|e| e.path != SESSIONS_JSONL && e.path != INVALID_JSONL);
        let (dumped, _) = Dumps {
            scanned: None,
            ..dumps
        }
        .write()?;
        self.took_dumps(dumped);
        sync_files(&[self.dir.join(SESSIONS_JSONL), self.dir.join(INVALID_JSONL)])?;
        sync_dir(&self.dir)
    }

    /// Phase 3, what it wrote.
    fn took_dumps(&mut self, d: dump::Dumped) {
        self.early.push(d.sessions);
        self.early.push(d.invalid);
        self.counts.sessions = d.summary.sessions;
        self.counts.invalid = d.summary.invalid;
        self.sharing.sessions_carried = d.carried;
        self.warnings.extend(d.summary.warnings);
        self.invalid_findings = d.invalid_findings;
    }

    /// Phase 4: the state files (with --include-uploads, everything in each `<id>/`), a
    /// chunk at a time: each looked at in parallel, compared with the base's entry,
    /// then shared or copied in parallel, then spooled in order.
    fn copy_sessions_folder(&mut self) -> Result<()> {
        let Some(s) = self.src.sqlite.clone() else {
            return Ok(());
        };
        tracing::info!("copying state files from {}", s.sessions_dir.display());
        let walker = Walker::open(&s.sessions_dir, self.opts.include_uploads)?;
        // Counted in the folder's entries, whose number is known once the walk has listed
        // them (the files in them are not, before they are walked): the phase starts
        // with its first chunk.
        let bar = |of| crate::progress::Phase::bar("backup-files", of, Unit::Folders);
        let mut phase = None;
        let mut shown = 0;
        walker.walk(|chunk, walked| {
            let p = phase.get_or_insert_with(|| bar(walked.of));
            let r = self.copy_chunk(&walker, chunk);
            p.inc(walked.entries - shown);
            shown = walked.entries;
            r
        })?;
        phase.unwrap_or_else(|| bar(0)).finish();
        Ok(())
    }

    fn copy_chunk(&mut self, walker: &Walker, chunk: Vec<Found>) -> Result<()> {
        use rayon::prelude::*;
        let looked = walker.look_all(&chunk);
        // In order: the base's list is read beside the walk.
        let mut work = Vec::with_capacity(chunk.len());
        for (found, looked) in chunk.into_iter().zip(looked) {
            match (found, looked) {
                (Found::Skip(s, kind), _) | (_, Some(Looked::Skip(s, kind))) => {
                    self.skipped(s, kind)
                }
                (Found::File(c), Some(Looked::File { stat, stamp })) => {
                    let rel = Path::new(STATE_DIR).join(&c.rel);
                    let cursor = self.base.as_mut().map(|(_, c)| c);
                    let earlier = shareable(cursor, &rel, stamp.as_deref(), stat.size);
                    work.push(Work {
                        c,
                        rel,
                        stat,
                        stamp,
                        earlier,
                    });
                }
                (Found::File(_), _) => {}
            }
        }
        let blobs = &self.blobs;
        let done: Vec<Result<Copied>> = work
            .par_iter()
            .map(|w| w.share_or_copy(blobs, walker))
            .collect();
        for (w, copied) in work.into_iter().zip(done) {
            self.record(&w.c.src, w.c.state, copied?)?;
        }
        Ok(())
    }

    /// One copied (or shared) file of the sessions folder, in order.
    fn record(&mut self, src: &Path, state: bool, copied: Copied) -> Result<()> {
        let skip = |reason: String| Skipped {
            path: src.to_path_buf(),
            target: None,
            reason,
        };
        let entry = match copied {
            Copied::File(e) => e,
            Copied::KeptChanging(e) => {
                self.skipped_other.push(skip(format!(
                    "kept changing while the backup ran ({} tries): the copy may mix two versions; back up again once it settles",
                    crate::source::READ_TRIES
                )));
                e
            }
            Copied::Gone => {
                self.skipped_other
                    .push(skip("vanished while the backup ran".into()));
                return Ok(());
            }
            Copied::Unreadable(e) => {
                self.unreadable.push(skip(e.to_string()));
                return Ok(());
            }
        };
        self.counts.state_files += u64::from(state);
        self.tally(&entry);
        if !entry.shared {
            self.spooled_fresh_bytes += entry.bytes;
        }
        self.spool.as_mut().expect("spool open").push(&entry)
    }

    fn tally(&mut self, e: &FileEntry) {
        if e.shared {
            self.sharing.files_shared += 1;
            self.sharing.bytes_shared += e.bytes;
        } else {
            self.sharing.files_copied += 1;
            self.sharing.bytes_copied += e.bytes;
        }
    }

    fn skipped(&mut self, s: Skipped, kind: SkipKind) {
        match kind {
            SkipKind::Symlink => self.skipped_symlinks.push(s),
            SkipKind::Other => self.skipped_other.push(s),
            SkipKind::Unreadable => self.unreadable.push(s),
        }
    }

    fn warn_skipped(&mut self) {
        let kinds = [
            ("symlink_outside_root", &self.skipped_symlinks),
            ("backup_skipped", &self.skipped_other),
            ("backup_unreadable", &self.unreadable),
        ];
        for (code, list) in kinds {
            for s in list {
                self.warnings.push(s.finding(code, "not"));
            }
        }
    }

    /// Phase 5: the JSON store (shared like a state file when unchanged) and the config,
    /// as they are. Without either the backup could not put the store back: they must
    /// be copied.
    fn copy_json_and_config(&mut self) -> Result<()> {
        if let Some(json) = self.src.json_path.clone() {
            let now = SystemTime::now();
            let stat = fs::symlink_metadata(&json)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| walk::Stat::of(&m));
            let stamp = stat.as_ref().and_then(|s| walk::stamp(s, now));
            let earlier = match (&mut self.base, &stamp, &stat) {
                (Some((_, cursor)), Some(st), Some(s)) => cursor
                    .other(JSON_COPY)
                    .filter(|e| e.blob && e.stamp.as_ref() == Some(st) && e.bytes == s.size),
                _ => None,
            };
            let copied = match earlier.filter(|e| self.blobs.has(&e.sha256, e.bytes)) {
                Some(mut e) => {
                    e.shared = true;
                    Copied::File(e)
                }
                None => {
                    let mut copied = walk::copy_other(&self.blobs, &json, Path::new(JSON_COPY))?;
                    let unchanged = |s: &walk::Stat| {
                        fs::symlink_metadata(&json).is_ok_and(|m| walk::Stat::of(&m) == *s)
                    };
                    if let (Copied::File(e), Some(s)) = (&mut copied, &stat) {
                        if unchanged(s) {
                            e.stamp = stamp;
                        }
                    }
                    copied
                }
            };
            let e = must_copy(&json, copied)?;
            self.tally(&e);
            self.early.push(e);
        }
        let config = self.cfg.path.clone();
        let copied = copy_into_folder(&config, &self.dir, Path::new(CONFIG_COPY))?;
        let e = must_copy(&config, copied)?;
        self.early.push(e);
        Ok(())
    }

    /// Phase 6: the fingerprint after (a warning when the store was written to while
    /// the backup ran), taken while everything written goes to disk: the one is a stat
    /// of every file of the store, the other waits for the disk.
    fn settle(&mut self, before: &str) -> Result<String> {
        let spool = self.spool.take().expect("spool open");
        self.spooled = (spool.files, spool.bytes);
        let spool = spool.finish()?;
        let (after, synced) = std::thread::scope(|s| {
            let fingerprint = s.spawn(|| {
                let spin = crate::progress::Phase::spinner("backup-fingerprint");
                let after = self.src.quick_fingerprint();
                spin.finish();
                after
            });
            let synced = self.sync_written(&spool);
            let after = fingerprint
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (after, synced)
        });
        synced?;
        let after = after?;
        if after != before {
            if let Some(dumps) = self.redo_dumps.take() {
                self.write_dumps_again(dumps)?;
            }
            self.warnings.push(Finding::new(
                "source_changed",
                "the store was written to while the backup ran: the database copy is one \
                 consistent snapshot, the state files were copied as they were when read; \
                 a later migrate-state takes a fresh backup",
            ));
        }
        self.spool_path = Some(spool);
        Ok(after)
    }

    /// Everything this backup wrote, on disk: each file it wrote in its folder and each
    /// blob it wrote (writeback started for all of them first, then each waited for,
    /// so that the disk sees them as one batch), the folders that name them, and the
    /// folder itself in `backup.dir`. A shared blob was made durable by the backup that
    /// wrote it and is not synced again. No `syncfs`: it would wait for every other
    /// writer's dirty data on the filesystem (PostgreSQL's among them).
    fn sync_written(&self, spool: &Path) -> Result<()> {
        let files: Vec<PathBuf> = self
            .early
            .iter()
            .filter(|e| !e.shared)
            .map(|e| stored_path(&self.dir, e))
            .collect();
        let mut fanouts = [false; 256];
        let mut batch: Vec<PathBuf> = Vec::with_capacity(SYNC_BATCH);
        // Waiting for the disk: the longest part of a first backup after the copy.
        let phase = crate::progress::Phase::counter("backup-sync", crate::progress::Unit::Files);
        let flush = |batch: &mut Vec<PathBuf>| -> Result<()> {
            sync_files(batch)?;
            phase.inc(batch.len() as u64);
            batch.clear();
            Ok(())
        };
        manifest::read_spool(spool, &mut |e| {
            if e.blob && !e.shared {
                fanouts[e.sha256.0[0] as usize] = true;
                batch.push(self.blobs.path(&e.sha256));
                if batch.len() >= SYNC_BATCH {
                    flush(&mut batch)?;
                }
            }
            Ok(())
        })?;
        flush(&mut batch)?;
        for e in self.early.iter().filter(|e| e.blob && !e.shared) {
            fanouts[e.sha256.0[0] as usize] = true;
        }
        sync_files(&files)?;
        phase.inc(files.len() as u64);
        let mut dirs: Vec<PathBuf> = fanouts
            .iter()
            .enumerate()
            .filter(|(_, t)| **t)
            .map(|(i, _)| self.blobs.root().join(format!("{i:02x}")))
            .collect();
        dirs.push(self.blobs.root().to_path_buf());
        for e in self.early.iter().filter(|e| !e.blob) {
            if let Some(parent) = self.dir.join(e.rel_path()).parent() {
                if !dirs.iter().any(|d| d == parent) {
                    dirs.push(parent.to_path_buf());
                }
            }
        }
        dirs.push(self.dir.clone());
        dirs.push(self.cfg.backup_dir.clone());
        for d in &dirs {
            sync_dir(d)?;
        }
        phase.finish();
        Ok(())
    }

    /// Phase 7: read back everything this backup wrote before calling it a backup (the
    /// blobs it shares were read back by the backup that wrote them, and are there at
    /// their size: checked when shared), and `integrity_check` the database copy.
    /// Returns the spool, finished, and the rows the copy holds.
    fn self_check(&mut self, rows_before: Option<u64>) -> Result<(PathBuf, u64)> {
        let spool = self.spool_path.clone().expect("spool finished by settle");
        tracing::info!(
            "self-check: re-reading the {} files this backup wrote",
            self.sharing.files_copied + self.early.len() as u64
        );
        let phase = crate::progress::Phase::bar(
            "backup-self-check",
            self.early.iter().map(|f| f.bytes).sum::<u64>() + self.spooled_fresh_bytes,
            crate::progress::Unit::Bytes,
        );
        // The database copy's integrity_check (a core's work) beside the files read back.
        let copy = self.dir.join(SQLITE_COPY);
        let linked = self.sharing.database_linked;
        let db_check = || {
            rows_before
                .filter(|_| !linked)
                .map(|_| sqlite_copy::check_sqlite_copy(&copy, Some(&self.cfg.app.table)))
        };
        let (problems, db) = std::thread::scope(|s| {
            let db = s.spawn(db_check);
            let problems = self.read_back(&spool, &phase);
            let db = db
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (problems, db)
        });
        let mut problems = problems?;
        phase.finish();
        let mut sqlite_rows = rows_before.filter(|_| linked).unwrap_or(0);
        if let (Some(before), Some(db)) = (rows_before, db) {
            match db.map(|r| r.unwrap_or(before)) {
                Ok(rows) if rows < before => problems.push(format!(
                    "{SQLITE_COPY} holds {rows} rows, the source held {before} when counted"
                )),
                Ok(rows) => sqlite_rows = rows,
                Err(msg) => problems.push(msg),
            }
        }
        if !problems.is_empty() {
            return Err(Error::BackupSelfCheck {
                dir: self.dir.clone(),
                message: problems.join("; "),
            });
        }
        Ok((spool, sqlite_rows))
    }

    /// Every file this backup wrote, read back against its SHA-256: the problems found.
    fn read_back(&self, spool: &Path, phase: &crate::progress::Phase) -> Result<Vec<String>> {
        let checked = |files: &[FileEntry]| {
            let problems = check::check_written(&self.dir, files);
            phase.inc(files.iter().map(|f| f.bytes).sum());
            problems
        };
        // The linked database copy was read back as it was linked.
        let early: Vec<FileEntry> = self
            .early
            .iter()
            .filter(|e| e.blob || !e.shared)
            .cloned()
            .collect();
        let mut problems = checked(&early);
        let mut fresh = Vec::with_capacity(4096);
        manifest::read_spool(spool, &mut |e| {
            if !e.shared {
                fresh.push(e);
            }
            if fresh.len() >= 4096 {
                problems.extend(checked(&fresh));
                fresh.clear();
            }
            Ok(())
        })?;
        problems.extend(checked(&fresh));
        Ok(problems)
    }

    /// Phase 8: the folder's files made read-only, the manifest written last, then the
    /// marker removed: only now is this a backup.
    fn seal(
        mut self,
        run_id: &str,
        fingerprint_before: String,
        fingerprint_after: String,
        sqlite_rows: u64,
        spool: PathBuf,
    ) -> Result<BackupResult> {
        for e in self.early.iter().filter(|e| !e.blob) {
            let p = self.dir.join(e.rel_path());
            fs::set_permissions(&p, fs::Permissions::from_mode(0o400)).map_err(|err| {
                Error::Write {
                    path: p,
                    source: err,
                }
            })?;
        }
        self.early.sort_by(|a, b| a.key().cmp(&b.key()));
        let spooled = self.spooled;
        self.counts.sqlite_rows = sqlite_rows;
        self.counts.bytes = spooled.1 + self.early.iter().map(|f| f.bytes).sum::<u64>();
        let files = spooled.0 + self.early.len() as u64;
        let sharing = self.base.is_some().then(|| self.sharing.clone());
        let head = Manifest {
            format: FORMAT.to_owned(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_at: crate::report::now_rfc3339(),
            run_id: run_id.to_owned(),
            source: manifest_source(self.cfg),
            source_fingerprint: fingerprint_before,
            fingerprint_after,
            include_uploads: self.opts.include_uploads,
            counts: self.counts.clone(),
            sharing: sharing.clone(),
            files: std::mem::take(&mut self.early),
            skipped_symlinks: std::mem::take(&mut self.skipped_symlinks),
            skipped_other: std::mem::take(&mut self.skipped_other),
            unreadable: std::mem::take(&mut self.unreadable),
        };
        manifest::write(&self.dir, &head, &spool)?;
        fs::remove_file(&spool).map_err(|e| Error::Write {
            path: spool.clone(),
            source: e,
        })?;
        let marker = self.dir.join(MARKER);
        fs::remove_file(&marker).map_err(|e| Error::Write {
            path: marker,
            source: e,
        })?;
        sync_dir(&self.dir)?;
        Ok(BackupResult {
            manifest: Written {
                counts: head.counts,
                files,
                source_fingerprint: head.source_fingerprint,
                fingerprint_after: head.fingerprint_after,
                sharing,
                skipped_symlinks: head.skipped_symlinks,
                skipped_other: head.skipped_other,
                unreadable: head.unreadable,
            },
            dir: self.dir,
            warnings: self.warnings,
            invalid: self.invalid_findings,
            removed_incomplete: self.removed_incomplete,
            dumps_from_scan: self.redo_dumps.is_some(),
        })
    }
}

/// The dumps to write (phase 3), apart from the rest of the backup being taken, so
/// that they are written on a thread of their own.
struct Dumps<'a> {
    cfg: &'a Config,
    dir: PathBuf,
    /// The store, its database the backup's copy.
    copy: Source,
    base: Option<dump::BaseDump>,
    /// What the caller read of the store, to write the dumps from ([`take_after_scan`]).
    scanned: Option<Scanned<'a>>,
}

impl<'a> Dumps<'a> {
    /// The dumps; with them, when they were written from what the caller read, what
    /// writes them again from the copy (should the store have changed since).
    fn write(self) -> Result<(dump::Dumped, Option<Dumps<'a>>)> {
        tracing::info!("writing {SESSIONS_JSONL} and {INVALID_JSONL}");
        // A mapped store (SPEC §9) is copied as it is (the database and the files); its
        // sessions are not listed in sessions.jsonl, which holds SPEC §1's fields.
        if crate::source::app::is_mapped(self.cfg) {
            let summary = mapped_summary(self.cfg, &self.dir.join(SQLITE_COPY))?;
            return Ok((dump::write_empty(&self.dir, summary)?, None));
        }
        if let Some(scanned) = self.scanned {
            if let Some(d) =
                dump::write_scanned(&self.dir, scanned, self.base.as_ref(), &self.copy)?
            {
                return Ok((d, Some(self)));
            }
            tracing::info!(
                "the planning pass's reads do not give {SESSIONS_JSONL}: resolving the database copy"
            );
        }
        let d = dump::write(&self.dir, &self.copy, self.base)?;
        Ok((d, None))
    }
}

/// A file of the sessions folder to share or copy.
struct Work {
    c: walk::Candidate,
    /// Its path in the backup.
    rel: PathBuf,
    stat: walk::Stat,
    stamp: Option<String>,
    /// The base's entry for it, when its stamp says it has not changed.
    earlier: Option<FileEntry>,
}

impl Work {
    /// Share the base's blob when it is there at its size, else read and copy the file;
    /// a copy keeps the stamp when the file still looks as it did before it was read.
    fn share_or_copy(&self, blobs: &Blobs, walker: &Walker) -> Result<Copied> {
        if let Some(e) = self
            .earlier
            .as_ref()
            .filter(|e| blobs.has(&e.sha256, e.bytes))
        {
            let mut e = e.clone();
            e.shared = true;
            return Ok(Copied::File(e));
        }
        let mut copied = if self.c.state {
            walk::copy_state(blobs, &self.c.src, &self.rel)?
        } else {
            walk::copy_other(blobs, &self.c.src, &self.rel)?
        };
        if let Copied::File(e) = &mut copied {
            if self.stamp.is_some() && walker.unchanged_since(&self.c, &self.stat) {
                e.stamp = self.stamp.clone();
            }
        }
        Ok(copied)
    }
}

/// A file the backup cannot be without: its entry, or the error that it could not be
/// read.
fn must_copy(from: &Path, copied: Copied) -> Result<FileEntry> {
    let source = match copied {
        Copied::File(e) | Copied::KeptChanging(e) => return Ok(e),
        Copied::Gone => io::Error::new(io::ErrorKind::NotFound, "vanished while copying"),
        Copied::Unreadable(e) => e,
    };
    Err(Error::Unreadable {
        path: from.to_path_buf(),
        source,
    })
}

/// Copy `src`'s bytes to `<dir>/<rel>`, a file of the backup's own folder. Only a
/// regular file is read (see [`walk::copy_other`]).
fn copy_into_folder(src: &Path, dir: &Path, rel: &Path) -> Result<Copied> {
    let mut from = match crate::fsutil::open_regular(src, true) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Copied::Gone),
        Err(e) => return Ok(Copied::Unreadable(e)),
    };
    let mut sink = dump::Sink::create(dir, rel)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Not a copy: the part written goes (this run created it).
                drop(sink);
                let _ = fs::remove_file(dir.join(rel));
                return Ok(Copied::Unreadable(e));
            }
        };
        sink.write(&buf[..n])?;
    }
    sink.finish().map(Copied::File)
}

// ---- finding backups ---------------------------------------------------------------------

/// The complete backups under `backup_dir` taken of a store whose fingerprint was
/// `fingerprint` (and did not change while they were taken), newest first. Folders with
/// the marker or without a readable manifest are never considered. Does not look at
/// the files: [`check`] the one to rely on.
pub fn matching(backup_dir: &Path, fingerprint: &str) -> Vec<PathBuf> {
    complete(backup_dir)
        .into_iter()
        .filter(|(_, m)| m.source_fingerprint == fingerprint && m.fingerprint_after == fingerprint)
        .map(|(d, _)| d)
        .collect()
}

/// The newest of [`matching`].
pub fn find_matching(backup_dir: &Path, fingerprint: &str) -> Option<PathBuf> {
    matching(backup_dir, fingerprint).into_iter().next()
}

/// Every complete backup directly under `backup_dir` (a folder, not a link, with no
/// marker and a manifest this version reads), with its manifest's head, newest first.
pub fn complete(backup_dir: &Path) -> Vec<(PathBuf, ManifestHead)> {
    complete_by(backup_dir, ManifestHead::read)
}

/// [`complete`], each manifest read whole: a folder whose manifest's list is damaged is
/// left out (prune neither counts nor removes it, and sweeps no blob on its account).
pub fn complete_whole(backup_dir: &Path) -> Vec<(PathBuf, ManifestHead)> {
    complete_by(backup_dir, ManifestHead::read_whole)
}

fn complete_by(
    backup_dir: &Path,
    read: fn(&Path) -> Result<ManifestHead>,
) -> Vec<(PathBuf, ManifestHead)> {
    let mut found: Vec<(String, PathBuf, ManifestHead)> = Vec::new();
    let Ok(rd) = fs::read_dir(backup_dir) else {
        return Vec::new();
    };
    for entry in rd.flatten() {
        let dir = entry.path();
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) || !is_complete(&dir) {
            continue;
        }
        let Ok(m) = read(&dir) else {
            continue;
        };
        let key = format!("{}\0{}", m.created_at, entry.file_name().to_string_lossy());
        found.push((key, dir, m));
    }
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, d, m)| (d, m)).collect()
}

// ---- writing a backup out ----------------------------------------------------------------

/// What [`extract`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Extracted {
    pub dir: PathBuf,
    pub to: PathBuf,
    pub files: u64,
    pub bytes: u64,
}

/// Write the complete backup `dir` out into the new folder `to` as plain files, each at
/// its path in the backup (`sqlite/app.db`, `state/<id>/state.json`, ...), each read
/// from where the backup keeps it and checked against its SHA-256 as it is written.
/// `to` must not exist; it holds an `INCOMPLETE` marker until every file is written.
/// Nothing else is written, nothing of the store is touched.
pub fn extract(dir: &Path, to: &Path) -> Result<Extracted> {
    if !is_complete(dir) {
        return Err(Error::BackupIncomplete {
            message: format!(
                "{} is not a complete backup (its {MARKER} marker, or no {MANIFEST}): nothing extracted",
                dir.display()
            ),
        });
    }
    if fs::symlink_metadata(to).is_ok() {
        return Err(Error::Usage(format!(
            "--to {}: already exists; name a folder that does not exist yet",
            to.display()
        )));
    }
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        mkdirs(parent)?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .map_err(|e| Error::Write {
            path: to.to_path_buf(),
            source: e,
        })?;
    drop(create_file(&to.join(MARKER))?);
    let mut out = Extracted {
        dir: dir.to_path_buf(),
        to: to.to_path_buf(),
        files: 0,
        bytes: 0,
    };
    let mut failed: Option<Error> = None;
    let streamed = manifest::stream_until(dir, &mut |f| match extract_one(dir, to, &f) {
        Ok(()) => {
            out.files += 1;
            out.bytes += f.bytes;
            true
        }
        Err(e) => {
            failed = Some(e);
            false
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    streamed?;
    let marker = to.join(MARKER);
    fs::remove_file(&marker).map_err(|e| Error::Write {
        path: marker,
        source: e,
    })?;
    sync_filesystem(to)?;
    Ok(out)
}

/// One listed file of `dir`, written to `<to>/<its path>` and checked.
fn extract_one(dir: &Path, to: &Path, f: &FileEntry) -> Result<()> {
    let rel = f.rel_path();
    let damaged = |message: String| Error::BackupDamaged {
        message: format!(
            "{}: {message}; {} is left incomplete",
            dir.display(),
            to.display()
        ),
    };
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(damaged(format!(
            "{MANIFEST} lists {:?}, a path outside the backup",
            f.path
        )));
    }
    let from = stored_path(dir, f);
    let mut input = File::open(&from)
        .map_err(|e| damaged(format!("{} cannot be read: {e}", from.display())))?;
    let mut sink = dump::Sink::create(to, &rel)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(damaged(format!("{} cannot be read: {e}", from.display()))),
        };
        sink.write(&buf[..n])?;
    }
    let written = sink.finish()?;
    if (written.bytes, written.sha256) != (f.bytes, f.sha256) {
        return Err(damaged(format!(
            "{}: {} bytes, SHA-256 {}; the manifest says {} bytes, {}",
            f.path, written.bytes, written.sha256, f.bytes, f.sha256
        )));
    }
    Ok(())
}

// ---- small helpers -----------------------------------------------------------------------

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

/// Files synced at once by [`sync_files`].
const SYNC_BATCH: usize = 256;

/// Put `files` on disk: writeback started for every one (`sync_file_range`, which
/// does not wait), then each waited for (`fdatasync`), so that the device gets them
/// as one batch rather than one round trip a file.
fn sync_files(files: &[PathBuf]) -> Result<()> {
    use rayon::prelude::*;
    use std::os::fd::AsRawFd;
    let open = |p: &PathBuf| {
        File::open(p).map_err(|e| Error::Write {
            path: p.clone(),
            source: e,
        })
    };
    let opened: Vec<File> = files.par_iter().map(open).collect::<Result<_>>()?;
    for f in &opened {
        // SAFETY: `f` is an open descriptor for the call's duration. A failure here
        // only loses the head start: fdatasync below still waits for the data.
        unsafe {
            libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    opened
        .par_iter()
        .zip(files.par_iter())
        .try_for_each(|(f, p)| {
            f.sync_data().map_err(|e| Error::Write {
                path: p.clone(),
                source: e,
            })
        })
}

/// Flush every file under `dir`'s filesystem at once (one `syncfs`): only for
/// `extract`, which writes a whole tree of new files at once.
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
