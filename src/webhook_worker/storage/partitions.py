"""Time partitions of the event tables on PostgreSQL.

``events``, ``event_attempts`` and ``event_deliveries`` are partitioned by range of the event id.
Event ids are UUIDv7 (ids.py): their first 48 bits are the millisecond they were made, at ingest,
so a range of ids is a range of time, and a lookup by event id (every write the worker makes,
every event page) is pruned to one partition. The three tables share the same bounds; a
partition of each is created, and dropped, together, in one transaction.

- Each table has a DEFAULT partition, which catches a row no range covers (partitions not yet
  created because no worker ran for days, an id from a skewed clock). It is normally empty;
  creating a partition moves the rows of its range out of it first.
- The partition created by the migration from an unpartitioned table (``{table}_legacy``) holds
  everything before it, from MINVALUE.
- Partitions are created ahead of time by the retention sweep (storage/retention.py) and when a
  worker starts; their width follows the longest retention (:func:`width_for`).
- A partition whose whole range is older than every tool's retention is dropped, unless one of
  its events is still waiting (retrying, paused, a pending dead letter): then its expired rows
  are deleted instead, and it is dropped once empty.

The unique delivery id of a tool cannot be a constraint of a partitioned table (a unique
constraint there must include the partition key), so it lives in ``event_keys``, which is not
partitioned; see storage/events.py.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker import constants as c

PARTITIONED: Final = (
    (c.TABLE_EVENTS, "id"),
    (c.TABLE_ATTEMPTS, "event_id"),
    (c.TABLE_EVENT_DELIVERIES, "event_id"),
)
"""Each partitioned table with its partition key (an event id)."""

WIDTHS: Final = (86_400, 3_600, 600, 60, 10, 1)
"""The partition widths (seconds) :func:`width_for` chooses from; bounds are multiples of them."""

LOCK_TIMEOUT: Final = "1s"
"""How long creating or dropping a partition waits for its table lock before giving up until the
next sweep (a long query on the event tables holds a lock that DROP waits for, and queries
queue behind DROP)."""

_BOUND = re.compile(r"FROM \((MINVALUE|'([0-9a-f-]+)')\) TO \((MAXVALUE|'([0-9a-f-]+)')\)")


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of ``events`` (and its namesakes): ``[low, high)`` in epoch seconds, None
    for MINVALUE / MAXVALUE; ``default`` for the DEFAULT partition."""

    name: str
    low: float | None
    high: float | None
    default: bool = False

    def suffix(self, table: str = c.TABLE_EVENTS) -> str:
        """The part of the name after the table's: the same for the three tables."""
        return self.name.removeprefix(table)


def id_bound(at: float) -> str:
    """The smallest UUIDv7 string made in the millisecond ``at`` (epoch seconds) falls in, or
    later: every id made earlier sorts below it, every id made then or later at or above it.
    ``at`` is rounded to the millisecond, so that ``id_bound(bound_time(b)) == b``."""
    digits = f"{round(at * 1000):012x}"
    return f"{digits[:8]}-{digits[8:]}-0000-0000-000000000000"


def bound_time(bound: str) -> float:
    """The epoch seconds an id (or a bound) was made at."""
    return int(bound.replace("-", "")[:12], 16) / 1000


def width_for(longest_retention: float, interval: float) -> int:
    """The partition width for the longest retention among the tools (0: forever) and the
    sweep interval: about a tenth of the retention, so events leave at most ~10% after their
    time, yet wide enough that a sweep gap spans a few partitions, at most a day."""
    if longest_retention <= 0:
        return WIDTHS[0]
    wanted = max(longest_retention / 10, interval / 4)
    return next((width for width in WIDTHS if width <= wanted), WIDTHS[-1])


def partition_name(table: str, low: float) -> str:
    return f"{table}_p{time.strftime('%Y%m%d_%H%M%S', time.gmtime(low))}"


async def is_partitioned(conn: AsyncConnection) -> bool:
    """Whether ``events`` is partitioned here (PostgreSQL once migrated; never SQLite)."""
    if conn.dialect.name != "postgresql":
        return False
    kind = await conn.scalar(
        text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:table)"),
        {"table": c.TABLE_EVENTS},
    )
    return bool(kind == "p")


