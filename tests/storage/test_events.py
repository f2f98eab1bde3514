"""The read side of events: typed rows, keyset pages and filters, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest

from tests.storage.support import BASE_TIME, event_id, event_record, seed
from webhook_worker.errors import NotFoundError
from webhook_worker.storage.database import Database
from webhook_worker.storage.events import EventFilter, EventStore
from webhook_worker.storage.rows import AttemptRow
from webhook_worker.vocabulary import EventStatus


async def test_an_event_is_a_typed_row_with_its_attempts_in_order(db: Database) -> None:
    started = BASE_TIME + timedelta(minutes=1, seconds=1)
    attempt = {
        "event_id": event_id(1),
        "error_class": "http_5xx",
        "error": "forward answered 503",
        "http_status": 503,
        "duration_ms": 12.3456,
        "outcome": "failed",
    }
    await seed(
        db,
        [event_record(1, payload={"summary": 1}, status="processed", attempt_count=2)],
        [  # written out of order: the row lists them by attempt number
            {**attempt, "attempt": 2, "started_at": started + timedelta(seconds=2)},
            {**attempt, "attempt": 1, "started_at": started},
        ],
    )
    event = await EventStore(db).get(event_id(1))
    assert event.status is EventStatus.PROCESSED
    assert event.received_at == BASE_TIME + timedelta(minutes=1)
    assert event.received_at.tzinfo is UTC  # SQLite hands back naive times
    assert event.body == b'{"n": 1}'
    assert event.payload == {"summary": 1}
    assert event.headers == {"content-type": "application/json", "x-event": "push"}
    assert event.attempts == (
        AttemptRow(1, started, 12.3456, "failed", "http_5xx", "forward answered 503", 503),
        AttemptRow(
            2,
            started + timedelta(seconds=2),
            12.3456,
            "failed",
            "http_5xx",
            "forward answered 503",
            503,
        ),
    )
    assert all(a.started_at.tzinfo is UTC for a in event.attempts)


async def test_a_missing_event_is_not_found(db: Database) -> None:
    with pytest.raises(NotFoundError, match="no event"):
        await EventStore(db).get(event_id(9))


async def test_pages_are_newest_first_and_continue_after_their_last_id(db: Database) -> None:
    await seed(db, [event_record(i) for i in range(5)])
    store = EventStore(db)
    first = await store.list(EventFilter(), limit=2)
    assert [e.id for e in first.items] == [event_id(4), event_id(3)]
    assert first.after == event_id(3)
    second = await store.list(EventFilter(), limit=2, after=first.after)
    assert [e.id for e in second.items] == [event_id(2), event_id(1)]
    last = await store.list(EventFilter(), limit=2, after=second.after)
    assert [e.id for e in last.items] == [event_id(0)]
    assert last.after is None
    exact = await store.list(EventFilter(), limit=5)
    assert len(exact.items) == 5 and exact.after is None


async def test_list_and_count_apply_every_filter(db: Database) -> None:
    await seed(
        db,
        [
            event_record(0),
            event_record(1, tool_id="other"),
            event_record(2, event_type="issues"),
            event_record(3, status="processed"),
            event_record(4, event_type=None),
        ],
    )
    store = EventStore(db)
    cases = [
        (EventFilter(tool_id="other"), [1]),
        (EventFilter(event_type="issues"), [2]),
        (EventFilter(status=EventStatus.PROCESSED), [3]),
        (EventFilter(since=BASE_TIME + timedelta(minutes=3)), [4, 3]),
        (EventFilter(until=BASE_TIME + timedelta(minutes=2)), [1, 0]),
        (EventFilter(tool_id="demo", event_type="push", status=EventStatus.DEAD), [0]),
        (EventFilter(), [4, 3, 2, 1, 0]),
    ]
    for where, expected in cases:
        page = await store.list(where)
        assert [e.id for e in page.items] == [event_id(i) for i in expected], where
        assert await store.count(where) == len(expected), where
    assert await store.count() == 5
