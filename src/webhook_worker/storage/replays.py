"""The database side of sending accepted events round again (``replay.py`` orchestrates):
choosing dead letters to retry, claiming them, marking their events ``retrying``, rebuilding
queue messages from the stored events, and undoing the claim when the queue cannot take them.

Every function runs on the caller's connection, inside the caller's transaction: a claim and
the messages built from it commit together or not at all. A transaction locks the events
first (:func:`~webhook_worker.storage.deliveries.lock_events`, as the worker does) and only then
claims dead letters and changes deliveries, so it never deadlocks with the worker.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import NamedTuple

import orjson
from sqlalchemy import RowMapping, bindparam, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.queue.base import Message
from webhook_worker.queue.positions import decode_ordering
from webhook_worker.storage.deadletters import DeadLetterFilter
from webhook_worker.storage.deliveries import lock_events
from webhook_worker.storage.events import EventFilter
from webhook_worker.storage.rows import utc
from webhook_worker.storage.schema import dead_letters, deliveries, events
from webhook_worker.vocabulary import DeadLetterStatus, DeliveryStatus, EventStatus


class Claimed(NamedTuple):
    """A dead letter this call moved to ``retrying``, its event and its destination (None for
    the event's own failure)."""

    dead_letter_id: str
    event_id: str
    destination_id: str | None = None


class Previous(NamedTuple):
    """What a replay changed, to put back if the queue cannot take the messages."""

    events: dict[str, EventStatus]
    deliveries: dict[tuple[str, str], DeliveryStatus]


async def events_matching(
    conn: AsyncConnection, where: EventFilter, limit: int, after: str | None
) -> list[str]:
    """Up to ``limit`` ids of events matching ``where``, oldest first, after the id ``after``
    (ids grow with time: a bulk replay walks through them in chunks)."""
    query = where.apply(select(events.c.id))
    if after is not None:
        query = query.where(events.c.id > after)
    return list((await conn.scalars(query.order_by(events.c.id).limit(limit))).all())


async def pending_dead_letters_of(
    conn: AsyncConnection, event_ids: Sequence[str], destination_id: str | None
) -> list[str]:
    """The pending dead letters of ``event_ids`` (of their delivery to ``destination_id``
    only, when given)."""
    query = select(dead_letters.c.id).where(
        dead_letters.c.event_id.in_(list(event_ids)),
        dead_letters.c.status == DeadLetterStatus.PENDING,
    )
    if destination_id is not None:
        query = query.where(dead_letters.c.destination_id == destination_id)
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
    ``max_retries`` times, soonest first. Not locked: two workers running the automatic retry
    may choose the same ones, and the conditional :func:`claim` gives each to one of them."""
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
    )
    return list((await conn.scalars(query)).all())


async def events_of(conn: AsyncConnection, dead_letter_ids: Sequence[str]) -> list[str]:
    """The events of these dead letters (to lock them before claiming the letters)."""
    if not dead_letter_ids:
        return []
    query = select(dead_letters.c.event_id).where(dead_letters.c.id.in_(list(dead_letter_ids)))
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
        .returning(dead_letters.c.id, dead_letters.c.event_id, dead_letters.c.destination_id)
    )
    return [Claimed(row.id, row.event_id, row.destination_id or None) for row in result]


async def mark_retrying(
    conn: AsyncConnection, targets: Sequence[tuple[str, str | None]]
) -> Previous:
    """Send deliveries round again: each target is (event id, destination id), the destination
    None for all of the event's. Their events become ``retrying`` and the deliveries recorded
    ``pending`` again (so the worker decides them anew: a destination's filter is evaluated
    again, an ``ignored`` delivery may now be sent). Returns what was there before, for
    :func:`undo`."""
    before = await lock_events(conn, (event_id for event_id, _ in targets))
    if not before:
        return Previous({}, {})
    await conn.execute(
        update(events).where(events.c.id.in_(list(before))).values(status=EventStatus.RETRYING)
    )
    whole = [event_id for event_id, destination in targets if destination is None]
    single = [(event_id, dest) for event_id, dest in targets if dest is not None]
    d = deliveries.c
    chosen = []
    if whole:
        chosen.append(d.event_id.in_(whole))
    if single:
        chosen.append(tuple_(d.event_id, d.destination_id).in_(single))
    sent_before: dict[tuple[str, str], DeliveryStatus] = {}
    if chosen:
        found = await conn.execute(
            select(d.event_id, d.destination_id, d.status).where(or_(*chosen))
        )
        sent_before = {
            (row.event_id, row.destination_id): DeliveryStatus(row.status) for row in found
        }
        await conn.execute(
            update(deliveries)
            .where(or_(*chosen))
            .values(status=DeliveryStatus.PENDING, next_attempt_at=None)
        )
    return Previous(before, sent_before)


async def undo(conn: AsyncConnection, previous: Previous, claimed: Sequence[Claimed]) -> None:
    """Put back what :func:`mark_retrying` and :func:`claim` changed: the events' and their
    deliveries' statuses, and the dead letters ``pending`` with the retry not counted."""
    if previous.events:
        await conn.execute(
            update(events)
            .where(events.c.id == bindparam("event_id"))
            .values(status=bindparam("previous")),
            [{"event_id": k, "previous": v} for k, v in previous.events.items()],
        )
    if previous.deliveries:
        d = deliveries.c
        await conn.execute(
            update(deliveries)
            .where(d.event_id == bindparam("key_event"), d.destination_id == bindparam("key_dest"))
            .values(status=bindparam("previous")),
            [
                {"key_event": event_id, "key_dest": destination_id, "previous": status}
                for (event_id, destination_id), status in previous.deliveries.items()
            ],
        )
    if claimed:
        await conn.execute(
            update(dead_letters)
            .where(dead_letters.c.id.in_([c.dead_letter_id for c in claimed]))
            .values(status=DeadLetterStatus.PENDING, retry_count=dead_letters.c.retry_count - 1)
        )


async def messages(
    conn: AsyncConnection, targets: Sequence[tuple[str, str | None]]
) -> list[Message]:
    """Queue messages rebuilt from the stored events, one per target (event id, destination
    id or None for the whole event): a new retry series starting now, with the event's
    ordering positions as stored (never new ones)."""
    if not targets:
        return []
    event_ids = list(dict.fromkeys(event_id for event_id, _ in targets))
    rows = await conn.execute(select(events).where(events.c.id.in_(event_ids)))
    now = time.time()
    stored = {row.id: _message(row._mapping, now) for row in rows}
    return [
        replace(stored[event_id], destination_id=destination_id)
        for event_id, destination_id in dict.fromkeys(targets)
        if event_id in stored
    ]


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
        # The positions given when the event was accepted: sent again, it keeps its place.
        ordering=decode_ordering(row["ordering"]),
    )
