"""The retention sweep on SQLite and PostgreSQL: what expires goes with everything stored about
it, what still waits stays, one process sweeps at a time, and the SQLite file stops growing.

Time is given to the sweep (``now``) and the events are written with ids and times of the
moment they stand for, so these tests wait for nothing. The partition tests are in
test_partitions_retention.py; the worker's loop in tests/worker/test_retention_sweep.py.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from tests.support import eventually
from webhook_worker.observability import metrics
from webhook_worker.storage import migrate
from webhook_worker.storage.database import Database, upsert
from webhook_worker.storage.events import insert_events
from webhook_worker.storage.lease import Lease, LeaseLost
from webhook_worker.storage.records import EventRecord
from webhook_worker.storage.retention import Policy, Retention
from webhook_worker.storage.schema import (
    attempts,
    dead_letters,
    deliveries,
    event_keys,
    events,
    metadata_table,
)
from webhook_worker.tools.model import Tool, parse_tool
from webhook_worker.vocabulary import EventStatus

DAY = 86_400.0
DEFAULT = 720 * 3600.0  # EVENTS_RETENTION's default


def tool(tool_id: str, retention: str | int | None = None) -> Tool:
    definition: dict[str, Any] = {"id": tool_id, "auth": {"type": "none"}}
    if retention is not None:
        definition["retention"] = retention
    return parse_tool(definition)


def id_at(at: float) -> str:
    """A UUIDv7 made at ``at`` (epoch seconds), as ingest makes them."""
    value = (int(at * 1000) & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10))
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return str(uuid.UUID(int=value))


def record(
    tool_id: str, at: float, status: EventStatus = EventStatus.PROCESSED, size: int = 64
) -> EventRecord:
    event_id = id_at(at)
    received = datetime.fromtimestamp(at, UTC)
    return EventRecord(
        id=event_id,
        tool_id=tool_id,
        event_type="push",
        delivery_id=f"d-{event_id}",
        status=status,
        received_at=received,
        processed_at=received,
        headers={"content-type": "application/json"},
        body=b"x" * size,
        payload=None,
        attempt_count=1,
    )


async def store(db: Database, records: Sequence[EventRecord]) -> list[str]:
    """Insert the events, each with an attempt and a delivery."""
    async with db.begin() as conn:
        await insert_events(conn, records)
        for r in records:
            await conn.execute(
                attempts.insert(),
                {
                    "event_id": r.id,
                    "attempt": 1,
                    "started_at": r.received_at,
                    "duration_ms": 1.0,
                    "outcome": "stored",
                },
            )
            await conn.execute(
                deliveries.insert(),
                {
                    "event_id": r.id,
                    "destination_id": "default",
                    "tool_id": r.tool_id,
                    "status": "delivered" if r.status.final else "retrying",
                    "attempt_count": 1,
                    "updated_at": r.received_at,
                },
            )
    return [r.id for r in records]


async def letter(db: Database, event: EventRecord, status: str) -> None:
    async with db.begin() as conn:
        await conn.execute(
            dead_letters.insert(),
            {
                "id": id_at(time.time()),
                "event_id": event.id,
                "destination_id": "default",
                "tool_id": event.tool_id,
                "event_type": event.event_type,
                "error": "forward answered 400",
                "error_class": "http_4xx",
                "retryable": False,
                "retry_count": 0,
                "status": status,
                "created_at": event.received_at,
                "updated_at": event.received_at,
            },
        )


async def stored_ids(db: Database) -> set[str]:
    async with db.connect() as conn:
        return set((await conn.execute(select(events.c.id))).scalars())


async def count(db: Database, table: Any, *where: Any) -> int:
    async with db.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)


async def test_a_short_retention_deletes_what_settled_and_keeps_what_waits(db: Database) -> None:
    """The acceptance on both databases: a tool keeping 3 s loses its old settled events (with
    their attempts, deliveries, settled dead letters and delivery id keys) and keeps its new
    ones and those still waiting; a tool with the default keeps everything."""
    now = time.time()
    old, new = now - 10, now - 1
    gone = [record("short", old), record("short", old, EventStatus.IGNORED)]
    resolved = record("short", old, EventStatus.DEAD)
    pending_letter = record("short", old, EventStatus.DEAD)
    retrying_letter = record("short", old, EventStatus.DEAD)
    waiting = [
        record("short", old, EventStatus.RETRYING),
        record("short", old, EventStatus.PENDING),
    ]
    recent = [record("short", new)]
    kept_by_default = [record("keep", old - DAY), record("keep", old)]
    everything = [
        *gone,
        resolved,
        pending_letter,
        retrying_letter,
        *waiting,
        *recent,
        *kept_by_default,
    ]
    await store(db, everything)
    await letter(db, resolved, "resolved")
    await letter(db, pending_letter, "pending")
    await letter(db, retrying_letter, "retrying")

    result = await Retention(db, DEFAULT, 600).sweep([tool("short", "3s"), tool("keep")], now)

    deleted = {r.id for r in [*gone, resolved]}
    assert result.swept
    assert result.events == len(deleted)
    assert result.bytes >= 64 * len(deleted)
    assert await stored_ids(db) == {r.id for r in everything} - deleted
    assert await count(db, attempts, attempts.c.event_id.in_(deleted)) == 0
    assert await count(db, deliveries, deliveries.c.event_id.in_(deleted)) == 0
    assert await count(db, dead_letters, dead_letters.c.event_id == resolved.id) == 0
    assert await count(db, dead_letters) == 2  # the waiting ones
    if db.dialect == "postgresql":
        assert await count(db, event_keys, event_keys.c.event_id.in_(deleted)) == 0
        assert await count(db, event_keys) == len(everything) - len(deleted)


async def test_a_deleted_delivery_id_can_be_stored_again(db: Database) -> None:
    now = time.time()
    first = record("short", now - 10)
    await store(db, [first])
    await Retention(db, DEFAULT, 600).sweep([tool("short", "3s")], now)
    again = record("short", now)._replace(delivery_id=first.delivery_id)
    async with db.begin() as conn:
        assert await insert_events(conn, [again]) == {again.id}


async def test_events_of_a_removed_tool_and_forever_retentions(db: Database) -> None:
    """A tool that no longer exists has EVENTS_RETENTION; retention 0 keeps forever, and
    EVENTS_RETENTION=0 keeps every tool without its own."""
    now = time.time()
    removed = record("removed", now - 2 * DAY)
    forever = record("forever", now - 400 * DAY)
    short = record("short", now - 10)
    await store(db, [removed, forever, short])
    tools = [tool("forever", 0), tool("short", "3s")]

    await Retention(db, 0, 600).sweep(tools, now)  # EVENTS_RETENTION=0
    assert await stored_ids(db) == {removed.id, forever.id}

    await Retention(db, DAY, 600).sweep(tools, now)
    assert await stored_ids(db) == {forever.id}


def test_the_policy_groups_tools_by_retention() -> None:
    tools = [tool("a", "3s"), tool("b", "3s"), tool("c", "720h"), tool("d"), tool("e", 0)]
    policy = Policy.of(tools, DEFAULT)
    assert policy.longest == 0  # "e" keeps forever
    groups = {(g.retention, g.tool_ids, g.others, g.excluded) for g in policy.groups()}
    # c and d have the default; e keeps forever, so it has no group of its own.
    assert groups == {(3.0, ("a", "b"), False, ()), (DEFAULT, (), True, ("a", "b", "e"))}
    assert Policy.of(tools[:4], DEFAULT).longest == DEFAULT
    assert Policy.of([tool("a", "1000h")], DEFAULT).longest == 1000 * 3600


async def test_one_process_sweeps_at_a_time(db: Database) -> None:
    now = time.time()
    await store(db, [record("short", now - 10)])
    tools = [tool("short", "3s")]
    holder, other = Retention(db, DEFAULT, 600), Retention(db, DEFAULT, 600)
    sweeping = Lease(db, "retention_lease", 60)

    assert await sweeping.acquire()
    assert not await Lease(db, "retention_lease", 60).acquire()
    skipped = await other.sweep(tools, now)
    assert not skipped.swept
    assert await count(db, events) == 1  # nothing deleted
    await sweeping.release()

    assert (await other.sweep(tools, now, rest=600)).swept
    assert await count(db, events) == 0
    # The deployment sweeps once per interval, whichever process asks.
    assert not (await holder.sweep(tools, now)).swept
    async with db.connect() as conn:
        lease = await conn.scalar(
            select(metadata_table.c.value).where(metadata_table.c.key == "retention_lease")
        )
    assert lease is not None and lease / 1000 >= time.time() + 500


async def test_a_lease_is_renewed_and_lost_to_another_process(db: Database) -> None:
    first = Lease(db, "retention_lease", 0.2)
    assert await first.acquire()
    await first.keep()  # most of it left: nothing to do
    taken = Lease(db, "retention_lease", 60)

    async def taken_over() -> bool:
        return await taken.acquire()

    await eventually(taken_over, within=5, what="the lease to run out")
    with pytest.raises(LeaseLost):
        await first.keep()
    await first.release()  # not its own any more: leaves it alone
    assert not await Lease(db, "retention_lease", 60).acquire()


async def test_a_lease_left_by_a_dead_process_runs_out(db: Database) -> None:
    async with db.begin() as conn:
        await conn.execute(
            upsert(db.dialect, metadata_table, ["key"], ["value"]),
            {"key": "retention_lease", "value": int((time.time() - 1) * 1000)},
        )
    assert (await Retention(db, DEFAULT, 600).sweep([], time.time())).swept


async def test_the_sweep_updates_the_metrics(db: Database) -> None:
    now = time.time()
    await store(db, [record("short", now - 10, size=1000), record("keep", now - 100)])
    deleted_before = metrics.RETENTION_DELETED_EVENTS._value.get()
    bytes_before = metrics.RETENTION_DELETED_BYTES._value.get()
    retention = Retention(db, DEFAULT, 600)

    await retention.sweep([tool("short", "3s")], now)
    age, size = await retention.observe(now)

    assert metrics.RETENTION_DELETED_EVENTS._value.get() - deleted_before == 1
    assert metrics.RETENTION_DELETED_BYTES._value.get() - bytes_before >= 1000
    assert metrics.RETENTION_LAST_SWEEP._value.get() >= now
    assert metrics.RETENTION_LONGEST._value.get() == DEFAULT
    assert 99 <= age <= 101
    assert metrics.OLDEST_EVENT_AGE._value.get() == age
    assert size > 0 and metrics.DATABASE_SIZE._value.get() == size


# -- SQLite: the file stops growing ------------------------------------------------------------


async def _steady_ingest(db: Database, rounds: int) -> list[int]:
    """One simulated second per round: 100 events of 4 KB in, then a sweep with a retention of
    5 s. Returns the file's size (with its WAL) after each round."""
    retention = Retention(db, 5, 1)
    sizes = []
    start = time.time()
    for second in range(rounds):
        now = start + second
        await store(db, [record("t", now, size=4096) for _ in range(100)])
        await retention.sweep([], now)
        _, size = await retention.observe(now)  # the file and its WAL
        sizes.append(size)
    return sizes


