"""Delivery control in one worker, end to end on every backend with real local targets: a
paused destination's deliveries wait ``paused`` and go out in received order on resume; an
ordered destination sends one event of a key at a time, a failing head first, a dead head
letting the next go; ``max_in_flight`` holds against a slow target; an open circuit makes the
waiting deliveries wait without spending retries. (Several worker processes, rate windows and
crashes: tests/chaos/test_delivery_control.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest

from tests.support import Service, Target, eventually, running_service, target_server
from webhook_worker.config import RetryPolicy, Settings

TOOL = "ctl"
QUICK_RETRY = {"max_retries": 5, "initial_interval": "100ms", "max_interval": "200ms"}


@pytest.fixture
async def service(backend_settings: Settings) -> AsyncIterator[Service]:
    settings = replace(backend_settings, retry=RetryPolicy(max_retries=2, initial_interval=0.1))
    async with running_service(settings) as running:
        yield running


async def add_tool(service: Service, **destination: Any) -> None:
    await service.runtime.tool_service.create(
        {
            "id": TOOL,
            "auth": {"type": "none"},
            "delivery_id": {"header": "X-Delivery"},
            "mode": "store_only",
            "destinations": [{"id": "d", **destination}],
        }
    )
    await service.runtime.tools.load()


async def send(service: Service, body: dict[str, Any], delivery: str) -> str:
    response = await service.post(
        orjson.dumps(body), tool_id=TOOL, headers={"X-Delivery": delivery}, sign=False
    )
    assert response.status_code == 202, response.text
    return str(response.json()["event_id"])


async def delivery_of(service: Service, event_id: str) -> dict[str, Any]:
    """The event's one delivery (an empty one while none is recorded yet)."""
    response = await service.client.get(f"/api/v1/events/{event_id}")
    if response.status_code == 404:  # not stored yet
        return {"status": None, "attempts": []}
    found: list[dict[str, Any]] = response.json()["deliveries"]
    assert len(found) <= 1, found
    return found[0] if found else {"status": None, "attempts": []}


def received(target: Target) -> list[str]:
    return [request.headers["webhook-id"] for request in target.requests]


async def all_delivered(service: Service, ids: list[str], within: float = 20) -> None:
    for event_id in ids:
        await service.settled(event_id, "processed", within=within)


async def test_paused_waits_then_resume_sends_in_received_order(service: Service) -> None:
    async with target_server() as target:
        await add_tool(service, url=target.url, paused=True, max_in_flight=1)
        ids = [await send(service, {"n": n}, f"p-{n}") for n in range(6)]

        async def all_paused() -> bool | None:
            statuses = [(await delivery_of(service, i))["status"] for i in ids]
            return statuses == ["paused"] * len(ids) or None

        await eventually(all_paused, within=15, what="every delivery to be paused")
        event = (await service.client.get(f"/api/v1/events/{ids[0]}")).json()
        assert event["status"] == "retrying"
        assert target.requests == []
        assert (await delivery_of(service, ids[0]))["attempts"] == []  # waiting is no attempt

        await service.runtime.tool_service.set_paused(TOOL, "d", False)
        await service.runtime.tools.load()
        assert await service.runtime.replayer.release_paused(TOOL, "d") == len(ids)
        await all_delivered(service, ids)
        assert received(target) == ids  # in received order, each once
        # Released once: a second release finds nothing.
        assert await service.runtime.replayer.release_paused(TOOL, "d") == 0


async def test_a_delivery_parked_after_resume_is_sent_by_the_sweep(service: Service) -> None:
    """A worker that had not seen the resume yet records a delivery ``paused`` after the
    resume sent the others: the workers' sweep sends it (nothing stays paused for good)."""
    async with target_server() as target:
        await add_tool(service, url=target.url, paused=True)
        event_id = await send(service, {"n": 1}, "late")

        async def paused() -> bool | None:
            return (await delivery_of(service, event_id))["status"] == "paused" or None

        await eventually(paused, within=15, what="the delivery to be paused")
        # Resumed without releasing (as if the release ran before this delivery was parked).
        await service.runtime.tool_service.set_paused(TOOL, "d", False)
        await service.runtime.tools.load()
        await service.settled(event_id, "processed", within=30)
        assert received(target) == [event_id]


