"""Workers SIGKILLed every few seconds while events flow, each replaced at once, two running at
any time: every event answered 202 is stored exactly once, and the queue ends empty (nothing
stays pending on a dead consumer). On Redis Streams and on the database queue."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import redis.asyncio as aioredis

from tests.chaos.conftest import ClusterFactory
from tests.chaos.harness import (
    Cluster,
    Load,
    QueueProbe,
    Sizes,
    Tally,
    add_tool,
    record,
    stored_count,
    stored_events,
    until,
)
from tests.conftest import REDIS_URL
from webhook_worker.storage.database import Database

MIN_KILLS = 3


async def _kill_workers(cluster: Cluster, interval: float, sending: asyncio.Task[None]) -> int:
    """SIGKILL the oldest worker every ``interval`` seconds and start a new one, until the load
    is sent and at least MIN_KILLS workers died. Returns how many were killed."""
    kills = 0
    while not sending.done() or kills < MIN_KILLS:
        # Pacing the faults; the wait ends early when the load is sent.
        await asyncio.wait({sending}, timeout=interval)
        if sending.done() and kills >= MIN_KILLS:
            break
        cluster.kill(cluster.workers[0])
        kills += 1
        await cluster.start_worker()
    return kills


@pytest.fixture(params=["redis", "database-queue"])
def backend(
    request: pytest.FixtureRequest,
    start_cluster: ClusterFactory,
    postgres_db: Database,
    postgres_server_url: str,
    redis_prefix: str,
) -> tuple[str, Cluster, QueueProbe]:
    """The cluster on PostgreSQL, with the shared Redis (own key prefix) or the database queue."""
    if request.param == "redis":
        redis: aioredis.Redis = request.getfixturevalue("redis_client")  # cleans the prefix up
        cluster = start_cluster(
            postgres_server_url,
            redis_addr=REDIS_URL.split("://", 1)[1].split("/", 1)[0],
            redis_prefix=redis_prefix,
        )
        return request.param, cluster, QueueProbe(redis=redis, prefix=redis_prefix)
    return request.param, start_cluster(postgres_server_url), QueueProbe(db=postgres_db)


async def test_sigkilled_workers_lose_nothing_and_store_nothing_twice(
    backend: tuple[str, Cluster, QueueProbe], postgres_db: Database, sizes: Sizes
) -> None:
    name, cluster, probe = backend
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
        kills = await _kill_workers(cluster, sizes.kill_interval, sending)
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
