//! A legacy store built by hand for one test: a real SQLite file, real state files,
//! an optional JSON store, and its sessiondb.toml.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ToSql};

use super::TempDir;

pub struct Store {
    pub dir: TempDir,
    pub config: PathBuf,
    pub db: PathBuf,
    pub sessions: PathBuf,
    pub json: PathBuf,
}

pub const SCHEMA: &str = "CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id TEXT, status TEXT, current_step TEXT, cost REAL, created_at TEXT, updated_at TEXT, state TEXT)";

impl Store {
    /// An empty store: the table, the sessions folder, and a config with backend `sqlite`.
    pub fn new() -> Store {
        let dir = TempDir::new();
        let root = dir.path().to_path_buf();
        let db = root.join("data/app.db");
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        let c = Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "wal").unwrap();
        c.execute_batch(SCHEMA).unwrap();
        drop(c);
        let sessions = root.join("sessions");
        std::fs::create_dir_all(&sessions).unwrap();
        let s = Store {
            config: root.join("sessiondb.toml"),
            db,
            sessions,
            json: root.join("data/session-db.json"),
            dir,
        };
        s.write_config("sqlite", "");
        s
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// (Re)write the config with `backend` and extra TOML appended.
    pub fn write_config(&self, backend: &str, extra: &str) {
        let json = if self.json.exists() {
            "[json]\npath = \"data/session-db.json\"\n"
        } else {
            ""
        };
        std::fs::write(
            &self.config,
            format!(
                "# test store\n[sessiondb]\nbackend = \"{backend}\"  # the application's backend\n\n[sqlite]\npath = \"data/app.db\"\nsessions_dir = \"sessions\"\n\n{json}[backup]\ndir = \"backups\"\n{extra}"
            ),
        )
        .unwrap();
    }

    pub fn conn(&self) -> Connection {
        Connection::open(&self.db).unwrap()
    }

    /// A row with every column given.
    #[allow(clippy::too_many_arguments)]
    pub fn row(
        &self,
        id: &dyn ToSql,
        user: &dyn ToSql,
        status: &dyn ToSql,
        step: &dyn ToSql,
        cost: &dyn ToSql,
        created: &dyn ToSql,
        updated: &dyn ToSql,
        state: &dyn ToSql,
    ) {
        self.conn()
            .execute(
                "INSERT INTO sessions VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                [id, user, status, step, cost, created, updated, state],
            )
            .unwrap();
    }

    /// A plain session: a row with ordinary metadata and its state in state.json.
    pub fn session(&self, id: &str, state: &str) {
        self.row(
            &id,
            &"user-1",
            &"running",
            &"plan",
            &0.25,
            &"2024-03-01T10:00:00Z",
            &"2024-03-01 10:05:00.123456",
            &rusqlite::types::Null,
        );
        self.state_file(id, state.as_bytes());
    }

    pub fn state_file(&self, id: &str, bytes: &[u8]) {
        super::write(&self.sessions.join(id).join("state.json"), bytes);
    }

    /// Write the JSON store and point the config at it.
    pub fn json_store(&self, text: &str) {
        std::fs::write(&self.json, text).unwrap();
        let cfg = std::fs::read_to_string(&self.config).unwrap();
        if !cfg.contains("[json]") {
            let backend = if cfg.contains("backend = \"json\"") {
                "json"
            } else if cfg.contains("backend = \"postgres\"") {
                "postgres"
            } else {
                "sqlite"
            };
            self.write_config(backend, "");
        }
    }
}

impl Store {
    /// `n` sessions named `k<i>` with states of about `size` bytes, written fast
    /// (one SQLite transaction).
    pub fn bulk(&self, n: usize, size: usize) {
        let mut c = self.conn();
        let tx = c.transaction().unwrap();
        {
            let mut st = tx.prepare("INSERT INTO sessions VALUES (?1, 'u', 'running', 'step', 0.5, '2024-01-01T00:00:00Z', '2024-01-01 00:00:01', NULL)").unwrap();
            for i in 0..n {
                let id = format!("k{i:07}");
                st.execute([&id]).unwrap();
                let pad = "p".repeat(size.saturating_sub(40));
                super::write(
                    &self.sessions.join(&id).join("state.json"),
                    format!("{{\"i\": {i}, \"pad\": \"{pad}\"}}"),
                );
            }
        }
        tx.commit().unwrap();
    }
}

