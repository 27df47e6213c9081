//! The legacy store (SPEC §1): the SQLite `sessions` table, the state files, and the
//! deprecated JSON store, resolved into sessions. Opened read-only; never written.
//!
//! Resolution: metadata from the SQLite row, else the JSON store record; state from
//! `state.json`, else the SQLite `state` column, else the JSON record's `state`. Where
//! two sources disagree about the state the file wins (`state_conflict`). A state file
//! with no metadata is an `orphan_state_file`. Invalid records come out as
//! [`Item::Invalid`] with their code and raw bytes, never dropped.
//!
//! [`Reader::scan`] streams: SQLite rows are read in id order inside one read
//! transaction (a consistent snapshot of a live WAL database), state files are read and
//! canonicalised in parallel one batch ahead of the consumer, and the JSON store is an
//! index whose records read their bytes from the file as they are resolved, so memory
//! stays flat in the number of sessions.

pub mod app;
pub mod fields;
pub(crate) mod files;
pub mod fingerprint;
mod json_store;
pub mod order;
pub mod shape;
pub mod sqlite;
pub mod write;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::canon;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fsutil::FileStamp;
use crate::report::Finding;
use fields::{FieldError, Raw};

pub use files::{READ_TRIES, Whole, read_whole};
pub use fingerprint::Fingerprint;
pub use json_store::{JsonFields, JsonRecord};

/// Session metadata, parsed.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Meta {
    pub user_id: Option<String>,
    pub status: Option<String>,
    pub current_step: Option<String>,
    pub cost: Option<f64>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The metadata fields, in the order of [`Meta::texts`]: also the names of the target
/// columns they go to, and the order every reader and writer of those columns keeps.
pub const META_FIELDS: [&str; 6] = [
    "user_id",
    "status",
    "current_step",
    "cost",
    "created_at",
    "updated_at",
];

impl Meta {
    /// Each field as the one text both sides hash, compare and COPY ([`META_FIELDS`]
    /// order): the text fields as they are, the cost in Rust's shortest round-trip
    /// form, timestamps as RFC 3339 UTC with microseconds.
    pub fn texts(&self) -> [Option<std::borrow::Cow<'_, str>>; 6] {
        use std::borrow::Cow::{Borrowed, Owned};
        [
            self.user_id.as_deref().map(Borrowed),
            self.status.as_deref().map(Borrowed),
            self.current_step.as_deref().map(Borrowed),
            self.cost.map(|c| Owned(format!("{c:?}"))),
            self.created_at.as_ref().map(|t| Owned(fields::fmt_ts(t))),
            self.updated_at.as_ref().map(|t| Owned(fields::fmt_ts(t))),
        ]
    }
}

/// Where a piece of a session came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    SqliteRow,
    SqliteColumn,
    StateFile,
    JsonStore,
}

/// A session's state: the original text (loaded as is) and its canonical jsonb form.
#[derive(Debug, Clone)]
pub struct State {
    pub raw: Vec<u8>,
    pub canonical: String,
    pub origin: Origin,
    pub path: Option<PathBuf>,
}

impl State {
    /// `v1:` + SHA-256 of the canonical text: equal to `sha256(convert_to(state::text, 'UTF8'))`
    /// of the stored jsonb, with the prefix.
    pub fn hash(&self) -> String {
        canon::hash_canonical(&self.canonical)
    }
}

/// One resolved, valid session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub meta: Meta,
    pub meta_origin: Origin,
    pub state: Option<State>,
    /// What the session's sources looked like on disk when read (see [`Reader::scan_with`]);
    /// `None` when a file changed too recently to be trusted by its stamp.
    pub stamp: Option<String>,
}

impl Session {
    /// Whether the id can be written back as one path component.
    pub fn path_safe(&self) -> bool {
        fields::path_safe(&self.id)
    }

    /// The versioned content hash of the whole session (metadata and canonical state).
    pub fn content_hash(&self) -> String {
        content_hash(
            &self.id,
            &self.meta,
            self.state.as_ref().map(|s| s.canonical.as_str()),
        )
    }
}

/// The content hash over metadata and canonical state. The target side computes the
/// same from what PostgreSQL holds, so source and target compare without shipping state.
pub fn content_hash(id: &str, m: &Meta, canonical_state: Option<&str>) -> String {
    const NULL: &[u8] = b"\x01";
    let mut h = Sha256::new();
    h.update(b"v1\0");
    let mut field = |v: Option<&[u8]>| {
        h.update(v.unwrap_or(NULL));
        h.update(b"\0");
    };
    field(Some(id.as_bytes()));
    for v in &m.texts() {
        field(v.as_deref().map(str::as_bytes));
    }
    field(canonical_state.map(str::as_bytes));
    format!("v1:{}", hex::encode(h.finalize()))
}

/// A record that cannot be migrated as it is: its code, what is wrong, and its raw bytes.
#[derive(Debug, Clone, Serialize)]
pub struct Invalid {
    /// The id, when there is one (it may itself be what is invalid).
    pub id: Option<String>,
    pub code: &'static str,
    pub message: String,
    /// The file holding the bad bytes, if any.
    pub path: Option<PathBuf>,
    /// What kind of record: `state_file`, `sqlite_row`, `json_record`.
    pub record: &'static str,
    #[serde(skip)]
    pub raw: Vec<u8>,
}

impl Invalid {
    pub fn finding(&self) -> Finding {
        let mut f = Finding::new(self.code, self.message.clone());
        f.session = self.id.clone();
        match &self.path {
            Some(p) => f.path(p),
            None => f,
        }
    }

    /// The key the ledger records this record under once it is quarantined, and that
    /// `verify` looks it up by: its id, or for a record without a usable id (empty,
    /// NULL, holding a control character) [`NO_ID_KEY`] + its kind + the SHA-256 of its
    /// raw bytes, which no id can be (ids hold no control character). The same record
    /// read again gets the same key; a changed one is a new record, not quarantined yet.
    pub fn ledger_key(&self) -> String {
        match &self.id {
            Some(id) => id.clone(),
            None => format!(
                "{NO_ID_KEY}{}:{}",
                self.record,
                hex::encode(Sha256::digest(&self.raw))
            ),
        }
    }
}

