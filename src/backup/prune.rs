//! `backup --prune [--keep N]`: which complete backups may go, and removing them (with
//! `--dry-run=false` only), with the blobs that no kept backup lists any more.
//!
//! A backup is kept, whatever `--keep` says, when it is
//!
//! - the newest complete backup;
//! - among the `N` newest (`--keep N`, default 3);
//! - the newest backup of the store as it is now (its fingerprint);
//! - the newest backup of the store the config names (its database, sessions folder
//!   and JSON store), so that a store changed since its last backup keeps one;
//! - one a recorded cutover relies on ([`Reliance`]: the command reads the cutover
//!   records from PostgreSQL, and refuses to prune when it cannot);
//! - holding a rollback journal that is not finished (`rollback/round-N.json`).
//!
//! Folders of failed backups (the rule of [`super::failed_backups`]) are removed too.
//! A folder named as a backup whose manifest this version cannot read (damaged, or
//! written by a newer version) is neither removed nor understood: it is kept, and no
//! blob is swept (it may list any of them).
//! Only folders named as backups, directly under `backup.dir`, not links, are ever
//! considered; a folder being removed is first renamed `.pruning-<name>` (no longer a
//! backup's name), so that a prune killed half-way leaves no half backup that looks
//! whole; the next prune finishes removing it. Blobs are swept under the blob store's
//! exclusive lock: never while a backup is being written.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::blobs::{Blobs, Mode, Swept};
use super::manifest::{Digest32, ManifestHead, ManifestSource};
use crate::error::{Error, Result};

/// `--keep`'s default.
pub const DEFAULT_KEEP: usize = 3;
const PRUNING_PREFIX: &str = ".pruning-";

/// A backup a recorded cutover relies on, and how to recognise it.
#[derive(Debug, Clone, Serialize)]
pub struct Reliance {
    /// Why, in words: "cutover #3 (set_default at ...) verified this source".
    pub why: String,
    pub rule: Rule,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Rule {
    /// Every backup of the store as it was when its fingerprint was this.
    Fingerprint(String),
    /// The backup in a folder of this name (recorded by a run as its backup).
    Folder(String),
    /// The backup that the run of this id took.
    RunId(String),
    /// The newest complete backup taken at or before this time.
    NewestBefore(DateTime<Utc>),
}

/// What prune must know beyond `backup.dir` (the command gathers it).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The store's quick fingerprint now.
    pub current_fingerprint: String,
    /// The store the config names.
    pub current_source: Option<ManifestSource>,
    pub reliances: Vec<Reliance>,
}

/// One complete backup, as prune sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub dir: PathBuf,
    pub created_at: String,
    /// The bytes of its own folder (what removing the folder frees, blobs aside).
    pub bytes: u64,
    /// The bytes of every file it lists (what a restore from it writes).
    pub listed_bytes: u64,
    /// Why it is kept; empty for one that goes.
    pub kept_because: Vec<String>,
}

/// What prune would do, or did.
#[derive(Debug, Clone, Serialize)]
pub struct PrunePlan {
    pub keep: usize,
    pub kept: Vec<Listed>,
    pub remove: Vec<Listed>,
    /// Folders of failed backups, and of prunes killed half-way.
    pub leftovers: Vec<Leftover>,
    /// The blobs no kept backup lists (and temporary files of dead backups).
    pub blobs: Swept,
    /// Folders named as backups, complete, whose manifest cannot be read: kept.
    pub unreadable: Vec<PathBuf>,
    /// Why no blob is swept, when none is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep_skipped: Option<String>,
    /// Everything that goes: the folders and the blobs, in bytes.
    pub freed_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Leftover {
    pub dir: PathBuf,
    pub bytes: u64,
    pub why: &'static str,
}

/// A prune under way: the blob store held exclusively (no backup writes meanwhile).
pub struct Pruning {
    backup_dir: PathBuf,
    blobs: Option<Blobs>,
}

impl Pruning {
    /// Take the blob store's exclusive lock (`lock_held` when a backup is being
    /// written). A `backup.dir` without a blob store has no blob to sweep.
    pub fn open(backup_dir: &Path) -> Result<Pruning> {
        let blobs = match fs::symlink_metadata(backup_dir.join(super::blobs::DIR)) {
            Ok(_) => Some(Blobs::open(backup_dir, Mode::Sweep)?),
            Err(_) => None,
        };
        Ok(Pruning {
            backup_dir: backup_dir.to_path_buf(),
            blobs,
        })
    }

