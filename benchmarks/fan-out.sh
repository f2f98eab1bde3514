#!/usr/bin/env bash
# The fan-out runs of docs/performance.md: `--forward` with 1 and with 3 destinations on the
# local sink, embedded SQLite and PostgreSQL + Redis Streams, 7 KB GitHub push, 32 connections,
# 20 s, no ceiling; each REPEAT times (default 2), alternating 1 and 3 so both see the same
# machine. Reports go to benchmarks/results/fan-out-*.json (not committed) with the load
# average before each run in fan-out.log beside them; `benchmarks/table.py --fan-out` makes the
# table. Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and Redis on
# 127.0.0.1:6379; the PostgreSQL runs use a scratch database that is dropped at the end.
#
#   bash benchmarks/fan-out.sh
#   RUNS=postgres-redis DESTINATIONS="1 3 5" REPEAT=1 bash benchmarks/fan-out.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
REPEAT=${REPEAT:-2}
DURATION=${DURATION:-20}
RUNS=${RUNS:-"embedded postgres-redis"}
DESTINATIONS=${DESTINATIONS:-"1 3"}
PGHOST=${PGHOST:-127.0.0.1}
PGUSER=${PGUSER:-postgres}
DB=ww_bench_$$
OUT=benchmarks/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

cleanup() { dropdb -h "$PGHOST" -U "$PGUSER" --if-exists --force "$DB" 2>/dev/null || true; }
trap cleanup EXIT

for n in $(seq 1 "$REPEAT"); do
  for run in $RUNS; do
    for dests in $DESTINATIONS; do
      json="$OUT/fan-out-$STAMP-$run-$dests-$n.json"
      echo "== $run, $dests destination(s), run $n of $REPEAT -> $json; $(uptime)" \
        | tee -a "$OUT/fan-out.log"
      options=(--start "$run" --forward --destinations "$dests" --payload github-push
        --connections 32 --duration "$DURATION" --no-ceiling --json "$json")
      case "$run" in
        embedded)
          "$BIN/webhook-worker" bench "${options[@]}" ${EXTRA:-}
          ;;
        postgres-redis | postgres)
          cleanup
          createdb -h "$PGHOST" -U "$PGUSER" "$DB"
          DATABASE_URL="postgresql://$PGUSER@$PGHOST:5432/$DB" REDIS_ADDR=127.0.0.1:6379 \
            REDIS_KEY_PREFIX="ww-bench-$$" \
            "$BIN/webhook-worker" bench "${options[@]}" ${EXTRA:-}
          ;;
        *)
          echo "unknown run $run (embedded, postgres-redis, postgres)" >&2
          exit 2
          ;;
      esac
    done
  done
done
