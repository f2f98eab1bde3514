"""A private Redis (append-only file, fsync always) crashes (SIGKILL) under a steady stream of
webhooks and comes back a few seconds later on the same port.

While it is down the API answers 503, never 202 for an event it could not enqueue. Afterwards
the sender retries what got 503, as providers do; every webhook ends up stored exactly once, and
the queue ends empty."""

from __future__ import annotations

import asyncio
import time

import httpx
import redis.asyncio as aioredis

from tests.chaos.conftest import ClusterFactory
from tests.chaos.harness import (
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
from tests.support import RedisServer
from webhook_worker.storage.database import Database


async def test_redis_crash_means_503_and_everything_accepted_is_stored(
    start_cluster: ClusterFactory,
    redis_server: RedisServer,
    postgres_db: Database,
    postgres_server_url: str,
    sizes: Sizes,
) -> None:
    cluster = start_cluster(
        postgres_server_url,
        redis_addr=f"127.0.0.1:{redis_server.port}",
        redis_password=redis_server.password,
        redis_prefix="chaos",
    )
    redis = aioredis.Redis(port=redis_server.port, password=redis_server.password)
    probe = QueueProbe(redis=redis, prefix="chaos")
    count = sizes.events // 2
    cluster.migrate()
    started = time.monotonic()
    await cluster.start_api()
    for _ in range(2):
        await cluster.start_worker()

    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as client:
        await add_tool(client, {"id": "load", "auth": {"type": "none"}})
        load = Load(client, concurrency=16)
        # Spread over the outage and a few seconds either side of it.
        sending = asyncio.create_task(load.run(range(count), rate=count / (sizes.redis_outage + 8)))

        async def a_quarter_accepted() -> bool:
            return len(load.accepted) >= count // 4

        await until(a_quarter_accepted, within=60, what="a quarter of the load to be accepted")
        redis_server.kill()
        down_at = time.monotonic()

        async def outage_over() -> bool:
            refused = any(a.status == 503 and a.sent_at >= down_at for a in load.answers)
            return refused and time.monotonic() - down_at >= sizes.redis_outage

        await until(
            outage_over,
            within=sizes.redis_outage + 30,
            what="503 answers while Redis is down",
            details=cluster.output,
        )
        up_at = time.monotonic()
        redis_server.start()
        await sending
        sent_once = list(load.answers)

        # The provider's retry of whatever was refused: the same bodies again.
        refused = [a.n for a in sent_once if a.status != 202]
        await asyncio.gather(*(load.send(n) for n in refused))

    during = [a for a in sent_once if a.sent_at >= down_at and a.answered_at <= up_at]
    accepted = load.accepted

    async def all_stored() -> bool:
        return await stored_count(postgres_db) >= len(accepted)

    await until(
        all_stored,
        within=120,
        what=f"{len(accepted)} accepted events to be stored",
        interval=0.5,
        details=cluster.output,
    )
    drained = await until(probe.drained, within=60, what="the queue to empty")
    await redis.aclose()
    stored = await stored_events(postgres_db, load.tag)
    tally = Tally(load, stored, started)
    retried = load.answers[len(sent_once) :]
    record(
        tally.summary(
            "redis-crash",
            outage_s=round(up_at - down_at, 1),
            answers_during_outage=len(during),
            unavailable_503_during_outage=sum(a.status == 503 for a in during),
            retried_after_503=len(retried),
            retry_found_already_enqueued=sum(a.status == 200 for a in retried),
            queue_after=drained,
        )
    )

    # While Redis was down: 503, or a 202 for an event that really was enqueued (stored now).
    assert any(a.status == 503 for a in during)
    wrong = [a for a in during if a.status != 503 and not (a.status == 202 and a.event_id)]
    assert wrong == [], wrong[:5]
    assert {a.event_id for a in during if a.status == 202} <= tally.stored_ids
    # Nothing but 202 and 503 the first time; the retries are accepted or known duplicates.
    assert {a.status for a in sent_once} <= {202, 503}, [
        a for a in sent_once if a.status not in (202, 503)
    ][:5]
    assert {a.status for a in retried} <= {200, 202}, retried[:5]
    assert {a.event_id for a in retried if a.status == 200} <= tally.stored_ids
    # Every webhook sent is stored exactly once; every 202 is among them.
    assert tally.lost == set()
    assert tally.duplicated == 0
    assert {event.n for event in stored} == set(range(count))
    assert set(accepted) <= tally.stored_ids
    codes = cluster.terminate_all()
    assert set(codes.values()) == {0}, f"{codes}\n{cluster.output()}"
