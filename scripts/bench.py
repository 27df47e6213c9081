#!/usr/bin/env python3
"""sessiondb benchmark harness: the runbook's commands against baselines, in one run.

Starts a throwaway PostgreSQL (fsync on), generates a legacy store and measures, all as
ratios between numbers of the same run (README, "Benchmarks", says what each row means):

  - `cp -a` of the store's folders (SQLite db + JSON store + sessions dir) against the
    first `sessiondb backup`, both from a cold page cache when the kernel lets us drop it,
    then both warm;
  - the full load as the runbook runs it (`backup`, then `migrate-state --dry-run=false`,
    which uses that matching backup);
  - the psql floor: `\\copy` of the same rows, pre-rendered, plus `CREATE INDEX ... gin`,
    once as before (server defaults, maintenance_work_mem 512MB for the index) and once
    on sessiondb's own session settings and table storage (read from the server's log of
    a probe load and from the catalog after the load), so no gain comes only from storage;
  - two outside baselines on the same rows, from a SQLite copy holding each state in its
    `state` column: a plain Python script (psycopg 3, `executemany` in one transaction,
    then the GIN index) and pgloader (then the GIN index);
  - after 1% of the states changed: the catch-up as the runbook runs it (no `--backup`:
    it takes its own), with its backup's share from the report's `details.phases_ms`;
    a full verify; a second `backup` against the first;
  - every command's peak RSS (its own: see GNU_TIME) and CPU, and the server's CPU.
sessiondb's sequence runs first; the floors and outside baselines last, on rows exported
right after the load, so the catch-up follows the load as in the runbook.

BENCH_SESSIONS (default 200000) sets the size; BENCH_LARGE=1000000 adds a case at that
size (every sessiondb command, its peak RSS and its growth from the main case, and the
load time against the main case). The large case runs warm: instead of dropping the page
cache it waits, at most ten minutes, for the fixture's writeback (os.sync() after a
million small files waited longer than that on this disk).

The mapped-store case (SPEC §9, README "Migrating your application's own schema"): a
store made by `generate-fixture --schema app` (agent_council's shape: users, sessions
with their own columns, each state in sessions/<id>/state.json), the URL from the
variable its sessiondb.toml names (`url_env`), a fresh database, the page cache warm
(the fixture's writeback waited for first, not forced), and the runbook's sequence:
`backup`, `migrate-state --dry-run=false` (the full load, on that backup), `verify`,
`migrate-state --dry-run=false` again with nothing changed (must write nothing), 1% of
the sessions changed as the application changes them (their `question` and
`updated_at` in the SQLite `sessions` table, one transaction, and their state.json
rewritten), the catch-up (`migrate-state --dry-run=false`, no `--backup`: it takes its
own), `verify` again. Each command runs as scripts/steps.sh runs it (no --quiet: the
progress lines' phase times go into the facts, as the mapped path reports no
`details.phases_ms` of its own). Every report must be ok or warn with exit 0, each
verify must find no difference, the load must insert every session and the catch-up
must write exactly the changed ones: else the case fails (its `error`, exit 3). Ratios:
catch-up / full load (<= 0.1), each verify / full load (<= 0.2), again / full load (no
goal); every command's peak RSS (< 200 MB). In results.json its case object has
`"shape": "app"` (the others `"default"`).

Environment:
  BENCH_SESSIONS      the default case's size (default 200000)
  BENCH_LARGE         a second default-shape case at that size (default 0: none)
  BENCH_APP_SESSIONS  the mapped-store case's size (default 50000; 0 turns it off)
  BENCH_ONLY          `default` or `app`: run only that shape's cases (default: both;
                      `app` also skips the settings probe and BENCH_LARGE)
  BENCH_RESULTS       the results file to append to (default bench/results.json)
  BENCH_SESSIONDB     the sessiondb binary to measure (default target/release/sessiondb)

Appends one object to the results file and prints a table with issue 19's goals.
Needs python3 >= 3.11 and psql; psycopg 3 (PyPI `psycopg[binary]`) and pgloader (Debian
`pgloader`) for the outside baselines, GNU time (Debian `time`) for peak RSS:
scripts/bench installs them when missing. A baseline that cannot run says why in the
table and in the results.
"""
import datetime
import json
import os
import platform
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# BENCH_SESSIONDB: another build to measure (an older commit's, to compare before/after).
SDB = os.environ.get("BENCH_SESSIONDB") or os.path.join(ROOT, "target/release/sessiondb")
N = int(os.environ.get("BENCH_SESSIONS", "200000"))
LARGE = int(os.environ.get("BENCH_LARGE", "0"))
# The mapped-store case (an application's own schema, SPEC §9): its size, 0 for none.
APP_N = int(os.environ.get("BENCH_APP_SESSIONS", "50000"))
# BENCH_ONLY=default|app: only that shape's cases (empty: both).
ONLY = os.environ.get("BENCH_ONLY", "").strip().lower()
if ONLY not in ("", "default", "app"):
    sys.exit(f"bench: BENCH_ONLY={ONLY!r}: expected `default` or `app` (or unset for both)")
# BENCH_RESULTS: the results file appended to (a test run's own, say).
RESULTS = os.path.abspath(os.environ.get("BENCH_RESULTS") or os.path.join(ROOT, "bench/results.json"))
PROBE_SESSIONS = 1000
CHANGED_FRACTION = 0.01
INDEX_MEM = "512MB"  # what the old floor used for its index build
RSS_GOAL_MB = 200
PGLOADER_HEAP_MB = 4096

# The tables as sessiondb's schema version 1 creates them (src/target/schema.rs).
DDL = (
    "CREATE TABLE sessions (id text PRIMARY KEY, user_id text, status text, current_step text,"
    " cost double precision, created_at timestamptz, updated_at timestamptz, state jsonb);"
    "CREATE TABLE session_state (session_id text PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,"
    " state jsonb NOT NULL, updated_at timestamptz NOT NULL);"
)


# One digest of every stored state, to check a baseline loaded the same documents.
STATES_MD5 = "SELECT md5(string_agg(md5(state::text), '' ORDER BY session_id COLLATE \"C\")) FROM session_state"


class Failed(Exception):
    pass


# ---------------------------------------------------------------------------------------
# Running commands


class Ctx:
    """The run's folders, the server, and how commands are shown in the results."""

    def __init__(self, work):
        self.work = work
        self.pg_dir = os.path.join(work, "pg")
        self.admin_url = None  # with its password: only ever in the environment
        self.password = None
        self.base_url = None  # postgresql://postgres@host:port (no password)
        self.notes = []

    def show(self, argv):
        """A command as the results show it: paths relative to the run, no secrets."""
        out = []
        for a in argv:
            a = str(a)
            if self.password and self.password in a:
                a = a.replace(self.password, "***")
            a = a.replace(self.work, "$WORK").replace(ROOT + "/", "")
            out.append(a if re.fullmatch(r"[\w@%+=:,./$*-]+", a) else "'" + a.replace("'", "'\\''") + "'")
        return " ".join(out)

    def url(self, db):
        return f"{self.base_url}/{db}"

    def env(self, db=None, config=None):
        e = dict(os.environ, PGPASSWORD=self.password)
        if db:
            e["DATABASE_URL"] = self.admin_url.rsplit("/", 1)[0] + "/" + db
        if config:
            e["SESSIONDB_CONFIG"] = config
        return e


def server_cpu(ctx):
    """CPU seconds the PostgreSQL server has used so far: the postmaster's own, its
    reaped children's (cutime/cstime: the backends of closed connections) and those of
    its live children."""
    try:
        with open(os.path.join(ctx.pg_dir, "data", "postmaster.pid")) as f:
            pm = int(f.readline())
        tick = os.sysconf("SC_CLK_TCK")

        def fields(pid):
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
            return s[s.rindex(")") + 2:].split()

        f = fields(pm)
        total = sum(int(x) for x in f[11:15])
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) != pm:
                try:
                    g = fields(d)
                except OSError:
                    continue
                if int(g[1]) == pm:
                    total += int(g[11]) + int(g[12])
        return total / tick
    except (OSError, ValueError):
        return None


# A command's own peak RSS needs a small process between the harness and it: on exec,
# Linux folds the high-water RSS of the memory the new program replaces into the
# process's maxrss, and a child forked (or vforked) from this harness replaces a copy of
# the harness, so wait4 on a direct child reports at least the harness's own peak (a
# 500 MB harness measured `true` at 513 MB). GNU time (Debian `time`) adds about 1 MB;
# without it a minimal Python in between adds about 7 MB (the results say which).
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
PY_MEASURE = (
    "import os,sys\n"
    "pid=os.fork()\n"
    "if pid==0:\n"
    "    try: os.execvp(sys.argv[2],sys.argv[2:])\n"
    "    finally: os._exit(127)\n"
    "_,st,ru=os.wait4(pid,0)\n"
    "open(sys.argv[1],'w').write(str(ru.ru_maxrss)+'\\n')\n"
    "c=os.waitstatus_to_exitcode(st)\n"
    "sys.exit(c if c>=0 else 128-c)\n"
)
RSS_VIA = "GNU time (/usr/bin/time -f %M)" if GNU_TIME else "a minimal Python parent (adds about 7 MB)"


