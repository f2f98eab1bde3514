"""SQLite transactions of one process take turns, first come first served (storage/database.Turns):
a writer that begins transactions back to back (the retention sweep) cannot keep another waiting
behind several of them, as SQLite's busy handler, which sleeps between its tries, would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from webhook_worker.errors import DatabaseUnavailableError
from webhook_worker.storage.database import Database, Turns


@pytest.fixture
async def file_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}", pool_size=4)
    async with db.begin() as conn:
        await conn.execute(text("CREATE TABLE log (who TEXT, n INTEGER)"))
    yield db
    await db.close()


async def test_a_writer_waits_for_one_transaction_of_a_back_to_back_writer(
    file_db: Database,
) -> None:
    done = 0
    stop = asyncio.Event()
    hog_started = asyncio.Event()

    async def hog() -> None:
        nonlocal done
        while not stop.is_set():
            async with file_db.begin() as conn:
                await conn.execute(text("INSERT INTO log VALUES ('hog', :n)"), {"n": done})
                hog_started.set()
                await asyncio.sleep(0.02)  # a chunk of deletions
            done += 1
            # Straight into the next one, as the sweep's chunks do.

    task = asyncio.create_task(hog())
    try:
        await asyncio.wait_for(hog_started.wait(), 10)
        asked = done
        async with file_db.begin() as conn:
            await conn.execute(text("INSERT INTO log VALUES ('ingest', 0)"))
        got_in = done
    finally:
        stop.set()
        await task
    # In at the end of the transaction that held the file when it asked (first come, first
    # served), not after however many the other began meanwhile.
    assert got_in - asked <= 1, (asked, got_in)


async def test_transactions_begin_in_the_order_they_asked(file_db: Database) -> None:
    order: list[int] = []
    holding = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with file_db.begin() as conn:
            await conn.execute(text("INSERT INTO log VALUES ('first', 0)"))
            holding.set()
            await release.wait()

    async def later(n: int) -> None:
        async with file_db.begin() as conn:
            order.append(n)
            await conn.execute(text("INSERT INTO log VALUES ('later', :n)"), {"n": n})

    holder = asyncio.create_task(first())
    await holding.wait()
    waiting = []
    for n in range(3):
        waiting.append(asyncio.create_task(later(n)))
        await asyncio.sleep(0)  # each asks before the next
    release.set()
    await asyncio.gather(holder, *waiting)
    assert order == [0, 1, 2]


async def test_a_task_that_holds_the_turn_does_not_wait_for_itself() -> None:
    turns = Turns(timeout=5)

    async def inner() -> str:
        async with turns.turn():
            return "in"

    async with turns.turn():
        # Another connection of the same task, or of a task it started meanwhile, meets the
        # first in SQLite, as it would without turns: not a wait for itself that never ends.
        assert await inner() == "in"
        assert await asyncio.create_task(inner()) == "in"
    async with asyncio.timeout(1), turns.turn():  # released, once
        pass


async def test_a_turn_held_too_long_makes_the_database_unavailable() -> None:
    turns = Turns(timeout=0.2)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with turns.turn():
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await holding.wait()
    with pytest.raises(DatabaseUnavailableError, match="stayed busy"):
        async with turns.turn():
            pass
    release.set()
    await holder
    async with asyncio.timeout(1), turns.turn():  # free again, and not left half-taken
        pass


async def test_postgresql_connections_take_no_turns(postgres_db: Database) -> None:
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with postgres_db.begin() as conn:
            await conn.execute(text("SELECT 1"))
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await holding.wait()
    try:
        async with asyncio.timeout(5), postgres_db.begin() as conn:
            assert await conn.scalar(text("SELECT 2")) == 2
    finally:
        release.set()
        await holder
