# Shared by the runbook recipes (sourced, not run). Each step writes its report into
# one run folder, reports/<UTC timestamp>/NN-<step>/, and the sequence stops at the
# first failing step with a one-line reason.
#
# Needs: SDB (the sessiondb binary). Sets: RUN_DIR.
# APP_URL_ENV: the application's database variable, the config's postgres.url_env
# (default DATABASE_URL). TARGET_URL: the target's URL, for the throwaway runs that
# start the server themselves and give the application its variable (app_on, serve).
# SUMMARY_EXPECT: the warnings a healthy run has, for the summary (see summarize.py).

: "${SDB:?SDB must name the sessiondb binary}"
APP_URL_ENV=${APP_URL_ENV:-DATABASE_URL}
RUN_DIR=${RUN_DIR:-reports/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RUN_DIR"
chmod 700 "$RUN_DIR" 2>/dev/null || true
STEP_NO=0

# step NAME ARGS...: run `sessiondb ARGS...`, report under RUN_DIR; stop on failure.
step() {
  local name=$1; shift
  STEP_NO=$((STEP_NO + 1))
  local dir; dir=$(printf '%s/%02d-%s' "$RUN_DIR" "$STEP_NO" "$name")
  mkdir -p "$dir"
  echo "── $name: sessiondb $*" >&2
  local rc=0
  "$SDB" "$@" --report-dir "$dir" > "$dir/stdout.json" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "✗ $name failed (exit $rc): $(reason "$dir")" >&2
    echo "  reports: $RUN_DIR" >&2
    summary >&2 || true
    exit "$rc"
  fi
}

# The first error or failed check of a step's report, in one line.
reason() {
  python3 - "$1" <<'PY' 2>/dev/null || echo "see $1"
import json, sys, glob
f = [p for p in glob.glob(sys.argv[1] + "/*.json") if not p.endswith("stdout.json")] or [sys.argv[1] + "/stdout.json"]
r = json.load(open(f[0]))
errs = [e["code"] + ": " + e["message"] for e in r.get("errors", [])]
fails = [c["id"] + ": " + c["summary"] for c in r.get("checks", []) if c["status"] == "fail"]
print((errs + fails + ["status " + r.get("status", "?")])[0])
PY
}

# count DIR KEY: a count from a step's report.
count() {
  python3 -c 'import json,sys,glob; f=[p for p in glob.glob(sys.argv[1]+"/*.json") if not p.endswith("stdout.json")][0]; print(json.load(open(f))["counts"].get(sys.argv[2], 0))' "$1" "$2"
}

# last_dir NAME: the folder of the newest step called NAME.
last_dir() {
  ls -d "$RUN_DIR"/*-"$1" | sort | tail -1
}

# A table of every step (status, exit, time, counts, warnings folded by code), and
# what a healthy run looks like.
summary() {
  python3 scripts/summarize.py "$RUN_DIR"
}

# confirm QUESTION: ask unless YES=1.
confirm() {
  if [ "${YES:-}" = 1 ]; then echo "$1 [YES=1]" >&2; return 0; fi
  read -r -p "$1 [y/N] " a
  case "$a" in y|Y|yes) return 0 ;; *) echo "stopped by the operator" >&2; exit 1 ;; esac
}

# app_on sqlite|postgres: the application restarted on that backend, in the throwaway
# runs: its variable $APP_URL_ENV set to TARGET_URL for postgres, unset for sqlite. The
# steps after it share that environment, as they would on the application's host, so
# the runtime gating they see is the application's (no backend_drift for a state the
# run made). The steps reach the target through libpq's PG* variables meanwhile.
app_on() {
  if [ "$1" = postgres ]; then
    export "$APP_URL_ENV=${TARGET_URL:?app_on needs TARGET_URL}"
    echo "── the application runs on postgres: \$$APP_URL_ENV points at the target" >&2
  else
    unset "$APP_URL_ENV"
    echo "── the application runs on the legacy store: \$$APP_URL_ENV is unset" >&2
  fi
}

# The reference service sessiond as the application (needs SVC_DIR, a scratch folder).
SVC_PID=""
serve() { # serve sqlite|postgres: (re)start sessiond on that backend; sets SVC_URL
  stop_service
  local out="$SVC_DIR/sessiond.out"
  : > "$out"
  # Its variable is given through its environment (never on a command line).
  (
    if [ "$1" = postgres ]; then
      [ -z "${TARGET_URL:-}" ] || export "$APP_URL_ENV=$TARGET_URL"
    else
      unset "$APP_URL_ENV"
    fi
    exec "$(dirname "$SDB")/sessiond" --listen 127.0.0.1:0 --quiet > "$out" 2> "$SVC_DIR/sessiond.log"
  ) &
  SVC_PID=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
  SVC_URL=$(sed -n 's/^listening on //p' "$out")
  [ -n "$SVC_URL" ] || { echo "✗ sessiond did not start:" >&2; cat "$SVC_DIR/sessiond.log" >&2; exit 3; }
  echo "── sessiond serving on $1 at $SVC_URL" >&2
}
stop_service() { # SIGTERM: pending progress is flushed before it exits
  if [ -n "$SVC_PID" ]; then kill -TERM "$SVC_PID" 2>/dev/null || true; wait "$SVC_PID" 2>/dev/null || true; SVC_PID=""; fi
}
