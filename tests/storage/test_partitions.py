"""The time partitions of the event tables on PostgreSQL (storage/partitions.py) and the unique
delivery id they keep through ``event_keys``."""

from __future__ import annotations

import itertools
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from webhook_worker.errors import DatabaseUnavailableError
from webhook_worker.storage import partitions
from webhook_worker.storage.database import Database
from webhook_worker.storage.erase import delete_events
from webhook_worker.storage.events import insert_events
from webhook_worker.storage.records import EventRecord
from webhook_worker.storage.schema import attempts, event_keys, events
from webhook_worker.vocabulary import EventStatus

DAY = 86_400


def id_at(seconds: float) -> str:
    """A UUIDv7 made at ``seconds`` (as ids.new_id makes them, at a chosen time)."""
    millis = round(seconds * 1000)
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10))
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return str(uuid.UUID(int=value))


def record(event_id: str, delivery_id: str, tool_id: str = "demo") -> EventRecord:
    at = datetime.fromtimestamp(partitions.bound_time(event_id), UTC)
    return EventRecord(
        event_id, tool_id, "push", delivery_id, EventStatus.PROCESSED, at, at,
        {"content-type": "application/json"}, b'{"n": 1}', None, 1,
    )  # fmt: skip


def test_an_id_bound_separates_the_ids_made_before_it_from_those_made_after() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        at = rng.randrange(1_700_000_000_000, 2_000_000_000_000) / 1000
        bound = partitions.id_bound(at)
        assert id_at(at - 0.001) < bound <= id_at(at) < partitions.id_bound(at + 0.001)
        assert partitions.bound_time(bound) == at
        assert partitions.id_bound(partitions.bound_time(bound)) == bound


def test_the_width_follows_the_longest_retention_and_the_sweep_interval() -> None:
    assert partitions.width_for(0, 600) == DAY  # kept forever
    assert partitions.width_for(720 * 3600, 600) == DAY
    assert partitions.width_for(24 * 3600, 600) == 3600
    assert partitions.width_for(120, 30) == 10
    assert partitions.width_for(3, 1) == 1
    # A sweep gap spans a few partitions, never thousands.
    assert partitions.width_for(3, 600) == 60


@pytest.fixture
async def partitioned(postgres_db: Database) -> AsyncIterator[Database]:
    """The migrated database with daily partitions up to two days ahead, as a worker makes
    them; what a test adds is dropped again afterwards."""
    async with postgres_db.connect() as conn:
        before = {p.name for p in await partitions.list_partitions(conn)}
    async with postgres_db.begin() as conn:
        await partitions.ensure(conn, now=time.time(), width=DAY, ahead=2 * DAY)
    yield postgres_db
    async with postgres_db.begin() as conn:
        for partition in await partitions.list_partitions(conn):
            if partition.name not in before:
                await partitions.drop(conn, partition)


async def test_the_migration_partitions_the_event_tables(partitioned: Database) -> None:
    async with partitioned.connect() as conn:
        assert await partitions.is_partitioned(conn)
        for table, _ in partitions.PARTITIONED:
            found = await partitions.list_partitions(conn, table)
            suffixes = [p.suffix(table) for p in found]
            # An empty table leaves no legacy partition (tests/storage/
            # test_migrate_previous_release.py migrates one with data).
            assert "_legacy" not in suffixes
            assert suffixes[-1] == "_default" and found[-1].default
            # Contiguous, each range starting where the one before ended.
            ranges = [p for p in found if not p.default]
            assert all(a.high == b.low for a, b in itertools.pairwise(ranges))
            assert ranges[-1].high is not None and ranges[-1].high > datetime.now(UTC).timestamp()


async def test_ensure_creates_partitions_ahead_and_moves_rows_out_of_the_default(
    partitioned: Database,
) -> None:
    async with partitioned.connect() as conn:
        end = (await partitions.list_partitions(conn))[-2].high
    assert end is not None
    # Stored while no partition covered its time: it waits in the DEFAULT partition.
    later = end + 3 * DAY + 1800
    stranded = id_at(later)
    async with partitioned.begin() as conn:
        assert await insert_events(conn, [record(stranded, "stranded")]) == {stranded}
        assert await conn.scalar(text("SELECT count(*) FROM events_default")) == 1

    async with partitioned.begin() as conn:
        created = await partitions.ensure(conn, now=later, width=3600, ahead=2 * 3600)
    # One partition fills the gap, then an hour each up to two hours ahead.
    assert [(p.low, p.high) for p in created] == [
        (end, later - 1800),
        (later - 1800, later + 1800),
        (later + 1800, later + 5400),
        (later + 5400, later + 9000),
    ]
    async with partitioned.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM events_default")) == 0
        home = partitions.partition_name("events", later - 1800)
        assert await conn.scalar(text(f"SELECT id FROM {home}")) == stranded  # noqa: S608
        # The same bounds for the three tables.
        for table, _ in partitions.PARTITIONED[1:]:
            names = {p.suffix(table) for p in await partitions.list_partitions(conn, table)}
            assert {p.suffix() for p in created} <= names
    async with partitioned.begin() as conn:
        assert await partitions.ensure(conn, now=later, width=3600, ahead=2 * 3600) == []