    /// Decide, removing nothing: the same plan for the dry run and the real run.
    pub fn plan(&self, keep: usize, facts: &Facts) -> Result<PrunePlan> {
        let keep = keep.max(1);
        let all = super::complete_whole(&self.backup_dir);
        let newest_now = all
            .iter()
            .position(|(_, h)| of_fingerprint(h, &facts.current_fingerprint));
        let newest_of_source = facts.current_source.as_ref().and_then(|src| {
            all.iter()
                .position(|(_, h)| h.source.as_ref().is_some_and(|s| same_store(s, src)))
        });
        let mut kept = Vec::new();
        let mut remove = Vec::new();
        for (i, (dir, head)) in all.iter().enumerate() {
            let mut why = Vec::new();
            if i == 0 {
                why.push("the newest complete backup".to_owned());
            }
            if i < keep {
                why.push(format!("among the {keep} newest (--keep {keep})"));
            }
            if newest_now == Some(i) {
                why.push("the newest backup of the store as it is now".to_owned());
            }
            if newest_of_source == Some(i) {
                why.push("the newest backup of the store the config names".to_owned());
            }
            for r in &facts.reliances {
                if relies_on(r, dir, head, &all) {
                    why.push(r.why.clone());
                }
            }
            if holds_unfinished_rollback(dir) {
                why.push(
                    "holds a rollback journal that is not finished: the next rollback needs it"
                        .to_owned(),
                );
            }
            let listed = Listed {
                dir: dir.clone(),
                created_at: head.created_at.clone(),
                bytes: folder_bytes(dir),
                listed_bytes: head.counts.bytes,
                kept_because: why,
            };
            if listed.kept_because.is_empty() {
                remove.push(listed);
            } else {
                kept.push(listed);
            }
        }
        let leftovers = self.leftovers();
        let unreadable = self.unreadable(&all, &leftovers);
        let sweep_skipped = (!unreadable.is_empty()).then(|| {
            format!(
                "{} backup folder(s) whose manifest cannot be read may list any blob: none is removed",
                unreadable.len()
            )
        });
        let blobs = match (&self.blobs, &sweep_skipped) {
            (Some(b), None) => b.sweep(&listed_blobs(&kept)?, false)?,
            _ => Swept::default(),
        };
        let freed_bytes = remove.iter().map(|l| l.bytes).sum::<u64>()
            + leftovers.iter().map(|l| l.bytes).sum::<u64>()
            + blobs.bytes
            + blobs.temp_bytes;
        Ok(PrunePlan {
            keep,
            kept,
            remove,
            leftovers,
            blobs,
            unreadable,
            sweep_skipped,
            freed_bytes,
        })
    }

    /// Folders named as backups, without a marker, that are neither a complete backup
    /// this version reads nor a leftover.
    fn unreadable(&self, all: &[(PathBuf, ManifestHead)], leftovers: &[Leftover]) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(&self.backup_dir) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(super::folders::is_folder_name)
            })
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .filter(|d| all.iter().all(|(a, _)| a != d))
            .filter(|d| leftovers.iter().all(|l| &l.dir != d))
            .collect();
        out.sort();
        out
    }

    /// Folders that are no backup and that prune may remove: failed backups' and
    /// half-removed ones.
    fn leftovers(&self) -> Vec<Leftover> {
        let mut out: Vec<Leftover> =
            super::failed_backups(&self.backup_dir, None, std::time::SystemTime::now())
                .into_iter()
                .map(|dir| Leftover {
                    bytes: folder_bytes(&dir),
                    dir,
                    why: "a backup that never finished (its INCOMPLETE marker, no live writer)",
                })
                .collect();
        if let Ok(rd) = fs::read_dir(&self.backup_dir) {
            for e in rd.flatten() {
                let half = e.file_name().to_str().is_some_and(|n| {
                    n.strip_prefix(PRUNING_PREFIX)
                        .is_some_and(super::folders::is_folder_name)
                });
                if half && e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(Leftover {
                        bytes: folder_bytes(&e.path()),
                        dir: e.path(),
                        why: "a backup a killed prune was removing",
                    });
                }
            }
        }
        out
    }

    /// Remove what `plan` says goes, then the blobs no kept backup lists (computed again
    /// from the backups left). Returns the plan as done: what could not be removed is
    /// an error, and what was removed before it stays removed.
    pub fn act(&self, plan: &PrunePlan) -> Result<Swept> {
        for l in &plan.remove {
            remove_backup(&self.backup_dir, &l.dir)?;
        }
        for l in &plan.leftovers {
            fs::remove_dir_all(&l.dir).map_err(|e| Error::Write {
                path: l.dir.clone(),
                source: e,
            })?;
        }
        let _ = fs::File::open(&self.backup_dir).and_then(|d| d.sync_all());
        // Computed again from what is left: the same refusal as the plan's.
        let all = super::complete_whole(&self.backup_dir);
        if !self.unreadable(&all, &self.leftovers()).is_empty() {
            return Ok(Swept::default());
        }
        match &self.blobs {
            Some(b) => {
                let kept: Vec<Listed> = super::complete_whole(&self.backup_dir)
                    .into_iter()
                    .map(|(dir, h)| Listed {
                        dir,
                        created_at: h.created_at,
                        bytes: 0,
                        listed_bytes: 0,
                        kept_because: Vec::new(),
                    })
                    .collect();
                b.sweep(&listed_blobs(&kept)?, true)
            }
            None => Ok(Swept::default()),
        }
    }
}

