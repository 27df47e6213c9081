//! A realistic legacy store (SPEC §1) for demos, tests and benchmarks: a config, a
//! SQLite database, per-session state files, the deprecated JSON store, and, with
//! `bad`, one invalid record of each kind (SPEC §6), state conflicts and orphan state
//! files. A store made without `bad` migrates with no warning about its data.
//!
//! Deterministic: the same options give the same bytes (the SQLite file aside, whose
//! rows are the same). Every session draws from its own generator, derived from the
//! seed and its index, so the threads that write state files in parallel cannot change
//! the output. Memory stays flat: sessions are made a chunk at a time, and only rows and
//! JSON store records leave a chunk.
//!
//! Kinds, assigned by a seeded shuffle of each block of 100 consecutive sessions, so the
//! proportions are exact on whole blocks:
//!
//! | slots | kind                                                    | share |
//! |-------|---------------------------------------------------------|-------|
//! | 0–1   | JSON store only, state in the record                    | 2%    |
//! | 2     | JSON store only, state in `state.json`                  | 1%    |
//! | 3–7   | SQLite row, state only in the `state` column            | 5%    |
//! | 8     | with `bad`: SQLite row with state in both, different (`state_conflict`) | 1% |
//! | 9     | SQLite row + `state.json`, and a copy of the row in the JSON store (even blocks) | 0.5% |
//! | rest  | SQLite row + `state.json`, `state` column NULL (slot 8 too without `bad`) | 90.5–92% |
//!
//! With `bad` there are also [`ORPHANS`] orphan state files and the invalid records of
//! [`make_bad`].

pub mod app;
mod content;
mod json;
mod rng;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use content::{Meta, StateOpts, Value};
use json::{Style, Writer};
pub use rng::Rng;

/// Where things go, relative to the output folder (SPEC §1 and §3).
pub const CONFIG_FILE: &str = "sessiondb.toml";
pub const SQLITE_PATH: &str = "data/app.db";
pub const SESSIONS_DIR: &str = "sessions";
pub const JSON_STORE_PATH: &str = "data/session-db.json";

/// Sessions made at once: bounds memory, and the work one parallel step spreads.
const CHUNK: u64 = 2048;
/// Orphan state files (a `state.json` with no metadata anywhere), written with `bad`.
const ORPHANS: u64 = 2;

// Streams of the generator: each purpose draws from its own.
const STREAM_SESSION: u64 = 1;
const STREAM_BLOCK: u64 = 2;
const STREAM_ORPHAN: u64 = 3;
const STREAM_BAD: u64 = 4;

#[derive(Debug, Clone)]
pub struct Options {
    pub out: PathBuf,
    pub sessions: u64,
    pub seed: u64,
    /// Add one invalid record of each kind.
    pub bad: bool,
    /// Declare `cost`, `created_at`, `updated_at` without a type, so SQLite keeps each
    /// value's storage class (see [`sqlite_ddl`]).
    pub loose_types: bool,
    /// Which store: SPEC §1's default shape, or an application's own schema ([`app`]).
    pub schema: Schema,
}

/// The schema of the generated store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Schema {
    // Plain comments: clap shows a variant's doc comment in --help.
    // The contract's `sessions` table (SPEC §1), state files and the JSON store.
    #[default]
    #[value(
        help = "the `sessions` table of the contract, state files and the deprecated JSON store"
    )]
    Default,
    // An application's own schema (SPEC §9, issue 17); see [`app`].
    #[value(
        help = "an application's own schema: `users` and `sessions` as SQLAlchemy makes them, state only in files"
    )]
    App,
}

/// One deliberately invalid record added by `--bad`.
#[derive(Debug, Clone, Serialize)]
pub struct BadRecord {
    pub id: String,
    /// The code a reader should report (SPEC §6).
    pub code: &'static str,
    /// The state file, relative to the output folder, when the defect is in one.
    pub path: Option<String>,
    pub what: &'static str,
}

