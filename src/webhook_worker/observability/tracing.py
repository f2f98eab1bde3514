"""OpenTelemetry traces, configured by the standard ``OTEL_*`` variables and off without them.

One trace per event: the SERVER span of the ingest request, its PRODUCER span for the enqueue
(whose W3C ``traceparent`` travels in the queue message), the worker's CONSUMER span continuing
that context, and CLIENT spans for the forward (whose request carries ``traceparent``). The
batch's database write is a CLIENT span linked to every event it stored.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or an OTLP
endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and
``OTEL_SDK_DISABLED`` is not true. Service name, resource attributes and sampling follow the
SDK's own variables (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``).
When off, the pipeline creates no spans at all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from webhook_worker import __version__
from webhook_worker.errors import ConfigError

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACER: Tracer = trace.NoOpTracer()
_PROVIDER: TracerProvider | None = None


def enabled() -> bool:
    return _PROVIDER is not None


def tracer() -> Tracer:
    return _TRACER


def configure(environ: Mapping[str, str], service_name: str) -> bool:
    """Set tracing up from ``environ``; returns whether it is on."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter_name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    has_endpoint = any(
        environ.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    if exporter_name in ("", "none") and not (exporter_name == "" and has_endpoint):
        return False
    exporter_name = exporter_name or "otlp"
    exporter: SpanExporter
    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    elif exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: {exporter_name!r} is not supported here; use otlp, console "
            "or none"
        )
    resource = Resource.create({"service.name": service_name, "service.version": __version__})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    log.info("tracing on: exporting spans with %s", exporter_name)
    return True


def install(provider: TracerProvider | None) -> None:
    """Use ``provider`` for the pipeline's spans (None turns tracing off). Tests install one
    with an in-memory exporter."""
    global _TRACER, _PROVIDER
    _PROVIDER = provider
    _TRACER = provider.get_tracer("webhook_worker", __version__) if provider else trace.NoOpTracer()


def in_memory_provider(exporter: SpanExporter) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "webhook-worker-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def shutdown() -> None:
    """Flush spans still buffered (called when a process stops)."""
    if _PROVIDER is not None:
        _PROVIDER.shutdown()


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """The caller's trace context from ``traceparent``/``tracestate`` request headers."""
    return _PROPAGATOR.extract(carrier=headers)


def context_from_traceparent(traceparent: str | None) -> Context | None:
    if not traceparent:
        return None
    return _PROPAGATOR.extract(carrier={"traceparent": traceparent})


def traceparent(span: Span) -> str | None:
    """The W3C ``traceparent`` value that makes ``span`` the parent of what follows."""
    carrier: dict[str, Any] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    value = carrier.get("traceparent")
    return str(value) if value else None


def trace_id(span: Span) -> str | None:
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def start_consumer(
    traceparent_value: str | None,
    system: str,
    destination: str,
    attributes: Mapping[str, str | None],
) -> Span | None:
    """The worker's CONSUMER span for one event, continuing the trace its message carries.
    None when tracing is off. The caller ends it once the event is settled."""
    if _PROVIDER is None:
        return None
    span = _TRACER.start_span(
        f"process {destination}",
        context=context_from_traceparent(traceparent_value),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": system,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": destination,
            **{key: value for key, value in attributes.items() if value is not None},
        },
    )
    return span


def client_span(
    name: str,
    attributes: Mapping[str, str | int],
    parent: Span | None = None,
    links: Sequence[Span | None] = (),
) -> AbstractContextManager[Span | None]:
    """A CLIENT span (a database write, a forward) as a context manager; yields None when
    tracing is off. ``links`` ties a batch operation to the events it served."""
    if _PROVIDER is None:
        return nullcontext(None)
    context = trace.set_span_in_context(parent) if parent is not None else None
    return _TRACER.start_as_current_span(
        name,
        context=context,
        kind=SpanKind.CLIENT,
        attributes=dict(attributes),
        links=[Link(span.get_span_context()) for span in links if span is not None],
    )


def end(span: Span | None, error: str | None = None) -> None:
    if span is None:
        return
    if error is not None:
        span.set_status(StatusCode.ERROR, error)
    span.end()