async def test_an_ordered_key_waits_for_its_failing_head(service: Service) -> None:
    # Only the head of the key may go, so the first request is the head's: it fails and is
    # retried while the events behind it wait.
    async with target_server(Target(answers=[(503, {})])) as target:
        await add_tool(service, url=target.url, ordering_key="key", retry=QUICK_RETRY)
        ids = [await send(service, {"key": "k1", "n": n}, f"o-{n}") for n in range(4)]
        await all_delivered(service, ids)
        assert received(target) == [ids[0], *ids]
        head = await delivery_of(service, ids[0])
        assert [a["outcome"] for a in head["attempts"]] == ["failed", "forwarded"]
        for event_id in ids[1:]:  # waiting for the head spent no attempt
            attempts = (await delivery_of(service, event_id))["attempts"]
            assert [a["outcome"] for a in attempts] == ["forwarded"]


async def test_a_dead_head_lets_the_next_event_of_its_key_go(service: Service) -> None:
    async with target_server(Target(answers=[(400, {})])) as target:  # 400: not retried
        await add_tool(service, url=target.url, ordering_key="key")
        first = await send(service, {"key": "k"}, "dead-head")
        await service.settled(first, "dead")
        rest = [await send(service, {"key": "k", "n": n}, f"next-{n}") for n in range(3)]
        await all_delivered(service, rest)
        assert received(target) == [first, *rest]


class Scripted(Target):
    """Answers 503 to the requests ``failing(body)`` picks, 200 to the others."""

    def __init__(self, failing: Callable[[dict[str, Any]], bool], delay: float = 0.0) -> None:
        super().__init__(delay=delay)
        self.failing = failing
        self.open = 0
        self.most_open = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.open -= 1

    def answer(self, body: bytes) -> tuple[int, dict[str, str]]:
        return (503 if self.failing(orjson.loads(body)) else 200), {}


async def test_other_keys_are_not_held_up_by_a_failing_key(service: Service) -> None:
    tries: dict[int, int] = {}

    def head_fails_three_times(body: dict[str, Any]) -> bool:
        if body["key"] != "k1" or body["n"] != 0:
            return False
        tries[0] = tries.get(0, 0) + 1
        return tries[0] <= 3

    target = Scripted(head_fails_three_times)
    async with target_server(target):
        await add_tool(service, url=target.url, ordering_key="key", retry=QUICK_RETRY)
        k1 = [await send(service, {"key": "k1", "n": n}, f"k1-{n}") for n in range(2)]
        k2 = [await send(service, {"key": "k2", "n": n}, f"k2-{n}") for n in range(3)]
        await all_delivered(service, k1 + k2)
        order = received(target)
        assert [i for i in order if i in k1] == [k1[0]] * 4 + [k1[1]]
        assert [i for i in order if i in k2] == k2
        # k2 did not wait for k1's head: all of k2 went before k1's head got through.
        head_through = len(order) - 1 - order[::-1].index(k1[0])
        assert max(order.index(i) for i in k2) < head_through


async def test_max_in_flight_holds_against_a_slow_target(service: Service) -> None:
    target = Scripted(lambda body: False, delay=0.2)
    async with target_server(target):
        await add_tool(service, url=target.url, max_in_flight=2)
        ids = [await send(service, {"n": n}, f"f-{n}") for n in range(10)]
        await all_delivered(service, ids, within=30)
        assert target.most_open == 2
        assert sorted(received(target)) == sorted(ids)


async def test_an_open_circuit_makes_deliveries_wait_without_spending_retries(
    service: Service,
) -> None:
    """The target fails for 1.5 s. Two failures open the breaker for 0.5 s at a time: during
    the outage the target sees the two that opened it and one probe per cooldown, and the
    events that waited spent no attempt."""
    loop = asyncio.get_running_loop()
    outage_ends = loop.time() + 1.5
    target = Scripted(lambda body: loop.time() < outage_ends)
    async with target_server(target):
        await add_tool(
            service,
            url=target.url,
            circuit_breaker={"failure_threshold": 2, "cooldown": "500ms"},
            retry={"max_retries": 10, "initial_interval": "100ms", "max_interval": "200ms"},
            max_in_flight=1,  # none already on its way when the circuit opens: an exact bound
        )
        ids = [await send(service, {"n": n}, f"c-{n}") for n in range(8)]

        async def opened() -> bool | None:
            return (TOOL, "d") in await service.runtime.gate.circuits() or None

        await eventually(opened, within=5, what="the circuit to open")
        await all_delivered(service, ids, within=30)
        failed = [r for r in target.requests if r.at < outage_ends]
        # The two that opened it, one probe per cooldown, one more at the outage's edge.
        assert len(failed) <= 2 + 3 + 1, [r.headers["webhook-id"] for r in failed]
        waited = 0
        for event_id in ids:
            attempts = (await delivery_of(service, event_id))["attempts"]
            waited += [a["outcome"] for a in attempts] == ["forwarded"]
        assert waited >= len(ids) - len(failed)
        assert (TOOL, "d") not in await service.runtime.gate.circuits()  # closed again