/// What was written, by kind (the step's report details).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub seed: u64,
    /// Valid sessions a reader can resolve (orphans and bad records excluded).
    pub sessions: u64,
    /// Every row of the SQLite `sessions` table, bad rows included.
    pub sqlite_rows: u64,
    /// Every `state.json` on disk: sessions, orphans and bad records.
    pub state_files: u64,
    /// SQLite row + `state.json`, `state` column NULL.
    pub sqlite_with_state_file: u64,
    /// SQLite row whose state is only in the `state` column.
    pub sqlite_column_only: u64,
    /// SQLite row with a `state` column and a different `state.json` (the file wins).
    pub state_conflicts: u64,
    pub json_store_records: u64,
    pub json_only: u64,
    pub json_only_state_in_record: u64,
    pub json_only_state_in_file: u64,
    /// JSON store records that repeat a SQLite row's metadata (SQLite wins).
    pub json_duplicates: u64,
    pub orphan_state_files: u64,
    /// Session folders with `uploads/` or `logs/` (never to be touched).
    pub with_uploads: u64,
    pub with_logs: u64,
    /// Session folders that hold no `state.json` (state in the SQLite column).
    pub dirs_without_state: u64,
    pub awkward_ids: Vec<String>,
    /// Ids that are not one safe path component (SQLite only, no folder).
    pub unsafe_ids: Vec<String>,
    pub orphans: Vec<String>,
    /// The first session of each kind with an ordinary (UUID) id, to name in tests.
    pub examples: BTreeMap<&'static str, String>,
    pub bad: Vec<BadRecord>,
    pub bad_by_code: BTreeMap<&'static str, u64>,
    /// The forms values were written in, by field: `sqlite.cost` → `text` → n.
    pub forms: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// SQLite's `typeof()` of each loosely typed column, as stored.
    pub storage_classes: BTreeMap<String, BTreeMap<String, u64>>,
    pub loose_types: bool,
    pub bytes: Bytes,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Bytes {
    /// Every file written.
    pub total: u64,
    pub config: u64,
    pub sqlite: u64,
    pub json_store: u64,
    pub state_files: u64,
    /// uploads/ and logs/.
    pub other_files: u64,
    /// The state each valid session resolves to (file, else column, else record).
    pub states: u64,
    pub state_mean: u64,
    pub state_max: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    FileWithJsonCopy,
    Column,
    Conflict,
    JsonRecord,
    JsonFile,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::File => "sqlite_with_state_file",
            Kind::FileWithJsonCopy => "json_duplicate",
            Kind::Column => "sqlite_column_only",
            Kind::Conflict => "state_conflict",
            Kind::JsonRecord => "json_only_state_in_record",
            Kind::JsonFile => "json_only_state_in_file",
        }
    }
}

/// The kind of session `i`: its slot in a seeded shuffle of its block of 100.
/// Without `bad`, the conflict slot is an ordinary session (state file, column NULL).
fn kind_of(seed: u64, i: u64, bad: bool) -> Kind {
    let block = i / 100;
    let mut slots: [u8; 100] = std::array::from_fn(|k| k as u8);
    Rng::derive(seed, STREAM_BLOCK, block).shuffle(&mut slots);
    match slots[(i % 100) as usize] {
        0 | 1 => Kind::JsonRecord,
        2 => Kind::JsonFile,
        3..=7 => Kind::Column,
        8 if bad => Kind::Conflict,
        9 if block % 2 == 0 => Kind::FileWithJsonCopy,
        _ => Kind::File,
    }
}

/// Awkward but valid ids, at fixed places among the first sessions; each keeps the
/// kind its slot gives it. All are safe path components.
fn awkward_id(i: u64) -> Option<String> {
    let id = match i {
        1 => "café-résumé-日本語-🦀".to_owned(),
        2 => "session with spaces".to_owned(),
        3 => {
            let mut s = "long-id-".to_owned();
            while s.len() < 200 {
                s.push_str("0123456789abcdef");
            }
            s.truncate(200);
            s
        }
        4 => "o'brien; DROP TABLE sessions;--".to_owned(),
        5 => "re\u{301}sume\u{301}-nfd".to_owned(),
        6 => "-leading-dash".to_owned(),
        _ => return None,
    };
    Some(id)
}

/// Ids that are not safe as a path component: given to the first column-only sessions
/// (SQLite only, no folder), so the proportions of kinds stay exact.
const UNSAFE_IDS: [&str; 2] = ["../escape-attempt", "tenant/42/session"];

/// The sessions that get [`UNSAFE_IDS`].
fn unsafe_slots(seed: u64, n: u64, bad: bool) -> Vec<u64> {
    (0..n)
        .filter(|&i| awkward_id(i).is_none() && kind_of(seed, i, bad) == Kind::Column)
        .take(UNSAFE_IDS.len())
        .collect()
}

/// What every session of one run shares.
struct Plan<'a> {
    opts: &'a Options,
    users: u64,
    unsafe_at: Vec<u64>,
}

/// One SQLite row.
struct Row {
    id: String,
    meta: Meta,
    state: Option<String>,
}

/// What making one session left for the writers and the counters.
struct Made {
    id: String,
    kind: Kind,
    row: Option<Row>,
    record: Option<Vec<u8>>,
    state_file: u64,
    other_files: u64,
    uploads: bool,
    logs: bool,
    dir_without_state: bool,
    resolved_state: u64,
    forms: Vec<(&'static str, &'static str)>,
}

