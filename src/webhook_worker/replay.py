"""Sending accepted events through the pipeline again: an event replay, a dead letter retried
by hand (one or in bulk by filter), and the automatic retry of retryable dead letters.

The database is changed first (the event leaves its final status, the dead letter becomes
``retrying``), then the messages are queued; if the queue is unavailable the change is undone,
so nothing is left claiming to be retried that is not. Claiming a dead letter is a conditional
UPDATE, so two operators (or an operator and the automatic retry) never send one twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Select, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.errors import ConflictError, NotFoundError
from webhook_worker.observability import metrics
from webhook_worker.queue.base import Message, Queue
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import (
    DeadLetterFilter,
    dead_letter_view,
)
from webhook_worker.storage.schema import dead_letters, events
from webhook_worker.vocabulary import DeadLetterStatus, EventStatus

BULK_CHUNK = 500


class Replayer:
    def __init__(self, db: Database, queue: Queue) -> None:
        self._db = db
        self._queue = queue

    async def replay_event(self, event_id: str) -> None:
        """Process an event again from its stored body, whatever its status. A dead event's
        dead letter goes along (``retrying``), so it is resolved when the replay succeeds."""
        now = datetime.now(UTC)
        async with self._db.begin() as conn:
            previous = await _mark_retrying(conn, [event_id])
            if not previous:
                raise NotFoundError(f"no event {event_id!r}")
            letters = select(dead_letters.c.id).where(dead_letters.c.event_id == event_id)
            claimed = await _claim(
                conn,
                list((await conn.scalars(letters)).all()),
                (DeadLetterStatus.PENDING,),
                now,
                None,
            )
            messages = await _messages(conn, [event_id])
        await self._send(messages, previous, claimed)

    async def retry_dead_letter(self, dead_letter_id: str) -> dict[str, Any]:
        """Retry one dead letter (pending or discarded). Returns it as it was when sent back
        (status ``retrying``; the worker may have moved it on since)."""
        now = datetime.now(UTC)
        async with self._db.begin() as conn:
            row = (
                await conn.execute(
                    select(dead_letters.c.event_id, dead_letters.c.status).where(
                        dead_letters.c.id == dead_letter_id
                    )
                )
            ).first()
            if row is None:
                raise NotFoundError(f"no dead letter {dead_letter_id!r}")
            claimed = await _claim(
                conn,
                [dead_letter_id],
                (DeadLetterStatus.PENDING, DeadLetterStatus.DISCARDED),
                now,
                None,
            )
            if not claimed:
                raise ConflictError(
                    f"dead letter {dead_letter_id!r} is {row.status}; only pending or discarded "
                    "dead letters can be retried"
                )
            previous = await _mark_retrying(conn, [row.event_id])
            messages = await _messages(conn, [row.event_id])
            query = select(dead_letters).where(dead_letters.c.id == dead_letter_id)
            letter = dead_letter_view(dict((await conn.execute(query)).mappings().one()))
        await self._send(messages, previous, claimed)
        metrics.DLQ_RETRIES.labels("requeued").inc()
        return letter

    async def retry_matching(
        self, where: DeadLetterFilter, limit: int = BULK_CHUNK, before: datetime | None = None
    ) -> int:
        """Retry up to ``limit`` pending dead letters matching ``where``. Returns how many were
        requeued; call again until it returns 0 to work through a large set, passing the same
        ``before`` (when the bulk retry started) so letters that already failed again in this
        run are not sent round a second time."""
        now = datetime.now(UTC)
        query = where.apply(select(dead_letters.c.id)).where(
            dead_letters.c.status == DeadLetterStatus.PENDING
        )
        if before is not None:
            last = dead_letters.c.last_retry_at
            query = query.where(or_(last.is_(None), last < before))
        return await self._retry_selected(
            query.order_by(dead_letters.c.id).limit(limit), now, next_retry_at=None
        )

    async def retry_due(self, max_retries: int, interval: float, limit: int = BULK_CHUNK) -> int:
        """The automatic retry: retryable dead letters whose time came, at most ``max_retries``
        times each. Returns how many were requeued."""
        now = datetime.now(UTC)
        d = dead_letters.c
        query = (
            select(d.id)
            .where(
                d.status == DeadLetterStatus.PENDING,
                d.retryable.is_(True),
                d.retry_count < max_retries,
            )
            .where(d.next_retry_at.is_not(None), d.next_retry_at <= now)
            .order_by(d.next_retry_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return await self._retry_selected(
            query, now, next_retry_at=now + timedelta(seconds=interval)
        )

    async def _retry_selected(
        self, query: Select[str], now: datetime, next_retry_at: datetime | None
    ) -> int:
        """Claim the pending dead letters ``query`` selects (their ids) and requeue their
        events; returns how many were requeued."""
        async with self._db.begin() as conn:
            ids = list((await conn.scalars(query)).all())
            claimed = await _claim(conn, ids, (DeadLetterStatus.PENDING,), now, next_retry_at)
            event_ids = [event_id for _, event_id in claimed]
            previous = await _mark_retrying(conn, event_ids)
            messages = await _messages(conn, event_ids)
        await self._send(messages, previous, claimed)
        metrics.DLQ_RETRIES.labels("requeued").inc(len(messages))
        return len(messages)

    async def _send(
        self,
        messages: list[Message],
        previous: dict[str, str],
        dead_letters_claimed: Sequence[tuple[str, str]],
    ) -> None:
        try:
            await self._queue.requeue(messages)
        except BaseException:
            # Put things back as they were: nothing may claim to be retried that is not.
            async with self._db.begin() as conn:
                await _restore(conn, previous, [dl_id for dl_id, _ in dead_letters_claimed])
            raise


async def _claim(
    conn: AsyncConnection,
    ids: Sequence[str],
    from_statuses: tuple[str, ...],
    now: datetime,
    next_retry_at: datetime | None,
) -> list[tuple[str, str]]:
    """Move dead letters to ``retrying`` if they are still in one of ``from_statuses``.
    Returns ``(dead letter id, event id)`` of those this call claimed."""
    if not ids:
        return []
    result = await conn.execute(
        update(dead_letters)
        .where(dead_letters.c.id.in_(list(ids)), dead_letters.c.status.in_(from_statuses))
        .values(
            status=DeadLetterStatus.RETRYING,
            retry_count=dead_letters.c.retry_count + 1,
            last_retry_at=now,
            updated_at=now,
            next_retry_at=next_retry_at,
        )
        .returning(dead_letters.c.id, dead_letters.c.event_id)
    )
    return [(row.id, row.event_id) for row in result]


async def _mark_retrying(conn: AsyncConnection, event_ids: Sequence[str]) -> dict[str, str]:
    """Set the events to ``retrying``; returns their previous statuses (for an undo)."""
    if not event_ids:
        return {}
    rows = await conn.execute(
        select(events.c.id, events.c.status).where(events.c.id.in_(list(event_ids)))
    )
    previous = {row.id: row.status for row in rows}
    if previous:
        await conn.execute(
            update(events)
            .where(events.c.id.in_(list(previous)))
            .values(status=EventStatus.RETRYING)
        )
    return previous


async def _restore(conn: AsyncConnection, previous: dict[str, str], claimed: list[str]) -> None:
    if previous:
        await conn.execute(
            update(events)
            .where(events.c.id == bindparam("event_id"))
            .values(status=bindparam("previous")),
            [{"event_id": k, "previous": v} for k, v in previous.items()],
        )
    if claimed:
        await conn.execute(
            update(dead_letters)
            .where(dead_letters.c.id.in_(claimed))
            .values(status=DeadLetterStatus.PENDING, retry_count=dead_letters.c.retry_count - 1)
        )


async def _messages(conn: AsyncConnection, event_ids: Sequence[str]) -> list[Message]:
    """Queue messages rebuilt from stored events: a new retry series starting now."""
    if not event_ids:
        return []
    rows = await conn.execute(select(events).where(events.c.id.in_(list(event_ids))))
    now = time.time()
    return [_message(row._mapping, now) for row in rows]


def _message(row: Any, now: float) -> Message:
    received = row["received_at"]
    if received.tzinfo is None:  # SQLite
        received = received.replace(tzinfo=UTC)
    return Message(
        event_id=row["id"],
        tool_id=row["tool_id"],
        event_type=row["event_type"],
        delivery_id=row["delivery_id"],
        received_at=received.timestamp(),
        headers=orjson.dumps(row["headers"]),
        body=bytes(row["body"]),
        attempt=0,
        retry_from=now,
    )
