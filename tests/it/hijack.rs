//! A hostile database (the CVE-2018-1058 pattern): a role that may only create objects
//! in `public` plants functions and operators there that match sessiondb's calls better
//! than the built-ins do, look-alike tables in a schema that comes first in the
//! privileged role's own `search_path`, and look-alikes of sessiondb's temporary tables
//! in the configured schema. Every command, and the runtime store through `sessiond`,
//! runs as the privileged role (a superuser: what a hijack would turn against its
//! operator). None of the planted objects is ever called or written, the look-alikes
//! are never read, and the planting role gains no right.

use std::collections::BTreeMap;

use serde_json::json;
use sessiondb::exit;

use crate::sessiond::Service;
use crate::support::pg::{Role, TestDb, admin};
use crate::support::store::Store;
use crate::support::{Run, sessiondb};

/// The store, the database, the planting role and the privileged one. Fields drop in
/// order: the database first, so that the roles owning objects in it can be dropped.
struct Hostile {
    db: TestDb,
    low: Role,
    privileged: Role,
    s: Store,
    /// The look-alike tables and their contents before any command ran.
    planted: BTreeMap<String, String>,
    /// The planting role's attributes and rights before any command ran.
    rights: String,
}

/// Run `sql` on `db` as `role`.
fn as_role(db: &TestDb, role: &Role, sql: &str) {
    postgres::Client::connect(&role.url(db), postgres::NoTls)
        .unwrap()
        .batch_execute(sql)
        .unwrap_or_else(|e| panic!("as {}: {e:?}\n{sql}", role.name));
}

/// Every planted function logs its call into `evil.calls`, tries to make the planting
/// role a superuser and a member of the caller (as an attacker would), and then answers
/// as the built-in does, so that the command goes on and commits what it did.
fn plant_functions(db: &TestDb, low: &Role) {
    let low_name = &low.name;
    let body = |what: &str, ret: &str| {
        format!("LANGUAGE plpgsql AS $f$ BEGIN PERFORM evil.pwn('{what}'); {ret}; END $f$;")
    };
    let sql = [
        "CREATE TABLE evil.calls (what text NOT NULL, caller text NOT NULL DEFAULT current_user);
         GRANT USAGE ON SCHEMA evil TO PUBLIC;
         GRANT INSERT ON evil.calls TO PUBLIC;"
            .to_owned(),
        format!(
            "CREATE FUNCTION evil.pwn(what text) RETURNS void LANGUAGE plpgsql AS $f$
             BEGIN
               INSERT INTO evil.calls (what) VALUES (what);
               BEGIN EXECUTE format('ALTER ROLE %I SUPERUSER CREATEROLE', '{low_name}'); EXCEPTION WHEN OTHERS THEN NULL; END;
               BEGIN EXECUTE format('GRANT %I TO %I', current_user, '{low_name}'); EXCEPTION WHEN OTHERS THEN NULL; END;
             END $f$;"
        ),
        format!(
            "CREATE FUNCTION public.convert_to(t text, enc text) RETURNS bytea {}",
            body(
                "convert_to(text,text)",
                "RETURN pg_catalog.convert_to(t, enc::name)"
            )
        ),
        format!(
            "CREATE FUNCTION public.unnest(a text[]) RETURNS SETOF text {}",
            body("unnest(text[])", "RETURN QUERY SELECT pg_catalog.unnest(a)")
        ),
        format!(
            "CREATE FUNCTION public.sha256(b bytea) RETURNS bytea {}",
            body("sha256(bytea)", "RETURN pg_catalog.sha256(b)")
        ),
        format!(
            "CREATE FUNCTION public.jsonb_typeof(j jsonb) RETURNS text {}",
            body("jsonb_typeof(jsonb)", "RETURN pg_catalog.jsonb_typeof(j)")
        ),
        format!(
            "CREATE FUNCTION public.format_type(t oid, m text) RETURNS text {}",
            body(
                "format_type(oid,text)",
                "RETURN pg_catalog.format_type(t, m::integer)"
            )
        ),
        format!(
            "CREATE FUNCTION public.array_length(a smallint[], d integer) RETURNS integer {}",
            body(
                "array_length(smallint[],integer)",
                "RETURN pg_catalog.array_length(a, d)"
            )
        ),
        format!(
            "CREATE FUNCTION public.text_eq(a text, b text) RETURNS boolean {}
             CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_eq);",
            body("=(text,text)", "RETURN pg_catalog.texteq(a, b)")
        ),
        format!(
            "CREATE FUNCTION public.oid_eq_regtype(a oid, b regtype) RETURNS boolean {}
             CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regtype, FUNCTION = public.oid_eq_regtype);",
            body("=(oid,regtype)", "RETURN pg_catalog.oideq(a, b::oid)")
        ),
        format!(
            "CREATE FUNCTION public.name_cat(a name, b text) RETURNS text {}
             CREATE OPERATOR public.|| (LEFTARG = name, RIGHTARG = text, FUNCTION = public.name_cat);",
            body("||(name,text)", "RETURN pg_catalog.textcat(a::text, b)")
        ),
    ];
    as_role(db, low, &sql.join("\n"));
}

