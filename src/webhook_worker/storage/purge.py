"""Purge: delete every event a filter matches, with everything stored about it.

Behind ``DELETE /api/v1/events`` and ``webhook-worker events purge``. The events go in chunks of
:data:`~webhook_worker.storage.erase.CHUNK`, one transaction each (through
:func:`~webhook_worker.storage.erase.delete_events`), so ingest and the workers never wait long
behind a purge of millions. The chunks walk the ids upwards (keyset) and stop at the newest id
that matched when the purge began: events that arrive during the purge are not deleted, and a
purge ends even while a tool keeps sending.

:func:`count` counts what :func:`purge` would delete on the same data (the dry run). What the
database does not hold (the queue's de-duplication keys) is the caller's: ``progress`` gets each
chunk's :class:`~webhook_worker.storage.erase.Deleted`, keys included, once it is committed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import fields, replace

from sqlalchemy import func, select

from webhook_worker.errors import BadRequestError
from webhook_worker.storage.database import Database
from webhook_worker.storage.erase import CHUNK, Deleted, ReplayKeys, delete_events
from webhook_worker.storage.events import EventFilter
from webhook_worker.storage.schema import events

Progress = Callable[[Deleted], Awaitable[None]]
"""Called after each committed chunk with what it deleted."""


async def count(db: Database, where: EventFilter) -> int:
    """How many events :func:`purge` would delete now."""
    _check_narrows(where)
    query = where.apply(select(func.count()).select_from(events))
    async with db.connect() as conn:
        return int(await conn.scalar(query) or 0)


async def purge(
    db: Database,
    where: EventFilter,
    progress: Progress | None = None,
    replay_keys: ReplayKeys | None = None,
) -> Deleted:
    """Delete the events matching ``where`` (up to the newest one matching now), chunk by
    chunk. Returns how many events and bytes went; the keys of the deleted events (with their
    replay keys, given ``replay_keys``) are given to ``progress`` chunk by chunk and not kept
    (a purge of millions keeps its memory flat)."""
    _check_narrows(where)
    async with db.connect() as conn:
        newest = await conn.scalar(where.apply(select(func.max(events.c.id))))
    total = Deleted()
    if newest is None:
        return total
    after: str | None = None
    while True:
        # FOR UPDATE: the events are locked before their deliveries, as the worker locks them
        # when it records an outcome, so the two never deadlock (nothing on SQLite, where
        # BEGIN IMMEDIATE serialises writers).
        query = (
            where.apply(select(events.c.id))
            .where(events.c.id <= newest)
            .order_by(events.c.id)
            .limit(CHUNK)
            .with_for_update()
        )
        if after is not None:
            query = query.where(events.c.id > after)
        async with db.begin() as conn:
            ids = list(await conn.scalars(query))
            chunk = await delete_events(conn, ids, replay_keys)
        if not ids:
            return total
        after = ids[-1]
        total.events += chunk.events
        total.bytes += chunk.bytes
        if progress is not None:
            await progress(chunk)
        if len(ids) < CHUNK:
            return total


def _check_narrows(where: EventFilter) -> None:
    """Refuse a filter field that :meth:`EventFilter.apply` does not apply: a deletion must never
    match more than was asked for (a field given but ignored would silently widen it)."""
    applied = str(where.apply(select(events.c.id)))
    for field in fields(where):
        if getattr(where, field.name) and applied == str(
            replace(where, **{field.name: None}).apply(select(events.c.id))
        ):
            raise BadRequestError(
                f"{field.name}: this filter cannot be used to delete events", field.name
            )
