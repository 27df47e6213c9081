//! Configuration (SPEC §3): discovery, the TOML file, the environment, the PostgreSQL
//! target, and the runtime gating. Everything is resolved here, before any side effect;
//! `Resolved::describe` says on stderr where each setting came from.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::redact;
use crate::report::Finding;
use crate::source::fields::Raw;
use crate::source::shape::Field;

pub const DEFAULT_FILE: &str = "sessiondb.toml";
pub const DEFAULT_URL_ENV: &str = "DATABASE_URL";
/// The runtime store's pool without `postgres.pool_size` / `DB_POOL_SIZE`.
pub const DEFAULT_POOL_SIZE: u32 = 10;
/// Connections beyond the pool without `postgres.max_overflow` / `DB_MAX_OVERFLOW`.
pub const DEFAULT_MAX_OVERFLOW: u32 = 20;

/// `maintenance_work_mem` for the GIN index build after a load into an empty target,
/// without `postgres.index_build_memory`, in kB. Small on purpose: measured on the
/// bench's data (README, issue 19.3) the build is fastest at 4–8 MB and slowest at
/// 512 MB (8 MB: about 0.7× the time, and a smaller index), its accumulator's tree
/// staying in the CPU cache.
pub const DEFAULT_INDEX_BUILD_MEMORY_KB: u64 = 8 * 1024;

/// The bounds of `postgres.index_build_memory`, in kB: PostgreSQL's own minimum for
/// `maintenance_work_mem` (1 MB) and 2 GB.
pub const INDEX_BUILD_MEMORY_KB: std::ops::RangeInclusive<u64> = 1024..=2 * 1024 * 1024;
/// The target's schema without `postgres.schema`.
pub const DEFAULT_SCHEMA: &str = "public";

/// A snapshot of the environment, so resolution is a pure function of its inputs.
#[derive(Debug, Clone, Default)]
pub struct Env(pub HashMap<String, String>);

impl Env {
    pub fn from_process() -> Env {
        Env(std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect())
    }
    /// A variable, treating an empty value as unset.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
    Json,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Json => "json",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GinOpclass {
    JsonbOps,
    JsonbPathOps,
}

impl GinOpclass {
    pub fn as_sql(self) -> &'static str {
        match self {
            GinOpclass::JsonbOps => "jsonb_ops",
            GinOpclass::JsonbPathOps => "jsonb_path_ops",
        }
    }
}

/// How the load's sessions compress the values PostgreSQL TOASTs (the large states):
/// `lz4` (the default where the server supports it, PostgreSQL 14+ built with lz4: a
/// faster load and faster reads), `pglz`, or `server` (whatever the server's
/// `default_toast_compression` says). Invisible to the application: values read back
/// the same; only `pg_column_compression` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToastCompression {
    Lz4,
    Pglz,
    Server,
}

impl ToastCompression {
    /// The value for `default_toast_compression`, `None` for the server's own.
    pub fn setting(self) -> Option<&'static str> {
        match self {
            ToastCompression::Lz4 => Some("lz4"),
            ToastCompression::Pglz => Some("pglz"),
            ToastCompression::Server => None,
        }
    }
}

/// When a load into an empty target builds the GIN index on `session_state.state`
/// (`postgres.index_build`). `during_load` (the default): the index is created empty
/// before the load, the COPY streams' inserts fill its pending list and each stream's
/// server process moves it into the index as it fills, so the index work is shared by
/// as many processes as there are streams; what is left is moved at the end
/// (`gin_clean_pending_list`). `after_load`: one `CREATE INDEX` after the load, which
/// PostgreSQL 15 runs in one process while the other cores wait; it leaves a smaller
/// index (the pending list's pages stay in the index file, free for its growth after
/// VACUUM). Measured in README "A faster load". The application sees the same index
/// either way: same definition, no reloptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexBuildTiming {
    DuringLoad,
    AfterLoad,
}

