"""The worker's retention loop, end to end on every backend: with RETENTION_INTERVAL=1s, a tool
keeping its events 3 s loses the old ones and keeps its new ones and those still waiting (a
failing target retrying, a paused destination); a tool with the default keeps everything.
(The sweep itself, on given times: tests/storage/test_retention.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest

from tests.support import Service, Target, eventually, running_service, target_server
from webhook_worker.config import RetryPolicy, Settings
from webhook_worker.errors import NotFoundError
from webhook_worker.observability import metrics

SLOW_RETRY = {"max_retries": 50, "initial_interval": "30s", "max_interval": "60s"}


@pytest.fixture
async def service(backend_settings: Settings) -> AsyncIterator[Service]:
    settings = replace(backend_settings, retention_interval=1.0, retry=RetryPolicy(max_retries=50))
    async with running_service(settings) as running:
        yield running


async def add(service: Service, tool_id: str, **fields: Any) -> None:
    await service.runtime.tool_service.create(
        {
            "id": tool_id,
            "auth": {"type": "none"},
            "delivery_id": {"header": "X-Delivery"},
            "mode": "store_only",
            **fields,
        }
    )
    await service.runtime.tools.load()


async def send(service: Service, tool_id: str, delivery: str) -> str:
    response = await service.post(
        orjson.dumps({"n": delivery}),
        tool_id=tool_id,
        headers={"X-Delivery": delivery},
        sign=False,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["event_id"])


async def exists(service: Service, event_id: str) -> bool:
    try:
        await service.runtime.events.get(event_id)
    except NotFoundError:
        return False
    return True


async def test_a_short_retention_expires_settled_events_and_keeps_waiting_ones(
    service: Service,
) -> None:
    failing = Target(answers=[(503, {})] * 1000)
    async with target_server(failing), target_server() as paused_target:
        await add(service, "short", retention="3s")
        await add(service, "keep")
        await add(
            service,
            "short-failing",
            retention="3s",
            destinations=[{"id": "d", "url": failing.url, "retry": SLOW_RETRY}],
        )
        await add(
            service,
            "short-paused",
            retention="3s",
            destinations=[{"id": "d", "url": paused_target.url, "paused": True}],
        )
        old = [await send(service, "short", f"old-{n}") for n in range(3)]
        kept = [await send(service, "keep", f"keep-{n}") for n in range(2)]
        retrying = await send(service, "short-failing", "failing")
        paused = await send(service, "short-paused", "paused")
        for event_id in old + kept:
            await service.settled(event_id)
        await service.settled(retrying, "retrying")
        await service.settled(paused, "retrying")  # a paused delivery: the event waits

        async def old_ones_gone() -> bool:
            return not any([await exists(service, event_id) for event_id in old])

        await eventually(old_ones_gone, within=20, what="the short tool's old events to expire")

        new = await send(service, "short", "new")
        await service.settled(new)
        swept = metrics.RETENTION_LAST_SWEEP._value.get()

        async def swept_again() -> bool:
            return bool(metrics.RETENTION_LAST_SWEEP._value.get() > swept)

        # A sweep every second, each taking milliseconds: the next one ends well within the
        # new event's 3 s.
        await eventually(swept_again, within=10, what="another sweep")
        assert await exists(service, new)
        for event_id in [*kept, retrying, paused]:
            assert await exists(service, event_id), event_id
        assert len(paused_target.requests) == 0
