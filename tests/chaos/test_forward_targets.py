"""Four tools forward to four targets on loopback, their events interleaved in one stream: a
healthy target, a slow one (answers after a second, within its tool's timeout), one that
accepts and never answers, one that resets every connection.

- One slow target cannot stall the worker: every healthy and slow event is forwarded while the
  hanging target still holds the first attempt of each of its events open (none of them has
  reached its tool's forward timeout yet, none is resolved).
- Per-tool timeouts and retry policies hold: the hanging tool's events time out after its
  ``forward.timeout``, are retried ``max_retries`` times and dead-lettered as ``timeout``; the
  resetting tool's events likewise as ``connection_error``. Nothing stays stuck: the queue ends
  empty, and each target saw each of its events exactly as often as the policy says.
"""

from __future__ import annotations

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
    attempt_outcomes,
    dead_letter_classes,
    record,
    stored_events,
    until,
)
from tests.chaos.targets import HangingTarget, ResettingTarget, raw_target
from tests.conftest import REDIS_URL
from tests.support import target_server
from webhook_worker.storage.database import Database

HANG_RETRIES = 1
RESET_RETRIES = 2
SLOW_ANSWER = 1.0
NEVER = {"max_elapsed_time": "1000h"}
"""RETRY_TIME_SCALE shrinks max_elapsed_time too; this keeps it out of the way."""


def _tool_of(n: int) -> str:
    if n % 20 == 0:
        return "hang"
    if n % 20 == 10:
        return "reset"
    if n % 10 == 5:
        return "slow"
    return "healthy"


