"""The two helper servers of a benchmark, each run as a process of its own:

- ``python -m webhook_worker.bench.servers ceiling PORT`` (the tool definition, secret included,
  as one JSON line on stdin): the **ceiling**, a bare handler on the same HTTP stack as the API
  (Starlette on uvicorn with the API's uvicorn settings, on uvloop) that reads the body, verifies
  the signature with the tool's own verifier and answers 202. Nothing is queued or stored; what
  it sustains is as fast as an ingest on this stack can be on this machine.
- ``python -m webhook_worker.bench.servers sink PORT``: the target of a forward benchmark's
  destinations, each at a path of its own (``/d/<destination id>``). It answers every request
  200 and counts, per path, the requests and the distinct ``webhook-id`` headers (the event id,
  the same on a retry); ``GET /count`` answers ``{"<destination id>": {"received", "distinct",
  "last_at"}, ...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from webhook_worker.api.responses import JSONResponse, error
from webhook_worker.auth import AuthError, build_verifier
from webhook_worker.ids import new_id
from webhook_worker.tools.model import Tool, parse_tool


def ceiling_app(tool: Tool) -> Starlette:
    """Read the body, verify it, answer as ingest does: no queue, no database."""
    verifier = build_verifier(tool.auth)

    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            verifier.verify(request.headers, body, time.time())
        except AuthError as exc:
            return error(401, "unauthorized", str(exc))
        return JSONResponse({"event_id": new_id(), "status": "accepted"}, status_code=202)

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/webhooks/{tool_id}", receive, methods=["POST"]),
            Route("/health/live", live, methods=["GET"]),
        ]
    )


SINK_PREFIX = "/d/"
"""The sink's path for destination ``x`` is ``/d/x``."""


class Sink:
    """A plain ASGI app (no framework, so the target is never the bottleneck)."""

    def __init__(self) -> None:
        self.paths: dict[str, _Counts] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            await _answer(send, 200, json.dumps(self.count()).encode())
            return
        more = True
        while more:
            message = await receive()
            more = bool(message.get("more_body"))
        path: str = scope["path"]
        counts = self.paths.get(path)
        if counts is None:
            counts = self.paths[path] = _Counts()
        counts.received += 1
        counts.last_at = time.time()
        for name, value in scope["headers"]:
            if name == b"webhook-id":
                counts.distinct.add(value)
        await _answer(send, 200, b"")

    def count(self) -> dict[str, dict[str, Any]]:
        return {
            path.removeprefix(SINK_PREFIX): {
                "received": counts.received,
                "distinct": len(counts.distinct),
                "last_at": counts.last_at,
            }
            for path, counts in self.paths.items()
        }


class _Counts:
    __slots__ = ("distinct", "last_at", "received")

    def __init__(self) -> None:
        self.received = 0
        self.distinct: set[bytes] = set()
        self.last_at: float | None = None


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(app: Any, port: int, *, lifespan: Literal["auto", "on", "off"] = "auto") -> None:
    """Serve ``app`` on 127.0.0.1 with the uvicorn settings ``webhook-worker api`` uses."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan=lifespan,
    )
    server = uvicorn.Server(config)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(server.serve())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(server.serve())


def main(argv: list[str]) -> None:
    role, port = argv[0], int(argv[1])
    if role == "ceiling":
        serve(ceiling_app(parse_tool(json.loads(sys.stdin.readline()))), port)
    elif role == "sink":
        serve(Sink(), port, lifespan="off")
    else:
        raise SystemExit(f"unknown server {role!r}: expected ceiling or sink")


if __name__ == "__main__":
    main(sys.argv[1:])
