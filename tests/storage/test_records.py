"""The records the worker writes: their fields are their tables' columns, in the order the
PostgreSQL ``UNNEST`` insert takes them, and they round-trip through both databases."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import Table, select

from webhook_worker.queue.base import Position
from webhook_worker.queue.positions import encode_ordering
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import resolve_dead_letters, upsert_dead_letters
from webhook_worker.storage.events import (
    _INSERT_EVENTS_UNNEST,
    event_states,
    insert_attempts,
    insert_events,
    update_outcomes,
)
from webhook_worker.storage.records import (
    AttemptRecord,
    DeadLetterRecord,
    EventRecord,
    EventState,
    OutcomeRecord,
)
from webhook_worker.storage.schema import attempts, dead_letters, events
from webhook_worker.vocabulary import AttemptOutcome, DeadLetterStatus, EventStatus

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_the_unnest_insert_takes_the_event_record_fields_in_order() -> None:
    listed = re.search(r"INSERT INTO events \((.*?)\)", _INSERT_EVENTS_UNNEST, re.DOTALL)
    assert listed is not None
    assert tuple(name.strip() for name in listed[1].split(",")) == EventRecord._fields


@pytest.mark.parametrize(
    ("record", "table", "renamed"),
    [
        (EventRecord, events, {}),
        (AttemptRecord, attempts, {}),
        (DeadLetterRecord, dead_letters, {}),
        (OutcomeRecord, events, {"event_id": "id"}),
    ],
)
def test_record_fields_are_columns(record: Any, table: Table, renamed: dict[str, str]) -> None:
    assert {renamed.get(name, name) for name in record._fields} <= set(table.c.keys())


def event(event_id: str, status: EventStatus = EventStatus.PENDING) -> EventRecord:
    return EventRecord(
        id=event_id,
        tool_id="t",
        event_type="push",
        delivery_id=f"d-{event_id}",
        status=status,
        received_at=NOW,
        processed_at=None,
        headers=orjson.Fragment(b'{"content-type":"application/json"}'),
        body=b'{"n":1}',
        payload=None,
        attempt_count=0,
    )


async def test_records_round_trip(db: Database) -> None:
    first, second = "00000000-0000-7000-8000-000000000001", "00000000-0000-7000-8000-000000000002"
    async with db.begin() as conn:
        assert await insert_events(conn, [event(first), event(second)]) == {first, second}
        assert await insert_events(conn, [event(first)]) == set()  # a redelivery: skipped
        assert await event_states(conn, [first, "nope"]) == {
            first: EventState(EventStatus.PENDING, 0, {})
        }
        await update_outcomes(
            conn,
            [
                OutcomeRecord(first, EventStatus.PROCESSED, NOW, 1, {"kept": [1, 2]}),
                OutcomeRecord(second, EventStatus.DEAD, NOW, 1, None),
            ],
        )
        await insert_attempts(
            conn,
            [
                AttemptRecord(
                    first, 1, NOW, 2.5, AttemptOutcome.FORWARDED, None, None, 200, "default"
                ),
                AttemptRecord(
                    second, 1, NOW, 1.0, AttemptOutcome.DEAD, "http_4xx", "no", 400, "default"
                ),
            ],
        )
        letter = DeadLetterRecord(
            id="00000000-0000-7000-8000-0000000000dd",
            event_id=second,
            tool_id="t",
            event_type="push",
            error="no",
            error_class="http_4xx",
            retryable=False,
            retry_count=0,
            status=DeadLetterStatus.PENDING,
            created_at=NOW,
            updated_at=NOW,
            next_retry_at=None,
            destination_id="default",
        )
        await upsert_dead_letters(conn, [letter])
        # The event fails again: its one dead letter is updated, not doubled.
        later = NOW + timedelta(minutes=1)
        again = letter._replace(id="00000000-0000-7000-8000-0000000000ee", updated_at=later)
        await upsert_dead_letters(conn, [again._replace(error="still no")])
        assert (
            await resolve_dead_letters(conn, [(second, "default")], later) == 0
        )  # only retrying ones
        stored = (await conn.execute(select(events).order_by(events.c.id))).mappings().all()
        letters = (await conn.execute(select(dead_letters))).mappings().all()
        tried = (await conn.execute(select(attempts.c.outcome))).scalars().all()
    assert [(e["status"], e["attempt_count"], e["payload"]) for e in stored] == [
        ("processed", 1, {"kept": [1, 2]}),
        ("dead", 1, None),
    ]
    assert stored[0]["headers"] == {"content-type": "application/json"}
    assert bytes(stored[0]["body"]) == b'{"n":1}'
    assert [(d["id"], d["error"]) for d in letters] == [(letter.id, "still no")]
    assert sorted(tried) == ["dead", "forwarded"]


async def test_an_events_ordering_is_stored_as_given(db: Database) -> None:
    ordered, unordered = (
        "00000000-0000-7000-8000-000000000003",
        "00000000-0000-7000-8000-000000000004",
    )
    text = encode_ordering((Position("billing", "c-7", 3), Position("crm", "é", 1)))
    async with db.begin() as conn:
        await insert_events(conn, [event(ordered)._replace(ordering=text), event(unordered)])
        stored = dict((await conn.execute(select(events.c.id, events.c.ordering))).all())
    assert stored == {ordered: text, unordered: None}
