"""Deleting events with everything stored about them: the one place that knows every copy.

An event's rows are its own (``events``), its attempts, its deliveries, its dead letters and, on
PostgreSQL, its delivery id key (``event_keys``). The retention sweep (storage/retention.py) and
purge (``DELETE /api/v1/events``) both delete through :func:`delete_events`, in chunks, one
transaction per chunk, so that a writer never waits long behind them.

What holds a copy elsewhere (the ingest de-duplication key in Redis or ``delivery_ids``, a message
still in the queue, logs, backups) is the caller's business: docs/operations.md lists it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Text, cast, delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.storage.schema import attempts, dead_letters, deliveries, event_keys, events

CHUNK = 500
"""Events deleted per transaction: bounded, so ingest's writes never queue long behind one."""


@dataclass(slots=True)
class Deleted:
    """What a deletion removed."""

    events: int = 0
    bytes: int = 0
    """The stored size of the events' bodies, headers and payloads (the bulk of what they take)."""
    keys: list[tuple[str, str]] = field(default_factory=list)
    """The ``(tool_id, delivery_id)`` of each deleted event."""

    def add(self, other: Deleted) -> None:
        self.events += other.events
        self.bytes += other.bytes
        self.keys.extend(other.keys)


_SIZE = (
    func.length(events.c.body)
    + func.length(cast(events.c.headers, Text))
    + func.coalesce(func.length(cast(events.c.payload, Text)), 0)
)


async def delete_events(conn: AsyncConnection, event_ids: Sequence[str]) -> Deleted:
    """Delete these events and every row about them, in the caller's transaction."""
    if not event_ids:
        return Deleted()
    ids = list(event_ids)
    rows = (
        await conn.execute(
            select(events.c.tool_id, events.c.delivery_id, _SIZE.label("size")).where(
                events.c.id.in_(ids)
            )
        )
    ).all()
    if not rows:
        return Deleted()
    await conn.execute(delete(attempts).where(attempts.c.event_id.in_(ids)))
    await conn.execute(delete(deliveries).where(deliveries.c.event_id.in_(ids)))
    await conn.execute(delete(dead_letters).where(dead_letters.c.event_id.in_(ids)))
    keys = [(row.tool_id, row.delivery_id) for row in rows]
    if conn.dialect.name == "postgresql":
        await conn.execute(
            delete(event_keys).where(
                tuple_(event_keys.c.tool_id, event_keys.c.delivery_id).in_(keys)
            )
        )
    await conn.execute(delete(events).where(events.c.id.in_(ids)))
    return Deleted(len(rows), sum(int(row.size or 0) for row in rows), keys)