/// Whether two manifests name the same store (the config file aside).
fn same_store(a: &ManifestSource, b: &ManifestSource) -> bool {
    (&a.sqlite, &a.sessions_dir, &a.json) == (&b.sqlite, &b.sessions_dir, &b.json)
}

/// Whether the backup was taken of the store as it is when its fingerprint is `fp`.
fn of_fingerprint(h: &ManifestHead, fp: &str) -> bool {
    h.source_fingerprint == fp && h.fingerprint_after == fp
}

fn relies_on(
    r: &Reliance,
    dir: &Path,
    head: &ManifestHead,
    all: &[(PathBuf, ManifestHead)],
) -> bool {
    match &r.rule {
        Rule::Fingerprint(fp) => head.source_fingerprint == *fp || head.fingerprint_after == *fp,
        Rule::Folder(name) => dir.file_name().is_some_and(|n| n == name.as_str()),
        Rule::RunId(run) => head.run_id == *run,
        Rule::NewestBefore(at) => {
            let taken = |h: &ManifestHead| {
                DateTime::parse_from_rfc3339(&h.created_at)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            };
            // `all` is newest first: the first taken at or before `at`.
            all.iter()
                .find(|(_, h)| taken(h).is_some_and(|t| t <= *at))
                .is_some_and(|(d, _)| d == dir)
        }
    }
}

/// Whether `dir` holds a rollback journal neither `done` nor `undone`.
fn holds_unfinished_rollback(dir: &Path) -> bool {
    let Ok(rd) = fs::read_dir(dir.join("rollback")) else {
        return false;
    };
    rd.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("round-") && name.ends_with(".json")) {
            return false;
        }
        // A journal that cannot be read is taken for unfinished: kept.
        let state = fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["state"].as_str().map(str::to_owned));
        !matches!(state.as_deref(), Some("done" | "undone"))
    })
}

/// Every blob the kept backups list.
fn listed_blobs(kept: &[Listed]) -> Result<HashSet<Digest32>> {
    let mut set = HashSet::new();
    for l in kept {
        super::manifest::stream_manifest(&l.dir, &mut |f| {
            if f.blob {
                set.insert(f.sha256);
            }
        })?;
    }
    Ok(set)
}

/// The bytes of the files under `dir` (links not followed).
fn folder_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Remove one backup: renamed out of the backups' names first, then removed.
fn remove_backup(backup_dir: &Path, dir: &Path) -> Result<()> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| super::folders::is_folder_name(n))
        .ok_or_else(|| Error::Internal {
            message: format!("{} is not named as a backup: not removed", dir.display()),
        })?;
    let meta = fs::symlink_metadata(dir).map_err(|e| Error::read(dir, e))?;
    if !meta.is_dir() || dir.parent() != Some(backup_dir) {
        return Err(Error::Internal {
            message: format!(
                "{} is not a folder directly in {}: not removed",
                dir.display(),
                backup_dir.display()
            ),
        });
    }
    let away = backup_dir.join(format!("{PRUNING_PREFIX}{name}"));
    tracing::info!("removing the backup {}", dir.display());
    fs::rename(dir, &away).map_err(|e| Error::Write {
        path: dir.to_path_buf(),
        source: e,
    })?;
    fs::remove_dir_all(&away).map_err(|e| Error::Write {
        path: away.clone(),
        source: e,
    })
}
