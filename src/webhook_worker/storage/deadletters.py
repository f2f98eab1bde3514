"""Dead letters: events the worker gave up on, kept with the error for inspection and retry.

One dead letter per delivery (event and destination; the event's own failures have the
destination ''): a delivery that fails again after being retried from the dead letter queue
updates its dead letter (error, class, status) instead of adding a second one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import RowMapping, Select, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.errors import NotFoundError
from webhook_worker.storage.database import Database, upsert
from webhook_worker.storage.events import MAX_PAGE
from webhook_worker.storage.records import DeadLetterRecord, as_rows
from webhook_worker.storage.rows import DeadLetterRow, Page, utc, utc_or_none
from webhook_worker.storage.schema import dead_letters
from webhook_worker.vocabulary import DeadLetterStatus

_DEAD_LETTER_COLUMNS = DeadLetterRecord._fields
_KEYS = ("event_id", "destination_id")
_CHANGED = ("error", "error_class", "retryable", "status", "updated_at", "next_retry_at")


async def upsert_dead_letters(conn: AsyncConnection, records: Sequence[DeadLetterRecord]) -> None:
    """Add dead letters, or update the event's existing one (back to ``pending``)."""
    if records:
        await conn.execute(
            upsert(conn.dialect.name, dead_letters, _KEYS, _CHANGED),
            as_rows(records, _DEAD_LETTER_COLUMNS),
        )


async def resolve_dead_letters(
    conn: AsyncConnection, keys: Sequence[tuple[str, str]], now: datetime
) -> int:
    """Mark as ``resolved`` the dead letters, being retried, of what has now succeeded: each
    key is (event id, destination id), the destination '' for the event's own processing.
    Returns how many were."""
    if not keys:
        return 0
    d = dead_letters.c
    result = await conn.execute(
        update(dead_letters)
        .where(tuple_(d.event_id, d.destination_id).in_(list(keys)))
        .where(dead_letters.c.status == DeadLetterStatus.RETRYING)
        .values(status=DeadLetterStatus.RESOLVED, updated_at=now, next_retry_at=None)
    )
    return int(result.rowcount or 0)


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    tool_id: str | None = None
    event_type: str | None = None
    error_class: str | None = None
    status: DeadLetterStatus | None = None
    since: datetime | None = None
    until: datetime | None = None
    destination_id: str | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        d = dead_letters.c
        for column, value in (
            (d.tool_id, self.tool_id),
            (d.destination_id, self.destination_id),
            (d.event_type, self.event_type),
            (d.error_class, self.error_class),
            (d.status, self.status),
        ):
            if value:
                query = query.where(column == value)
        if self.since:
            query = query.where(d.created_at >= self.since)
        if self.until:
            query = query.where(d.created_at < self.until)
        return query


class DeadLetterStore:
    """The read side, as :class:`DeadLetterRow`, and discarding one."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(
        self, where: DeadLetterFilter, limit: int = 50, after: str | None = None
    ) -> Page[DeadLetterRow]:
        """A page of dead letters, newest first, starting after the dead letter id ``after``."""
        limit = max(1, min(limit, MAX_PAGE))
        query = (
            where.apply(select(dead_letters)).order_by(dead_letters.c.id.desc()).limit(limit + 1)
        )
        if after:
            query = query.where(dead_letters.c.id < after)
        async with self._db.connect() as conn:
            rows = list((await conn.execute(query)).mappings())
        items = [_dead_letter_row(row) for row in rows[:limit]]
        return Page(items, items[-1].id if len(rows) > limit else None)

    async def get(self, dead_letter_id: str) -> DeadLetterRow:
        """The dead letter; NotFoundError when there is none."""
        async with self._db.connect() as conn:
            letter = await dead_letter(conn, dead_letter_id)
        if letter is None:
            raise NotFoundError(f"no dead letter {dead_letter_id!r}")
        return letter

    async def discard(self, dead_letter_id: str) -> DeadLetterRow:
        """Mark the dead letter ``discarded`` (no automatic retry); returns it as it is now."""
        async with self._db.begin() as conn:
            result = await conn.execute(
                update(dead_letters)
                .where(dead_letters.c.id == dead_letter_id)
                .values(
                    status=DeadLetterStatus.DISCARDED,
                    updated_at=datetime.now(UTC),
                    next_retry_at=None,
                )
            )
        if result.rowcount == 0:
            raise NotFoundError(f"no dead letter {dead_letter_id!r}")
        return await self.get(dead_letter_id)

    async def count(self, where: DeadLetterFilter) -> int:
        """How many dead letters match ``where``."""
        query = where.apply(select(func.count()).select_from(dead_letters))
        async with self._db.connect() as conn:
            return int(await conn.scalar(query) or 0)

    async def depth(self) -> int:
        """Dead letters waiting for someone (pending or being retried)."""
        query = (
            select(func.count())
            .select_from(dead_letters)
            .where(dead_letters.c.status.in_([DeadLetterStatus.PENDING, DeadLetterStatus.RETRYING]))
        )
        async with self._db.connect() as conn:
            return int(await conn.scalar(query) or 0)


async def dead_letter(conn: AsyncConnection, dead_letter_id: str) -> DeadLetterRow | None:
    """The dead letter as ``conn`` sees it (inside the caller's transaction), or None."""
    query = select(dead_letters).where(dead_letters.c.id == dead_letter_id)
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else _dead_letter_row(row)


def _dead_letter_row(row: RowMapping) -> DeadLetterRow:
    return DeadLetterRow(
        id=row["id"],
        event_id=row["event_id"],
        tool_id=row["tool_id"],
        event_type=row["event_type"],
        error=row["error"],
        error_class=row["error_class"],
        retryable=row["retryable"],
        retry_count=row["retry_count"],
        status=DeadLetterStatus(row["status"]),
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
        last_retry_at=utc_or_none(row["last_retry_at"]),
        next_retry_at=utc_or_none(row["next_retry_at"]),
        destination_id=row["destination_id"] or None,
    )
