"""Workers SIGKILLed every few seconds while events flow, each replaced at once, two running at
any time: every event answered 202 is stored exactly once, and the queue ends empty (nothing
stays pending on a dead consumer). On Redis Streams and on the database queue."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.chaos.conftest import OnQueue
from tests.chaos.harness import (
    Load,
    Sizes,
    Tally,
    add_tool,
    record,
    stored_count,
    stored_events,
    until,
)
from webhook_worker.storage.database import Database

MIN_KILLS = 3


async def test_sigkilled_workers_lose_nothing_and_store_nothing_twice(
    on_queue: OnQueue, postgres_db: Database, sizes: Sizes
) -> None:
    name, start, probe = on_queue
    cluster = start()
    cluster.migrate()
    started = time.monotonic()
    await cluster.start_api()
    for _ in range(2):
        await cluster.start_worker()

    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as client:
        await add_tool(client, {"id": "load", "auth": {"type": "none"}})
        load = Load(client)
        sending = asyncio.create_task(load.run(range(sizes.events)))

        async def some_stored() -> bool:
            return await stored_count(postgres_db) > 0

        await until(some_stored, within=60, what="the first stored event", details=cluster.output)
        kills = await cluster.kill_while(sending, sizes.kill_interval, MIN_KILLS)
        await sending

    accepted = load.accepted

    async def all_stored() -> bool:
        return await stored_count(postgres_db) >= len(accepted)

    await until(
        all_stored,
        within=120 + sizes.events / 50,
        what=f"{len(accepted)} accepted events to be stored",
        interval=0.5,
        details=cluster.output,
    )
    drained = await until(
        probe.drained, within=60, what="the queue to empty", details=cluster.output
    )
    stored = await stored_events(postgres_db, load.tag)
    tally = Tally(load, stored, started)
    record(tally.summary(f"sigkill-workers[{name}]", kills=kills, queue_after=drained))

    assert load.statuses() == {202: sizes.events}, [a for a in load.answers if a.status != 202][:5]
    assert tally.lost == set()
    assert tally.duplicated == 0
    assert tally.stored_ids == set(accepted)
    assert {event.status for event in stored} == {"processed"}
    assert kills >= MIN_KILLS
    codes = cluster.terminate_all()
    assert set(codes.values()) == {0}, f"{codes}\n{cluster.output()}"
