//! Configuration (SPEC §3): discovery, the TOML file, the environment, the PostgreSQL
//! target, and the runtime gating. Everything is resolved here, before any side effect;
//! `Resolved::describe` says on stderr where each setting came from.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::redact;
use crate::report::Finding;

pub const DEFAULT_FILE: &str = "sessiondb.toml";
pub const DEFAULT_URL_ENV: &str = "DATABASE_URL";

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJson {
    path: Option<String>,
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
            .finish()
    }
}

/// The configuration file, resolved: paths absolute, environment overrides applied.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file (absolute).
    pub path: PathBuf,
    pub backend: Backend,
    pub sqlite: Option<SqliteSource>,
    pub json_path: Option<PathBuf>,
    pub postgres: PostgresSettings,
    pub backup_dir: PathBuf,
    /// Warnings raised while resolving (`json_backend_deprecated`, `secret_in_config`...).
    pub warnings: Vec<Finding>,
    /// Lines for stderr: where each setting came from.
    pub provenance: Vec<String>,
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
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ConfigNotFound { path, how });
            }
            Err(e) => return Err(Error::Unreadable { path, source: e }),
        };
        let abs = std::path::absolute(&path).map_err(|e| Error::Unreadable {
            path: path.clone(),
            source: e,
        })?;
        let mut c = Config::parse(&abs, &text, env)?;
        c.provenance
            .insert(0, format!("config file {} ({how})", abs.display()));
        Ok(c)
    }

    /// Resolve a config from its text; `path` is where it lives (relative paths in it
    /// resolve against its folder).
    pub fn parse(path: &Path, text: &str, env: &Env) -> Result<Config> {
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
        let fp = file.postgres.unwrap_or_default();
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
            if let Some(pw) = url_password(u) {
                redact::register_secret(&pw);
                warnings.push(Finding::new(
                    "secret_in_config",
                    format!(
                        "{}: postgres.url holds a password (a secret at rest); prefer ${url_env}",
                        path.display()
                    ),
                ));
            }
        }
        let pool_size = env_u32(
            env,
            "DB_POOL_SIZE",
            fp.pool_size.unwrap_or(10),
            &mut provenance,
        )?;
        let max_overflow = env_u32(
            env,
            "DB_MAX_OVERFLOW",
            fp.max_overflow.unwrap_or(20),
            &mut provenance,
        )?;
        let schema = fp.schema.unwrap_or_else(|| "public".to_owned());
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
            postgres: PostgresSettings {
                url_env,
                url_in_file: fp.url,
                schema,
                pool_size,
                max_overflow,
                gin_opclass: fp.gin_opclass.unwrap_or(GinOpclass::JsonbOps),
            },
            backup_dir,
            warnings,
            provenance,
        })
    }

    /// The folder that holds the config file.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
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
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let msg = e
        .message()
        .trim()
        .replace("expected u32", "expected an integer")
        .replace("expected u64", "expected an integer");
    let message = match line {
        Some(l) => format!("line {l}: {msg}"),
        None => msg,
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
    pub pg: postgres::Config,
    /// The redacted connection string.
    pub display: String,
    /// Where it came from: "DATABASE_URL", "postgres.url in <file>", "libpq PG* variables".
    pub origin: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({} from {})", self.display, self.origin)
    }
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
        .find_map(|(raw, origin)| match normalize_url(&raw) {
            Ok(DbUrl::Postgres(u)) => Some(Ok((u, origin))),
            Ok(DbUrl::Sqlite(_)) => None,
            Err(m) => Some(Err(Error::SettingInvalid {
                name: origin,
                message: m,
            })),
        });
    let (mut pg, display, origin) = match chosen {
        Some(r) => {
            let (u, origin) = r?;
            let pg: postgres::Config =
                u.parse()
                    .map_err(|e: postgres::Error| Error::SettingInvalid {
                        name: origin.clone(),
                        message: redact::text(&e.to_string()),
                    })?;
            if let Some(pw) = pg.get_password() {
                redact::register_secret(&String::from_utf8_lossy(pw));
            }
            (pg, redact::url(&u), origin)
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
            )
        }
    };
    apply_libpq_env(&mut pg, env);
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(std::time::Duration::from_secs(10));
    }
    if pg.get_application_name().is_none() {
        pg.application_name("sessiondb");
    }
    let display = if display.is_empty() {
        synth_display(&pg)
    } else {
        display
    };
    Ok(Some(Target {
        pg,
        display,
        origin,
    }))
}

/// libpq's environment defaults, for what the connection string left unset.
fn apply_libpq_env(pg: &mut postgres::Config, env: &Env) {
    if pg.get_hosts().is_empty() {
        match env.get("PGHOST").or(env.get("PGHOSTADDR")) {
            Some(h) => {
                for part in h.split(',') {
                    pg.host(part);
                }
            }
            None => {
                pg.host("localhost");
            }
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
}
