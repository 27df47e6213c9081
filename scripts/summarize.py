#!/usr/bin/env python3
"""Print a table of the step reports in a run folder: step, status, exit, time, counts,
and its warnings folded by code (`state_conflict ×10`); then each warning code once,
with its count, the steps that raised it and an example; then what a healthy run looks
like, against $SUMMARY_EXPECT.

SUMMARY_EXPECT lists the warnings a healthy run of this sequence has, one `code=why` a
line (the demo's set-default warns `backend_drift` for the moment it switches the config
before the application restarts, say). A row whose only warnings are expected ones is
healthy; any other warning, warn check or failure is not.
The reports keep every warning; only this table folds them.
"""
import glob
import json
import os
import re
import sys

run = sys.argv[1]
expected = {}
for line in os.environ.get("SUMMARY_EXPECT", "").splitlines():
    if "=" in line:
        code, why = line.split("=", 1)
        expected[code.strip()] = why.strip()


def folded(report):
    """{code: count} of a report's warnings, the truncated ones counted in, and its warn
    checks as `check <id>`; the first message of each code."""
    counts, first = {}, {}
    for w in report.get("warnings", []):
        code, msg = w["code"], w.get("message", "")
        if code == "warnings_truncated":
            m = re.match(r"(\d+) more `([^`]+)`", msg)
            if m:
                counts[m.group(2)] = counts.get(m.group(2), 0) + int(m.group(1))
                continue
        counts[code] = counts.get(code, 0) + 1
        first.setdefault(code, msg)
    for c in report.get("checks", []):
        if c.get("status") == "warn":
            key = "check " + c["id"]
            counts[key] = counts.get(key, 0) + 1
            first.setdefault(key, c.get("summary", ""))
    return counts, first


rows, by_code = [], {}
for d in sorted(glob.glob(os.path.join(run, "[0-9][0-9]-*"))):
    files = [p for p in glob.glob(os.path.join(d, "*.json")) if not p.endswith("stdout.json")]
    if not files:
        continue
    r = json.load(open(files[0]))
    name = os.path.basename(d)
    counts = " ".join(f"{k}={v}" for k, v in r.get("counts", {}).items() if k != "bytes")
    dry = " (dry run)" if r.get("dry_run") else ""
    warns, first = folded(r)
    for code, n in warns.items():
        e = by_code.setdefault(code, {"counts": [], "steps": [], "example": first.get(code, "")})
        e["counts"].append(n)
        e["steps"].append(name)
    wcol = ", ".join(f"{c} ×{n}" if n > 1 else c for c, n in warns.items())
    rows.append({
        "cells": (name, r["status"] + dry, str(r["exit_code"]), f'{r["duration_ms"] / 1000:.1f}s', counts, wcol),
        "status": r["status"],
        "unexpected": [c for c in warns if c not in expected],
    })

head = ("step", "status", "exit", "time", "counts", "warnings")
w = [max(len(x[i]) for x in [r["cells"] for r in rows] + [head]) for i in range(len(head))]
line = lambda x: "  ".join(c.ljust(w[i]) for i, c in enumerate(x)).rstrip()
print(line(head))
for r in rows:
    print(line(r["cells"]))

if by_code:
    print("warnings, each code once (every step's report lists them all):")
    cw = max(len(c) for c in by_code)
    for code, e in by_code.items():
        steps, ns = e["steps"], e["counts"]
        if len(steps) == 1:
            where = f"×{ns[0]} in {steps[0]}"
        else:
            each = f"×{ns[0]}" if min(ns) == max(ns) else f"×{min(ns)}–{max(ns)}"
            names = ", ".join(steps) if len(steps) <= 3 else f"{steps[0]}, {steps[1]}, …, {steps[-1]}"
            where = f"{each} in each of {len(steps)} steps ({names})"
        tag = "expected" if code in expected else "LOOK AT IT"
        example = e["example"] if len(e["example"]) <= 160 else e["example"][:157] + "..."
        print(f"  {code.ljust(cw)}  {where} [{tag}]")
        print(f"  {' ' * cw}  e.g. {example}")

ok = sum(1 for r in rows if r["status"] == "ok")
warn_ok = [r for r in rows if r["status"] == "warn" and not r["unexpected"]]
bad = [r for r in rows if r["status"] not in ("ok", "warn") or r["unexpected"]]
if expected:
    print("a healthy run: every row ok, but warn where this sequence expects it, with only these:")
    for c, y in expected.items():
        print(f"  {c}: {y}")
else:
    print("a healthy run: every row ok; a warn row is for a person to read (its warnings above)")
if bad:
    names = ", ".join(r["cells"][0] for r in bad)
    print(f"this run: {ok} ok, {len(warn_ok)} warn as expected, {len(bad)} to look at: {names}")
else:
    print(f"this run is healthy: {ok} ok, {len(warn_ok)} warn as expected")
print(f"reports: {run}")