/// How the ledger keys of records without a usable id begin (see
/// [`Invalid::ledger_key`]): a control character, never in an id.
pub const NO_ID_KEY: &str = "\u{1}no-id:";

#[derive(Debug, Clone)]
pub enum Item {
    Session(Session),
    Invalid(Invalid),
    /// A session the caller already holds exactly as it is on disk (its stamp is known):
    /// not read. Only [`Reader::scan_with`] with a `known` function yields these.
    Known {
        id: String,
        stamp: String,
    },
}

/// Given `(id, stamp)` pairs, the ids whose stamp the caller recorded when it last read
/// them: their sources have not changed since, so the scan need not read them again.
pub type KnownFn<'a> = dyn Fn(&[(&str, &str)]) -> Result<HashSet<String>> + Sync + 'a;

/// Files modified this recently get no stamp: a write within the filesystem's timestamp
/// granularity could leave size and times unchanged (the "racy git" problem).
const STAMP_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// What a scan saw besides the items: warnings and counts.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub sessions: u64,
    pub invalid: u64,
    /// Raw state bytes of the valid sessions.
    pub state_bytes: u64,
    pub sqlite_rows: u64,
    pub json_records: u64,
    pub state_files: u64,
    pub orphans: u64,
    pub state_conflicts: u64,
    pub duplicate_ids: u64,
    #[serde(skip)]
    pub warnings: Vec<Finding>,
    /// The store's quick fingerprint, when the scan took it ([`Reader::with_fingerprint`]).
    #[serde(skip)]
    pub fingerprint: Option<String>,
}

/// The legacy store's locations.
#[derive(Debug, Clone)]
pub struct Source {
    pub sqlite: Option<crate::config::SqliteSource>,
    pub json_path: Option<PathBuf>,
    /// `[json.fields]`: how the JSON store's records are read.
    pub json_fields: json_store::JsonFields,
}

impl Source {
    pub fn from_config(cfg: &Config) -> Source {
        Source {
            sqlite: cfg.sqlite.clone(),
            json_path: cfg.json_path.clone(),
            json_fields: JsonFields::new(&cfg.app.json_fields),
        }
    }

    /// Open every part of the store read-only and load the JSON store's index.
    pub fn open(&self) -> Result<Reader> {
        if self.sqlite.is_none() && self.json_path.is_none() {
            return Err(Error::NoLegacyStore);
        }
        self.check_paths()?;
        let db = match &self.sqlite {
            Some(s) => {
                let conn = sqlite::open_for_scan(&s.path)?;
                sqlite::check_table(&conn, &s.path)?;
                if !s.sessions_dir.is_dir() {
                    return Err(Error::Unreadable {
                        path: s.sessions_dir.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "sqlite.sessions_dir is not a folder (is a volume missing?)",
                        ),
                    });
                }
                Some(conn)
            }
            None => None,
        };
        let (json, json_warnings) = match &self.json_path {
            Some(p) => {
                let (records, warnings) = json_store::load_mapped(p, &self.json_fields)?;
                (records, warnings)
            }
            None => (Vec::new(), Vec::new()),
        };
        Ok(Reader {
            source: self.clone(),
            fingerprint: None,
            only: None,
            db,
            json,
            json_warnings,
        })
    }

    /// Refuse with `not_regular_file`, before anything is read, a configured path that
    /// is a FIFO, a device, a socket or a file of a kernel pseudo-filesystem (the
    /// sessions folder must be a folder). Nothing here opens what could block.
    pub fn check_paths(&self) -> Result<()> {
        let check = |p: &Path, folder: bool| {
            crate::fsutil::check_kind(p, folder)
                .map(|_| ())
                .map_err(|e| Error::read(p, e))
        };
        if let Some(s) = &self.sqlite {
            check(&s.path, false)?;
            check(&s.sessions_dir, true)?;
        }
        if let Some(j) = &self.json_path {
            check(j, false)?;
        }
        Ok(())
    }

    /// A cheap fingerprint of the store as it is on disk: sizes and modification times
    /// of the database (and its WAL), the JSON store, and every state file. Any write
    /// to the store changes it. See [`fingerprint`].
    pub fn quick_fingerprint(&self) -> Result<String> {
        Ok(Fingerprint::start(self)?.finish())
    }
}

/// An open legacy store.
pub struct Reader {
    source: Source,
    /// Taken from the scan's stats ([`Reader::with_fingerprint`]).
    fingerprint: Option<Fingerprint>,
    /// The sessions a scan reads, when not all ([`Reader::only`]).
    only: Option<Arc<HashSet<String>>>,
    db: Option<rusqlite::Connection>,
    json: Vec<JsonRecord>,
    json_warnings: Vec<Finding>,
}

/// A SQLite row, as read.
struct Row {
    id: Raw,
    user_id: Raw,
    status: Raw,
    current_step: Raw,
    cost: Raw,
    created_at: Raw,
    updated_at: Raw,
    state: Raw,
}

impl Row {
    /// The row's fields in [`sqlite::COLUMNS`] order.
    fn fields(&self) -> [&Raw; 8] {
        [
            &self.id,
            &self.user_id,
            &self.status,
            &self.current_step,
            &self.cost,
            &self.created_at,
            &self.updated_at,
            &self.state,
        ]
    }
}

impl Reader {
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Take the store's quick fingerprint during the scan, from the stats it makes
    /// anyway: [`Summary::fingerprint`]. The folder is listed now.
    pub fn with_fingerprint(mut self) -> Result<Reader> {
        self.fingerprint = Some(Fingerprint::start(&self.source)?);
        Ok(self)
    }