async def test_hanging_and_resetting_targets_do_not_hold_up_healthy_tools(
    start_cluster: ClusterFactory,
    postgres_db: Database,
    postgres_server_url: str,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    sizes: Sizes,
) -> None:
    hang_timeout = sizes.hang_timeout
    cluster = start_cluster(
        postgres_server_url,
        redis_addr=REDIS_URL.split("://", 1)[1].split("/", 1)[0],
        redis_prefix=redis_prefix,
        ALLOW_PRIVATE_FORWARD="true",
        RETRY_TIME_SCALE="0.01",
        # Messages held by a worker waiting on the hanging target are not someone else's to
        # take over: reclaiming them would only re-send to the target.
        WORKER_RECLAIM_IDLE=f"{4 * hang_timeout:g}s",
    )
    probe = QueueProbe(redis=redis_client, prefix=redis_prefix)
    cluster.migrate()
    started = time.monotonic()
    await cluster.start_api()

    async with (
        target_server() as healthy,
        target_server() as slow,
        raw_target(HangingTarget()) as hang,
        raw_target(ResettingTarget()) as reset,
        httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as client,
    ):
        slow.delay = SLOW_ANSWER
        definitions = {
            "healthy": ({"url": healthy.url, "timeout": "5s"}, {}),
            "slow": ({"url": slow.url, "timeout": f"{5 * SLOW_ANSWER:g}s"}, {}),
            "hang": (
                {"url": hang.url, "timeout": f"{hang_timeout:g}s"},
                {"max_retries": HANG_RETRIES},
            ),
            "reset": ({"url": reset.url, "timeout": "5s"}, {"max_retries": RESET_RETRIES}),
        }
        for tool_id, (forward, retry) in definitions.items():
            await add_tool(
                client,
                {
                    "id": tool_id,
                    "auth": {"type": "none"},
                    "mode": "store_and_forward",
                    "forward": forward,
                    "retry": {"initial_interval": "1s", **NEVER, **retry},
                },
            )
        # The workers start knowing every tool.
        workers = [await cluster.start_worker() for _ in range(2)]
        load = Load(client)
        await load.run(range(sizes.forward_events), tool=_tool_of)
        sent_at = time.monotonic()
        ids_of: dict[str, set[str]] = {}
        for event_id, n in load.accepted.items():
            ids_of.setdefault(_tool_of(n), set()).add(event_id)

        async def statuses() -> dict[str, str]:
            return {e.id: e.status for e in await stored_events(postgres_db, load.tag)}

        async def healthy_tools_done() -> bool:
            forwarded = {r.headers.get("webhook-id") for r in [*healthy.requests, *slow.requests]}
            flowing = ids_of["healthy"] | ids_of["slow"]
            if not flowing <= forwarded:
                return False
            status = await statuses()
            return all(status.get(event_id) == "processed" for event_id in flowing)

        await until(
            healthy_tools_done,
            within=hang_timeout * (HANG_RETRIES + 1),
            what="the healthy and slow tools' events to be forwarded while the hanging tool's "
            "are unresolved",
            interval=0.25,
            details=cluster.output,
        )
        healthy_done_s = time.monotonic() - sent_at
        hang_ended_then = hang.ended
        status_then = await statuses()
        hang_status_then = Counter(status_then[e] for e in ids_of["hang"])
        # Healthy tools flowed while every hanging forward was still waiting for its timeout.
        assert hang_ended_then == 0, (
            f"{hang_ended_then} forwards to the hanging target had already timed out when the "
            f"healthy tools' events were done ({healthy_done_s:.1f}s): they waited for it"
        )
        assert set(hang_status_then) <= {"pending", "retrying"}, hang_status_then

        async def failing_tools_settled() -> bool:
            status = await statuses()
            failing = ids_of["hang"] | ids_of["reset"]
            return all(status.get(event_id) == "dead" for event_id in failing)

        await until(
            failing_tools_settled,
            within=6 * hang_timeout * (HANG_RETRIES + 1) + 60,
            what="the hanging and resetting tools' events to be dead-lettered",
            interval=0.5,
            details=cluster.output,
        )
        failing_done_s = time.monotonic() - sent_at
        drained = await until(probe.drained, within=60, what="the queue to empty")
        received: dict[str, Counter[str | None]] = {
            "healthy": Counter(r.headers.get("webhook-id") for r in healthy.requests),
            "slow": Counter(r.headers.get("webhook-id") for r in slow.requests),
            "hang": Counter(hang.requests),
            "reset": Counter(reset.requests),
        }

    stored = await stored_events(postgres_db, load.tag)
    tried = await attempt_outcomes(postgres_db)
    dead = await dead_letter_classes(postgres_db)
    tally = Tally(load, stored, started)
    record(
        tally.summary(
            "forward-targets",
            events_per_tool={tool: len(ids) for tool, ids in ids_of.items()},
            hang_timeout_s=hang_timeout,
            healthy_and_slow_forwarded_after_s=round(healthy_done_s, 1),
            hang_attempts_ended_by_then=hang_ended_then,
            hang_and_reset_dead_after_s=round(failing_done_s, 1),
            forwards_received={tool: sum(c.values()) for tool, c in received.items()},
            queue_after=drained,
        )
    )

    # Every event stored once; each target saw its events as its tool's policy says.
    assert load.statuses() == {202: sizes.forward_events}
    assert tally.lost == set()
    assert tally.duplicated == 0
    for tool in ("healthy", "slow"):
        assert set(received[tool]) == ids_of[tool], tool
    for tool, retries, error_class in (
        ("hang", HANG_RETRIES, "timeout"),
        ("reset", RESET_RETRIES, "connection_error"),
    ):
        assert received[tool] == dict.fromkeys(ids_of[tool], retries + 1), tool
        assert {dead[e] for e in ids_of[tool]} == {error_class}, tool
        assert {tuple(c for _, c in tried[e]) for e in ids_of[tool]} == {
            (error_class,) * (retries + 1)
        }, tool
    for worker in workers:
        assert worker.process.poll() is None, cluster.output()
    codes = cluster.terminate_all()
    assert set(codes.values()) == {0}, f"{codes}\n{cluster.output()}"
