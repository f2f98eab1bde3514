"""The database side of replays and dead-letter retries, on SQLite and PostgreSQL: claims are
conditional, the undo puts everything back, and messages are rebuilt from the stored events."""

from __future__ import annotations

import time
from datetime import timedelta

import orjson

from tests.storage.support import BASE_TIME, event_id, event_record, letter_id, letter_record, seed
from webhook_worker.queue.base import Position
from webhook_worker.queue.positions import encode_ordering
from webhook_worker.storage import replays
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import DeadLetterFilter, DeadLetterStore
from webhook_worker.storage.events import EventStore
from webhook_worker.storage.replays import Claimed
from webhook_worker.vocabulary import DeadLetterStatus, EventStatus

NOW = BASE_TIME + timedelta(days=1)
PENDING = (DeadLetterStatus.PENDING,)


async def test_a_dead_letter_is_claimed_once(db: Database) -> None:
    await seed(db, [event_record(1)], letter_records=[letter_record(1)])
    async with db.begin() as conn:
        first = await replays.claim(conn, [letter_id(1)], PENDING, NOW, None)
        second = await replays.claim(conn, [letter_id(1)], PENDING, NOW, None)
    assert first == [Claimed(letter_id(1), event_id(1))]
    assert second == []
    letter = await DeadLetterStore(db).get(letter_id(1))
    assert (letter.status, letter.retry_count, letter.last_retry_at) == (
        DeadLetterStatus.RETRYING,
        1,
        NOW,
    )


async def test_a_claim_takes_only_the_statuses_it_names(db: Database) -> None:
    await seed(db, [event_record(1)], letter_records=[letter_record(1, status="discarded")])
    async with db.begin() as conn:
        assert await replays.claim(conn, [letter_id(1)], PENDING, NOW, None) == []
        both = (DeadLetterStatus.PENDING, DeadLetterStatus.DISCARDED)
        assert await replays.claim(conn, [letter_id(1)], both, NOW, None) != []


async def test_undo_puts_events_and_dead_letters_back(db: Database) -> None:
    await seed(
        db,
        [event_record(1), event_record(2, status="processed")],
        letter_records=[letter_record(1, retry_count=2)],
    )
    async with db.begin() as conn:
        claimed = await replays.claim(conn, [letter_id(1)], PENDING, NOW, None)
        previous = await replays.mark_retrying(
            conn, [(event_id(1), None), (event_id(2), None), (event_id(3), None)]
        )
    assert previous.events == {event_id(1): EventStatus.DEAD, event_id(2): EventStatus.PROCESSED}
    events = EventStore(db)
    assert (await events.get(event_id(2))).status is EventStatus.RETRYING

    async with db.begin() as conn:
        await replays.undo(conn, previous, claimed)
    assert (await events.get(event_id(1))).status is EventStatus.DEAD
    assert (await events.get(event_id(2))).status is EventStatus.PROCESSED
    letter = await DeadLetterStore(db).get(letter_id(1))
    assert (letter.status, letter.retry_count) == (DeadLetterStatus.PENDING, 2)


async def test_messages_are_rebuilt_from_the_stored_events(db: Database) -> None:
    record = event_record(1, body=b"\xff not json", event_type=None)
    await seed(db, [record])
    before = time.time()
    async with db.begin() as conn:
        [message] = await replays.messages(conn, [(event_id(1), None), (event_id(2), None)])
    assert message.event_id == event_id(1)
    assert (message.tool_id, message.event_type, message.delivery_id) == (
        "demo",
        None,
        "delivery-1",
    )
    assert message.body == b"\xff not json"
    assert orjson.loads(message.headers) == record["headers"]
    assert message.received_at == record["received_at"].timestamp()
    assert message.attempt == 0
    assert message.retry_from is not None and message.retry_from >= before


async def test_rebuilt_messages_keep_the_events_ordering(db: Database) -> None:
    positions = (Position("billing", "c-7", 4), Position("crm", "eu", 9))
    stored = [event_record(1, ordering=encode_ordering(positions)), event_record(2, ordering=None)]
    await seed(db, stored)
    async with db.begin() as conn:
        rebuilt = await replays.messages(
            conn, [(event_id(1), None), (event_id(1), "crm"), (event_id(2), None)]
        )
    assert [(m.event_id, m.destination_id, m.ordering) for m in rebuilt] == [
        (event_id(1), None, positions),
        (event_id(1), "crm", positions),
        (event_id(2), None, ()),
    ]


async def test_pending_matching_skips_what_was_retried_since_the_run_began(db: Database) -> None:
    await seed(
        db,
        [event_record(i) for i in range(4)],
        letter_records=[
            letter_record(0),
            letter_record(1, last_retry_at=NOW),  # failed again during this run
            letter_record(2, tool_id="other"),
            letter_record(3, status="resolved"),
        ],
    )
    async with db.connect() as conn:
        everything = await replays.pending_matching(conn, DeadLetterFilter(), 10, None)
        this_run = await replays.pending_matching(conn, DeadLetterFilter(), 10, NOW)
        one = await replays.pending_matching(conn, DeadLetterFilter(), 1, None)
        demo = await replays.pending_matching(conn, DeadLetterFilter(tool_id="demo"), 10, None)
    assert everything == [letter_id(0), letter_id(1), letter_id(2)]  # oldest first
    assert this_run == [letter_id(0), letter_id(2)]
    assert one == [letter_id(0)]
    assert demo == [letter_id(0), letter_id(1)]


async def test_due_takes_retryable_pending_dead_letters_whose_time_came(db: Database) -> None:
    soon, later = NOW - timedelta(seconds=1), NOW + timedelta(seconds=1)
    retryable = {"retryable": True, "error_class": "timeout"}
    await seed(
        db,
        [event_record(i) for i in range(6)],
        letter_records=[
            letter_record(0, **retryable, next_retry_at=soon),
            letter_record(1, **retryable, next_retry_at=later),  # not yet
            letter_record(2, next_retry_at=soon),  # not retryable
            letter_record(3, **retryable, next_retry_at=soon, retry_count=3),  # at the cap
            letter_record(4, **retryable, next_retry_at=soon, status="discarded"),
            letter_record(5, **retryable, next_retry_at=soon - timedelta(seconds=1)),
        ],
    )
    async with db.begin() as conn:
        assert await replays.due(conn, 3, NOW, 10) == [letter_id(5), letter_id(0)]
        assert await replays.due(conn, 3, NOW, 1) == [letter_id(5)]