    /// Scan only the sessions of `ids` (and the records with no usable id, which are
    /// always invalid): the others are passed over unread, not stat-ed, not yielded at
    /// all. A catch-up's load reads again this way only what its planning pass read,
    /// when that did not fit in memory. Rows are still read in id order, and every id is
    /// taken from its row as a whole scan takes it, so the same sessions are found.
    pub fn only(mut self, ids: Arc<HashSet<String>>) -> Reader {
        self.only = Some(ids);
        self
    }

    /// How many items a scan yields, for progress: the rows of the SQLite table (0
    /// without SQLite) plus the JSON store's records of ids that SQLite does not hold
    /// (each id once) and its records without a usable id.
    pub fn estimate(&self) -> Result<u64> {
        let rows = match (&self.db, &self.source.sqlite) {
            (Some(db), Some(s)) => sqlite::count(db, &s.path)?,
            _ => 0,
        };
        let mut ids = std::collections::HashSet::new();
        let mut json_only = 0u64;
        for r in &self.json {
            match &r.id {
                Ok(id) if !ids.insert(id.as_str()) => {}
                Ok(id) => {
                    let in_sqlite = match (&self.db, &self.source.sqlite) {
                        (Some(db), Some(s)) => sqlite::has_id(db, &s.path, id)?,
                        _ => false,
                    };
                    json_only += u64::from(!in_sqlite);
                }
                Err(_) => json_only += 1,
            }
        }
        Ok(rows + json_only)
    }

    /// Stream every item in batches of about `batch` to `f`, in order: SQLite rows by id,
    /// then sessions only in the JSON store. Returns the summary with its warnings.
    pub fn scan(self, batch: usize, f: impl FnMut(Vec<Item>) -> Result<()>) -> Result<Summary> {
        self.scan_with(batch, None, f)
    }

    /// [`Reader::scan`], skipping the SQLite sessions that `known` says the caller holds
    /// as they are: each row gets a stamp (its raw fields, its state file's inode, size
    /// and times, its JSON store record), and rows with a known stamp come out as
    /// [`Item::Known`] without their state file being read.
    pub fn scan_with(
        self,
        batch: usize,
        known: Option<&KnownFn<'_>>,
        mut f: impl FnMut(Vec<Item>) -> Result<()>,
    ) -> Result<Summary> {
        let Reader {
            source,
            fingerprint,
            only,
            db,
            json,
            json_warnings,
        } = self;
        let mut scan = Scan::new(&source, json, json_warnings, batch.max(1), known);
        scan.only = only;
        // Stage 1: SQLite rows and their state files.
        let fp = match (db, &source.sqlite) {
            (Some(db), Some(s)) => scan.sqlite_rows(db, &s.path, fingerprint, &mut f)?,
            _ => fingerprint,
        };
        // Stage 3 (below) looks for state files with no metadata anywhere. A catch-up scan
        // (`known`) and a scan restricted to some ids (`only`) skip it: orphans are named
        // by full scans (preflight, check, a first load, verify), which take the names the
        // fingerprint found unfed.
        let orphans = source
            .sqlite
            .as_ref()
            .filter(|_| known.is_none() && scan.only.is_none());
        let (digest, unfed) = match fp {
            Some(fp) if orphans.is_some() => {
                let (digest, unfed) = fp.finish_with_rest();
                (Some(digest), unfed)
            }
            fp => (fp.map(Fingerprint::finish), None),
        };
        scan.summary.fingerprint = digest;
        // Stage 2: sessions only in the JSON store, and JSON records without a usable id.
        scan.json_only(&mut f)?;
        if let Some(s) = orphans {
            scan.orphans(s, source.json_path.is_some(), unfed)?;
        }
        Ok(scan.summary)
    }
}

/// The threads that read and canonicalise state files: [`READERS_PER_CORE`] a core, so
/// that while some wait on the disk (a state file the page cache no longer holds) the
/// others read or compute. With one a core, as rayon's own pool has, a verify of 200,000
/// sessions whose files had left the page cache waited on one read a core at a time.
/// `f` runs on them, or on rayon's own pool should they not start.
fn on_readers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads((cores * READERS_PER_CORE).min(MAX_READERS))
            .thread_name(|i| format!("sessiondb-read-{i}"))
            .build()
            .ok()
    });
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// Reading threads a core ([`on_readers`]).
const READERS_PER_CORE: usize = 2;

/// The most reading threads on any machine: each holds two descriptors while it reads
/// (the session's folder and its state file), far below a 1,024 descriptor limit.
const MAX_READERS: usize = 64;

/// A batch handed from one stage of the scan to the next, or the error that ended it.
type Chunk<T> = Result<Vec<T>>;

/// A scan under way: what it has seen, and what resolving needs.
struct Scan<'k> {
    batch: usize,
    known: Option<&'k KnownFn<'k>>,
    /// [`Reader::only`].
    only: Option<Arc<HashSet<String>>>,
    summary: Summary,
    json: Arc<Vec<JsonRecord>>,
    /// The JSON store by id; the last record of a duplicated id wins (warned).
    json_by_id: Arc<HashMap<String, usize>>,
    /// Ids of the JSON store that SQLite rows had too.
    seen_in_sqlite: HashSet<String>,
    ctx: Arc<Resolve>,
}

