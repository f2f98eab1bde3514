"""The HTTP/1.1 listener: uvicorn's httptools protocol with the limits that hold before any
authentication (HTTP_* variables, :class:`~webhook_worker.config.HttpLimits`).

httptools itself bounds nothing: headers may grow without end, a connection may stay silent or
trickle a byte at a time for ever, and any number of them may be open. h11 has a size cap but
costs the ingest hot path far more CPU than these checks do, so the limits are added here, in
the protocol, where they cost a counter per read and a timer per phase of a request:

- at most ``max_connections`` open connections; one more is answered 503 and closed at once;
- request line and headers: at most ``max_header_bytes`` (else 431 and the connection closed,
  before anything more is buffered) and ``max_headers`` lines (else 431);
- time: ``idle_timeout`` with no request under way, ``header_timeout`` for the request line and
  headers once their first byte arrived, ``body_timeout`` for the body after the headers; past
  each the connection is closed, with 408 when no answer has started.

Once a request has been read the application has it; how long the answer takes is its business.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from webhook_worker.config import HttpLimits

_IDLE, _HEAD, _BODY, _APP = range(4)


def _raw_answer(status: int, reason: str, code: str, detail: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, in the API's error shape, written
    straight to the socket where no request cycle exists to answer through."""
    body = orjson.dumps({"error": code, "detail": detail})
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def protocol(limits: HttpLimits) -> type[asyncio.Protocol]:
    """The uvicorn ``http`` protocol class that enforces ``limits``."""
    too_many = _raw_answer(
        503,
        "Service Unavailable",
        "too_many_connections",
        f"the server has {limits.max_connections} connections open (HTTP_MAX_CONNECTIONS); "
        "retry later",
    )
    head_too_large = _raw_answer(
        431,
        "Request Header Fields Too Large",
        "headers_too_large",
        f"the request line and headers exceed {limits.max_header_bytes} bytes",
    )
    headers_too_many = _raw_answer(
        431,
        "Request Header Fields Too Large",
        "headers_too_large",
        f"the request has more than {limits.max_headers} header lines",
    )
    timed_out = _raw_answer(
        408,
        "Request Timeout",
        "request_timeout",
        "the request did not arrive in time (HTTP_HEADER_TIMEOUT, HTTP_BODY_TIMEOUT)",
    )

    async def refuse_headers(scope: Any, receive: Any, send: Any) -> None:
        # An ASGI app of its own, so uvicorn's cycle answers and discards the body as usual.
        body = headers_too_many.partition(b"\r\n\r\n")[2]
        await send(
            {
                "type": "http.response.start",
                "status": 431,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    class LimitedHttpTools(HttpToolsProtocol):
        """:class:`HttpToolsProtocol` with the limits above; see the module docstring."""

        _phase = _IDLE
        _head_bytes = 0
        _heads = 0  # requests whose headers are complete, to tell a chunk that finished some
        _timer: asyncio.TimerHandle | None = None
        _deadline: float | None = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= limits.max_connections:
                # Refused before uvicorn counts it: the socket is closed as soon as the answer
                # is written, so the open connections stay at the cap.
                self.transport = transport
                self._refused = True
                transport.write(too_many)
                transport.close()
                return
            super().connection_made(transport)
            self._enter(_IDLE, limits.idle_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused or self.parser is None:
                return
            if self._phase == _IDLE:
                self._enter(_HEAD, limits.header_timeout)
            counting, heads = self._phase == _HEAD, self._heads
            super().data_received(data)
            # Counted only when the chunk completed no headers: one that did may carry body
            # bytes (or a pipelined request), which are not these headers'.
            if counting and heads == self._heads and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > limits.max_header_bytes:
                    self._answer_and_close(head_too_large)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._phase != _HEAD:  # pipelined: the next request starts in the same chunk
                self._enter(_HEAD, limits.header_timeout)

        def on_headers_complete(self) -> None:
            self._heads += 1
            self._enter(_BODY, limits.body_timeout)
            if len(self.headers) <= limits.max_headers:
                super().on_headers_complete()
                return
            # uvicorn picks the app from self.app when it starts the request's cycle.
            app, self.app = self.app, refuse_headers
            try:
                super().on_headers_complete()
            finally:
                self.app = app

        def on_message_complete(self) -> None:
            self._enter(_APP, None)
            super().on_message_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)  # uvicorn starts the next request's cycle now
            super().on_response_complete()
            if not pipelined and self._phase == _APP and not self.transport.is_closing():
                self._enter(_IDLE, limits.idle_timeout)

        def _enter(self, phase: int, timeout: float | None) -> None:
            self._phase = phase
            self._head_bytes = 0
            if timeout is None:
                self._deadline = None
                return
            self._deadline = deadline = self.loop.time() + timeout
            # One timer per connection, moved only when it would fire too late: arming and
            # cancelling one per phase would cost the hot path several microseconds a request.
            timer = self._timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = self.loop.call_at(deadline, self._check)

        def _cancel(self) -> None:
            self._deadline = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _check(self) -> None:
            """The timer: the phase's deadline, unless the phase has moved on since it was set."""
            self._timer = None
            deadline = self._deadline
            if deadline is None or self.transport.is_closing():
                return
            if self.loop.time() < deadline:
                self._timer = self.loop.call_at(deadline, self._check)
                return
            self._expired()

        def _expired(self) -> None:
            answered = self._phase == _IDLE or (
                self.cycle is not None and self.cycle.response_started and self._phase == _BODY
            )
            if answered:
                self.transport.close()
            else:
                self._answer_and_close(timed_out)

        def _answer_and_close(self, answer: bytes) -> None:
            self._cancel()
            self.transport.write(answer)
            self.transport.close()

    return LimitedHttpTools
