"""Ingest gives an event its place in the order of each destination with an ``ordering_key``:
through the real app into the real queue, on every backend (the messages are read back from
the queue, where the worker would take them)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

import orjson
import pytest

from tests.support import Service, eventually, serving
from webhook_worker.config import Settings
from webhook_worker.queue.base import Message, Position
from webhook_worker.runtime import open_runtime
from webhook_worker.tools import cache
from webhook_worker.tools.model import Control, Tool, parse_tool

KEYS = {"billing": "order.id", "crm": "customer"}
"""The ordering key of each destination (``audit`` has none)."""


def parse_with_keys(data: Mapping[str, Any], tool_id: str | None = None) -> Tool:
    """``parse_tool``, with the ordering keys of :data:`KEYS` on the destinations (the
    definition's ``ordering_key`` is parsed elsewhere)."""
    tool = parse_tool(data, tool_id)
    destinations = tuple(
        replace(d, control=Control(ordering_key=KEYS.get(d.id))) for d in tool.destinations
    )
    return replace(tool, destinations=destinations)


@pytest.fixture
async def service(
    backend_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Service]:
    """The app on every backend, without a worker: what ingest enqueued stays in the queue."""
    monkeypatch.setattr(cache, "parse_tool", parse_with_keys)
    async with (
        open_runtime(backend_settings, migrate_first=True) as runtime,
        serving(runtime) as client,
    ):
        running = Service(runtime, client)
        await running.add_tool(
            destinations=[
                {"id": dest, "url": f"http://127.0.0.1:9/{dest}"}
                for dest in ("billing", "audit", "crm")
            ]
        )
        yield running


async def post(service: Service, body: bytes, delivery: str | None = None) -> str:
    headers = {"X-GitHub-Event": "order", "X-GitHub-Delivery": delivery or str(uuid.uuid4())}
    response = await service.post(body, headers=headers)
    assert response.status_code in (200, 202), response.text
    event_id: str = response.json()["event_id"]
    return event_id


async def enqueued(service: Service, count: int) -> dict[str, Message]:
    got: dict[str, Message] = {}

    async def enough() -> bool:
        for delivery in await service.runtime.queue.receive(count, 0):
            got[delivery.message.event_id] = delivery.message
        return len(got) >= count

    await eventually(enough, what=f"{count} enqueued messages")
    return got


async def test_an_ordered_destination_gives_each_event_its_position(service: Service) -> None:
    first = await post(service, orjson.dumps({"order": {"id": "o-1"}, "customer": 7}))
    second = await post(service, orjson.dumps({"order": {"id": "o-1"}}), delivery="d-2")
    duplicate = await post(service, orjson.dumps({"order": {"id": "o-1"}}), delivery="d-2")
    other = await post(service, orjson.dumps({"order": {"id": "o-2"}, "customer": 7}))
    unordered = await post(service, b"not json")
    null_key = await post(service, orjson.dumps({"order": {"id": None}}))

    messages = await enqueued(service, 5)

    assert duplicate == second
    assert {event_id: m.ordering for event_id, m in messages.items()} == {
        first: (Position("billing", "o-1", 1), Position("crm", "7", 1)),
        second: (Position("billing", "o-1", 2),),
        other: (Position("billing", "o-2", 1), Position("crm", "7", 2)),
        unordered: (),
        null_key: (),
    }
