//! State files: `<sessions_dir>/<id>/state.json`. Symlinks that leave the store are
//! recorded, never followed; unreadable and oversized files are invalid records.

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
    let meta = std::fs::metadata(&path)
        .map_err(|e| invalid(id, "unreadable", &path, e.to_string(), Vec::new()))?;
    if !meta.is_file() {
        return Err(invalid(
            id,
            "unreadable",
            &path,
            "not a regular file".into(),
            Vec::new(),
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
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some((bytes, path))),
        Err(e) => Err(invalid(id, "unreadable", &path, e.to_string(), Vec::new())),
    }
}
