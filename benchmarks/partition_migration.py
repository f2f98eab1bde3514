"""How long the migration to time partitions (revision 0004) takes on an existing events table.

    .venv/bin/python benchmarks/partition_migration.py --events 1000000 \
        --server postgresql://postgres@127.0.0.1:5432

creates the database ``partition_migration``, brings it to revision 0003 (before partitions),
fills it with ``--events`` events (1-2 KB JSON bodies, one attempt and one delivery each) spread
over the last ``--days`` days, then times ``webhook-worker migrate`` to the newest revision and
checks that every row is still there. The database is dropped at the end unless ``--keep``.
The migration holds its locks for the whole of that time (docs/operations.md, "Data lifecycle").
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg
from alembic import command
from sqlalchemy.engine import Connection

from webhook_worker.storage import migrate
from webhook_worker.storage.database import Database

NAME = "partition_migration"
CHUNK = 200_000

# UUIDv7 text from a time: 48 bits of milliseconds, version 7, variant, random bits.
_FILL = """
INSERT INTO events (id, tool_id, event_type, delivery_id, status, received_at, processed_at,
                    headers, body, payload, attempt_count)
SELECT
    substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7' || substr(h, 14, 3) || '-8'
        || substr(h, 18, 3) || '-' || substr(h, 21, 12),
    'tool-' || (n % 5), 'push', 'delivery-' || n, 'processed', at, at,
    '{"content-type": "application/json"}',
    convert_to(json_build_object('n', n, 'repository', 'acme/widgets',
                                 'ref', 'refs/heads/main', 'commits',
                                 (SELECT json_agg(json_build_object('id', md5((n * 10 + k)::text),
                                                                    'message', repeat('fix ', 20)))
                                  FROM generate_series(1, 8) k))::text, 'UTF8'),
    NULL, 1
FROM (
    SELECT n, now() - make_interval(secs => :span * (:count - n) / :count) AS at
    FROM generate_series(:first, :last) AS n
) AS timed,
LATERAL (SELECT lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0')
                || lpad(to_hex((random() * 4095)::int), 3, '0') || lpad(to_hex(n), 17, '0') AS h)
    AS hex
"""


async def fill(url: str, count: int, days: float) -> None:
    conn = await asyncpg.connect(url)
    try:
        raw = _FILL.replace(":span", str(float(days * 86_400))).replace(":count", str(count))
        for first in range(1, count + 1, CHUNK):
            last = min(first + CHUNK - 1, count)
            statement = raw.replace(":first", str(first)).replace(":last", str(last))
            await conn.execute(statement)
        await conn.execute(
            "INSERT INTO event_attempts (event_id, attempt, started_at, duration_ms, outcome, "
            "destination_id) SELECT id, 1, received_at, 12.5, 'delivered', 'default' FROM events"
        )
        await conn.execute(
            "INSERT INTO event_deliveries (event_id, destination_id, tool_id, status, "
            "attempt_count, updated_at) "
            "SELECT id, 'default', tool_id, 'delivered', 1, received_at FROM events"
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        return {
            table: int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
            for table in ("events", "event_attempts", "event_deliveries")
        }
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    admin = await asyncpg.connect(f"{args.server}/postgres")
    await admin.execute(f"DROP DATABASE IF EXISTS {NAME}")
    await admin.execute(f"CREATE DATABASE {NAME}")
    url = f"{args.server}/{NAME}"
    db = Database.from_url(url.replace("postgresql://", "postgresql+asyncpg://"))
    try:

        def to_0003(conn: Connection) -> None:
            config = migrate.alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0003")

        async with db.begin() as conn:
            await conn.run_sync(to_0003)
        started = time.perf_counter()
        await fill(url, args.events, args.days)
        filled = time.perf_counter() - started
        before = await counts(url)
        size = await admin.fetchval("SELECT pg_database_size($1)", NAME)
        print(f"filled {before} in {filled:.0f} s; database {size / 2**30:.2f} GiB")
        started = time.perf_counter()
        await migrate.upgrade(db)
        took = time.perf_counter() - started
        after = await counts(url)
        assert after == before, (before, after)
        print(f"migrated to {migrate.head_revision()} in {took:.1f} s; every row kept")
    finally:
        await db.close()
        if not args.keep:
            await admin.execute(f"DROP DATABASE IF EXISTS {NAME}")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
