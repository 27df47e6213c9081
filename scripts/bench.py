#!/usr/bin/env python3
"""sessiondb benchmark harness: ratios against baselines measured in the same run.

Starts a throwaway PostgreSQL (fsync on), generates a legacy store, and measures:
  - baseline: psql \\copy of the same rows, pre-rendered (exported from a loaded
    target), into an empty schema, plus CREATE INDEX ... USING gin;
  - sessiondb migrate-state full load into an empty target (backup taken beforehand);
  - a catch-up pass after 1% of the sessions changed;
  - a full verify;
  - peak RSS of each sessiondb process.
Prints a table and writes bench/results.json. Timings are wall-clock seconds.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SDB = os.path.join(ROOT, "target/release/sessiondb")
N = int(os.environ.get("BENCH_SESSIONS", "200000"))
LARGE = int(os.environ.get("BENCH_LARGE", "0"))


def sh(cmd, env=None, check=True, capture=True):
    r = subprocess.run(cmd, env=env, check=False, capture_output=capture, text=True)
    if check and r.returncode not in (0,):
        sys.stderr.write(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:] if r.stderr else ''}\n")
        raise SystemExit(3)
    return r


def timed(cmd, env=None, ok=(0,)):
    """Run a command; return (seconds, peak RSS in MB of that child, stdout).

    The peak RSS is that one child's, from wait4(2): RUSAGE_CHILDREN would give the
    largest of every child so far, hiding a smaller process that ran after a larger one.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        dt = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if p.returncode not in ok:
        sys.stderr.write(f"failed ({p.returncode}): {' '.join(cmd)}\n{stderr[-3000:]}\n")
        raise SystemExit(3)
    return dt, usage.ru_maxrss / 1024, stdout


def psql(url, sql):
    return sh(["psql", url, "-v", "ON_ERROR_STOP=1", "-Atqc", sql]).stdout


