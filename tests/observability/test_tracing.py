"""One trace per event, from the ingest request to the forward target (in-memory exporter)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AnyValue

from tests.support import eventually, running_service, target_server
from webhook_worker.config import Settings
from webhook_worker.observability import tracing

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_TRACEPARENT = f"00-{CALLER_TRACE}-b7ad6b7169203331-01"


def attributes(span: ReadableSpan) -> Mapping[str, AnyValue]:
    """``span.attributes``: typed optional by the SDK, but a finished span always has them."""
    assert span.attributes is not None
    return span.attributes


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(tracing.in_memory_provider(exporter))
    yield exporter
    tracing.install(None)


async def test_ingest_enqueue_process_and_forward_are_one_trace(
    spans: InMemorySpanExporter, backend_settings: Settings
) -> None:
    async with target_server() as target, running_service(backend_settings) as service:
        await service.runtime.tool_service.create(
            {
                "id": "traced",
                "auth": {"type": "none"},
                "mode": "store_and_forward",
                "forward": {"url": target.url},
            }
        )
        response = await service.post(
            orjson.dumps({"a": 1}),
            tool_id="traced",
            sign=False,
            headers={"traceparent": CALLER_TRACEPARENT},
        )
        event_id = response.json()["event_id"]
        await service.settled(event_id)

        def finished(kind: SpanKind) -> list[ReadableSpan]:
            return [s for s in spans.get_finished_spans() if s.kind == kind]

        async def consumer_done() -> bool:
            return bool(finished(SpanKind.CONSUMER))

        await eventually(consumer_done, what="the consumer span to end")

    by_kind = {kind: finished(kind) for kind in SpanKind}
    [server] = by_kind[SpanKind.SERVER]
    [producer] = by_kind[SpanKind.PRODUCER]
    [consumer] = by_kind[SpanKind.CONSUMER]
    forwards = [s for s in by_kind[SpanKind.CLIENT] if attributes(s).get("http.request.method")]
    [forward] = forwards
    writes = [s for s in by_kind[SpanKind.CLIENT] if attributes(s).get("db.operation.name")]

    # The caller's trace is continued end to end.
    for span in (server, producer, consumer, forward):
        assert format(span.context.trace_id, "032x") == CALLER_TRACE
    assert producer.parent is not None and consumer.parent is not None
    assert forward.parent is not None
    assert producer.parent.span_id == server.context.span_id
    assert consumer.parent.span_id == producer.context.span_id
    assert forward.parent.span_id == consumer.context.span_id

    assert attributes(server)["http.response.status_code"] == 202
    assert attributes(producer)["messaging.message.id"] == event_id
    assert attributes(producer)["messaging.operation.type"] == "send"
    assert attributes(consumer)["messaging.operation.type"] == "process"
    assert attributes(consumer)["webhook.tool_id"] == "traced"
    assert attributes(consumer)["webhook.status"] == "processed"
    assert attributes(forward)["http.response.status_code"] == 200

    # The batch's database write is linked to the event it stored.
    assert any(
        link.context.span_id == consumer.context.span_id for write in writes for link in write.links
    )

    # The target got the trace context of the forward span, not the caller's as it came.
    [request] = target.requests
    assert request.headers["traceparent"] != CALLER_TRACEPARENT
    assert request.headers["traceparent"].split("-")[1] == CALLER_TRACE
    assert request.headers["traceparent"].split("-")[2] == format(forward.context.span_id, "016x")


async def test_url_full_on_the_forward_span_has_its_credentials_redacted(
    spans: InMemorySpanExporter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="webhook_worker")
    password, api_key = "hook-p4ssw0rd", "k3y-0f-the-api"
    settings = Settings(data_dir=tmp_path, allow_private_forward=True)
    async with target_server() as target, running_service(settings) as service:
        base, path = target.url.rsplit("/", 1)
        url = f"{base.replace('://', f'://hook-user:{password}@')}/{path}?api_key={api_key}&page=2"
        await service.runtime.tool_service.create(
            {"id": "creds", "mode": "store_and_forward", "forward": {"url": url}}
        )
        response = await service.post(b"{}", tool_id="creds", sign=False)
        await service.settled(response.json()["event_id"])

        async def forward_span_ended() -> bool:
            return any(attributes(s).get("url.full") for s in spans.get_finished_spans())

        await eventually(forward_span_ended, what="the forward span to end")
    [forward] = [s for s in spans.get_finished_spans() if attributes(s).get("url.full")]
    expected = f"{base.replace('://', '://REDACTED:REDACTED@')}/{path}?api_key=REDACTED&page=2"
    assert attributes(forward)["url.full"] == expected
    assert attributes(forward)["http.response.status_code"] == 200
    # The target still got them: only what is shown is redacted.
    assert target.requests[0].headers["authorization"].startswith("Basic ")
    shown = json.dumps([dict(attributes(s)) for s in spans.get_finished_spans()])
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("webhook_worker"))
    assert "event processed" in ours  # the worker's log lines are there to search
    for secret in (password, api_key):
        assert secret not in shown
        assert secret not in ours


async def test_without_configuration_no_spans_and_no_traceparent(tmp_path: object) -> None:
    assert not tracing.enabled()
    assert not tracing.configure({}, "webhook-worker")
    assert not tracing.configure({"OTEL_TRACES_EXPORTER": "none"}, "webhook-worker")
    settings = Settings(data_dir=tmp_path, allow_private_forward=True)  # type: ignore[arg-type]
    async with target_server() as target, running_service(settings) as service:
        await service.runtime.tool_service.create(
            {
                "id": "plain",
                "auth": {"type": "none"},
                "mode": "store_and_forward",
                "forward": {"url": target.url},
            }
        )
        response = await service.post(b"{}", tool_id="plain", sign=False)
        await service.settled(response.json()["event_id"])
    assert "traceparent" not in target.requests[0].headers


def test_an_unknown_exporter_is_a_config_error() -> None:
    from webhook_worker.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^OTEL_TRACES_EXPORTER"):
        tracing.configure({"OTEL_TRACES_EXPORTER": "zipkin"}, "webhook-worker")


async def test_each_delivery_has_its_own_forward_span_under_the_events_consumer_span(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, allow_private_forward=True)
    async with (
        target_server() as first,
        target_server() as second,
        running_service(settings) as service,
    ):
        await service.runtime.tool_service.create(
            {
                "id": "fan",
                "destinations": [{"id": "one", "url": first.url}, {"id": "two", "url": second.url}],
            }
        )
        response = await service.post(orjson.dumps({"a": 1}), tool_id="fan", sign=False)
        await service.settled(response.json()["event_id"], "processed")

        def consumers() -> list[ReadableSpan]:
            return [s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]

        async def consumer_done() -> bool:
            return bool(consumers())

        await eventually(consumer_done, what="the consumer span to end")
    [consumer] = consumers()
    forwards = [s for s in spans.get_finished_spans() if attributes(s).get("url.full")]
    assert sorted(str(attributes(s)["webhook.destination_id"]) for s in forwards) == ["one", "two"]
    for forward in forwards:
        assert forward.parent is not None
        assert forward.parent.span_id == consumer.context.span_id
    # Each target got its own forward span's context.
    sent = {
        tuple(target.requests[0].headers["traceparent"].split("-")[1:3])
        for target in (first, second)
    }
    assert sent == {
        (format(s.context.trace_id, "032x"), format(s.context.span_id, "016x")) for s in forwards
    }
