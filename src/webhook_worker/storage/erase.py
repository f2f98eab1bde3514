"""Deleting events with everything stored about them: the one place that knows every copy.

An event's rows are its own (``events``), its attempts, its deliveries, its dead letters and, on
PostgreSQL, its delivery id key (``event_keys``). The retention sweep (storage/retention.py) and
purge (``DELETE /api/v1/events``) both delete through :func:`delete_events`, in chunks, one
transaction per chunk, so that a writer never waits long behind them.

What holds a copy elsewhere (the ingest de-duplication key in Redis or ``delivery_ids``, a message
still in the queue, logs, backups) is the caller's business: docs/operations.md lists it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    replay_keys: list[tuple[str, str]] = field(default_factory=list)
    """The ``(tool_id, replay key)`` ingest may have remembered for each deleted event's body,
    when :func:`delete_events` was given ``replay_keys``."""

    def add(self, other: Deleted) -> None:
        self.events += other.events
        self.bytes += other.bytes
        self.keys.extend(other.keys)
        self.replay_keys.extend(other.replay_keys)


ReplayKeys = Callable[[str, bytes], Sequence[str]]
"""``(tool_id, body)`` -> the replay keys ingest may have remembered for it (see
auth.base.SignsBodyAlone): for an erasure to reach the copies of a signed body."""


_SIZE = (
    func.length(events.c.body)
    + func.length(cast(events.c.headers, Text))
    + func.coalesce(func.length(cast(events.c.payload, Text)), 0)
)


async def delete_events(
    conn: AsyncConnection, event_ids: Sequence[str], replay_keys: ReplayKeys | None = None
) -> Deleted:
    """Delete these events and every row about them, in the caller's transaction. With
    ``replay_keys``, the bodies are read first to tell each event's replay keys."""
    if not event_ids:
        return Deleted()
    ids = list(event_ids)
    columns = [events.c.tool_id, events.c.delivery_id, _SIZE.label("size")]
    if replay_keys is not None:
        columns.append(events.c.body)
    rows = (await conn.execute(select(*columns).where(events.c.id.in_(ids)))).all()
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
    replayed = []
    if replay_keys is not None:
        replayed = [
            (row.tool_id, key) for row in rows for key in replay_keys(row.tool_id, bytes(row.body))
        ]
    return Deleted(len(rows), sum(int(row.size or 0) for row in rows), keys, replayed)
