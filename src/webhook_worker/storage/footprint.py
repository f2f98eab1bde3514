"""What the stored events take: the age of the oldest one and the size of the database.

Both are cheap enough to read every RETENTION_INTERVAL in every worker: on PostgreSQL the
smallest event id is the first entry of the oldest partition's primary key (ids are UUIDv7, so
the smallest is the oldest), and ``pg_database_size`` adds up file sizes; on SQLite,
``min(received_at)`` reads one entry of its index, and the size is the file's, -wal's and -shm's.
"""

from __future__ import annotations

import os
import time

from sqlalchemy import func, select, text

from webhook_worker.storage import partitions
from webhook_worker.storage.database import Database
from webhook_worker.storage.rows import utc
from webhook_worker.storage.schema import events


async def oldest_event_age(db: Database, now: float | None = None) -> float:
    """Seconds since the oldest stored event was received (0 when there is none)."""
    now = time.time() if now is None else now
    async with db.connect() as conn:
        if db.is_sqlite:
            oldest = await conn.scalar(select(func.min(events.c.received_at)))
            age = 0.0 if oldest is None else now - utc(oldest).timestamp()
        else:
            first = await conn.scalar(select(func.min(events.c.id)))
            age = 0.0 if first is None else now - partitions.bound_time(first)
    return max(age, 0.0)


async def database_size(db: Database) -> int:
    """Bytes the database takes on disk."""
    if db.is_sqlite:
        path = db.engine.url.database
        return 0 if not path or path == ":memory:" else sqlite_size(path)
    async with db.connect() as conn:
        return int(await conn.scalar(text("SELECT pg_database_size(current_database())")) or 0)


def sqlite_size(path: str | os.PathLike[str]) -> int:
    """Bytes of the SQLite file at ``path`` with its WAL and shared-memory files."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(f"{os.fspath(path)}{suffix}").st_size
        except FileNotFoundError:
            continue
    return total
