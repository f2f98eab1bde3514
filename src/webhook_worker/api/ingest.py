"""``POST /webhooks/{tool_id}``: verify, de-duplicate, enqueue, answer. The hot path.

Plain Starlette on raw bytes: no model validation, no ORM, and the JSON body is parsed only when
the tool reads its event type, delivery id or a destination's ordering key from it. The answer
is 202 only once the queue has the event durably; when the queue is away the answer is 503 and
the sender retries.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

import jmespath.exceptions
import orjson
from opentelemetry.trace import SpanKind, StatusCode
from starlette.requests import Request
from starlette.responses import Response

from webhook_worker.api.rate_limit import RateLimiter, retry_after
from webhook_worker.api.responses import JSONResponse, error
from webhook_worker.auth import AuthError, handshake_reply
from webhook_worker.credentials import is_credential_header
from webhook_worker.errors import QueueUnavailableError
from webhook_worker.ids import new_id
from webhook_worker.observability import metrics, tracing
from webhook_worker.observability.labels import event_type as label
from webhook_worker.queue.base import EnqueueResult, Message
from webhook_worker.queue.batcher import EnqueueBatcher
from webhook_worker.tools.cache import ToolCache
from webhook_worker.tools.model import FieldSource, Tool
from webhook_worker.tools.ordering import positions

log = logging.getLogger(__name__)

_MAX_FIELD = 255
# Headers are stored with the event beside the body: capped on their own, as MAX_PAYLOAD_BYTES
# caps the body. The listener lets at most 64 KiB of headers in (api/listener.py); this cap is
# for an app served some other way, with room for what JSON escaping adds to 64 KiB.
_MAX_STORED_HEADERS = 256 * 1024
# A caller's W3C trace context, kept with the event when tracing is off (version 00 only).
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_NOT_PARSED = object()
_TOO_DEEP = object()
MAX_JSON_DEPTH = 128
"""Nesting a JSON body may have when ingest parses it (event type or delivery id read from the
body). Deeper documents are refused with 422: orjson writes at most 254 levels and Python's
encoder recurses, so a deeper payload would fail later, in the worker or in ``events show``."""


class IngestHandler:
    def __init__(
        self,
        tools: ToolCache,
        batcher: EnqueueBatcher,
        max_payload_bytes: int,
        trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = (),
        messaging_system: str = "webhook-worker",
        destination: str = "events",
    ) -> None:
        self._tools = tools
        self._batcher = batcher
        self._max_bytes = max_payload_bytes
        self._trusted_proxies = trusted_proxies
        self._limiter = RateLimiter()
        self._messaging_system = messaging_system
        self._destination = destination

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        tool_id: str = request.path_params["tool_id"]
        if tracing.enabled():
            with tracing.tracer().start_as_current_span(
                "POST /webhooks/{tool_id}",
                context=tracing.context_from_headers(request.headers),
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": "POST",
                    "http.route": "/webhooks/{tool_id}",
                    "url.path": request.url.path,
                    "webhook.tool_id": tool_id,
                },
            ) as span:
                response = await self._accept(request, tool_id)
                span.set_attribute("http.response.status_code", response.status_code)
                if response.status_code >= 500:
                    span.set_status(StatusCode.ERROR)
        else:
            response = await self._accept(request, tool_id)
        status = response.status_code
        # An unknown tool id is whatever a client typed: never a label value.
        metrics.INGEST_DURATION.labels(tool_id if status != 404 else "", str(status)).observe(
            time.perf_counter() - started
        )
        return response

    async def _accept(self, request: Request, tool_id: str) -> Response:
        live = await self._tools.find(tool_id)
        if live is None:
            return error(404, "unknown_tool", f"no tool {tool_id!r} is configured")
        tool = live.tool
        if not tool.enabled:
            return error(403, "tool_disabled", f"tool {tool_id!r} is disabled")
        if tool.allowed_ips and not self._client_allowed(request, tool):
            return error(
                403, "ip_not_allowed", "the client address is not in the tool's allowed_ips"
            )

        declared = request.headers.get("content-length")
        # isdecimal, not isdigit: int() refuses digits such as "²", which isdigit() accepts.
        if declared is not None and declared.isdecimal() and int(declared) > self._max_bytes:
            return _too_large(self._max_bytes)
        body = await self._read_body(request)
        if body is None:
            return _too_large(self._max_bytes)

        headers = request.headers
        try:
            signed_body = live.verifier.verify(headers, body, time.time())
        except AuthError as exc:
            metrics.INGEST_REJECTED.labels(tool_id=tool_id, reason="auth").inc()
            return error(401, "unauthorized", str(exc))
        # Counted only once authenticated: a limit spent by anyone who can reach the URL would
        # let them lock the provider out.
        if tool.rate_limit is not None:
            wait = self._limiter.wait(tool_id, tool.rate_limit)
            if wait:
                metrics.INGEST_REJECTED.labels(tool_id=tool_id, reason="rate_limit").inc()
                return error(
                    429,
                    "rate_limited",
                    f"tool {tool_id!r} accepts {tool.rate_limit.requests} webhooks per "
                    f"{tool.rate_limit.per:g}s; retry later",
                    headers={"Retry-After": retry_after(wait)},
                )
        reply = handshake_reply(tool, body)
        if reply is not None:
            return Response(reply.body, status_code=200, media_type=reply.media_type)

        parsed: Any = _NOT_PARSED
        if tool.event_type.needs_body or tool.delivery_id.needs_body:
            parsed = _parse_json(body)
            if parsed is _TOO_DEEP:
                metrics.INGEST_REJECTED.labels(tool_id=tool_id, reason="too_deep").inc()
                return _too_deep()
        event_type = _extract(tool.event_type, headers, parsed)
        # Seq 0 each: the queue gives the seqs as it writes the message. Free for a tool
        # without ordering keys (the body is not parsed for them).
        ordering = positions(tool, body) if parsed is _NOT_PARSED else positions(tool, body, parsed)
        delivery_id = _extract(tool.delivery_id, headers, parsed)
        replay_key = None
        if delivery_id is None:
            delivery_id = hashlib.sha256(body).hexdigest()
        elif signed_body is not None:
            # The scheme signs the body alone and the delivery id is not signed: without this, a
            # captured request could be sent again under a new delivery id (and a new event type
            # header) and be a new event. The verified signature identifies the body (it is its
            # HMAC), so it is the key, at no extra hashing. Token, bearer and basic schemes carry
            # no signature: whoever holds a captured request holds the secret and can send any
            # body, so no key would help.
            replay_key = signed_body.hex()

        stored_headers = _stored_headers(request.headers.raw, tool.secret_headers)
        if len(stored_headers) > _MAX_STORED_HEADERS:
            return error(
                431,
                "headers_too_large",
                f"the headers to store with the event exceed {_MAX_STORED_HEADERS} bytes",
            )
        message = Message(
            event_id=new_id(),
            tool_id=tool_id,
            event_type=event_type,
            delivery_id=delivery_id,
            received_at=time.time(),
            headers=stored_headers,
            body=body,
            # The caller's trace context, forwarded as it is. With tracing on, _enqueue_traced
            # puts its PRODUCER span's context (a child of the caller's) here instead.
            traceparent=_valid_traceparent(headers.get("traceparent")),
            replay_key=replay_key,
            ordering=ordering,
        )
        try:
            if tracing.enabled():
                result = await self._enqueue_traced(message)
            else:
                result = await self._batcher.submit(message)
        except QueueUnavailableError as exc:
            log.warning("queue unavailable, answering 503 for tool %s: %s", tool_id, exc)
            return error(
                503,
                "queue_unavailable",
                "the event was not accepted because the queue is unavailable; retry later",
                headers={"Retry-After": "5"},
            )
        labels = {
            "event_type": label(tool_id, event_type, tool.config.get("events")),
            "tool_id": tool_id,
        }
        if result.duplicate:
            metrics.EVENTS_DUPLICATE.labels(**labels).inc()
            return JSONResponse(
                {"event_id": result.event_id, "status": "duplicate"}, status_code=200
            )
        metrics.EVENTS_RECEIVED.labels(**labels).inc()
        return JSONResponse({"event_id": result.event_id, "status": "accepted"}, status_code=202)

    async def _enqueue_traced(self, message: Message) -> EnqueueResult:
        """Enqueue inside a PRODUCER span whose context travels with the message."""
        with tracing.tracer().start_as_current_span(
            f"send {self._destination}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": self._messaging_system,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": self._destination,
                "messaging.message.id": message.event_id,
            },
        ) as span:
            traced = replace(message, traceparent=tracing.traceparent(span))
            result = await self._batcher.submit(traced)
            if result.duplicate:
                span.set_attribute("webhook.duplicate_of", result.event_id)
            return result

    async def _read_body(self, request: Request) -> bytes | None:
        """The body, or None once it exceeds MAX_PAYLOAD_BYTES (the rest is not read)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _client_allowed(self, request: Request, tool: Tool) -> bool:
        address = self._client_address(request)
        return address is not None and any(address in network for network in tool.allowed_ips)

    def _client_address(self, request: Request) -> IPv4Address | IPv6Address | None:
        address = _parse_ip(request.client.host if request.client else "")
        # Walk X-Forwarded-For from the right while the hop is a trusted proxy. Every header
        # line counts (a proxy appends its own line after the client's), in order.
        forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
        if address is not None and forwarded and self._trusted(address):
            for hop in reversed([part.strip() for part in forwarded.split(",")]):
                address = _parse_ip(hop)
                if address is None or not self._trusted(address):
                    break
        return address

    def _trusted(self, address: IPv4Address | IPv6Address) -> bool:
        return any(address in network for network in self._trusted_proxies)


