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
Appends one object to bench/results.json and prints a table with issue 19's goals.
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
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# BENCH_SESSIONDB: another build to measure (an older commit's, to compare before/after).
SDB = os.environ.get("BENCH_SESSIONDB") or os.path.join(ROOT, "target/release/sessiondb")
N = int(os.environ.get("BENCH_SESSIONS", "200000"))
LARGE = int(os.environ.get("BENCH_LARGE", "0"))
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
    def __init__(self, n):
        self.n = n
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


def change_states(store, fraction, seed, mark):
    dirs = sorted(os.listdir(os.path.join(store, "sessions")))
    rnd = random.Random(seed)
    changed = 0
    for d in rnd.sample(dirs, max(1, int(len(dirs) * fraction))):
        p = os.path.join(store, "sessions", d, "state.json")
        if not os.path.isfile(p) or os.path.islink(p):
            continue
        with open(p, "rb") as f:
            body = f.read()
        try:
            doc = json.loads(body)
        except ValueError:
            continue
        if isinstance(doc, dict):
            doc[mark] = True
            with open(p, "w") as f:
                json.dump(doc, f)
            changed += 1
    return changed


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
# Output


def fmt(v, unit="s"):
    if v is None:
        return "—"
    if unit == "MB":
        return f"{v:.0f} MB"
    return f"{v:.1f} s" if v >= 10 else f"{v:.2f} s"


def table(run):
    cases = run["cases"]
    c = cases[0]
    M = c["measures"]
    R = c["ratios"]

    def val(name, unit="s"):
        x = M.get(name)
        return fmt(x["value"], x["unit"]) if x else "—"

    def rat(name):
        r = R.get(name)
        if not r:
            return "—", "", ""
        mark = "" if "met" not in r else ("met" if r["met"] else "NOT met")
        return f"{r['value']:.3f}×" if r["value"] < 0.1 else f"{r['value']:.2f}×", r.get("goal", ""), mark

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
    for case in cases:
        for note in case["notes"]:
            print(f"note ({case['sessions']:,}): {note}")
    for note in run["notes"]:
        print(f"note: {note}")
    print("written: bench/results.json (one object per run, appended)")


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
    run = {"started_at": started, "harness": "scripts/bench.py (issue 19)", "sessions": N, "large": LARGE or None,
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
        res["_settings"] = probe_settings(ctx, res)
        run["sessiondb_settings"] = res["sessiondb_settings"]
        cases = [run_case(ctx, N, True, res)]
        if LARGE:
            cases.append(run_case(ctx, LARGE, False, res))
        run["cases"] = [{"sessions": c.n, "measures": c.measures, "ratios": c.ratios, "facts": c.facts, "notes": c.notes}
                        for c in cases]
        if LARGE:
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
    finally:
        subprocess.run([os.path.join(ROOT, "scripts/pg-ephemeral"), "stop", ctx.pg_dir], capture_output=True)
        la.stop.set()
    run["load_average"] = la.between(t0, time.monotonic())
    run["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    os.makedirs(os.path.join(ROOT, "bench"), exist_ok=True)
    path = os.path.join(ROOT, "bench/results.json")
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
