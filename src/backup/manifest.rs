//! The manifest (`manifest.json`): what a backup holds, every file with its size and
//! SHA-256, and where its bytes are (in the backup's folder, or a blob of the store
//! shared by the backups of one `backup.dir`, see [`super::blobs`]).
//!
//! It is read three ways: whole ([`Manifest::read`], small backups and tests), its head
//! only ([`ManifestHead::read`], choosing a backup), or streamed ([`stream_manifest`],
//! a file at a time: a manifest of a million files is never held). It is written once,
//! at the end, from a spool of the entries written as they were copied ([`Spool`],
//! [`write`]): the entries of a million files never sit in memory either.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The manifest's `format` this version writes: blobs and source stamps.
pub const FORMAT: &str = "sessiondb.backup/v2";
/// The format of backups taken before incremental backups: every file in the folder.
pub const FORMAT_V1: &str = "sessiondb.backup/v1";
pub const MANIFEST: &str = "manifest.json";
/// The entries written so far, one JSON line each, while the backup is being taken.
pub const SPOOL: &str = ".files.spool";

/// Whether `format` is one this version reads.
pub fn known_format(format: &str) -> bool {
    format == FORMAT || format == FORMAT_V1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub tool_version: String,
    pub created_at: String,
    pub run_id: String,
    pub source: ManifestSource,
    /// [`crate::source::Source::quick_fingerprint`] taken before anything was copied.
    pub source_fingerprint: String,
    /// The same, taken after everything was copied: differs when the store was written
    /// to during the backup.
    pub fingerprint_after: String,
    pub include_uploads: bool,
    pub counts: ManifestCounts,
    /// The earlier backup whose unchanged files this one shares, and how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<Sharing>,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The bytes of every listed file (what a restore writes).
    pub bytes: u64,
}

/// What a backup shares with the earlier one it was taken against.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sharing {
    /// The earlier backup whose manifest said which files had not changed.
    pub base: PathBuf,
    /// Files found unchanged by their stamp and shared, not read.
    pub files_shared: u64,
    pub bytes_shared: u64,
    /// Files read and copied (into a new blob, or onto an identical one).
    pub files_copied: u64,
    pub bytes_copied: u64,
    /// Lines of `sessions.jsonl` carried over from the earlier backup's (sessions
    /// whose stamp had not moved: not read again).
    pub sessions_carried: u64,
    /// The database copy is the earlier backup's (a hard link): the database and its
    /// WAL had the stamp recorded when it was copied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub database_linked: bool,
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
    /// The bytes are the blob `<backup.dir>/blobs/<2 hex>/<sha256>`, not a file in the
    /// backup's folder.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blob: bool,
    /// What the store's file looked like when it was read (see
    /// [`super::walk::stamp`]): a later backup that finds the same stamp shares the
    /// blob without reading the file. `None`: changed too recently to be trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
    /// Shared with the earlier backup (found unchanged by its stamp, not read), or
    /// found already in the blob store: this backup did not write these bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// A SHA-256 digest: 64 hex digits in the manifest, 32 bytes in memory (a backup of a
/// million files holds a million of them).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
        let text = <Cow<'de, str>>::deserialize(d)?;
        Digest32::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not a SHA-256 in hex (64 digits)"))
        })
    }
}

impl Digest32 {
    /// 64 hex digits, lowercase or not.
    pub fn parse(text: &str) -> Option<Digest32> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.as_bytes(), &mut out).ok()?;
        Some(Digest32(out))
    }
}

impl FileEntry {
    /// An entry for `rel` (relative to the backup folder).
    pub fn new(rel: &Path, bytes: u64, sha256: Digest32) -> FileEntry {
        let (path, path_hex) = manifest_path(rel);
        FileEntry {
            path,
            path_hex,
            bytes,
            sha256,
            blob: false,
            stamp: None,
            shared: false,
        }
    }

    /// The path relative to the backup folder, exactly as written.
    pub fn rel_path(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(&self.key()))
    }

    /// The path's bytes: what the manifest's list is sorted by.
    pub fn key(&self) -> Cow<'_, [u8]> {
        match self.path_hex.as_deref().and_then(|h| hex::decode(h).ok()) {
            Some(b) => Cow::Owned(b),
            None => Cow::Borrowed(self.path.as_bytes()),
        }
    }
}