async def test_the_sqlite_file_stops_growing_and_gives_pages_back(sqlite_db: Database) -> None:
    async with sqlite_db.connect() as conn:
        assert await conn.scalar(text("PRAGMA auto_vacuum")) == 2  # incremental: a new file

    sizes = await _steady_ingest(sqlite_db, 40)

    # About 5 s of events are kept (600 of 4 KB): the file grows for the first seconds, then
    # holds (the WAL starts over after each sweep's checkpoint).
    plateau = max(sizes[10:20])
    assert max(sizes[20:]) <= plateau * 1.1, sizes
    assert sizes[-1] < 20 * 100 * 4096, sizes  # far below 40 s of events
    async with sqlite_db.connect() as conn:
        assert (await conn.scalar(text("PRAGMA freelist_count")) or 0) < 100
        assert (await conn.scalar(select(func.count()).select_from(events)) or 0) <= 700


async def test_an_older_sqlite_file_reuses_its_pages_and_says_how_to_shrink_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # made by a release without auto_vacuum
        old.execute("CREATE TABLE before_us (x INTEGER)")
    db = Database.from_url(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate.upgrade(db)
        async with db.connect() as conn:
            assert await conn.scalar(text("PRAGMA auto_vacuum")) == 0
        with caplog.at_level(logging.WARNING, logger="webhook_worker.storage.vacuum"):
            sizes = await _steady_ingest(db, 30)
    finally:
        await db.close()
    assert max(sizes[20:]) <= max(sizes[10:20]) * 1.1, sizes
    told = [r.getMessage() for r in caplog.records if "auto_vacuum" in r.getMessage()]
    assert len(told) == 1  # once, not every sweep
    assert "PRAGMA auto_vacuum=INCREMENTAL; VACUUM;" in told[0]