/// Write the store. Refuses an output folder that exists and is not empty; deletes
/// nothing, ever.
pub fn generate(opts: &Options) -> Result<Summary> {
    check_out(&opts.out)?;
    let out = &opts.out;
    let mkdir = |p: &Path| fs::create_dir_all(p).map_err(|e| write_err(p, e));
    mkdir(out)?;
    mkdir(&out.join("data"))?;
    mkdir(&out.join(SESSIONS_DIR))?;

    let mut sum = Summary {
        seed: opts.seed,
        loose_types: opts.loose_types,
        ..Summary::default()
    };

    let config = config_text(opts);
    let config_path = out.join(CONFIG_FILE);
    fs::write(&config_path, &config).map_err(|e| write_err(&config_path, e))?;
    sum.bytes.config = config.len() as u64;

    let db_path = out.join(SQLITE_PATH);
    let (tx, rx) = mpsc::sync_channel::<Vec<Row>>(4);
    let loose = opts.loose_types;
    let db = db_path.clone();
    let writer = std::thread::Builder::new()
        .name("fixture-sqlite".into())
        .spawn(move || write_sqlite(&db, loose, rx))
        .map_err(|e| write_err(&db_path, e))?;

    let made = make_all(opts, &mut sum, &tx);
    drop(tx);
    let stored = writer
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    // The writer's failure explains the sender's, so it is the one to report.
    let stored = stored?;
    made?;

    sum.sqlite_rows = stored.rows;
    sum.storage_classes = stored.classes;
    for p in [db_path.clone(), db_path.with_extension("db-wal")] {
        sum.bytes.sqlite += fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    }
    let b = &mut sum.bytes;
    b.state_mean = b.states.checked_div(sum.sessions).unwrap_or(0);
    b.total = b.config + b.sqlite + b.json_store + b.state_files + b.other_files;
    Ok(sum)
}

/// The output folder must be new or empty.
fn check_out(out: &Path) -> Result<()> {
    match fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Unreadable {
            path: out.to_path_buf(),
            source: e,
        }),
        Ok(m) if !m.is_dir() => Err(Error::Usage(format!(
            "--out {} exists and is not a folder; nothing was written",
            out.display()
        ))),
        Ok(_) => {
            let mut entries = fs::read_dir(out).map_err(|e| Error::Unreadable {
                path: out.to_path_buf(),
                source: e,
            })?;
            if entries.next().is_some() {
                return Err(Error::Usage(format!(
                    "--out {} exists and is not empty; generate-fixture writes only into a new or empty folder, and nothing was written",
                    out.display()
                )));
            }
            Ok(())
        }
    }
}

