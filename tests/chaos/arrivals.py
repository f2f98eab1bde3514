"""A forward target that notes when each request arrived, and the checks that hold those
arrivals against what the database recorded of each delivery.

Arrival times are wall-clock seconds (``time.time()``), the clock the workers stamp their
outcomes with (same machine), so an arrival can be compared with the time a delivery was
recorded ``delivered``. The target serves through :func:`tests.support.uvicorn_serving_app`.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Arrival:
    event_id: str
    """The request's ``webhook-id``."""
    at: float
    """When the request reached the target (before its body was read)."""
    answered_at: float | None
    """When the target began to answer (before the first byte of it went out); None: it never
    did (stopped first)."""
    status: int
    """What the target answered, or was to answer (the client may have been gone by then)."""

    @property
    def ok(self) -> bool:
        return self.answered_at is not None and 200 <= self.status < 300


class ArrivalTarget:
    """An ASGI forward target: answers 200 after a delay drawn from ``delay`` (seconds, low and
    high), except the first request of one event in ``fail_first_every`` (chosen by a hash of
    the event id), which gets 503. Keeps every :class:`Arrival` and how many requests are open."""

    def __init__(self, delay: tuple[float, float] = (0.0, 0.0), fail_first_every: int = 0) -> None:
        self.url = ""
        self.arrivals: list[Arrival] = []
        self.open = 0
        """Requests arrived and not answered yet."""
        self._delay = delay
        self._fail_first_every = fail_first_every
        self._seen: set[str] = set()
        self._random = random.Random(0)

    def fails_first(self, event_id: str) -> bool:
        """Whether this event's first request here is answered 503."""
        every = self._fail_first_every
        return every > 0 and zlib.crc32(event_id.encode()) % every == 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        at = time.time()
        self.open += 1
        event_id = dict(scope["headers"]).get(b"webhook-id", b"").decode()
        # Decided on arrival: of two requests for one event in flight at once, the first fails.
        first = event_id not in self._seen
        self._seen.add(event_id)
        status = 503 if first and self.fails_first(event_id) else 200
        answered_at = None
        try:
            while (await receive()).get("more_body"):
                pass
            low, high = self._delay
            if high > 0:
                # The target's own latency, so that deliveries are in flight when a kill lands.
                await asyncio.sleep(self._random.uniform(low, high))
            answered_at = time.time()
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"target says %d" % status})
        finally:
            self.open -= 1
            self.arrivals.append(Arrival(event_id, at, answered_at, status))


def resent_after_recorded(
    arrivals: Iterable[Arrival], recorded: Mapping[str, float]
) -> list[Arrival]:
    """The requests that reached the target after their event's delivery to it was recorded
    ``delivered`` (``recorded``: event id -> the earliest time a ``forwarded`` attempt was
    stamped with, which is taken just before the transaction that records it).

    Sound for a correct worker: the request whose 2xx a worker records reached the target before
    that answer, hence before the stamp; a request of a worker killed earlier reached it before
    the kill, hence before a successor took the message over (``WORKER_RECLAIM_IDLE`` later) and
    sent it again. Only a second holder that planned the delivery before the record and sent it
    after (a resend the record should have prevented), or a worker planning a delivered
    destination again, gets here."""
    return [a for a in arrivals if a.event_id in recorded and a.at > recorded[a.event_id]]


def recorded_not_answered(arrivals: Iterable[Arrival], recorded: Mapping[str, float]) -> set[str]:
    """The events recorded ``delivered`` to the target that it had not answered 2xx by the time
    of the record: a delivery the worker recorded without the target's word for it."""
    answered = {
        a.event_id
        for a in arrivals
        if a.ok
        and a.answered_at is not None
        and a.event_id in recorded
        and a.answered_at < recorded[a.event_id]
    }
    return set(recorded) - answered
