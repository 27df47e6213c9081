//! The store's quick fingerprint (`q1:`): the path, size, mtime and inode of the SQLite
//! database, its WAL, every `state.json` under the sessions folder (in name order) and
//! the JSON store. Any write to the store changes it; a backup records it, and a later
//! run finds the backup of the store as it is by comparing it.
//!
//! Stat-ing every state file is most of its cost, and a catch-up scan stats them all
//! anyway to stamp the rows: [`Fingerprint::feed`] takes those stats as the scan makes
//! them, in id order, which is name order, so the fingerprint of a catch-up costs no
//! second pass. Whatever the scan does not feed (a folder with no row, an id out of
//! order) is stat-ed by the fingerprint itself, so the digest is the same either way.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::Source;
use crate::error::{Error, Result};
use crate::fsutil::{FileStamp, lstat_at};

/// A fingerprint being taken: the folder's names listed and sorted, hashed up to `next`.
pub struct Fingerprint {
    h: Sha256,
    sessions: Option<Sessions>,
    json_path: Option<PathBuf>,
}

struct Sessions {
    dir: PathBuf,
    fd: File,
    names: Names,
    next: usize,
    /// How many names have a `state.json` (of any kind), fed or stat-ed here.
    with_state: u64,
    /// The names stat-ed here (not fed) that have one, in name order.
    unfed: Vec<u32>,
}

/// The folder's names, sorted, in one buffer: a million names are two allocations (given
/// back whole when the fingerprint is done) rather than a million small ones.
struct Names {
    buf: Vec<u8>,
    /// Each name's start and end in `buf` (8 bytes a name).
    spans: Vec<(u32, u32)>,
}

impl Names {
    fn list(dir: &Path) -> std::io::Result<Names> {
        use std::os::unix::ffi::OsStrExt;
        let mut names = Names {
            buf: Vec::new(),
            spans: Vec::new(),
        };
        for e in std::fs::read_dir(dir)? {
            let Ok(e) = e else { continue };
            let start = names.buf.len();
            names.buf.extend_from_slice(e.file_name().as_bytes());
            let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(names.buf.len()))
            else {
                return Err(std::io::Error::other(
                    "more than 4 GB of names in one folder",
                ));
            };
            names.spans.push((start, end));
        }
        names.buf.shrink_to_fit();
        names.spans.shrink_to_fit();
        let buf = &names.buf;
        let name = |s: &(u32, u32)| &buf[s.0 as usize..s.1 as usize];
        names.spans.sort_unstable_by(|a, b| name(a).cmp(name(b)));
        Ok(names)
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn get(&self, i: usize) -> &OsStr {
        use std::os::unix::ffi::OsStrExt;
        let (s, e) = self.spans[i];
        OsStr::from_bytes(&self.buf[s as usize..e as usize])
    }
}

impl Fingerprint {
    /// Start: the database and its WAL are hashed now, the folder listed.
    pub fn start(source: &Source) -> Result<Fingerprint> {
        let mut h = Sha256::new();
        let mut sessions = None;
        source.check_paths()?;
        if let Some(s) = &source.sqlite {
            h.update(path_entry(&s.path));
            h.update(path_entry(&PathBuf::from(format!(
                "{}-wal",
                s.path.display()
            ))));
            let unreadable = |e| Error::read(&s.sessions_dir, e);
            let names = Names::list(&s.sessions_dir).map_err(unreadable)?;
            sessions = Some(Sessions {
                dir: s.sessions_dir.clone(),
                fd: crate::fsutil::open_dir(&s.sessions_dir).map_err(unreadable)?,
                names,
                next: 0,
                with_state: 0,
                unfed: Vec::new(),
            });
        }
        Ok(Fingerprint {
            h,
            sessions,
            json_path: source.json_path.clone(),
        })
    }

    /// The scan stat-ed `<id>/state.json`: `Some` with what it found, `None` when there
    /// is no such file. Names before `id` that were not fed are stat-ed here.
    pub fn feed(&mut self, id: &str, stat: Option<&FileStamp>) {
        let Some(s) = &mut self.sessions else {
            return;
        };
        let name = OsStr::new(id);
        while s.next < s.names.len() && s.names.get(s.next) < name {
            let e = s.entry_of(s.next, None);
            s.took(s.next, &e);
            self.h.update(e.bytes);
            s.next += 1;
        }
        if s.next < s.names.len() && s.names.get(s.next) == name {
            let e = s.entry_of(s.next, Some(stat));
            s.with_state += u64::from(e.found);
            self.h.update(e.bytes);
            s.next += 1;
        }
    }

    /// Stat what was not fed (in parallel), hash the JSON store, and give the digest.
    pub fn finish(self) -> String {
        self.finish_inner(false).0
    }

    /// [`Self::finish`], and what the stats found of the sessions folder: how many
    /// names have a `state.json`, and those of them that were not fed (the folders of
    /// no SQLite row the scan read: what a search for orphan state files looks at).
    pub fn finish_with_rest(self) -> (String, Option<Unfed>) {
        self.finish_inner(true)
    }