def _parse_ip(text: str) -> IPv4Address | IPv6Address | None:
    """An address, with IPv4-mapped IPv6 (``::ffff:10.0.0.1``, what a dual-stack listener
    reports for IPv4 clients) turned into IPv4 so it matches IPv4 networks."""
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _too_large(limit: int) -> Response:
    return error(413, "payload_too_large", f"the body exceeds MAX_PAYLOAD_BYTES ({limit} bytes)")


def _valid_traceparent(value: str | None) -> str | None:
    """``value`` when it is a well-formed W3C ``traceparent`` (version 00, ids not all zero);
    None otherwise, so a malformed one is dropped rather than forwarded."""
    if value is None or len(value) != 55 or _TRACEPARENT.fullmatch(value) is None:
        return None
    return value


def _parse_json(body: bytes) -> Any:
    """The parsed body; None when it is not JSON; _TOO_DEEP past MAX_JSON_DEPTH."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson's own limit (1024 levels) is past ours.
        return _TOO_DEEP if str(exc).startswith("depth limit") else None
    # Fewer opening brackets than the limit (strings included) cannot nest deeper: the common
    # case is two scans in C, and only bodies with many containers are walked.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _deeper_than(
        parsed, MAX_JSON_DEPTH
    ):
        return _TOO_DEEP
    return parsed


def _deeper_than(document: Any, limit: int) -> bool:
    """Whether ``document`` nests containers more than ``limit`` levels (no recursion)."""
    if not isinstance(document, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _too_deep() -> Response:
    return error(
        422,
        "payload_too_deep",
        f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels, the most accepted by a tool "
        "that reads its event type or delivery id from the body",
    )


def _extract(source: FieldSource, headers: Any, parsed: Any) -> str | None:
    value: Any = None
    if source.headers:
        value = next((found for name in source.headers if (found := headers.get(name))), None)
    elif source.compiled is not None and parsed is not None and parsed is not _NOT_PARSED:
        try:
            value = source.compiled.search(parsed)
        except jmespath.exceptions.JMESPathError:
            value = None
    if value is None or isinstance(value, dict | list):
        return None
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    # Bounded and free of NUL (PostgreSQL text cannot hold it): these become columns and labels.
    text = text.replace("\x00", "")[:_MAX_FIELD]
    return text or None


@functools.lru_cache(maxsize=4096)
def _header_name(raw: bytes) -> str:
    return raw.decode("latin-1").lower()


def _stored_headers(raw: Iterable[tuple[bytes, bytes]], secret_headers: frozenset[str]) -> bytes:
    stored: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = _header_name(raw_name)
        # Credentials and signatures are never stored (so never shown or logged either).
        if name in secret_headers or is_credential_header(name):
            continue
        value = raw_value.decode("latin-1")
        stored[name] = f"{stored[name]}, {value}" if name in stored else value
    return orjson.dumps(stored)