async def test_a_dropped_partition_takes_its_rows_of_the_three_tables(
    partitioned: Database,
) -> None:
    async with partitioned.connect() as conn:
        end = (await partitions.list_partitions(conn))[-2].high
    assert end is not None
    async with partitioned.begin() as conn:
        (created,) = await partitions.ensure(conn, now=end, width=DAY, ahead=1)
        event_id = id_at(end + 60)
        await insert_events(conn, [record(event_id, "old")])
        await conn.execute(
            attempts.insert(),
            {
                "event_id": event_id, "attempt": 1, "started_at": datetime.now(UTC),
                "duration_ms": 1.0, "outcome": "stored",
            },
        )  # fmt: skip
        assert await partitions.sizes(conn, [created]) > 0
    async with partitioned.begin() as conn:
        await partitions.drop(conn, created)
    async with partitioned.connect() as conn:
        assert created.name not in {p.name for p in await partitions.list_partitions(conn)}
        assert await conn.scalar(select(func.count()).select_from(attempts)) == 0
        assert await conn.scalar(select(func.count()).select_from(events)) == 0


async def test_a_delivery_id_is_stored_once_across_partitions(partitioned: Database) -> None:
    async with partitioned.connect() as conn:
        end = (await partitions.list_partitions(conn))[-2].high
    assert end is not None
    async with partitioned.begin() as conn:
        await partitions.ensure(conn, now=end + DAY, width=DAY, ahead=1)
    first, again = id_at(end - 60), id_at(end + DAY + 60)  # either side of two boundaries
    async with partitioned.begin() as conn:
        assert await insert_events(conn, [record(first, "d-1")]) == {first}
    async with partitioned.begin() as conn:
        # The provider sends the same delivery again a day later (a new event id, in another
        # partition), and the first message comes back from the queue too: neither is stored.
        assert await insert_events(conn, [record(again, "d-1"), record(first, "d-1")]) == set()
        # Another tool's delivery of the same id is its own.
        other = id_at(end + DAY + 61)
        assert await insert_events(conn, [record(other, "d-1", tool_id="other")]) == {other}
    async with partitioned.connect() as conn:
        stored = (await conn.execute(select(events.c.id, events.c.tool_id))).all()
        assert sorted(stored) == sorted([(first, "demo"), (other, "other")])
        assert await conn.scalar(select(func.count()).select_from(event_keys)) == 2

    # Erased, its delivery id is new again.
    async with partitioned.begin() as conn:
        deleted = await delete_events(conn, [first])
    assert (deleted.events, deleted.keys) == (1, [("demo", "d-1")])
    async with partitioned.begin() as conn:
        assert await insert_events(conn, [record(again, "d-1")]) == {again}


async def test_a_row_routed_to_the_default_during_an_attach_is_retried_not_refused(
    partitioned: Database,
) -> None:
    # While a partition is attached (writes go on), an insert that routed its row with the
    # partitions of a moment before reaches the DEFAULT partition and fails its constraint. That
    # must read as "try again" (the worker retries the batch), never as bad data (it would
    # dead-letter the event). Writing straight into the DEFAULT partition fails the same way.
    async with partitioned.connect() as conn:
        covered = (await partitions.list_partitions(conn))[-2]
    assert covered.low is not None
    row = record(id_at(covered.low + 1), "raced")
    with pytest.raises(DatabaseUnavailableError, match="violates partition constraint"):
        async with partitioned.begin() as conn:
            await conn.execute(text("SET LOCAL lock_timeout = '5s'"))
            await conn.execute(
                text(
                    "INSERT INTO events_default (id, tool_id, event_type, delivery_id, status, "
                    "received_at, headers, body, attempt_count) VALUES (:id, 'demo', 'push', "
                    "'raced', 'processed', :at, '{}', '\\x00', 1)"
                ),
                {"id": row.id, "at": row.received_at},
            )