fn write_err(path: &Path, source: std::io::Error) -> Error {
    Error::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Make every session, orphan and bad record; rows go to the SQLite writer.
fn make_all(opts: &Options, sum: &mut Summary, tx: &mpsc::SyncSender<Vec<Row>>) -> Result<()> {
    let out = &opts.out;
    let store_path = out.join(JSON_STORE_PATH);
    let file = fs::File::create(&store_path).map_err(|e| write_err(&store_path, e))?;
    let mut store = JsonStore {
        out: BufWriter::with_capacity(1 << 20, file),
        path: store_path.clone(),
        records: 0,
        bytes: 0,
    };
    store.begin()?;

    let plan = Plan {
        opts,
        users: (opts.sessions / 8).max(10),
        unsafe_at: unsafe_slots(opts.seed, opts.sessions, opts.bad),
    };
    let users = plan.users;
    let phase =
        crate::progress::Phase::bar("generate", opts.sessions, crate::progress::Unit::Sessions);
    let mut start = 0;
    while start < opts.sessions {
        let end = (start + CHUNK).min(opts.sessions);
        let made: Vec<Made> = (start..end)
            .into_par_iter()
            .map(|i| make_session(&plan, i))
            .collect::<Result<_>>()?;
        let mut rows = Vec::with_capacity(made.len());
        for m in made {
            count(sum, &m);
            if let Some(r) = m.record {
                store.record(&r)?;
            }
            if let Some(row) = m.row {
                rows.push(row);
            }
        }
        if tx.send(rows).is_err() {
            return Ok(()); // the writer stopped; its error is reported
        }
        phase.inc(end - start);
        start = end;
    }
    phase.finish();

    let orphans = if opts.bad { ORPHANS } else { 0 };
    for k in 0..orphans {
        let mut rng = Rng::derive(opts.seed, STREAM_ORPHAN, k);
        let id = format!("orphan-{}", content::uuid(&mut rng));
        let style = Style::random(&mut rng);
        let size = content::state_size(&mut rng).min(8_000);
        let state = content::state(&mut rng, style, size, StateOpts::default());
        sum.bytes.state_files += write_state(out, &id, &state)?;
        sum.state_files += 1;
        sum.orphan_state_files += 1;
        sum.orphans.push(id);
    }

    if opts.bad {
        let (rows, bad, files, bytes) = make_bad(opts, users)?;
        sum.state_files += files;
        sum.bytes.state_files += bytes;
        for b in &bad {
            *sum.bad_by_code.entry(b.code).or_default() += 1;
        }
        sum.bad = bad;
        if tx.send(rows).is_err() {
            return Ok(());
        }
    }

    store.end()?;
    sum.json_store_records = store.records;
    sum.bytes.json_store = store.bytes;
    Ok(())
}

fn count(sum: &mut Summary, m: &Made) {
    sum.sessions += 1;
    match m.kind {
        Kind::File => sum.sqlite_with_state_file += 1,
        Kind::FileWithJsonCopy => {
            sum.sqlite_with_state_file += 1;
            sum.json_duplicates += 1;
        }
        Kind::Column => sum.sqlite_column_only += 1,
        Kind::Conflict => sum.state_conflicts += 1,
        Kind::JsonRecord => {
            sum.json_only += 1;
            sum.json_only_state_in_record += 1;
        }
        Kind::JsonFile => {
            sum.json_only += 1;
            sum.json_only_state_in_file += 1;
        }
    }
    if looks_like_uuid(&m.id) {
        sum.examples
            .entry(m.kind.name())
            .or_insert_with(|| m.id.clone());
    }
    if m.state_file > 0 {
        sum.state_files += 1;
        sum.bytes.state_files += m.state_file;
    }
    sum.bytes.other_files += m.other_files;
    sum.bytes.states += m.resolved_state;
    sum.bytes.state_max = sum.bytes.state_max.max(m.resolved_state);
    sum.with_uploads += u64::from(m.uploads);
    sum.with_logs += u64::from(m.logs);
    sum.dirs_without_state += u64::from(m.dir_without_state);
    if content::is_safe_component(&m.id) {
        if !looks_like_uuid(&m.id) {
            sum.awkward_ids.push(m.id.clone());
        }
    } else {
        sum.unsafe_ids.push(m.id.clone());
    }
    for (field, form) in &m.forms {
        *sum.forms
            .entry((*field).to_owned())
            .or_default()
            .entry(form)
            .or_default() += 1;
    }
}

fn looks_like_uuid(id: &str) -> bool {
    id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Make session `i`: write its files, return its row and its JSON store record.
fn make_session(plan: &Plan, i: u64) -> Result<Made> {
    let (opts, users) = (plan.opts, plan.users);
    let mut rng = Rng::derive(opts.seed, STREAM_SESSION, i);
    let kind = kind_of(opts.seed, i, opts.bad);
    let id = match plan.unsafe_at.iter().position(|&k| k == i) {
        Some(k) => UNSAFE_IDS[k].to_owned(),
        None => awkward_id(i).unwrap_or_else(|| content::uuid(&mut rng)),
    };
    let in_json = matches!(kind, Kind::JsonRecord | Kind::JsonFile);
    let meta = if in_json {
        Meta::random(
            &mut rng,
            users,
            content::JSON_COST_FORMS,
            content::JSON_TIME_FORMS,
        )
    } else {
        Meta::random(
            &mut rng,
            users,
            content::SQLITE_COST_FORMS,
            content::SQLITE_TIME_FORMS,
        )
    };
    let size = content::state_size(&mut rng);
    let mut made = Made {
        id: id.clone(),
        kind,
        row: None,
        record: None,
        state_file: 0,
        other_files: 0,
        uploads: false,
        logs: false,
        dir_without_state: false,
        resolved_state: 0,
        forms: Vec::new(),
    };
    let prefix = if in_json { "json" } else { "sqlite" };
    for (field, form) in ["cost", "created_at", "updated_at"].iter().zip(meta.forms) {
        made.forms.push((forms_key(prefix, field), form));
    }

    let out = &opts.out;
    let mut has_dir = false;
    if matches!(
        kind,
        Kind::File | Kind::FileWithJsonCopy | Kind::Conflict | Kind::JsonFile
    ) {
        let style = Style::random(&mut rng);
        let state = content::state(&mut rng, style, size, StateOpts::default());
        made.state_file = write_state(out, &id, &state)?;
        made.resolved_state = state.len() as u64;
        has_dir = true;
    }
    let column_state = match kind {
        Kind::Column => Some(column_state(&mut rng, size, StateOpts::default())),
        Kind::Conflict => {
            let stale = StateOpts { stale: true };
            Some(column_state(&mut rng, size / 2 + 200, stale))
        }
        _ => None,
    };
    if kind == Kind::Column {
        made.resolved_state = column_state.as_ref().map_or(0, |s| s.len() as u64);
    }

    // Uploads and logs beside the state (or alone, for a column-only session).
    if content::is_safe_component(&id) && (has_dir || kind == Kind::Column) {
        let dir = out.join(SESSIONS_DIR).join(&id);
        if rng.chance(80) {
            if !has_dir {
                fs::create_dir(&dir).map_err(|e| write_err(&dir, e))?;
                made.dir_without_state = true;
                has_dir = true;
            }
            made.other_files += write_upload(&mut rng, &dir)?;
            made.uploads = true;
        }
        if has_dir && rng.chance(60) {
            made.other_files += write_log(&mut rng, &dir)?;
            made.logs = true;
        }
    }

    match kind {
        Kind::JsonRecord => {
            let state = content::state(&mut rng, Style::PYTHON, size, StateOpts::default());
            made.resolved_state = state.len() as u64;
            made.record = Some(json_record(&mut rng, &id, &meta, Some(&state)));
        }
        Kind::JsonFile => made.record = Some(json_record(&mut rng, &id, &meta, None)),
        Kind::FileWithJsonCopy => made.record = Some(json_record(&mut rng, &id, &meta, None)),
        _ => {}
    }
    if !in_json {
        made.row = Some(Row {
            id,
            meta,
            state: column_state,
        });
    }
    Ok(made)
}

fn forms_key(prefix: &str, field: &str) -> &'static str {
    match (prefix, field) {
        ("json", "cost") => "json.cost",
        ("json", "created_at") => "json.created_at",
        ("json", _) => "json.updated_at",
        (_, "cost") => "sqlite.cost",
        (_, "created_at") => "sqlite.created_at",
        _ => "sqlite.updated_at",
    }
}

/// A state for the SQLite column, as the application's `json.dumps` wrote it.
fn column_state(rng: &mut Rng, size: usize, opts: StateOpts) -> String {
    let style = if rng.chance(500) {
        Style::PYTHON
    } else {
        Style::COMPACT
    };
    let bytes = content::state(rng, style, size, opts);
    String::from_utf8(bytes).expect("generated states are UTF-8")
}

/// `sessions/<id>/state.json`; returns its size.
fn write_state(out: &Path, id: &str, state: &[u8]) -> Result<u64> {
    let dir = out.join(SESSIONS_DIR).join(id);
    fs::create_dir(&dir).map_err(|e| write_err(&dir, e))?;
    let path = dir.join("state.json");
    fs::write(&path, state).map_err(|e| write_err(&path, e))?;
    Ok(state.len() as u64)
}

fn write_upload(rng: &mut Rng, dir: &Path) -> Result<u64> {
    let up = dir.join("uploads");
    fs::create_dir(&up).map_err(|e| write_err(&up, e))?;
    let (name, head): (&str, &[u8]) = *rng.pick(&[
        ("brief.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".as_slice()),
        ("diagram.png", b"\x89PNG\r\n\x1a\n".as_slice()),
        ("notes.txt", b"notes\n".as_slice()),
        ("data.csv", b"id,value\n".as_slice()),
    ]);
    let mut bytes = head.to_vec();
    for _ in 0..rng.range(32, 1024) {
        bytes.push(rng.next_u64() as u8);
    }
    let path = up.join(name);
    fs::write(&path, &bytes).map_err(|e| write_err(&path, e))?;
    Ok(bytes.len() as u64)
}

fn write_log(rng: &mut Rng, dir: &Path) -> Result<u64> {
    let logs = dir.join("logs");
    fs::create_dir(&logs).map_err(|e| write_err(&logs, e))?;
    let mut text = String::new();
    for n in 0..rng.range(2, 12) {
        let level = *rng.pick(&["INFO", "INFO", "DEBUG", "WARN"]);
        text.push_str(&format!(
            "2024-05-01T12:00:{:02}Z {level} agent step {n} took {} ms\n",
            n % 60,
            rng.below(5_000)
        ));
    }
    let path = logs.join("agent.log");
    fs::write(&path, &text).map_err(|e| write_err(&path, e))?;
    Ok(text.len() as u64)
}

/// One record of the JSON store, as the Python application wrote it.
fn json_record(rng: &mut Rng, id: &str, meta: &Meta, state: Option<&[u8]>) -> Vec<u8> {
    let mut w = Writer::new(Style::PYTHON, rng, 256 + state.map_or(0, <[u8]>::len));
    w.open_obj();
    w.kv_str("id", id);
    w.key("user_id");
    meta.user_id.write_json(&mut w);
    w.kv_str("status", meta.status);
    w.key("current_step");
    meta.current_step.write_json(&mut w);
    w.key("cost");
    meta.cost.write_json(&mut w);
    w.key("created_at");
    meta.created_at.write_json(&mut w);
    w.key("updated_at");
    meta.updated_at.write_json(&mut w);
    w.key("state");
    match state {
        Some(s) => w.verbatim(s),
        None => w.raw("null"),
    }
    w.close_obj();
    w.finish()
}

/// The deprecated JSON store, one record a line:
/// `{"version": 1, "sessions": [ {...}, ... ]}`.
struct JsonStore {
    out: BufWriter<fs::File>,
    path: PathBuf,
    records: u64,
    bytes: u64,
}

impl JsonStore {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.bytes += b.len() as u64;
        self.out.write_all(b).map_err(|e| write_err(&self.path, e))
    }
    fn begin(&mut self) -> Result<()> {
        self.put(b"{\n  \"version\": 1,\n  \"sessions\": [")
    }
    fn record(&mut self, r: &[u8]) -> Result<()> {
        self.put(if self.records == 0 {
            b"\n    "
        } else {
            b",\n    "
        })?;
        self.put(r)?;
        self.records += 1;
        Ok(())
    }
    fn end(&mut self) -> Result<()> {
        self.put(if self.records == 0 {
            b"]\n}\n"
        } else {
            b"\n  ]\n}\n"
        })?;
        self.out.flush().map_err(|e| write_err(&self.path, e))
    }
}

