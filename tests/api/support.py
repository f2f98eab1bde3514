"""Helpers the API tests share: the real app behind a real uvicorn server on a free port, and
the app called straight through ASGI with raw headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.types import Message

from tests.support import uvicorn_serving_app
from webhook_worker.api.app import create_app
from webhook_worker.runtime import Runtime


@asynccontextmanager
async def uvicorn_serving(runtime: Runtime, **config: Any) -> AsyncIterator[str]:
    """The app on ``runtime`` served by uvicorn (lifespan running) on a loopback port, in this
    event loop, for the ``with`` block; yields the base URL. ``config`` goes to uvicorn.Config
    (e.g. ``h11_max_incomplete_event_size``, ``http="h11"``)."""
    async with uvicorn_serving_app(create_app(runtime), **config) as url:
        yield url


@asynccontextmanager
async def started_app(runtime: Runtime) -> AsyncIterator[Starlette]:
    """The app on ``runtime`` with its lifespan running, to call directly (:func:`asgi_post`)."""
    app = create_app(runtime)
    async with app.router.lifespan_context(app):
        yield app


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def asgi_post(
    app: Starlette,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes | list[bytes],
    client: tuple[str, int] = ("127.0.0.1", 4000),
) -> Answer:
    """POST straight into the ASGI app: ``headers`` go in as they are (duplicates, any bytes, no
    Content-Length unless given), and a list ``body`` arrives in that many chunks. Whatever the
    app raises propagates, so a crash fails the test rather than hiding behind a 500."""
    chunks = body if isinstance(body, list) else [body]
    messages = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": client,
        "server": ("test", 80),
    }
    sent: list[Message] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return Answer(
        start["status"],
        {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])},
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
    )
