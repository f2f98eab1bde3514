"""Deliveries: one row per event and destination (``event_deliveries``), and the event status
worked out from them.

The worker writes a delivery when the event is stored (its destinations' first decisions) and
after each attempt; :func:`settle_events` then sets the event's own status from all its
deliveries' (``vocabulary.event_status``), in the same transaction. Two workers may settle two
deliveries of one event at once (a retry of one destination, a first attempt of another), so
a transaction that changes deliveries first locks their events' rows (:func:`lock_events`,
PostgreSQL; SQLite writers are serialised anyway): the second transaction then reads the first
one's delivery, never a stale one.

Lock order: every transaction that changes an event's deliveries or dead letters (the worker's
writes, replays, dead letter retries) locks the events first, in id order, and only then
touches deliveries and dead letters; so two of them never wait on each other in a circle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.storage.database import upsert
from webhook_worker.storage.records import DeliveryRecord, DeliveryState, as_rows
from webhook_worker.storage.rows import DeliveryRow, utc_or_none
from webhook_worker.storage.schema import deliveries, events
from webhook_worker.vocabulary import DeliveryStatus, EventStatus, event_status

_DELIVERY_COLUMNS = DeliveryRecord._fields
_KEYS = ("event_id", "destination_id")
_CHANGED = ("status", "attempt_count", "next_attempt_at", "updated_at")


async def upsert_deliveries(conn: AsyncConnection, records: Sequence[DeliveryRecord]) -> None:
    """Add deliveries, or change the recorded ones (by event and destination)."""
    if records:
        await conn.execute(
            upsert(conn.dialect.name, deliveries, _KEYS, _CHANGED),
            as_rows(records, _DELIVERY_COLUMNS),
        )


async def delivery_states(
    conn: AsyncConnection, event_ids: Sequence[str]
) -> dict[str, dict[str, DeliveryState]]:
    """The recorded deliveries of each of ``event_ids``, by event and destination id."""
    if not event_ids:
        return {}
    d = deliveries.c
    query = select(d.event_id, d.destination_id, d.status, d.attempt_count).where(
        d.event_id.in_(list(event_ids))
    )
    states: dict[str, dict[str, DeliveryState]] = {}
    for row in await conn.execute(query):
        states.setdefault(row.event_id, {})[row.destination_id] = DeliveryState(
            DeliveryStatus(row.status), int(row.attempt_count)
        )
    return states


async def lock_events(conn: AsyncConnection, event_ids: Iterable[str]) -> dict[str, EventStatus]:
    """Lock the events' rows for the rest of the transaction, in id order (see the module
    docstring); returns the status of each that exists."""
    ids = sorted(set(event_ids))
    if not ids:
        return {}
    locked = (
        select(events.c.id, events.c.status)
        .where(events.c.id.in_(ids))
        .order_by(events.c.id)
        .with_for_update()
    )
    return {row.id: EventStatus(row.status) for row in await conn.execute(locked)}


async def settle_events(
    conn: AsyncConnection,
    before: Mapping[str, EventStatus],
    recorded: Mapping[str, Mapping[str, DeliveryState]],
    written: Sequence[DeliveryRecord],
    attempts_added: Mapping[str, int],
    now: datetime,
) -> dict[str, tuple[EventStatus, EventStatus]]:
    """Set the status of each event of ``attempts_added`` from its deliveries (and
    ``processed_at`` when that is final), counting ``attempts_added[event_id]`` more attempts.
    ``before`` and ``recorded``: what :func:`lock_events` and :func:`delivery_states` answered
    at the start of the transaction; ``written``: the deliveries it wrote since. Returns
    ``(before, after)`` by event id, so the caller can count an event once when it becomes
    final."""
    ids = sorted(event_id for event_id in attempts_added if event_id in before)
    if not ids:
        return {}
    now_recorded = {event_id: dict(recorded.get(event_id, {})) for event_id in ids}
    for record in written:
        if record.event_id in now_recorded:
            now_recorded[record.event_id][record.destination_id] = DeliveryState(
                record.status, record.attempt_count
            )
    after = {
        event_id: event_status(state.status for state in now_recorded[event_id].values())
        for event_id in ids
    }
    await conn.execute(
        update(events)
        .where(events.c.id == bindparam("event_id"))
        .values(
            status=bindparam("new_status"),
            processed_at=bindparam("done_at"),
            attempt_count=events.c.attempt_count + bindparam("added"),
        ),
        [
            {
                "event_id": event_id,
                "new_status": status,
                "done_at": now if status.final else None,
                "added": attempts_added[event_id],
            }
            for event_id, status in after.items()
        ],
    )
    return {event_id: (before[event_id], after[event_id]) for event_id in ids}


async def deliveries_of(
    conn: AsyncConnection, event_ids: Sequence[str]
) -> dict[str, tuple[DeliveryRow, ...]]:
    """The deliveries of each event, in destination order, as the read side shows them."""
    if not event_ids:
        return {}
    query = (
        select(deliveries)
        .where(deliveries.c.event_id.in_(list(event_ids)))
        .order_by(deliveries.c.event_id, deliveries.c.destination_id)
    )
    grouped: dict[str, list[DeliveryRow]] = {}
    for row in (await conn.execute(query)).mappings():
        grouped.setdefault(row["event_id"], []).append(
            DeliveryRow(
                destination_id=row["destination_id"],
                status=DeliveryStatus(row["status"]),
                attempt_count=int(row["attempt_count"]),
                next_attempt_at=utc_or_none(row["next_attempt_at"]),
                updated_at=utc_or_none(row["updated_at"]),
            )
        )
    return {event_id: tuple(rows) for event_id, rows in grouped.items()}
