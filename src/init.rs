//! `sessiondb init` (SPEC §9): inspect a store (the SQLite database, the sessions
//! folder, the JSON store, and the target when one is configured) and propose a
//! commented `sessiondb.toml` for it: the mapping guessed (each guess explained), the
//! extra columns, the tables copied with the sessions, the target's tables and whether
//! they fit, and what could not be decided.
//!
//! [`inspect`] finds and reads everything (read-only: SQLite opened read-only, the
//! target in a read-only transaction of catalog queries); [`Inspection::render`] writes
//! the proposed text, which is checked with the real parser and shape reader before it
//! is offered ([`Inspection::validate`]); [`write_config`] puts it in place atomically,
//! never over an existing file without `force`, never through a symlink or into a FIFO.
//!
//! Where the database is when there is no config yet: `--sqlite PATH`, else the
//! application's own `$DATABASE_URL` when it is a SQLite URL (`sqlite:///app.db`), else
//! the config being replaced (`--force`), else the one SQLite file near the config's
//! folder (itself, `data/`, `db/`, `instance/`, `var/`) that has a sessions table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{self, AppSchema, Config, DbUrl, Env};
use crate::error::{Error, Result};
use crate::pg::catalog::{self, Fit, SourceColumn, TargetTable};
use crate::report::Finding;
use crate::source::shape::{
    self, ColumnScan, Field, JsonKeys, Shape, Table, TypeChoice, choose_type, scan_table,
};
use crate::source::sqlite;
use crate::value::compat::SourceKind;

/// What `init` was asked.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The config to propose (absolute): `--out`, else the discovered config path.
    pub out: PathBuf,
    pub sqlite: Option<PathBuf>,
    pub sessions_dir: Option<PathBuf>,
    pub json: Option<PathBuf>,
    /// The sessions table, when it is not `sessions`.
    pub table: Option<String>,
}

/// A location and how it was found.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub path: PathBuf,
    pub how: String,
}

/// One field's guess.
#[derive(Debug, Clone, Serialize)]
pub struct Guess {
    pub field: Field,
    /// The column, or `None` for absent.
    pub column: Option<String>,
    /// Whether the config must say it (it is not the default).
    pub explicit: bool,
    pub why: String,
}

/// A column carried as it is, with the type sessiondb would give it.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnNote {
    pub table: String,
    pub name: String,
    pub declared: String,
    pub not_null: bool,
    pub choice: TypeChoice,
    pub nulls: u64,
    pub values: u64,
}

/// A table copied with the sessions.
#[derive(Debug, Clone, Serialize)]
pub struct TableNote {
    pub name: String,
    pub rows: u64,
    pub primary_key: Vec<String>,
    /// How it is linked: `sessions.user_id → users.id`, or `sqlite.copy_tables`.
    pub via: String,
    /// Its columns, with the types sessiondb would give them.
    pub columns: Vec<ColumnNote>,
}

/// What the target holds for one table sessiondb writes.
#[derive(Debug, Clone, Serialize)]
pub struct TargetNote {
    pub table: String,
    pub exists: bool,
    pub fit: Fit,
    /// `session_state` only: an equivalent GIN index already there.
    pub gin_index: Option<String>,
}

/// The target, when one is configured.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// The redacted URL.
    pub display: String,
    pub origin: String,
    pub schema: String,
    /// `None` when it could not be read (then `error` says why).
    pub tables: Vec<TargetNote>,
    pub error: Option<String>,
}

/// Everything `init` found.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub out: PathBuf,
    pub sqlite: Found,
    pub table: String,
    pub rows: u64,
    pub tables_in_database: Vec<String>,
    pub guesses: Vec<Guess>,
    pub json_guesses: Vec<Guess>,
    pub extras: Vec<ColumnNote>,
    pub parents: Vec<TableNote>,
    pub children: Vec<TableNote>,
    /// Tables of the database that are not copied, each with a note.
    pub other_tables: Vec<(String, String)>,
    pub sessions_dir: Option<Found>,
    /// Sessions whose `<sessions_dir>/<id>/state.json` exists.
    pub state_files: u64,
    pub json: Option<Found>,
    pub json_keys: Option<JsonKeys>,
    pub target: Option<TargetReport>,
    pub postgres_schema: String,
    pub gin_opclass: String,
    pub url_env: String,
    /// What could not be decided: each a sentence saying what to look at.
    pub undecided: Vec<String>,
    #[serde(skip)]
    pub warnings: Vec<Finding>,
    #[serde(skip)]
    pub app: AppSchema,
}

/// The config being replaced, when there is one that parses.
fn existing_config(out: &Path, env: &Env) -> Option<Config> {
    // Never open what is not a regular file: a FIFO would block the read.
    if !std::fs::metadata(out).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let text = std::fs::read_to_string(out).ok()?;
    Config::parse(out, &text, env).ok()
}