// ---- the file, as written ------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    sessiondb: Option<FileMain>,
    sqlite: Option<FileSqlite>,
    json: Option<FileJson>,
    postgres: Option<FilePostgres>,
    backup: Option<FileBackup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMain {
    backend: Backend,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSqlite {
    path: String,
    sessions_dir: Option<String>,
    table: Option<String>,
    copy_tables: Option<Vec<String>>,
    ignore_columns: Option<Vec<String>>,
    columns: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJson {
    path: Option<String>,
    fields: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilePostgres {
    url_env: Option<String>,
    url: Option<String>,
    schema: Option<String>,
    pool_size: Option<u32>,
    max_overflow: Option<u32>,
    gin_opclass: Option<GinOpclass>,
    toast_compression: Option<ToastCompression>,
    index_build_memory: Option<String>,
    index_build: Option<IndexBuildTiming>,
    fill: Option<BTreeMap<String, toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackup {
    dir: Option<String>,
}

// ---- resolved ------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct SqliteSource {
    pub path: PathBuf,
    pub sessions_dir: PathBuf,
}

#[derive(Clone)]
pub struct PostgresSettings {
    pub url_env: String,
    /// `postgres.url` from the file (a secret at rest: warned).
    pub url_in_file: Option<String>,
    pub schema: String,
    pub pool_size: u32,
    pub max_overflow: u32,
    pub gin_opclass: GinOpclass,
    /// `postgres.toast_compression`: how the load's sessions compress large values.
    pub toast_compression: ToastCompression,
    /// `postgres.index_build_memory`: the memory of the GIN index work of a load into an
    /// empty target, in kB (`maintenance_work_mem` of the build or of the final move of
    /// the pending list; shared by the COPY streams while they fill it).
    pub index_build_memory_kb: u64,
    /// `postgres.index_build`: when that load builds the GIN index.
    pub index_build: IndexBuildTiming,
}

impl PostgresSettings {
    /// The settings of a step run without a config file: `$DATABASE_URL`, schema
    /// `public`, the default pool.
    pub fn defaults() -> PostgresSettings {
        PostgresSettings {
            url_env: DEFAULT_URL_ENV.to_owned(),
            url_in_file: None,
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: DEFAULT_POOL_SIZE,
            max_overflow: DEFAULT_MAX_OVERFLOW,
            gin_opclass: GinOpclass::JsonbOps,
            toast_compression: ToastCompression::Lz4,
            index_build_memory_kb: DEFAULT_INDEX_BUILD_MEMORY_KB,
            index_build: IndexBuildTiming::DuringLoad,
        }
    }
}

impl fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url_env", &self.url_env)
            .field("url_in_file", &self.url_in_file.as_deref().map(redact::url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("max_overflow", &self.max_overflow)
            .field("gin_opclass", &self.gin_opclass)
            .field("toast_compression", &self.toast_compression)
            .field("index_build_memory_kb", &self.index_build_memory_kb)
            .field("index_build", &self.index_build)
            .finish()
    }
}

/// The default sessions table (SPEC §1).
pub const DEFAULT_TABLE: &str = "sessions";

/// How the application's own schema is read (SPEC §9): `sqlite.table`,
/// `sqlite.copy_tables`, `sqlite.ignore_columns`, `[sqlite.columns]`, `[json.fields]`,
/// `[postgres.fill]`. Checked here against each other; checked against the database by
/// `source::shape` (a column named here that the table lacks is `config_invalid` there).
#[derive(Debug, Clone, PartialEq)]
pub struct AppSchema {
    /// The sessions table (`sqlite.table`, default `sessions`).
    pub table: String,
    /// More tables copied as they are (FK parents are found without being named).
    pub copy_tables: Vec<String>,
    /// Source columns deliberately left behind (warned, never carried).
    pub ignore_columns: Vec<String>,
    /// `[sqlite.columns]` as written: field → column, `""` for absent. A field not
    /// named maps to the column of its own name when there is one.
    pub columns: BTreeMap<Field, String>,
    /// `[json.fields]` as written: field → the JSON store record's key, `""` for absent.
    pub json_fields: BTreeMap<Field, String>,
    /// `[postgres.fill]`: constants for NOT NULL target columns nothing fills.
    pub fill: Vec<Fill>,
}

/// One `[postgres.fill]` constant: `"table.column" = value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fill {
    pub table: String,
    pub column: String,
    /// The constant, as a source value: converted to the column's type like any other.
    pub value: Raw,
}

impl Default for AppSchema {
    fn default() -> AppSchema {
        AppSchema {
            table: DEFAULT_TABLE.to_owned(),
            copy_tables: Vec::new(),
            ignore_columns: Vec::new(),
            columns: BTreeMap::new(),
            json_fields: BTreeMap::new(),
            fill: Vec::new(),
        }
    }
}

impl AppSchema {
    /// The settings that make this more than SPEC §1's default tables: an empty list
    /// when every one is absent or says what the default says (`table = "sessions"`,
    /// `cost = "cost"`).
    pub fn customised(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.table != DEFAULT_TABLE {
            keys.push("sqlite.table");
        }
        if !self.copy_tables.is_empty() {
            keys.push("sqlite.copy_tables");
        }
        if !self.ignore_columns.is_empty() {
            keys.push("sqlite.ignore_columns");
        }
        if self.columns.iter().any(|(f, c)| c != f.name()) {
            keys.push("[sqlite.columns]");
        }
        // `[json.fields]` is not among them: it says how the JSON store's records are
        // read (`source::JsonFields`, applied wherever they are), not what the tables
        // are, so a store mapped by it alone is loaded into SPEC §2's tables.
        if !self.fill.is_empty() {
            keys.push("[postgres.fill]");
        }
        keys
    }
}

/// The steps that read a store through its [`AppSchema`] today. Every other step reads
/// SPEC §1's default table only, so it refuses a config that maps another shape rather
/// than read the wrong columns ([`Config::require_default_schema`]).
pub const SCHEMA_AWARE_STEPS: [&str; 9] = [
    "check",
    "init",
    "generate-fixture",
    "preflight",
    "backup",
    "migrate-state",
    "verify",
    "set-default",
    "rollback",
];

/// The configuration file, resolved: paths absolute, environment overrides applied.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file (absolute).
    pub path: PathBuf,
    pub backend: Backend,
    pub sqlite: Option<SqliteSource>,
    pub json_path: Option<PathBuf>,
    /// How the application's own schema is read (SPEC §9).
    pub app: AppSchema,
    pub postgres: PostgresSettings,
    pub backup_dir: PathBuf,
    /// Warnings raised while resolving (`json_backend_deprecated`, `secret_in_config`...).
    pub warnings: Vec<Finding>,
    /// Lines for stderr: where each setting came from.
    pub provenance: Vec<String>,
}

/// The `secret_in_config` warning: a password at rest in the config file, and, when the
/// file's group or others have any access to it (`mode & 0o077`), who can read it and
/// the command that closes it.
fn secret_in_config(path: &Path, url_env: &str, mode: Option<u32>) -> Finding {
    let at_rest = format!(
        "{}: postgres.url holds a password (a secret at rest)",
        path.display()
    );
    let message = match mode.map(|m| m & 0o777).filter(|m| m & 0o077 != 0) {
        Some(m) => {
            let who = if m & 0o004 != 0 {
                "every user of this machine can read it"
            } else if m & 0o040 != 0 {
                "its group can read it"
            } else {
                "its group or other users have access to it"
            };
            format!(
                "{at_rest}, and the file is mode {m:04o}: {who}. Run `chmod 600 {}`, and prefer ${url_env}",
                shell_word(&path.display().to_string())
            )
        }
        None => format!("{at_rest}; prefer ${url_env}"),
    };
    Finding::new("secret_in_config", message).path(path)
}

/// `s` as one shell word: as it is when that is safe, else single-quoted.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Where the config file is, and how it was found.
pub fn discover(flag: Option<&Path>, env: &Env) -> (PathBuf, String) {
    if let Some(p) = flag {
        return (p.to_path_buf(), "from --config".to_owned());
    }
    if let Some(p) = env.get("SESSIONDB_CONFIG") {
        return (PathBuf::from(p), "from $SESSIONDB_CONFIG".to_owned());
    }
    (
        PathBuf::from(DEFAULT_FILE),
        format!("the default ./{DEFAULT_FILE}"),
    )
}

impl Config {
    /// Find, read and resolve the config file.
    pub fn load(flag: Option<&Path>, env: &Env) -> Result<Config> {
        let (path, how) = discover(flag, env);
        let Some(text) = read_text(&path)? else {
            return Err(Error::ConfigNotFound { path, how });
        };
        let abs = std::path::absolute(&path).map_err(|e| Error::Unreadable {
            path: path.clone(),
            source: e,
        })?;
        // Who else may read it: a password in a file others can read is worse.
        let mode = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&path).ok().map(|m| m.mode())
        };
        let mut c = Config::parse_file(&abs, &text, env, mode)?;
        c.provenance
            .insert(0, format!("config file {} ({how})", abs.display()));
        Ok(c)
    }

    /// Resolve a config from its text; `path` is where it lives (relative paths in it
    /// resolve against its folder).
    pub fn parse(path: &Path, text: &str, env: &Env) -> Result<Config> {
        Config::parse_file(path, text, env, None)
    }

    /// [`Config::parse`], knowing the file's mode (`st_mode`) when it was read from one.
    fn parse_file(path: &Path, text: &str, env: &Env, mode: Option<u32>) -> Result<Config> {
        let file: FileConfig = toml::from_str(text).map_err(|e| config_invalid(path, text, &e))?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };
        let mut warnings = Vec::new();
        let mut provenance = Vec::new();

        let backend = match &file.sessiondb {
            Some(m) => m.backend,
            None => {
                return Err(Error::ConfigInvalid {
                    path: path.to_path_buf(),
                    message: "missing [sessiondb] table: expected `backend = \"sqlite\" | \"postgres\" | \"json\"`".into(),
                });
            }
        };
        if backend == Backend::Json {
            warnings.push(Finding::new(
                "json_backend_deprecated",
                format!("{}: backend = \"json\" is deprecated; the JSON store is read-only. Migrate to postgres.", path.display()),
            ));
        }
        let sqlite = file.sqlite.as_ref().map(|s| SqliteSource {
            path: resolve(&s.path),
            sessions_dir: resolve(s.sessions_dir.as_deref().unwrap_or("sessions")),
        });
        let json_path = file
            .json
            .as_ref()
            .and_then(|j| j.path.as_deref())
            .map(resolve);
        let mut fp = file.postgres.unwrap_or_default();
        let app = app_schema(
            path,
            file.sqlite.as_ref(),
            file.json.as_ref(),
            fp.fill.take(),
        )?;
        let url_env = fp.url_env.unwrap_or_else(|| DEFAULT_URL_ENV.to_owned());
        if url_env.is_empty()
            || !url_env
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Error::ConfigInvalid {
                path: path.to_path_buf(),
                message: format!(
                    "postgres.url_env = {url_env:?}: expected an environment variable name"
                ),
            });
        }
        if let Some(u) = &fp.url {
            redact::register_in(u);
            if let Some(pw) = url_password(u) {
                redact::register_secret(&pw);
                warnings.push(secret_in_config(path, &url_env, mode));
            }
        }
        let pool_size = env_u32(
            env,
            "DB_POOL_SIZE",
            fp.pool_size.unwrap_or(DEFAULT_POOL_SIZE),
            &mut provenance,
        )?;
        let max_overflow = env_u32(
            env,
            "DB_MAX_OVERFLOW",
            fp.max_overflow.unwrap_or(DEFAULT_MAX_OVERFLOW),
            &mut provenance,
        )?;
        let index_build_memory_kb = match &fp.index_build_memory {
            None => DEFAULT_INDEX_BUILD_MEMORY_KB,
            Some(v) => memory_kb(v).ok_or_else(|| Error::ConfigInvalid {
                path: path.to_path_buf(),
                message: format!(
                    "postgres.index_build_memory = {v:?}: expected a size from 1MB to 2GB with its unit (kB, MB or GB), e.g. \"8MB\""
                ),
            })?,
        };
        let schema = fp.schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_owned());
        if schema.is_empty() || schema.contains('\0') {
            return Err(Error::ConfigInvalid {
                path: path.to_path_buf(),
                message: "postgres.schema must be a non-empty name".into(),
            });
        }
        let backup_dir = resolve(
            file.backup
                .and_then(|b| b.dir)
                .as_deref()
                .unwrap_or("backups"),
        );
        Ok(Config {
            path: path.to_path_buf(),
            backend,
            sqlite,
            json_path,
            app,
            postgres: PostgresSettings {
                url_env,
                url_in_file: fp.url,
                schema,
                pool_size,
                max_overflow,
                gin_opclass: fp.gin_opclass.unwrap_or(GinOpclass::JsonbOps),
                toast_compression: fp.toast_compression.unwrap_or(ToastCompression::Lz4),
                index_build_memory_kb,
                index_build: fp.index_build.unwrap_or(IndexBuildTiming::DuringLoad),
            },
            backup_dir,
            warnings,
            provenance,
        })
    }

    /// The report's `source` (SPEC §5): the config and the stores it names.
    pub fn source_json(&self) -> serde_json::Value {
        serde_json::json!({
            "config": self.path,
            "backend": self.backend,
            "sqlite": self.sqlite.as_ref().map(|s| &s.path),
            "sessions_dir": self.sqlite.as_ref().map(|s| &s.sessions_dir),
            "json": self.json_path,
        })
    }

    /// The folder that holds the config file.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Refuse, for a step that reads only SPEC §1's default table, a config that maps
    /// the application's own schema: it would read the wrong table or columns.
    pub fn require_default_schema(&self, step: &str) -> Result<()> {
        let keys = self.app.customised();
        if keys.is_empty() || SCHEMA_AWARE_STEPS.contains(&step) {
            return Ok(());
        }
        Err(Error::SchemaNotWired {
            step: step.to_owned(),
            config: self.path.clone(),
            keys: keys.join(", "),
        })
    }
}