def dirty_mb():
    """Dirty and under-writeback page cache (MB): a backup's syncfs waits for all of the
    filesystem's, whoever wrote it (the server's files too, when on the same one)."""
    try:
        with open("/proc/meminfo") as f:
            kb = sum(int(line.split()[1]) for line in f if line.startswith(("Dirty:", "Writeback:")))
        return round(kb / 1024, 1)
    except OSError:
        return None


def timed(ctx, argv, env=None, ok=(0,), label=None):
    """Run a command; return a record: seconds, its own peak RSS (see GNU_TIME), its CPU
    (user + system, with any children it waited for), the server's CPU meanwhile, its
    stdout, and the command as shown."""
    dirty = dirty_mb()
    cpu0 = server_cpu(ctx)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", dir=ctx.work, prefix="rss-") as rss:
        if GNU_TIME:
            wrapped = [GNU_TIME, "-f", "%M", "-o", rss.name, *map(str, argv)]
        else:
            wrapped = [sys.executable, "-S", "-c", PY_MEASURE, rss.name, *map(str, argv)]
        t0 = time.monotonic()
        p = subprocess.Popen(wrapped, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        dt = time.monotonic() - t0
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        # GNU time writes "Command exited with non-zero status N" before the number.
        lines = [x for x in rss.read().split("\n") if x.strip().isdigit()]
        rss_kb = int(lines[-1]) if lines else None
    cpu1 = server_cpu(ctx)
    rec = {
        "s": dt,
        "rss_mb": rss_kb / 1024 if rss_kb is not None else None,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "dirty_mb_before": dirty,
        "server_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
        "exit": code,
        "command": label or ctx.show(argv),
        "stdout": stdout,
        "stderr": stderr,
    }
    if code not in ok:
        tail = stderr[-3000:] or stdout[-3000:]
        if ctx.password:
            tail = tail.replace(ctx.password, "***")
        raise Failed(f"exit {code}: {rec['command']}\n{tail}")
    return rec


def sh(ctx, argv, env=None):
    return timed(ctx, argv, env=env)["stdout"]


def psql(ctx, db, *sql):
    argv = ["psql", ctx.url(db), "-X", "-v", "ON_ERROR_STOP=1", "-Atq"]
    for s in sql:
        argv += ["-c", s]
    return argv


def q(ctx, db, *sql):
    return sh(ctx, psql(ctx, db, *sql), env=ctx.env())


def new_db(ctx, name):
    q(ctx, "postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    return name


def drop_caches(ctx):
    """Flush dirty pages, then drop the page cache; False when the kernel refuses."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        msg = f"could not drop the page cache ({e.strerror}): the cold measurements ran warm"
        if msg not in ctx.notes:
            ctx.notes.append(msg)
        return False


def settle_writeback(ctx, case, what, limit_s=600, below_mb=64):
    """The large case, instead of drop_caches: wait (at most limit_s) for the page cache's
    dirty data to reach the disk without forcing it (os.sync() after writing a million
    small files waited over ten minutes on this disk's writeback). The commands after it
    run warm; the wait and what was left are recorded."""
    wait_writeback(case, what, limit_s, below_mb)
    note = "the large case runs warm: its page cache is not dropped (see facts.writeback_waits)"
    if note not in case.notes:
        case.notes.append(note)
    return False


def wait_writeback(case, what, limit_s=600, below_mb=64):
    """Wait (at most limit_s) for the page cache's dirty data to reach the disk without
    forcing it; the wait and what was left go in facts.writeback_waits."""
    t0 = time.monotonic()
    left = dirty_mb()
    while left is not None and left > below_mb and time.monotonic() - t0 < limit_s:
        time.sleep(5)
        left = dirty_mb()
    case.facts.setdefault("writeback_waits", []).append(
        {"before": what, "waited_s": round(time.monotonic() - t0, 1), "dirty_mb_left": left})


def tree_size(*paths):
    files = size = 0
    for p in paths:
        if os.path.isfile(p):
            files, size = files + 1, size + os.lstat(p).st_size
            continue
        for d, _, fs in os.walk(p):
            for f in fs:
                files += 1
                size += os.lstat(os.path.join(d, f)).st_size
    return files, size


class LoadAvg(threading.Thread):
    """Samples /proc/loadavg every 5 s: the run's numbers are labelled with it."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            with open("/proc/loadavg") as f:
                self.samples.append((time.monotonic(), float(f.read().split()[0])))
            self.stop.wait(5)

    def between(self, t0, t1):
        xs = [v for t, v in self.samples if t0 <= t <= t1] or [v for _, v in self.samples[-1:]]
        if not xs:
            return None
        return {"mean": round(sum(xs) / len(xs), 2), "max": max(xs), "samples": len(xs)}


# ---------------------------------------------------------------------------------------
# Results


class Case:
    def __init__(self, n, shape="default"):
        self.n = n
        # "default": SPEC §1's store (run_case); "app": an application's own schema (run_app_case).
        self.shape = shape
        self.error = None  # why the case failed, when it did (it is recorded all the same)
        self.measures = {}
        self.ratios = {}
        self.facts = {"sessions": n}
        self.notes = []

    def m(self, name, rec_or_value, unit="s", command=None, key="s", **extra):
        if isinstance(rec_or_value, dict):
            v = {"value": round(rec_or_value[key], 3), "unit": unit, "command": rec_or_value["command"]}
        else:
            v = {"value": round(rec_or_value, 3) if isinstance(rec_or_value, float) else rec_or_value,
                 "unit": unit, "command": command}
        v.update(extra)
        self.measures[name] = v
        return v["value"]

    def cmd(self, name, rec):
        """A command's time, peak RSS, CPU and the server's CPU, under one name."""
        self.m(name, rec)
        self.m(name + "_rss", rec, unit="MB", key="rss_mb")
        self.m(name + "_cpu", rec, unit="s", key="cpu_s", user=round(rec["user_s"], 3), sys=round(rec["sys_s"], 3),
               dirty_mb_before=rec["dirty_mb_before"])
        if rec["server_cpu_s"] is not None:
            self.m(name + "_server_cpu", rec, unit="s", key="server_cpu_s")

    def ratio(self, name, num, den, goal=None, op="<="):
        a, b = self.measures.get(num), self.measures.get(den)
        if not a or not b or not b["value"]:
            return None
        v = a["value"] / b["value"]
        r = {"value": round(v, 3), "num": num, "den": den}
        if goal is not None:
            r["goal"] = f"{op} {goal}"
            r["met"] = v <= goal if op == "<=" else v >= goal
        self.ratios[name] = r
        return v

    def value(self, name):
        x = self.measures.get(name)
        return x["value"] if x else None


# ---------------------------------------------------------------------------------------
# What sessiondb sets: the probe load


SET_RE = re.compile(r"^\s*SET\s+(?:SESSION\s+|LOCAL\s+)?([A-Za-z_][\w.]*)\s*(?:=|\bTO\b)\s*(.+?)\s*$", re.I | re.S)
SET_CONFIG_RE = re.compile(r"set_config\(\s*'([\w.]+)'\s*,\s*('(?:[^']|'')*'|\$\d+)", re.I)
NOT_STORAGE = {"search_path", "application_name"}


def parse_settings(log):
    """The GUCs that sessiondb's sessions set, from a server log with log_statement=all:
    `SET name = value` statements (also inside a batch) and `set_config('name', ...)`
    calls with their bound parameters. Returns ({name: value}, [other notable statements])."""
    found, notable = {}, []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"\b(?:LOG|ERROR):\s+(?:statement|execute [^:]*):\s(.*)$", line)
        if not m:
            continue
        stmt = m.group(1)
        j = i + 1  # a statement may go on over the next lines (no log prefix there)
        while j < len(lines) and not re.match(r"^\d{4}-\d\d-\d\d ", lines[j]):
            stmt += "\n" + lines[j]
            j += 1
        params = {}
        if j < len(lines) and "DETAIL:  parameters:" in lines[j]:
            for k, v in re.findall(r"(\$\d+) = ('(?:[^']|'')*'|NULL)", lines[j]):
                params[k] = v
        for part in stmt.split(";"):
            s = SET_RE.match(part)
            if s and s.group(1).lower() not in ("transaction", "constraints", "role", "session"):
                found[s.group(1).lower()] = s.group(2)
            elif re.match(r"^\s*(ALTER|COPY .*FREEZE|TRUNCATE)", part, re.I):
                short = " ".join(part.split())[:160]
                if short not in notable:
                    notable.append(short)
        for name, v in SET_CONFIG_RE.findall(stmt):
            found[name.lower()] = params.get(v, v) if v.startswith("$") else v
    return {k: v for k, v in found.items() if k not in NOT_STORAGE}, notable


def probe_settings(ctx, res):
    """Load a small store with every statement logged; read back what sessiondb SETs."""
    store = os.path.join(ctx.work, "probe")
    sh(ctx, [SDB, "generate-fixture", "--out", store, "--sessions", str(PROBE_SESSIONS), "--seed", "2", "--quiet"])
    db = new_db(ctx, "bench_probe")
    q(ctx, "postgres", f"ALTER DATABASE {db} SET log_statement = 'all'",
      f"ALTER DATABASE {db} SET log_parameter_max_length = 200")
    log = os.path.join(ctx.pg_dir, "server.log")
    start = os.path.getsize(log)
    env = ctx.env(db, os.path.join(store, "sessiondb.toml"))
    for argv in ([SDB, "backup", "--quiet"], [SDB, "migrate-state", "--dry-run=false", "--quiet"]):
        timed(ctx, argv, env=env)
    time.sleep(0.5)  # the logging collector's last lines
    with open(log, errors="replace") as f:
        f.seek(start)
        text = f.read()
    settings, notable = parse_settings(text)
    res["sessiondb_settings"] = {
        "how": f"server log (log_statement=all) of backup + migrate-state --dry-run=false on a {PROBE_SESSIONS}-session store",
        "set": settings,
        "other_statements": notable,
    }
    shutil.rmtree(store, ignore_errors=True)
    q(ctx, "postgres", f'DROP DATABASE "{db}" WITH (FORCE)')
    return settings, notable


def storage_of(ctx, db, schema="public"):
    """How the two tables store their rows: reloptions (also the TOAST table's),
    persistence, each column's storage and compression, and which compression the
    stored states actually carry."""
    rows = q(ctx, db, f"""
        SELECT c.relname, c.relpersistence, coalesce(array_to_string(c.reloptions, ','), ''),
               coalesce(array_to_string(t.reloptions, ','), '')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
         WHERE n.nspname = '{schema}' AND c.relname IN ('sessions', 'session_state') ORDER BY 1""")
    out = {"tables": {}, "columns": {}, "state_compression": {}}
    for line in rows.splitlines():
        name, pers, opts, topts = line.split("|")
        out["tables"][name] = {"persistence": pers, "reloptions": opts, "toast_reloptions": topts}
    cols = q(ctx, db, f"""
        SELECT c.relname, a.attname, a.attstorage, a.attcompression, t.typstorage
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_type t ON t.oid = a.atttypid
         WHERE n.nspname = '{schema}' AND c.relname IN ('sessions', 'session_state') AND a.attnum > 0
           AND NOT a.attisdropped ORDER BY 1, a.attnum""")
    for line in cols.splitlines():
        t, col, st, comp, default = line.split("|")
        out["columns"][f"{t}.{col}"] = {"storage": st, "compression": comp, "type_default_storage": default}
    comp = q(ctx, db, f"SELECT coalesce(pg_column_compression(state), 'none'), count(*) FROM \"{schema}\".session_state GROUP BY 1 ORDER BY 1")
    for line in comp.splitlines():
        k, v = line.split("|")
        out["state_compression"][k] = int(v)
    opc = q(ctx, db, f"""
        SELECT oc.opcname FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid
          JOIN pg_class ct ON ct.oid = i.indrelid JOIN pg_namespace n ON n.oid = ct.relnamespace
          JOIN pg_am am ON am.oid = ci.relam JOIN pg_opclass oc ON oc.oid = i.indclass[0]
         WHERE n.nspname = '{schema}' AND ct.relname = 'session_state' AND am.amname = 'gin' LIMIT 1""").strip()
    out["gin_opclass"] = opc or "jsonb_ops"
    return out


def mirror_storage_sql(st):
    """ALTER TABLE statements giving fresh tables the storage `st` describes."""
    sql = []
    for t, d in st["tables"].items():
        if d["reloptions"]:
            sql.append(f"ALTER TABLE {t} SET ({d['reloptions']})")
        if d["toast_reloptions"]:
            opts = ",".join("toast." + o for o in d["toast_reloptions"].split(","))
            sql.append(f"ALTER TABLE {t} SET ({opts})")
        if d["persistence"] == "u":
            sql.append(f"ALTER TABLE {t} SET UNLOGGED")
    names = {"p": "plain", "e": "external", "m": "main", "x": "extended"}
    comps = {"p": "pglz", "l": "lz4"}
    for tc, d in st["columns"].items():
        t, c = tc.split(".", 1)
        if d["storage"] != d["type_default_storage"]:
            sql.append(f"ALTER TABLE {t} ALTER COLUMN {c} SET STORAGE {names[d['storage']]}")
        if d["compression"] in comps:
            sql.append(f"ALTER TABLE {t} ALTER COLUMN {c} SET COMPRESSION {comps[d['compression']]}")
    return sql


# ---------------------------------------------------------------------------------------
# The baselines


def copy_text_fields(line):
    """One line of COPY text format as fields (None for \\N)."""
    esc = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}

    def un(m):
        s = m.group(1)
        if s[0] == "x":
            return chr(int(s[1:], 16))
        if s[0].isdigit():
            return chr(int(s, 8))
        return esc.get(s, s)

    out = []
    for f in line.split("\t"):
        if f == "\\N":
            out.append(None)
        elif "\\" in f:
            out.append(re.sub(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", un, f))
        else:
            out.append(f)
    return out


def sqlite_variant(rows_tsv, path):
    """A SQLite copy of the loaded rows with each state in the sessions.state column, in
    the application's own table layout: the outside baselines' input."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id TEXT, status TEXT, current_step TEXT,"
               " cost REAL, created_at TEXT, updated_at TEXT, state TEXT)")
    with open(rows_tsv, encoding="utf-8", newline="\n") as f:
        batch = []
        for line in f:
            r = copy_text_fields(line[:-1] if line.endswith("\n") else line)
            r[4] = float(r[4]) if r[4] is not None else None
            batch.append(r)
            if len(batch) >= 5000:
                db.executemany("INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?)", batch)
                batch = []
        db.executemany("INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?)", batch)
    db.commit()
    db.close()


def plain_load(sqlite_path, url, opclass):
    """The plain Python migration script (run as a child by the harness, so its own peak
    RSS is measured): every row from the SQLite file into the same two tables with
    psycopg 3's executemany in one transaction, then the GIN index. Prints its phases."""
    import psycopg  # noqa: PLC0415 (the baseline's own dependency)

    src = sqlite3.connect(sqlite_path)
    t0 = time.monotonic()
    with psycopg.connect(url) as conn:
        with conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO sessions (id, user_id, status, current_step, cost, created_at, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    src.execute("SELECT id, user_id, status, current_step, cost, created_at, updated_at FROM sessions"))
                cur.executemany(
                    "INSERT INTO session_state (session_id, state, updated_at) VALUES (%s, %s, %s)",
                    src.execute("SELECT id, state, coalesce(updated_at, created_at) FROM sessions WHERE state IS NOT NULL"))
        t1 = time.monotonic()
        conn.execute(f"SET maintenance_work_mem = '{INDEX_MEM}'")
        conn.execute(f"CREATE INDEX ON session_state USING gin (state {opclass})")
        conn.commit()
    t2 = time.monotonic()
    print(json.dumps({"load_s": t1 - t0, "index_s": t2 - t1}))


def run_floor(ctx, case, name, db, tsv_s, tsv_st, settings, storage_sql, opclass):
    """psql \\copy of the pre-rendered rows into fresh tables, then the GIN index."""
    new_db(ctx, db)
    q(ctx, db, DDL, *storage_sql)
    sets = [f"SET {k} = {v}" for k, v in settings.items()]
    copy = timed(ctx, psql(ctx, db, *sets,
                           f"\\copy sessions (id, user_id, status, current_step, cost, created_at, updated_at) FROM '{tsv_s}'",
                           f"\\copy session_state FROM '{tsv_st}'"), env=ctx.env())
    index = timed(ctx, psql(ctx, db, *sets, f"CREATE INDEX ON session_state USING gin (state {opclass})"), env=ctx.env())
    case.cmd(f"{name}_copy", copy)
    case.cmd(f"{name}_index", index)
    case.m(name, copy["s"] + index["s"], command=f"{copy['command']} ; {index['command']}")


def outside_baselines(ctx, case, res, rows_tsv, opclass):
    n = case.n
    sq = os.path.join(ctx.work, f"plain-{n}.db")
    sqlite_variant(rows_tsv, sq)
    case.facts["sqlite_variant_bytes"] = os.path.getsize(sq)
    # The plain Python script.
    try:
        import psycopg  # noqa: F401, PLC0415

        has_psycopg = True
    except ImportError:
        has_psycopg = False
    if not has_psycopg:
        case.notes.append("plain Python script not run: psycopg 3 is not installed (pip install 'psycopg[binary]'; scripts/bench does)")
    else:
        db = new_db(ctx, f"bench_plain_{n}")
        q(ctx, db, DDL)
        try:
            rec = timed(ctx, [sys.executable, os.path.abspath(__file__), "--plain-load", sq, ctx.url(db), opclass],
                        env=ctx.env())
            phases = json.loads(rec["stdout"].strip().splitlines()[-1])
            got = int(q(ctx, db, "SELECT count(*) FROM session_state").strip())
            want = case.facts.get("target_state_rows")
            if got != want:
                raise Failed(f"the plain Python script loaded {got} states of {want}")
            if q(ctx, db, STATES_MD5).strip() != case.facts["target_states_md5"]:
                raise Failed("the plain Python script's states differ from sessiondb's (the SQLite copy is not the same rows)")
            case.cmd("python_script", rec)
            case.m("python_script_load", phases["load_s"], command=rec["command"])
            case.m("python_script_index", phases["index_s"], command=rec["command"])
            case.facts["python_script_rows"] = got
            import psycopg  # noqa: PLC0415

            case.facts["psycopg"] = f"{psycopg.__version__} ({psycopg.pq.__impl__})"
        except Failed as e:
            case.notes.append(f"plain Python script failed: {str(e)[:600]}")
        q(ctx, "postgres", f'DROP DATABASE "{db}" WITH (FORCE)')
    # pgloader: the SQLite file's sessions table, state in its column, into the same
    # sessions table (state jsonb); then the GIN index on that column.
    pgl = shutil.which("pgloader")
    if not pgl:
        case.notes.append("pgloader not run: no pgloader on PATH (Debian package `pgloader`; scripts/bench installs it when apt-get works)")
    else:
        # pgloader's own defaults, with a 4 GB Lisp heap (its default heap was exhausted
        # at 50,000 sessions); if that still runs out, once more with `prefetch rows`
        # bounded, pgloader's documented remedy. A failed attempt is not timed; the
        # results say which attempt the number is from.
        attempts = [(PGLOADER_HEAP_MB, None), (PGLOADER_HEAP_MB, 10000)]
        for i, (heap, prefetch) in enumerate(attempts):
            db = new_db(ctx, f"bench_pgloader_{n}")
            q(ctx, db, DDL)
            load = os.path.join(ctx.work, "pgloader.load")
            with_ = "data only, create no tables, create no indexes, reset no sequences"
            if prefetch:
                with_ += f", prefetch rows = {prefetch}"
            with open(load, "w") as f:
                f.write(f"LOAD DATABASE\n  FROM sqlite://{sq}\n  INTO {ctx.url(db)}?sslmode=disable\n"
                        f"  WITH {with_}\n  INCLUDING ONLY TABLE NAMES LIKE 'sessions';\n")
            try:
                rec = timed(ctx, [pgl, "--dynamic-space-size", str(heap), "--no-ssl-cert-verification", load],
                            env=ctx.env())
                got = int(q(ctx, db, "SELECT count(*) FROM sessions WHERE state IS NOT NULL").strip())
                want = case.facts.get("target_state_rows")
                if got != want:
                    raise Failed(f"pgloader loaded {got} states of {want}:\n{rec['stdout'][-2000:]}")
                md5 = q(ctx, db, STATES_MD5.replace("session_id", "id").replace(
                    "FROM session_state", "FROM sessions WHERE state IS NOT NULL")).strip()
                if md5 != case.facts["target_states_md5"]:
                    raise Failed("pgloader's states differ from sessiondb's")
                index = timed(ctx, psql(ctx, db, f"SET maintenance_work_mem = '{INDEX_MEM}'",
                                        f"CREATE INDEX ON sessions USING gin (state {opclass})"), env=ctx.env())
                case.cmd("pgloader_load", rec)
                case.cmd("pgloader_index", index)
                case.m("pgloader", rec["s"] + index["s"], command=f"{rec['command']} ; {index['command']}")
                case.facts["pgloader_rows"] = got
                case.facts["pgloader_version"] = sh(ctx, [pgl, "--version"]).split("\n")[0]
                with open(load) as f:
                    case.facts["pgloader_load_file"] = f.read().replace(ctx.work, "$WORK")
                if prefetch:
                    case.notes.append(f"pgloader ran with prefetch rows = {prefetch}: with its default it exhausted its {heap} MB heap")
                break
            except Failed as e:
                text = str(e)
                retry = "Heap exhausted" in text and i + 1 < len(attempts)
                if not retry:
                    case.notes.append(f"pgloader failed: {text[:600]}")
                    break
                else:
                    case.facts["pgloader_heap_exhausted"] = {"heap_mb": heap, "prefetch_rows": prefetch or "default"}
            finally:
                q(ctx, "postgres", f'DROP DATABASE "{db}" WITH (FORCE)')
    os.unlink(sq)


# ---------------------------------------------------------------------------------------
# One case


def mark_state(path, mark):
    """Rewrite one state.json with `mark` set, as the application rewrites a session's
    state; False when there is none to rewrite (no file, a symlink, not a JSON object)."""
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    with open(path, "rb") as f:
        body = f.read()
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    doc[mark] = True
    with open(path, "w") as f:
        json.dump(doc, f)
    return True


def change_states(store, fraction, seed, mark):
    """The default shape: `fraction` of the sessions folder's sessions get their state
    file rewritten (the SQLite rows stay as they are)."""
    dirs = sorted(os.listdir(os.path.join(store, "sessions")))
    rnd = random.Random(seed)
    changed = 0
    for d in rnd.sample(dirs, max(1, int(len(dirs) * fraction))):
        changed += mark_state(os.path.join(store, "sessions", d, "state.json"), mark)
    return changed


def change_app_sessions(store, conf, fraction, seed, mark):
    """An application's own schema: `fraction` of the sessions changed the way the
    application changes them, the row in its SQLite table (`question` and `updated_at`,
    the latter in the text form SQLAlchemy writes: naive UTC, six digits) in one
    transaction, and the session's state.json rewritten. The store's paths come from its
    sessiondb.toml (`conf`). Returns what was changed."""
    sq = conf.get("sqlite", {})
    db_path = os.path.join(store, sq.get("path", "data/app.db"))
    sessions_dir = os.path.join(store, sq.get("sessions_dir", "sessions"))
    table = sq.get("table", "sessions")
    id_col = sq.get("columns", {}).get("id", "id")
    updated_col = sq.get("columns", {}).get("updated_at", "updated_at")
    db = sqlite3.connect(db_path)
    try:
        ids = [r[0] for r in db.execute(f'SELECT "{id_col}" FROM "{table}" ORDER BY "{id_col}"')]
        rnd = random.Random(seed)
        pick = rnd.sample(ids, max(1, int(len(ids) * fraction))) if ids else []
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        t0 = time.monotonic()
        with db:
            rows = 0
            for sid in pick:
                rows += db.execute(
                    f'UPDATE "{table}" SET question = question || ?, "{updated_col}" = ? WHERE "{id_col}" = ?',
                    (" (edited)", now, sid)).rowcount
        files = sum(mark_state(os.path.join(sessions_dir, str(sid), "state.json"), mark) for sid in pick)
        return {"sessions": len(ids), "rows": rows, "state_files": files,
                "without_state_file": len(pick) - files, "updated_at": now,
                "columns": ["question", updated_col], "took_s": round(time.monotonic() - t0, 3)}
    finally:
        db.close()


def report_of(rec):
    return json.loads(rec["stdout"])


def run_case(ctx, n, full, res):
    case = Case(n)
    t_case = time.monotonic()
    store = os.path.join(ctx.work, f"store-{n}")
    cfg = os.path.join(store, "sessiondb.toml")
    rec = timed(ctx, [SDB, "generate-fixture", "--out", store, "--sessions", str(n), "--seed", "1", "--quiet"])
    case.m("generate", rec)
    db = new_db(ctx, f"bench_{n}")
    env = ctx.env(db, cfg)
    case.facts["env"] = "DATABASE_URL=<the run's database> SESSIONDB_CONFIG=$WORK/store-N/sessiondb.toml"

    # The first backup against cp -a of the same folders, both cold; then both warm.
    src = [os.path.join(store, "data"), os.path.join(store, "sessions")]
    dest = os.path.join(ctx.work, "cp")

    def cp_folders(name, cold):
        os.mkdir(dest)
        rec = timed(ctx, ["cp", "-a", *src, dest + "/"])
        sync = timed(ctx, ["sync", "-f", dest])
        case.cmd(name, rec)
        case.measures[name]["cold_cache"] = cold
        case.m(name + "_sync", rec["s"] + sync["s"], command=f"{rec['command']} ; {sync['command']}", cold_cache=cold)
        case.facts["cp_a_files"], case.facts["cp_a_bytes"] = tree_size(dest)
        shutil.rmtree(dest)

    if full:
        cp_folders("cp_a", drop_caches(ctx))
        # cp -a of only what the backup copies: the db, the JSON store, the state files.
        cold = drop_caches(ctx)
        os.mkdir(dest)
        lst = os.path.join(ctx.work, "state-files.lst")
        with open(lst, "wb") as f:
            for d in os.listdir(os.path.join(store, "sessions")):
                p = os.path.join("sessions", d, "state.json")
                if os.path.isfile(os.path.join(store, p)):
                    f.write(p.encode(errors="surrogateescape") + b"\0")
        t0 = time.monotonic()
        timed(ctx, ["cp", "-a", os.path.join(store, "data"), dest + "/"])
        r2 = timed(ctx, ["sh", "-c", f"cd '{store}' && xargs -0 cp -a --parents -t '{dest}' < '{lst}' && sync -f '{dest}'"],
                   label=f"cp -a $WORK/store-{n}/data $WORK/cp/ ; (cd $WORK/store-{n} && xargs -0 cp -a --parents -t $WORK/cp < <every sessions/*/state.json> && sync -f $WORK/cp)")
        case.m("cp_a_state_sync", time.monotonic() - t0, command=r2["command"], cold_cache=cold)
        shutil.rmtree(dest)
        os.unlink(lst)
    cold = drop_caches(ctx) if full else settle_writeback(ctx, case, "backup")
    rec = timed(ctx, [SDB, "backup", "--quiet"], env=env)
    first = report_of(rec)
    first_dir = first["details"]["backup"]
    case.cmd("backup", rec)
    case.measures["backup"]["cold_cache"] = cold
    case.facts["backup_counts"] = first["counts"]
    case.facts["backup_dir_files"], case.facts["backup_dir_bytes"] = tree_size(first_dir)
    if full:
        # Warm: cp -a right after, then a full backup again with the first set aside (so
        # it is still a first backup: nothing earlier to share with), then put back.
        cp_folders("cp_a_warm", False)
        aside = os.path.join(ctx.work, "first-backup-aside")
        os.rename(first_dir, aside)
        try:
            rec = timed(ctx, [SDB, "backup", "--quiet"], env=env)
            case.cmd("backup_warm", rec)
            shutil.rmtree(report_of(rec)["details"]["backup"])
        finally:
            os.rename(aside, first_dir)

    # The full load, as the runbook runs it: after `backup`, which it uses.
    rec = timed(ctx, [SDB, "migrate-state", "--dry-run=false", "--quiet"], env=env)
    load = report_of(rec)
    case.cmd("load", rec)
    case.facts["load_phases_ms"] = load["details"].get("phases_ms")
    case.facts["inserted"] = load["counts"].get("inserted")
    case.facts["state_bytes"] = load["counts"].get("bytes")
    if load["details"].get("backup") != first_dir:
        case.notes.append(f"the full load did not use the backup just taken ({load['details'].get('backup')})")
    case.facts["target_state_rows"] = int(q(ctx, db, "SELECT count(*) FROM session_state").strip())
    if full:
        case.facts["target_states_md5"] = q(ctx, db, STATES_MD5).strip()

    if full:
        storage = storage_of(ctx, db)
        case.facts["sessiondb_storage"] = storage
        opclass = storage["gin_opclass"]
        tsv_s = os.path.join(ctx.work, "sessions.tsv")
        tsv_st = os.path.join(ctx.work, "state.tsv")
        tsv_all = os.path.join(ctx.work, "rows.tsv")
        q(ctx, db,
          f"\\copy (SELECT id, user_id, status, current_step, cost, created_at, updated_at FROM sessions) TO '{tsv_s}'",
          f"\\copy (SELECT session_id, state::text, updated_at FROM session_state) TO '{tsv_st}'",
          f"\\copy (SELECT s.id, s.user_id, s.status, s.current_step, s.cost, s.created_at, s.updated_at, st.state::text"
          f" FROM sessions s LEFT JOIN session_state st ON st.session_id = s.id) TO '{tsv_all}'")

    def baselines():
        """The floors and the outside baselines on the rows exported above: run after
        sessiondb's own sequence, so that the catch-up follows the load as in the
        runbook, not gigabytes of baseline loads into the same server and filesystem."""
        # The cold-cache rows above dropped the page cache: read the exported rows once,
        # so the floors start warm, as sessiondb's load (right after its backup) did.
        for p in (tsv_s, tsv_st, tsv_all):
            with open(p, "rb") as f:
                while f.read(1 << 20):
                    pass
        # The floor as before: server defaults, maintenance_work_mem 512MB for the index.
        run_floor(ctx, case, "floor", f"bench_floor_{n}", tsv_s, tsv_st,
                  {"maintenance_work_mem": f"'{INDEX_MEM}'"}, [], opclass)
        q(ctx, "postgres", f'DROP DATABASE "bench_floor_{n}" WITH (FORCE)')
        # The floor on sessiondb's session settings and table storage.
        settings, notable = res["_settings"]
        mirror = mirror_storage_sql(storage)
        fdb = f"bench_floor_same_{n}"
        run_floor(ctx, case, "floor_same", fdb, tsv_s, tsv_st, settings, mirror, opclass)
        got = storage_of(ctx, fdb)
        case.facts["floor_same_applied"] = {"set": settings, "alter": mirror}
        same = (got["tables"] == storage["tables"] and got["columns"] == storage["columns"]
                and set(got["state_compression"]) == set(storage["state_compression"]))
        case.facts["floor_same_storage_matches"] = same
        if not same:
            case.notes.append(f"the same-settings floor's storage differs from sessiondb's: {got} vs {storage}")
        for s in notable:
            case.notes.append(f"sessiondb ran a statement the floor does not mirror: {s}")
        q(ctx, "postgres", f'DROP DATABASE "{fdb}" WITH (FORCE)')
        outside_baselines(ctx, case, res, tsv_all, opclass)
        for p in (tsv_s, tsv_st, tsv_all):
            os.unlink(p)

    # 1% of the states change; the catch-up as the runbook runs it (takes its own backup).
    changed = change_states(store, CHANGED_FRACTION, 5, "bench_changed")
    case.facts["changed"] = changed
    # The bench's own export of the target for the floors (above) leaves gigabytes of
    # dirty pages that no step of the runbook leaves: they reach the disk first, as the
    # first backup's had before the load (every measure records dirty_mb_before).
    wait_writeback(case, "catchup")
    rec = timed(ctx, [SDB, "migrate-state", "--dry-run=false", "--quiet"], env=env)
    catch = report_of(rec)
    case.cmd("catchup", rec)
    ph = catch["details"].get("phases_ms") or {}
    case.facts["catchup_phases_ms"] = ph
    case.facts["catchup_updated"] = catch["counts"].get("updated")
    # How the load and the backup's dumps got the sessions (kept, read again by id, ...).
    case.facts["catchup_read"] = {k: catch["details"].get(k) for k in ("load_read", "backup_dumps_read")}
    catch_dir = catch["details"].get("backup")
    if catch_dir == first_dir:
        case.notes.append("the catch-up did not take its own backup: it is not measured as the runbook runs it")
    if "backup" in ph:
        case.m("catchup_backup_phase", ph["backup"] / 1000, command=rec["command"] + "  (details.phases_ms.backup)")
        case.m("catchup_without_backup", (rec["s"] * 1000 - ph["backup"]) / 1000,
               command=rec["command"] + "  (total − details.phases_ms.backup)")

    wait_writeback(case, "verify")
    rec = timed(ctx, [SDB, "verify", "--quiet"], env=env, ok=(0, 1))
    ver = report_of(rec)
    case.cmd("verify", rec)
    case.facts["verify_status"] = ver["status"]
    case.facts["verify_counts"] = ver.get("counts")
    codes = {}
    for w in ver.get("warnings", []):
        codes[w.get("code")] = codes.get(w.get("code"), 0) + 1
    case.facts["verify_warnings"] = codes
    if rec["exit"] != 0:
        case.notes.append(f"verify failed (exit {rec['exit']}): {ver.get('errors', [])[:3]}")

    # A second backup after the same 1% change, against the first: the catch-up's own
    # backup is set aside first (deleted), so this one stands where it stood.
    if catch_dir and catch_dir != first_dir and os.path.isdir(catch_dir):
        shutil.rmtree(catch_dir)
    cold = drop_caches(ctx) if full else settle_writeback(ctx, case, "backup2")
    rec = timed(ctx, [SDB, "backup", "--quiet"], env=env)
    case.cmd("backup2", rec)
    second = report_of(rec)
    case.facts["backup2_dir_files"], case.facts["backup2_dir_bytes"] = tree_size(second["details"]["backup"])
    if full:
        baselines()
    case.measures["backup2"]["cold_cache"] = cold

    # Ratios against numbers of this run; goals from issue 19's table.
    case.ratio("catchup/load", "catchup", "load", 0.1)
    case.ratio("catchup_backup/catchup", "catchup_backup_phase", "catchup")
    case.ratio("catchup_without_backup/load", "catchup_without_backup", "load")
    case.ratio("verify/load", "verify", "load", 0.2)
    case.ratio("backup2/backup", "backup2", "backup")
    if full:
        case.ratio("load/floor_same", "load", "floor_same", 0.65)
        case.ratio("load/floor", "load", "floor", 0.65)
        case.ratio("floor_same/floor", "floor_same", "floor")
        case.ratio("python_script/load", "python_script", "load", 2.0, op=">=")
        case.ratio("pgloader/load", "pgloader", "load", 2.0, op=">=")
        case.ratio("python_script/floor", "python_script", "floor")
        case.ratio("pgloader/floor", "pgloader", "floor")
        case.ratio("backup/cp_a_sync", "backup", "cp_a_sync", 1.2)
        case.ratio("backup/cp_a", "backup", "cp_a")
        case.ratio("backup/cp_a_state_sync", "backup", "cp_a_state_sync")
        case.ratio("backup_warm/cp_a_warm_sync", "backup_warm", "cp_a_warm_sync")
    case.facts["load_average"] = res["_loadavg"].between(t_case, time.monotonic())
    shutil.rmtree(store, ignore_errors=True)
    q(ctx, "postgres", f'DROP DATABASE "{db}" WITH (FORCE)')
    return case


# ---------------------------------------------------------------------------------------
# The mapped-store case: an application's own schema (SPEC §9)


PROGRESS_RE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z (\S+) (?:done|stopped)\b.*?(\d+(?:\.\d+)?)s\s*$")
TABLE_RE = re.compile(r"\bINFO (?:planning|loading) table (\S+)")


def progress_phases(stderr):
    """The phases' times from a command's progress lines (stderr in a file: one line per
    phase's end, `<time> <phase> done ... <elapsed>s`, 0.1 s resolution): the total per
    phase, and per table for the mapped phases that run a table at a time (after an
    `INFO planning table T` / `INFO loading table T` line). Phases may overlap (the
    backup's sync and fingerprint run side by side)."""
    total, by_table, table = {}, {}, None
    for line in stderr.splitlines():
        t = TABLE_RE.search(line)
        if t:
            table = t.group(1)
            continue
        m = PROGRESS_RE.match(line)
        if not m:
            continue
        phase, secs = m.group(1), float(m.group(2))
        total[phase] = round(total.get(phase, 0) + secs, 1)
        if table and phase in ("read-target", "plan", "load"):
            d = by_table.setdefault(table, {})
            d[phase] = round(d.get(phase, 0) + secs, 1)
    return {"total": total, "by_table": by_table}


def warning_codes(report):
    codes = {}
    for w in report.get("warnings", []):
        codes[w.get("code")] = codes.get(w.get("code"), 0) + 1
    return codes


VERIFY_DIFFS = ("different", "missing", "extra", "invalid", "drifted", "quarantined")
# What every command of the case warns in a healthy run: the config still says
# backend = "sqlite" while DATABASE_URL points at PostgreSQL. Any other code is a note.
EXPECTED_WARNINGS = {"backend_drift"}


def run_app_case(ctx, n, res):
    """The runbook's sequence on a store with an application's own schema (`generate-
    fixture --schema app`), in a fresh database of the run's server: backup, the full
    load, verify, migrate-state again with nothing changed, 1% of the sessions changed
    as the application changes them, the catch-up with its own backup, verify. Each
    sessiondb command as scripts/steps.sh runs it (no --quiet). Returns the case; a
    failed check is its `error` (the measures taken so far are kept)."""
    case = Case(n, shape="app")
    t_case = time.monotonic()
    store = os.path.join(ctx.work, f"app-store-{n}")
    cfg = os.path.join(store, "sessiondb.toml")
    db = None
    phases_missing = []
    try:
        rec = timed(ctx, [SDB, "generate-fixture", "--schema", "app", "--out", store, "--sessions", str(n),
                          "--seed", "1", "--quiet"])
        case.m("generate", rec)
        gen = report_of(rec)["details"]
        case.facts["fixture"] = {k: gen.get(k) for k in ("schema", "users", "state_files", "without_state",
                                                         "deleted", "with_uploads", "bytes")}
        with open(cfg, "rb") as f:
            conf = tomllib.load(f)
        db = new_db(ctx, f"bench_app_{n}")
        env = ctx.env(db, cfg)
        # The mapped config reads its URL from the variable it names (`url_env`):
        # ctx.env sets DATABASE_URL; another name gets the same URL.
        url_env = conf.get("postgres", {}).get("url_env") or "DATABASE_URL"
        if url_env != "DATABASE_URL":
            env[url_env] = env["DATABASE_URL"]
        case.facts["env"] = (f"{url_env}=<the run's database> SESSIONDB_CONFIG=$WORK/app-store-N/sessiondb.toml"
                             f" (url_env = {url_env!r} in the config)")

        def step(name, argv, verify=False):
            """One sessiondb command, timed; its report checked and its facts kept."""
            rec = timed(ctx, [SDB, *argv], env=env, ok=(0, 1) if verify else (0,))
            try:
                rep = report_of(rec)
            except ValueError:
                raise Failed(f"{rec['command']}: no JSON report on stdout (exit {rec['exit']})") from None
            case.cmd(name, rec)
            r = case.measures[name + "_rss"]
            r["goal"] = f"< {RSS_GOAL_MB}"
            r["met"] = r["value"] is not None and r["value"] < RSS_GOAL_MB
            d = rep.get("details") or {}
            f = {"status": rep.get("status"), "exit": rec["exit"], "counts": rep.get("counts"),
                 "warnings": warning_codes(rep), "progress_s": progress_phases(rec["stderr"])}
            for k in ("phases_ms", "app_tables", "backup_check", "index_build", "load_read",
                      "backup_dumps_read", "row_versions", "gin_index_build_ms"):
                if d.get(k) is not None:
                    f[k] = d[k]
            if isinstance(d.get("backup"), str):
                f["backup"] = d["backup"].replace(ctx.work, "$WORK")
            case.facts[name] = f
            other = sorted(set(f["warnings"]) - EXPECTED_WARNINGS)
            if other:
                case.notes.append(f"{name} warned: {', '.join(other)} (facts.{name}.warnings)")
            if argv[0] == "migrate-state" and "phases_ms" not in d:
                phases_missing.append(name)
            if verify:
                diffs = {k: (rep.get("counts") or {}).get(k) for k in VERIFY_DIFFS}
                bad = {k: v for k, v in diffs.items() if v}
                if rec["exit"] != 0 or bad or d.get("differences") or rep.get("status") not in ("ok", "warn"):
                    first = (d.get("differences") or [])[:3] or rep.get("errors", [])[:3]
                    raise Failed(f"{name}: verify found differences (exit {rec['exit']}, status {rep.get('status')},"
                                 f" {bad or 'counts clean'}): {json.dumps(first, ensure_ascii=False)[:1500]}")
            elif rep.get("status") not in ("ok", "warn") or rep.get("exit_code") != 0:
                raise Failed(f"{name}: status {rep.get('status')}, exit_code {rep.get('exit_code')}: "
                             f"{json.dumps(rep.get('errors', [])[:3], ensure_ascii=False)[:1500]}")
            return rec, rep

        def sessions_counts(rep):
            for t in (rep.get("details") or {}).get("app_tables") or []:
                if t.get("table") == conf.get("sqlite", {}).get("table", "sessions"):
                    return t
            return {}

        # The fixture's writeback reaches the disk first (waited for, not forced), so the
        # backup's sync does not pay for the harness's writes; the case runs warm.
        wait_writeback(case, "backup")
        case.notes.append("runs warm: the page cache is not dropped (the fixture's writeback is waited for, facts.writeback_waits)")

        # 1. backup  2. the full load, on that backup  3. verify
        rec, first = step("backup", ["backup"])
        first_dir = first["details"]["backup"]
        case.facts["backup_dir_files"], case.facts["backup_dir_bytes"] = tree_size(first_dir)
        rec, load = step("load", ["migrate-state", "--dry-run=false"])
        if load["details"].get("backup") != first_dir:
            case.notes.append(f"the full load did not use the backup just taken ({load['details'].get('backup')})")
        lc = load.get("counts") or {}
        if lc.get("inserted") != n or lc.get("sessions") != n:
            raise Failed(f"the full load inserted {lc.get('inserted')} of {n} sessions: {lc}")
        case.facts["target_state_rows"] = int(q(ctx, db, "SELECT count(*) FROM session_state").strip())
        case.facts["target_session_rows"] = int(q(ctx, db, "SELECT count(*) FROM sessions").strip())
        step("verify", ["verify"], verify=True)

        # 4. migrate-state again, nothing changed: it must write nothing (stage-migrate's check).
        rec, again = step("again", ["migrate-state", "--dry-run=false"])
        ac = again.get("counts") or {}
        case.facts["again_used_first_backup"] = again["details"].get("backup") == first_dir
        if ac.get("inserted") or ac.get("updated"):
            raise Failed(f"migrate-state again, nothing changed, wrote sessions: {ac} (not idempotent)")

        # 5. 1% of the sessions changed as the application changes them: row and state file.
        changed = change_app_sessions(store, conf, CHANGED_FRACTION, 5, "bench_changed")
        case.facts["changed"] = changed

        # 6. the catch-up as the runbook runs it: no --backup, it takes its own.
        rec, catch = step("catchup", ["migrate-state", "--dry-run=false"])
        cc = catch.get("counts") or {}
        st = sessions_counts(catch)
        case.facts["catchup_updated"] = cc.get("updated")
        case.facts["catchup_inserted"] = cc.get("inserted")
        case.facts["catchup_written_share"] = round((cc.get("updated") or 0) / n, 4) if n else None
        if catch["details"].get("backup") in (None, first_dir):
            case.notes.append("the catch-up did not take its own backup: it is not measured as the runbook runs it")
        else:
            case.facts["catchup_backup_dir_files"], case.facts["catchup_backup_dir_bytes"] = \
                tree_size(catch["details"]["backup"])
        if cc.get("updated") != changed["rows"] or cc.get("inserted") or \
                (st and st.get("updated") != changed["rows"]):
            raise Failed(f"the catch-up wrote {cc.get('updated')} updated / {cc.get('inserted')} inserted sessions"
                         f" ({st}), not the {changed['rows']} changed")
        ph = catch["details"].get("phases_ms") or {}
        if "backup" in ph:
            case.m("catchup_backup_phase", ph["backup"] / 1000, command=rec["command"] + "  (details.phases_ms.backup)")
            case.m("catchup_without_backup", (rec["s"] * 1000 - ph["backup"]) / 1000,
                   command=rec["command"] + "  (total − details.phases_ms.backup)")

        # 7. verify again.
        step("verify_after_catchup", ["verify"], verify=True)
    except Failed as e:
        case.error = str(e)  # the table prints it; results.json keeps it as the case's `error`
    finally:
        if phases_missing:
            case.notes.append("migrate-state on a mapped store reports no details.phases_ms"
                              f" ({', '.join(phases_missing)}): facts.<command>.progress_s has the phases'"
                              " times from its progress lines instead (0.1 s resolution)")
        # Ratios against numbers of this run (what was measured before a failure too).
        case.ratio("catchup/load", "catchup", "load", 0.1)
        case.ratio("verify/load", "verify", "load", 0.2)
        case.ratio("verify_after_catchup/load", "verify_after_catchup", "load", 0.2)
        case.ratio("again/load", "again", "load")
        case.ratio("catchup_backup/catchup", "catchup_backup_phase", "catchup")
        case.ratio("catchup_without_backup/load", "catchup_without_backup", "load")
        case.facts["load_average"] = res["_loadavg"].between(t_case, time.monotonic())
        shutil.rmtree(store, ignore_errors=True)
        if db:
            try:
                q(ctx, "postgres", f'DROP DATABASE "{db}" WITH (FORCE)')
            except Failed:
                pass
    return case


# ---------------------------------------------------------------------------------------
# Output


def fmt(v, unit="s"):
    if v is None:
        return "—"
    if unit == "MB":
        return f"{v:.0f} MB"
    return f"{v:.1f} s" if v >= 10 else f"{v:.2f} s"


def rat_of(R, name):
    """A ratio as the table shows it: value, goal, met / NOT met."""
    r = R.get(name)
    if not r:
        return "—", "", ""
    mark = "" if "met" not in r else ("met" if r["met"] else "NOT met")
    return f"{r['value']:.3f}×" if r["value"] < 0.1 else f"{r['value']:.2f}×", r.get("goal", ""), mark


def table(run):
    cases = [c for c in run["cases"] if c.get("shape", "default") == "default"]
    if cases:
        default_table(run, cases)
    for c in run["cases"]:
        if c.get("shape") == "app":
            app_table(run, c)
    for case in run["cases"]:
        what = f"app, {case['sessions']:,}" if case.get("shape") == "app" else f"{case['sessions']:,}"
        for note in case["notes"]:
            print(f"note ({what}): {note}")
    for note in run["notes"]:
        print(f"note: {note}")
    shown = os.path.relpath(RESULTS, ROOT) if RESULTS.startswith(ROOT + "/") else RESULTS
    print(f"written: {shown} (one object per run, appended)")


def app_table(run, c):
    """The mapped-store case's rows: the runbook's sequence on an application's own schema."""
    M, R, F = c["measures"], c["ratios"], c["facts"]

    def val(name):
        x = M.get(name)
        return fmt(x["value"], x["unit"]) if x else "—"

    la = F.get("load_average") or {}
    mach = run["machine"]
    print(f"\nsessiondb bench, an application's own schema (generate-fixture --schema app, SPEC §9): "
          f"{c['sessions']:,} sessions, {(F.get('fixture') or {}).get('users') or 0:,} users, {mach['cores']} cores, "
          f"PostgreSQL {mach['pg_version']}, fsync={mach['fsync']}, warm page cache, "
          f"load average during the case {la.get('mean')} (max {la.get('max')})")
    ch = F.get("changed") or {}
    rows = [
        ("backup (of the fresh store)", "backup", None, ""),
        ("full load: migrate-state --dry-run=false, on that backup", "load", None, ""),
        ("verify after the load", "verify", "verify/load", "of the full load"),
        ("migrate-state again, nothing changed", "again", "again/load", "of the full load"),
        ("catch-up after 1% changed (rows + state.json), own backup", "catchup", "catchup/load", "of the full load"),
        ("  its backup phase (details.phases_ms.backup)", "catchup_backup_phase", "catchup_backup/catchup", "of the catch-up"),
        ("  the catch-up without that phase", "catchup_without_backup", "catchup_without_backup/load", "of the full load"),
        ("verify after the catch-up", "verify_after_catchup", "verify_after_catchup/load", "of the full load"),
    ]
    rows = [r for r in rows if r[1] in M or not r[1].startswith("catchup_")]
    w = max(len(r[0]) for r in rows) + 2
    print(f"{'work':{w}} {'time':>9}  {'peak RSS':>8}  {'CPU':>7}  {'ratio':>8}  {'goal':>7}  {'':8} ratio of")
    for label, name, rname, what in rows:
        r, goal, mark = rat_of(R, rname) if rname else ("", "", "")
        rss = M.get(name + "_rss")
        rss_s = "—" if not rss else f"{rss['value']:.0f} MB" + ("" if rss.get("met", True) else "!")
        cpu = M.get(name + "_cpu")
        cpu_s = "—" if not cpu else fmt(cpu["value"])
        print(f"{label:{w}} {val(name):>9}  {rss_s:>8}  {cpu_s:>7}  {r:>8}  {goal:>7}  {mark:8} {what}")
    cmds = ("backup", "load", "verify", "again", "catchup", "verify_after_catchup")
    cells = []
    for k in cmds:
        x = M.get(k + "_rss")
        if x:
            cells.append(f"{k} {x['value']:.0f}" + ("" if x.get("met", True) else " (≥ 200)"))
    met = all(M[k + "_rss"].get("met", True) for k in cmds if k + "_rss" in M)
    print(f"peak RSS MB (goal < {RSS_GOAL_MB}: {'met' if met else 'NOT met'}): " + ", ".join(cells))
    cpu = []
    for k in cmds:
        if k + "_cpu" in M:
            x, sc = M[k + "_cpu"], M.get(k + "_server_cpu")
            cpu.append(f"{k} {x.get('user', 0):.1f}+{x.get('sys', 0):.1f}/{sc['value'] if sc else float('nan'):.1f}")
    print("CPU s, the command's user+sys / the server's: " + ", ".join(cpu))
    if ch:
        cu = F.get("catchup_updated")
        print(f"changed: {ch.get('rows')} rows of {ch.get('sessions'):,} ({', '.join(ch.get('columns', []))}) and "
              f"{ch.get('state_files')} state.json; the catch-up updated {cu if cu is not None else '—'}"
              f" ({100 * (F.get('catchup_written_share') or 0):.2f}% of the sessions), inserted {F.get('catchup_inserted')}")
    for k in ("load", "again", "catchup"):
        f = F.get(k) or {}
        ph = f.get("phases_ms")
        pr = ((f.get("progress_s") or {}).get("total")) or {}
        if ph:
            print(f"{k} phases_ms: " + ", ".join(f"{p} {v / 1000:.2f}" for p, v in ph.items()) + " s")
        elif pr:
            print(f"{k} phases (progress lines, s): " + ", ".join(f"{p} {v:.1f}" for p, v in pr.items()))
    if c.get("error"):
        print(f"FAILED: {c['error'][:600]}")


def default_table(run, cases):
    c = cases[0]
    M = c["measures"]
    R = c["ratios"]

    def val(name, unit="s"):
        x = M.get(name)
        return fmt(x["value"], x["unit"]) if x else "—"

    def rat(name):
        return rat_of(R, name)

    la = c["facts"].get("load_average") or {}
    cache = "cold page cache" if (M.get("backup") or {}).get("cold_cache") else "warm: the page cache could not be dropped"
    mach = run["machine"]
    print(f"\nsessiondb bench: {c['sessions']:,} sessions, {mach['cores']} cores, PostgreSQL {mach['pg_version']}, "
          f"fsync={mach['fsync']}, load average during the case {la.get('mean')} (max {la.get('max')})")
    rows = [
        ("catch-up after 1% changed, as the runbook runs it (takes its own backup)", "catchup", "catchup/load", "of the full load"),
        ("  its backup phase (details.phases_ms.backup)", "catchup_backup_phase", "catchup_backup/catchup", "of the catch-up"),
        ("  the catch-up without that phase (≈ the old harness's number)", "catchup_without_backup", "catchup_without_backup/load", "of the full load"),
        ("full load into an empty target (after `backup`, as the runbook)", "load", "load/floor_same", "of the floor, same settings"),
        ("  the same against the floor as before", "load", "load/floor", "of the floor, defaults"),
        ("psql floor: \\copy + CREATE INDEX gin, sessiondb's settings", "floor_same", "floor_same/floor", "of the floor, defaults"),
        ("psql floor: \\copy + CREATE INDEX gin, as before", "floor", None, ""),
        ("plain Python script (psycopg executemany, 1 tx) + GIN", "python_script", "python_script/load", "its time / sessiondb's load"),
        ("  the same against the floor as before", "python_script", "python_script/floor", "of the floor, defaults"),
        ("pgloader (state in the SQLite column) + GIN", "pgloader", "pgloader/load", "its time / sessiondb's load"),
        ("  the same against the floor as before", "pgloader", "pgloader/floor", "of the floor, defaults"),
        ("full verify", "verify", "verify/load", "of the full load"),
        (f"first backup ({cache})", "backup", "backup/cp_a_sync", "of cp -a + sync"),
        ("  cp -a of data/ and sessions/, then sync -f", "cp_a_sync", None, ""),
        ("  the same cp -a without the sync", "cp_a", "backup/cp_a", "backup / cp -a alone"),
        ("  cp -a of the db, JSON store, state files only, + sync", "cp_a_state_sync", "backup/cp_a_state_sync", "backup / this"),
        ("  first backup again, warm (the first set aside)", "backup_warm", "backup_warm/cp_a_warm_sync", "of cp -a + sync, warm"),
        ("  cp -a of data/ and sessions/ + sync, warm", "cp_a_warm_sync", None, ""),
        ("second backup after the 1% change", "backup2", "backup2/backup", "of the first (goal: ∝ change)"),
    ]
    w = max(len(r[0]) for r in rows) + 2
    print(f"{'work':{w}} {'time':>9}  {'ratio':>8}  {'goal':>7}  {'':8} ratio of")
    for label, name, rname, what in rows:
        r, goal, mark = rat(rname) if rname else ("", "", "")
        print(f"{label:{w}} {val(name):>9}  {r:>8}  {goal:>7}  {mark:8} {what}")
    print()
    cpu = []
    for k in ("load", "floor_same_copy", "floor_same_index", "python_script", "pgloader_load", "catchup", "verify",
              "backup", "backup_warm", "cp_a", "cp_a_warm"):
        if k in M:
            sc = M.get(k + "_server_cpu")
            c = M[k + "_cpu"]
            cpu.append(f"{k} {c.get('user', 0):.1f}+{c.get('sys', 0):.1f}/{sc['value'] if sc else float('nan'):.1f}")
    print("CPU s, the command's user+sys / the server's: " + ", ".join(cpu))
    names = ["backup", "load", "catchup", "verify", "backup2", "python_script", "pgloader_load"]
    for case in cases:
        m = case["measures"]
        cells = []
        for k in names:
            x = m.get(k + "_rss")
            if x:
                flag = "" if x["value"] < RSS_GOAL_MB or k in ("python_script", "pgloader_load") else " (≥ 200)"
                cells.append(f"{k} {x['value']:.0f}{flag}")
        print(f"peak RSS MB at {case['sessions']:,} (goal < {RSS_GOAL_MB} for sessiondb): " + ", ".join(cells))
    for case in cases[1:]:
        r = case["ratios"]
        la = (case["facts"].get("load_average") or {}).get("mean")
        print(f"at {case['sessions']:,} (load average {la}): load {fmt(case['measures']['load']['value'])}, "
              + ", ".join(f"{k} {r[k]['value']:.3f}×" + (f" ({r[k]['goal']}: {'met' if r[k]['met'] else 'NOT met'})" if "goal" in r[k] else "")
                          for k in ("catchup/load", "verify/load", "backup2/backup") if k in r))
    sc = run.get("scaling", {}).get("large/load")
    if sc:
        a, b = sc["sessions"]
        print(f"load at {b:,} / load at {a:,}: {sc['value']:.2f}× (goal {sc['goal']}: {'met' if sc['met'] else 'NOT met'})")


def machine(ctx):
    def show(s):
        return q(ctx, "postgres", f"SHOW {s}").strip()

    mem = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    fs = subprocess.run(["stat", "-f", "-c", "%T", ctx.work], capture_output=True, text=True).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "mem_mb": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pg_version": show("server_version"),
        "fsync": show("fsync"),
        "synchronous_commit": show("synchronous_commit"),
        "full_page_writes": show("full_page_writes"),
        "shared_buffers": show("shared_buffers"),
        "maintenance_work_mem": show("maintenance_work_mem"),
        "default_toast_compression": show("default_toast_compression"),
        "filesystem": fs,
        "peak_rss_via": RSS_VIA,
        "sessiondb": sh(ctx, [SDB, "--version"]).strip(),
        "git": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    }


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--plain-load":
        plain_load(*sys.argv[2:5])
        return
    work = tempfile.mkdtemp(prefix="sessiondb-bench-")
    os.chmod(work, 0o755)
    ctx = Ctx(work)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    la = LoadAvg()
    la.start()
    t0 = time.monotonic()
    run = {"started_at": started, "harness": "scripts/bench.py (issue 19)",
           "sessions": N if ONLY != "app" else None, "large": (LARGE or None) if ONLY != "app" else None,
           "app_sessions": (APP_N or None) if ONLY != "default" else None, "only": ONLY or None,
           "cases": [], "notes": ctx.notes}
    rc = 0
    try:
        out = subprocess.run([os.path.join(ROOT, "scripts/pg-ephemeral"), "start", ctx.pg_dir],
                             capture_output=True, text=True, check=True).stdout.strip()
        ctx.admin_url = out
        u = urllib.parse.urlsplit(out)
        ctx.password = urllib.parse.unquote(u.password or "")
        ctx.base_url = f"postgresql://{u.username}@{u.hostname}:{u.port}"
        run["machine"] = machine(ctx)
        res = {"_loadavg": la}
        cases = []
        if ONLY != "app":
            res["_settings"] = probe_settings(ctx, res)
            run["sessiondb_settings"] = res["sessiondb_settings"]
            cases.append(run_case(ctx, N, True, res))
            if LARGE:
                cases.append(run_case(ctx, LARGE, False, res))
        if APP_N and ONLY != "default":
            app = run_app_case(ctx, APP_N, res)
            if app.error:
                sys.stderr.write(f"bench: the mapped-store (app) case at {APP_N:,} sessions FAILED: {app.error}\n")
                rc = 3
            cases.append(app)
        run["cases"] = [dict({"shape": c.shape, "sessions": c.n, "measures": c.measures, "ratios": c.ratios,
                              "facts": c.facts, "notes": c.notes}, **({"error": c.error} if c.error else {}))
                        for c in cases]
        cases = [c for c in cases if c.shape == "default"]
        if LARGE and len(cases) == 2:
            a, b = cases[0], cases[1]
            scale = b.n / a.n
            r = b.value("load") / a.value("load")
            run["scaling"] = {
                "large/load": {"value": round(r, 2), "sessions": [a.n, b.n], "goal": f"<= {round(1.1 * scale, 2)}",
                               "met": r <= 1.1 * scale,
                               "command": a.measures["load"]["command"]},
                "large/rss": {k: b.value(k + "_rss") for k in ("backup", "load", "catchup", "verify", "backup2")},
                "large/rss_growth": {k: round(b.value(k + "_rss") / a.value(k + "_rss"), 2)
                                     for k in ("backup", "load", "catchup", "verify", "backup2")
                                     if a.value(k + "_rss") and b.value(k + "_rss")},
            }
    except (Failed, subprocess.CalledProcessError) as e:
        msg = str(e) if isinstance(e, Failed) else f"{e}: {e.stderr}"
        sys.stderr.write(f"bench: {msg}\n")
        run["error"] = msg
        rc = 3
    except Exception:  # a harness bug: still stop the server, record it and remove the run's folder
        import traceback  # noqa: PLC0415

        msg = traceback.format_exc()
        sys.stderr.write(f"bench: {msg}\n")
        run["error"] = msg
        rc = 3
    finally:
        subprocess.run([os.path.join(ROOT, "scripts/pg-ephemeral"), "stop", ctx.pg_dir], capture_output=True)
        la.stop.set()
    run["load_average"] = la.between(t0, time.monotonic())
    run["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path = RESULTS
    os.makedirs(os.path.dirname(path), exist_ok=True)
    runs = []
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
            runs = old if isinstance(old, list) else [dict(old, harness="scripts/bench.py before issue 19")]
        except ValueError:
            os.replace(path, path + ".unreadable")
    runs.append(run)
    with open(path + ".tmp", "w") as f:
        json.dump(runs, f, indent=2, ensure_ascii=False)
    os.replace(path + ".tmp", path)
    if run["cases"]:
        table(run)
    sys.stdout.flush()
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