def with_db(admin_url, name):
    psql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    psql(admin_url, f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def run_case(n, work, admin_url, full):
    store = os.path.join(work, f"store-{n}")
    t_gen, _, _ = timed([SDB, "generate-fixture", "--out", store, "--sessions", str(n), "--seed", "1", "--quiet"])
    cfg = os.path.join(store, "sessiondb.toml")
    url = with_db(admin_url, f"bench_{n}")
    env = dict(os.environ, DATABASE_URL=url, SESSIONDB_CONFIG=cfg)
    t_backup, rss_backup, out = timed([SDB, "backup", "--quiet"], env=env)
    backup_dir = json.loads(out)["details"]["backup"]
    t_load, rss_load, out = timed([SDB, "migrate-state", "--dry-run=false", "--quiet", "--backup", backup_dir], env=env, ok=(0,))
    load = json.loads(out)
    res = {"sessions": n, "generate_s": t_gen, "backup_s": t_backup, "backup_rss_mb": rss_backup,
           "load_s": t_load, "load_rss_mb": rss_load, "inserted": load["counts"].get("inserted"),
           "state_bytes": load["counts"].get("bytes")}
    if not full:
        return res
    # Baseline: the same rows, pre-rendered, loaded by psql \copy, plus the GIN index.
    rows_s = os.path.join(work, "sessions.tsv")
    rows_st = os.path.join(work, "state.tsv")
    psql(url, f"\\copy (SELECT id, user_id, status, current_step, cost, created_at, updated_at FROM sessions) TO '{rows_s}'")
    psql(url, f"\\copy (SELECT session_id, state::text, updated_at FROM session_state) TO '{rows_st}'")
    base = with_db(admin_url, f"bench_base_{n}")
    psql(base, "CREATE TABLE sessions (id text PRIMARY KEY, user_id text, status text, current_step text, cost double precision, created_at timestamptz, updated_at timestamptz, state jsonb);"
               "CREATE TABLE session_state (session_id text PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE, state jsonb NOT NULL, updated_at timestamptz NOT NULL);")
    t0 = time.monotonic()
    psql(base, f"\\copy sessions (id, user_id, status, current_step, cost, created_at, updated_at) FROM '{rows_s}'")
    psql(base, f"\\copy session_state FROM '{rows_st}'")
    t_copy = time.monotonic() - t0
    t0 = time.monotonic()
    psql(base, "SET maintenance_work_mem = '512MB'; CREATE INDEX ON session_state USING gin (state)")
    t_index = time.monotonic() - t0
    res.update({"baseline_copy_s": t_copy, "baseline_index_s": t_index, "baseline_s": t_copy + t_index})
    res["load_ratio"] = t_load / res["baseline_s"]
    # Catch-up after 1% of the sessions changed.
    dirs = sorted(os.listdir(os.path.join(store, "sessions")))
    random.seed(5)
    changed = 0
    for d in random.sample(dirs, max(1, len(dirs) // 100)):
        p = os.path.join(store, "sessions", d, "state.json")
        if os.path.isfile(p):
            with open(p, "rb") as f:
                body = f.read()
            try:
                doc = json.loads(body)
            except Exception:
                continue
            if isinstance(doc, dict):
                doc["bench_changed"] = True
                with open(p, "w") as f:
                    json.dump(doc, f)
                changed += 1
    t_catch, rss_catch, out = timed([SDB, "migrate-state", "--dry-run=false", "--quiet", "--backup", backup_dir], env=env)
    c = json.loads(out)["counts"]
    res.update({"catchup_changed": changed, "catchup_s": t_catch, "catchup_rss_mb": rss_catch,
                "catchup_updated": c.get("updated"), "catchup_ratio": t_catch / t_load})
    t_verify, rss_verify, out = timed([SDB, "verify", "--quiet"], env=env, ok=(0, 1))
    v = json.loads(out)
    res.update({"verify_s": t_verify, "verify_rss_mb": rss_verify, "verify_status": v["status"], "verify_ratio": t_verify / t_load})
    return res


def main():
    work = tempfile.mkdtemp(prefix="sessiondb-bench-")
    os.chmod(work, 0o755)
    pg = os.path.join(work, "pg")
    admin = sh([os.path.join(ROOT, "scripts/pg-ephemeral"), "start", pg]).stdout.strip()
    results = {"machine": {"cores": os.cpu_count()}, "cases": []}
    try:
        results["cases"].append(run_case(N, work, admin, True))
        if LARGE:
            results["cases"].append(run_case(LARGE, work, admin, False))
    finally:
        sh([os.path.join(ROOT, "scripts/pg-ephemeral"), "stop", pg], check=False)
    os.makedirs(os.path.join(ROOT, "bench"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/results.json"), "w") as f:
        json.dump(results, f, indent=2)
    c = results["cases"][0]
    print(f"{'measure':38} {'value':>12}")
    rows = [
        ("sessions", c["sessions"]),
        ("state bytes", c.get("state_bytes")),
        ("baseline: psql \\copy (s)", round(c["baseline_copy_s"], 1)),
        ("baseline: CREATE INDEX gin (s)", round(c["baseline_index_s"], 1)),
        ("sessiondb full load (s)", round(c["load_s"], 1)),
        ("load / baseline (target <= 1.2)", round(c["load_ratio"], 2)),
        ("catch-up, 1% changed (s)", round(c["catchup_s"], 1)),
        ("catch-up / full load (target <= 0.1)", round(c["catchup_ratio"], 3)),
        ("verify (s)", round(c["verify_s"], 1)),
        ("verify / full load (target <= 0.3)", round(c["verify_ratio"], 2)),
        ("peak RSS load (MB, target < 200)", round(c["load_rss_mb"])),
        ("peak RSS catch-up (MB)", round(c["catchup_rss_mb"])),
        ("peak RSS verify (MB)", round(c["verify_rss_mb"])),
        ("peak RSS backup (MB)", round(c["backup_rss_mb"])),
        ("backup (s)", round(c["backup_s"], 1)),
    ]
    for case in results["cases"][1:]:
        n = case["sessions"]
        rows.append((f"full load at {n} (s)", round(case["load_s"], 1)))
        rows.append((f"peak RSS load at {n} (MB)", round(case["load_rss_mb"])))
        rows.append((f"peak RSS backup at {n} (MB)", round(case["backup_rss_mb"])))
    for k, v in rows:
        print(f"{k:38} {v!s:>12}")
    print("written: bench/results.json")
    sys.stdout.flush()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