fn invalid(path: &Path, message: String) -> Error {
    Error::ConfigInvalid {
        path: path.to_path_buf(),
        message,
    }
}

/// A table or column name from the config: not empty, no NUL (any other character is
/// fine: names are always quoted).
fn check_name(path: &Path, key: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid(path, format!("{key} is empty: expected a name")));
    }
    if name.contains('\0') {
        return Err(invalid(
            path,
            format!("{key} {name:?} holds a NUL character"),
        ));
    }
    Ok(())
}

/// A list of names, each valid, none twice (SQLite's names ignore ASCII case).
fn name_list(path: &Path, key: &str, names: Option<&Vec<String>>) -> Result<Vec<String>> {
    let names = names.cloned().unwrap_or_default();
    for (i, n) in names.iter().enumerate() {
        check_name(path, &format!("{key}[{i}]"), n)?;
        if names[..i].iter().any(|m| m.eq_ignore_ascii_case(n)) {
            return Err(invalid(path, format!("{key} names {n:?} twice")));
        }
    }
    Ok(names)
}

/// `[sqlite.columns]` or `[json.fields]`: known fields, `id` present if named, no
/// column or key given to two fields.
fn field_map(
    path: &Path,
    section: &str,
    map: Option<&BTreeMap<String, String>>,
) -> Result<BTreeMap<Field, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in map.into_iter().flatten() {
        let field = Field::parse(k).ok_or_else(|| {
            invalid(
                path,
                format!(
                    "{section}: {k:?} is not one of sessiondb's fields ({})",
                    Field::names()
                ),
            )
        })?;
        if v.contains('\0') {
            return Err(invalid(
                path,
                format!("{section} {k} holds a NUL character"),
            ));
        }
        if field == Field::Id && v.is_empty() {
            return Err(invalid(
                path,
                format!("{section} id = \"\": the id is the one field that cannot be absent"),
            ));
        }
        if !v.is_empty() {
            if let Some((other, _)) = out
                .iter()
                .find(|(_, c): &(&Field, &String)| c.eq_ignore_ascii_case(v))
            {
                return Err(invalid(
                    path,
                    format!("{section}: {other} and {k} are both mapped to {v:?}"),
                ));
            }
        }
        out.insert(field, v.clone());
    }
    Ok(out)
}

/// `[postgres.fill]`: `"table.column" = value`, or `[postgres.fill.table]` with
/// `column = value`. Values: strings, integers, floats, booleans, dates.
fn fill_list(path: &Path, fill: Option<BTreeMap<String, toml::Value>>) -> Result<Vec<Fill>> {
    let mut out: Vec<Fill> = Vec::new();
    let mut add = |table: &str, column: &str, v: &toml::Value| -> Result<()> {
        let key = format!("[postgres.fill] {table}.{column}");
        check_name(path, &key, table)?;
        check_name(path, &key, column)?;
        let value = match v {
            toml::Value::String(s) => Raw::Text(s.clone()),
            toml::Value::Integer(i) => Raw::Integer(*i),
            toml::Value::Float(f) => Raw::Real(*f),
            toml::Value::Boolean(b) => Raw::Integer(i64::from(*b)),
            toml::Value::Datetime(d) => Raw::Text(d.to_string()),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                return Err(invalid(
                    path,
                    format!("{key}: expected a string, a number, a boolean or a date"),
                ));
            }
        };
        if out.iter().any(|f| f.table == table && f.column == column) {
            return Err(invalid(path, format!("{key} is given twice")));
        }
        out.push(Fill {
            table: table.to_owned(),
            column: column.to_owned(),
            value,
        });
        Ok(())
    };
    for (k, v) in fill.into_iter().flatten() {
        match &v {
            toml::Value::Table(t) => {
                for (column, cv) in t {
                    add(&k, column, cv)?;
                }
            }
            _ => {
                let Some((table, column)) = k.split_once('.') else {
                    return Err(invalid(
                        path,
                        format!("[postgres.fill] {k:?}: expected \"table.column\""),
                    ));
                };
                add(table, column, &v)?;
            }
        }
    }
    Ok(out)
}

fn app_schema(
    path: &Path,
    sqlite: Option<&FileSqlite>,
    json: Option<&FileJson>,
    fill: Option<BTreeMap<String, toml::Value>>,
) -> Result<AppSchema> {
    let table = sqlite
        .and_then(|s| s.table.clone())
        .unwrap_or_else(|| DEFAULT_TABLE.to_owned());
    check_name(path, "sqlite.table", &table)?;
    let copy_tables = name_list(
        path,
        "sqlite.copy_tables",
        sqlite.and_then(|s| s.copy_tables.as_ref()),
    )?;
    if let Some(t) = copy_tables.iter().find(|t| t.eq_ignore_ascii_case(&table)) {
        return Err(invalid(
            path,
            format!("sqlite.copy_tables names {t:?}, the sessions table itself"),
        ));
    }
    let ignore_columns = name_list(
        path,
        "sqlite.ignore_columns",
        sqlite.and_then(|s| s.ignore_columns.as_ref()),
    )?;
    let columns = field_map(
        path,
        "[sqlite.columns]",
        sqlite.and_then(|s| s.columns.as_ref()),
    )?;
    // A column both mapped and ignored is a contradiction. (Ignoring the column of a
    // field's own name, with the field not mapped, just leaves the field absent.)
    for (f, c) in &columns {
        if let Some(i) = ignore_columns
            .iter()
            .find(|i| !c.is_empty() && i.eq_ignore_ascii_case(c))
        {
            return Err(invalid(
                path,
                format!("{i:?} is both mapped ([sqlite.columns] {f}) and in sqlite.ignore_columns"),
            ));
        }
    }
    let json_fields = field_map(path, "[json.fields]", json.and_then(|j| j.fields.as_ref()))?;
    let fill = fill_list(path, fill)?;
    Ok(AppSchema {
        table,
        copy_tables,
        ignore_columns,
        columns,
        json_fields,
        fill,
    })
}

