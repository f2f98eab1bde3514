"""storage/purge.py on SQLite and PostgreSQL: what a filter matches goes with every row about it,
in chunks; the dry-run count is what the real run deletes; events arriving meanwhile stay."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.storage.support import BASE_TIME, event_id, letter_record
from webhook_worker.errors import BadRequestError
from webhook_worker.storage import purge
from webhook_worker.storage.database import Database
from webhook_worker.storage.erase import CHUNK, Deleted
from webhook_worker.storage.events import EventFilter, insert_events
from webhook_worker.storage.records import EventRecord
from webhook_worker.storage.schema import attempts, dead_letters, deliveries, event_keys, events
from webhook_worker.vocabulary import EventStatus


def record(index: int, tool_id: str = "demo", **fields: Any) -> EventRecord:
    received = BASE_TIME + timedelta(minutes=index)  # when event_id(index) was made
    values: dict[str, Any] = {
        "id": event_id(index),
        "tool_id": tool_id,
        "event_type": "push",
        "delivery_id": f"delivery-{index}",
        "status": EventStatus.DEAD,
        "received_at": received,
        "processed_at": received,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"n": index}).encode(),
        "payload": None,
        "attempt_count": 1,
        **fields,
    }
    return EventRecord(**values)


async def store(db: Database, records: list[EventRecord], *, with_rows: bool = False) -> None:
    """Insert the events as the worker does (on PostgreSQL with their delivery id key); with
    ``with_rows``, an attempt, a delivery and a dead letter for each."""
    async with db.begin() as conn:
        inserted = await insert_events(conn, records)
        assert inserted == {r.id for r in records}
        if not with_rows:
            return
        indexes = [int(r.id.rsplit("-", 1)[1]) for r in records]
        await conn.execute(
            attempts.insert(),
            [
                {
                    "event_id": r.id,
                    "attempt": 1,
                    "started_at": r.received_at,
                    "duration_ms": 1.0,
                    "outcome": "dead",
                    "destination_id": "ci",
                }
                for r in records
            ],
        )
        await conn.execute(
            deliveries.insert(),
            [
                {
                    "event_id": r.id,
                    "destination_id": "ci",
                    "tool_id": r.tool_id,
                    "status": "dead",
                    "attempt_count": 1,
                    "updated_at": r.received_at,
                }
                for r in records
            ],
        )
        await conn.execute(
            dead_letters.insert(),
            [letter_record(i, tool_id=r.tool_id) for i, r in zip(indexes, records, strict=True)],
        )


async def rows(db: Database, table: Any) -> int:
    async with db.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def remaining_ids(db: Database) -> set[str]:
    async with db.connect() as conn:
        return set(await conn.scalars(select(events.c.id)))


async def test_purge_deletes_what_matches_with_every_row_about_it(db: Database) -> None:
    await store(db, [record(i) for i in range(3)] + [record(3, "other")], with_rows=True)
    where = EventFilter(tool_id="demo")
    assert await purge.count(db, where) == 3

    chunks: list[Deleted] = []

    async def seen(chunk: Deleted) -> None:
        chunks.append(chunk)

    deleted = await purge.purge(db, where, seen)

    assert deleted.events == 3
    assert deleted.bytes > 0
    assert sorted(key for chunk in chunks for key in chunk.keys) == [
        ("demo", f"delivery-{i}") for i in range(3)
    ]
    assert await remaining_ids(db) == {event_id(3)}
    for table in (attempts, deliveries, dead_letters):
        assert await rows(db, table) == 1, table.name
    if db.dialect == "postgresql":
        assert await rows(db, event_keys) == 1
    assert await purge.count(db, where) == 0
    assert (await purge.purge(db, where)).events == 0


async def test_dry_run_count_equals_the_real_run_across_chunks(db: Database) -> None:
    total = 2 * CHUNK + 7
    await store(db, [record(i, status=EventStatus.PROCESSED) for i in range(total)])
    await store(db, [record(total + i, status=EventStatus.DEAD) for i in range(5)])
    where = EventFilter(
        tool_id="demo", status=EventStatus.PROCESSED, until=BASE_TIME + timedelta(minutes=total)
    )
    counted = await purge.count(db, where)
    sizes: list[int] = []

    async def seen(chunk: Deleted) -> None:
        sizes.append(chunk.events)

    deleted = await purge.purge(db, where, seen)

    assert counted == deleted.events == total
    assert sizes == [CHUNK, CHUNK, 7]
    assert len(await remaining_ids(db)) == 5


async def test_events_arriving_during_a_purge_are_left_alone(db: Database) -> None:
    await store(db, [record(i) for i in range(CHUNK + 1)])
    arrivals = iter(range(10_000, 10_000 + 3 * CHUNK, CHUNK))

    async def more_arrive(chunk: Deleted) -> None:
        # A tool that keeps sending: a chunk's worth of new matching events after every chunk.
        start = next(arrivals)
        await store(db, [record(start + i) for i in range(CHUNK)])

    deleted = await purge.purge(db, EventFilter(tool_id="demo"), more_arrive)

    assert deleted.events == CHUNK + 1
    assert len(await remaining_ids(db)) == 2 * CHUNK  # the purge stopped at the newest matching id


async def test_a_purged_delivery_id_can_be_stored_again(db: Database) -> None:
    await store(db, [record(1, delivery_id="gdpr")], with_rows=True)
    assert (await purge.purge(db, EventFilter(tool_id="demo", delivery_id="gdpr"))).events == 1

    again = record(2, delivery_id="gdpr")
    async with db.begin() as conn:
        assert await insert_events(conn, [again]) == {again.id}
    assert await remaining_ids(db) == {again.id}


async def test_time_and_type_filters_bound_the_purge(db: Database) -> None:
    await store(db, [record(i, event_type="push" if i % 2 else "ping") for i in range(10)])
    where = EventFilter(
        event_type="push",
        since=BASE_TIME + timedelta(minutes=2),
        until=BASE_TIME + timedelta(minutes=8),
    )
    assert await purge.count(db, where) == 3  # 3, 5 and 7
    assert (await purge.purge(db, where)).events == 3
    assert await remaining_ids(db) == {event_id(i) for i in (0, 1, 2, 4, 6, 8, 9)}


async def test_a_filter_that_is_not_applied_is_refused_not_ignored(db: Database) -> None:
    @dataclass(frozen=True, slots=True)
    class Wider(EventFilter):
        colour: str | None = None  # a field apply() knows nothing of

    await store(db, [record(i) for i in range(3)])
    for where in (Wider(tool_id="demo", colour="red"), Wider(colour="red")):
        with pytest.raises(BadRequestError, match="colour: this filter cannot be used"):
            await purge.count(db, where)
        with pytest.raises(BadRequestError, match="colour: this filter cannot be used"):
            await purge.purge(db, where)
    assert len(await remaining_ids(db)) == 3


async def test_a_purge_by_body_text_deletes_only_what_contains_it(db: Database) -> None:
    await store(db, [record(i, body=b'{"customer": "cus_%d"}' % (i % 2)) for i in range(6)])
    where = EventFilter(search='"cus_1"')
    assert await purge.count(db, where) == 3
    assert (await purge.purge(db, where)).events == 3
    assert await remaining_ids(db) == {event_id(i) for i in (0, 2, 4)}