impl<'k> Scan<'k> {
    fn new(
        source: &Source,
        json: Vec<JsonRecord>,
        json_warnings: Vec<Finding>,
        batch: usize,
        known: Option<&'k KnownFn<'k>>,
    ) -> Scan<'k> {
        let mut summary = Summary {
            warnings: json_warnings,
            json_records: json.len() as u64,
            ..Summary::default()
        };
        let mut json_by_id: HashMap<String, usize> = HashMap::new();
        for (i, r) in json.iter().enumerate() {
            if let Ok(id) = &r.id {
                if json_by_id.insert(id.clone(), i).is_some() {
                    summary.duplicate_ids += 1;
                    summary.warnings.push(
                        Finding::new("duplicate_id", format!("session {id} appears more than once in the JSON store; the last record wins"))
                            .session(id),
                    );
                }
            }
        }
        let json = Arc::new(json);
        let json_by_id = Arc::new(json_by_id);
        let sessions_dir = source.sqlite.as_ref().map(|s| s.sessions_dir.clone());
        let ctx = Arc::new(Resolve {
            sessions_fd: sessions_dir
                .as_ref()
                .and_then(|d| crate::fsutil::open_dir(d).ok()),
            db_path: source.sqlite.as_ref().map(|s| s.path.clone()),
            sessions_root: sessions_dir
                .as_ref()
                .and_then(|d| std::fs::canonicalize(d).ok()),
            sessions_dir,
            json: json.clone(),
            json_by_id: json_by_id.clone(),
        });
        Scan {
            batch,
            known,
            only: None,
            summary,
            json,
            json_by_id,
            seen_in_sqlite: HashSet::new(),
            ctx,
        }
    }

    /// Stage 1, four threads one batch apart: one reads SQLite rows; one stamps them
    /// (the stats in parallel, and the fingerprint's); one asks the ledger which stamps
    /// it knows, so that its answer for one batch overlaps the stats of the next; one
    /// resolves what is not known (state files read and canonicalised in parallel).
    /// Returns the fingerprint the stamper fed.
    fn sqlite_rows(
        &mut self,
        db: rusqlite::Connection,
        path: &Path,
        fingerprint: Option<Fingerprint>,
        f: &mut impl FnMut(Vec<Item>) -> Result<()>,
    ) -> Result<Option<Fingerprint>> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk<(Item, Vec<Finding>)>>(2);
        let (rows_tx, rows_rx) = std::sync::mpsc::sync_channel::<Chunk<Row>>(2);
        let (stamped_tx, stamped_rx) =
            std::sync::mpsc::sync_channel::<Chunk<(Row, Option<Stamped>)>>(2);
        let (known_tx, known_rx) =
            std::sync::mpsc::sync_channel::<Chunk<(Row, Option<Stamped>)>>(2);
        let (batch, known) = (self.batch, self.known);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut n = 0;
                let res = sqlite::for_each_chunk(&db, path, batch, |rows| {
                    crate::fault::panic_point("read", n);
                    n += 1;
                    rows_tx.send(Ok(rows)).map_err(|_| cancelled())
                });
                if let Err(e) = res {
                    let _ = rows_tx.send(Err(e));
                }
            });
            let ctx = self.ctx.clone();
            let mut fp = fingerprint;
            let only = self.only.clone();
            let stamper = scope.spawn(move || {
                relay("stamp", rows_rx, stamped_tx, |r| {
                    ctx.stamp_chunk(r, only.as_deref(), fp.as_mut())
                });
                fp
            });
            let asker =
                scope.spawn(move || relay("ask", stamped_rx, known_tx, |s| mark_known(known, s)));
            let ctx = self.ctx.clone();
            let resolver =
                scope.spawn(move || relay("resolve", known_rx, tx, |s| ctx.resolve_chunk(s)));
            let consumed = self.consume(rx, f);
            // A stage that panicked dropped its sender: to the consumer the input simply
            // ended. Its panic fails the scan, which never ends short as if the store held
            // no more sessions.
            let mut panicked = None;
            for (stage, p) in [("read", reader), ("ask", asker), ("resolve", resolver)] {
                if let Err(panic) = p.join() {
                    panicked.get_or_insert_with(|| stage_panicked(stage, panic.as_ref()));
                }
            }
            let fp = stamper
                .join()
                .map_err(|panic| stage_panicked("stamp", panic.as_ref()));
            match (panicked, fp) {
                (Some(e), _) | (None, Err(e)) => Err(e),
                (None, Ok(fp)) => consumed.map(|()| fp),
            }
        })
    }

    /// The resolved rows, a batch at a time, to `f`; stops at the first error (the
    /// receiver dropped, the stages stop).
    fn consume(
        &mut self,
        rx: std::sync::mpsc::Receiver<Chunk<(Item, Vec<Finding>)>>,
        f: &mut impl FnMut(Vec<Item>) -> Result<()>,
    ) -> Result<()> {
        for chunk in rx {
            let mut items = Vec::new();
            for (item, warnings) in chunk? {
                self.summary.sqlite_rows += 1;
                let id = match &item {
                    Item::Session(s) => Some(&s.id),
                    Item::Invalid(Invalid { id: Some(id), .. }) => Some(id),
                    Item::Known { id, .. } => Some(id),
                    _ => None,
                };
                if let Some(id) = id.filter(|id| self.json_by_id.contains_key(*id)) {
                    self.seen_in_sqlite.insert(id.clone());
                }
                tally(&mut self.summary, &item, warnings);
                items.push(item);
            }
            f(items)?;
        }
        Ok(())
    }

    /// Stage 2: sessions only in the JSON store (stamped like SQLite rows, so that a
    /// catch-up skips what it holds as it is), and JSON records without a usable id.
    fn json_only(&mut self, f: &mut impl FnMut(Vec<Item>) -> Result<()>) -> Result<()> {
        let only = self.only.as_deref();
        let pending: Vec<usize> = (0..self.json.len())
            .filter(|&i| match &self.json[i].id {
                Ok(id) => {
                    self.json_by_id.get(id) == Some(&i)
                        && !self.seen_in_sqlite.contains(id)
                        && only.is_none_or(|o| o.contains(id))
                }
                Err(_) => true,
            })
            .collect();
        let (json, ctx) = (&self.json, &self.ctx);
        for idx in pending.chunks(self.batch) {
            let stamps: Vec<Option<(String, String)>> = idx
                .par_iter()
                .map(|&i| match &json[i].id {
                    Ok(id) => {
                        let file = ctx.state_stat(id);
                        let stamp = ctx.stamp_of(id, None, file.as_ref())?;
                        Ok(stamp.map(|s| (id.clone(), s)))
                    }
                    Err(_) => Ok(None),
                })
                .collect::<Result<_>>()?;
            let known_ids = ask_known(
                self.known,
                stamps
                    .iter()
                    .flatten()
                    .map(|(i, s)| (i.as_str(), s.as_str())),
            )?;
            let resolved = idx
                .par_iter()
                .zip(stamps)
                .map(|(&i, st)| match st {
                    Some((id, stamp)) if known_ids.contains(&id) => {
                        Ok((Item::Known { id, stamp }, Vec::new()))
                    }
                    st => {
                        let (mut item, w) = ctx.resolve_json_only(&json[i])?;
                        if let Item::Session(s) = &mut item {
                            s.stamp = st.map(|(_, s)| s);
                        }
                        Ok((item, w))
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let mut items = Vec::with_capacity(resolved.len());
            for (item, warnings) in resolved {
                tally(&mut self.summary, &item, warnings);
                items.push(item);
            }
            f(items)?;
        }
        Ok(())
    }

    /// Stage 3: the state files of the sessions folder with no metadata in SQLite or
    /// the JSON store, each an `orphan_state_file` warning (not migrated, not deleted).
    /// State files with no metadata: in SQLite or the JSON store when `json_read`, else
    /// in SQLite alone (`check` of the sqlite backend reads no JSON store, and says so).
    ///
    /// `unfed`: what the scan's fingerprint found of the folder (every name stat-ed once,
    /// by the scan or by the fingerprint): only the names with a state file that no row
    /// the scan read fed are looked at. Without it the folder is listed and every
    /// `state.json` looked at here.
    fn orphans(
        &mut self,
        s: &crate::config::SqliteSource,
        json_read: bool,
        unfed: Option<fingerprint::Unfed>,
    ) -> Result<()> {
        let dir = &s.sessions_dir;
        let unreadable = |e| Error::Unreadable {
            path: dir.clone(),
            source: e,
        };
        let db = sqlite::open(&s.path)?;
        if let Some(u) = unfed {
            for name in &u.names {
                self.orphan(&db, s, json_read, name)?;
            }
            self.summary.state_files = u.with_state;
            return Ok(());
        }
        let mut names = 0u64;
        let ctx = self.ctx.clone();
        // Relative to the open folder when it is open: one component to walk, not the path.
        let has_state = |name: &std::ffi::OsStr| match &ctx.sessions_fd {
            Some(fd) => crate::fsutil::lstat_at(fd, &Path::new(name).join("state.json")).is_ok(),
            None => std::fs::symlink_metadata(dir.join(name).join("state.json")).is_ok(),
        };
        for entry in std::fs::read_dir(dir).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            if !has_state(&entry.file_name()) {
                continue;
            }
            names += 1;
            self.orphan(&db, s, json_read, &entry.file_name())?;
        }
        self.summary.state_files = names;
        Ok(())
    }

    /// The folder `name`, which has a state file: an `orphan_state_file` warning unless
    /// SQLite or the JSON store holds its metadata.
    fn orphan(
        &mut self,
        db: &rusqlite::Connection,
        s: &crate::config::SqliteSource,
        json_read: bool,
        name: &std::ffi::OsStr,
    ) -> Result<()> {
        let state = s.sessions_dir.join(name).join("state.json");
        let Some(name) = name.to_str() else {
            self.summary.orphans += 1;
            self.summary.warnings.push(
                Finding::new(
                    "orphan_state_file",
                    format!(
                        "{} has a folder name that is not UTF-8: not migrated, not deleted",
                        crate::term::path(&state)
                    ),
                )
                .path(&state),
            );
            return Ok(());
        };
        if self.json_by_id.contains_key(name) || sqlite::has_id(db, &s.path, name)? {
            return Ok(());
        }
        self.summary.orphans += 1;
        self.summary.warnings.push(
            Finding::new(
                "orphan_state_file",
                if json_read {
                    format!(
                        "{} has no metadata in SQLite or the JSON store: not migrated, not deleted",
                        crate::term::path(&state)
                    )
                } else {
                    format!(
                        "{} has no row in SQLite (the JSON store, not read by this check, may hold its metadata: `check --backend json` reads it)",
                        crate::term::path(&state)
                    )
                },
            )
            .session(name)
            .path(&state),
        );
        Ok(())
    }
}

/// The ids among `stamps` (id, stamp) that `known` holds as they are; none without it.
fn ask_known<'s>(
    known: Option<&KnownFn<'_>>,
    stamps: impl Iterator<Item = (&'s str, &'s str)>,
) -> Result<HashSet<String>> {
    let Some(k) = known else {
        return Ok(HashSet::new());
    };
    let pairs: Vec<(&str, &str)> = stamps.collect();
    if pairs.is_empty() {
        return Ok(HashSet::new());
    }
    k(&pairs)
}

