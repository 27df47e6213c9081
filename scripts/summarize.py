#!/usr/bin/env python3
"""Print a table of the step reports in a run folder: step, status, exit, time, counts."""
import glob
import json
import os
import sys

run = sys.argv[1]
rows = []
for d in sorted(glob.glob(os.path.join(run, "[0-9][0-9]-*"))):
    files = [p for p in glob.glob(os.path.join(d, "*.json")) if not p.endswith("stdout.json")]
    if not files:
        continue
    r = json.load(open(files[0]))
    counts = " ".join(f"{k}={v}" for k, v in r.get("counts", {}).items() if k != "bytes")
    dry = " (dry run)" if r.get("dry_run") else ""
    rows.append((os.path.basename(d), r["status"] + dry, str(r["exit_code"]), f'{r["duration_ms"] / 1000:.1f}s', counts))
w = [max(len(x[i]) for x in rows + [("step", "status", "exit", "time", "counts")]) for i in range(5)]
line = lambda x: "  ".join(c.ljust(w[i]) for i, c in enumerate(x)).rstrip()
print(line(("step", "status", "exit", "time", "counts")))
for x in rows:
    print(line(x))
print(f"reports: {run}")
