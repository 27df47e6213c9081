//! The switch between backends: editing `sessiondb.backend` in the config (keeping
//! every comment and the layout; compare-and-swap on the old value; atomic write; the
//! previous file kept beside the backups), and the cutover records in the target.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::Digest;

use crate::config::Backend;
use crate::error::{Error, Result};
use crate::target::qualified;

/// A planned edit of the config file.
#[derive(Debug, Clone, Serialize)]
pub struct Edit {
    pub path: PathBuf,
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
        from,
        to: to.as_str().to_owned(),
        old_text,
        new_text,
        diff,
    }))
}

/// Apply a planned edit: the file must still be what was planned from (compare and
/// swap), the previous file is saved under `<backup_dir>/config-history/`, and the new
/// file replaces it atomically with its permissions kept. Returns where the previous
/// file was saved.
pub fn apply_edit(edit: &Edit, backup_dir: &Path, run_id: &str) -> Result<PathBuf> {
    let now = read_config(&edit.path)?;
    if now != edit.old_text {
        return Err(Error::Refused {
            code: "config_changed",
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
    crate::fsutil::write_atomic(&edit.path, edit.new_text.as_bytes(), 0o644).map_err(|e| {
        Error::Write {
            path: edit.path.clone(),
            source: e,
        }
    })?;
    Ok(saved)
}

/// A recorded cutover or rollback.
#[derive(Debug, Clone, Serialize)]
pub struct Cutover {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub kind: String,
    pub from_backend: String,
    pub to_backend: String,
    pub config_path: String,
}

#[allow(clippy::too_many_arguments)]
pub fn record(
    c: &mut impl postgres::GenericClient,
    schema: &str,
    kind: &str,
    from: &str,
    to: &str,
    config_path: &Path,
    config_sha: &str,
    verify_run: Option<uuid::Uuid>,
    run_id: &str,
) -> Result<()> {
    let run = uuid::Uuid::parse_str(run_id).expect("run ids are uuids");
    c.execute(
        &format!(
            "INSERT INTO {} (kind, from_backend, to_backend, config_path, config_sha256, verify_run_id, run_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            qualified(schema, "sessiondb_cutovers")
        ),
        &[&kind, &from, &to, &config_path.display().to_string(), &config_sha, &verify_run, &run],
    )
    .map_err(|e| Error::pg("recording the cutover", "", e))?;
    Ok(())
}

/// The newest cutover (set-default) record, if any.
pub fn latest(
    c: &mut impl postgres::GenericClient,
    schema: &str,
    kind: &str,
) -> Result<Option<Cutover>> {
    if !crate::target::schema::table_exists(c, schema, "sessiondb_cutovers")? {
        return Ok(None);
    }
    let rows = c
        .query(
            &format!("SELECT id, at, kind, from_backend, to_backend, config_path FROM {} WHERE kind = $1 ORDER BY id DESC LIMIT 1", qualified(schema, "sessiondb_cutovers")),
            &[&kind],
        )
        .map_err(|e| Error::pg("reading cutovers", "", e))?;
    Ok(rows.first().map(|r| Cutover {
        id: r.get(0),
        at: r.get(1),
        kind: r.get(2),
        from_backend: r.get(3),
        to_backend: r.get(4),
        config_path: r.get(5),
    }))
}
