"""The backlog of each destination: its deliveries that are not final yet (``pending``,
``retrying``, ``paused``), what ``webhook_destination_backlog`` reports.

One GROUP BY over ``event_deliveries``, answered from its partial index of the waiting
deliveries (``ix_event_deliveries_waiting``), so its cost follows the backlog, not the history;
destinations with nothing waiting are absent from the answer.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import func, select

from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import deliveries
from webhook_worker.vocabulary import DeliveryStatus

WAITING: Final = tuple(status for status in DeliveryStatus if not status.final)
"""The delivery statuses a backlog counts: every one that is not final."""


async def destination_backlog(db: Database) -> dict[tuple[str, str], int]:
    """Deliveries not final yet, by (tool id, destination id)."""
    d = deliveries.c
    query = (
        select(d.tool_id, d.destination_id, func.count())
        .where(d.status.in_(WAITING))
        .group_by(d.tool_id, d.destination_id)
    )
    async with db.connect() as conn:
        rows = await conn.execute(query)
        return {(row[0], row[1]): int(row[2]) for row in rows}