    /// The digest; with `rest`, what [`Self::finish_with_rest`] gives besides. Without
    /// it the names stat-ed here are not noted: a fingerprint that nothing fed (a pass
    /// of its own) would note every name of the folder.
    fn finish_inner(mut self, rest_wanted: bool) -> (String, Option<Unfed>) {
        let mut rest = None;
        if let Some(s) = &mut self.sessions {
            let left: Vec<usize> = (s.next..s.names.len()).collect();
            for chunk in left.chunks(4096) {
                let entries: Vec<Entry> = chunk.par_iter().map(|&i| s.entry_of(i, None)).collect();
                for (&i, e) in chunk.iter().zip(entries) {
                    if rest_wanted {
                        s.took(i, &e);
                    }
                    self.h.update(e.bytes);
                }
            }
            s.next = s.names.len();
            rest = rest_wanted.then(|| Unfed {
                with_state: s.with_state,
                names: s
                    .unfed
                    .iter()
                    .map(|&i| s.names.get(i as usize).to_owned())
                    .collect(),
            });
        }
        if let Some(j) = &self.json_path {
            self.h.update(path_entry(j));
        }
        (format!("q1:{}", hex::encode(self.h.finalize())), rest)
    }
}

/// What a fingerprint's stats found of the sessions folder ([`Fingerprint::finish_with_rest`]).
pub struct Unfed {
    /// The names with a `state.json` (of any kind).
    pub with_state: u64,
    /// Those of them that were not fed, in name order.
    pub names: Vec<std::ffi::OsString>,
}

/// One name's part of the digest, and whether its `state.json` is there.
struct Entry {
    bytes: Vec<u8>,
    found: bool,
}

impl Sessions {
    /// The entry of the `i`th name: with `known` the stat the scan made (`None` inside:
    /// no file), else a stat made now.
    fn entry_of(&self, i: usize, known: Option<Option<&FileStamp>>) -> Entry {
        let rel = Path::new(self.names.get(i)).join("state.json");
        let mut e = self.dir.join(&rel).into_os_string().into_encoded_bytes();
        let stat = match known {
            Some(s) => s.copied(),
            None => lstat_at(&self.fd, &rel).ok(),
        };
        if let Some(m) = stat {
            stat_entry(&mut e, m.size, m.mtime, m.ino);
        }
        Entry {
            bytes: e,
            found: stat.is_some(),
        }
    }

    /// The `i`th name was stat-ed here, not fed: counted, and noted if it has a file.
    fn took(&mut self, i: usize, e: &Entry) {
        if e.found {
            self.with_state += 1;
            self.unfed.push(i as u32);
        }
    }
}

/// What one file contributes: its path, then size, mtime and inode when it exists.
fn path_entry(p: &Path) -> Vec<u8> {
    let mut e = p.as_os_str().as_encoded_bytes().to_vec();
    if let Ok(m) = std::fs::symlink_metadata(p) {
        stat_entry(&mut e, m.size(), (m.mtime(), m.mtime_nsec()), m.ino());
    }
    e
}

fn stat_entry(e: &mut Vec<u8>, size: u64, mtime: (i64, i64), ino: u64) {
    e.extend_from_slice(&size.to_le_bytes());
    e.extend_from_slice(&mtime.0.to_le_bytes());
    e.extend_from_slice(&mtime.1.to_le_bytes());
    e.extend_from_slice(&ino.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SqliteSource;

    /// The digest as versions before the fed fingerprint computed it, one whole-path
    /// stat per file: backups taken by them must still be found.
    fn by_paths(db: &Path, dir: &Path, json: &Path) -> String {
        let mut h = Sha256::new();
        h.update(path_entry(db));
        h.update(path_entry(&PathBuf::from(format!("{}-wal", db.display()))));
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            h.update(path_entry(&dir.join(n).join("state.json")));
        }
        h.update(path_entry(json));
        format!("q1:{}", hex::encode(h.finalize()))
    }

    #[test]
    fn fed_or_not_the_digest_is_the_one_of_whole_path_stats() {
        let tmp = std::env::temp_dir().join(format!("sdb-fp-{}", std::process::id()));
        let dir = tmp.join("sessions");
        std::fs::create_dir_all(&dir).unwrap();
        for id in ["a", "b", "c", "d", "e"] {
            std::fs::create_dir_all(dir.join(id)).unwrap();
            if id != "c" {
                std::fs::write(
                    dir.join(id).join("state.json"),
                    format!("{{\"id\":\"{id}\"}}"),
                )
                .unwrap();
            }
        }
        let db = tmp.join("app.db");
        let json = tmp.join("store.json");
        std::fs::write(&db, b"db").unwrap();
        std::fs::write(&json, b"[]").unwrap();
        let src = Source {
            sqlite: Some(SqliteSource {
                path: db.clone(),
                sessions_dir: dir.clone(),
            }),
            json_path: Some(json.clone()),
            json_fields: Default::default(),
        };
        let expected = by_paths(&db, &dir, &json);
        assert_eq!(src.quick_fingerprint().unwrap(), expected);

        // Fed in id order, with ids that have no folder and a folder with no id ("d").
        let fd = File::open(&dir).unwrap();
        let stat = |id: &str| lstat_at(&fd, &Path::new(id).join("state.json")).ok();
        let mut f = Fingerprint::start(&src).unwrap();
        for id in ["0", "a", "b", "bb", "c", "e", "z"] {
            let s = stat(id);
            f.feed(id, s.as_ref());
        }
        assert_eq!(f.finish(), expected);

        // A stat fed that differs from the file (the file changed after the scan's stat)
        // changes the digest: the fed stat is what is hashed.
        let mut f = Fingerprint::start(&src).unwrap();
        let mut s = stat("b").unwrap();
        s.size += 1;
        f.feed("b", Some(&s));
        assert_ne!(f.finish(), expected);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
