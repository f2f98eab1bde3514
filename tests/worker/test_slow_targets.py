"""Forwarding is per event: a slow or hanging target holds a bounded share of the worker,
other tools' events keep flowing, and a forward that outlasts the reclaim idle time is not
taken for a dead worker's message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson
from sqlalchemy import func, select

from tests.support import (
    Target,
    eventually,
    running_service,
    stopped,
    uvicorn_serving_app,
)
from webhook_worker.config import Settings
from webhook_worker.observability import metrics
from webhook_worker.runtime import Runtime, open_runtime
from webhook_worker.storage.schema import events


class Gated:
    """A target that holds every request until ``gate`` opens (a hanging target that the
    test can release, so the workers stop promptly at the end)."""

    def __init__(self) -> None:
        self.target = Target()
        self.gate = asyncio.Event()
        self.held = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.held += 1
            await self.gate.wait()
        await self.target(scope, receive, send)


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """``app`` on a loopback port; yields its forward URL."""
    async with uvicorn_serving_app(app, lifespan="off") as base:
        yield f"{base}/hook"


def tool(tool_id: str, url: str, timeout: str) -> dict[str, Any]:
    return {
        "id": tool_id,
        "auth": {"type": "none"},
        "delivery_id": {"header": "X-Delivery"},
        "mode": "store_and_forward",
        "forward": {"url": url, "timeout": timeout},
        "retry": {"max_retries": 1, "initial_interval": "10s"},
    }


async def statuses(runtime: Runtime, tool_id: str) -> dict[str, int]:
    query = (
        select(events.c.status, func.count())
        .where(events.c.tool_id == tool_id)
        .group_by(events.c.status)
    )
    async with runtime.db.connect() as conn:
        return {status: int(n) for status, n in (await conn.execute(query)).all()}


async def test_a_hanging_target_does_not_stall_other_tools(backend_settings: Settings) -> None:
    # Four forwards in flight per tool, four waiting; the rest of the hanging tool's events
    # go back to the queue for a while instead of filling the worker.
    settings = replace(backend_settings, worker_concurrency=40, worker_tool_concurrency=4)
    hanging = Gated()
    async with (
        served(hanging) as hanging_url,
        served(healthy := Target()) as healthy_url,
        running_service(settings) as service,
    ):
        await service.runtime.tool_service.create(tool("stuck", hanging_url, "30s"))
        await service.runtime.tool_service.create(tool("ok", healthy_url, "5s"))
        await service.runtime.tools.load()
        deferred_before = metrics.FORWARDS_DEFERRED.labels("stuck")._value.get()

        async def send(tool_id: str, n: int) -> None:
            body = orjson.dumps({"n": n})
            headers = {"X-Delivery": f"{tool_id}-{n}"}
            response = await service.post(body, tool_id, headers=headers, sign=False)
            assert response.status_code == 202, response.text

        for n in range(60):
            await send("stuck", n)
        for n in range(60):
            await send("ok", n)

        async def healthy_done() -> bool:
            counts = await statuses(service.runtime, "ok")
            return counts.get("processed", 0) == 60

        try:
            await eventually(healthy_done, within=20, what="the healthy tool's 60 events")
            assert len(healthy.requests) == 60
            # Still hanging: the worker holds at most the lane's share of them.
            assert hanging.held <= 4 * 2
            stuck = await statuses(service.runtime, "stuck")
            assert stuck.get("processed", 0) == 0
            assert sum(stuck.values()) == 60
            deferred = metrics.FORWARDS_DEFERRED.labels("stuck")._value.get()
            assert deferred > deferred_before
        finally:
            hanging.gate.set()

        async def stuck_done() -> bool:
            counts = await statuses(service.runtime, "stuck")
            return counts.get("processed", 0) == 60

        await eventually(stuck_done, within=30, what="the released target's 60 events")
        # Each event reached the target once: deferral never tried an event twice.
        ids = [r.headers["webhook-id"] for r in hanging.target.requests]
        assert len(ids) == len(set(ids)) == 60


async def test_a_forward_longer_than_the_reclaim_idle_time_is_not_done_twice(
    backend_settings: Settings,
) -> None:
    # Messages idle for 0.3 s would be reclaimed by the second worker, but the first keeps
    # renewing what it holds while each forward takes a second.
    settings = replace(backend_settings, worker_reclaim_idle=0.3)
    slow = Target(delay=1.0)
    async with served(slow) as url, running_service(settings) as service:
        other = replace(settings, worker_consumer_name="second")
        async with open_runtime(other) as second_runtime:
            second = second_runtime.worker()
            task = asyncio.create_task(second.run())
            try:
                await service.runtime.tool_service.create(tool("slow", url, "5s"))
                await service.runtime.tools.load()
                for n in range(6):
                    body = orjson.dumps({"n": n})
                    response = await service.post(
                        body, "slow", headers={"X-Delivery": f"slow-{n}"}, sign=False
                    )
                    assert response.status_code == 202

                async def all_processed() -> bool:
                    counts = await statuses(service.runtime, "slow")
                    return counts.get("processed", 0) == 6

                await eventually(all_processed, within=30, what="6 slow forwards")
            finally:
                second.stop()
                await stopped(task)
        ids = [r.headers["webhook-id"] for r in slow.requests]
        assert len(ids) == len(set(ids)) == 6, f"forwarded more than once: {len(ids)} requests"