/// The store of an application's own schema (SPEC §9, issue 17), made by
/// `generate-fixture --schema app`: SQLAlchemy's `users` and `sessions` tables on
/// SQLite, state only in `sessions/<id>/state.json`, and its sessiondb.toml (the
/// mapping `cost = "last_cost_usd"`, `state = ""`).
pub struct AppStore {
    /// Removed when dropped.
    _dir: TempDir,
    pub config: PathBuf,
    pub db: PathBuf,
    pub sessions: PathBuf,
}

/// The application's tables on PostgreSQL, as its ORM creates them there (issue 17):
/// `character varying`, `timestamp without time zone`, `boolean`, `double precision`,
/// the foreign key to `users`, `session_state` without one, and its own GIN index.
pub const APP_PG_DDL: &str = "
CREATE TABLE users (id character varying NOT NULL PRIMARY KEY, external_id character varying NOT NULL,
  display_name character varying, created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL);
CREATE UNIQUE INDEX ix_users_external_id ON users (external_id);
CREATE TABLE sessions (id character varying NOT NULL PRIMARY KEY,
  user_id character varying NOT NULL REFERENCES users (id), question text NOT NULL,
  current_step character varying NOT NULL, status character varying NOT NULL,
  created_at timestamp without time zone NOT NULL, updated_at timestamp without time zone NOT NULL,
  is_deleted boolean NOT NULL, last_cost_usd double precision, last_total_tokens integer);
CREATE INDEX ix_sessions_is_deleted ON sessions (is_deleted);
CREATE INDEX ix_sessions_user_id ON sessions (user_id);
CREATE TABLE session_state (session_id character varying NOT NULL PRIMARY KEY,
  state jsonb NOT NULL, updated_at timestamp without time zone NOT NULL);
CREATE INDEX ix_session_state_state_gin ON session_state USING gin (state);
";

impl AppStore {
    /// `n` sessions of the application's schema.
    pub fn new(n: u64) -> AppStore {
        let dir = TempDir::new();
        let out = dir.path().join("app");
        sessiondb::fixture::app::generate(&sessiondb::fixture::Options {
            out: out.clone(),
            sessions: n,
            seed: 17,
            bad: false,
            loose_types: false,
            schema: sessiondb::fixture::Schema::App,
        })
        .expect("generate the application's store");
        AppStore {
            config: out.join("sessiondb.toml"),
            db: out.join("data/app.db"),
            sessions: out.join("sessions"),
            _dir: dir,
        }
    }

    pub fn conn(&self) -> Connection {
        Connection::open(&self.db).unwrap()
    }

    /// A user of the fixture: (id, external_id, created_at, updated_at).
    pub fn user(&self) -> (String, String, String, String) {
        self.conn()
            .query_row(
                "SELECT id, external_id, created_at, updated_at FROM users ORDER BY id LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap()
    }

    /// Append TOML to the config.
    pub fn append_config(&self, toml: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(toml);
        std::fs::write(&self.config, text).unwrap();
    }

    /// The application's tables on `db` (its PostgreSQL DDL), with the fixture's users.
    pub fn pg_tables(&self, db: &super::pg::TestDb) {
        let mut c = db.client();
        c.batch_execute(APP_PG_DDL).unwrap();
        let users: Vec<(String, String, String, String)> = self
            .conn()
            .prepare("SELECT id, external_id, created_at, updated_at FROM users")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        for (id, ext, c_at, u_at) in users {
            c.execute(
                "INSERT INTO users (id, external_id, created_at, updated_at) VALUES ($1, $2, $3::text::timestamp, $4::text::timestamp)",
                &[&id, &ext, &c_at, &u_at],
            )
            .unwrap();
        }
    }
}

/// SQLAlchemy's `DateTime` text on SQLite: `YYYY-MM-DD HH:MM:SS.ffffff`, no zone.
pub fn is_sqlalchemy_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 26
        && b[10] == b' '
        && b[19] == b'.'
        && chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.6f").is_ok()
}