fn tally(summary: &mut Summary, item: &Item, warnings: Vec<Finding>) {
    for w in warnings {
        if w.code == "state_conflict" {
            summary.state_conflicts += 1;
        }
        if w.code == "duplicate_id" {
            summary.duplicate_ids += 1;
        }
        summary.warnings.push(w);
    }
    match item {
        Item::Session(s) => {
            summary.sessions += 1;
            summary.state_bytes += s.state.as_ref().map_or(0, |st| st.raw.len() as u64);
        }
        Item::Invalid(_) => summary.invalid += 1,
        Item::Known { .. } => summary.sessions += 1,
    }
}

/// A row with a valid id: its stamp (`None`: it must be read), and whether the ledger
/// knows the stamp.
struct Stamped {
    id: String,
    stamp: Option<String>,
    known: bool,
}

/// Mark the stamps of a chunk that the ledger knows (`known`; none without it).
fn mark_known(
    known: Option<&KnownFn<'_>>,
    mut chunk: Vec<(Row, Option<Stamped>)>,
) -> Result<Vec<(Row, Option<Stamped>)>> {
    let known_ids = ask_known(
        known,
        chunk
            .iter()
            .filter_map(|(_, st)| st.as_ref())
            .filter_map(|s| Some((s.id.as_str(), s.stamp.as_deref()?))),
    )?;
    for st in chunk.iter_mut().filter_map(|(_, st)| st.as_mut()) {
        st.known = st.stamp.is_some() && known_ids.contains(&st.id);
    }
    Ok(chunk)
}

