"""The load generator, a process of its own: ``python -m webhook_worker.bench.load``.

It speaks raw HTTP/1.1 with keep-alive over asyncio streams (uvloop when installed): one request
in flight per connection, each request built from pre-encoded bytes where only the changing
field of the body, the signature and the delivery id differ. A general HTTP client costs more CPU
per request than the server under test on a 2-core machine; this one reports its own CPU time
so its share is visible. It only ever connects to 127.0.0.1.

The parent talks to it in JSON lines. stdin: the :class:`LoadPlan`; stdout: ``{"warmup": ...}``
once the warm-up is done; stdin: ``go`` when the parent is ready (for example once every
warm-up event is stored); stdout: ``{"result": ...}``. A warm-up and a measured phase each open
fresh connections before their clock starts.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from webhook_worker.bench.payloads import UNIQUE_LENGTH, payload

HOST: Final = "127.0.0.1"
"""The only address load is ever sent to."""
USER_AGENT: Final = "GitHub-Hookshot/webhook-worker-bench"


@dataclass(frozen=True, slots=True)
class Signing:
    """How a request proves its sender: an HMAC of the body in ``header`` (``None``: unsigned)."""

    header: str | None = None
    secret: str = ""
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    timestamp_header: str | None = None
    """When set, the signed content is ``{unix time}.{body}`` and this header carries the time."""


@dataclass(frozen=True, slots=True)
class LoadPlan:
    port: int
    path: str
    payload: str
    connections: int
    duration: float | None
    """Seconds of the measured phase; None with ``events``."""
    events: int | None = None
    """Send exactly this many requests instead of running for ``duration``."""
    rate: float | None = None
    """Requests per second over all connections; None sends as fast as answers come back."""
    warmup: float = 1.0
    timeout: float = 30.0
    signing: Signing = Signing()
    event_header: str | None = None
    delivery_header: str | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()
    host: str = HOST
    timeline: bool = False
    """Also report every latency by the second the request was due (``Phase.timeline``)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadPlan:
        data = json.loads(text)
        data["signing"] = Signing(**data["signing"])
        data["extra_headers"] = tuple(tuple(pair) for pair in data["extra_headers"])
        return cls(**data)


