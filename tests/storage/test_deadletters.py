"""The read side of dead letters, and discarding one, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest

from tests.storage.support import BASE_TIME, event_record, letter_id, letter_record, seed
from webhook_worker.errors import NotFoundError
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import DeadLetterFilter, DeadLetterStore
from webhook_worker.vocabulary import DeadLetterStatus


async def test_a_dead_letter_is_a_typed_row(db: Database) -> None:
    retry_at = BASE_TIME + timedelta(hours=1)
    await seed(db, [event_record(1)], letter_records=[letter_record(1, next_retry_at=retry_at)])
    letter = await DeadLetterStore(db).get(letter_id(1))
    assert letter.status is DeadLetterStatus.PENDING
    assert (letter.error_class, letter.retryable, letter.retry_count) == ("http_4xx", False, 0)
    assert letter.created_at == BASE_TIME + timedelta(minutes=1, seconds=2)
    assert letter.next_retry_at == retry_at
    assert letter.created_at.tzinfo is UTC and letter.last_retry_at is None


async def test_pages_filters_and_counts(db: Database) -> None:
    await seed(
        db,
        [event_record(i) for i in range(4)],
        letter_records=[
            letter_record(0),
            letter_record(1, status="discarded"),
            letter_record(2, tool_id="other"),
            letter_record(3, error_class="timeout", retryable=True),
        ],
    )
    store = DeadLetterStore(db)
    first = await store.list(DeadLetterFilter(), limit=3)
    assert [d.id for d in first.items] == [letter_id(3), letter_id(2), letter_id(1)]
    rest = await store.list(DeadLetterFilter(), limit=3, after=first.after)
    assert ([d.id for d in rest.items], rest.after) == ([letter_id(0)], None)
    pending = DeadLetterFilter(status=DeadLetterStatus.PENDING, tool_id="demo")
    assert [d.id for d in (await store.list(pending)).items] == [letter_id(3), letter_id(0)]
    assert await store.count(pending) == 2
    assert await store.count(DeadLetterFilter(error_class="timeout")) == 1


async def test_discard_returns_the_discarded_dead_letter(db: Database) -> None:
    retry_at = BASE_TIME + timedelta(hours=1)
    await seed(db, [event_record(1)], letter_records=[letter_record(1, next_retry_at=retry_at)])
    store = DeadLetterStore(db)
    discarded = await store.discard(letter_id(1))
    assert discarded.status is DeadLetterStatus.DISCARDED
    assert discarded.next_retry_at is None
    assert await store.get(letter_id(1)) == discarded
    with pytest.raises(NotFoundError, match="no dead letter"):
        await store.discard(letter_id(2))