/// One stage of a pipeline: `f` applied to each chunk from `rx`, sent on to `tx`; stops
/// after passing on an error, or when the next stage has gone.
fn relay<T, U>(
    stage: &str,
    rx: std::sync::mpsc::Receiver<Result<T>>,
    tx: std::sync::mpsc::SyncSender<Result<U>>,
    mut f: impl FnMut(T) -> Result<U>,
) {
    for (n, input) in rx.into_iter().enumerate() {
        crate::fault::panic_point(stage, n as u64);
        let out = input.and_then(&mut f);
        let failed = out.is_err();
        if tx.send(out).is_err() || failed {
            break;
        }
    }
}

/// The error of a scan stage that panicked.
fn stage_panicked(stage: &str, panic: &(dyn std::any::Any + Send)) -> Error {
    Error::Internal {
        message: format!(
            "the scan's {stage} stage panicked ({}); the scan stopped, and nothing it had not read was taken for the end of the store",
            crate::error::panic_message(panic)
        ),
    }
}

fn cancelled() -> Error {
    Error::Cancelled {
        message: "scan cancelled".into(),
    }
}

/// What resolving a row needs, shared by the parallel workers.
struct Resolve {
    sessions_dir: Option<PathBuf>,
    /// The sessions folder, open: state files are stat-ed relative to it.
    sessions_fd: Option<std::fs::File>,
    sessions_root: Option<PathBuf>,
    /// The SQLite database: where an invalid row is.
    db_path: Option<PathBuf>,
    json: Arc<Vec<JsonRecord>>,
    json_by_id: Arc<HashMap<String, usize>>,
}

fn invalid_field(
    id: Option<String>,
    e: FieldError,
    record: &'static str,
    path: Option<PathBuf>,
    raw: Vec<u8>,
) -> Item {
    let msg = match &id {
        Some(i) => format!("session {i}: {}", e.message),
        None => e.message,
    };
    Item::Invalid(Invalid {
        id,
        code: e.code,
        message: msg,
        path,
        record,
        raw,
    })
}

