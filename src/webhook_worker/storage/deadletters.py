"""Dead letters: events the worker gave up on, kept with the error for inspection and retry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.storage.events import insert_ignoring_conflicts
from webhook_worker.storage.schema import dead_letters


async def insert_dead_letters(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add dead letters; an event that has one already keeps it (one dead letter per event)."""
    if rows:
        await conn.execute(insert_ignoring_conflicts(conn.dialect.name, dead_letters), list(rows))