async def list_partitions(conn: AsyncConnection, table: str = c.TABLE_EVENTS) -> list[Partition]:
    """The partitions of ``table``, oldest first (the DEFAULT partition last)."""
    rows = await conn.execute(
        text(
            "SELECT child.relname, pg_get_expr(child.relpartbound, child.oid) "
            "FROM pg_inherits JOIN pg_class child ON child.oid = pg_inherits.inhrelid "
            "WHERE pg_inherits.inhparent = to_regclass(:table)"
        ),
        {"table": table},
    )
    found: list[Partition] = []
    for name, bound in rows:
        if bound == "DEFAULT":
            found.append(Partition(name, None, None, default=True))
            continue
        match = _BOUND.search(bound)
        if match is None:
            raise ValueError(f"partition {name} has an unexpected bound: {bound}")
        low = None if match.group(2) is None else bound_time(match.group(2))
        high = None if match.group(4) is None else bound_time(match.group(4))
        found.append(Partition(name, low, high))
    return sorted(found, key=lambda p: (p.default, -math.inf if p.low is None else p.low))


async def ensure(conn: AsyncConnection, now: float, width: int, ahead: float) -> list[Partition]:
    """Create the partitions that cover ``[.., now + ahead)`` with no gap (:func:`missing`),
    all in this transaction. Returns what it created."""
    wanted = missing(await list_partitions(conn), now, width, ahead)
    for partition in wanted:
        await create(conn, partition)
    return wanted


def missing(existing: Sequence[Partition], now: float, width: int, ahead: float) -> list[Partition]:
    """The partitions to create so that ``existing`` covers ``[.., now + ahead)`` with no gap,
    each ``width`` seconds wide on a multiple of it (a first one from the end of the newest to
    the current multiple fills any gap: no sweep ran for a while, and the rows of that time,
    if any, are in the DEFAULT partition), oldest first."""
    regular = [p for p in existing if not p.default]
    until = now + ahead
    if regular and regular[-1].high is None:
        return []  # covered up to MAXVALUE
    current = math.floor(now / width) * width
    start = regular[-1].high if regular else current
    assert start is not None
    wanted: list[Partition] = []
    if start < current:
        wanted.append(Partition(partition_name(c.TABLE_EVENTS, start), start, current))
        start = current
    while start < until:
        end = (math.floor(start / width) + 1) * width
        wanted.append(Partition(partition_name(c.TABLE_EVENTS, start), start, end))
        start = end
    return wanted


async def create(conn: AsyncConnection, partition: Partition) -> None:
    """Create ``partition`` (a regular one) of the three tables: each as a table first, with
    the rows of its range moved from the DEFAULT partition, then attached (which takes a SHARE
    UPDATE EXCLUSIVE lock on the table, so writes go on; ``CREATE TABLE .. PARTITION OF``
    would take ACCESS EXCLUSIVE), waiting at most :data:`LOCK_TIMEOUT` for a lock."""
    lower, upper = id_range(partition)
    assert lower is not None and upper is not None
    await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    for table, column in PARTITIONED:
        name = partition.name.replace(c.TABLE_EVENTS, table, 1)
        default = f"{table}_default"
        await conn.execute(text(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS)"))
        # The code's own table names; the bounds are parameters.
        moved = (
            f"WITH moved AS (DELETE FROM {default} WHERE {column} >= :lower "  # noqa: S608
            f"AND {column} < :upper RETURNING *) INSERT INTO {name} SELECT * FROM moved"
        )
        await conn.execute(text(moved), {"lower": lower, "upper": upper})
        await conn.execute(
            text(
                f"ALTER TABLE {table} ATTACH PARTITION {name} "
                f"FOR VALUES FROM ('{lower}') TO ('{upper}')"
            )
        )


async def drop(conn: AsyncConnection, partition: Partition) -> None:
    """Drop ``partition`` of the three tables (run :func:`still_waiting` first, in the same
    transaction). Takes ACCESS EXCLUSIVE on the tables, briefly, parents first (the order every
    query takes them in)."""
    await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    names = [partition.name.replace(c.TABLE_EVENTS, table, 1) for table, _ in PARTITIONED]
    parents = ", ".join(table for table, _ in PARTITIONED)
    await conn.execute(text(f"LOCK TABLE {parents} IN ACCESS EXCLUSIVE MODE"))
    await conn.execute(text(f"DROP TABLE {', '.join(names)}"))


def id_range(partition: Partition) -> tuple[str | None, str | None]:
    """The partition's bounds as event ids (None: unbounded)."""
    return (
        None if partition.low is None else id_bound(partition.low),
        None if partition.high is None else id_bound(partition.high),
    )


async def sizes(conn: AsyncConnection, partitions: Sequence[Partition]) -> int:
    """Bytes on disk of these partitions of the three tables, with their indexes and TOAST."""
    names = [
        p.name.replace(c.TABLE_EVENTS, table, 1) for p in partitions for table, _ in PARTITIONED
    ]
    if not names:
        return 0
    total = await conn.scalar(
        text(
            "SELECT coalesce(sum(pg_total_relation_size(to_regclass(name))), 0) "
            "FROM unnest(CAST(:names AS text[])) AS name"
        ),
        {"names": names},
    )
    return int(total or 0)
