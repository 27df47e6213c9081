//! The deprecated JSON SessionDB, read-only: its index (ids, metadata, where each record
//! is in the file) is loaded once when the store opens and served from memory; a state is
//! read from the file when asked for, and fails with `source_changed` if the file is no
//! longer the one loaded. Every write is refused with `json_backend_deprecated`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use super::error::{Error, Result};
use super::state::State;
use super::{Meta, Page, SessionSummary};
use crate::report::Finding;
use crate::source::JsonRecord;

pub(crate) struct JsonStore {
    path: PathBuf,
    /// By id, ordered bytewise (as the other backends list them); the last record of a
    /// duplicated id wins, as in the migration.
    sessions: BTreeMap<String, JsonRecord>,
}

impl JsonStore {
    pub(crate) async fn open(path: &Path) -> Result<(JsonStore, Vec<Finding>)> {
        let p = path.to_path_buf();
        let (records, mut warnings) =
            tokio::task::spawn_blocking(move || crate::source::load_json_store(&p))
                .await
                .map_err(|_| Error::Closed)??;
        let mut sessions = BTreeMap::new();
        let mut bad_ids = 0usize;
        for r in records {
            match &r.id {
                Ok(id) => {
                    sessions.insert(id.clone(), r);
                }
                Err(_) => bad_ids += 1,
            }
        }
        if bad_ids > 0 {
            warnings.push(
                Finding::new(
                    "invalid_id",
                    format!(
                        "{}: {bad_ids} record(s) without a usable id are not served",
                        path.display()
                    ),
                )
                .path(path),
            );
        }
        Ok((
            JsonStore {
                path: path.to_path_buf(),
                sessions,
            },
            warnings,
        ))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn read_only(&self, op: &'static str) -> Error {
        Error::ReadOnly {
            path: self.path.clone(),
            op,
        }
    }

    pub(crate) fn ping(&self) -> Result<()> {
        std::fs::metadata(&self.path).map(|_| ()).map_err(|e| {
            Error::Backend(crate::error::Error::Unreadable {
                path: self.path.clone(),
                source: e,
            })
        })
    }

    fn meta(id: &str, e: &JsonRecord) -> Result<Meta> {
        e.meta.clone().map_err(|f| Error::InvalidRecord {
            id: id.to_owned(),
            code: f.code,
            message: f.message,
        })
    }

    pub(crate) fn get(&self, id: &str) -> Result<Option<(Meta, Option<State>)>> {
        let Some(e) = self.sessions.get(id) else {
            return Ok(None);
        };
        Ok(Some((Self::meta(id, e)?, self.state_of(id, e)?)))
    }

    fn state_of(&self, id: &str, e: &JsonRecord) -> Result<Option<State>> {
        match e.state()? {
            None => Ok(None),
            Some(b) => State::parse(&b)
                .map(Some)
                .map_err(|err| Error::InvalidRecord {
                    id: id.to_owned(),
                    code: err.code(),
                    message: format!("{}: {err}", self.path.display()),
                }),
        }
    }

    pub(crate) fn state(&self, id: &str) -> Result<Option<State>> {
        match self.sessions.get(id) {
            None => Ok(None),
            Some(e) => self.state_of(id, e),
        }
    }

    pub(crate) fn list(&self, page: &Page) -> Result<Vec<SessionSummary>> {
        let from = match &page.after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Unbounded,
        };
        self.sessions
            .range((from, Bound::Unbounded))
            .take(page.limit as usize)
            .map(|(id, e)| {
                Ok(SessionSummary {
                    id: id.clone(),
                    meta: Self::meta(id, e)?,
                    extra: Default::default(),
                })
            })
            .collect()
    }
}