// ---- SQLite -----------------------------------------------------------------------------

/// The `sessions` table. With the declared types of SPEC §1, SQLite's column affinity
/// converts on insert: a cost handed over as the text `"0.0123"` or the integer `3` is
/// stored as a REAL, an epoch handed over as an INTEGER is stored as its digits in TEXT.
/// (Changing the declared types afterwards would keep the classes, but then
/// `PRAGMA quick_check` reports every mismatch.) `loose` declares those columns without
/// a type, as applications that create tables casually do: every value keeps its class.
pub fn sqlite_ddl(loose: bool) -> String {
    let (cost, created, updated) = if loose {
        ("cost", "created_at", "updated_at")
    } else {
        ("cost REAL", "created_at TEXT", "updated_at TEXT")
    };
    format!(
        "CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT,
    status TEXT,
    current_step TEXT,
    {cost},
    {created},
    {updated},
    state TEXT
);
CREATE INDEX idx_sessions_user ON sessions(user_id);
CREATE TABLE app_settings (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO app_settings (key, value) VALUES ('schema_version', '7'), ('state_storage', 'files');
"
    )
}

struct Stored {
    rows: u64,
    classes: BTreeMap<String, BTreeMap<String, u64>>,
}

fn sql_value(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Null => V::Null,
        Value::Integer(n) => V::Integer(*n),
        Value::Real(f) => V::Real(*f),
        Value::Text(s) => V::Text(s.clone()),
    }
}

