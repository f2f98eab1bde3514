"""Fan-out: one tool, several destinations, each delivered on its own (its filter, transform,
retries, attempts and dead letters), end to end on every backend with real local targets."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from tests.support import Service, Target, eventually, running_service, target_server
from webhook_worker.auth import standard_webhooks
from webhook_worker.config import RetryPolicy, Settings
from webhook_worker.ids import new_id
from webhook_worker.queue.base import Delivery, Message
from webhook_worker.runtime import open_runtime
from webhook_worker.storage.deadletters import DeadLetterFilter, DeadLetterStore
from webhook_worker.vocabulary import DeliveryStatus, EventStatus
from webhook_worker.worker.forwarder import ForwardOutcome
from webhook_worker.worker.retry import http_failure
from webhook_worker.worker.work import Batch

FAST_RETRY = {"max_retries": 2, "initial_interval": "100ms", "max_interval": "500ms"}
SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"


@pytest.fixture
async def service(backend_settings: Settings) -> AsyncIterator[Service]:
    settings = replace(backend_settings, retry=RetryPolicy(max_retries=2, initial_interval=0.1))
    async with running_service(settings) as running:
        yield running


@pytest.fixture
async def targets() -> AsyncIterator[dict[str, Target]]:
    """Three loopback targets: ``healthy`` (200), ``failing`` (always 500), ``other`` (200)."""
    async with AsyncExitStack() as stack:
        running = {
            "healthy": await stack.enter_async_context(target_server()),
            "failing": await stack.enter_async_context(
                target_server(Target(answers=[(500, {})] * 1000))
            ),
            "other": await stack.enter_async_context(target_server()),
        }
        yield running


def fan_out_tool(targets: dict[str, Target], **fields: Any) -> dict[str, Any]:
    return {
        "id": "fan",
        "auth": {"type": "none"},
        "event_type": {"header": "X-Event"},
        "delivery_id": {"header": "X-Delivery"},
        "mode": "store_only",
        "destinations": [
            {"id": "healthy", "url": targets["healthy"].url, "signing_secret": SECRET},
            {"id": "failing", "url": targets["failing"].url, "retry": FAST_RETRY},
            {"id": "filtered", "url": targets["other"].url, "filter": "kind == 'wanted'"},
        ],
        **fields,
    }


async def send(service: Service, body: dict[str, Any], delivery: str) -> str:
    response = await service.post(
        orjson.dumps(body),
        tool_id="fan",
        headers={"X-Event": "push", "X-Delivery": delivery},
        sign=False,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["event_id"])


def deliveries(event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["destination_id"]: d for d in event["deliveries"]}


def counted(destination: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "webhook_deliveries_total",
        {"tool_id": "fan", "destination_id": destination, "outcome": outcome},
    )
    return value or 0.0


async def test_each_destination_is_delivered_on_its_own(
    service: Service, targets: dict[str, Target]
) -> None:
    delivered_before = counted("healthy", "delivered")
    await service.runtime.tool_service.create(fan_out_tool(targets))
    ids = [await send(service, {"kind": "other", "n": n}, f"d-{n}") for n in range(4)]
    events = [await service.settled(event_id, "dead") for event_id in ids]

    # The healthy destination got each event exactly once, signed with its own secret.
    received = [r.headers["webhook-id"] for r in targets["healthy"].requests]
    assert sorted(received) == sorted(ids)
    for request in targets["healthy"].requests:
        headers = request.headers
        when = int(headers["webhook-timestamp"])
        expected = standard_webhooks.sign(SECRET, headers["webhook-id"], when, request.body)
        assert headers["webhook-signature"] == expected
    # The failing one was tried three times per event (max_retries 2), then dead-lettered.
    tried = [r.headers["webhook-id"] for r in targets["failing"].requests]
    assert sorted(tried) == sorted(ids * 3)
    # The filtered one was never sent anything.
    assert targets["other"].requests == []

    for event in events:
        by_destination = deliveries(event)
        assert by_destination["healthy"]["status"] == "delivered"
        assert [a["outcome"] for a in by_destination["healthy"]["attempts"]] == ["forwarded"]
        assert by_destination["failing"]["status"] == "dead"
        assert [a["outcome"] for a in by_destination["failing"]["attempts"]] == [
            "failed",
            "failed",
            "dead",
        ]
        assert {a["http_status"] for a in by_destination["failing"]["attempts"]} == {500}
        assert by_destination["filtered"]["status"] == "ignored"
        # The event is dead because one of its deliveries is (SPEC).
        assert event["status"] == "dead"
        assert event["processed_at"] is not None

    letters = (await service.client.get("/api/v1/dlq", params={"tool_id": "fan"})).json()
    assert sorted(letter["event_id"] for letter in letters["items"]) == sorted(ids)
    assert {letter["destination_id"] for letter in letters["items"]} == {"failing"}
    assert {letter["error_class"] for letter in letters["items"]} == {"http_5xx"}
    assert counted("healthy", "delivered") - delivered_before == 4


async def test_retrying_a_delivery_dead_letter_sends_to_that_destination_only(
    service: Service, targets: dict[str, Target]
) -> None:
    await service.runtime.tool_service.create(fan_out_tool(targets))
    event_id = await send(service, {"kind": "wanted"}, "only-one")
    await service.settled(event_id, "dead")
    assert len(targets["healthy"].requests) == len(targets["other"].requests) == 1

    targets["failing"].answers.clear()  # the failing destination is fixed
    [letter] = (await service.client.get("/api/v1/dlq")).json()["items"]
    response = await service.client.post(f"/api/v1/dlq/{letter['id']}/retry")
    assert response.status_code == 202, response.text
    event = await service.settled(event_id, "processed")

    assert deliveries(event)["failing"]["status"] == "delivered"
    # The other destinations, already delivered, were not sent the event again.
    assert len(targets["healthy"].requests) == len(targets["other"].requests) == 1
    retried = (await service.client.get(f"/api/v1/dlq/{letter['id']}")).json()
    assert retried["status"] == "resolved"


async def test_replay_of_one_destination_and_of_all(
    service: Service, targets: dict[str, Target]
) -> None:
    tool = fan_out_tool(targets)
    tool["destinations"] = tool["destinations"][:1] + tool["destinations"][2:]  # no failing
    await service.runtime.tool_service.create(tool)
    event_id = await send(service, {"kind": "wanted"}, "replayed")
    await service.settled(event_id, "processed")

    url = f"/api/v1/events/{event_id}/replay"
    response = await service.client.post(url, json={"destination_id": "filtered"})
    assert response.status_code == 202, response.text

    async def recorded_twice() -> bool:
        event = await service.settled(event_id, "processed")
        return len(deliveries(event)["filtered"]["attempts"]) == 2

    # Recorded, not only received: a replay asked for while a delivery is being made does not
    # send it again when that attempt succeeds (docs/processing.md, "Replay").
    await eventually(recorded_twice, what="the replay to one destination to be recorded")
    assert len(targets["other"].requests) == 2
    assert len(targets["healthy"].requests) == 1

    response = await service.client.post(url)
    assert response.status_code == 202

    async def all_again() -> bool:
        return len(targets["other"].requests) == 3 and len(targets["healthy"].requests) == 2

    await eventually(all_again, what="the replay to every destination")
    event = await service.settled(event_id, "processed")
    assert [a["attempt"] for a in deliveries(event)["filtered"]["attempts"]] == [1, 2, 3]

    unknown = await service.client.post(url, json={"destination_id": "nope"})
    assert unknown.status_code == 400
    assert "destination_id" in unknown.json()["detail"]


async def test_replaying_ignored_events_reaches_a_destination_added_since(
    service: Service, targets: dict[str, Target]
) -> None:
    tool = fan_out_tool(targets)
    tool["destinations"] = [tool["destinations"][2]]  # only the filtered one
    await service.runtime.tool_service.create(tool)
    ids = [await send(service, {"kind": "other", "n": n}, f"ign-{n}") for n in range(3)]
    for event_id in ids:
        event = await service.settled(event_id, "ignored")
        assert deliveries(event)["filtered"]["status"] == "ignored"

    # The filter is widened: a bulk replay of the ignored events, counted first.
    tool["destinations"][0]["filter"] = "kind == 'other'"
    await service.runtime.tool_service.replace("fan", tool)
    await service.runtime.tools.load()
    replay = {"tool_id": "fan", "status": "ignored"}
    response = await service.client.post("/api/v1/events/replay", json={**replay, "dry_run": True})
    assert response.json() == {"matched": 3}
    assert targets["other"].requests == []
    response = await service.client.post("/api/v1/events/replay", json=replay)
    assert response.json() == {"requeued": 3}
    for event_id in ids:
        event = await service.settled(event_id, "processed")
        assert deliveries(event)["filtered"]["status"] == "delivered"
    assert sorted(r.headers["webhook-id"] for r in targets["other"].requests) == sorted(ids)


async def test_a_destination_transform_changes_only_what_it_is_sent(
    service: Service, targets: dict[str, Target]
) -> None:
    tool = fan_out_tool(targets, transform="{kind: kind, n: n}", mode="transform_and_store")
    tool["destinations"] = [
        {"id": "whole", "url": targets["healthy"].url},
        {"id": "short", "url": targets["other"].url, "transform": "{only: n}"},
    ]
    await service.runtime.tool_service.create(tool)
    event_id = await send(service, {"kind": "x", "n": 7, "noise": True}, "transformed")
    event = await service.settled(event_id, "processed")

    assert event["payload"] == {"kind": "x", "n": 7}  # the tool's transform is stored
    assert orjson.loads(targets["healthy"].requests[0].body) == {"kind": "x", "n": 7}
    assert orjson.loads(targets["other"].requests[0].body) == {"only": 7}


async def test_a_bulk_dead_letter_retry_by_destination_counts_first(
    service: Service, targets: dict[str, Target]
) -> None:
    await service.runtime.tool_service.create(fan_out_tool(targets))
    ids = [await send(service, {"kind": "other", "n": n}, f"bulk-{n}") for n in range(3)]
    for event_id in ids:
        await service.settled(event_id, "dead")
    targets["failing"].answers.clear()

    by_destination = {"destination_id": "failing"}
    response = await service.client.post(
        "/api/v1/dlq/retry", json={**by_destination, "dry_run": True}
    )
    assert response.json() == {"matched": 3}
    response = await service.client.post(
        "/api/v1/dlq/retry", json={"destination_id": "healthy", "dry_run": True}
    )
    assert response.json() == {"matched": 0}
    response = await service.client.post("/api/v1/dlq/retry", json=by_destination)
    assert response.json() == {"requeued": 3}
    for event_id in ids:
        await service.settled(event_id, "processed")
    assert len(targets["healthy"].requests) == 3


async def test_two_failing_destinations_retry_each_on_its_own_schedule(
    service: Service,
) -> None:
    async with (
        target_server(Target(answers=[(500, {})] * 2)) as twice,
        target_server(Target(answers=[(503, {})])) as once,
    ):
        retry = {"max_retries": 3, "initial_interval": "100ms", "max_interval": "300ms"}
        await service.runtime.tool_service.create(
            {
                "id": "fan",
                "destinations": [
                    {"id": "twice", "url": twice.url, "retry": retry},
                    {"id": "once", "url": once.url, "retry": retry},
                ],
            }
        )
        event_id = await send(service, {"n": 1}, "two-retries")
        event = await service.settled(event_id, "processed")
    # Each destination was retried until it answered 200, and then left alone.
    assert [r.headers["webhook-id"] for r in twice.requests] == [event_id] * 3
    assert [r.headers["webhook-id"] for r in once.requests] == [event_id] * 2
    outcomes = {d: [a["outcome"] for a in v["attempts"]] for d, v in deliveries(event).items()}
    assert outcomes == {"twice": ["failed", "failed", "forwarded"], "once": ["failed", "forwarded"]}


async def test_a_disabled_destination_gets_nothing_and_one_removed_while_waiting_is_let_go(
    service: Service, targets: dict[str, Target]
) -> None:
    slow_retry = {"max_retries": 3, "initial_interval": "1s", "max_interval": "1s"}
    tool = {
        "id": "fan",
        "destinations": [
            {"id": "healthy", "url": targets["healthy"].url},
            {"id": "failing", "url": targets["failing"].url, "retry": slow_retry},
            {"id": "off", "url": targets["other"].url, "enabled": False},
        ],
    }
    await service.runtime.tool_service.create(tool)
    event_id = await send(service, {"n": 1}, "removed")
    event = await service.settled(event_id, "retrying")
    assert deliveries(event)["failing"]["status"] == "retrying"
    assert deliveries(event)["failing"]["next_attempt_at"] is not None
    assert "off" not in deliveries(event)

    # The failing destination is removed while its delivery waits for the retry.
    tool["destinations"] = [tool["destinations"][0]]
    await service.runtime.tool_service.replace("fan", tool)
    event = await service.settled(event_id, "processed")
    assert deliveries(event)["failing"]["status"] == "ignored"
    assert len(targets["failing"].requests) == 1
    assert targets["other"].requests == []


async def test_a_late_failure_never_undoes_a_delivery_another_worker_recorded(
    backend_settings: Settings,
) -> None:
    # Worker A's lease ran out while its attempt hung; worker B took the message over and
    # delivered it. A's late 503 is kept as history, and nothing is sent again.
    async with open_runtime(backend_settings, migrate_first=True) as runtime:
        await runtime.tool_service.create(
            {"id": "late", "destinations": [{"id": "d", "url": "http://127.0.0.1:9/hook"}]}
        )
        await runtime.tools.load()
        processor = runtime.processor()
        message = Message(
            event_id=new_id(),
            tool_id="late",
            event_type=None,
            delivery_id="late-1",
            received_at=time.time(),
            headers=b"{}",
            body=b"{}",
        )
        [mine] = (await processor.store([Delivery(message, "1", 1)])).to_forward
        [theirs] = (await processor.store([Delivery(message, "2", 2)])).to_forward
        theirs.outcome = ForwardOutcome(1.0, 200, None)
        await processor.record(Batch(to_forward=[theirs]))
        mine.outcome = ForwardOutcome(1.0, 503, http_failure(503))
        late = Batch(to_forward=[mine])
        await processor.record(late)

        event = await runtime.events.get(message.event_id)
        assert [(d.destination_id, d.status) for d in event.deliveries] == [
            ("d", DeliveryStatus.DELIVERED)
        ]
        assert event.status is EventStatus.PROCESSED
        assert sorted(a.outcome for a in event.attempts) == ["failed", "forwarded"]
        assert await DeadLetterStore(runtime.db).count(DeadLetterFilter(tool_id="late")) == 0
        # The retry A scheduled finds the delivery done and sends nothing.
        [(retry, _)] = late.retry
        again = await processor.store([retry])
        assert again.to_forward == [] and again.done == [retry]
