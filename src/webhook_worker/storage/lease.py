"""A lease held by one process of the deployment at a time: a row of the ``metadata`` table
whose value is the epoch milliseconds until which it is held.

It needs nothing but the database (no Redis), and works the same on PostgreSQL and SQLite: a
process takes it with one conditional ``UPDATE`` (``value < now``), which only one of several
at once can win. A holder renews it before it runs out and gives it up at the end, possibly to
a time in the future, which keeps every process from taking it until then. A holder that dies
holds it up only until it runs out.
"""

from __future__ import annotations

import time

from sqlalchemy import update

from webhook_worker.storage.database import Database
from webhook_worker.storage.events import insert_ignoring_conflicts
from webhook_worker.storage.schema import metadata_table


class LeaseLost(Exception):
    """Another process took the lease over: this one held it past its time without renewing."""


class Lease:
    """The lease named ``key`` (a row of ``metadata``), held ``seconds`` at a time."""

    def __init__(self, db: Database, key: str, seconds: float) -> None:
        self._db = db
        self._key = key
        self._seconds = seconds
        self._held: int | None = None

    @property
    def held(self) -> bool:
        return self._held is not None

    async def acquire(self) -> bool:
        """Take the lease unless another process holds it (or rests it): whether it was
        taken."""
        now_ms = int(time.time() * 1000)
        until = now_ms + int(self._seconds * 1000)
        async with self._db.begin() as conn:
            await conn.execute(
                insert_ignoring_conflicts(self._db.dialect, metadata_table),
                {"key": self._key, "value": 0},
            )
            taken = await conn.execute(
                update(metadata_table)
                .where(metadata_table.c.key == self._key, metadata_table.c.value < now_ms)
                .values(value=until)
            )
        self._held = until if taken.rowcount == 1 else None
        return self._held is not None

    async def keep(self) -> None:
        """Renew the lease once half of it has gone (call it often: it is free until then).
        Raises LeaseLost when it is not held any more."""
        held = self._held
        if held is None:
            raise LeaseLost(self._key)
        now_ms = int(time.time() * 1000)
        if held - now_ms > self._seconds * 500:
            return
        until = now_ms + int(self._seconds * 1000)
        if not await self._move(held, until):
            self._held = None
            raise LeaseLost(self._key)
        self._held = until

    async def release(self, rest_until: float = 0.0) -> None:
        """Give the lease up; no process takes it before ``rest_until`` (epoch seconds)."""
        held, self._held = self._held, None
        if held is not None:
            await self._move(held, int(rest_until * 1000))

    async def _move(self, held: int, until: int) -> bool:
        async with self._db.begin() as conn:
            moved = await conn.execute(
                update(metadata_table)
                .where(metadata_table.c.key == self._key, metadata_table.c.value == held)
                .values(value=until)
            )
        return moved.rowcount == 1
