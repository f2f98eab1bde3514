"""Retention on PostgreSQL's time partitions: created ahead, dropped once every retention has
passed them, kept (and emptied of what settled) while an event in them waits, skipped when
their lock is busy; rows in the DEFAULT partition; one delivery id stored once across
partitions.

Each test has a database of its own, migrated, with only the DEFAULT partitions left, so that
it lays out partitions of a second around now (EVENTS_RETENTION of a few seconds) without
touching the partitions the other tests use.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import func, select, text, update

from tests.storage.test_retention import count, letter, record, store, stored_ids
from webhook_worker.storage import migrate, partitions
from webhook_worker.storage.database import Database
from webhook_worker.storage.events import insert_events
from webhook_worker.storage.retention import Retention
from webhook_worker.storage.schema import dead_letters, event_keys, events
from webhook_worker.vocabulary import EventStatus

RETENTION = 3.0  # EVENTS_RETENTION: partitions of 1 s (partitions.width_for)
INTERVAL = 1.0


@pytest.fixture
async def pg(postgres_server_url: str) -> AsyncIterator[Database]:
    """A database of this test's own, migrated, with no partition but the DEFAULT ones."""
    name = f"ww_partitions_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    server = postgres_server_url.rsplit("/", 1)[0]
    db = Database.from_url(f"{server}/{name}".replace("postgresql://", "postgresql+asyncpg://"))
    try:
        await migrate.upgrade(db)
        async with db.begin() as conn:
            for partition in await partitions.list_partitions(conn):
                if not partition.default:
                    await partitions.drop(conn, partition)
        yield db
    finally:
        await db.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def layout(db: Database) -> list[partitions.Partition]:
    async with db.connect() as conn:
        return [p for p in await partitions.list_partitions(conn) if not p.default]


async def partition_of(db: Database, event_id: str) -> str:
    async with db.connect() as conn:
        name = await conn.scalar(
            text("SELECT tableoid::regclass::text FROM events WHERE id = :id"), {"id": event_id}
        )
    return str(name)


async def test_partitions_are_created_ahead(pg: Database) -> None:
    now = time.time()
    created = await Retention(pg, RETENTION, INTERVAL).prepare([], now)

    found = await layout(pg)
    assert created == len(found) >= 3
    assert found[0].low == math.floor(now)
    assert all(p.high is not None and p.low is not None and p.high - p.low == 1 for p in found)
    assert all(a.high == b.low for a, b in itertools.pairwise(found))  # no gap
    assert found[-1].high is not None and found[-1].high >= now + 3  # 3 widths, 2 intervals

    # With the default retention (720h): partitions of a day, three days ahead.
    later = await Retention(pg, 720 * 3600, 600).prepare([], now)
    days = (await layout(pg))[-later:]
    assert later >= 3 and all(p.high is not None and p.low is not None for p in days)
    assert days[-1].high is not None and days[-1].high >= now + 3 * 86_400
    assert {p.high % 86_400 for p in days if p.high is not None} == {0}


async def test_an_expired_partition_is_dropped_with_everything_about_its_events(
    pg: Database,
) -> None:
    now = time.time()
    sweeper = Retention(pg, RETENTION, INTERVAL)
    await sweeper.prepare([], now)
    old = [record("t", now + 0.1), record("t", now + 0.1, EventStatus.DEAD)]
    await store(pg, old)
    await letter(pg, old[1], "resolved")
    holding = await partition_of(pg, old[0].id)

    result = await sweeper.sweep([], now + 10)

    assert await stored_ids(pg) == set()
    assert holding not in {p.name for p in await layout(pg)}
    assert result.partitions_dropped >= 1
    assert result.events == 2
    assert result.bytes > 0
    assert await count(pg, event_keys) == 0
    assert await count(pg, dead_letters) == 0
    assert ((await layout(pg))[-1].high or 0) >= now + 13  # and more created ahead


async def test_a_partition_is_kept_while_an_event_in_it_waits(pg: Database) -> None:
    now = time.time()
    sweeper = Retention(pg, RETENTION, INTERVAL)
    await sweeper.prepare([], now)
    settled = record("t", now + 0.1)
    retrying = record("t", now + 0.1, EventStatus.RETRYING)
    with_letter = record("t", now + 0.1, EventStatus.DEAD)
    await store(pg, [settled, retrying, with_letter])
    await letter(pg, with_letter, "pending")
    holding = await partition_of(pg, settled.id)

    first = await sweeper.sweep([], now + 10)
    assert holding in first.partitions_kept
    assert holding in {p.name for p in await layout(pg)}
    assert await stored_ids(pg) == {retrying.id, with_letter.id}  # emptied of what settled
    assert first.events == 1

    async with pg.begin() as conn:
        await conn.execute(
            update(events).where(events.c.id == retrying.id).values(status="processed")
        )
    await sweeper.sweep([], now + 11)
    assert await stored_ids(pg) == {with_letter.id}  # its dead letter still waits

    async with pg.begin() as conn:
        await conn.execute(update(dead_letters).values(status="discarded"))
    last = await sweeper.sweep([], now + 12)
    assert holding not in {p.name for p in await layout(pg)}
    assert last.partitions_dropped >= 1
    assert await stored_ids(pg) == set()
    assert await count(pg, dead_letters) == 0