/// The largest config file read: a real one is a few kilobytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The text of the config file at `path`; `None` when there is none. Only a regular file
/// is read (a FIFO would block forever, a device never end: both are refused with
/// `not_regular_file`), and at most [`MAX_CONFIG_BYTES`] of it.
pub fn read_text(path: &Path) -> Result<Option<String>> {
    use std::io::Read;
    let f = match crate::fsutil::open_regular(path, true) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::read(path, e)),
    };
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::read(path, e))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::ConfigInvalid {
            path: path.to_path_buf(),
            message: format!(
                "too large: over {MAX_CONFIG_BYTES} bytes (1 MiB); a sessiondb config is a few kilobytes, is this the right file?"
            ),
        });
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| Error::Unreadable {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
        })
}

/// A size as PostgreSQL writes memory settings (`512kB`, `8MB`, `1GB`; the unit is
/// required, case as PostgreSQL has it), in kB, within [`INDEX_BUILD_MEMORY_KB`].
fn memory_kb(v: &str) -> Option<u64> {
    let v = v.trim();
    let digits = v.len() - v.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (n, unit) = v.split_at(digits);
    let scale = match unit.trim_start() {
        "kB" => 1,
        "MB" => 1024,
        "GB" => 1024 * 1024,
        _ => return None,
    };
    let kb = n.parse::<u64>().ok()?.checked_mul(scale)?;
    INDEX_BUILD_MEMORY_KB.contains(&kb).then_some(kb)
}

fn env_u32(env: &Env, name: &str, default: u32, provenance: &mut Vec<String>) -> Result<u32> {
    match env.get(name) {
        None => Ok(default),
        Some(v) => {
            let n = v.trim().parse::<u32>().map_err(|_| Error::SettingInvalid {
                name: name.to_owned(),
                message: format!("expected a whole number, got {v:?}"),
            })?;
            provenance.push(format!("{name}={n} from the environment"));
            Ok(n)
        }
    }
}

fn config_invalid(path: &Path, text: &str, e: &toml::de::Error) -> Error {
    let start = e.span().map(|s| s.start.min(text.len()));
    let line = start.map(|s| text[..s].matches('\n').count() + 1);
    // The key the line sets, never its value (`postgres.url` may hold a password).
    let key = start.and_then(|s| {
        let from = text[..s].rfind('\n').map_or(0, |i| i + 1);
        let to = text[s..].find('\n').map_or(text.len(), |i| s + i);
        let key = text[from..to].split_once('=')?.0.trim();
        (!key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.\"".contains(c)))
        .then(|| key.to_owned())
    });
    let msg = e
        .message()
        .trim()
        .replace("expected u32", "expected an integer")
        .replace("expected u64", "expected an integer");
    let message = match (line, key) {
        (Some(l), Some(k)) => format!("line {l} ({k}): {msg}"),
        (Some(l), None) => format!("line {l}: {msg}"),
        (None, _) => msg,
    };
    Error::ConfigInvalid {
        path: path.to_path_buf(),
        message,
    }
}

// ---- URLs ------------------------------------------------------------------------------

/// A database URL, normalised.
#[derive(Clone, PartialEq)]
pub enum DbUrl {
    /// A libpq connection string (URL with `postgresql://`, or keyword form).
    Postgres(String),
    /// `sqlite:///path`: the runtime backend is SQLite.
    Sqlite(PathBuf),
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbUrl::Postgres(s) => write!(f, "Postgres({})", redact::url(s)),
            DbUrl::Sqlite(p) => write!(f, "Sqlite({})", p.display()),
        }
    }
}

/// Normalise a URL: `postgres://`, `postgresql://`, `postgresql+driver://` → `postgresql://`;
/// `sqlite:///p`, `sqlite+aiosqlite:///p` → a path; a libpq keyword string as is.
pub fn normalize_url(raw: &str) -> std::result::Result<DbUrl, String> {
    let raw = raw.trim();
    let Some((scheme, rest)) = raw.split_once("://") else {
        if raw.contains('=') {
            return Ok(DbUrl::Postgres(raw.to_owned()));
        }
        return Err(
            "not a URL (expected postgresql://..., sqlite:///... or host=... keywords)".into(),
        );
    };
    let scheme = scheme.to_ascii_lowercase();
    let base = scheme.split('+').next().unwrap_or_default();
    match base {
        "postgres" | "postgresql" => Ok(DbUrl::Postgres(format!("postgresql://{rest}"))),
        "sqlite" => {
            // sqlite:///relative.db and sqlite:////absolute.db (SQLAlchemy's convention).
            let path = rest.strip_prefix('/').unwrap_or(rest);
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err("sqlite URL without a path".into());
            }
            Ok(DbUrl::Sqlite(PathBuf::from(path)))
        }
        other => Err(format!(
            "unsupported URL scheme {other:?} (expected postgresql or sqlite)"
        )),
    }
}

/// The password in a connection string, if any (percent-decoded for URLs).
pub fn url_password(s: &str) -> Option<String> {
    let cfg: postgres::Config = match normalize_url(s) {
        Ok(DbUrl::Postgres(u)) => u.parse().ok()?,
        _ => return None,
    };
    cfg.get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

// ---- the PostgreSQL target and the runtime gating ------------------------------------------

/// The PostgreSQL server to migrate into. `Debug` and `display` never show the password.
#[derive(Clone)]
pub struct Target {
    /// Everything but TLS; its `ssl_mode` is `tls.mode` as tokio-postgres knows it.
    pub pg: postgres::Config,
    /// TLS, with libpq's `sslmode` semantics (`pg::tls` builds the connector).
    pub tls: TlsSettings,
    /// The redacted connection string.
    pub display: String,
    /// Where it came from: "DATABASE_URL", "postgres.url in <file>", "libpq PG* variables".
    pub origin: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Target({} from {}, {})",
            self.display,
            self.origin,
            self.tls.describe()
        )
    }
}

// ---- TLS -----------------------------------------------------------------------------

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// Treated as `prefer` (libpq tries plain text first; the outcome is the same).
    Allow,
    /// The default: TLS when the server offers it, plain text otherwise; never verifies.
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode tokio-postgres knows: whether it asks for TLS and whether it insists.
    pub fn driver(self) -> postgres::config::SslMode {
        match self {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypted, certificate not checked (`prefer`, `require` without a root certificate).
    Nothing,
    /// The chain must lead to the root certificate; the host name is not checked
    /// (`verify-ca`, and `require` when the root certificate file exists, as in libpq).
    Chain,
    /// The chain, and the host name (or IP address) against the certificate's names.
    ChainAndHost,
}

/// A certificate or key file, and where its path came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    pub path: PathBuf,
    /// "sslrootcert in $DATABASE_URL", "PGSSLROOTCERT", "the default ~/.postgresql/root.crt".
    pub from: String,
}

/// The TLS settings of a target, resolved like libpq: the connection string, then
/// `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, then the defaults (`prefer`,
/// `~/.postgresql/root.crt`, `~/.postgresql/postgresql.crt` and `.key` when they exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// Where the mode came from ("sslmode in $DATABASE_URL", "PGSSLMODE", "the default").
    pub mode_from: String,
    pub verify: Verify,
    /// The CA certificate(s) the server's certificate must chain to; set whenever
    /// `verify` is not `Nothing` (the file may be missing: the connector says so). `None`
    /// with verification means none was given and `$HOME` is unset.
    pub root_cert: Option<TlsFile>,
    /// A client certificate (PEM) and its key, for servers that ask for one.
    pub client_cert: Option<TlsFile>,
    pub client_key: Option<TlsFile>,
}

impl TlsSettings {
    /// One line for stderr: the mode and the files, with where each came from.
    pub fn describe(&self) -> String {
        let mut s = format!("sslmode={} (from {})", self.mode, self.mode_from);
        match (&self.root_cert, self.verify) {
            (_, Verify::Nothing) => {}
            (Some(r), v) => s.push_str(&format!(
                ", {} checked against {} (from {})",
                if v == Verify::Chain {
                    "certificate chain"
                } else {
                    "certificate chain and host name"
                },
                r.path.display(),
                r.from
            )),
            (None, _) => s.push_str(", no root certificate"),
        }
        if let Some(c) = &self.client_cert {
            s.push_str(&format!(
                ", client certificate {} (from {})",
                c.path.display(),
                c.from
            ));
        }
        s
    }
}

/// The TLS keywords of a connection string, as written.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

