//! The switch between backends: editing `sessiondb.backend` in the config (keeping
//! every comment and the layout; compare-and-swap on the old value; atomic write; the
//! previous file kept beside the backups). The cutover records in the target are
//! `crate::pg::ledger::runs`.
//!
//! A config that is a symlink (config management, stow, a deploy that links releases)
//! is edited where the link leads: the file it points to is replaced atomically (a temp
//! file in that file's own folder, fsync, rename over it, fsync of the folder) and the
//! link stays a link. Replacing the link with a regular file would silently detach the
//! config from whatever manages it. Where the file cannot be written — a read-only
//! filesystem, a folder this user may not write, or a Kubernetes ConfigMap or Secret
//! mount (a read-only chain of links through `..data/` that the kubelet rewrites) — the
//! edit is refused when it is planned (`config_read_only`), so a dry run refuses too.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::Digest;

use crate::config::Backend;
use crate::error::{Error, Result};

/// A planned edit of the config file.
#[derive(Debug, Clone, Serialize)]
pub struct Edit {
    pub path: PathBuf,
    /// The file rewritten: `path` itself, or the file its symlink(s) lead to.
    pub target: PathBuf,
    /// Whether `path` is a symlink (then `target` is edited and the link kept).
    pub via_symlink: bool,
    pub from: String,
    pub to: String,
    #[serde(skip)]
    pub old_text: String,
    #[serde(skip)]
    pub new_text: String,
    /// The changed lines, as `-old` / `+new`.
    pub diff: Vec<String>,
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// Where the config file at `path` really is, and whether it is reached through a
/// symlink; refused (`config_read_only`) when it cannot be replaced there.
fn edit_target(path: &Path, to: Backend) -> Result<(PathBuf, bool)> {
    let unreadable = |e| Error::Unreadable {
        path: path.to_path_buf(),
        source: e,
    };
    let via_symlink = std::fs::symlink_metadata(path)
        .map_err(unreadable)?
        .file_type()
        .is_symlink();
    let target = if via_symlink {
        std::fs::canonicalize(path).map_err(unreadable)?
    } else {
        path.to_path_buf()
    };
    let refuse = |why: String| Error::ConfigReadOnly {
        message: format!(
            "{} cannot be switched to backend = \"{to}\": {why}; nothing was written",
            path.display()
        ),
    };
    if via_symlink && kubernetes_mount(path) {
        return Err(refuse(format!(
            "it is a Kubernetes ConfigMap or Secret mount (a read-only chain of symlinks through ..data/ to {}, rewritten by the kubelet): set backend = \"{to}\" in the ConfigMap itself and restart the pods (to run this step anyway, point --config at a writable copy whose paths are absolute)",
            target.display()
        )));
    }
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if read_only_fs(&dir) {
        return Err(refuse(format!(
            "{} is on a read-only filesystem",
            if via_symlink {
                format!("the file it links to, {},", target.display())
            } else {
                "it".to_owned()
            }
        )));
    }
    if !writable(&dir) {
        return Err(refuse(format!(
            "this user may not create files in {} (the file is replaced by a rename there)",
            dir.display()
        )));
    }
    Ok((target, via_symlink))
}

/// Whether `path` is a link into a Kubernetes volume: the link (or its folder) goes
/// through the `..data` link that ConfigMap, Secret and projected volumes have.
fn kubernetes_mount(path: &Path) -> bool {
    let mut cur = path.to_path_buf();
    for _ in 0..40 {
        let Ok(next) = std::fs::read_link(&cur) else {
            break;
        };
        if next.components().any(|c| c.as_os_str() == "..data") {
            return true;
        }
        cur = match cur.parent() {
            Some(p) => p.join(next),
            None => next,
        };
    }
    path.parent().is_some_and(|d| {
        std::fs::symlink_metadata(d.join("..data")).is_ok_and(|m| m.file_type().is_symlink())
    })
}

fn read_only_fs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_flag & libc::ST_RDONLY != 0
}

fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// The warning a step gives when it edits a config through a symlink.
pub fn symlink_warning(edit: &Edit) -> Option<crate::report::Finding> {
    edit.via_symlink.then(|| {
        crate::report::Finding::new(
            "config_symlink",
            format!(
                "{} is a symlink: the file it leads to, {}, is edited in place (the link is kept); if config management owns that file, change backend there too, or its next run undoes this",
                edit.path.display(),
                edit.target.display()
            ),
        )
        .path(&edit.target)
    })
}