/// Where the bytes of `f`, listed by the backup `dir`, are: the file in the folder, or
/// its blob beside the folder (`<dir>/../blobs/...`).
pub fn stored_path(dir: &Path, f: &FileEntry) -> PathBuf {
    if f.blob {
        let parent = dir.parent().unwrap_or(Path::new("."));
        super::blobs::path_in(&parent.join(super::blobs::DIR), &f.sha256)
    } else {
        dir.join(f.rel_path())
    }
}

/// A relative path as the manifest writes it.
pub fn manifest_path(rel: &Path) -> (String, Option<String>) {
    match rel.to_str() {
        Some(s) => (s.to_owned(), None),
        None => (
            rel.to_string_lossy().into_owned(),
            Some(hex::encode(rel.as_os_str().as_bytes())),
        ),
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

impl Skipped {
    /// The warning a backup (or its dry run: `tense` "would not be") gives for a file it
    /// leaves out: `code` `symlink_outside_root`, `backup_skipped` or `backup_unreadable`.
    pub fn finding(&self, code: &'static str, tense: &str) -> crate::report::Finding {
        let message = if code == "backup_unreadable" {
            format!(
                "{}: cannot be read ({}): {tense} copied; the backup is complete without it and notes it in its manifest",
                self.path.display(),
                self.reason
            )
        } else {
            format!("{}: {}: {tense} copied", self.path.display(), self.reason)
        };
        crate::report::Finding::new(code, message).path(&self.path)
    }
}

impl Manifest {
    /// The whole manifest, its list of files included: for small backups (a manifest
    /// of a million files takes hundreds of MB this way; see [`stream_manifest`]).
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
    #[serde(default)]
    pub run_id: String,
    #[serde(default)]
    pub tool_version: String,
    #[serde(default)]
    pub source: Option<ManifestSource>,
    #[serde(default)]
    pub include_uploads: bool,
}

impl ManifestHead {
    /// The head of `dir`'s manifest, its file list read (and parsed) whole: a manifest
    /// whose list is damaged is refused. What prune relies on.
    pub fn read_whole(dir: &Path) -> Result<ManifestHead> {
        read_manifest(dir, |m: &ManifestHead| &m.format)
    }

    /// The head of `dir`'s manifest, without reading its file list when the fields come
    /// before `files`, as this tool writes them: choosing among backups reads every
    /// backup's head, and a list of a million files is 200 MB of text. A manifest with
    /// its fields after `files` is read whole.
    pub fn read(dir: &Path) -> Result<ManifestHead> {
        use serde::de::DeserializeSeed;
        let path = dir.join(MANIFEST);
        let file = File::open(&path).map_err(|e| Error::Unreadable {
            path: path.clone(),
            source: e,
        })?;
        let mut early = None;
        let mut de =
            serde_json::Deserializer::from_reader(io::BufReader::with_capacity(1 << 16, file));
        let read = ManifestSeed {
            each: &mut |_| true,
            head_only: Some(&mut early),
        }
        .deserialize(&mut de);
        let head = match (early, read) {
            (Some(head), _) => head,
            (None, Ok(head)) => de.end().map(|_| head).map_err(|e| unreadable(&path, e))?,
            (None, Err(e)) => return Err(unreadable(&path, e)),
        };
        refuse_unknown_format(&path, &head.format)?;
        Ok(head)
    }
}

/// Refuse a manifest (at `path`) of a format this version does not read.
fn refuse_unknown_format(path: &Path, format: &str) -> Result<()> {
    if known_format(format) {
        return Ok(());
    }
    Err(unreadable(
        path,
        format!("format {format:?}, expected {FORMAT:?}"),
    ))
}

fn unreadable(path: &Path, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Unreadable {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

/// Read `dir`'s manifest as a `T`, refusing a format this version does not read.
fn read_manifest<T: serde::de::DeserializeOwned>(
    dir: &Path,
    format: impl Fn(&T) -> &str,
) -> Result<T> {
    let path = dir.join(MANIFEST);
    let file = File::open(&path).map_err(|e| Error::Unreadable {
        path: path.clone(),
        source: e,
    })?;
    // Parsed as it is read: the manifest of a million files is 200 MB of text.
    let m: T = serde_json::from_reader(io::BufReader::with_capacity(1 << 20, file))
        .map_err(|e| unreadable(&path, e))?;
    refuse_unknown_format(&path, format(&m))?;
    Ok(m)
}

/// Read `dir`'s manifest once, as a stream: each listed file goes to `each` as it is
/// parsed, and the head comes back at the end. Refuses a format this version does not
/// read.
pub fn stream_manifest(dir: &Path, each: &mut dyn FnMut(FileEntry)) -> Result<ManifestHead> {
    stream_until(dir, &mut |f| {
        each(f);
        true
    })
}

/// [`stream_manifest`], stopping (an error) as soon as `each` says `false`.
pub(super) fn stream_until(
    dir: &Path,
    each: &mut dyn FnMut(FileEntry) -> bool,
) -> Result<ManifestHead> {
    use serde::de::DeserializeSeed;
    let path = dir.join(MANIFEST);
    let file = File::open(&path).map_err(|e| Error::Unreadable {
        path: path.clone(),
        source: e,
    })?;
    let mut de = serde_json::Deserializer::from_reader(io::BufReader::with_capacity(1 << 20, file));
    let head = ManifestSeed {
        each,
        head_only: None,
    }
    .deserialize(&mut de)
    .and_then(|h| de.end().map(|_| h))
    .map_err(|e| unreadable(&path, e.to_string()))?;
    refuse_unknown_format(&path, &head.format)?;
    Ok(head)
}

/// The entries of `dir`'s manifest whose path is one of `paths`, in one pass over the
/// manifest (a rollback looks up the state files a round replaces).
pub fn lookup(dir: &Path, paths: &HashSet<String>) -> Result<HashMap<String, FileEntry>> {
    let mut found = HashMap::new();
    if paths.is_empty() {
        return Ok(found);
    }
    stream_manifest(dir, &mut |f| {
        if f.path_hex.is_none() && paths.contains(&f.path) {
            found.insert(f.path.clone(), f);
        }
    })?;
    Ok(found)
}

/// Deserializes a manifest into its head, handing each entry of `files` to `each`.
struct ManifestSeed<'a> {
    each: &'a mut dyn FnMut(FileEntry) -> bool,
    /// Where the head goes when it is complete before `files`: the list is then not
    /// read (the deserializer stops there with an error, which the caller passes over).
    head_only: Option<&'a mut Option<ManifestHead>>,
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
        let (each, mut head_only) = (self.each, self.head_only);
        let (mut format, mut created_at, mut before, mut after): (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = (None, None, None, None);
        let mut counts: Option<ManifestCounts> = None;
        let (mut run_id, mut tool_version, mut source, mut uploads) =
            (String::new(), String::new(), None, false);
        let mut files = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "format" => format = Some(map.next_value()?),
                "created_at" => created_at = Some(map.next_value()?),
                "source_fingerprint" => before = Some(map.next_value()?),
                "fingerprint_after" => after = Some(map.next_value()?),
                "counts" => counts = Some(map.next_value()?),
                "run_id" => run_id = map.next_value()?,
                "tool_version" => tool_version = map.next_value()?,
                "source" => source = map.next_value()?,
                "include_uploads" => uploads = map.next_value()?,
                "files" => {
                    if let Some(out) = head_only.as_deref_mut() {
                        if let (Some(f), Some(c), Some(b), Some(a), Some(n)) =
                            (&format, &created_at, &before, &after, &counts)
                        {
                            *out = Some(ManifestHead {
                                format: f.clone(),
                                created_at: c.clone(),
                                source_fingerprint: b.clone(),
                                fingerprint_after: a.clone(),
                                counts: n.clone(),
                                run_id: run_id.clone(),
                                tool_version: tool_version.clone(),
                                source: source.clone(),
                                include_uploads: uploads,
                            });
                            return Err(A::Error::custom("stopped at the file list"));
                        }
                    }
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
            run_id,
            tool_version,
            source,
            include_uploads: uploads,
        })
    }
}

/// The manifest's `files`, each entry handed on as parsed.
struct FilesSeed<'a>(&'a mut dyn FnMut(FileEntry) -> bool);

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
        use serde::de::Error as _;
        while let Some(entry) = seq.next_element::<FileEntry>()? {
            if !(self.0)(entry) {
                return Err(A::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

// ---- writing -----------------------------------------------------------------------------

/// The entries of the files copied so far, one JSON line each, in the order of the
/// manifest's list: written as the files are copied, so that memory does not grow with
/// the number of files.
pub(super) struct Spool {
    out: BufWriter<File>,
    path: PathBuf,
    pub(super) files: u64,
    pub(super) bytes: u64,
    /// The key of the last entry: the spool must stay in order.
    last: Vec<u8>,
}

impl Spool {
    pub(super) fn create(dir: &Path) -> Result<Spool> {
        let path = dir.join(SPOOL);
        Ok(Spool {
            out: BufWriter::with_capacity(1 << 20, super::create_file(&path)?),
            path,
            files: 0,
            bytes: 0,
            last: Vec::new(),
        })
    }

    pub(super) fn push(&mut self, e: &FileEntry) -> Result<()> {
        let key = e.key();
        debug_assert!(
            self.last.as_slice() < key.as_ref(),
            "spooled out of order: {:?}",
            e.path
        );
        self.last = key.into_owned();
        self.files += 1;
        self.bytes += e.bytes;
        let mut line = serde_json::to_vec(e).expect("an entry serializes");
        line.push(b'\n');
        self.out.write_all(&line).map_err(|err| Error::Write {
            path: self.path.clone(),
            source: err,
        })
    }

    /// Flushed and closed: its path, for [`read_spool`] and [`write`]. Not synced: it is
    /// removed once the manifest is written, and a backup that stops before is removed.
    pub(super) fn finish(self) -> Result<PathBuf> {
        let path = self.path;
        self.out
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(|e| Error::Write {
                path: path.clone(),
                source: e,
            })?;
        Ok(path)
    }
}

/// Each entry of a finished spool, in order, to `each`.
pub(super) fn read_spool(path: &Path, each: &mut dyn FnMut(FileEntry) -> Result<()>) -> Result<()> {
    let f = File::open(path).map_err(|e| Error::read(path, e))?;
    for line in io::BufReader::with_capacity(1 << 20, f).lines() {
        let line = line.map_err(|e| Error::read(path, e))?;
        let e: FileEntry = serde_json::from_str(&line).map_err(|e| unreadable(path, e))?;
        each(e)?;
    }
    Ok(())
}

/// Write `manifest.json` atomically: `head`'s fields (its `files` must be the entries
/// that sort before every spooled one, sorted), then the spooled entries as they are.
pub(super) fn write(dir: &Path, head: &Manifest, spool: &Path) -> Result<()> {
    let mpath = dir.join(MANIFEST);
    let werr = |e: io::Error| Error::Write {
        path: mpath.clone(),
        source: e,
    };
    let spooled = File::open(spool).map_err(|e| Error::read(spool, e))?;
    crate::fsutil::write_atomic_with(&mpath, 0o400, |w| {
        let field = |w: &mut dyn Write, k: &str, v: &dyn erased::Ser| -> io::Result<()> {
            write!(
                w,
                "  {}: ",
                serde_json::to_string(k).map_err(io::Error::other)?
            )?;
            v.write_to(w)?;
            w.write_all(b",\n")
        };
        w.write_all(b"{\n")?;
        field(w, "format", &head.format)?;
        field(w, "tool_version", &head.tool_version)?;
        field(w, "created_at", &head.created_at)?;
        field(w, "run_id", &head.run_id)?;
        field(w, "source", &head.source)?;
        field(w, "source_fingerprint", &head.source_fingerprint)?;
        field(w, "fingerprint_after", &head.fingerprint_after)?;
        field(w, "include_uploads", &head.include_uploads)?;
        field(w, "counts", &head.counts)?;
        if let Some(s) = &head.sharing {
            field(w, "sharing", s)?;
        }
        field(w, "skipped_symlinks", &head.skipped_symlinks)?;
        field(w, "skipped_other", &head.skipped_other)?;
        field(w, "unreadable", &head.unreadable)?;
        w.write_all(b"  \"files\": [")?;
        let mut first = true;
        let mut entry = |w: &mut dyn Write, line: &[u8]| -> io::Result<()> {
            w.write_all(if first { b"\n    " } else { b",\n    " })?;
            first = false;
            w.write_all(line)
        };
        for f in &head.files {
            entry(w, &serde_json::to_vec(f).map_err(io::Error::other)?)?;
        }
        for line in io::BufReader::with_capacity(1 << 20, &spooled).split(b'\n') {
            let line = line?;
            if !line.is_empty() {
                entry(w, &line)?;
            }
        }
        w.write_all(b"\n  ]\n}\n")
    })
    .map_err(werr)
}

/// Serializing a field of any type through one function.
mod erased {
    pub trait Ser {
        fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
            serde_json::to_writer(w, self).map_err(std::io::Error::other)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> FileEntry {
        let mut e = FileEntry::new(
            Path::new(&format!("state/k{i:07}/state.json")),
            i,
            Digest32([(i % 251) as u8; 32]),
        );
        e.blob = true;
        e
    }

    fn head() -> Manifest {
        Manifest {
            format: FORMAT.to_owned(),
            tool_version: "test".into(),
            created_at: "2026-12-01T00:00:00Z".into(),
            run_id: "r".into(),
            source: ManifestSource {
                config: "c.toml".into(),
                sqlite: None,
                sessions_dir: None,
                json: None,
            },
            source_fingerprint: "f".into(),
            fingerprint_after: "f".into(),
            include_uploads: false,
            counts: ManifestCounts::default(),
            sharing: None,
            files: vec![FileEntry::new(
                Path::new("config/sessiondb.toml"),
                3,
                Digest32([1; 32]),
            )],
            skipped_symlinks: Vec::new(),
            skipped_other: Vec::new(),
            unreadable: Vec::new(),
        }
    }

    /// The manifest's list goes to a file as it is made, never to memory: the spool
    /// keeps counts and the last key only, and the manifest written from it lists every
    /// entry, in order, read back one at a time.
    #[test]
    fn the_spooled_list_is_written_out_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path()).unwrap();
        const N: u64 = 50_000;
        for i in 0..N {
            spool.push(&entry(i)).unwrap();
            // Nothing but the last key is held, whatever the count.
            assert!(spool.last.len() < 64);
        }
        assert_eq!((spool.files, spool.bytes), (N, N * (N - 1) / 2));
        let path = spool.finish().unwrap();
        let lines = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
        assert_eq!(lines, N);
        write(dir.path(), &head(), &path).unwrap();
        let mut n = 0u64;
        let h = stream_manifest(dir.path(), &mut |f| {
            let want = if n == 0 {
                head().files[0].clone()
            } else {
                entry(n - 1)
            };
            assert_eq!(f, want);
            n += 1;
        })
        .unwrap();
        assert_eq!(n, N + 1);
        assert_eq!(h.format, FORMAT);
        // And the whole document is one JSON manifest.
        let m = Manifest::read(dir.path()).unwrap();
        assert_eq!(m.files.len() as u64, N + 1);
    }

    /// Choosing a backup reads only the head of each manifest: the list after it is not
    /// parsed (a damaged list still gives the head; `backup --verify` and the check of
    /// the chosen backup read it whole), and a manifest with its fields after the list
    /// is read whole to find them.
    #[test]
    fn a_manifest_head_is_read_without_its_file_list() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path()).unwrap();
        for i in 0..10 {
            spool.push(&entry(i)).unwrap();
        }
        let path = spool.finish().unwrap();
        write(dir.path(), &head(), &path).unwrap();
        let manifest = dir.path().join(MANIFEST);
        let text = std::fs::read_to_string(&manifest).unwrap();
        let list = text.find("\"files\"").unwrap();
        // The list cut short: the head is still read; the whole manifest no longer is.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&manifest, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(
            &manifest,
            format!("{}\"files\": [{{\"path\": ", &text[..list]),
        )
        .unwrap();
        let h = ManifestHead::read(dir.path()).unwrap();
        assert_eq!((h.format.as_str(), h.run_id.as_str()), (FORMAT, "r"));
        assert!(Manifest::read(dir.path()).is_err());
        // What prune reads, whole: refused.
        assert!(ManifestHead::read_whole(dir.path()).is_err());
        // The fields after the list: found by reading it whole.
        // (serde_json's maps sort their keys: `format` comes after `files`.)
        let m: serde_json::Value = serde_json::from_str(&text).unwrap();
        let sorted = serde_json::to_string(&m).unwrap();
        assert!(sorted.find("\"files\"") < sorted.find("\"format\""));
        std::fs::write(&manifest, sorted).unwrap();
        let h = ManifestHead::read(dir.path()).unwrap();
        assert_eq!(
            (h.format.as_str(), h.source_fingerprint.as_str()),
            (FORMAT, "f")
        );
        // A head missing a field before the list is read on, and refused.
        let no_format = text.replacen("\"format\"", "\"formerly\"", 1);
        std::fs::write(&manifest, no_format).unwrap();
        assert!(ManifestHead::read(dir.path()).is_err());
    }
}
