"""Delivery control in the worker: a delivery to a destination with a rate limit, a limit of
deliveries in flight, a circuit breaker or an ordering key asks the shared
:class:`~webhook_worker.control.base.Gate` before it goes, and tells it how it ended.

Each controlled destination has a *line* in this worker:

- ``ready``: deliveries waiting for the gate, first come first asked. One task per line asks
  for the head; while the gate says wait (the rate window is full, as many are in flight as
  may be, the circuit's probe is out) it asks again when the gate says it may succeed, at most
  :data:`ASK_AGAIN_MAX` later. An open circuit with a long cooldown sends the whole line back
  to the queue until the cooldown is over.
- ``in_order``: deliveries whose ordering key has an earlier event not settled yet, by key.
  They hold up nobody else; one task per worker asks the gate every :data:`POLL_INTERVAL`
  which of those keys moved on, and a key's next delivery goes back to ``ready``.

What a line holds is bounded (:data:`HOLD` ready, :data:`HOLD_IN_ORDER` waiting for their key);
beyond that deliveries go back to the queue untried for a while (``webhook_forward_deferred_total``)
without spending a retry, so a burst to a slow or limited destination waits in the queue, not
in worker memory. When the worker stops, everything held goes back to the queue at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from webhook_worker.control.base import CircuitState, Gate, Outcome, Verdict, WaitReason
from webhook_worker.errors import UnavailableError
from webhook_worker.queue.base import Position
from webhook_worker.worker.backoff import BACKOFF_CAP, BACKOFF_START, pause
from webhook_worker.worker.work import Part, part_fields

__all__ = ["Gatekeeper", "controlled", "position_of"]

log = logging.getLogger(__name__)

HOLD: Final = 64
"""Deliveries a line keeps waiting for the gate; more go back to the queue for a while."""
HOLD_IN_ORDER: Final = 256
"""Deliveries a line keeps waiting for an earlier event of their ordering key."""
ASK_AGAIN_MAX: Final = 1.0
"""The longest a line waits before asking the gate again (it may be told sooner)."""
POLL_INTERVAL: Final = 0.1
"""How often the keys that deliveries wait on are checked."""
LEASE_MARGIN: Final = 5.0
"""Seconds beyond the forward timeout after which the gate frees a slot never released (its
worker died)."""
_DEFER_MIN, _DEFER_MAX = 0.5, 30.0
"""Bounds of how long a delivery the line has no room for waits in the queue."""


def position_of(part: Part) -> Position | None:
    """The delivery's place in its destination's order, when the destination is ordered and
    the event has one (events accepted before the ``ordering_key`` was set have none)."""
    route = part.route
    if route is None or route.control.ordering_key is None:
        return None
    for position in part.message.ordering:
        if position.destination_id == part.destination_id and position.seq > 0:
            return position
    return None


def controlled(part: Part) -> bool:
    """Must this delivery go through the gate?"""
    route = part.route
    if route is None:
        return False
    control = route.control
    return control.gated or (control.ordering_key is not None and position_of(part) is not None)


@dataclass(slots=True, eq=False)
class _Line:
    tool_id: str
    destination_id: str
    limit: int
    """Deliveries this worker has in flight there at once (its share of the tool's)."""
    ready: deque[Part] = field(default_factory=deque)
    in_order: dict[str, list[tuple[int, Part]]] = field(default_factory=dict)
    """By ordering key: (position, delivery) waiting for an earlier event of the key."""
    held_in_order: int = 0
    in_flight: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return not self.ready and not self.in_order and not self.in_flight


class Gatekeeper:
    def __init__(
        self,
        gate: Gate,
        *,
        start: Callable[[Part], None],
        defer: Callable[[Part, float], None],
        share: Callable[[Part], int],
        stopping: asyncio.Event,
    ) -> None:
        """``start(part)``: send it now. ``defer(part, delay)``: back to the queue, untried,
        for ``delay`` seconds. ``share(part)``: how many of its destination's deliveries this
        worker may have in flight."""
        self._gate = gate
        self._start = start
        self._defer = defer
        self._share = share
        self._stopping = stopping
        self._lines: dict[tuple[str, str], _Line] = {}
        self._poller: asyncio.Task[None] | None = None
        self._unavailable = False

    def admit(self, part: Part) -> None:
        """Take a controlled delivery: it goes when the gate lets it."""
        key = (part.message.tool_id, part.destination_id)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line(key[0], key[1], max(1, self._share(part)))
        if len(line.ready) >= HOLD:
            self._defer(part, self._defer_delay(line, part))
            return
        line.ready.append(part)
        self._run(line)

    async def release(self, part: Part, sent: bool) -> None:
        """The delivery let go ended (``sent``: a request was made, its outcome on ``part``):
        free its slot, feed the circuit breaker, let the line's next one go."""
        line = self._lines.get((part.message.tool_id, part.destination_id))
        if line is not None:
            line.in_flight -= 1
            line.wake.set()
        route = part.route
        assert route is not None, "only deliveries with a destination are let go"
        outcome = _outcome(part) if sent else Outcome.UNSENT
        if part.slot is None and route.control.circuit_breaker is None:
            self._drop_if_idle(line)
            return
        try:
            change = await self._gate.release(
                part.message.tool_id, part.destination_id, route.control, part.slot, outcome
            )
        except UnavailableError as exc:
            # The slot is freed when its lease runs out; the breaker misses one outcome.
            log.warning("cannot release a delivery control slot: %r", exc, extra=part_fields(part))
            change = None
        finally:
            part.slot = None
            self._drop_if_idle(line)
        if change is not None:
            _circuit_changed(part, change.before, change.after)

    def stop(self) -> None:
        """Send everything held back to the queue at once (other workers take it up)."""
        for line in self._lines.values():
            while line.ready:
                self._defer(line.ready.popleft(), 0.0)
            for waiting in line.in_order.values():
                for _, part in waiting:
                    self._defer(part, 0.0)
            line.in_order.clear()
            line.held_in_order = 0
            line.wake.set()

    def held(self) -> int:
        """Deliveries waiting in this worker for the gate or for their key (for tests)."""
        return sum(len(line.ready) + line.held_in_order for line in self._lines.values())

    def _run(self, line: _Line) -> None:
        if line.task is None and not self._stopping.is_set():
            line.task = asyncio.create_task(self._ask(line), name="gatekeeper-line")

    async def _ask(self, line: _Line) -> None:
        """Ask the gate for the line's head until the line is empty."""
        backoff = BACKOFF_START
        try:
            while line.ready and not self._stopping.is_set():
                if line.in_flight >= line.limit:
                    line.wake.clear()
                    await line.wake.wait()
                    continue
                part = line.ready[0]
                route = part.route
                assert route is not None
                position = position_of(part)
                try:
                    verdict = await self._gate.acquire(
                        part.message.tool_id,
                        part.destination_id,
                        route.control,
                        position,
                        route.forward.timeout + LEASE_MARGIN,
                    )
                except UnavailableError as exc:
                    self._note_unavailable(exc)
                    await pause(self._stopping, backoff)
                    backoff = min(backoff * 2, BACKOFF_CAP)
                    continue
                backoff = BACKOFF_START
                self._note_available()
                if not line.ready or line.ready[0] is not part:
                    # Sent back to the queue while the gate was asked (the worker is stopping).
                    if verdict.go:
                        part.slot = verdict.slot
                        line.in_flight += 1
                        await self.release(part, sent=False)
                    continue
                if verdict.go:
                    line.ready.popleft()
                    self._go(line, part, verdict)
                elif verdict.reason is WaitReason.ORDERING and position is not None:
                    line.ready.popleft()
                    self._hold_in_order(line, part, position)
                elif verdict.reason is WaitReason.CIRCUIT_OPEN and verdict.wait > ASK_AGAIN_MAX:
                    # Nothing goes there before the cooldown is over: wait for it in the queue.
                    while line.ready:
                        self._defer(line.ready.popleft(), verdict.wait * random.uniform(1.0, 1.2))
                else:
                    await pause(self._stopping, min(max(verdict.wait, 0.001), ASK_AGAIN_MAX))
        finally:
            line.task = None
            if self._stopping.is_set():
                self.stop()
            self._drop_if_idle(line)

    def _go(self, line: _Line, part: Part, verdict: Verdict) -> None:
        part.slot = verdict.slot
        line.in_flight += 1
        if verdict.probe:
            _circuit_changed(part, CircuitState.OPEN, CircuitState.HALF_OPEN)
        self._start(part)

    def _hold_in_order(self, line: _Line, part: Part, position: Position) -> None:
        if line.held_in_order >= HOLD_IN_ORDER:
            self._defer(part, random.uniform(1.0, 2.0))
            return
        line.in_order.setdefault(position.key, []).append((position.seq, part))
        line.held_in_order += 1
        if self._poller is None and not self._stopping.is_set():
            self._poller = asyncio.create_task(self._poll(), name="gatekeeper-order")

    async def _poll(self) -> None:
        """Every POLL_INTERVAL: which keys that deliveries wait on moved on; a delivery whose
        turn came (or whose key the gate no longer knows) goes back to its line."""
        try:
            while not self._stopping.is_set():
                waiting = [(line, key) for line in self._lines.values() for key in line.in_order]
                if not waiting:
                    return
                await pause(self._stopping, POLL_INTERVAL)
                try:
                    nexts = await self._gate.waiting_for(
                        [(line.tool_id, line.destination_id, key) for line, key in waiting]
                    )
                except UnavailableError as exc:
                    self._note_unavailable(exc)
                    continue
                for (line, key), nxt in zip(waiting, nexts, strict=True):
                    self._move_on(line, key, nxt)
        finally:
            self._poller = None

    def _move_on(self, line: _Line, key: str, nxt: int) -> None:
        held = line.in_order.get(key)
        if not held:
            return
        # 0: the gate has no state for the key (forgotten after long idleness): all may go.
        turn = [(seq, part) for seq, part in held if nxt == 0 or seq <= nxt]
        if not turn:
            return
        rest = [(seq, part) for seq, part in held if not (nxt == 0 or seq <= nxt)]
        if rest:
            line.in_order[key] = rest
        else:
            del line.in_order[key]
        line.held_in_order -= len(turn)
        for _, part in sorted(turn, key=lambda item: item[0]):
            line.ready.append(part)
        self._run(line)

    def _defer_delay(self, line: _Line, part: Part) -> float:
        """How long a delivery the line has no room for waits in the queue: about as long as
        the line needs to go through what it holds."""
        route = part.route
        assert route is not None
        rate = route.control.rate_limit
        if rate is not None:
            delay = len(line.ready) * rate.per / rate.requests
        else:
            delay = route.forward.timeout / 4
        return min(max(delay, _DEFER_MIN), _DEFER_MAX) * random.uniform(0.8, 1.2)

    def _drop_if_idle(self, line: _Line | None) -> None:
        if line is not None and line.idle and line.task is None:
            self._lines.pop((line.tool_id, line.destination_id), None)

    def _note_unavailable(self, exc: Exception) -> None:
        if not self._unavailable:
            log.warning("delivery control unavailable, controlled deliveries wait: %r", exc)
        self._unavailable = True

    def _note_available(self) -> None:
        if self._unavailable:
            log.info("delivery control available again")
        self._unavailable = False


def _outcome(part: Part) -> Outcome:
    outcome = part.outcome
    if outcome is None:
        return Outcome.UNSENT
    failure = outcome.failure
    return Outcome.FAILURE if failure is not None and failure.retryable else Outcome.SUCCESS


_STATES = {
    CircuitState.CLOSED: "closed",
    CircuitState.HALF_OPEN: "half-open",
    CircuitState.OPEN: "open",
}


def _circuit_changed(part: Part, before: CircuitState, after: CircuitState) -> None:
    """Logged by the one worker whose delivery changed it (the gate says which)."""
    route = part.route
    assert route is not None
    breaker = route.control.circuit_breaker
    fields = {"tool_id": part.message.tool_id, "destination_id": part.destination_id}
    if after is CircuitState.OPEN:
        cooldown = breaker.cooldown if breaker is not None else 0.0
        reason = (
            f"{breaker.failure_threshold} consecutive failures"
            if before is CircuitState.CLOSED and breaker is not None
            else "the probe failed"
        )
        log.warning(
            "circuit of destination %s opened (%s): nothing is sent there for %gs",
            part.destination_id,
            reason,
            cooldown,
            extra=fields,
        )
    elif after is CircuitState.HALF_OPEN:
        log.info(
            "circuit of destination %s half-open: one probe goes", part.destination_id, extra=fields
        )
    else:
        log.info(
            "circuit of destination %s %s -> %s: deliveries flow again",
            part.destination_id,
            _STATES[before],
            _STATES[after],
            extra=fields,
        )