/// The config file's text, read as [`crate::config::read_text`] reads it: a regular
/// file only, bounded in size.
fn read_config(path: &Path) -> Result<String> {
    crate::config::read_text(path)?.ok_or_else(|| Error::Unreadable {
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// Plan setting `sessiondb.backend` to `to`. `None` when it already is.
pub fn plan_edit(path: &Path, to: Backend) -> Result<Option<Edit>> {
    let old_text = read_config(path)?;
    let mut doc: toml_edit::DocumentMut =
        old_text
            .parse()
            .map_err(|e: toml_edit::TomlError| Error::ConfigInvalid {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    let item = doc
        .get_mut("sessiondb")
        .and_then(|t| t.get_mut("backend"))
        .ok_or_else(|| Error::ConfigInvalid {
            path: path.to_path_buf(),
            message: "no sessiondb.backend to change".into(),
        })?;
    let value = item.as_value_mut().ok_or_else(|| Error::ConfigInvalid {
        path: path.to_path_buf(),
        message: "sessiondb.backend is not a value".into(),
    })?;
    let from = value
        .as_str()
        .ok_or_else(|| Error::ConfigInvalid {
            path: path.to_path_buf(),
            message: "sessiondb.backend is not a string".into(),
        })?
        .to_owned();
    if from == to.as_str() {
        return Ok(None);
    }
    let (target, via_symlink) = edit_target(path, to)?;
    let decor = value.decor().clone();
    let mut new_value = toml_edit::Value::from(to.as_str());
    *new_value.decor_mut() = decor;
    *value = new_value;
    let new_text = doc.to_string();
    let diff = old_text
        .lines()
        .zip(new_text.lines())
        .filter(|(a, b)| a != b)
        .flat_map(|(a, b)| [format!("-{a}"), format!("+{b}")])
        .collect();
    Ok(Some(Edit {
        path: path.to_path_buf(),
        target,
        via_symlink,
        from,
        to: to.as_str().to_owned(),
        old_text,
        new_text,
        diff,
    }))
}

/// Apply a planned edit: the file must still be what was planned from (compare and
/// swap; a link must still lead to the same file), the previous file is saved under
/// `<backup_dir>/config-history/`, and the new file replaces the target atomically
/// with its permissions kept (a symlink stays a symlink). Returns where the previous
/// file was saved.
pub fn apply_edit(edit: &Edit, backup_dir: &Path, run_id: &str) -> Result<PathBuf> {
    let unreadable = |e| Error::Unreadable {
        path: edit.path.clone(),
        source: e,
    };
    let is_link = std::fs::symlink_metadata(&edit.path)
        .map_err(unreadable)?
        .file_type()
        .is_symlink();
    let leads_to = if is_link {
        std::fs::canonicalize(&edit.path).map_err(unreadable)?
    } else {
        edit.path.clone()
    };
    if is_link != edit.via_symlink || leads_to != edit.target {
        return Err(Error::ConfigChanged {
            message: format!(
                "{} now leads to {} (it led to {} when this step planned): nothing written; run it again",
                edit.path.display(),
                leads_to.display(),
                edit.target.display()
            ),
        });
    }
    let now = read_config(&edit.target)?;
    if now != edit.old_text {
        return Err(Error::ConfigChanged {
            message: format!(
                "{} changed while this step ran; nothing written: run it again",
                edit.path.display()
            ),
        });
    }
    let hist = backup_dir.join("config-history");
    crate::fsutil::create_private_dir_all(&hist).map_err(|e| Error::Write {
        path: hist.clone(),
        source: e,
    })?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let name = edit
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sessiondb.toml".into());
    let saved = hist.join(format!("{name}.{stamp}.{}", &run_id[..8.min(run_id.len())]));
    crate::fsutil::write_atomic(&saved, edit.old_text.as_bytes(), 0o600).map_err(|e| {
        Error::Write {
            path: saved.clone(),
            source: e,
        }
    })?;
    crate::fsutil::write_atomic(&edit.target, edit.new_text.as_bytes(), 0o644).map_err(|e| {
        Error::Write {
            path: edit.target.clone(),
            source: e,
        }
    })?;
    Ok(saved)
}