/// The SQLite writer: one transaction, one prepared statement, fed in batches.
fn write_sqlite(path: &Path, loose: bool, rx: mpsc::Receiver<Vec<Row>>) -> Result<Stored> {
    let err = |e: rusqlite::Error| Error::Sqlite {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut conn = rusqlite::Connection::open(path).map_err(err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(err)?;
    debug_assert_eq!(mode, "wal");
    conn.pragma_update(None, "synchronous", "OFF")
        .map_err(err)?;
    conn.execute_batch(&sqlite_ddl(loose)).map_err(err)?;
    let tx = conn.transaction().map_err(err)?;
    let mut rows = 0u64;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO sessions (id, user_id, status, current_step, cost, created_at, updated_at, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(err)?;
        for batch in rx {
            for r in batch {
                let m = &r.meta;
                insert
                    .execute(rusqlite::params![
                        r.id,
                        sql_value(&m.user_id),
                        m.status,
                        sql_value(&m.current_step),
                        sql_value(&m.cost),
                        sql_value(&m.created_at),
                        sql_value(&m.updated_at),
                        r.state,
                    ])
                    .map_err(|e| Error::Sqlite {
                        path: path.to_path_buf(),
                        message: format!("inserting session {:?}: {e}", r.id),
                    })?;
                rows += 1;
            }
        }
    }
    tx.commit().map_err(err)?;
    let mut classes = BTreeMap::new();
    for col in ["cost", "created_at", "updated_at"] {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT typeof({col}), count(*) FROM sessions GROUP BY 1"
            ))
            .map_err(err)?;
        let found = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))
            .map_err(err)?
            .collect::<rusqlite::Result<BTreeMap<_, _>>>()
            .map_err(err)?;
        classes.insert(col.to_owned(), found);
    }
    conn.close().map_err(|(_, e)| err(e))?;
    Ok(Stored { rows, classes })
}

// ---- bad records ------------------------------------------------------------------------

