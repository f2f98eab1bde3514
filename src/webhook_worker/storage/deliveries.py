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
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.storage.database import upsert
from webhook_worker.storage.records import DeliveryRecord, DeliveryState, as_rows, columns_of
from webhook_worker.storage.rows import DeliveryRow, utc_or_none
from webhook_worker.storage.schema import deliveries, events
from webhook_worker.vocabulary import DeliveryStatus, EventStatus, event_status

_DELIVERY_COLUMNS = DeliveryRecord._fields
_KEYS = ("event_id", "destination_id")
_CHANGED = ("status", "attempt_count", "next_attempt_at", "updated_at")


_UPSERT_UNNEST = """
INSERT INTO event_deliveries (event_id, destination_id, tool_id, status, attempt_count,
                              next_attempt_at, updated_at)
SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::int[],
                     $6::timestamptz[], $7::timestamptz[])
ON CONFLICT (event_id, destination_id) DO UPDATE SET status = excluded.status,
    attempt_count = excluded.attempt_count, next_attempt_at = excluded.next_attempt_at,
    updated_at = excluded.updated_at
"""


async def upsert_deliveries(conn: AsyncConnection, records: Sequence[DeliveryRecord]) -> None:
    """Add deliveries, or change the recorded ones (by event and destination; of two records
    of one delivery, the later wins)."""
    if not records:
        return
    if conn.dialect.name == "postgresql":
        # One statement may not change a row twice: keep the last record of each delivery.
        last = list({(r.event_id, r.destination_id): r for r in records}.values())
        await conn.exec_driver_sql(_UPSERT_UNNEST, columns_of(last))
    else:
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
    if conn.dialect.name == "postgresql":
        rows: Any = await conn.exec_driver_sql(_STATES_ANY, (list(event_ids),))
    else:
        d = deliveries.c
        query = select(d.event_id, d.destination_id, d.status, d.attempt_count).where(
            d.event_id.in_(list(event_ids))
        )
        rows = await conn.execute(query)
    states: dict[str, dict[str, DeliveryState]] = {}
    for row in rows:
        states.setdefault(row.event_id, {})[row.destination_id] = DeliveryState(
            DeliveryStatus(row.status), int(row.attempt_count)
        )
    return states


# On PostgreSQL, one array parameter instead of an IN list: the statement text is the same for
# every batch size, so it is parsed and prepared once, not once per size (which cost more than
# the rows themselves).
_LOCK_ANY = "SELECT id, status FROM events WHERE id = ANY($1::varchar[]) ORDER BY id FOR UPDATE"
_STATES_ANY = (
    "SELECT event_id, destination_id, status, attempt_count FROM event_deliveries "
    "WHERE event_id = ANY($1::varchar[])"
)


async def lock_events(conn: AsyncConnection, event_ids: Iterable[str]) -> dict[str, EventStatus]:
    """Lock the events' rows for the rest of the transaction, in id order (see the module
    docstring); returns the status of each that exists."""
    ids = sorted(set(event_ids))
    if not ids:
        return {}
    if conn.dialect.name == "postgresql":
        rows: Any = await conn.exec_driver_sql(_LOCK_ANY, (ids,))
    else:  # the transaction holds SQLite's one write lock already
        rows = await conn.execute(select(events.c.id, events.c.status).where(events.c.id.in_(ids)))
    return {row.id: EventStatus(row.status) for row in rows}


_SETTLE_UNNEST = """
UPDATE events SET status = u.status, processed_at = u.done_at,
    attempt_count = events.attempt_count + u.added
FROM unnest($1::varchar[], $2::varchar[], $3::timestamptz[], $4::int[])
    AS u(id, status, done_at, added)
WHERE events.id = u.id
"""


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
    rows = [
        (event_id, status, now if status.final else None, attempts_added[event_id])
        for event_id, status in after.items()
    ]
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(_SETTLE_UNNEST, columns_of(rows))
    else:
        await conn.execute(
            update(events)
            .where(events.c.id == bindparam("event_id"))
            .values(
                status=bindparam("new_status"),
                processed_at=bindparam("done_at"),
                attempt_count=events.c.attempt_count + bindparam("added"),
            ),
            [
                dict(zip(("event_id", "new_status", "done_at", "added"), row, strict=True))
                for row in rows
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
