"""``/metrics`` after a known sequence of events: exact counter values and labels."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Service, Target, eventually, running_service, target_server
from webhook_worker.config import Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    async with target_server() as running:
        yield running


async def test_counters_after_accepted_duplicate_retried_and_dead_lettered(
    backend_settings: Settings, target: Target
) -> None:
    tool = f"m{uuid.uuid4().hex[:8]}"
    kind = f"kind-{tool}"  # label values no other test uses: exact values, not deltas
    target.answers = [(500, {}), (200, {}), (400, {})]
    async with running_service(backend_settings) as service:
        await _tool(service, tool, target)
        before = await scrape(service.client)

        first = await _post(service, tool, kind, "d1")
        assert first.status_code == 202
        assert (await _post(service, tool, kind, "d1")).status_code == 200  # duplicate
        await service.settled(first.json()["event_id"], "processed")
        second = await _post(service, tool, kind, "d2")
        await service.settled(second.json()["event_id"], "dead")
        forged = await service.client.post(
            f"/webhooks/{tool}", content=b"{}", headers={"X-Token": "wrong", "X-Event": kind}
        )
        assert forged.status_code == 401
        assert (await service.client.get("/health")).status_code == 200

        async def acknowledged() -> Samples | None:
            # An event's outcome is written before its message is acknowledged: wait for both.
            scraped = await scrape(service.client)
            return scraped if value(scraped, "webhook_queue_depth") == 0 else None

        after = await eventually(acknowledged, what="the last message to be acknowledged")

    labels = {"event_type": kind, "tool_id": tool}
    assert value(after, "webhook_events_received_total", **labels) == 2
    assert value(after, "webhook_events_duplicate_total", **labels) == 1
    assert value(after, "webhook_events_processed_total", **labels, status="processed") == 1
    assert value(after, "webhook_events_processed_total", **labels, status="dead") == 1
    assert value(after, "webhook_ingest_rejected_total", tool_id=tool, reason="auth") == 1
    assert (
        value(
            after, "webhook_event_processing_duration_seconds_count", **labels, status="processed"
        )
        == 1
    )
    assert value(after, "webhook_dlq_entries_total", event_type=kind, reason="http_4xx") == 1
    assert (
        value(
            after, "webhook_ingest_request_duration_seconds_count", tool_id=tool, status_code="202"
        )
        == 2
    )
    assert (
        value(
            after, "webhook_ingest_request_duration_seconds_count", tool_id=tool, status_code="200"
        )
        == 1
    )
    assert (
        value(
            after, "webhook_ingest_request_duration_seconds_count", tool_id=tool, status_code="401"
        )
        == 1
    )
    assert (
        value(after, "webhook_forward_duration_seconds_count", tool_id=tool, status_class="5xx")
        == 1
    )
    assert (
        value(after, "webhook_forward_duration_seconds_count", tool_id=tool, status_class="2xx")
        == 1
    )
    assert (
        value(after, "webhook_forward_duration_seconds_count", tool_id=tool, status_class="4xx")
        == 1
    )

    # Series shared with other tests: compare with the scrape before the sequence.
    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("webhook_retry_attempts_total", attempt="1", reason="http_5xx") == 1
    assert delta("webhook_health_checks_total", component="database", status="healthy") >= 1

    # State gauges describe this deployment's database and queue.
    assert value(after, "webhook_dlq_depth") == 1
    assert value(after, "webhook_queue_depth") == 0
    assert value(after, "webhook_queue_scheduled_retries") == 0
    assert value(after, "webhook_queue_oldest_message_age_seconds") == 0
    assert value(after, "webhook_goroutines_total") > 0
    assert value(after, "webhook_memory_allocated_bytes") > 10_000_000
    assert ("webhook_gc_runs_total", frozenset()) in after
    assert ("webhook_gc_pause_duration_seconds_count", frozenset()) in after
    assert value(after, "webhook_database_pool_size") > 0


async def test_destination_backlog_on_metrics(backend_settings: Settings) -> None:
    """A destination whose delivery waits for its retry has a backlog of 1 on /metrics; one
    that delivered has none."""
    tool = f"m{uuid.uuid4().hex[:8]}"
    async with (
        target_server(Target(answers=[(500, {})] * 10)) as failing,
        target_server() as healthy,
        running_service(backend_settings) as service,
    ):
        await service.runtime.tool_service.create(
            {
                "id": tool,
                "auth": {"type": "none"},
                "event_type": {"header": "X-Event"},
                "delivery_id": {"header": "X-Delivery"},
                "mode": "store_only",
                "destinations": [
                    # Retried an hour later: the delivery stays retrying for the whole test.
                    {"id": "billing", "url": failing.url, "retry": {"initial_interval": "1h"}},
                    {"id": "audit", "url": healthy.url},
                ],
            }
        )
        response = await service.post(
            b"{}", tool_id=tool, headers={"X-Event": "push", "X-Delivery": "d1"}, sign=False
        )
        assert response.status_code == 202, response.text
        event_id = response.json()["event_id"]

        async def both_settled() -> bool:
            event = await service.settled(event_id, "retrying")
            statuses = {d["destination_id"]: d["status"] for d in event["deliveries"]}
            return statuses == {"billing": "retrying", "audit": "delivered"}

        await eventually(both_settled, what="billing retrying and audit delivered")
        after = await scrape(service.client)

    assert value(after, "webhook_destination_backlog", tool_id=tool, destination_id="billing") == 1
    assert value(after, "webhook_destination_backlog", tool_id=tool, destination_id="audit") == 0
    assert len(failing.requests) == 1 and len(healthy.requests) == 1


async def test_unknown_tool_ids_never_become_label_values(backend_settings: Settings) -> None:
    made_up = f"nope-{uuid.uuid4().hex}"
    async with running_service(backend_settings) as service:
        assert (await service.client.post(f"/webhooks/{made_up}", content=b"{}")).status_code == 404
        after = await scrape(service.client)
    assert not any(made_up in dict(labels).values() for _, labels in after)
    assert (
        value(after, "webhook_ingest_request_duration_seconds_count", tool_id="", status_code="404")
        >= 1
    )


async def _tool(service: Service, tool: str, target: Target) -> None:
    await service.runtime.tool_service.create(
        {
            "id": tool,
            "auth": {"type": "token", "header": "X-Token", "secret": "t0ken"},
            "event_type": {"header": "X-Event"},
            "delivery_id": {"header": "X-Delivery"},
            "mode": "store_and_forward",
            "forward": {"url": target.url},
            "retry": {"initial_interval": "50ms", "max_retries": 2},
        }
    )


async def _post(service: Service, tool: str, kind: str, delivery: str) -> httpx.Response:
    return await service.client.post(
        f"/webhooks/{tool}",
        content=orjson.dumps({"n": delivery}),
        headers={"X-Token": "t0ken", "X-Event": kind, "X-Delivery": delivery},
    )