/// Operators on `varchar`, which PostgreSQL compares with `text`'s operators (there is
/// no `varchar = varchar` in pg_catalog): a planted one is an exact match and wins,
/// unless the query names pg_catalog's.
fn plant_varchar_operators(db: &TestDb, low: &Role) {
    let mut sql = String::new();
    for (name, op, left, right, builtin) in [
        ("vt_eq", "=", "varchar", "text", "texteq"),
        ("tv_eq", "=", "text", "varchar", "texteq"),
        ("vv_eq", "=", "varchar", "varchar", "texteq"),
        ("vt_gt", ">", "varchar", "text", "text_gt"),
    ] {
        sql.push_str(&format!(
            "CREATE FUNCTION public.{name}(a {left}, b {right}) RETURNS boolean LANGUAGE plpgsql AS $f$
             BEGIN PERFORM evil.pwn('{op}({left},{right})'); RETURN pg_catalog.{builtin}(a::text, b::text); END $f$;
             CREATE OPERATOR public.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = public.{name});\n"
        ));
    }
    as_role(db, low, &sql);
}

/// Tables named like sessiondb's own in schema `evil` (first in the privileged role's
/// `search_path`), and like its temporary tables in `public` (the configured schema,
/// searched before `pg_temp` when pg_temp comes last): each holds a sentinel row, open
/// to everyone, so that a write or read that reached one would succeed and show.
fn plant_tables(db: &TestDb, low: &Role) {
    let m = &sessiondb::pg::schema::MIGRATIONS[0];
    let sql = format!(
        "CREATE TABLE evil.sessiondb_schema_versions (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), run_id uuid);
         {}
         INSERT INTO evil.sessiondb_schema_versions (version, name, checksum) VALUES (1, '{}', '{}');
         INSERT INTO evil.sessions (id, user_id, status) VALUES ('evil-1', 'evil', 'planted');
         INSERT INTO evil.session_state VALUES ('evil-1', '{{\"planted\": true}}', now());
         INSERT INTO evil.sessiondb_ledger (session_id, status, content_hash, run_id) VALUES ('evil-1', 'migrated', 'x', gen_random_uuid());
         INSERT INTO evil.sessiondb_runs (run_id, step) VALUES (gen_random_uuid(), 'planted');
         INSERT INTO evil.sessiondb_verifications (run_id, source_fingerprint, passed, counts) VALUES (gen_random_uuid(), 'any', true, '{{}}');
         INSERT INTO evil.sessiondb_cutovers (kind, from_backend, to_backend, config_path, config_sha256, run_id) VALUES ('set-default', 'postgres', 'sqlite', '/etc/passwd', 'x', gen_random_uuid());
         CREATE TABLE public.sessiondb_stage (id text, user_id text, status text, current_step text, cost float8,
             created_at timestamptz, updated_at timestamptz, state text, state_updated_at timestamptz,
             content_hash text, state_hash text, source_stamp text);
         INSERT INTO public.sessiondb_stage (id, state) VALUES ('evil-1', '{{\"planted\": true}}');
         CREATE TABLE public.sessiondb_verify_ids (id text PRIMARY KEY);
         INSERT INTO public.sessiondb_verify_ids VALUES ('evil-1');
         GRANT ALL ON ALL TABLES IN SCHEMA evil TO PUBLIC;
         GRANT ALL ON public.sessiondb_stage, public.sessiondb_verify_ids TO PUBLIC;",
        m.sql.replace("{schema}", "evil"),
        m.name,
        sessiondb::pg::schema::checksum(m),
    );
    as_role(db, low, &sql);
}