/// One invalid record of each kind (SPEC §6): rows for SQLite, files written here.
/// Returns the rows, the records, and the state files written with their bytes.
fn make_bad(opts: &Options, users: u64) -> Result<(Vec<Row>, Vec<BadRecord>, u64, u64)> {
    let out = &opts.out;
    let mut rng = Rng::derive(opts.seed, STREAM_BAD, 0);
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    let state_path = |id: &str| format!("{SESSIONS_DIR}/{id}/state.json");

    // A small valid state with `member` spliced in as its first member.
    let with_member = |rng: &mut Rng, member: &[u8]| -> Vec<u8> {
        let s = content::state(rng, Style::COMPACT, 1_000, StateOpts::default());
        let mut v = b"{".to_vec();
        v.extend_from_slice(member);
        v.push(b',');
        v.extend_from_slice(&s[1..]);
        v
    };
    let valid = |rng: &mut Rng| content::state(rng, Style::COMPACT, 1_000, StateOpts::default());

    type Defect = (&'static str, &'static str, &'static str, Option<Vec<u8>>);
    let mut truncated = valid(&mut rng);
    truncated.truncate(truncated.len() / 2);
    while truncated
        .last()
        .is_some_and(|b| b & 0xC0 == 0x80 || *b >= 0xC0)
    {
        truncated.pop(); // end on a character boundary: invalid JSON, valid UTF-8
    }
    let files_defects: Vec<Defect> = vec![
        (
            "bad-invalid-json",
            "invalid_json",
            "state.json cut off halfway",
            Some(truncated),
        ),
        (
            "bad-invalid-utf8",
            "invalid_utf8",
            "state.json with Latin-1 bytes (0xE9, 0xE8) inside a string",
            Some(with_member(&mut rng, b"\"note\":\"caf\xe9 cr\xe8me\"")),
        ),
        (
            "bad-jsonb-nul",
            "jsonb_incompatible_nul",
            "state.json with the escape \\u0000 in a string",
            Some(with_member(&mut rng, b"\"note\":\"before\\u0000after\"")),
        ),
        (
            "bad-lone-surrogate",
            "invalid_json",
            "state.json with a lone surrogate escape \\ud800",
            Some(with_member(&mut rng, b"\"note\":\"\\ud800\"")),
        ),
        (
            "bad-unreadable",
            "unreadable",
            "state.json with mode 000 (root can still read it)",
            Some(valid(&mut rng)),
        ),
        (
            "bad-symlink-outside-root",
            "symlink_outside_root",
            "state.json is a symlink to /etc/hostname",
            None,
        ),
    ];
    for (id, code, what, state) in files_defects {
        let dir = out.join(SESSIONS_DIR).join(id);
        fs::create_dir(&dir).map_err(|e| write_err(&dir, e))?;
        let path = dir.join("state.json");
        match &state {
            Some(s) => {
                fs::write(&path, s).map_err(|e| write_err(&path, e))?;
                bytes += s.len() as u64;
            }
            None => std::os::unix::fs::symlink("/etc/hostname", &path)
                .map_err(|e| write_err(&path, e))?,
        }
        if code == "unreadable" {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o000))
                .map_err(|e| write_err(&path, e))?;
        }
        files += 1;
        rows.push(bad_row(&mut rng, users, id, None));
        bad.push(BadRecord {
            id: id.to_owned(),
            code,
            path: Some(state_path(id)),
            what,
        });
    }

    // Defects in the row; the state is valid (a file, or the column for the empty id).
    let mut r = bad_row(&mut rng, users, "bad-invalid-timestamp", None);
    r.meta.created_at = Value::Text("2024-02-30 10:00:00".to_owned());
    rows.push(r);
    bad.push(BadRecord {
        id: "bad-invalid-timestamp".to_owned(),
        code: "invalid_timestamp",
        path: None,
        what: "created_at is February 30th",
    });
    let mut r = bad_row(&mut rng, users, "bad-invalid-cost", None);
    r.meta.cost = Value::Text("abc".to_owned());
    rows.push(r);
    bad.push(BadRecord {
        id: "bad-invalid-cost".to_owned(),
        code: "invalid_cost",
        path: None,
        what: "cost is the text \"abc\"",
    });
    for id in ["bad-invalid-timestamp", "bad-invalid-cost"] {
        bytes += write_state(out, id, &valid(&mut rng))?;
        files += 1;
    }
    let column = String::from_utf8(valid(&mut rng)).expect("generated states are UTF-8");
    rows.push(bad_row(&mut rng, users, "", Some(column)));
    bad.push(BadRecord {
        id: String::new(),
        code: "invalid_id",
        path: None,
        what: "empty id; state in the SQLite column",
    });
    Ok((rows, bad, files, bytes))
}

