"""Odd but possible requests through the real ingest endpoint, on the embedded SQLite backend and
on PostgreSQL with Redis Streams: each gets 202 (stored intact, byte for byte) or a clear 4xx
with a JSON error, never a 500; every stored one also shows through ``GET /api/v1/events/{id}``.

What is stored, whatever the Content-Type (SPEC: the body as received): the body's exact bytes.
The event's ``payload`` is that body as JSON when the bytes parse as JSON, else as text (invalid
UTF-8 replaced); the content type is kept among the stored headers and does not change parsing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from tests.api.support import uvicorn_serving
from tests.support import SECRET, Service, running_service, stopped
from webhook_worker.config import Settings
from webhook_worker.runtime import Runtime, open_runtime
from webhook_worker.storage.events import EventFilter
from webhook_worker.storage.schema import events

pytestmark = pytest.mark.parametrize(
    "backend_settings", ["sqlite", "postgresql+redis"], indirect=True
)

LIMIT = 5 * 1024 * 1024  # MAX_PAYLOAD_BYTES' default
HUGE = 64 * 1024


@pytest.fixture
async def service(backend_settings: Settings) -> AsyncIterator[Service]:
    assert backend_settings.max_payload_bytes == LIMIT
    async with running_service(backend_settings) as running:
        await running.add_tool()  # "gh": GitHub, signed, type and delivery id from headers
        await running.add_tool("open", provider="generic", auth={"type": "none"})
        await running.add_tool(
            "paths",
            provider="generic",
            auth={"type": "none"},
            event_type={"path": "type"},
            delivery_id={"path": "id"},
        )
        yield running


def signature(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


async def raw_body(runtime: Runtime, event_id: str) -> bytes:
    async with runtime.db.connect() as conn:
        body = await conn.scalar(select(events.c.body).where(events.c.id == event_id))
    assert isinstance(body, bytes), event_id
    return body


async def accepted(service: Service, response: httpx.Response, body: bytes) -> dict[str, Any]:
    """The stored event of a 202, after checking it holds ``body`` exactly and that the
    management API shows it (200, the SPEC shape)."""
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["status"] == "accepted"
    event = await service.stored(answer["event_id"])
    assert await raw_body(service.runtime, answer["event_id"]) == body
    shown = await service.client.get(f"/api/v1/events/{answer['event_id']}")
    assert shown.status_code == 200, shown.text[:300]
    assert orjson.loads(shown.content)["id"] == answer["event_id"]
    return event


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert set(answer) == {"error", "detail"}
    assert answer["error"] == code


async def test_empty_body_is_stored_empty(service: Service) -> None:
    response = await service.post(b"", tool_id="open", sign=False)
    event = await accepted(service, response, b"")
    assert event["payload"] == ""
    assert event["delivery_id"] == hashlib.sha256(b"").hexdigest()
    # A signed empty body verifies too (the signature covers zero bytes).
    signed = await service.post(b"", headers={"X-GitHub-Delivery": "empty-1"})
    assert (await accepted(service, signed, b""))["delivery_id"] == "empty-1"


async def test_invalid_utf8_body_is_stored_byte_exact(service: Service) -> None:
    body = b'{"a": "\xff\xfe\xc3\x28"}\x80'
    event = await accepted(service, await service.post(body, tool_id="paths", sign=False), body)
    assert event["payload"] == body.decode("utf-8", errors="replace")
    assert event["event_type"] is None


@pytest.mark.parametrize(
    ("content_type", "body", "payload"),
    [
        ("application/x-www-form-urlencoded", b"a=1&b=%C3%A9&c", "a=1&b=%C3%A9&c"),
        ("text/plain; charset=utf-8", b'{"looks": "like json"}', {"looks": "like json"}),
        ("application/octet-stream", b"\x00\x01\x02\xff", "\x00\x01\x02\ufffd"),
        (None, b'{"no": "content type"}', {"no": "content type"}),
        (None, b"plain words", "plain words"),
    ],
)
async def test_any_content_type_is_stored_as_received(
    service: Service, content_type: str | None, body: bytes, payload: Any
) -> None:
    headers = [("Content-Type", content_type)] if content_type else []
    response = await service.client.post("/webhooks/open", content=body, headers=headers)
    event = await accepted(service, response, body)
    assert event["payload"] == payload
    if content_type:
        assert event["headers"]["content-type"] == content_type
    else:
        assert "content-type" not in event["headers"]


async def test_huge_header_values(service: Service) -> None:
    big = "h" * HUGE
    body = b'{"huge": "headers"}'
    response = await service.post(
        body, headers={"X-Large": big, "X-GitHub-Delivery": "d" * HUGE, "X-GitHub-Event": big}
    )
    event = await accepted(service, response, body)
    assert event["headers"]["x-large"] == big
    # Extracted fields are bounded: they become columns and metric labels.
    assert event["delivery_id"] == "d" * 255
    assert event["event_type"] == "h" * 255

    refused(
        await service.post(
            body, headers={"X-Hub-Signature-256": "sha256=" + "0" * HUGE}, sign=False
        ),
        401,
        "unauthorized",
    )


async def test_deeply_nested_json(service: Service) -> None:
    # 100,000 levels: beyond any parser's depth limit. Kept and shown as text by a tool that
    # does not parse the body; refused (422) by one that reads fields from it.
    deepest = b"[" * 100_000 + b"]" * 100_000
    event = await accepted(
        service, await service.post(deepest, tool_id="open", sign=False), deepest
    )
    assert event["payload"] == deepest.decode()
    assert event["event_type"] is None
    refused = await service.post(deepest, tool_id="paths", sign=False)
    assert (refused.status_code, refused.json()["error"]) == (422, "payload_too_deep")

    # 600 levels parse as JSON but are deeper than the response encoder's own limit (254).
    deep = b'{"type": "nest", "id": 7, "x": ' + b"[" * 600 + b"]" * 600 + b"}"
    refused = await service.post(deep, tool_id="paths", sign=False)
    assert (refused.status_code, refused.json()["error"]) == (422, "payload_too_deep")
    response = await service.post(deep, tool_id="open", sign=False)
    event = await accepted(service, response, deep)
    shown = await service.client.get(f"/api/v1/events/{event['id']}")
    assert orjson.loads(shown.content)["payload"] == orjson.loads(deep)
    listed = await service.client.get("/api/v1/events", params={"tool_id": "open"})
    assert listed.status_code == 200
    assert any(item["id"] == event["id"] for item in orjson.loads(listed.content)["items"])


async def test_two_signature_headers_the_first_counts(service: Service) -> None:
    body = orjson.dumps({"delivery": uuid.uuid4().hex})
    wrong = "sha256=" + "0" * 64
    first_valid = await service.client.post(
        "/webhooks/gh",
        content=body,
        headers=[("X-Hub-Signature-256", signature(body)), ("X-Hub-Signature-256", wrong)],
    )
    event = await accepted(service, first_valid, body)
    assert "x-hub-signature-256" not in event["headers"]

    second_valid = await service.client.post(
        "/webhooks/gh",
        content=body + b" ",
        headers=[("X-Hub-Signature-256", wrong), ("X-Hub-Signature-256", signature(body + b" "))],
    )
    refused(second_valid, 401, "unauthorized")


async def test_two_delivery_id_headers_the_first_counts(service: Service) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    body = b'{"two": "ids"}'
    headers = [
        ("X-Hub-Signature-256", signature(body)),
        ("X-GitHub-Delivery", first),
        ("X-GitHub-Delivery", second),
    ]
    response = await service.client.post("/webhooks/gh", content=body, headers=headers)
    event = await accepted(service, response, body)
    assert event["delivery_id"] == first
    assert event["headers"]["x-github-delivery"] == f"{first}, {second}"

    again = await service.post(body, headers={"X-GitHub-Delivery": first})
    assert again.status_code == 200
    assert again.json() == {"event_id": event["id"], "status": "duplicate"}
    # Another body (the same one would be a replay of the first, see test_replay_protection.py)
    # under the second id: that id was never recorded.
    other_body = b'{"two": "ids", "other": true}'
    other = await service.post(other_body, headers={"X-GitHub-Delivery": second})
    await accepted(service, other, other_body)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_at_the_limit_is_accepted_and_one_byte_over_is_413(
    service: Service, chunked: bool
) -> None:
    def content(size: int, fill: bytes) -> bytes | AsyncIterator[bytes]:
        data = fill * size
        if not chunked:
            return data

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, size, 64 * 1024):
                yield data[start : start + 64 * 1024]

        return chunks()

    at = await service.client.post("/webhooks/open", content=content(LIMIT, b"a"))
    assert ("content-length" in at.request.headers) is not chunked
    await accepted(service, at, b"a" * LIMIT)

    over = await service.client.post("/webhooks/open", content=content(LIMIT + 1, b"b"))
    refused(over, 413, "payload_too_large")
    assert await service.runtime.events.count(EventFilter(tool_id="open")) == 1


@asynccontextmanager
async def uvicorn_service(
    settings: Settings, tool_id: str, **config: Any
) -> AsyncIterator[tuple[Runtime, str]]:
    """A runtime with an open tool and a worker, served by uvicorn (``config`` goes to it)."""
    async with open_runtime(settings, migrate_first=True) as runtime:
        await runtime.tool_service.create({"id": tool_id, "auth": {"type": "none"}})
        worker = runtime.worker()
        task = asyncio.create_task(worker.run())
        try:
            async with uvicorn_serving(runtime, **config) as base_url:
                yield runtime, base_url
        finally:
            worker.stop()
            await stopped(task)


async def test_headers_beyond_what_uvicorn_accepts(backend_settings: Settings) -> None:
    """Through a real uvicorn. Its h11 parser refuses a header block past its limit with its own
    400 before the app runs; the default parser (httptools) has no such limit, and the app then
    refuses to store the 1 MiB header (431; the real server's listener stops it earlier still,
    tests/api/test_server_limits.py)."""
    header = b"v" * (1024 * 1024)
    async with uvicorn_service(backend_settings, "h11", http="h11") as (runtime, base_url):
        status, raw = await asyncio.to_thread(send_raw, f"{base_url}/webhooks/h11", header)
        assert status == 400, raw[:300]
        assert await runtime.queue.depth() == 0

    async with uvicorn_service(backend_settings, "default") as (runtime, base_url):
        status, raw = await asyncio.to_thread(send_raw, f"{base_url}/webhooks/default", header)
        assert status == 431, raw[:300]
        assert orjson.loads(raw.split(b"\r\n\r\n", 1)[1])["error"] == "headers_too_large"
        assert await runtime.queue.depth() == 0


def send_raw(url: str, header: bytes) -> tuple[int, bytes]:
    """POST ``{}`` with one ``X-Big`` header over a plain socket; the status code and the whole
    answer. A server that refuses may close before reading everything, so a reset after its
    answer has arrived is expected."""
    host, port, path = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)", url).groups()  # type: ignore[union-attr]
    request = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n".encode()
        + b"X-Big: "
        + header
        + b"\r\nContent-Length: 2\r\n\r\n{}"
    )
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(request)
            while not _complete(answer) and (chunk := sock.recv(65536)):
                answer += chunk
        except ConnectionError:
            pass
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1]), answer


def _complete(answer: bytes) -> bool:
    head, separator, body = answer.partition(b"\r\n\r\n")
    if not separator:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False
