"""Load millions of events into a PostgreSQL database, for the data lifecycle figures of
docs/performance.md ("Data lifecycle at scale").

    .venv/bin/python benchmarks/large_events.py --database-url postgresql://postgres@127.0.0.1/large

The database must exist and hold no events: the script migrates it (``webhook-worker
migrate``), replaces the empty partition the migration made for everything before tomorrow
(``events_legacy``) with day-wide partitions (the width the default EVENTS_RETENTION of 720h
gives) over the whole range, then generates the rows inside PostgreSQL with ``INSERT ...
SELECT ... FROM generate_series``, in chunks, never row by row from Python:

- ``--events`` events (default 5,000,000) spread uniformly over the last ``--days`` days, in
  the order they would have arrived; ids are UUIDv7 text made from the received time (48 bits
  of milliseconds) and random bits, as ids.py makes them at ingest;
- five tools with a skewed share (50%, 25%, 15%, 8%, 2%), a few event types each;
- bodies of 1-2 KB of JSON (a push with 2-6 commits of varied messages); one in 10,000 holds
  the rare token ``--token`` (default ``zebra-quartz-4711``), for ``?search=``;
- status ``processed``, one delivery (``default``, delivered) each, one attempt (1 in 10 has a
  failed attempt first), and the ``event_keys`` row of its delivery id.

At the end it ANALYZEs the tables and prints the rate, the size of the database and of each
table, and checks that the DEFAULT partitions are empty. ``--measure`` (large_events_measure.py)
times the API against it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker import constants as c
from webhook_worker.config import Settings
from webhook_worker.storage import migrate, partitions
from webhook_worker.storage.database import Database

DAY = 86_400
TOOLS = (
    ("github-main", 50, ("push", "pull_request", "issues", "workflow_run")),
    ("stripe-live", 25, ("invoice.paid", "charge.succeeded", "customer.updated")),
    ("shopify-eu", 15, ("orders/create", "orders/paid", "products/update")),
    ("jira-cloud", 8, ("jira:issue_updated", "jira:issue_created")),
    ("linear-team", 2, ("Issue", "Comment")),
)
"""(tool id, percent of the events, event types)."""
RARE_EVERY = 10_000
TOKEN = "zebra-quartz-4711"  # noqa: S105 (a search term, not a password)

# One chunk: the rows of generate_series(:first, :last), event g received at
# start + (g + random()) * step, so ids grow with g as they would at ingest. Columns are made
# once in a temporary table, then copied to the four tables.
_CHUNK = """
CREATE TEMPORARY TABLE chunk ON COMMIT DROP AS
WITH g AS (
    SELECT n,
           to_timestamp(:start + (n + random()) * :step) AS at,
           md5(random()::text) || md5(random()::text) AS r,
           (n * 7919) % 100 AS pick,
           2 + (n % 5) AS commits
    FROM generate_series(CAST(:first AS bigint), :last) AS n
), tooled AS (
    SELECT g.*,
           CASE {tool_case} END AS tool
    FROM g
)
SELECT
    lpad(to_hex(floor(extract(epoch FROM at) * 1000)::bigint), 12, '0') AS ms,
    r, n, at, tool, commits,
    (ARRAY{types})[tool + 1][1 + (n % 4)] AS event_type
FROM tooled
"""

_EVENTS = """
INSERT INTO events (id, tool_id, event_type, delivery_id, status, received_at, processed_at,
                    headers, body, payload, attempt_count, ordering)
SELECT id, tool_id, event_type, delivery_id, 'processed', at,
       at + make_interval(secs => 0.005 + (n % 50) / 1000.0),
       jsonb_build_object('content-type', 'application/json',
                          'user-agent', 'Provider-Hookshot/' || (n % 7),
                          'x-delivery', delivery_id,
                          'x-event', event_type),
       convert_to(body, 'UTF8'), NULL, attempts, NULL
