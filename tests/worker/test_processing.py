"""Processing modes, retries and the dead letter queue, end to end: real app, real queues,
a real HTTP target on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest

from tests.support import (
    Service,
    Target,
    eventually,
    running_service,
    serving,
    target_server,
)
from webhook_worker.config import RetryPolicy, Settings
from webhook_worker.errors import ToolConfigError
from webhook_worker.runtime import open_runtime
from webhook_worker.storage.deadletters import DeadLetterFilter, DeadLetterStore
from webhook_worker.vocabulary import DeadLetterStatus

FAST_RETRY = {"max_retries": 3, "initial_interval": "200ms", "max_interval": "2s"}


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    async with target_server() as running:
        yield running


@pytest.fixture
async def service(backend_settings: Settings) -> AsyncIterator[Service]:
    settings = replace(backend_settings, retry=RetryPolicy(max_retries=2, initial_interval=0.1))
    async with running_service(settings) as running:
        yield running


async def add_forwarding_tool(
    service: Service, target: Target, tool_id: str = "fwd", **fields: Any
) -> None:
    definition: dict[str, Any] = {
        "id": tool_id,
        "auth": {"type": "none"},
        "event_type": {"header": "X-Event"},
        "delivery_id": {"header": "X-Delivery"},
        "mode": "store_and_forward",
        "forward": {"url": target.url, "timeout": "2s"},
        "retry": FAST_RETRY,
        **fields,
    }
    await service.runtime.tool_service.create(definition)


async def send(
    service: Service, body: dict[str, Any], tool_id: str = "fwd", event: str = "push"
) -> str:
    response = await service.post(
        orjson.dumps(body),
        tool_id=tool_id,
        headers={"X-Event": event, "X-Delivery": orjson.dumps(body).hex()[:60]},
        sign=False,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["event_id"])


def outcomes(event: dict[str, Any]) -> list[str]:
    return [attempt["outcome"] for attempt in event["attempts"]]


async def test_store_and_forward_sends_the_event_with_its_identity_and_signature(
    service: Service, target: Target
) -> None:
    secret = "whsec_" + base64.b64encode(b"forward-signing-key").decode()
    await add_forwarding_tool(
        service,
        target,
        forward={"url": target.url, "signing_secret": secret, "headers": {"X-Team": "ops"}},
    )
    event_id = await send(service, {"hello": "world"})
    event = await service.settled(event_id)
    assert event["status"] == "processed"
    assert outcomes(event) == ["forwarded"]
    assert event["attempts"][0]["http_status"] == 200

    [request] = target.requests
    assert orjson.loads(request.body) == {"hello": "world"}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == event_id
    assert request.headers["x-webhook-event-type"] == "push"
    assert request.headers["x-team"] == "ops"
    signed = f"{event_id}.{request.headers['webhook-timestamp']}.".encode() + request.body
    expected = hmac.new(b"forward-signing-key", signed, hashlib.sha256).digest()
    assert request.headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()


async def test_a_target_failing_twice_gets_the_event_on_the_third_attempt(
    service: Service, target: Target
) -> None:
    target.answers = [(500, {}), (503, {})]
    await add_forwarding_tool(service, target)
    event_id = await send(service, {"n": 1})
    event = await service.settled(event_id)
    assert event["status"] == "processed"
    assert outcomes(event) == ["failed", "failed", "forwarded"]
    assert [a["error_class"] for a in event["attempts"]] == ["http_5xx", "http_5xx", None]
    assert [a["attempt"] for a in event["attempts"]] == [1, 2, 3]
    # Exponential spacing, with the ±20 % jitter: about 200 ms, then about 400 ms.
    gaps = [b.at - a.at for a, b in zip(target.requests, target.requests[1:], strict=False)]
    assert 0.16 <= gaps[0] <= 0.6
    assert 0.32 <= gaps[1] <= 1.0
    assert all(r.headers["webhook-id"] == event_id for r in target.requests)


async def test_a_4xx_answer_dead_letters_after_one_attempt(
    service: Service, target: Target
) -> None:
    target.answers = [(400, {})]
    await add_forwarding_tool(service, target)
    event_id = await send(service, {"n": 2})
    event = await service.settled(event_id)
    assert event["status"] == "dead"
    assert outcomes(event) == ["dead"]
    assert len(target.requests) == 1
    [letter] = (await DeadLetterStore(service.runtime.db).list(DeadLetterFilter())).items
    assert letter.event_id == event_id
    assert letter.error_class == "http_4xx"
    assert letter.retryable is False
    assert "400" in letter.error


async def test_a_target_that_always_fails_is_dead_lettered_after_max_retries(
    service: Service, target: Target
) -> None:
    target.answers = [(500, {})] * 10
    await add_forwarding_tool(service, target, retry={**FAST_RETRY, "initial_interval": "50ms"})
    event_id = await send(service, {"n": 3})
    event = await service.settled(event_id, "dead")
    assert outcomes(event) == ["failed", "failed", "failed", "dead"]  # 1 try + 3 retries
    assert len(target.requests) == 4
    store = DeadLetterStore(service.runtime.db)
    [letter] = (await store.list(DeadLetterFilter(tool_id="fwd"))).items
    assert (letter.error_class, letter.retryable) == ("http_5xx", True)


async def test_retry_after_is_honoured(service: Service, target: Target) -> None:
    target.answers = [(429, {"Retry-After": "1"})]
    await add_forwarding_tool(service, target)
    event_id = await send(service, {"n": 4})
    event = await service.settled(event_id)
    assert outcomes(event) == ["failed", "forwarded"]
    assert event["attempts"][0]["error_class"] == "http_429"
    assert target.requests[1].at - target.requests[0].at >= 0.95


async def test_unreachable_target_is_a_retryable_connection_error(service: Service) -> None:
    unreachable = Target(url="http://127.0.0.1:9/hook")  # the discard port: nothing listens
    await add_forwarding_tool(
        service, unreachable, retry={**FAST_RETRY, "max_retries": 1, "initial_interval": "10ms"}
    )
    event = await service.settled(await send(service, {"n": 5}), "dead")
    assert [a["error_class"] for a in event["attempts"]] == ["connection_error", "connection_error"]


async def test_a_dead_letter_retried_after_the_target_is_fixed_is_processed(
    service: Service, target: Target
) -> None:
    target.answers = [(400, {})]
    await add_forwarding_tool(service, target)
    event_id = await send(service, {"n": 6})
    await service.settled(event_id, "dead")
    store = DeadLetterStore(service.runtime.db)
    [letter] = (await store.list(DeadLetterFilter())).items

    response = await service.client.post(f"/api/v1/dlq/{letter.id}/retry")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "retrying"
    again = await service.client.post(f"/api/v1/dlq/{letter.id}/retry")
    assert again.status_code == 409  # already on its way

    event = await service.settled(event_id, "processed")
    assert outcomes(event) == ["dead", "forwarded"]
    assert (await store.get(letter.id)).status == "resolved"
    assert (await store.get(letter.id)).retry_count == 1


async def test_a_dead_letter_that_fails_again_keeps_one_dead_letter(
    service: Service, target: Target
) -> None:
    target.answers = [(400, {}), (422, {})]
    await add_forwarding_tool(service, target)
    event_id = await send(service, {"n": 7})
    await service.settled(event_id, "dead")
    store = DeadLetterStore(service.runtime.db)
    [letter] = (await store.list(DeadLetterFilter())).items
    assert (await service.client.post(f"/api/v1/dlq/{letter.id}/retry")).status_code == 202

    async def failed_again() -> bool:
        current = await store.get(letter.id)
        return current.status == "pending" and current.retry_count == 1

    await eventually(failed_again, what="the dead letter to come back")
    letters = (await store.list(DeadLetterFilter())).items
    assert [item.id for item in letters] == [letter.id]
    assert "422" in letters[0].error


async def test_bulk_retry_by_filter_and_discard(service: Service, target: Target) -> None:
    target.answers = [(400, {})] * 3
    await add_forwarding_tool(service, target)
    await add_forwarding_tool(service, target, tool_id="other")
    ids = [await send(service, {"n": n}) for n in range(2)]
    other = await send(service, {"n": 99}, tool_id="other")
    for event_id in [*ids, other]:
        await service.settled(event_id, "dead")

    response = await service.client.post("/api/v1/dlq/retry", json={"tool_id": "fwd"})
    assert response.json() == {"requeued": 2}
    for event_id in ids:
        await service.settled(event_id, "processed")

    listing = (await service.client.get("/api/v1/dlq?tool_id=other")).json()
    [letter] = listing["items"]
    discarded = await service.client.delete(f"/api/v1/dlq/{letter['id']}")
    assert discarded.status_code == 200
    assert discarded.json()["status"] == "discarded"
    again = await service.client.post("/api/v1/dlq/retry", json={"tool_id": "other"})
    assert again.json() == {"requeued": 0}
    assert (await service.client.get(f"/api/v1/dlq/{letter['id']}")).json()["event"]["id"] == other


async def test_transform_filter_and_per_event_overrides(service: Service, target: Target) -> None:
    await service.runtime.tool_service.create(
        {
            "id": "shape",
            "auth": {"type": "none"},
            "event_type": {"header": "X-Event"},
            "mode": "transform_and_store",
            "filter": "action != 'deleted'",
            "transform": "{repo: repository.name, by: sender.login}",
            "events": {"ping": {"mode": "store_only", "transform": None, "filter": None}},
        }
    )
    body = {"action": "opened", "repository": {"name": "ww"}, "sender": {"login": "ada"}}
    event = await service.settled(await send(service, body, tool_id="shape", event="pull"))
    assert event["status"] == "processed"
    assert event["payload"] == {"repo": "ww", "by": "ada"}
    assert event["raw_payload"] == body

    ignored = await service.settled(
        await send(service, {**body, "action": "deleted"}, tool_id="shape", event="pull")
    )
    assert ignored["status"] == "ignored"
    assert outcomes(ignored) == ["ignored"]

    ping = await service.settled(await send(service, {"zen": "hi"}, tool_id="shape", event="ping"))
    assert ping["payload"] == {"zen": "hi"}
    assert "raw_payload" not in ping


async def test_a_transform_on_a_non_json_body_is_dead_lettered_not_retried(
    service: Service,
) -> None:
    await service.runtime.tool_service.create(
        {
            "id": "needs-json",
            "auth": {"type": "none"},
            "mode": "transform_and_store",
            "transform": "a",
        }
    )
    response = await service.post(b"not json", tool_id="needs-json", sign=False)
    event = await service.settled(response.json()["event_id"])
    assert event["status"] == "dead"
    assert event["attempts"][0]["error_class"] == "invalid_payload"


async def test_forwarded_transform_sends_the_transformed_json(
    service: Service, target: Target
) -> None:
    await add_forwarding_tool(service, target, transform="{id: id}")
    event = await service.settled(await send(service, {"id": 7, "noise": "x" * 100}))
    assert event["payload"] == {"id": 7}
    assert orjson.loads(target.requests[0].body) == {"id": 7}


async def test_replay_runs_a_processed_event_again(service: Service, target: Target) -> None:
    await add_forwarding_tool(service, target)
    event_id = await send(service, {"n": 8})
    await service.settled(event_id)
    response = await service.client.post(f"/api/v1/events/{event_id}/replay")
    assert response.status_code == 202

    async def forwarded_twice() -> bool:
        return len(target.requests) == 2

    await eventually(forwarded_twice, what="the replayed forward")
    event = await service.settled(event_id, "processed")
    assert outcomes(event) == ["forwarded", "forwarded"]
    assert (await service.client.post("/api/v1/events/nope/replay")).status_code == 404


async def test_a_retry_scheduled_before_a_worker_restart_happens_once_after_it(
    backend_settings: Settings, target: Target
) -> None:
    target.answers = [(503, {})]
    retry = {"max_retries": 3, "initial_interval": "1s", "max_interval": "1s"}
    async with running_service(backend_settings) as first:
        await add_forwarding_tool(first, target, retry=retry)
        event_id = await send(first, {"n": 9})
        await first.settled(event_id, "retrying")
    # The worker is gone while the retry waits; a new one (new process, same stores) takes over.
    async with running_service(backend_settings) as second:
        event = await second.settled(event_id, "processed")
        assert outcomes(event) == ["failed", "forwarded"]

        # Nothing is left that could forward it a third time.
        queue = second.runtime.queue

        async def drained() -> bool:
            return await queue.depth() == 0 and await queue.scheduled_count() == 0

        await eventually(drained, what="the queue to drain")
    assert len(target.requests) == 2


async def test_retryable_dead_letters_are_retried_automatically_up_to_the_cap(
    backend_settings: Settings, target: Target
) -> None:
    target.answers = [(500, {})] * 2
    settings = replace(backend_settings, dlq_auto_retry_interval=1.0, dlq_auto_retry_max=2)
    async with running_service(settings) as service:
        await add_forwarding_tool(service, target, retry={"max_retries": 0})
        event_id = await send(service, {"n": 10})
        event = await service.settled(event_id, "processed", within=20)
        assert outcomes(event) == ["dead", "dead", "forwarded"]
        [letter] = (await DeadLetterStore(service.runtime.db).list(DeadLetterFilter())).items
        assert (letter.status, letter.retry_count) == ("resolved", 2)


async def test_automatic_retries_stop_at_the_cap(
    backend_settings: Settings, target: Target
) -> None:
    target.answers = [(500, {})] * 10
    settings = replace(backend_settings, dlq_auto_retry_interval=1.0, dlq_auto_retry_max=1)
    async with running_service(settings) as service:
        await add_forwarding_tool(service, target, retry={"max_retries": 0})
        event_id = await send(service, {"n": 11})
        store = DeadLetterStore(service.runtime.db)

        async def retried_once_and_back() -> bool:
            letters = (await store.list(DeadLetterFilter(status=DeadLetterStatus.PENDING))).items
            return bool(letters) and letters[0].retry_count == 1

        await eventually(retried_once_and_back, within=20, what="one automatic retry")
        assert len(target.requests) == 2
        assert (await service.runtime.events.get(event_id)).status == "dead"


async def test_a_forwarded_event_redelivered_after_a_crash_is_not_forwarded_again(
    backend_settings: Settings, target: Target
) -> None:
    # No worker runs here: the test plays a worker that forwards, records, then dies before
    # acknowledging; the message comes back to another consumer.
    settings = replace(backend_settings, worker_reclaim_idle=0.2)
    async with open_runtime(settings, migrate_first=True) as runtime:
        await runtime.tool_service.create(
            {
                "id": "fwd",
                "auth": {"type": "none"},
                "mode": "store_and_forward",
                "forward": {"url": target.url},
            }
        )
        async with serving(runtime) as client:
            response = await client.post("/webhooks/fwd", content=b'{"once": true}')
        event_id = response.json()["event_id"]
        processor = runtime.processor()
        [delivery] = await runtime.queue.receive(10, 1)
        batch = await processor.store([delivery])
        for work in batch.to_forward:
            await processor.forward_one(work)
        await processor.record(batch)
        assert len(target.requests) == 1  # ...and here the worker dies, never acknowledging

        redelivered = await eventually(
            lambda: runtime.queue.reclaim(10), within=10, what="the unacknowledged message"
        )
        again = await processor.store(redelivered)
        for work in again.to_forward:
            await processor.forward_one(work)
        await processor.record(again)
        assert [d.message.event_id for d in again.done] == [event_id]
        assert len(target.requests) == 1
        event = await runtime.events.get(event_id)
        assert [attempt.outcome for attempt in event.attempts] == ["forwarded"]


async def test_filter_follows_jmespath_truth_where_zero_is_true(service: Service) -> None:
    await service.runtime.tool_service.create(
        {
            "id": "truth",
            "auth": {"type": "none"},
            "event_type": {"header": "X-Event"},
            "filter": "n",
        }
    )
    zero = await service.settled(await send(service, {"n": 0}, tool_id="truth"))
    empty = await service.settled(await send(service, {"n": []}, tool_id="truth"))
    assert (zero["status"], empty["status"]) == ("processed", "ignored")


async def test_replaying_a_dead_event_resolves_its_dead_letter(
    service: Service, target: Target
) -> None:
    target.answers = [(400, {})]
    await add_forwarding_tool(service, target)
    event_id = await send(service, {"n": 12})
    await service.settled(event_id, "dead")
    assert (await service.client.post(f"/api/v1/events/{event_id}/replay")).status_code == 202
    await service.settled(event_id, "processed")
    [letter] = (await DeadLetterStore(service.runtime.db).list(DeadLetterFilter())).items
    assert letter.status == "resolved"


async def test_a_private_target_is_refused_without_allow_private_forward(
    backend_settings: Settings, target: Target
) -> None:
    settings = replace(backend_settings, allow_private_forward=False)
    async with running_service(settings) as service:
        # A literal loopback address is refused when the tool is written...
        with pytest.raises(ToolConfigError, match="ALLOW_PRIVATE_FORWARD") as refused:
            await add_forwarding_tool(service, target)
        assert refused.value.field == "forward.url"
        # ...and a name that resolves to it when the event is forwarded.
        by_name = {"url": target.url.replace("127.0.0.1", "localhost"), "timeout": "2s"}
        await add_forwarding_tool(service, target, forward=by_name)
        event = await service.settled(await send(service, {"n": 13}), "dead")
    assert event["attempts"][0]["error_class"] == "forbidden_target"
    assert "ALLOW_PRIVATE_FORWARD" in event["attempts"][0]["error"]
    assert target.requests == []