impl TlsParams {
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Take the TLS keywords out of a connection string (tokio-postgres knows only
/// `sslmode=disable|prefer|require`, and none of the file keywords): the string without
/// them, and their values. URL form (`?sslmode=...&sslrootcert=...`, percent-decoded) or
/// keyword form (`sslmode=verify-full sslrootcert='/a b/ca.crt'`). A keyword string this
/// cannot tokenise is returned as is, for the driver's parser to report.
fn split_tls_params(conn: &str) -> std::result::Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    if let Some(i) = conn.find("://") {
        // As tokio-postgres reads a URL: the credentials end at the first '@'.
        let rest = &conn[i + 3..];
        let after_creds = rest.find('@').map_or(0, |a| a + 1);
        let Some(q) = rest[after_creds..].find('?') else {
            return Ok((conn.to_owned(), params));
        };
        let q = i + 3 + after_creds + q;
        let mut kept = Vec::new();
        for pair in conn[q + 1..].split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = redact::percent_decode(k).unwrap_or_default();
            if matches!(
                key.as_str(),
                "sslmode" | "sslrootcert" | "sslcert" | "sslkey"
            ) {
                let value = redact::percent_decode(v)
                    .ok_or_else(|| format!("{key}: the value is not UTF-8 once decoded"))?;
                params.take(&key, value);
            } else {
                kept.push(pair);
            }
        }
        let mut out = conn[..q].to_owned();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        return Ok((out, params));
    }
    let Some(words) = keyword_params(conn) else {
        return Ok((conn.to_owned(), params));
    };
    let mut out = String::new();
    for (key, value, span) in words {
        if !params.take(key, value) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&conn[span]);
        }
    }
    Ok((out, params))
}

/// The `keyword = value` pairs of a libpq keyword string, with the span each takes, as
/// tokio-postgres tokenises them (single quotes, backslash escapes); `None` when the
/// string is malformed.
fn keyword_params(s: &str) -> Option<Vec<(&str, String, std::ops::Range<usize>)>> {
    let b = s.as_bytes();
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        ws(&mut i);
        if i == b.len() {
            return Some(out);
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[start..i];
        ws(&mut i);
        if key.is_empty() || b.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        ws(&mut i);
        let mut value = Vec::new();
        let quoted = b.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        loop {
            match b.get(i) {
                None if quoted => return None,
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if !quoted && c.is_ascii_whitespace() => break,
                Some(b'\\') => {
                    value.extend(b.get(i + 1));
                    i = (i + 2).min(b.len());
                }
                Some(c) => {
                    value.push(*c);
                    i += 1;
                }
            }
        }
        out.push((key, String::from_utf8(value).ok()?, start..i));
    }
}

/// Resolve the TLS settings: `given` from the connection string (which came from
/// `origin`), then libpq's variables, then its defaults.
fn tls_settings(given: TlsParams, origin: &str, env: &Env) -> Result<TlsSettings> {
    let pick = |value: Option<String>, key: &str, var: &str| -> Option<(String, String)> {
        match value {
            Some(v) => Some((v, format!("{key} in {origin}"))),
            None => env.get(var).map(|v| (v.to_owned(), var.to_owned())),
        }
    };
    let file = |(path, from): (String, String)| TlsFile {
        path: PathBuf::from(path),
        from,
    };
    let (raw_mode, mode_from) = pick(given.sslmode, "sslmode", "PGSSLMODE")
        .unwrap_or_else(|| ("prefer".to_owned(), "the default".to_owned()));
    let mode = SslMode::parse(raw_mode.trim()).ok_or_else(|| Error::SettingInvalid {
        name: mode_from.clone(),
        message: format!(
            "sslmode {raw_mode:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        ),
    })?;
    if mode == SslMode::Disable {
        return Ok(TlsSettings {
            mode,
            mode_from,
            verify: Verify::Nothing,
            root_cert: None,
            client_cert: None,
            client_key: None,
        });
    }
    let home = env.get("HOME").map(|h| Path::new(h).join(".postgresql"));
    let default = |name: &str| {
        home.as_ref().map(|h| TlsFile {
            path: h.join(name),
            from: format!("the default ~/.postgresql/{name}"),
        })
    };
    let root = pick(given.sslrootcert, "sslrootcert", "PGSSLROOTCERT")
        .map(file)
        .or_else(|| default("root.crt"));
    let verify = match mode {
        SslMode::VerifyFull => Verify::ChainAndHost,
        SslMode::VerifyCa => Verify::Chain,
        SslMode::Require if root.as_ref().is_some_and(|r| r.path.is_file()) => Verify::Chain,
        _ => Verify::Nothing,
    };
    let client_cert = pick(given.sslcert, "sslcert", "PGSSLCERT")
        .map(file)
        .or_else(|| default("postgresql.crt").filter(|f| f.path.is_file()));
    let client_key = match &client_cert {
        None => None,
        Some(_) => pick(given.sslkey, "sslkey", "PGSSLKEY")
            .map(file)
            .or_else(|| default("postgresql.key")),
    };
    Ok(TlsSettings {
        mode,
        mode_from,
        verify,
        root_cert: root.filter(|_| verify != Verify::Nothing),
        client_cert,
        client_key,
    })
}

/// Which backend the application runs on, by the runtime gating of SPEC §3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub backend: Backend,
    pub reason: String,
}

/// The runtime gating: a PostgreSQL URL in the url variable means postgres; a SQLite URL
/// or none means sqlite + files.
pub fn runtime(settings_url_env: &str, env: &Env) -> Result<Runtime> {
    if let Some(raw) = env.get(settings_url_env) {
        // Masked wherever it turns up, even if nothing ever parses it.
        redact::register_in(raw);
    }
    match env.get(settings_url_env) {
        None => Ok(Runtime {
            backend: Backend::Sqlite,
            reason: format!("${settings_url_env} is not set"),
        }),
        Some(raw) => match normalize_url(raw) {
            Ok(DbUrl::Postgres(_)) => Ok(Runtime {
                backend: Backend::Postgres,
                reason: format!("${settings_url_env} is a PostgreSQL URL"),
            }),
            Ok(DbUrl::Sqlite(_)) => Ok(Runtime {
                backend: Backend::Sqlite,
                reason: format!("${settings_url_env} is a SQLite URL"),
            }),
            Err(m) => Err(Error::SettingInvalid {
                name: settings_url_env.to_owned(),
                message: m,
            }),
        },
    }
}

/// The drift warning when the configured backend and the runtime gating disagree.
pub fn drift(configured: Backend, rt: &Runtime, config_path: &Path) -> Option<Finding> {
    let differs = match configured {
        Backend::Json => rt.backend == Backend::Postgres,
        b => b != rt.backend,
    };
    differs.then(|| {
        Finding::new(
            "backend_drift",
            format!(
                "{} says backend = \"{configured}\" but the application would run on {} ({})",
                config_path.display(),
                rt.backend,
                rt.reason
            ),
        )
    })
}

