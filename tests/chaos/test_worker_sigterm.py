"""A worker gets SIGTERM while it holds work (events stored, forwards in flight): it exits 0
within WORKER_SHUTDOWN_TIMEOUT, leaving nothing pending under its name, and a new worker
drains the rest. Every event answered 202 is stored exactly once and forwarded exactly once (a
graceful stop finishes what it started instead of leaving it for someone to redo)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

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
from tests.conftest import REDIS_URL
from tests.support import target_server
from webhook_worker.storage.database import Database

SHUTDOWN_TIMEOUT = 10.0
EXIT_SLACK = 5.0
"""Beyond the shutdown timeout: the interpreter's own exit (closing pools, flushing logs)."""


async def test_sigterm_under_load_exits_0_and_loses_nothing(
    start_cluster: ClusterFactory,
    postgres_db: Database,
    postgres_server_url: str,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    sizes: Sizes,
) -> None:
    cluster = start_cluster(
        postgres_server_url,
        redis_addr=REDIS_URL.split("://", 1)[1].split("/", 1)[0],
        redis_prefix=redis_prefix,
        WORKER_SHUTDOWN_TIMEOUT=f"{SHUTDOWN_TIMEOUT:g}s",
        # Nobody takes over the stopping worker's messages: what it leaves pending stays its.
        WORKER_RECLAIM_IDLE="10m",
        ALLOW_PRIVATE_FORWARD="true",
    )
    probe = QueueProbe(redis=redis_client, prefix=redis_prefix)
    count = sizes.events // 2
    cluster.migrate()
    started = time.monotonic()
    await cluster.start_api()
    victim, survivor = [await cluster.start_worker() for _ in range(2)]

    async with (
        target_server() as target,
        httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as client,
    ):
        target.delay = 0.2  # forwards take a moment, so some are in flight at the signal
        await add_tool(
            client,
            {
                "id": "load",
                "auth": {"type": "none"},
                "mode": "store_and_forward",
                "forward": {"url": target.url, "timeout": "5s"},
            },
        )
        load = Load(client)
        sending = asyncio.create_task(load.run(range(count), rate=count / 8))

        async def victim_busy() -> bool:
            stored = await stored_count(postgres_db)
            return stored >= count // 5 and await probe.pending_of(victim.name) > 0

        await until(
            victim_busy, within=60, what=f"{victim.name} to hold work", details=cluster.output
        )
        held = await probe.pending_of(victim.name)
        victim.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.to_thread(
            cluster.processes.exit_code, victim.process, SHUTDOWN_TIMEOUT + EXIT_SLACK
        )
        exit_s = time.monotonic() - signalled
        left_pending = await probe.pending_of(victim.name)
        cluster.workers.remove(victim)
        await cluster.start_worker()
        await sending
        sent_s = time.monotonic() - started
        accepted = load.accepted

        async def all_stored() -> bool:
            return await stored_count(postgres_db) >= len(accepted)

        await until(
            all_stored,
            within=120 + count / 50,
            what=f"{len(accepted)} accepted events to be stored",
            interval=0.5,
            details=cluster.output,
        )
        stored_s = time.monotonic() - started
        drained = await until(probe.drained, within=60, what="the queue to empty")

        async def all_forwarded() -> bool:
            return set(accepted) <= {r.headers.get("webhook-id") for r in target.requests}

        await until(all_forwarded, within=60, what="every event to be forwarded")
        forwards = Counter(r.headers.get("webhook-id") for r in target.requests)

    stored = await stored_events(postgres_db, load.tag)
    tally = Tally(load, stored, started)
    record(
        tally.summary(
            "sigterm-worker",
            load_sent_after_s=round(sent_s, 1),
            stored_after_s=round(stored_s, 1),
            held_at_sigterm=held,
            exit_code=code,
            exit_s=round(exit_s, 1),
            left_pending=left_pending,
            forwarded=len(forwards),
            forwarded_twice=sum(1 for c in forwards.values() if c > 1),
            queue_after=drained,
        )
    )

    assert code == 0, cluster.output()
    assert left_pending == 0, f"{victim.name} stopped with {left_pending} messages unsettled"
    assert load.statuses() == {202: count}
    assert tally.lost == set()
    assert tally.duplicated == 0
    assert tally.stored_ids == set(accepted)
    assert {event.status for event in stored} == {"processed"}
    assert set(forwards) == set(accepted)
    assert [e for e, c in forwards.items() if c > 1] == []
    assert survivor.process.poll() is None
    codes = cluster.terminate_all()
    assert set(codes.values()) == {0}, f"{codes}\n{cluster.output()}"
