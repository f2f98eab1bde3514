"""The deliveries waiting for a paused destination (status ``paused``): which destinations
have some, and the oldest of one destination, to send again in the order their events were
received when it is resumed (``replay.py`` orchestrates, as for replays)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.storage.schema import deliveries, events
from webhook_worker.vocabulary import DeliveryStatus


async def destinations_with_paused(
    conn: AsyncConnection, parked_before: datetime
) -> list[tuple[str, str]]:
    """(tool id, destination id) of every destination with deliveries recorded ``paused``
    before ``parked_before`` (read from the index of waiting deliveries)."""
    d = deliveries.c
    query = (
        select(d.tool_id, d.destination_id)
        .where(d.status == DeliveryStatus.PAUSED, d.updated_at < parked_before)
        .distinct()
    )
    return [(row.tool_id, row.destination_id) for row in await conn.execute(query)]


async def oldest_paused(
    conn: AsyncConnection,
    tool_id: str,
    destination_id: str,
    limit: int,
    after: tuple[datetime, str] | None,
) -> list[tuple[datetime, str]]:
    """Up to ``limit`` (received at, event id) of the destination's paused deliveries, in the
    order their events were received, after ``after`` (a bulk release walks through them)."""
    d = deliveries.c
    query = (
        select(events.c.received_at, events.c.id)
        .join(events, events.c.id == d.event_id)
        .where(
            d.tool_id == tool_id,
            d.destination_id == destination_id,
            d.status == DeliveryStatus.PAUSED,
        )
        .order_by(events.c.received_at, events.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(tuple_(events.c.received_at, events.c.id) > tuple_(*after))
    return [(row.received_at, row.id) for row in await conn.execute(query)]


async def still_paused(
    conn: AsyncConnection, destination_id: str, event_ids: Sequence[str]
) -> set[str]:
    """Which of ``event_ids`` still have their delivery to ``destination_id`` paused (read
    after locking the events: another release may have taken some meanwhile)."""
    if not event_ids:
        return set()
    d = deliveries.c
    query = select(d.event_id).where(
        d.event_id.in_(list(event_ids)),
        d.destination_id == destination_id,
        d.status == DeliveryStatus.PAUSED,
    )
    return set((await conn.scalars(query)).all())