class RequestBuilder:
    """Builds each request's bytes: a fixed head, the per-request headers, the body."""

    def __init__(self, plan: LoadPlan) -> None:
        self._payload = payload(plan.payload)
        lines = [
            f"POST {plan.path} HTTP/1.1",
            f"Host: {plan.host}:{plan.port}",
            f"User-Agent: {USER_AGENT}",
            "Accept: */*",
            "Content-Type: application/json",
            f"Content-Length: {self._payload.size}",
        ]
        if plan.event_header:
            lines.append(f"{plan.event_header}: {self._payload.event_type}")
        lines.extend(f"{name}: {value}" for name, value in plan.extra_headers)
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        signing = plan.signing
        self._mac = (
            hmac.new(signing.secret.encode(), digestmod=signing.algorithm)
            if signing.header
            else None
        )
        self._signature_name = f"{signing.header}: {signing.prefix}".encode("latin-1")
        self._base64 = signing.encoding == "base64"
        self._timestamp_name = (
            f"{signing.timestamp_header}: ".encode("latin-1") if signing.timestamp_header else None
        )
        self._delivery_name = (
            f"{plan.delivery_header}: ".encode("latin-1") if plan.delivery_header else None
        )

    def build(self) -> bytes:
        body = self._payload.body(os.urandom(UNIQUE_LENGTH // 2).hex().encode())
        parts = [self._head]
        if self._mac is not None:
            mac = self._mac.copy()
            if self._timestamp_name is not None:
                now = str(int(time.time())).encode()
                mac.update(now + b".")
                parts += [self._timestamp_name, now, b"\r\n"]
            mac.update(body)
            digest = mac.digest()
            signature = base64.b64encode(digest) if self._base64 else digest.hex().encode()
            parts += [self._signature_name, signature, b"\r\n"]
        if self._delivery_name is not None:
            parts += [self._delivery_name, str(uuid.uuid4()).encode(), b"\r\n"]
        parts += [b"\r\n", body]
        return b"".join(parts)


@dataclass
class Phase:
    """What one phase (warm-up or measured) saw, from the client's side."""

    requests: int = 0
    """Responses received (any status)."""
    accepted: int = 0
    """Responses with status 202."""
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    """Requests that got no response, by exception class (timeouts, resets)."""
    elapsed: float = 0.0
    started_at: float = 0.0
    """Unix time the phase's clock started."""
    first_accept_at: float | None = None
    last_accept_at: float | None = None
    requests_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    """CPU time (user + system) this process spent during the phase."""
    timeline: list[list[float]] | None = None
    """With ``LoadPlan.timeline``: ``timeline[i]`` holds the latencies (ms) of the requests due
    in second ``i`` after ``started_at``."""


class _Tally:
    def __init__(self, events: int | None, timeline: bool = False) -> None:
        self.latencies: list[float] = []
        self.timeline: list[list[float]] | None = [] if timeline else None
        self.started = 0.0
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.first_accept: float | None = None
        self.last_accept: float | None = None
        self.tickets = events

    def take(self) -> bool:
        """One more request may go (always, unless a fixed number was asked for)."""
        if self.tickets is None:
            return True
        if self.tickets <= 0:
            return False
        self.tickets -= 1
        return True

    def answered(self, status: int, begun: float, latency: float) -> None:
        self.latencies.append(latency)
        if self.timeline is not None:
            second = max(0, int(begun - self.started))
            while len(self.timeline) <= second:
                self.timeline.append([])
            self.timeline[second].append(round(latency * 1000, 2))
        self.statuses[status] += 1
        if status == 202:
            now = time.time()
            if self.first_accept is None:
                self.first_accept = now
            self.last_accept = now


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> int:
    """Send one request, read its whole response; the status. ConnectionError when the server
    closes (after the answer, so the caller reconnects)."""
    writer.write(data)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        length = int(lower[at + 17 : end])
        if length:
            await reader.readexactly(length)
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.read()
        raise _Answered(status)
    if b"\r\nconnection: close" in lower:
        raise _Answered(status)
    return status


class _Answered(Exception):
    """The response came, and then the server closed the connection."""

    def __init__(self, status: int) -> None:
        self.status = status


_FAILURES = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError)


_Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connection(
    plan: LoadPlan,
    builder: RequestBuilder,
    tally: _Tally,
    opened: _Streams,
    index: int,
    started: float,
    deadline: float | None,
    rate: float | None,
) -> None:
    streams: _Streams | None = opened
    # With a rate, this connection sends requests index, index + connections, ... of the
    # schedule; request n is due n / rate seconds after the start.
    sent = 0
    due = started + index / rate if rate else 0.0
    while True:
        if rate:
            if deadline is not None and due >= deadline:
                break
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        elif deadline is not None and time.perf_counter() >= deadline:
            break
        if not tally.take():
            break
        data = builder.build()
        # With a set rate, latency counts from when the request was due, so a server that falls
        # behind shows it (no coordinated omission).
        begun = due if rate else time.perf_counter()
        sent += 1
        if rate:
            due = started + (index + sent * plan.connections) / rate
        try:
            if streams is None:
                streams = await asyncio.open_connection(plan.host, plan.port)
            async with asyncio.timeout(plan.timeout):
                status = await _exchange(*streams, data)
        except _Answered as answered:
            tally.answered(answered.status, begun, time.perf_counter() - begun)
            _closed(streams)
            streams = None
        except _FAILURES as exc:
            tally.errors[type(exc).__name__] += 1
            _closed(streams)
            streams = None
            if isinstance(exc, OSError):
                await asyncio.sleep(0.05)  # the server is away: do not spin
        else:
            tally.answered(status, begun, time.perf_counter() - begun)
    _closed(streams)


def _closed(streams: _Streams | None) -> None:
    if streams is not None:
        streams[1].close()


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    ordered = sorted(latencies)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))] * 1000, 3)

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": round(ordered[last] * 1000, 3),
        "mean": round(sum(ordered) / len(ordered) * 1000, 3),
    }


async def run_phase(
    plan: LoadPlan, duration: float | None, events: int | None = None, rate: float | None = None
) -> Phase:
    """Drive ``plan.connections`` connections for ``duration`` seconds or ``events`` requests."""
    if plan.host != HOST:
        raise ValueError(f"the load generator only sends to {HOST}, not {plan.host!r}")
    builder = RequestBuilder(plan)
    tally = _Tally(events, plan.timeline)
    connections = await asyncio.gather(
        *(asyncio.open_connection(plan.host, plan.port) for _ in range(plan.connections))
    )
    cpu_before = _cpu()
    started_at = time.time()
    started = tally.started = time.perf_counter()
    deadline = started + duration if duration is not None else None
    await asyncio.gather(
        *(
            _connection(plan, builder, tally, opened, index, started, deadline, rate)
            for index, opened in enumerate(connections)
        )
    )
    elapsed = time.perf_counter() - started
    count = sum(tally.statuses.values())
    return Phase(
        requests=count,
        accepted=tally.statuses.get(202, 0),
        statuses={str(code): n for code, n in sorted(tally.statuses.items())},
        errors=dict(tally.errors),
        elapsed=round(elapsed, 4),
        started_at=started_at,
        first_accept_at=tally.first_accept,
        last_accept_at=tally.last_accept,
        requests_per_s=round(count / elapsed, 1) if elapsed > 0 else 0.0,
        latency_ms=_percentiles(tally.latencies),
        client_cpu_s=round(_cpu() - cpu_before, 3),
        timeline=tally.timeline,
    )


async def main() -> None:
    plan = LoadPlan.from_json(await asyncio.to_thread(sys.stdin.readline))
    warmup = Phase()
    if plan.warmup > 0:
        warmup = await run_phase(plan, plan.warmup, rate=plan.rate)
    _emit({"warmup": asdict(warmup)})
    if (await asyncio.to_thread(sys.stdin.readline)).strip() != "go":
        return  # the parent gave up
    result = await run_phase(plan, plan.duration, plan.events, plan.rate)
    _emit({"result": asdict(result)})


def _emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _run() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


if __name__ == "__main__":
    _run()