/// Every look-alike table (not the log) and a digest of its rows.
fn planted_tables(db: &TestDb) -> BTreeMap<String, String> {
    let mut c = db.client();
    let tables: Vec<String> = c
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND ((n.nspname = 'evil' AND c.relname <> 'calls') OR (n.nspname = 'public' AND c.relname IN ('sessiondb_stage', 'sessiondb_verify_ids')))
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables.len(), 9, "{tables:?}");
    tables
        .into_iter()
        .map(|t| {
            let digest: String = c
                .query_one(
                    &format!(
                        "SELECT count(*) || ' rows ' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x"
                    ),
                    &[],
                )
                .unwrap()
                .get(0);
            (t, digest)
        })
        .collect()
}

/// The planting role's attributes, memberships, and every right it holds on objects it
/// does not own (outside the catalogs, which everyone may read).
fn rights(db: &TestDb, role: &str) -> String {
    db.client()
        .query_one(
            "SELECT row_to_json(x)::text FROM (
               SELECT r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
                      r.rolreplication, r.rolbypassrls,
                      (SELECT array_agg(b.rolname::text ORDER BY b.rolname) FROM pg_auth_members m
                         JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = r.oid) AS member_of,
                      (SELECT array_agg(format('%I.%I', n.nspname, c.relname) ORDER BY 1) FROM pg_class c
                         JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE c.relowner <> r.oid AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
                          AND has_table_privilege(r.oid, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')) AS tables,
                      (SELECT array_agg(n.nspname::text ORDER BY 1) FROM pg_namespace n
                        WHERE n.nspowner <> r.oid AND has_schema_privilege(r.oid, n.oid, 'CREATE')) AS create_in,
                      has_database_privilege(r.oid, current_database(), 'CREATE') AS create_schemas
                 FROM pg_roles r WHERE r.rolname = $1) x",
            &[&role],
        )
        .unwrap()
        .get(0)
}

impl Hostile {
    /// A store of `n` sessions and a database where `low` may create in `public` and owns
    /// `evil`, and `privileged` (a superuser) finds `evil, public` as its search_path.
    /// `app_tables`: SQL the application ran first (as the administrator).
    fn new(label: &str, n: usize, app_tables: &str, varchar_operators: bool) -> Hostile {
        let s = Store::new();
        for i in 0..n {
            s.session(
                &format!("h{i:03}"),
                &format!(r#"{{"i": {i}, "tags": ["a", "b"]}}"#),
            );
        }
        let low = Role::new("low");
        let privileged = Role::with("priv", "SUPERUSER");
        let db = TestDb::new(label);
        db.client()
            .batch_execute(&format!(
                "{app_tables}
                 GRANT CREATE ON SCHEMA public TO \"{low}\";
                 CREATE SCHEMA evil AUTHORIZATION \"{low}\";",
                low = low.name
            ))
            .unwrap();
        admin()
            .batch_execute(&format!(
                "ALTER ROLE \"{}\" SET search_path = evil, public",
                privileged.name
            ))
            .unwrap();
        plant_functions(&db, &low);
        if varchar_operators {
            plant_varchar_operators(&db, &low);
        }
        plant_tables(&db, &low);
        let planted = planted_tables(&db);
        let rights = rights(&db, &low.name);
        assert!(rights.contains("\"rolsuper\":false"), "{rights}");
        Hostile {
            db,
            low,
            privileged,
            s,
            planted,
            rights,
        }
    }

    fn url(&self) -> String {
        self.privileged.url(&self.db)
    }

    /// Run a command as the privileged role; it must exit `code`, and nothing planted
    /// may have been called, written or granted by it.
    fn run(&self, args: &[&str], code: i32) -> Run {
        let r = sessiondb(args)
            .config(&self.s.config)
            .env("DATABASE_URL", self.url())
            .expect(code);
        self.assert_untouched(&args.join(" "));
        r
    }

    fn assert_untouched(&self, after: &str) {
        let calls: Vec<(String, String)> = self
            .db
            .client()
            .query("SELECT what, caller FROM evil.calls", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert!(
            calls.is_empty(),
            "after `{after}`: planted objects were called (what, as whom): {calls:?}"
        );
        assert_eq!(
            planted_tables(&self.db),
            self.planted,
            "after `{after}`: a look-alike table changed"
        );
        assert_eq!(
            rights(&self.db, &self.low.name),
            self.rights,
            "after `{after}`: the planting role's rights changed"
        );
    }

    /// check, preflight, backup, a first load and a catch-up, verify (full and sampled),
    /// set-default, the runtime store through sessiond (and the smoke probe), rollback.
    fn run_every_command(&self, n: u64) {
        let s = &self.s;
        let r = self.run(&["check", "--backend", "postgres"], exit::OK);
        assert_eq!(
            r.check("postgres_connectivity").details["search_path"],
            "pg_catalog, \"public\", pg_temp",
            "{}",
            r.stdout
        );
        self.run(&["preflight"], exit::OK);
        self.run(&["backup"], exit::OK);
        let r = self.run(&["migrate-state", "--dry-run=false"], exit::OK);
        assert_eq!(r.count("inserted"), n, "{}", r.stdout);
        // Again with the tables in place: their shape, indexes and constraints are read.
        self.run(&["check", "--backend", "postgres"], exit::OK);
        self.run(&["preflight"], exit::OK);
        // A catch-up: two states changed, one session new (staging table, upserts).
        s.state_file("h000", br#"{"i": 0, "changed": true}"#);
        s.state_file("h001", br#"{"i": 1, "changed": true}"#);
        s.session("h-new", r#"{"new": true}"#);
        let r = self.run(&["migrate-state", "--dry-run=false"], exit::OK);
        assert_eq!(
            (r.count("inserted"), r.count("updated")),
            (1, 2),
            "{}",
            r.stdout
        );
        self.run(&["verify", "--sample", "3"], exit::OK);
        let r = self.run(&["verify"], exit::OK);
        for (k, v) in [
            ("checked", n + 1),
            ("missing", 0),
            ("extra", 0),
            ("different", 0),
        ] {
            assert_eq!(r.count(k), v, "verify {k}: {}", r.stdout);
        }
        // set-default wants the latest verify to be a full one that passed.
        self.run(&["set-default", "--dry-run=false"], exit::OK);

        let svc = Service::start(&s.config, Some(&self.url()));
        let smoke = self.run(&["verify", "--smoke-url", &svc.url], exit::OK);
        for id in ["smoke_health", "smoke_status", "smoke_write"] {
            assert_eq!(
                smoke.check(id).status,
                sessiondb::report::CheckStatus::Pass,
                "{id}: {}",
                smoke.stdout
            );
        }
        let c = svc.client();
        let mut written = BTreeMap::new();
        c.session_with_progress(&mut written, "web-1");
        c.progress(
            &mut written,
            "h002",
            json!({"progress": 5, "on": "postgres"}),
        );
        let (code, st) = c.get("/api/sessions/web-1/status");
        assert_eq!(code, 200, "{st}");
        svc.stop();
        self.assert_untouched("sessiond: create, progress, status");

        let r = self.run(&["rollback", "--dry-run=false"], exit::OK);
        assert!(r.count("exported") >= 2, "{}", r.stdout);
        let back = std::fs::read_to_string(s.sessions.join("web-1/state.json")).unwrap();
        assert!(
            back.contains("\"progress\":3") || back.contains("\"progress\": 3"),
            "{back}"
        );
    }
}

#[test]
fn planted_functions_operators_and_tables_are_never_used_by_any_command() {
    let h = Hostile::new("hijack", 12, "", false);
    h.run_every_command(12);
    crate::faults::row(
        "planted public.convert_to/unnest/sha256/jsonb_typeof/format_type/array_length, =, || and look-alike tables (CVE-2018-1058)",
        "every command as a superuser, sessiond",
        "exit 0 each",
        "0 planted calls, look-alikes unchanged, no right gained",
    );
}

/// The application created its tables first, with `varchar` columns and a foreign key:
/// every comparison on them names pg_catalog's operators, which a planted
/// `varchar = text` would otherwise beat.
#[test]
fn planted_varchar_operators_are_never_used_on_application_tables() {
    let app = "CREATE TABLE public.users (id varchar(64) PRIMARY KEY);
               INSERT INTO public.users VALUES ('user-1'), ('u-http'), ('sessiondb-smoke');
               CREATE TABLE public.sessions (id varchar(64) PRIMARY KEY, user_id varchar(64) REFERENCES public.users(id),
                   status varchar(32), current_step varchar(64), cost double precision,
                   created_at timestamptz, updated_at timestamptz, state jsonb);
               CREATE TABLE public.session_state (session_id varchar(64) PRIMARY KEY REFERENCES public.sessions(id) ON DELETE CASCADE,
                   state jsonb NOT NULL, updated_at timestamptz NOT NULL);";
    let h = Hostile::new("hijack_varchar", 8, app, true);
    h.run_every_command(8);
    crate::faults::row(
        "planted varchar operators, application tables with varchar ids and a foreign key",
        "every command as a superuser, sessiond",
        "exit 0 each",
        "0 planted calls, look-alikes unchanged, no right gained",
    );
}

/// The application's own schema (issue 17: a mapped config, `users`, `session_state`
/// without a foreign key, naive timestamps): `sessiond` creates sessions with extra
/// columns and a new user, writes progress and reads them back through planted
/// functions and varchar operators, and calls none of them.
#[test]
fn planted_objects_are_never_used_by_sessiond_on_the_applications_own_tables() {
    let h = Hostile::new("hijack_app", 0, "", true);
    let app = crate::support::store::AppStore::new(4);
    app.pg_tables(&h.db);
    let (user, ..) = app.user();
    crate::sessiond::app_over_http(&app, &user, Some(&h.url()));
    h.assert_untouched("sessiond on the application's own tables");
}

/// The load of an application's own schema (issue 17: `generate-fixture --schema app`,
/// the config `init` proposes, the application's tables made first with `varchar`
/// columns, a foreign key and its GIN index): preflight, a first load, a catch-up and
/// verify call no planted function or operator.
#[test]
fn planted_objects_are_never_used_by_the_mapped_load_on_the_applications_own_tables() {
    let ddl = "CREATE TABLE public.users (id varchar PRIMARY KEY, external_id varchar NOT NULL UNIQUE,
                 display_name varchar, created_at timestamp NOT NULL, updated_at timestamp NOT NULL);
               CREATE TABLE public.sessions (id varchar PRIMARY KEY, user_id varchar NOT NULL REFERENCES public.users(id),
                 question text NOT NULL, current_step varchar NOT NULL, status varchar NOT NULL,
                 created_at timestamp NOT NULL, updated_at timestamp NOT NULL, is_deleted boolean NOT NULL,
                 last_cost_usd double precision, last_total_tokens integer);
               CREATE TABLE public.session_state (session_id varchar PRIMARY KEY, state jsonb NOT NULL,
                 updated_at timestamp NOT NULL);
               CREATE INDEX ix_session_state_state_gin ON public.session_state USING gin (state);";
    let h = Hostile::new("hijack_app_load", 0, ddl, true);
    let dir = crate::support::TempDir::new();
    let root = dir.path().join("store");
    sessiondb(&["generate-fixture", "--schema", "app", "--sessions", "8"])
        .arg("--out")
        .arg(&root)
        .expect(exit::OK);
    std::fs::remove_file(root.join("sessiondb.toml")).unwrap();
    sessiondb(&["init"]).cwd(&root).expect(exit::OK);
    let config = root.join("sessiondb.toml");
    for args in [
        &["preflight"][..],
        &["migrate-state", "--dry-run=false"],
        &["migrate-state", "--dry-run=false"],
        &["verify"],
    ] {
        sessiondb(args)
            .config(&config)
            .env("DATABASE_URL", h.url())
            .expect(exit::OK);
        h.assert_untouched(&args.join(" "));
    }
    let n: i64 =
        h.db.client()
            .query_one("SELECT count(*) FROM public.sessions", &[])
            .unwrap()
            .get(0);
    assert_eq!(n, 8);
}

/// A role that may create tables in the target schema plants, before the first load,
/// the tables sessiondb would write into: its own bookkeeping table, and
/// `session_state` as the application would create it, each with a trigger that tries
/// to make the planting role a superuser. Every step that would read or write them
/// refuses with `untrusted_object` (the dry run too), no trigger ever runs, and the
/// role gains nothing.
#[test]
fn tables_planted_with_triggers_are_refused_before_anything_runs_their_code() {
    for planted in ["sessiondb_ledger", "session_state"] {
        // Roles first, so that the database (whose objects they own) drops before them.
        let low = Role::new("low");
        let privileged = Role::with("priv", "SUPERUSER");
        let db = TestDb::new(&format!("trust_{planted}"));
        db.client()
            .batch_execute(&format!(
                "GRANT CREATE ON SCHEMA public TO \"{low}\";",
                low = low.name
            ))
            .unwrap();
        let columns = if planted == "session_state" {
            "session_id text PRIMARY KEY, state jsonb NOT NULL, updated_at timestamptz NOT NULL"
        } else {
            "id text PRIMARY KEY"
        };
        as_role(
            &db,
            &low,
            &format!(
                "CREATE TABLE public.trigger_calls (who text DEFAULT current_user);
                 GRANT INSERT ON public.trigger_calls TO PUBLIC;
                 CREATE TABLE public.{planted} ({columns});
                 CREATE FUNCTION public.pwn() RETURNS trigger LANGUAGE plpgsql AS $f$
                 BEGIN
                   INSERT INTO public.trigger_calls DEFAULT VALUES;
                   BEGIN EXECUTE format('ALTER ROLE %I SUPERUSER', '{low}'); EXCEPTION WHEN OTHERS THEN NULL; END;
                   RETURN NEW;
                 END $f$;
                 CREATE TRIGGER pwn BEFORE INSERT OR UPDATE ON public.{planted}
                   FOR EACH ROW EXECUTE FUNCTION public.pwn();",
                low = low.name
            ),
        );
        let s = Store::new();
        s.session("s1", r#"{"a": 1}"#);
        let url = privileged.url(&db);
        for args in [
            &["migrate-state"][..],
            &["migrate-state", "--dry-run=false"],
            &["verify"],
            &["set-default"],
        ] {
            let r = sessiondb(args)
                .config(&s.config)
                .env("DATABASE_URL", &url)
                .run();
            assert_eq!(r.code, exit::PROBLEMS, "{planted}: {args:?}\n{}", r.stdout);
            let e = r.report.errors.first().expect("an error");
            assert_eq!(
                e.code, "untrusted_object",
                "{planted}: {args:?}\n{}",
                r.stdout
            );
            assert!(
                e.message.contains(&format!("public.{planted}"))
                    && e.message.contains("pwn()")
                    && e.message.contains(&low.name),
                "{planted}: {}",
                e.message
            );
        }
        let mut c = db.client();
        let calls: i64 = c
            .query_one("SELECT count(*) FROM public.trigger_calls", &[])
            .unwrap()
            .get(0);
        assert_eq!(calls, 0, "{planted}: the planted trigger ran");
        let su: bool = c
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
                &[&low.name],
            )
            .unwrap()
            .get(0);
        assert!(!su, "{planted}: the planting role became a superuser");
        let rows: i64 = c
            .query_one(&format!("SELECT count(*) FROM public.{planted}"), &[])
            .unwrap()
            .get(0);
        assert_eq!(rows, 0, "{planted}: nothing written into it");
    }
}