async def test_a_busy_lock_leaves_the_drop_to_the_next_sweep(
    pg: Database, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    sweeper = Retention(pg, RETENTION, INTERVAL)
    await sweeper.prepare([], now)
    event = record("t", now + 0.1)
    await store(pg, [event])
    holding = await partition_of(pg, event.id)

    async with pg.connect() as reader:  # a long export, say: it holds a lock on events
        await reader.execute(select(func.count()).select_from(events))
        with caplog.at_level(logging.WARNING, logger="webhook_worker.storage.retention"):
            busy = await sweeper.sweep([], now + 10)
        await reader.rollback()

    assert holding in busy.partitions_kept
    assert any("waited too long for a lock" in r.getMessage() for r in caplog.records)
    assert holding in {p.name for p in await layout(pg)}
    done = await sweeper.sweep([], now + 10)
    assert done.partitions_dropped >= 1
    assert holding not in {p.name for p in await layout(pg)}


async def test_rows_in_the_default_partition(pg: Database) -> None:
    """Events no partition covered land in DEFAULT: a partition created for their time takes
    them over; expired ones there are deleted row by row."""
    now = time.time()
    sweeper = Retention(pg, RETENTION, INTERVAL)
    ahead = record("t", now + 100)  # no partition yet so far ahead
    behind = record("t", now - 100)  # before every partition
    await store(pg, [ahead, behind])
    assert await partition_of(pg, ahead.id) == "events_default"

    await sweeper.prepare([], now + 99)
    assert await partition_of(pg, ahead.id) == partitions.partition_name(
        "events", math.floor(now + 100)
    )
    async with pg.connect() as conn:
        moved = await conn.scalar(text("SELECT count(*) FROM event_attempts_default"))
    assert moved == 1  # the expired one's attempt, still in DEFAULT

    await sweeper.sweep([], now + 99)
    assert await stored_ids(pg) == {ahead.id}
    async with pg.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM events_default")) == 0


async def test_one_delivery_id_is_stored_once_across_partitions(pg: Database) -> None:
    now = time.time()
    await Retention(pg, RETENTION, INTERVAL).prepare([], now)
    first = record("t", now + 0.1)
    again = record("t", now + 2.5)._replace(delivery_id=first.delivery_id)  # a later partition
    async with pg.begin() as conn:
        assert await insert_events(conn, [first]) == {first.id}
    async with pg.begin() as conn:
        assert await insert_events(conn, [again]) == set()  # the same delivery id, sent again
        assert await insert_events(conn, [first]) == set()  # the same message, redelivered
    assert await stored_ids(pg) == {first.id}
    async with pg.connect() as conn:
        assert partitions.bound_time(again.id) - partitions.bound_time(first.id) >= 2
        keys = (await conn.execute(select(event_keys.c.event_id))).scalars().all()
    assert keys == [first.id]


async def test_the_database_stops_growing_under_steady_ingest(pg: Database) -> None:
    """One simulated second per round: 100 events of 4 KB (that do not compress) in, then a
    sweep with a retention of 3 s (partitions of 1 s). The event tables level off once the
    first partitions go, and so does pg_database_size, but for the system catalogs: creating
    and dropping a partition leaves dead rows there (tens of KB, until autovacuum), which
    counts at one partition a second, as here, and not at one an hour or a day. The tables that
    are not partitioned (``event_keys``, the lease's row) reuse their space once vacuumed: the
    test vacuums them each round, as autovacuum would within its minute."""
    sweeper = Retention(pg, RETENTION, INTERVAL)
    url = pg.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    vacuum = await asyncpg.connect(url)
    start = time.time()
    tables, database = [], []
    try:
        for second in range(40):
            now = start + second
            await sweeper.sweep([], now)
            batch = [record("t", now + n / 100)._replace(body=os.urandom(4096)) for n in range(100)]
            await store(pg, batch)
            await vacuum.execute("VACUUM event_keys, dead_letters, metadata")
            async with pg.connect() as conn:
                tables.append(int(await conn.scalar(text(_TABLES_SIZE)) or 0))
            database.append((await sweeper.observe(now))[1])
    finally:
        await vacuum.close()
    print("event tables KB:", [size // 1024 for size in tables])
    print("pg_database_size KB:", [size // 1024 for size in database])
    assert max(tables[20:]) <= max(tables[10:20]) * 1.02, tables
    # Without retention the last 20 rounds would have added 20 x 400 KB.
    assert database[-1] - database[19] < 20 * 100 * 4096 / 4, database
    assert len(await stored_ids(pg)) <= 500


_TABLES_SIZE = (
    "SELECT sum(pg_total_relation_size(oid)) FROM pg_class "
    "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
)