/// Resolve the PostgreSQL target: `$url_env` (when it is a PostgreSQL URL), else
/// `postgres.url` from the file, else libpq's `PG*` variables. `None` when none is set.
pub fn target(
    settings: &PostgresSettings,
    config_path: Option<&Path>,
    env: &Env,
) -> Result<Option<Target>> {
    let from_env = env
        .get(&settings.url_env)
        .map(|raw| (raw.to_owned(), format!("${}", settings.url_env)));
    let from_file = settings.url_in_file.clone().map(|u| {
        let origin = match config_path {
            Some(p) => format!("postgres.url in {}", p.display()),
            None => "postgres.url".to_owned(),
        };
        (u, origin)
    });
    let chosen = [from_env, from_file]
        .into_iter()
        .flatten()
        .inspect(|(raw, _)| redact::register_in(raw))
        .find_map(|(raw, origin)| match normalize_url(&raw) {
            Ok(DbUrl::Postgres(u)) => Some(Ok((u, origin))),
            Ok(DbUrl::Sqlite(_)) => None,
            Err(m) => Some(Err(Error::SettingInvalid {
                name: origin,
                message: m,
            })),
        });
    let (mut pg, display, origin, given) = match chosen {
        Some(r) => {
            let (u, origin) = r?;
            let (rest, given) = split_tls_params(&u).map_err(|m| Error::SettingInvalid {
                name: origin.clone(),
                message: m,
            })?;
            let pg: postgres::Config =
                rest.parse()
                    .map_err(|e: postgres::Error| Error::SettingInvalid {
                        name: origin.clone(),
                        message: redact::text(&e.to_string()),
                    })?;
            if let Some(pw) = pg.get_password() {
                redact::register_secret(&String::from_utf8_lossy(pw));
            }
            (pg, redact::url(&u), origin, given)
        }
        None => {
            let any = [
                "PGHOST",
                "PGHOSTADDR",
                "PGPORT",
                "PGDATABASE",
                "PGUSER",
                "PGSERVICE",
            ]
            .iter()
            .any(|k| env.get(k).is_some());
            if !any {
                return Ok(None);
            }
            (
                postgres::Config::new(),
                String::new(),
                "libpq PG* variables".to_owned(),
                TlsParams::default(),
            )
        }
    };
    let tls = tls_settings(given, &origin, env)?;
    pg.ssl_mode(tls.mode.driver());
    apply_libpq_env(&mut pg, env);
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(std::time::Duration::from_secs(10));
    }
    if pg.get_application_name().is_none() {
        pg.application_name("sessiondb");
    }
    // Every connection made from this target (the commands, the writer lock, the runtime
    // store's pool, sessiond, the smoke probe) runs with this search_path from its
    // first statement.
    let options = crate::pg::startup_options(pg.get_options(), &settings.schema);
    pg.options(&options);
    let display = if display.is_empty() {
        synth_display(&pg)
    } else {
        display
    };
    Ok(Some(Target {
        pg,
        tls,
        display,
        origin,
    }))
}

/// libpq's environment defaults, for what the connection string left unset.
fn apply_libpq_env(pg: &mut postgres::Config, env: &Env) {
    if pg.get_hosts().is_empty() {
        // A `hostaddr` without a `host` is also the name TLS checks (libpq's rule).
        let addrs: Vec<String> = pg.get_hostaddrs().iter().map(|a| a.to_string()).collect();
        match env.get("PGHOST") {
            Some(h) => {
                for part in h.split(',') {
                    pg.host(part);
                }
            }
            None if !addrs.is_empty() => {
                for a in &addrs {
                    pg.host(a);
                }
            }
            None => match env.get("PGHOSTADDR") {
                Some(h) => {
                    for part in h.split(',') {
                        pg.host(part);
                    }
                }
                None => {
                    pg.host("localhost");
                }
            },
        }
    }
    if pg.get_ports().is_empty() {
        if let Some(p) = env.get("PGPORT").and_then(|p| p.parse::<u16>().ok()) {
            pg.port(p);
        }
    }
    if pg.get_user().is_none() {
        let user = env
            .get("PGUSER")
            .or(env.get("USER"))
            .unwrap_or("postgres")
            .to_owned();
        pg.user(&user);
    }
    if pg.get_dbname().is_none() {
        if let Some(d) = env.get("PGDATABASE") {
            pg.dbname(d);
        }
    }
    if pg.get_password().is_none() {
        if let Some(p) = env.get("PGPASSWORD") {
            redact::register_secret(p);
            pg.password(p);
        }
    }
    if let Some(t) = env
        .get("PGCONNECT_TIMEOUT")
        .and_then(|t| t.parse::<u64>().ok())
    {
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(std::time::Duration::from_secs(t.max(2)));
        }
    }
}