FROM (
    SELECT *,
           substr(ms, 1, 8) || '-' || substr(ms, 9, 4) || '-7' || substr(r, 1, 3) || '-'
           || substr('89ab', 1 + (n % 4)::int, 1) || substr(r, 4, 3) || '-' || substr(r, 7, 12)
               AS id,
           (ARRAY{names})[tool + 1] AS tool_id,
           substr(r, 20, 8) || '-' || n AS delivery_id,
           CASE WHEN n % 10 = 3 THEN 2 ELSE 1 END AS attempts,
           json_build_object(
               'ref', 'refs/heads/' || (ARRAY['main', 'develop', 'release'])[1 + n % 3],
               'before', substr(r, 1, 40),
               'after', substr(r, 25, 40),
               'repository', json_build_object(
                   'id', 1000 + n % 977, 'name', 'service-' || (n % 97),
                   'full_name', 'acme/service-' || (n % 97), 'private', n % 2 = 0,
                   'html_url', 'https://github.com/acme/service-' || (n % 97)),
               'pusher', json_build_object('name', 'dev' || (n % 251),
                                           'email', 'dev' || (n % 251) || '@acme.test'),
               'commits', (
                   SELECT json_agg(json_build_object(
                       'id', md5(r || k),
                       'message', (ARRAY['Fix flaky test in the retry path',
                                         'Bump dependencies to the latest minor versions',
                                         'Add pagination to the events endpoint',
                                         'Refactor the forwarder timeouts',
                                         'Document the retention settings'])[1 + (n + k) % 5]
                                  || ' (#' || (n % 9973 + k) || ')'
                                  || CASE WHEN n % {rare} = 17 AND k = 1
                                          THEN ' ' || CAST(:token AS text) ELSE '' END,
                       'timestamp', at,
                       'author', json_build_object('name', 'dev' || ((n + k) % 251),
                                                   'username', 'dev' || ((n + k) % 251)),
                       'added', json_build_array('src/module_' || ((n + k) % 83) || '.py'),
                       'modified', json_build_array('README.md',
                                                    'docs/page_' || ((n * k) % 41) || '.md')))
                   FROM generate_series(1, commits) AS k)
           )::text AS body
    FROM chunk
) AS made
RETURNING id, tool_id, delivery_id, received_at, processed_at, attempt_count
"""

_REST = """
WITH made AS ({events}),
keys AS (
    INSERT INTO event_keys (tool_id, delivery_id, event_id)
    SELECT tool_id, delivery_id, id FROM made
),
deliveries AS (
    INSERT INTO event_deliveries (event_id, destination_id, tool_id, status, attempt_count,
                                  next_attempt_at, updated_at)
    SELECT id, 'default', tool_id, 'delivered', attempt_count, NULL, processed_at FROM made
),
failed AS (
    INSERT INTO event_attempts (event_id, attempt, started_at, duration_ms, outcome,
                                error_class, error, http_status, destination_id)
    SELECT id, 1, received_at, 30000, 'failed', 'http_5xx',
           'the destination answered 503 Service Unavailable', 503, 'default'
    FROM made WHERE attempt_count = 2
)
INSERT INTO event_attempts (event_id, attempt, started_at, duration_ms, outcome, error_class,
                            error, http_status, destination_id)
