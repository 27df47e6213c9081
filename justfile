# sessiondb runbooks. `just --list` shows them (README.md, "Runbooks", lists every one);
# runbooks/ explains each sequence.
set shell := ["bash", "-euo", "pipefail", "-c"]

profile := env("SESSIONDB_PROFILE", "release")
sdb := "target/" + profile + "/sessiondb"
cargo_profile := if profile == "release" { "--release" } else { "" }

# List the recipes
[private]
default:
    @just --list --unsorted

# The main job on an embedded default: throwaway PostgreSQL, 10,000 generated sessions, staging sequence, rollback rehearsal, re-cutover (`just demo app`: on an application's own schema)
demo SCHEMA="default": build
    #!/usr/bin/env bash
    set -euo pipefail
    case "{{trim_start_match(SCHEMA, "SCHEMA=")}}" in
      default) SDB={{sdb}} exec scripts/demo ;;
      app) SDB={{sdb}} exec scripts/demo-app ;;
      *) echo "just demo: SCHEMA is default or app, not {{SCHEMA}}" >&2; exit 2 ;;
    esac

# Run every test against a throwaway PostgreSQL (started and stopped here)
test *ARGS:
    scripts/test {{ARGS}}

# Staging rehearsal against $DATABASE_URL and the config: check, preflight, backup, migrate-state, verify, migrate-state again
stage-migrate: build
    SDB={{sdb}} scripts/stage-migrate

# stage-migrate against a throwaway PostgreSQL on a generated store (CI runs this)
stage-migrate-ephemeral: build
    SDB={{sdb}} scripts/stage-migrate-ephemeral

# Production cutover against $DATABASE_URL: asks before each writing step unless YES=1
prod-cutover: build
    SDB={{sdb}} scripts/prod-cutover

# Roll back to the legacy store, exporting what changed in PostgreSQL: asks unless YES=1
rollback: build
    SDB={{sdb}} scripts/rollback

# Run the reference service sessiond on the configured store (ADDR like 127.0.0.1:8080)
sessiond ADDR="127.0.0.1:8080": build
    target/{{profile}}/sessiond --listen {{ADDR}}

# Smoke-test a running application with the sessiond endpoints: health, status against the database, a write
smoke URL: build
    {{sdb}} verify --smoke-url {{URL}}

# Benchmarks against a throwaway PostgreSQL, as the runbook runs the commands: same-run ratios to cp -a, the psql floor, a psycopg script and pgloader, peak RSS (appends to bench/results.json)
bench:
    scripts/bench

# Fault-injection suite (kills, PostgreSQL and filesystem faults, concurrency, secrets, writes into the legacy store): prints fault, command, outcome, data check
faults:
    #!/usr/bin/env bash
    set -euo pipefail
    export SESSIONDB_FAULTS_TABLE=$(mktemp) SESSIONDB_FAULTS_SCALE=${SESSIONDB_FAULTS_SCALE:-50000}
    scripts/test -E 'test(faults::) | test(hijack::) | test(resume::) | test(secrets::) | test(backup::full_disk) | test(quarantine::) | test(backup_check::) | test(conflicts::) | test(rollback::)'
    python3 -c 'import sys; rows=[l.rstrip("\n").split("\t") for l in open(sys.argv[1])]; rows=[["fault","command","outcome","data check"]]+rows; w=[max(len(r[i]) for r in rows) for i in range(4)]; [print("  ".join(c.ljust(w[i]) for i,c in enumerate(r))) for r in rows]' "$SESSIONDB_FAULTS_TABLE"

# Format check and clippy with warnings as errors
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# What CI runs: lint, tests, and the staging recipe against a throwaway PostgreSQL
ci:
    just lint
    just test
    SESSIONDB_PROFILE=debug just stage-migrate-ephemeral

# Build the binaries, with cargo's progress: a first release build takes minutes (README, Quick start)
[private]
build:
    cargo build {{cargo_profile}} --bins
