#!/usr/bin/env bash
# The reference runs of docs/performance.md, each repeated (REPEAT, default 3) so the spread
# shows: embedded SQLite, then PostgreSQL + Redis Streams, 7 KB GitHub push, 32 connections,
# 20 s. Reports go to benchmarks/results/ (not committed). Needs PostgreSQL on 127.0.0.1:5432
# (user postgres, trust auth) and Redis on 127.0.0.1:6379, like the tests; the PostgreSQL run
# uses a scratch database that is dropped at the end.
#
#   bash benchmarks/reference.sh                 # all of them
#   RUNS="postgres-redis" bash benchmarks/reference.sh
#   EXTRA="--profile benchmarks/results/profile" bash benchmarks/reference.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-20}
RUNS=${RUNS:-"embedded postgres-redis"}
PGHOST=${PGHOST:-127.0.0.1}
PGUSER=${PGUSER:-postgres}
DB=ww_bench_$$
OUT=benchmarks/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

cleanup() { dropdb -h "$PGHOST" -U "$PGUSER" --if-exists --force "$DB" 2>/dev/null || true; }
trap cleanup EXIT

for run in $RUNS; do
  for n in $(seq 1 "$REPEAT"); do
    json="$OUT/$STAMP-$run-$n.json"
    echo "== $run, run $n of $REPEAT -> $json"
    case "$run" in
      embedded)
        "$BIN/webhook-worker" bench --start embedded --payload github-push --connections 32 \
          --duration "$DURATION" --json "$json" ${EXTRA:-}
        ;;
      postgres-redis | postgres)
        cleanup
        createdb -h "$PGHOST" -U "$PGUSER" "$DB"
        DATABASE_URL="postgresql://$PGUSER@$PGHOST:5432/$DB" REDIS_ADDR=127.0.0.1:6379 \
          REDIS_KEY_PREFIX="ww-bench-$$" \
          "$BIN/webhook-worker" bench --start "$run" --payload github-push --connections 32 \
          --duration "$DURATION" --json "$json" ${EXTRA:-}
        ;;
      *)
        echo "unknown run $run (embedded, postgres-redis, postgres)" >&2
        exit 2
        ;;
    esac
  done
done
