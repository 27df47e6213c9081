# Helpers of the runbook scripts (sourced, not run).

# human BYTES: a size for people, as du -h counts (1 KiB = 1024 bytes): "673 MiB".
human() {
  awk -v b="$1" 'BEGIN {
    split("B KiB MiB GiB TiB", u, " "); i = 1
    while (b >= 1024 && i < 5) { b /= 1024; i++ }
    if (i == 1) printf "%d B", b; else if (b < 10) printf "%.1f %s", b, u[i]; else printf "%.0f %s", b, u[i]
  }'
}

# disk_use PATH: what PATH takes on disk, human-readable ("0 B" when it is gone).
disk_use() {
  if [ -e "$1" ]; then human $(( $(du -sk "$1" 2>/dev/null | cut -f1) * 1024 )); else echo "0 B"; fi
}

# disk_free PATH: the free space of the filesystem holding PATH (or its nearest parent).
disk_free() {
  local p=$1
  while [ ! -e "$p" ]; do p=$(dirname "$p"); done
  human $(( $(df -Pk "$p" | awk 'NR == 2 { print $4 }') * 1024 ))
}

# pg_clean: unset every PG* variable of the caller's shell (libpq's settings), so that
# only the throwaway server's, from pg_env, reach the steps.
pg_clean() {
  local v
  while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^PG[A-Z]+$' || true)
}

# pg_env DIR: export libpq's variables for the throwaway server in DIR (see
# scripts/pg-ephemeral env).
pg_env() {
  local k v
  while IFS='=' read -r k v; do export "$k=$v"; done < <(scripts/pg-ephemeral env "$1")
}

# name_url_env CONFIG VAR: make VAR the application's database variable in a config
# that generate-fixture wrote (its postgres.url_env, "DATABASE_URL" there).
name_url_env() {
  sed -i "s/^url_env = \"DATABASE_URL\"/url_env = \"$2\"/" "$1"
  grep -q "^url_env = \"$2\"" "$1" \
    || { echo "✗ could not set postgres.url_env = \"$2\" in $1" >&2; exit 3; }
}

# What generate-fixture's store (without --bad) makes a run warn about, on purpose: nothing
# since issue 18 (its state conflicts and orphan state files come only with --bad), so a
# healthy run of the demo or of stage-migrate-ephemeral reads `ok` on every row but the
# ones a sequence itself expects (SUMMARY_EXPECT, read by scripts/summarize.py; one
# `code=why` a line; the demo adds the backend_drift of its switches).
FIXTURE_EXPECT=""