fn synth_display(pg: &postgres::Config) -> String {
    let host = pg
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(s) => s.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = pg
        .get_ports()
        .first()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let user = pg.get_user().unwrap_or_default();
    let pw = if pg.get_password().is_some() {
        format!(":{}", redact::MASK)
    } else {
        String::new()
    };
    let db = pg.get_dbname().unwrap_or_default();
    format!("postgresql://{user}{pw}@{host}{port}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env(pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    #[test]
    fn normalises_driver_suffixes() {
        assert_eq!(
            normalize_url("postgresql+asyncpg://u:p@h/db").unwrap(),
            DbUrl::Postgres("postgresql://u:p@h/db".into())
        );
        assert_eq!(
            normalize_url("postgres://h/db").unwrap(),
            DbUrl::Postgres("postgresql://h/db".into())
        );
        assert_eq!(
            normalize_url("sqlite:///data/app.db").unwrap(),
            DbUrl::Sqlite("data/app.db".into())
        );
        assert_eq!(
            normalize_url("sqlite+aiosqlite:////abs/app.db").unwrap(),
            DbUrl::Sqlite("/abs/app.db".into())
        );
        assert!(normalize_url("mysql://h/db").is_err());
    }

    #[test]
    fn gating_and_drift() {
        let p = Path::new("/x/sessiondb.toml");
        let rt = runtime(
            "DATABASE_URL",
            &env(&[("DATABASE_URL", "postgresql+asyncpg://h/db")]),
        )
        .unwrap();
        assert_eq!(rt.backend, Backend::Postgres);
        assert!(drift(Backend::Sqlite, &rt, p).is_some());
        assert!(drift(Backend::Postgres, &rt, p).is_none());
        let rt = runtime("DATABASE_URL", &env(&[("DATABASE_URL", "sqlite:///a.db")])).unwrap();
        assert_eq!(rt.backend, Backend::Sqlite);
        assert!(drift(Backend::Postgres, &rt, p).is_some());
        let rt = runtime("DATABASE_URL", &env(&[])).unwrap();
        assert!(drift(Backend::Sqlite, &rt, p).is_none());
        assert!(drift(Backend::Json, &rt, p).is_none());
    }

    /// A minimal SQLite config whose `[postgres]` sets `key` to `value` (a string), or
    /// leaves it out.
    fn with_postgres_key(key: &str, value: Option<&str>) -> Result<Config> {
        let extra = value.map_or(String::new(), |v| format!("{key} = {v:?}\n"));
        let text = format!(
            "[sessiondb]\nbackend = \"sqlite\"\n[sqlite]\npath = \"a.db\"\n[postgres]\n{extra}"
        );
        Config::parse(Path::new("/x/sessiondb.toml"), &text, &env(&[]))
    }

    #[test]
    fn index_build_is_during_the_load_unless_the_file_says_after() {
        let parse =
            |v: Option<&str>| with_postgres_key("index_build", v).map(|c| c.postgres.index_build);
        assert_eq!(parse(None).unwrap(), IndexBuildTiming::DuringLoad);
        assert_eq!(
            parse(Some("during_load")).unwrap(),
            IndexBuildTiming::DuringLoad
        );
        assert_eq!(
            parse(Some("after_load")).unwrap(),
            IndexBuildTiming::AfterLoad
        );
        match parse(Some("sometimes")) {
            Err(Error::ConfigInvalid { message, .. }) => {
                assert!(message.contains("index_build"), "{message}");
                assert!(message.contains("after_load"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn index_build_memory_takes_a_bounded_size_with_its_unit() {
        let parse = |v: Option<&str>| {
            with_postgres_key("index_build_memory", v).map(|c| c.postgres.index_build_memory_kb)
        };
        assert_eq!(parse(None).unwrap(), DEFAULT_INDEX_BUILD_MEMORY_KB);
        assert_eq!(parse(Some("64MB")).unwrap(), 64 * 1024);
        assert_eq!(parse(Some("2048kB")).unwrap(), 2048);
        assert_eq!(parse(Some("1GB")).unwrap(), 1024 * 1024);
        assert_eq!(parse(Some(" 2 GB")).unwrap(), 2 * 1024 * 1024);
        for bad in [
            "8",
            "8mb",
            "512kB",
            "3GB",
            "-1MB",
            "MB",
            "1.5GB",
            "99999999999999999999GB",
        ] {
            match parse(Some(bad)) {
                Err(Error::ConfigInvalid { message, .. }) => {
                    assert!(
                        message.contains("postgres.index_build_memory"),
                        "{bad}: {message}"
                    )
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn relative_paths_and_env_overrides() {
        let text = "[sessiondb]\nbackend = \"sqlite\"\n[sqlite]\npath = \"data/app.db\"\n[postgres]\npool_size = 3\n";
        let c = Config::parse(
            Path::new("/etc/app/sessiondb.toml"),
            text,
            &env(&[("DB_POOL_SIZE", "7")]),
        )
        .unwrap();
        assert_eq!(
            c.sqlite.as_ref().unwrap().path,
            PathBuf::from("/etc/app/data/app.db")
        );
        assert_eq!(
            c.sqlite.as_ref().unwrap().sessions_dir,
            PathBuf::from("/etc/app/sessions")
        );
        assert_eq!(c.postgres.pool_size, 7);
        assert_eq!(c.postgres.max_overflow, 20);
        assert_eq!(c.backup_dir, PathBuf::from("/etc/app/backups"));
    }

    #[test]
    fn invalid_config_names_the_line() {
        let text = "[sessiondb]\nbackend = \"mysql\"\n";
        let e = Config::parse(Path::new("/a/s.toml"), text, &env(&[])).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("/a/s.toml") && m.contains("line 2"), "{m}");
        assert_eq!(e.code(), "config_invalid");
        let e = Config::parse(
            Path::new("/a/s.toml"),
            "[sessiondb]\nbackend = \"sqlite\"\n[postgress]\n",
            &env(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
    }

    #[test]
    fn secret_in_config_says_who_can_read_the_file_and_how_to_close_it() {
        let w = secret_in_config(Path::new("/etc/app/s.toml"), "DATABASE_URL", Some(0o100644));
        assert_eq!(
            w.message,
            "/etc/app/s.toml: postgres.url holds a password (a secret at rest), and the file is mode 0644: \
             every user of this machine can read it. Run `chmod 600 /etc/app/s.toml`, and prefer $DATABASE_URL"
        );
        assert_eq!(w.path.as_deref(), Some("/etc/app/s.toml"));
        let w = secret_in_config(Path::new("/srv/my app/it's.toml"), "DB", Some(0o640));
        assert!(
            w.message.contains("mode 0640: its group can read it"),
            "{}",
            w.message
        );
        assert!(
            w.message
                .contains(r"`chmod 600 '/srv/my app/it'\''s.toml'`"),
            "{}",
            w.message
        );
        let w = secret_in_config(Path::new("/a/s.toml"), "DB", Some(0o620));
        assert!(
            w.message.contains("its group or other users have access"),
            "{}",
            w.message
        );
        for closed in [Some(0o100600), Some(0o400), None] {
            let w = secret_in_config(Path::new("/a/s.toml"), "DB", closed);
            assert_eq!(
                w.message,
                "/a/s.toml: postgres.url holds a password (a secret at rest); prefer $DB"
            );
        }
    }

    /// Every target carries the search_path as a startup option, after the URL's own
    /// options (the last `-c` wins), escaped for the server's splitting at whitespace.
    #[test]
    fn target_sets_search_path_after_the_urls_own_options() {
        let s = Config::parse(
            Path::new("/a/s.toml"),
            "[sessiondb]\nbackend=\"sqlite\"\n[postgres]\nschema = 'a \"b\", c\\d'\n",
            &env(&[]),
        )
        .unwrap();
        assert_eq!(s.postgres.schema, "a \"b\", c\\d");
        let t = target(
            &s.postgres,
            None,
            &env(&[(
                "DATABASE_URL",
                "postgresql://u@h/db?options=-c%20statement_timeout%3D5s%20-c%20search_path%3Devil",
            )]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            t.pg.get_options(),
            Some(
                r#"-c statement_timeout=5s -c search_path=evil -c search_path=pg_catalog,\ "a\ ""b"",\ c\\d",\ pg_temp"#
            )
        );
        let t = target(
            &PostgresSettings {
                schema: "public".into(),
                ..s.postgres.clone()
            },
            None,
            &env(&[("DATABASE_URL", "postgresql://u@h/db")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            t.pg.get_options(),
            Some(r#"-c search_path=pg_catalog,\ "public",\ pg_temp"#)
        );
    }

    #[test]
    fn target_precedence() {
        let s = Config::parse(
            Path::new("/a/s.toml"),
            "[sessiondb]\nbackend=\"sqlite\"\n[postgres]\nurl=\"postgres://f:filepw12@fh/fdb\"\n",
            &env(&[]),
        )
        .unwrap();
        assert!(s.warnings.iter().any(|w| w.code == "secret_in_config"));
        let t = target(
            &s.postgres,
            None,
            &env(&[("DATABASE_URL", "postgresql://e:envpw123@eh:6543/edb")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.display, "postgresql://e:***@eh:6543/edb");
        let t = target(
            &s.postgres,
            None,
            &env(&[("DATABASE_URL", "sqlite:///x.db")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.display, "postgresql://f:***@fh/fdb");
        let s2 = Config::parse(
            Path::new("/a/s.toml"),
            "[sessiondb]\nbackend=\"sqlite\"\n",
            &env(&[]),
        )
        .unwrap();
        let t = target(
            &s2.postgres,
            None,
            &env(&[
                ("PGHOST", "ph"),
                ("PGUSER", "pu"),
                ("PGPASSWORD", "pgpw9876"),
                ("PGPORT", "5999"),
                ("PGDATABASE", "pd"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.display, "postgresql://pu:***@ph:5999/pd");
        assert!(target(&s2.postgres, None, &env(&[])).unwrap().is_none());
    }

    fn pg_settings() -> PostgresSettings {
        Config::parse(
            Path::new("/a/s.toml"),
            "[sessiondb]\nbackend=\"sqlite\"\n",
            &env(&[]),
        )
        .unwrap()
        .postgres
    }

    #[test]
    fn tls_params_leave_the_url() {
        let (rest, p) = split_tls_params(
            "postgresql://u:p%3F@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fa%20b%2Fca.crt",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u:p%3F@h:5/db?application_name=x");
        assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/a b/ca.crt"));
        let (rest, p) = split_tls_params("postgresql://h/db?sslcert=/c.crt&sslkey=/c.key").unwrap();
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(
            (p.sslcert.as_deref(), p.sslkey.as_deref()),
            (Some("/c.crt"), Some("/c.key"))
        );
        // A '?' in the password is not the query.
        let (rest, p) = split_tls_params("postgresql://u:a?b@h/db").unwrap();
        assert_eq!(
            (rest.as_str(), p),
            ("postgresql://u:a?b@h/db", TlsParams::default())
        );
    }

    #[test]
    fn tls_params_leave_the_keywords() {
        let (rest, p) = split_tls_params(
            "host=h sslmode = verify-ca  password='a b\\' c' sslrootcert='/x y/ca.crt' dbname=d",
        )
        .unwrap();
        assert_eq!(rest, "host=h password='a b\\' c' dbname=d");
        assert_eq!(p.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/x y/ca.crt"));
        let cfg: postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"a b' c"[..]));
        // Malformed: left for the driver to report.
        let (rest, _) = split_tls_params("host=h sslmode").unwrap();
        assert_eq!(rest, "host=h sslmode");
    }

    #[test]
    fn tls_modes_follow_libpq() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        let s = pg_settings();
        let t = |url: &str, extra: &[(&str, &str)]| {
            let mut pairs = vec![("DATABASE_URL", url), ("HOME", home)];
            pairs.extend_from_slice(extra);
            target(&s, None, &env(&pairs))
        };
        // The default: prefer, nothing verified; the display keeps the query.
        let d = t("postgresql://u:pw123456@h/db", &[]).unwrap().unwrap();
        assert_eq!(
            (d.tls.mode, d.tls.verify),
            (SslMode::Prefer, Verify::Nothing)
        );
        assert_eq!(d.pg.get_ssl_mode(), postgres::config::SslMode::Prefer);
        assert_eq!(d.tls.mode_from, "the default");
        let v = t(
            "postgresql://u:pw123456@h/db?sslmode=verify-full&sslrootcert=/x/ca.crt",
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(v.tls.verify, Verify::ChainAndHost);
        assert_eq!(v.pg.get_ssl_mode(), postgres::config::SslMode::Require);
        assert_eq!(
            v.tls.root_cert.as_ref().unwrap().path,
            PathBuf::from("/x/ca.crt")
        );
        assert_eq!(
            v.tls.root_cert.as_ref().unwrap().from,
            "sslrootcert in $DATABASE_URL"
        );
        assert_eq!(
            v.display,
            "postgresql://u:***@h/db?sslmode=verify-full&sslrootcert=/x/ca.crt"
        );
        // verify-ca from PGSSLMODE, root certificate by default under $HOME.
        let v = t("host=h user=u", &[("PGSSLMODE", "verify-ca")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (v.tls.verify, v.tls.mode_from.as_str()),
            (Verify::Chain, "PGSSLMODE")
        );
        assert_eq!(
            v.tls.root_cert.unwrap().path,
            dir.path().join(".postgresql/root.crt")
        );
        // The connection string wins over the variable.
        let v = t(
            "postgresql://h/db?sslmode=disable",
            &[("PGSSLMODE", "verify-full")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(v.pg.get_ssl_mode(), postgres::config::SslMode::Disable);
        // require verifies the chain only once a root certificate file exists.
        let r = t("postgresql://h/db?sslmode=require", &[])
            .unwrap()
            .unwrap();
        assert_eq!((r.tls.verify, r.tls.root_cert), (Verify::Nothing, None));
        std::fs::create_dir_all(dir.path().join(".postgresql")).unwrap();
        std::fs::write(dir.path().join(".postgresql/root.crt"), "x").unwrap();
        let r = t("postgresql://h/db?sslmode=require", &[])
            .unwrap()
            .unwrap();
        assert_eq!(r.tls.verify, Verify::Chain);
        // allow is prefer to the driver.
        let a = t("postgresql://h/db?sslmode=allow", &[]).unwrap().unwrap();
        assert_eq!(a.pg.get_ssl_mode(), postgres::config::SslMode::Prefer);
        // A client certificate, with its key by default beside the others.
        let c = t("postgresql://h/db", &[("PGSSLCERT", "/c/client.crt")])
            .unwrap()
            .unwrap();
        assert_eq!(c.tls.client_cert.unwrap().from, "PGSSLCERT");
        assert_eq!(
            c.tls.client_key.unwrap().path,
            dir.path().join(".postgresql/postgresql.key")
        );
    }

    #[test]
    fn unknown_sslmode_names_its_origin() {
        let s = pg_settings();
        let e = target(
            &s,
            None,
            &env(&[(
                "DATABASE_URL",
                "postgresql://u:pw123456@h/db?sslmode=verify_full",
            )]),
        )
        .unwrap_err();
        assert_eq!(e.code(), "config_invalid");
        let m = e.to_string();
        assert!(
            m.contains("sslmode in $DATABASE_URL") && m.contains("verify_full"),
            "{m}"
        );
        let e = target(
            &s,
            None,
            &env(&[
                ("DATABASE_URL", "postgresql://h/db"),
                ("PGSSLMODE", "strict"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("PGSSLMODE"), "{e}");
    }

    fn app_of(tail: &str) -> Result<AppSchema> {
        let text = format!("[sessiondb]\nbackend = \"sqlite\"\n[sqlite]\npath = \"a.db\"\n{tail}");
        Config::parse(Path::new("/a/s.toml"), &text, &env(&[])).map(|c| c.app)
    }

    #[test]
    fn application_schema_keys() {
        let a = app_of("").unwrap();
        assert_eq!(a, AppSchema::default());
        assert!(a.customised().is_empty());
        let a = app_of(
            "table = \"app_sessions\"\ncopy_tables = [\"tags\"]\nignore_columns = [\"junk\"]\n[sqlite.columns]\ncost = \"last_cost_usd\"\nstate = \"\"\n[json]\npath = \"s.json\"\n[json.fields]\nid = \"session\"\ncreated_at = \"createdAt\"\n[postgres.fill]\n\"sessions.question\" = \"\"\n[postgres.fill.users]\nactive = true\nlevel = 3\n",
        )
        .unwrap();
        assert_eq!(a.table, "app_sessions");
        assert_eq!(a.copy_tables, ["tags"]);
        assert_eq!(a.columns[&Field::Cost], "last_cost_usd");
        assert_eq!(a.columns[&Field::State], "");
        assert_eq!(a.json_fields[&Field::Id], "session");
        assert_eq!(
            a.fill,
            [
                Fill {
                    table: "sessions".into(),
                    column: "question".into(),
                    value: Raw::Text(String::new())
                },
                Fill {
                    table: "users".into(),
                    column: "active".into(),
                    value: Raw::Integer(1)
                },
                Fill {
                    table: "users".into(),
                    column: "level".into(),
                    value: Raw::Integer(3)
                },
            ]
        );
        assert_eq!(
            a.customised(),
            [
                "sqlite.table",
                "sqlite.copy_tables",
                "sqlite.ignore_columns",
                "[sqlite.columns]",
                "[postgres.fill]"
            ]
        );
        // Naming the defaults is not a customisation.
        let a = app_of("table = \"sessions\"\n[sqlite.columns]\ncost = \"cost\"\n").unwrap();
        assert!(a.customised().is_empty());
    }

    #[test]
    fn application_schema_keys_are_checked() {
        for (tail, needle) in [
            (
                "[sqlite.columns]\ncosts = \"x\"\n",
                "\"costs\" is not one of sessiondb's fields",
            ),
            ("[sqlite.columns]\nid = \"\"\n", "cannot be absent"),
            (
                "[sqlite.columns]\ncost = \"x\"\nstatus = \"X\"\n",
                "both mapped to",
            ),
            ("table = \"\"\n", "sqlite.table is empty"),
            ("copy_tables = [\"a\", \"A\"]\n", "twice"),
            (
                "copy_tables = [\"sessions\"]\n",
                "the sessions table itself",
            ),
            (
                "ignore_columns = [\"x\"]\n[sqlite.columns]\ncost = \"x\"\n",
                "both mapped",
            ),
            (
                "[postgres.fill]\nquestion = \"\"\n",
                "expected \"table.column\"",
            ),
            ("[postgres.fill]\n\"s.q\" = [1]\n", "expected a string"),
            ("[sqlite]\n", "line"),
            ("columns = 3\n", "line 5"),
            ("[json.fields]\nid = \"\"\n", "cannot be absent"),
            ("tables = []\n", "unknown field"),
        ] {
            let e = app_of(tail).unwrap_err();
            assert_eq!(e.code(), "config_invalid", "{tail}");
            assert!(e.to_string().contains(needle), "{tail}: {e}");
        }
    }

    #[test]
    fn steps_that_read_only_the_default_table_refuse_a_mapped_config() {
        let text = "[sessiondb]\nbackend = \"sqlite\"\n[sqlite]\npath = \"a.db\"\n[sqlite.columns]\ncost = \"last_cost_usd\"\n";
        let c = Config::parse(Path::new("/a/s.toml"), text, &env(&[])).unwrap();
        // Every step reads a mapped store now; a step not wired to it would still refuse.
        let e = c.require_default_schema("a-step-not-wired").unwrap_err();
        assert_eq!(
            (e.code(), e.exit_code()),
            ("not_implemented", crate::exit::USAGE)
        );
        assert!(e.to_string().contains("[sqlite.columns]"), "{e}");
        c.require_default_schema("check").unwrap();
        c.require_default_schema("init").unwrap();
        c.require_default_schema("migrate-state").unwrap();
        c.require_default_schema("verify").unwrap();
        c.require_default_schema("rollback").unwrap();
        let plain = Config::parse(
            Path::new("/a/s.toml"),
            "[sessiondb]\nbackend = \"sqlite\"\n",
            &env(&[]),
        )
        .unwrap();
        plain.require_default_schema("migrate-state").unwrap();
    }

    #[test]
    fn hostaddr_alone_is_the_name_tls_checks() {
        let t = target(
            &pg_settings(),
            None,
            &env(&[("DATABASE_URL", "hostaddr=127.0.0.1 user=u dbname=d")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            t.pg.get_hosts(),
            &[postgres::config::Host::Tcp("127.0.0.1".into())]
        );
    }
}