fn bad_row(rng: &mut Rng, users: u64, id: &str, state: Option<String>) -> Row {
    Row {
        id: id.to_owned(),
        meta: Meta::random(
            rng,
            users,
            content::SQLITE_COST_FORMS,
            content::SQLITE_TIME_FORMS,
        ),
        state,
    }
}

// ---- the config -------------------------------------------------------------------------

/// `sessiondb.toml` as an operator would write it, comments included (a later
/// `set-default` must keep them).
fn config_text(opts: &Options) -> String {
    format!(
        r#"# sessiondb configuration for the session store of this application.
# Generated by `sessiondb generate-fixture --sessions {n} --seed {seed}{bad}`.
# Paths are relative to this file.

[sessiondb]
# Which store the application reads and writes. Switch it with `set-default`,
# never by hand during a cutover.
backend = "sqlite"          # "sqlite" | "postgres" | "json" (deprecated)

[sqlite]
path = "data/app.db"        # WAL mode; the application may be running
sessions_dir = "sessions"   # sessions/<id>/state.json; uploads/ and logs/ stay here

# The old JSON SessionDB, read-only since the move to SQLite.
[json]
path = "data/session-db.json"

[postgres]
url_env = "DATABASE_URL"    # the URL lives in the environment, never in this file
# schema = "public"
# pool_size = 10            # DB_POOL_SIZE wins
# max_overflow = 20         # DB_MAX_OVERFLOW wins
# gin_opclass = "jsonb_ops"

[backup]
dir = "backups"             # one timestamped folder per backup, mode 0700
"#,
        n = opts.sessions,
        seed = opts.seed,
        bad = if opts.bad { " --bad" } else { "" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_exact_proportions_on_whole_blocks() {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for i in 0..10_000 {
            *counts.entry(kind_of(7, i, true).name()).or_default() += 1;
        }
        assert_eq!(counts["json_only_state_in_record"], 200);
        assert_eq!(counts["json_only_state_in_file"], 100);
        assert_eq!(counts["sqlite_column_only"], 500);
        assert_eq!(counts["state_conflict"], 100);
        assert_eq!(counts["json_duplicate"], 50);
        assert_eq!(counts["sqlite_with_state_file"], 9_050);
    }

    #[test]
    fn conflicts_only_with_bad_and_nothing_else_moves() {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for i in 0..10_000 {
            let (plain, bad) = (kind_of(7, i, false), kind_of(7, i, true));
            if bad != Kind::Conflict {
                assert_eq!(plain, bad, "session {i}");
            }
            *counts.entry(plain.name()).or_default() += 1;
        }
        assert!(!counts.contains_key("state_conflict"), "{counts:?}");
        assert_eq!(counts["sqlite_column_only"], 500);
        assert_eq!(counts["sqlite_with_state_file"], 9_150);
    }

    #[test]
    fn kinds_depend_on_the_seed() {
        let a: Vec<Kind> = (0..300).map(|i| kind_of(1, i, true)).collect();
        let b: Vec<Kind> = (0..300).map(|i| kind_of(2, i, true)).collect();
        assert_ne!(a, b);
        assert_eq!(a, (0..300).map(|i| kind_of(1, i, true)).collect::<Vec<_>>());
    }

    #[test]
    fn awkward_ids_are_safe_and_unsafe_ones_go_to_column_only_sessions() {
        for i in 0..20 {
            if let Some(id) = awkward_id(i) {
                assert!(content::is_safe_component(&id), "{id}");
                assert!(id.len() <= 200);
            }
        }
        for id in UNSAFE_IDS {
            assert!(!content::is_safe_component(id), "{id}");
        }
        for seed in 0..50 {
            for bad in [false, true] {
                let at = unsafe_slots(seed, 100, bad);
                assert_eq!(at.len(), 2);
                assert!(at.iter().all(|&i| kind_of(seed, i, bad) == Kind::Column));
            }
        }
    }

    #[test]
    fn config_parses_with_the_real_parser() {
        let opts = Options {
            out: PathBuf::from("/x"),
            sessions: 5,
            seed: 1,
            bad: true,
            loose_types: false,
            schema: Schema::Default,
        };
        let text = config_text(&opts);
        let c = crate::config::Config::parse(
            Path::new("/x/sessiondb.toml"),
            &text,
            &crate::config::Env::default(),
        )
        .unwrap();
        assert_eq!(c.backend, crate::config::Backend::Sqlite);
        let s = c.sqlite.unwrap();
        assert_eq!(s.path, Path::new("/x/data/app.db"));
        assert_eq!(s.sessions_dir, Path::new("/x/sessions"));
        assert_eq!(
            c.json_path.as_deref(),
            Some(Path::new("/x/data/session-db.json"))
        );
        assert_eq!(c.backup_dir, Path::new("/x/backups"));
    }
}