SELECT id, attempt_count, processed_at, 12.5, 'forwarded', NULL, NULL, 200, 'default' FROM made
"""


def _statement(token: str) -> tuple[str, str]:
    tool_case, bound = [], 0
    for index, (_, share, _) in enumerate(TOOLS):
        bound += share
        tool_case.append(f"WHEN pick < {bound} THEN {index}")
    names = "[" + ", ".join(f"'{name}'" for name, _, _ in TOOLS) + "]"
    # A rectangular array: each tool's types repeated to four.
    rows = []
    for _, _, types in TOOLS:
        padded = [types[i % len(types)] for i in range(4)]
        rows.append("[" + ", ".join(f"'{t}'" for t in padded) + "]")
    chunk = _CHUNK.format(tool_case=" ".join(tool_case), types="[" + ", ".join(rows) + "]")
    events = _EVENTS.format(names=names, rare=RARE_EVERY)
    return chunk, _REST.format(events=events)


async def prepare_partitions(conn: AsyncConnection, now: float, days: float, width: int) -> None:
    """Partitions of ``width`` seconds over ``[now - days, now + 1 day)``, with no catch-all
    range: ``*_legacy`` partitions (MINVALUE up to the migration's minute, when it migrated
    events) are dropped first."""
    existing = [p for p in await partitions.list_partitions(conn) if not p.default]
    legacy = [p for p in existing if p.low is None]
    for partition in legacy:
        await partitions.drop(conn, partition)
    existing = [p for p in existing if p.low is not None]
    start: float = math.floor((now - days * DAY) / width) * width
    first = existing[0].low if existing else None
    assert first is None or first >= start, "events older than --days already have partitions"
    # Up to the first partition there is, or (none yet) to the one `ensure` starts with.
    end = first if first is not None else math.floor(now / width) * width
    while start < end:
        high = min(start + width, end)
        name = partitions.partition_name(c.TABLE_EVENTS, start)
        await partitions.create(conn, partitions.Partition(name, start, high))
        start = high
    await partitions.ensure(conn, now, width, DAY)


async def load(args: argparse.Namespace) -> None:
    settings = Settings.from_env({"DATABASE_URL": args.database_url})
    db = Database.from_url(settings.sqlalchemy_url(), pool_size=1)
    try:
        print("migrating", flush=True)
        await migrate.upgrade(db)
        async with db.connect() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM events"))
        if count:
            sys.exit(
                f"{settings.describe_database()} already holds {count} events: give an empty "
                "database (createdb large; this script fills it)"
            )
        now = time.time()
        async with db.begin() as conn:
            await prepare_partitions(conn, now, args.days, args.width)
        chunk_sql, rest_sql = _statement(args.token)
        span = args.days * DAY
        step = span / args.events
        start_at = now - span
        began = time.monotonic()
        done = 0
        while done < args.events:
            last = min(done + args.chunk, args.events) - 1
            async with db.begin() as conn:
                await conn.execute(text("SET LOCAL synchronous_commit = off"))
                await conn.execute(
                    text(chunk_sql), {"start": start_at, "step": step, "first": done, "last": last}
                )
                await conn.execute(text(rest_sql), {"token": args.token})
            done = last + 1
            elapsed = time.monotonic() - began
            print(
                f"{done:>10,} events  {done / elapsed:>8,.0f} events/s  {elapsed:7.1f} s",
                flush=True,
            )
        loaded = time.monotonic() - began
        print("ANALYZE", flush=True)
        async with db.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in (*(t for t, _ in partitions.PARTITIONED), c.TABLE_EVENT_KEYS):
                await conn.execute(text(f"ANALYZE {table}"))
            await report(conn, args.events, loaded, args.token)
    finally:
        await db.close()


async def report(conn: AsyncConnection, events: int, seconds: float, token: str) -> None:
    size = await conn.scalar(text("SELECT pg_database_size(current_database())"))
    print(f"loaded {events:,} events in {seconds:.0f} s: {events / seconds:,.0f} events/s")
    print(f"pg_database_size: {size / 2**30:.2f} GiB ({size / events:,.0f} bytes per event)")
    for table in (*(t for t, _ in partitions.PARTITIONED), c.TABLE_EVENT_KEYS):
        total = await conn.scalar(
            text(
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), "
                "pg_total_relation_size(to_regclass(:t))) "
                "FROM pg_inherits WHERE inhparent = to_regclass(:t)"
            ),
            {"t": table},
        )
        print(f"  {table:<18} {total / 2**30:6.2f} GiB")
    for table, _ in partitions.PARTITIONED:
        default = f"SELECT count(*) FROM {table}_default"  # noqa: S608 (our table names)
        stray = await conn.scalar(text(default))
        print(f"  {table}_default: {stray} rows" + ("" if stray == 0 else "  (expected 0)"))
    found = await conn.scalar(
        text("SELECT count(*) FROM events WHERE position(convert_to(:t, 'UTF8') IN body) > 0"),
        {"t": token},
    )
    print(f"bodies with the rare token: {found}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="an empty PostgreSQL database")
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--days", type=float, default=1.0, help="spread over the last N days")
    parser.add_argument("--chunk", type=int, default=200_000, help="events per INSERT")
    parser.add_argument(
        "--width", type=int, default=DAY, help="partition width in seconds (default a day)"
    )
    parser.add_argument("--token", default=TOKEN, help="the rare token of 1 in 10,000")
    args = parser.parse_args()
    if not args.database_url.startswith("postgresql"):
        parser.error("--database-url: a PostgreSQL URL, e.g. postgresql://postgres@127.0.0.1/large")
    asyncio.run(load(args))


if __name__ == "__main__":
    main()
