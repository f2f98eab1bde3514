"""The database side of sending accepted events round again (``replay.py`` orchestrates):
choosing dead letters to retry, claiming them, marking their events ``retrying``, rebuilding
queue messages from the stored events, and undoing the claim when the queue cannot take them.

Every function runs on the caller's connection, inside the caller's transaction: a claim and
the messages built from it commit together or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import orjson
from sqlalchemy import RowMapping, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.queue.base import Message
from webhook_worker.storage.deadletters import DeadLetterFilter
from webhook_worker.storage.rows import utc
from webhook_worker.storage.schema import dead_letters, events
from webhook_worker.vocabulary import DeadLetterStatus, EventStatus


class Claimed(NamedTuple):
    """A dead letter this call moved to ``retrying``, and its event."""

    dead_letter_id: str
    event_id: str


async def dead_letters_of(conn: AsyncConnection, event_id: str) -> list[str]:
    """The ids of the event's dead letters (at most one: one dead letter per event)."""
    query = select(dead_letters.c.id).where(dead_letters.c.event_id == event_id)
    return list((await conn.scalars(query)).all())


async def pending_matching(
    conn: AsyncConnection, where: DeadLetterFilter, limit: int, before: datetime | None
) -> list[str]:
    """Up to ``limit`` pending dead letters matching ``where``, oldest first; with ``before``,
    only those not retried since then."""
    query = where.apply(select(dead_letters.c.id)).where(
        dead_letters.c.status == DeadLetterStatus.PENDING
    )
    if before is not None:
        last = dead_letters.c.last_retry_at
        query = query.where(or_(last.is_(None), last < before))
    return list((await conn.scalars(query.order_by(dead_letters.c.id).limit(limit))).all())


async def due(conn: AsyncConnection, max_retries: int, now: datetime, limit: int) -> list[str]:
    """Retryable pending dead letters whose automatic retry is due, retried fewer than
    ``max_retries`` times, soonest first. Rows another transaction holds are skipped, so two
    workers running the automatic retry take different ones."""
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
    return list((await conn.scalars(query)).all())


async def claim(
    conn: AsyncConnection,
    ids: Sequence[str],
    from_statuses: Sequence[DeadLetterStatus],
    now: datetime,
    next_retry_at: datetime | None,
) -> list[Claimed]:
    """Move dead letters to ``retrying`` if they are still in one of ``from_statuses``: a
    conditional UPDATE, so of two callers claiming the same dead letter only one gets it.
    Returns those this call claimed."""
    if not ids:
        return []
    result = await conn.execute(
        update(dead_letters)
        .where(dead_letters.c.id.in_(list(ids)), dead_letters.c.status.in_(list(from_statuses)))
        .values(
            status=DeadLetterStatus.RETRYING,
            retry_count=dead_letters.c.retry_count + 1,
            last_retry_at=now,
            updated_at=now,
            next_retry_at=next_retry_at,
        )
        .returning(dead_letters.c.id, dead_letters.c.event_id)
    )
    return [Claimed(row.id, row.event_id) for row in result]


async def mark_retrying(conn: AsyncConnection, event_ids: Sequence[str]) -> dict[str, EventStatus]:
    """Set the events to ``retrying``; returns their previous statuses (for :func:`undo`)."""
    if not event_ids:
        return {}
    rows = await conn.execute(
        select(events.c.id, events.c.status).where(events.c.id.in_(list(event_ids)))
    )
    previous = {row.id: EventStatus(row.status) for row in rows}
    if previous:
        await conn.execute(
            update(events)
            .where(events.c.id.in_(list(previous)))
            .values(status=EventStatus.RETRYING)
        )
    return previous


async def undo(
    conn: AsyncConnection, previous: dict[str, EventStatus], claimed: Sequence[Claimed]
) -> None:
    """Put back what :func:`mark_retrying` and :func:`claim` changed: the events' statuses,
    and the dead letters ``pending`` with the retry not counted."""
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
            .where(dead_letters.c.id.in_([c.dead_letter_id for c in claimed]))
            .values(status=DeadLetterStatus.PENDING, retry_count=dead_letters.c.retry_count - 1)
        )


async def messages(conn: AsyncConnection, event_ids: Sequence[str]) -> list[Message]:
    """Queue messages rebuilt from the stored events: a new retry series starting now."""
    if not event_ids:
        return []
    rows = await conn.execute(select(events).where(events.c.id.in_(list(event_ids))))
    now = time.time()
    return [_message(row._mapping, now) for row in rows]


def _message(row: RowMapping, now: float) -> Message:
    return Message(
        event_id=row["id"],
        tool_id=row["tool_id"],
        event_type=row["event_type"],
        delivery_id=row["delivery_id"],
        received_at=utc(row["received_at"]).timestamp(),
        headers=orjson.dumps(row["headers"]),
        body=bytes(row["body"]),
        attempt=0,
        retry_from=now,
    )
