"""Giving the space of deleted rows back on SQLite, so that the file stops growing.

A new file is created with ``auto_vacuum=INCREMENTAL`` (storage/database.py): the pages that
deletes free go on a free list, and ``PRAGMA incremental_vacuum(N)`` gives N of them back to
the file system, which shrinks the file. A file made by an older release has no auto_vacuum,
and cannot get it without a full ``VACUUM`` (which rewrites the file and blocks every writer
meanwhile): there SQLite reuses the free pages for new rows, so the file stops growing without
shrinking, and the operator is told once how to convert it while the service is stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.storage.database import Database

log = logging.getLogger(__name__)

PAGES: Final = 500
"""Free pages given back per transaction: a write transaction of a few milliseconds."""
_INCREMENTAL: Final = 2
"""``PRAGMA auto_vacuum``'s answer for INCREMENTAL."""


class Vacuum:
    """Reclaims the free pages of one SQLite database (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._told = False

    async def reclaim(
        self,
        between: Callable[[], Awaitable[None]],
        pace: Callable[[], AbstractAsyncContextManager[None]],
    ) -> int:
        """Give free pages back, :data:`PAGES` per transaction, each in ``pace()`` (the
        sweep's pacing, storage/pace.py), calling ``between()`` before each (the sweep renews
        its lease there); then checkpoint the WAL, so that it starts over from its beginning
        rather than growing up to the next automatic checkpoint. Returns the pages given back."""
        async with self._db.connect() as conn:
            mode = int(await conn.scalar(text("PRAGMA auto_vacuum")) or 0)
            free = int(await conn.scalar(text("PRAGMA freelist_count")) or 0)
        given = 0
        if mode != _INCREMENTAL:
            self._tell()
            free = 0
        while free > 0:
            await between()
            async with pace(), self._db.begin(durable=False) as conn:
                await _script(conn, f"PRAGMA incremental_vacuum({PAGES});")
                left = int(await conn.scalar(text("PRAGMA freelist_count")) or 0)
            if left >= free:
                break
            given += free - left
            free = left
        async with self._db.connect_aside() as conn:
            # Outside a transaction (a checkpoint cannot run inside one), and beside this
            # process's transactions rather than in their turn (storage/database.Turns).
            # PASSIVE: it never waits for a reader or holds up a writer; what it cannot copy
            # waits for the next.
            await _script(conn, "PRAGMA wal_checkpoint(PASSIVE);")
        return given

    def _tell(self) -> None:
        if self._told:
            return
        self._told = True
        path = self._db.engine.url.database
        log.warning(
            "the SQLite file %s was created without auto_vacuum: the space of deleted events is "
            "reused, so the file stops growing, but it does not shrink. To shrink it, and have "
            "it shrink from then on, stop webhook-worker and run: sqlite3 %s "
            "'PRAGMA auto_vacuum=INCREMENTAL; VACUUM;'",
            path,
            path,
        )


async def _script(conn: AsyncConnection, script: str) -> None:
    """Run ``script`` through the SQLite driver's executescript, which steps each statement to
    its end (an ordinary execute steps ``incremental_vacuum`` once, which frees one page) and
    begins no transaction of its own."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    await driver.executescript(script)
