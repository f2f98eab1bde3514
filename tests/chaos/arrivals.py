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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
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
    the event id), which gets 503; and, when asked, any request with probability ``fail_rate``,
    and every request while :attr:`failing` is set (an outage). Keeps every :class:`Arrival`
    and how many requests are open (and the most that ever were)."""

    def __init__(
        self,
        delay: tuple[float, float] = (0.0, 0.0),
        fail_first_every: int = 0,
        fail_rate: float = 0.0,
    ) -> None:
        self.url = ""
        self.arrivals: list[Arrival] = []
        self.open = 0
        """Requests arrived and not answered yet."""
        self.max_open = 0
        """The most requests that were ever open at once."""
        self.failing = False
        """While set, every request is answered 503 (the target is down)."""
        self._delay = delay
        self._fail_first_every = fail_first_every
        self._fail_rate = fail_rate
        self._seen: set[str] = set()
        self._random = random.Random(0)
        self._failures = random.Random(1)

    def fails_first(self, event_id: str) -> bool:
        """Whether this event's first request here is answered 503."""
        every = self._fail_first_every
        return every > 0 and zlib.crc32(event_id.encode()) % every == 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        at = time.time()
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        event_id = dict(scope["headers"]).get(b"webhook-id", b"").decode()
        # Decided on arrival: of two requests for one event in flight at once, the first fails.
        first = event_id not in self._seen
        self._seen.add(event_id)
        refused = self.failing or (first and self.fails_first(event_id))
        if self._fail_rate > 0 and self._failures.random() < self._fail_rate:
            refused = True
        status = 503 if refused else 200
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


def most_in_window(times: Iterable[float], window: float) -> int:
    """The most of ``times`` that fall in one window of ``window`` seconds, trying the window
    that starts at each of them (the fullest window always starts at one)."""
    ordered = sorted(times)
    most = 0
    end = 0
    for start, at in enumerate(ordered):
        while end < len(ordered) and ordered[end] < at + window:
            end += 1
        most = max(most, end - start)
    return most


def most_concurrent(arrivals: Iterable[Arrival]) -> int:
    """The most requests the target held at once: each from its arrival until the target
    began to answer (the sender cannot have had the answer earlier), or for good when it never
    answered. Of an answer and an arrival at the same instant, the answer counts first."""
    changes: list[tuple[float, int]] = []
    for arrival in arrivals:
        changes.append((arrival.at, 1))
        if arrival.answered_at is not None:
            changes.append((arrival.answered_at, -1))
    most = held = 0
    for _, change in sorted(changes):
        held += change
        most = max(most, held)
    return most


def first_successes(arrivals: Iterable[Arrival]) -> dict[str, Arrival]:
    """Event id -> the first request for it that the target answered 2xx (by arrival)."""
    found: dict[str, Arrival] = {}
    for arrival in sorted(arrivals, key=lambda a: a.at):
        if arrival.ok and arrival.event_id not in found:
            found[arrival.event_id] = arrival
    return found


@dataclass(frozen=True)
class Disorder:
    """Two events of one key, ``earlier`` received before ``later``, that the target saw the
    wrong way round."""

    key: str
    earlier: str
    later: str
    what: str


def out_of_order(
    received: Mapping[str, Sequence[str]], arrivals: Iterable[Arrival]
) -> list[Disorder]:
    """Per key (``received``: key -> its event ids in the order they were received), the
    neighbours that broke the key's order at the target: the later event's first 2xx came
    before the earlier's (``reordered``), or a request for the later event arrived before the
    earlier one had been answered 2xx (``overlapped``: one at a time means the next event goes
    only once the one before it is done). Events the target never answered 2xx are skipped
    here (whether every event arrived is a check of its own)."""
    arrivals = list(arrivals)
    first = first_successes(arrivals)
    earliest: dict[str, float] = {}
    for arrival in arrivals:
        earliest[arrival.event_id] = min(arrival.at, earliest.get(arrival.event_id, arrival.at))
    found = []
    for key, events in received.items():
        done = [event for event in events if event in first]
        for earlier, later in pairwise(done):
            answered = first[earlier].answered_at
            assert answered is not None  # ok implies answered
            if first[later].at < first[earlier].at:
                found.append(Disorder(key, earlier, later, "reordered"))
            elif earliest[later] < answered:
                found.append(Disorder(key, earlier, later, "overlapped"))
    return found