/// Refuse what is not a regular file (a FIFO would block the open).
fn regular_file(path: &Path, what: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(Error::NotInspectable {
            message: format!(
                "{what} {} is not a regular file; it was not read",
                path.display()
            ),
        }),
        Err(e) => Err(Error::Unreadable {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Find the SQLite database (see the module's documentation).
fn find_sqlite(
    opts: &Options,
    existing: Option<&Config>,
    env: &Env,
    url_env: &str,
) -> Result<Found> {
    if let Some(p) = &opts.sqlite {
        return Ok(Found {
            path: absolute(p),
            how: "from --sqlite".into(),
        });
    }
    if let Some(raw) = env.get(url_env) {
        if let Ok(DbUrl::Sqlite(p)) = config::normalize_url(raw) {
            return Ok(Found {
                path: absolute(&p),
                how: format!("from ${url_env}, the application's own URL"),
            });
        }
    }
    if let Some(s) = existing.and_then(|c| c.sqlite.as_ref()) {
        return Ok(Found {
            path: s.path.clone(),
            how: format!("from the existing {}", opts.out.display()),
        });
    }
    let dir = opts.out.parent().unwrap_or(Path::new("."));
    let mut candidates = Vec::new();
    for sub in ["", "data", "db", "instance", "var"] {
        let d = dir.join(sub);
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if !matches!(ext, "db" | "sqlite" | "sqlite3") || regular_file(&p, "").is_err() {
                continue;
            }
            if sqlite::check_header(&p).is_ok() {
                candidates.push(p);
            }
        }
    }
    let table = opts.table.as_deref().unwrap_or(config::DEFAULT_TABLE);
    let with_table: Vec<&PathBuf> = candidates
        .iter()
        .filter(|p| {
            sqlite::open(p)
                .ok()
                .and_then(|c| shape::read_table(&c, p, table).ok().flatten())
                .is_some()
        })
        .collect();
    match (with_table.as_slice(), candidates.as_slice()) {
        ([one], _) => Ok(Found {
            path: (*one).clone(),
            how: format!(
                "the one SQLite database near {} with a table {table:?}",
                dir.display()
            ),
        }),
        ([], []) => Err(Error::Usage(format!(
            "no SQLite database found in {} (or its data/, db/, instance/, var/): pass --sqlite PATH, or set $DATABASE_URL to the application's sqlite:/// URL",
            dir.display()
        ))),
        ([], many) => Err(Error::Usage(format!(
            "none of the SQLite databases near {} has a table {table:?} ({}): pass --sqlite PATH and --table NAME",
            dir.display(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        (many, _) => Err(Error::Usage(format!(
            "several SQLite databases near {} have a table {table:?} ({}): pass --sqlite PATH",
            dir.display(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The sessions table: `--table`, else `sessions`, else the one table whose name says
/// sessions (not `session_state`).
fn find_table(
    opts: &Options,
    existing: Option<&Config>,
    tables: &[String],
    undecided: &mut Vec<String>,
) -> Result<String> {
    if let Some(t) = &opts.table {
        return Ok(t.clone());
    }
    if let Some(c) = existing {
        if tables.iter().any(|t| t.eq_ignore_ascii_case(&c.app.table)) {
            return Ok(c.app.table.clone());
        }
    }
    if let Some(t) = tables
        .iter()
        .find(|t| t.eq_ignore_ascii_case(config::DEFAULT_TABLE))
    {
        return Ok(t.clone());
    }
    let like: Vec<&String> = tables
        .iter()
        .filter(|t| {
            let l = t.to_ascii_lowercase();
            l.contains("session") && !l.contains("state")
        })
        .collect();
    match like.as_slice() {
        [one] => {
            undecided.push(format!(
                "the database has no table \"sessions\"; {one:?} was taken as the sessions table (sqlite.table): check it"
            ));
            Ok((*one).clone())
        }
        _ => Err(Error::Usage(format!(
            "the database has no table \"sessions\" and no single other sessions table (tables: {}): pass --table NAME",
            tables.join(", ")
        ))),
    }
}

/// Names a field's column goes by in applications, after its own.
fn synonyms(f: Field) -> &'static [&'static str] {
    match f {
        Field::Id => &["session_id", "sid", "uuid", "key"],
        Field::UserId => &[
            "owner_id",
            "user",
            "owner",
            "account_id",
            "uid",
            "userid",
            "user_uuid",
        ],
        Field::Status => &["session_status", "phase"],
        Field::CurrentStep => &["step", "stage", "current_stage"],
        Field::Cost => &[],
        Field::CreatedAt => &[
            "created",
            "created_on",
            "creation_time",
            "inserted_at",
            "date_created",
            "ctime",
            "createdat",
        ],
        Field::UpdatedAt => &[
            "updated",
            "modified_at",
            "modified",
            "last_modified",
            "mtime",
            "updatedat",
            "last_updated",
        ],
        Field::State => &["state_json", "session_state", "data", "payload"],
    }
}

/// Whether a column's values suit the field.
fn suits(f: Field, kind: SourceKind) -> bool {
    use SourceKind as K;
    match f {
        Field::Cost => matches!(kind, K::Real | K::Integer | K::Empty),
        Field::CreatedAt | Field::UpdatedAt => {
            matches!(
                kind,
                K::NaiveTimestamp | K::AwareTimestamp | K::Text | K::Empty | K::Integer | K::Real
            )
        }
        Field::State => matches!(kind, K::Json | K::Text | K::Empty),
        _ => !matches!(kind, K::Blob | K::Json),
    }
}

struct Scanned<'a> {
    table: &'a Table,
    scans: &'a [ColumnScan],
    choices: &'a [TypeChoice],
}

impl Scanned<'_> {
    fn index(&self, column: &str) -> Option<usize> {
        self.table
            .stored_columns()
            .position(|c| c.name.eq_ignore_ascii_case(column))
    }
    fn kind(&self, column: &str) -> SourceKind {
        self.index(column)
            .map_or(SourceKind::Empty, |i| self.choices[i].kind)
    }
    fn describe(&self, column: &str) -> String {
        match self.index(column) {
            None => String::new(),
            Some(i) => {
                let c = self.table.stored_columns().nth(i).expect("indexed");
                let s = &self.scans[i];
                format!(
                    "{} ({}, {} value(s), {} NULL)",
                    q(&c.name),
                    if c.declared.is_empty() {
                        "no declared type".to_owned()
                    } else {
                        c.declared.clone()
                    },
                    s.values(),
                    s.nulls
                )
            }
        }
    }
}

/// A name quoted for a comment or a message: control characters escaped, so no name
/// can end a comment line and start a setting.
fn q(name: &str) -> String {
    format!("{name:?}")
}

/// Guess every field's column (see [`synonyms`]); a field with several candidates is
/// left to its default and listed as undecided.
fn guess_mapping(
    s: &Scanned,
    sessions_dir_state: Option<(u64, u64)>,
    undecided: &mut Vec<String>,
) -> Vec<Guess> {
    let table = s.table;
    let mut taken: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for f in Field::ALL {
        let own = table.column(f.name()).filter(|c| !c.generated);
        // The column of the field's own name, unless it plainly holds something else.
        if let Some(c) = own {
            if f == Field::State
                && s.kind(&c.name) != SourceKind::Json
                && s.kind(&c.name) != SourceKind::Empty
            {
                let scan = &s.scans[s.index(&c.name).expect("own column")];
                if scan.json_texts < scan.values() {
                    out.push(Guess {
                        field: f,
                        column: None,
                        explicit: true,
                        why: format!(
                            "column \"state\" holds values that are not JSON documents ({} of {}): it is carried as an extra column instead",
                            scan.values() - scan.json_texts,
                            scan.values()
                        ),
                    });
                    continue;
                }
            }
            taken.push(c.name.clone());
            out.push(Guess {
                field: f,
                column: Some(c.name.clone()),
                explicit: false,
                why: format!("the column of the same name: {}", s.describe(&c.name)),
            });
            continue;
        }
        let mut cands: Vec<String> = table
            .stored_columns()
            .filter(|c| !taken.iter().any(|t| t.eq_ignore_ascii_case(&c.name)))
            .filter(|c| {
                let l = c.name.to_ascii_lowercase();
                synonyms(f).contains(&l.as_str())
                    || (f == Field::Cost
                        && (l.contains("cost") || l.contains("price") || l.ends_with("_usd")))
                    || (f == Field::CreatedAt && l.starts_with("created"))
                    || (f == Field::UpdatedAt
                        && (l.starts_with("updated") || l.starts_with("modified")))
            })
            .filter(|c| suits(f, s.kind(&c.name)))
            .map(|c| c.name.clone())
            .collect();
        if f == Field::Id && cands.is_empty() && table.primary_key.len() == 1 {
            cands.push(table.primary_key[0].clone());
        }
        if f == Field::UserId && cands.is_empty() {
            cands.extend(
                table
                    .foreign_keys
                    .iter()
                    .filter(|fk| {
                        fk.columns.len() == 1 && fk.parent.to_ascii_lowercase().contains("user")
                    })
                    .map(|fk| fk.columns[0].clone()),
            );
        }
        if f == Field::State && cands.is_empty() {
            cands.extend(
                table
                    .stored_columns()
                    .filter(|c| s.kind(&c.name) == SourceKind::Json)
                    .map(|c| c.name.clone()),
            );
        }
        match cands.as_slice() {
            [one] => {
                taken.push(one.clone());
                let why = match f {
                    Field::Id if table.primary_key == [one.clone()] => {
                        format!("no column named id; {} is the primary key", s.describe(one))
                    }
                    _ => format!("no column named {f}; {} looks like it", s.describe(one)),
                };
                out.push(Guess {
                    field: f,
                    column: Some(one.clone()),
                    explicit: true,
                    why,
                });
            }
            [] => {
                let why = match (f, sessions_dir_state) {
                    (Field::State, Some((files, rows))) => format!(
                        "the table has no state column; {files} of {rows} session(s) have sessions/<id>/state.json"
                    ),
                    (Field::State, None) => {
                        "the table has no state column, and no sessions folder was found".into()
                    }
                    _ => format!("the table has no column for {f}"),
                };
                if f == Field::Id {
                    undecided.push("no column holds the session id (no column \"id\", no single-column primary key): set [sqlite.columns] id".to_owned());
                }
                out.push(Guess {
                    field: f,
                    column: None,
                    // Absent by default; written out for the state, which matters most.
                    explicit: f == Field::State,
                    why,
                });
            }
            many => {
                undecided.push(format!(
                    "{f}: several columns could hold it ({}); none was chosen: set [sqlite.columns] {f} to one of them (all are carried as extra columns meanwhile)",
                    many.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ")
                ));
                out.push(Guess {
                    field: f,
                    column: None,
                    explicit: false,
                    why: format!(
                        "undecided between {}",
                        many.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ")
                    ),
                });
            }
        }
    }
    out
}

/// `created_at` → `createdAt`.
fn camel(name: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for ch in name.chars() {
        if ch == '_' {
            up = true;
        } else if up {
            out.extend(ch.to_uppercase());
            up = false;
        } else {
            out.push(ch);
        }
    }
    out
}

/// Guess `[json.fields]` from the keys the records use.
fn guess_json_fields(keys: &JsonKeys, undecided: &mut Vec<String>) -> Vec<Guess> {
    let mut out = Vec::new();
    for f in Field::ALL {
        if keys.keys.contains_key(f.name()) {
            out.push(Guess {
                field: f,
                column: Some(f.name().to_owned()),
                explicit: false,
                why: format!(
                    "the key of the same name ({} of {} sampled records)",
                    keys.keys[f.name()],
                    keys.sampled
                ),
            });
            continue;
        }
        let mut names: Vec<String> = vec![camel(f.name())];
        names.extend(synonyms(f).iter().map(|s| s.to_string()));
        names.extend(synonyms(f).iter().map(|s| camel(s)));
        if f == Field::Id {
            names.insert(0, "session".into());
            names.push("sessionId".into());
        }
        let found: Vec<&String> = keys
            .keys
            .keys()
            .filter(|k| names.iter().any(|n| n == *k))
            .collect();
        match found.as_slice() {
            [one] => out.push(Guess {
                field: f,
                column: Some((*one).clone()),
                explicit: true,
                why: format!(
                    "no key {f}; {one:?} is in {} of {} sampled records",
                    keys.keys[*one], keys.sampled
                ),
            }),
            [] => {
                if f == Field::Id {
                    undecided.push("the JSON store's records have no id key that init recognises: set [json.fields] id".into());
                }
                out.push(Guess {
                    field: f,
                    column: None,
                    explicit: false,
                    why: format!("the records have no key for {f}"),
                });
            }
            many => {
                undecided.push(format!(
                    "[json.fields] {f}: several keys could hold it ({}): set it",
                    many.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ")
                ));
                out.push(Guess {
                    field: f,
                    column: None,
                    explicit: false,
                    why: "undecided".into(),
                });
            }
        }
    }
    out
}

fn count_rows(conn: &rusqlite::Connection, db: &Path, table: &str) -> Result<u64> {
    conn.query_row(
        &format!("SELECT count(*) FROM {}", shape::ident(table)),
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
    .map_err(|e| sqlite::map_err(db, e))
}

/// How many sessions have `<dir>/<id>/state.json` (ids from the id column).
fn count_state_files(
    conn: &rusqlite::Connection,
    db: &Path,
    table: &str,
    id_col: &str,
    dir: &Path,
    phase: &crate::progress::Phase,
) -> Result<u64> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {} FROM {}",
            shape::ident(id_col),
            shape::ident(table)
        ))
        .map_err(|e| sqlite::map_err(db, e))?;
    let mut rows = stmt.query([]).map_err(|e| sqlite::map_err(db, e))?;
    let mut n = 0;
    while let Some(r) = rows.next().map_err(|e| sqlite::map_err(db, e))? {
        phase.inc(1);
        let id = match r.get_ref(0).map_err(|e| sqlite::map_err(db, e))? {
            rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
            rusqlite::types::ValueRef::Integer(i) => i.to_string(),
            _ => continue,
        };
        if crate::source::fields::path_safe(&id) && dir.join(&id).join("state.json").is_file() {
            n += 1;
        }
    }
    Ok(n)
}

/// The sessions folder: `--sessions-dir`, the existing config's, else `sessions`
/// beside the config or the database.
fn find_sessions_dir(opts: &Options, existing: Option<&Config>, db: &Path) -> Option<Found> {
    if let Some(d) = &opts.sessions_dir {
        return Some(Found {
            path: absolute(d),
            how: "from --sessions-dir".into(),
        });
    }
    if let Some(s) = existing.and_then(|c| c.sqlite.as_ref()) {
        if s.sessions_dir.is_dir() {
            return Some(Found {
                path: s.sessions_dir.clone(),
                how: format!("from the existing {}", opts.out.display()),
            });
        }
    }
    let out_dir = opts.out.parent().unwrap_or(Path::new("."));
    let db_dir = db.parent().unwrap_or(Path::new("."));
    for (d, how) in [
        (
            out_dir.join("sessions"),
            "the folder sessions/ beside the config",
        ),
        (
            db_dir.join("sessions"),
            "the folder sessions/ beside the database",
        ),
        (
            db_dir.parent().unwrap_or(db_dir).join("sessions"),
            "the folder sessions/ above the database's",
        ),
    ] {
        if d.is_dir() {
            return Some(Found {
                path: d,
                how: how.into(),
            });
        }
    }
    None
}

/// The JSON store: `--json`, the existing config's, else a file with one of the usual
/// names beside the config or the database, or in `data/`.
fn find_json(opts: &Options, existing: Option<&Config>, db: &Path) -> Option<Found> {
    if let Some(p) = &opts.json {
        return Some(Found {
            path: absolute(p),
            how: "from --json".into(),
        });
    }
    if let Some(p) = existing.and_then(|c| c.json_path.as_ref()) {
        return Some(Found {
            path: p.clone(),
            how: format!("from the existing {}", opts.out.display()),
        });
    }
    let out_dir = opts.out.parent().unwrap_or(Path::new("."));
    let db_dir = db.parent().unwrap_or(Path::new("."));
    for d in [
        out_dir.to_path_buf(),
        out_dir.join("data"),
        db_dir.to_path_buf(),
    ] {
        for name in ["session-db.json", "session_db.json", "sessions.json"] {
            let p = d.join(name);
            if p.is_file() {
                return Some(Found {
                    path: p,
                    how: format!("a file named {name} near the database"),
                });
            }
        }
    }
    None
}

fn table_notes(
    conn: &rusqlite::Connection,
    db: &Path,
    tables: &[Table],
    shape: &Shape,
    copy: &[String],
    columns: &BTreeMap<String, Vec<ColumnNote>>,
) -> Result<Vec<TableNote>> {
    tables
        .iter()
        .map(|t| {
            let via = if copy.iter().any(|c| c.eq_ignore_ascii_case(&t.name)) {
                "sqlite.copy_tables".to_owned()
            } else {
                let refs: Vec<String> = shape
                    .load_order()
                    .iter()
                    .flat_map(|from| {
                        from.foreign_keys
                            .iter()
                            .filter(|fk| fk.parent.eq_ignore_ascii_case(&t.name))
                            .map(|fk| {
                                format!(
                                    "{}.{} → {}.{}",
                                    from.name,
                                    fk.columns.join(","),
                                    t.name,
                                    fk.parent_columns.join(",")
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                format!("foreign key {}", refs.join("; "))
            };
            Ok(TableNote {
                name: t.name.clone(),
                rows: count_rows(conn, db, &t.name)?,
                primary_key: t.primary_key.clone(),
                via,
                columns: columns.get(&t.name).cloned().unwrap_or_default(),
            })
        })
        .collect()
}

/// Inspect the store and the target, and guess its config.
pub fn inspect(opts: &Options, env: &Env) -> Result<Inspection> {
    let existing = existing_config(&opts.out, env);
    let url_env = existing
        .as_ref()
        .map(|c| c.postgres.url_env.clone())
        .unwrap_or_else(|| config::DEFAULT_URL_ENV.to_owned());
    let mut undecided = Vec::new();
    let mut warnings = Vec::new();
    let found = find_sqlite(opts, existing.as_ref(), env, &url_env)?;
    tracing::info!("SQLite database {} ({})", found.path.display(), found.how);
    regular_file(&found.path, "the SQLite database")?;
    let db = &found.path;
    let conn = sqlite::open(db)?;
    let tables = shape::list_tables(&conn, db)?;
    let table = find_table(opts, existing.as_ref(), &tables, &mut undecided)?;
    let sessions = shape::read_table(&conn, db, &table)?.ok_or_else(|| {
        Error::Usage(format!(
            "{}: no table {table:?} (tables: {})",
            db.display(),
            tables.join(", ")
        ))
    })?;
    let spin = crate::progress::Phase::spinner("init-scan");
    let scans = scan_table(&conn, db, &sessions)?;
    spin.finish();
    let choices: Vec<TypeChoice> = sessions
        .stored_columns()
        .zip(&scans)
        .map(|(c, s)| choose_type(c, s))
        .collect();
    let rows = scans.first().map_or(0, |s| s.rows);
    let scanned = Scanned {
        table: &sessions,
        scans: &scans,
        choices: &choices,
    };

    let sessions_dir = find_sessions_dir(opts, existing.as_ref(), db);
    // Count state files by the id column the guess will use.
    let id_col = sessions
        .column("id")
        .map(|c| c.name.clone())
        .or_else(|| (sessions.primary_key.len() == 1).then(|| sessions.primary_key[0].clone()));
    let state_files = match (&sessions_dir, &id_col) {
        (Some(d), Some(id)) => {
            let phase =
                crate::progress::Phase::bar("init-state-files", rows, crate::progress::Unit::Rows);
            let n = count_state_files(&conn, db, &sessions.name, id, &d.path, &phase)?;
            phase.finish();
            n
        }
        _ => 0,
    };
    let mut guesses = guess_mapping(
        &scanned,
        sessions_dir.as_ref().map(|_| (state_files, rows)),
        &mut undecided,
    );
    if sessions_dir.is_none() {
        undecided.push("no sessions folder found (sessions/ beside the config or the database): sqlite.sessions_dir says \"sessions\"; pass --sessions-dir if the state files are elsewhere".into());
    }
    if let Some(g) = guesses
        .iter_mut()
        .find(|g| g.field == Field::State && g.column.is_some())
    {
        if state_files > 0 {
            g.why.push_str(&format!(
                "; {state_files} session(s) also have a state file, which wins where both exist (SPEC §1)"
            ));
        }
    }

    let mut app = AppSchema {
        table: sessions.name.clone(),
        ..AppSchema::default()
    };
    for g in &guesses {
        if g.explicit {
            app.columns
                .insert(g.field, g.column.clone().unwrap_or_default());
        }
    }
    let json = find_json(opts, existing.as_ref(), db);
    let (json_keys, json_guesses) = match &json {
        None => (None, Vec::new()),
        Some(j) => {
            regular_file(&j.path, "the JSON store")?;
            match shape::json_store_keys(&j.path, 200) {
                Ok(k) => {
                    let g = guess_json_fields(&k, &mut undecided);
                    for x in &g {
                        if x.explicit {
                            app.json_fields
                                .insert(x.field, x.column.clone().unwrap_or_default());
                        }
                    }
                    (Some(k), g)
                }
                Err(e) => {
                    undecided.push(format!(
                        "the JSON store {} could not be read ({}): it is left out of the config; fix it or pass --json",
                        j.path.display(),
                        e.code()
                    ));
                    (None, Vec::new())
                }
            }
        }
    };
    let json = json.filter(|_| json_keys.is_some());

    let shape = Shape::read(&conn, db, &opts.out, &app)?;
    warnings.extend(shape.warnings.iter().cloned());
    let mut extras = Vec::new();
    let note = |t: &Table, scans: &[ColumnScan], names: &[String]| -> Vec<ColumnNote> {
        t.stored_columns()
            .zip(scans)
            .filter(|(c, _)| names.iter().any(|n| n == &c.name))
            .map(|(c, s)| ColumnNote {
                table: t.name.clone(),
                name: c.name.clone(),
                declared: c.declared.clone(),
                not_null: c.not_null,
                choice: choose_type(c, s),
                nulls: s.nulls,
                values: s.values(),
            })
            .collect()
    };
    extras.extend(note(&sessions, &scans, &shape.extras));
    let mut copied_columns: BTreeMap<String, Vec<ColumnNote>> = BTreeMap::new();
    for t in shape.parents.iter().chain(&shape.children) {
        let s = scan_table(&conn, db, t)?;
        let names: Vec<String> = t.stored_columns().map(|c| c.name.clone()).collect();
        copied_columns.insert(t.name.clone(), note(t, &s, &names));
    }
    for c in extras.iter().chain(copied_columns.values().flatten()) {
        if let Some(w) = &c.choice.warning {
            warnings.push(Finding::new(
                "type_guessed",
                format!("{}.{}: {w}", c.table, c.name),
            ));
        }
    }
    let parents = table_notes(
        &conn,
        db,
        &shape.parents,
        &shape,
        &app.copy_tables,
        &copied_columns,
    )?;
    let children = table_notes(
        &conn,
        db,
        &shape.children,
        &shape,
        &app.copy_tables,
        &copied_columns,
    )?;
    let mut other_tables = Vec::new();
    for t in &tables {
        if shape.load_order().iter().any(|c| c.name == *t) {
            continue;
        }
        let n = count_rows(&conn, db, t)?;
        let what = if t.eq_ignore_ascii_case("session_state") {
            if n == 0 {
                "empty: the application's own state table; on PostgreSQL sessiondb fills session_state from the state files".to_owned()
            } else {
                undecided.push(format!(
                    "table \"session_state\" holds {n} row(s) in SQLite: if the application keeps state there (not in files), reading it is not supported yet"
                ));
                format!("{n} row(s), not read: state is read from the files")
            }
        } else {
            format!("{n} row(s); not copied (add it to copy_tables to copy it)")
        };
        other_tables.push((t.clone(), what));
    }

    let postgres_schema = existing
        .as_ref()
        .map_or_else(|| "public".to_owned(), |c| c.postgres.schema.clone());
    let gin_opclass = existing
        .as_ref()
        .map_or("jsonb_ops", |c| c.postgres.gin_opclass.as_sql())
        .to_owned();
    let target = inspect_target(
        existing.as_ref(),
        env,
        &postgres_schema,
        &gin_opclass,
        &shape,
        &scans,
        &choices,
        &copied_columns,
        &app,
        &mut undecided,
    )?;
    if env
        .get(&url_env)
        .is_some_and(|u| matches!(config::normalize_url(u), Ok(DbUrl::Postgres(_))))
    {
        undecided.push(format!(
            "${url_env} is a PostgreSQL URL, so the application would run on PostgreSQL now: backend = \"sqlite\" was proposed because init reads a SQLite store; set it to \"postgres\" if the application already runs there"
        ));
    }
    Ok(Inspection {
        out: opts.out.clone(),
        sqlite: found,
        table: sessions.name.clone(),
        rows,
        tables_in_database: tables,
        guesses,
        json_guesses,
        extras,
        parents,
        children,
        other_tables,
        sessions_dir,
        state_files,
        json,
        json_keys,
        target,
        postgres_schema,
        gin_opclass,
        url_env,
        undecided,
        warnings,
        app,
    })
}

/// The source columns of a table, as the fit check sees them.
fn source_columns(notes: &[ColumnNote]) -> Vec<SourceColumn> {
    notes
        .iter()
        .map(|n| SourceColumn {
            name: n.name.clone(),
            kind: n.choice.kind,
            values: n.values,
            nulls: n.nulls,
            max_chars: 0,
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn inspect_target(
    existing: Option<&Config>,
    env: &Env,
    schema: &str,
    opclass: &str,
    shape: &Shape,
    scans: &[ColumnScan],
    choices: &[TypeChoice],
    copied: &BTreeMap<String, Vec<ColumnNote>>,
    app: &AppSchema,
    undecided: &mut Vec<String>,
) -> Result<Option<TargetReport>> {
    let settings = existing.map_or_else(crate::config::PostgresSettings::defaults, |c| {
        c.postgres.clone()
    });
    let Some(t) = config::target(&settings, existing.map(|c| c.path.as_path()), env)? else {
        return Ok(None);
    };
    tracing::info!(
        "target {} ({}): reading its catalog, read-only",
        t.display,
        t.origin
    );
    let mut report = TargetReport {
        display: t.display.clone(),
        origin: t.origin.clone(),
        schema: schema.to_owned(),
        tables: Vec::new(),
        error: None,
    };
    let read = (|| -> Result<BTreeMap<String, TargetTable>> {
        let mut c = crate::pg::connect(&t)?;
        let mut tx = c
            .build_transaction()
            .read_only(true)
            .start()
            .map_err(|e| Error::pg("starting a read-only transaction", &t.display, e))?;
        let tables = catalog::read_tables(&mut tx, schema)?;
        let _ = tx.rollback();
        Ok(tables)
    })();
    let tables = match read {
        Ok(t) => t,
        Err(e) => {
            undecided.push(format!(
                "the target {} could not be read ({}: {}): run init again once it can, to check its tables",
                t.display,
                e.code(),
                crate::redact::text(&e.to_string())
            ));
            report.error = Some(crate::redact::text(&e.to_string()));
            return Ok(Some(report));
        }
    };
    // The sessions table: the columns that carry values, with the kinds of their values.
    let sessions_cols: Vec<SourceColumn> = shape
        .sessions
        .stored_columns()
        .zip(scans.iter().zip(choices))
        .filter(|(c, _)| !shape.ignored.contains(&c.name))
        .filter(|(c, _)| shape.mapping.field_of(&c.name) != Some(Field::State))
        .map(|(c, (s, ch))| SourceColumn {
            name: c.name.clone(),
            kind: ch.kind,
            values: s.values(),
            nulls: s.nulls,
            max_chars: s.max_chars,
        })
        .collect();
    let mut plan: Vec<(String, Vec<SourceColumn>, Vec<String>)> = Vec::new();
    for t in &shape.parents {
        plan.push((
            t.name.clone(),
            source_columns(&copied[&t.name]),
            t.primary_key.clone(),
        ));
    }
    let id = shape.mapping.column(Field::Id).unwrap_or("id").to_owned();
    plan.push((shape.sessions.name.clone(), sessions_cols, vec![id]));
    for t in &shape.children {
        plan.push((
            t.name.clone(),
            source_columns(&copied[&t.name]),
            t.primary_key.clone(),
        ));
    }
    let updated_kind = shape
        .mapping
        .column(Field::UpdatedAt)
        .and_then(|u| shape.sessions.stored_columns().position(|c| c.name == u))
        .map_or(SourceKind::AwareTimestamp, |i| choices[i].kind);
    let state_cols = vec![
        SourceColumn {
            name: "session_id".into(),
            kind: SourceKind::Text,
            values: 1,
            nulls: 0,
            max_chars: 0,
        },
        SourceColumn {
            name: "state".into(),
            kind: SourceKind::Json,
            values: 1,
            nulls: 0,
            max_chars: 0,
        },
        SourceColumn {
            name: "updated_at".into(),
            kind: if updated_kind == SourceKind::Empty {
                SourceKind::AwareTimestamp
            } else {
                updated_kind
            },
            values: 1,
            nulls: 0,
            max_chars: 0,
        },
    ];
    plan.push((
        "session_state".into(),
        state_cols,
        vec!["session_id".into()],
    ));
    for (name, cols, key) in plan {
        let note = match tables.get(&name) {
            None => TargetNote {
                table: name.clone(),
                exists: false,
                fit: Fit {
                    misfits: Vec::new(),
                    notes: vec!["not there yet: sessiondb creates it".into()],
                },
                gin_index: None,
            },
            Some(tt) => {
                let fit = catalog::fit(tt, &cols, &key, &app.fill);
                let gin_index = (name == "session_state")
                    .then(|| tt.gin_on("state", opclass).map(|i| i.name.clone()))
                    .flatten();
                for m in &fit.misfits {
                    undecided.push(format!(
                        "the target's {}{} does not fit: {}; fix: {}",
                        m.table,
                        m.column
                            .as_ref()
                            .map(|c| format!(".{c}"))
                            .unwrap_or_default(),
                        m.message,
                        m.fix
                    ));
                }
                TargetNote {
                    table: name.clone(),
                    exists: true,
                    fit,
                    gin_index,
                }
            }
        };
        report.tables.push(note);
    }
    Ok(Some(report))
}

// ---- the proposed text -------------------------------------------------------------------

/// A TOML string literal.
fn lit(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `path` as the config writes it: relative to the config's folder when inside it.
fn rel(path: &Path, out: &Path) -> String {
    let dir = out.parent().unwrap_or(Path::new("/"));
    match path.strip_prefix(dir) {
        Ok(r) if !r.as_os_str().is_empty() => r.display().to_string(),
        _ => path.display().to_string(),
    }
}

/// One line of comment, whatever the text holds.
fn comment(out: &mut String, indent: &str, text: &str) {
    for line in text.lines() {
        let clean: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let _ = writeln!(out, "{indent}# {clean}");
    }
}

/// One column in a comment: its declared type, and the type sessiondb would give it.
fn column_line(o: &mut String, indent: &str, c: &ColumnNote) {
    comment(
        o,
        "",
        &format!(
            "{indent}{} {}{} -> {} ({})",
            q(&c.name),
            if c.declared.is_empty() {
                "(no type)"
            } else {
                &c.declared
            },
            if c.not_null { " NOT NULL" } else { "" },
            c.choice.pg,
            c.choice.reason
        ),
    );
    if let Some(w) = &c.choice.warning {
        comment(o, "", &format!("{indent}  REVIEW: {w}"));
    }
}

impl Inspection {
    /// The proposed `sessiondb.toml`, every guess explained in a comment.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let out = &self.out;
        comment(
            &mut o,
            "",
            &format!(
                "sessiondb configuration proposed by `sessiondb init` for {}.\nReview every line marked REVIEW, then: sessiondb check, sessiondb preflight.\nPaths are relative to this file.",
                self.sqlite.path.display()
            ),
        );
        if !self.undecided.is_empty() {
            o.push('\n');
            comment(&mut o, "", "REVIEW: init could not decide:");
            for u in &self.undecided {
                comment(&mut o, "", &format!("  - {u}"));
            }
        }
        o.push_str("\n[sessiondb]\n");
        comment(
            &mut o,
            "",
            "What the application uses now; switch it with `set-default`, never by hand.",
        );
        o.push_str("backend = \"sqlite\"\n");

        o.push_str("\n[sqlite]\n");
        let _ = writeln!(o, "path = {}", lit(&rel(&self.sqlite.path, out)));
        comment(
            &mut o,
            "",
            &format!(
                "found {}; {} table(s): {}",
                self.sqlite.how,
                self.tables_in_database.len(),
                self.tables_in_database
                    .iter()
                    .map(|t| q(t))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        match &self.sessions_dir {
            Some(d) => {
                let _ = writeln!(o, "sessions_dir = {}", lit(&rel(&d.path, out)));
                comment(
                    &mut o,
                    "",
                    &format!(
                        "{}; {} of {} session(s) have <id>/state.json",
                        d.how, self.state_files, self.rows
                    ),
                );
            }
            None => {
                o.push_str("sessions_dir = \"sessions\"\n");
                comment(
                    &mut o,
                    "",
                    "REVIEW: no sessions folder was found; this is the default",
                );
            }
        }
        let _ = writeln!(o, "table = {}", lit(&self.table));
        comment(&mut o, "", &format!("{} row(s)", self.rows));
        if self.app.copy_tables.is_empty() {
            o.push_str("copy_tables = []\n");
        } else {
            let list = self
                .app
                .copy_tables
                .iter()
                .map(|t| lit(t))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(o, "copy_tables = [{list}]");
        }
        if !self.parents.is_empty() || !self.children.is_empty() {
            comment(
                &mut o,
                "",
                "copied with the sessions (found by foreign key, parents first; every row and column):",
            );
            for t in self.parents.iter().chain(&self.children) {
                comment(
                    &mut o,
                    "",
                    &format!(
                        "  {} — {} row(s), primary key ({}), {}",
                        q(&t.name),
                        t.rows,
                        t.primary_key.join(", "),
                        t.via
                    ),
                );
                for c in &t.columns {
                    column_line(&mut o, "    ", c);
                }
            }
        }
        if !self.other_tables.is_empty() {
            comment(&mut o, "", "other tables, not copied:");
            for (t, what) in &self.other_tables {
                comment(&mut o, "", &format!("  {} — {what}", q(t)));
            }
        }
        o.push_str("ignore_columns = []\n");
        comment(
            &mut o,
            "",
            "source columns to leave behind on purpose (warned; rollback does not restore them)",
        );

        o.push_str("\n[sqlite.columns]\n");
        comment(
            &mut o,
            "",
            "sessiondb's fields -> the application's columns; \"\" = absent. A field not listed maps to the column of its own name.",
        );
        let explicit: Vec<&Guess> = self.guesses.iter().filter(|g| g.explicit).collect();
        for g in &self.guesses {
            let value = lit(g.column.as_deref().unwrap_or(""));
            if g.explicit {
                let _ = writeln!(o, "{} = {value}", g.field);
                comment(&mut o, "  ", &g.why);
            } else {
                let _ = writeln!(
                    o,
                    "# {} = {}",
                    g.field,
                    lit(g.column.as_deref().unwrap_or(""))
                );
                comment(&mut o, "  ", &g.why);
            }
        }
        if explicit.is_empty() {
            comment(
                &mut o,
                "",
                "every field is at the column of its own name: the default shape of SPEC §1, nothing to map",
            );
        }
        if !self.extras.is_empty() {
            comment(
                &mut o,
                "",
                "extra columns, carried as they are (the type is the one sessiondb gives a table it creates):",
            );
            for c in &self.extras {
                column_line(&mut o, "  ", c);
            }
        }

        if let Some(j) = &self.json {
            o.push_str("\n[json]\n");
            let _ = writeln!(o, "path = {}", lit(&rel(&j.path, out)));
            if let Some(k) = &self.json_keys {
                comment(
                    &mut o,
                    "",
                    &format!(
                        "{}; {} record(s), keys of the first {}: {}",
                        j.how,
                        k.records,
                        k.sampled,
                        k.keys.keys().map(|k| q(k)).collect::<Vec<_>>().join(", ")
                    ),
                );
            }
            let explicit: Vec<&Guess> = self.json_guesses.iter().filter(|g| g.explicit).collect();
            if !explicit.is_empty() {
                o.push_str("\n[json.fields]\n");
                comment(
                    &mut o,
                    "",
                    "sessiondb's fields -> the records' keys (reading a mapped JSON store is not wired yet)",
                );
                for g in explicit {
                    let _ = writeln!(
                        o,
                        "{} = {}",
                        g.field,
                        lit(g.column.as_deref().unwrap_or(""))
                    );
                    comment(&mut o, "  ", &g.why);
                }
            }
        }

        o.push_str("\n[postgres]\n");
        let _ = writeln!(o, "url_env = {}", lit(&self.url_env));
        comment(
            &mut o,
            "",
            "the variable that holds the target's URL; never put a password in this file",
        );
        let _ = writeln!(o, "schema = {}", lit(&self.postgres_schema));
        let _ = writeln!(o, "gin_opclass = {}", lit(&self.gin_opclass));
        match &self.target {
            None => comment(
                &mut o,
                "",
                &format!(
                    "no target configured (${} is not a PostgreSQL URL): run init again with it set to check the target's tables",
                    self.url_env
                ),
            ),
            Some(t) => {
                comment(
                    &mut o,
                    "",
                    &format!(
                        "target {} (from {}), schema {}:",
                        t.display, t.origin, t.schema
                    ),
                );
                if let Some(e) = &t.error {
                    comment(&mut o, "", &format!("  REVIEW: could not be read: {e}"));
                }
                for n in &t.tables {
                    let state = if !n.exists {
                        "not there yet: sessiondb creates it".to_owned()
                    } else if n.fit.fits() {
                        format!(
                            "exists and fits{}",
                            n.gin_index
                                .as_ref()
                                .map(|g| format!(
                                    "; its GIN index {} is used, not duplicated",
                                    q(g)
                                ))
                                .unwrap_or_default()
                        )
                    } else {
                        format!(
                            "exists and does NOT fit ({} problem(s))",
                            n.fit.misfits.len()
                        )
                    };
                    comment(&mut o, "", &format!("  {}: {state}", q(&n.table)));
                    for m in &n.fit.misfits {
                        comment(
                            &mut o,
                            "",
                            &format!(
                                "    REVIEW {}: {}; fix: {}",
                                m.column.as_deref().unwrap_or(&m.table),
                                m.message,
                                m.fix
                            ),
                        );
                    }
                }
            }
        }
        let fills: Vec<(&str, &str)> = self
            .target
            .iter()
            .flat_map(|t| &t.tables)
            .flat_map(|n| &n.fit.misfits)
            .filter(|m| m.message.contains("nothing fills it"))
            .filter_map(|m| m.column.as_deref().map(|c| (m.table.as_str(), c)))
            .collect();
        o.push_str("\n[postgres.fill]\n");
        comment(
            &mut o,
            "",
            "constants for NOT NULL target columns that nothing fills, as \"table.column\" = value",
        );
        for (t, c) in fills {
            let _ = writeln!(
                o,
                "# {} = \"\"   # REVIEW: choose the value",
                lit(&format!("{t}.{c}"))
            );
        }

        o.push_str("\n[backup]\n");
        o.push_str("dir = \"backups\"\n");
        comment(&mut o, "", "one timestamped folder per backup, mode 0700");
        o
    }

    /// Check the proposed text with the real parser and shape reader: it must parse,
    /// and its mapping must resolve against the database.
    pub fn validate(&self, text: &str, env: &Env) -> Result<(Config, Shape)> {
        let cfg = Config::parse(&self.out, text, env)?;
        let s = cfg.sqlite.as_ref().ok_or_else(|| Error::ConfigInvalid {
            path: self.out.clone(),
            message: "the proposed config has no [sqlite] table (a bug in init)".into(),
        })?;
        let conn = sqlite::open(&s.path)?;
        let shape = Shape::read(&conn, &s.path, &self.out, &cfg.app)?;
        Ok((cfg, shape))
    }
}

/// How the destination was found to be, before writing.
fn check_destination(path: &Path, force: bool) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Unreadable { path: path.to_path_buf(), source: e }),
        Ok(m) if m.file_type().is_symlink() => Err(Error::ConfigExists {
            path: path.to_path_buf(),
            why: "is a symbolic link; init never writes through one (write to the file it points at with --out)".into(),
        }),
        Ok(m) if !m.is_file() => Err(Error::ConfigExists {
            path: path.to_path_buf(),
            why: "exists and is not a regular file (a folder, a FIFO or a device)".into(),
        }),
        Ok(_) if !force => Err(Error::ConfigExists {
            path: path.to_path_buf(),
            why: "exists; init never replaces a config without --force (or use --print to see the proposal)".into(),
        }),
        Ok(_) => Ok(true),
    }
}

/// Write the proposed config to `path` atomically (temp file, fsync, rename). An
/// existing file is replaced only with `force`, and kept beside it as
/// `<name>.<UTC time>.bak`, whose path is returned.
pub fn write_config(path: &Path, text: &str, force: bool) -> Result<Option<PathBuf>> {
    let replacing = check_destination(path, force)?;
    let mut kept = None;
    if replacing {
        let old = std::fs::read(path).map_err(|e| Error::Unreadable {
            path: path.to_path_buf(),
            source: e,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sessiondb.toml".into());
        let bak = path.with_file_name(format!(
            "{name}.{}.bak",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ")
        ));
        crate::fsutil::write_atomic(&bak, &old, 0o600).map_err(|e| Error::Write {
            path: bak.clone(),
            source: e,
        })?;
        kept = Some(bak);
    }
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o644).map_err(|e| Error::Write {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(kept)
}
