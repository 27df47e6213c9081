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