impl Resolve {
    /// Stamp a chunk of rows, the stats in parallel; the stats go on to the fingerprint.
    /// A row whose id is not in `only` (when given) is dropped here, unstat-ed.
    fn stamp_chunk(
        &self,
        rows: Vec<Row>,
        only: Option<&HashSet<String>>,
        fingerprint: Option<&mut Fingerprint>,
    ) -> Result<Vec<(Row, Option<Stamped>)>> {
        type Probed = (Row, Option<Stamped>, Option<std::io::Result<FileStamp>>);
        let probed: Vec<Probed> = rows
            .into_par_iter()
            .filter_map(|r| {
                let Ok(id) = fields::id(&r.id) else {
                    return Some(Ok((r, None, None)));
                };
                if only.is_some_and(|o| !o.contains(&id)) {
                    return None;
                }
                let file = self.state_stat(&id);
                let stamp = match self.stamp_of(&id, Some(&r), file.as_ref()) {
                    Ok(stamp) => stamp,
                    Err(e) => return Some(Err(e)),
                };
                let st = Stamped {
                    id,
                    stamp,
                    known: false,
                };
                Some(Ok((r, Some(st), file)))
            })
            .collect::<Result<_>>()?;
        if let Some(fp) = fingerprint {
            for (_, st, file) in &probed {
                let (Some(st), Some(file)) = (st, file) else {
                    continue;
                };
                match file {
                    Ok(m) => fp.feed(&st.id, Some(m)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => fp.feed(&st.id, None),
                    Err(_) => {}
                }
            }
        }
        Ok(probed.into_iter().map(|(r, st, _)| (r, st)).collect())
    }

    /// Resolve a stamped chunk: known rows come out as [`Item::Known`] unread, the others
    /// are resolved in parallel, on [`on_readers`].
    fn resolve_chunk(
        &self,
        stamped: Vec<(Row, Option<Stamped>)>,
    ) -> Result<Vec<(Item, Vec<Finding>)>> {
        on_readers(|| {
            stamped
                .into_par_iter()
                .map(|(r, st)| match st {
                    Some(Stamped {
                        known: true,
                        id,
                        stamp: Some(stamp),
                    }) => Ok((Item::Known { id, stamp }, Vec::new())),
                    st => {
                        let (mut item, w) = self.resolve_row(r)?;
                        if let Item::Session(s) = &mut item {
                            s.stamp = st.and_then(|s| s.stamp);
                        }
                        Ok((item, w))
                    }
                })
                .collect()
        })
    }

    /// `lstat` of session `id`'s state file, relative to the open sessions folder.
    /// `None` when the store has no sessions folder or `id` cannot name a folder.
    fn state_stat(&self, id: &str) -> Option<std::io::Result<FileStamp>> {
        if self.sessions_dir.is_none() || !fields::path_safe(id) {
            return None;
        }
        Some(match &self.sessions_fd {
            Some(dir) => crate::fsutil::lstat_at(dir, &Path::new(id).join("state.json")),
            None => Err(std::io::Error::other(
                "the sessions folder could not be opened",
            )),
        })
    }

    /// The stamp of session `id`: `s3:` + 128 bits of SHA-256 over its SQLite row's raw
    /// fields (`None`: a session only in the JSON store), its JSON store record, and the
    /// inode, size, times and mode of its state file (`file`, from [`Self::state_stat`]).
    /// `None` for a symlink, a file that could not be stat-ed, or one changed within
    /// [`STAMP_SETTLE`]. Fails only when the JSON store record cannot be read again.
    fn stamp_of(
        &self,
        id: &str,
        row: Option<&Row>,
        file: Option<&std::io::Result<FileStamp>>,
    ) -> Result<Option<String>> {
        let mut h = Sha256::new();
        h.update(b"s3\0");
        match row {
            Some(r) => hash_row(&mut h, r),
            None => h.update(b"\0json-only\0"),
        }
        if let Some(&i) = self.json_by_id.get(id) {
            h.update(b"\0json\0");
            h.update(self.json[i].raw()?);
        }
        if let Some(file) = file {
            let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
                return Ok(None);
            };
            let recent = |(secs, nanos): (i64, i64)| {
                std::time::Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
                    + STAMP_SETTLE
                    > now
            };
            // The state file alone: replacing, creating or deleting it changes its inode,
            // times or presence, and renaming a file to it changes its ctime.
            match file {
                Ok(m) if m.is_symlink => return Ok(None),
                Ok(m) => {
                    if recent(m.mtime) || recent(m.ctime) {
                        return Ok(None);
                    }
                    for v in [
                        m.ino as i64,
                        m.size as i64,
                        m.mtime.0,
                        m.mtime.1,
                        m.ctime.0,
                        m.ctime.1,
                        m.mode as i64,
                    ] {
                        h.update(v.to_le_bytes());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => h.update(b"\0none\0"),
                Err(_) => return Ok(None),
            }
        }
        let d = h.finalize();
        Ok(Some(format!("s3:{}", hex::encode(&d[..16]))))
    }

    /// Resolve one SQLite row. Fails only when its JSON store record cannot be read again.
    fn resolve_row(&self, r: Row) -> Result<(Item, Vec<Finding>)> {
        let raw_row = || row_bytes(&r);
        let id = match fields::id(&r.id) {
            Ok(id) => id,
            Err(e) => {
                // No id to name the row by: name the database and the table.
                let e = FieldError {
                    message: format!(
                        "SQLite database {}, table sessions: a row has an invalid id: {} (other fields: {})",
                        self.db_path.as_deref().unwrap_or(Path::new("?")).display(),
                        e.message,
                        describe_row(&r)
                    ),
                    ..e
                };
                return Ok((
                    invalid_field(None, e, "sqlite_row", self.db_path.clone(), raw_row()),
                    vec![],
                ));
            }
        };
        let meta = match parse_meta(
            &r.user_id,
            &r.status,
            &r.current_step,
            &r.cost,
            &r.created_at,
            &r.updated_at,
        ) {
            Ok(m) => m,
            Err(e) => {
                return Ok((
                    invalid_field(Some(id), e, "sqlite_row", self.db_path.clone(), raw_row()),
                    vec![],
                ));
            }
        };
        let mut warnings = Vec::new();
        let json_rec = self.json_by_id.get(&id).map(|&i| &self.json[i]);
        if let Some(rec) = json_rec {
            if let Ok(jm) = &rec.meta {
                if jm != &meta {
                    warnings.push(
                        Finding::new("duplicate_id", format!("session {id} is in SQLite and in the JSON store with different metadata; SQLite's is used"))
                            .session(&id),
                    );
                }
            }
        }
        let column = match &r.state {
            Raw::Null => None,
            other => Some(other.bytes()),
        };
        let json_state = match json_rec {
            Some(rec) => rec.state()?,
            None => None,
        };
        Ok(
            match self.resolve_state(
                &id,
                column.map(|b| (b, Origin::SqliteColumn)),
                json_state,
                &mut warnings,
            ) {
                Ok(state) => (
                    Item::Session(Session {
                        id,
                        meta,
                        meta_origin: Origin::SqliteRow,
                        state,
                        stamp: None,
                    }),
                    warnings,
                ),
                Err(inv) => (Item::Invalid(*inv), warnings),
            },
        )
    }

    /// Resolve a session only in the JSON store (or a record without a usable id). Fails
    /// only when the record cannot be read again.
    fn resolve_json_only(&self, rec: &JsonRecord) -> Result<(Item, Vec<Finding>)> {
        let bad = |id: Option<String>, e: &FieldError| -> Result<(Item, Vec<Finding>)> {
            Ok((
                invalid_field(
                    id,
                    e.clone(),
                    "json_record",
                    Some(rec.path().to_path_buf()),
                    rec.raw()?,
                ),
                vec![],
            ))
        };
        let id = match &rec.id {
            Ok(id) => id.clone(),
            Err(e) => return bad(None, e),
        };
        let meta = match &rec.meta {
            Ok(m) => m.clone(),
            Err(e) => return bad(Some(id), e),
        };
        let mut warnings = Vec::new();
        Ok(
            match self.resolve_state(&id, None, rec.state()?, &mut warnings) {
                Ok(state) => (
                    Item::Session(Session {
                        id,
                        meta,
                        meta_origin: Origin::JsonStore,
                        state,
                        stamp: None,
                    }),
                    warnings,
                ),
                Err(inv) => (Item::Invalid(*inv), warnings),
            },
        )
    }

    /// Pick the state by precedence (file, column, JSON record), validating what is chosen
    /// and warning where sources disagree.
    fn resolve_state(
        &self,
        id: &str,
        column: Option<(Vec<u8>, Origin)>,
        json: Option<Vec<u8>>,
        warnings: &mut Vec<Finding>,
    ) -> std::result::Result<Option<State>, Box<Invalid>> {
        let mut candidates: Vec<(Vec<u8>, Origin, Option<PathBuf>)> = Vec::new();
        if let (Some(dir), true) = (&self.sessions_dir, fields::path_safe(id)) {
            let read = match &self.sessions_fd {
                Some(fd) => files::read_state_at(fd, dir, self.sessions_root.as_deref(), id),
                None => files::read_state(dir, self.sessions_root.as_deref(), id),
            };
            match read {
                Ok(Some((bytes, path))) => candidates.push((bytes, Origin::StateFile, Some(path))),
                Ok(None) => {}
                Err(inv) => return Err(inv),
            }
        }
        if let Some((b, o)) = column {
            candidates.push((b, o, None));
        }
        if let Some(b) = json {
            candidates.push((b, Origin::JsonStore, None));
        }
        let mut chosen: Option<State> = None;
        for (raw, origin, path) in candidates {
            let canonical = canon::canonicalize(&raw);
            match (&chosen, canonical) {
                (None, Ok(c)) => {
                    chosen = Some(State {
                        raw,
                        canonical: c,
                        origin,
                        path,
                    })
                }
                (None, Err(e)) => {
                    let record = match origin {
                        Origin::StateFile => "state_file",
                        Origin::SqliteColumn | Origin::SqliteRow => "sqlite_row",
                        Origin::JsonStore => "json_record",
                    };
                    let where_ = match &path {
                        Some(p) => p.display().to_string(),
                        None => format!("the {} state", origin_name(&origin)),
                    };
                    return Err(Box::new(Invalid {
                        id: Some(id.to_owned()),
                        code: e.code(),
                        message: format!("session {id}: {where_}: {e}"),
                        path,
                        record,
                        raw,
                    }));
                }
                (Some(win), other) => {
                    let differs = match &other {
                        Ok(c) => c != &win.canonical,
                        Err(_) => true,
                    };
                    if differs {
                        warnings.push(
                            Finding::new(
                                "state_conflict",
                                format!(
                                    "session {id}: the {} state differs from the {} state; the {} wins",
                                    origin_name(&origin),
                                    origin_name(&win.origin),
                                    origin_name(&win.origin)
                                ),
                            )
                            .session(id),
                        );
                    }
                }
            }
        }
        Ok(chosen)
    }
}

fn origin_name(o: &Origin) -> &'static str {
    match o {
        Origin::StateFile => "state.json",
        Origin::SqliteColumn | Origin::SqliteRow => "SQLite column",
        Origin::JsonStore => "JSON store",
    }
}

pub(crate) fn parse_meta(
    user_id: &Raw,
    status: &Raw,
    step: &Raw,
    cost: &Raw,
    created: &Raw,
    updated: &Raw,
) -> std::result::Result<Meta, FieldError> {
    Ok(Meta {
        user_id: fields::text("user_id", user_id)?,
        status: fields::text("status", status)?,
        current_step: fields::text("current_step", step)?,
        cost: fields::cost(cost)?,
        created_at: fields::timestamp("created_at", created)?,
        updated_at: fields::timestamp("updated_at", updated)?,
    })
}

/// The fields of a row without a usable id, short, so that an operator can find it.
fn describe_row(r: &Row) -> String {
    format!(
        "user_id {}, status {}, created_at {}",
        r.user_id.describe(),
        r.status.describe(),
        r.created_at.describe()
    )
}

/// Feed a SQLite row's raw fields to a stamp: each as a type tag, a length and its bytes,
/// so that no two different rows feed the same bytes.
fn hash_row(h: &mut Sha256, r: &Row) {
    for f in r.fields() {
        let (tag, bytes): (u8, &[u8]) = match f {
            Raw::Null => (0, &[]),
            Raw::Integer(i) => (1, &i.to_le_bytes()[..]),
            Raw::Real(x) => (2, &x.to_le_bytes()[..]),
            Raw::Text(t) => (3, t.as_bytes()),
            Raw::Blob(b) => (4, b),
        };
        h.update([tag]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
}

/// A SQLite row as JSON Lines bytes, for quarantine (binary values as hex).
fn row_bytes(r: &Row) -> Vec<u8> {
    let v = |x: &Raw| match x {
        Raw::Null => serde_json::Value::Null,
        Raw::Integer(i) => serde_json::json!(i),
        Raw::Real(f) => serde_json::json!(f),
        Raw::Text(s) => serde_json::json!(s),
        Raw::Blob(b) => serde_json::json!({ "hex": hex::encode(b) }),
    };
    let fields: serde_json::Map<String, serde_json::Value> = sqlite::COLUMNS
        .iter()
        .zip(r.fields())
        .map(|(name, f)| ((*name).to_owned(), v(f)))
        .collect();
    serde_json::to_vec(&fields).unwrap_or_default()
}

/// Load the deprecated JSON store's index (for `check`, `preflight` and the runtime
/// store): its records and warnings. Records read their bytes from the file on demand.
pub fn load_json_store(p: &Path) -> Result<(Vec<JsonRecord>, Vec<Finding>)> {
    json_store::load(p)
}

/// [`load_json_store`], the records read as the config's `[json.fields]` says.
pub fn load_json_store_of(cfg: &Config, p: &Path) -> Result<(Vec<JsonRecord>, Vec<Finding>)> {
    json_store::load_mapped(p, &json_store::JsonFields::new(&cfg.app.json_fields))
}

impl Source {
    /// Up to `n` valid sessions chosen at random in one scan (reservoir sampling),
    /// each turned into a `T` by `map` as it is read.
    pub fn sample<T>(&self, n: usize, mut map: impl FnMut(Session) -> T) -> Result<Vec<T>> {
        let mut rng = uuid::Uuid::new_v4().as_u128() as u64 | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut reservoir: Vec<T> = Vec::with_capacity(n.min(1 << 16));
        let mut seen = 0u64;
        self.open()?.scan(1000, |items| {
            for it in items {
                if let Item::Session(s) = it {
                    seen += 1;
                    if reservoir.len() < n {
                        reservoir.push(map(s));
                    } else {
                        let j = (next() % seen) as usize;
                        if j < n {
                            reservoir[j] = map(s);
                        }
                    }
                }
            }
            Ok(())
        })?;
        Ok(reservoir)
    }
}
