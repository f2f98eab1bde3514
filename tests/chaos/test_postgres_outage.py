"""A private PostgreSQL stops (``pg_ctl stop -m fast``) under a steady stream of webhooks and
starts again CHAOS_PG_OUTAGE seconds later; the queue is Redis, which stays up.

Meanwhile the workers back off rather than spin (their CPU time over the outage stays a small
fraction of it, their "dependency unavailable" log lines stay few), stay alive, and acknowledge
nothing they have not stored: afterwards every event answered 202 is stored exactly once, and
the backlog drains."""

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
    cpu_seconds,
    record,
    stored_count,
    stored_events,
    until,
)
from tests.chaos.postgres import PostgresServer
from tests.conftest import REDIS_URL
from webhook_worker.storage.database import Database

BACKOFF_LOG_LINE = b"dependency unavailable"
CPU_SHARE_LIMIT = 0.25
"""Of the outage's wall time; a worker retrying in a tight loop burns about 1.0 of it."""


def _backoff_line_limit(outage: float) -> int:
    """Back-off lines a worker may log over the outage: a start-up allowance for the doubling
    delays (0.1 s, 0.2 s, ... up to the cap), then two a second at most. A hot loop logs
    thousands."""
    return int(30 + 2 * outage)


async def test_postgres_outage_workers_back_off_and_lose_nothing(
    start_cluster: ClusterFactory,
    private_postgres: PostgresServer,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    sizes: Sizes,
) -> None:
    cluster = start_cluster(
        private_postgres.url,
        redis_addr=REDIS_URL.split("://", 1)[1].split("/", 1)[0],
        redis_prefix=redis_prefix,
    )
    probe = QueueProbe(redis=redis_client, prefix=redis_prefix)
    db = Database.from_url(private_postgres.url.replace("postgresql://", "postgresql+asyncpg://"))
    count = sizes.events // 2
    cluster.migrate()
    started = time.monotonic()
    await cluster.start_api()
    workers = [await cluster.start_worker() for _ in range(2)]

    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as client:
        await add_tool(client, {"id": "load", "auth": {"type": "none"}})
        load = Load(client, concurrency=16)
        sending = asyncio.create_task(load.run(range(count), rate=count / (sizes.pg_outage + 8)))

        async def some_stored() -> bool:
            return await stored_count(db) >= count // 5

        await until(some_stored, within=60, what="a fifth of the load to be stored")
        await db.engine.dispose()  # its connections die with the server
        private_postgres.stop()
        down_at = time.monotonic()
        cpu_before = {w.name: cpu_seconds(w.process.pid) for w in workers}
        log_offsets = {w.name: cluster.processes.log_of(w.process).stat().st_size for w in workers}

        async def outage_over() -> bool:
            for worker in workers:
                assert worker.process.poll() is None, (
                    f"{worker.name} died during the outage\n{cluster.output()}"
                )
            return time.monotonic() - down_at >= sizes.pg_outage

        await until(outage_over, within=sizes.pg_outage + 10, what="the outage to last")
        cpu_during = {w.name: cpu_seconds(w.process.pid) - cpu_before[w.name] for w in workers}
        backoff_lines = {}
        for worker in workers:
            with cluster.processes.log_of(worker.process).open("rb") as log:
                log.seek(log_offsets[worker.name])
                backoff_lines[worker.name] = log.read().count(BACKOFF_LOG_LINE)
        up_at = time.monotonic()
        private_postgres.start()
        await sending

    accepted = load.accepted
    during = [a for a in load.answers if down_at <= a.sent_at and a.answered_at <= up_at]

    async def all_stored() -> bool:
        return await stored_count(db) >= len(accepted)

    await until(
        all_stored,
        within=120 + count / 50,
        what=f"{len(accepted)} accepted events to be stored after the outage",
        interval=0.5,
        details=cluster.output,
    )
    drained = await until(probe.drained, within=60, what="the backlog to drain")
    stored = await stored_events(db, load.tag)
    await db.close()
    tally = Tally(load, stored, started)
    outage = up_at - down_at
    record(
        tally.summary(
            "postgres-outage",
            outage_s=round(outage, 1),
            accepted_during_outage=sum(a.status == 202 for a in during),
            worker_cpu_s_during_outage={k: round(v, 2) for k, v in cpu_during.items()},
            backoff_log_lines_during_outage=backoff_lines,
            queue_after=drained,
        )
    )

    for worker in workers:
        assert worker.process.poll() is None, f"{worker.name} died\n{cluster.output()}"
        assert cpu_during[worker.name] < CPU_SHARE_LIMIT * outage, (
            f"{worker.name} used {cpu_during[worker.name]:.1f}s of CPU in a {outage:.0f}s "
            "outage: it retries without backing off"
        )
        assert backoff_lines[worker.name] <= _backoff_line_limit(outage), (
            f"{worker.name} logged {backoff_lines[worker.name]} back-off lines in {outage:.0f}s"
        )
    assert {a.status for a in load.answers} <= {202, 503}, [
        a for a in load.answers if a.status not in (202, 503)
    ][:5]
    assert tally.lost == set()
    assert tally.duplicated == 0
    assert tally.stored_ids == set(accepted)
    assert {event.status for event in stored} == {"processed"}
    codes = cluster.terminate_all()
    assert set(codes.values()) == {0}, f"{codes}\n{cluster.output()}"
