"""What a destination's delivery control is (:class:`Control`), and the :class:`Gate` that
enforces it across every worker process and host.

A worker asks the gate before each delivery to a controlled destination
(:meth:`Gate.acquire`): go, or wait (and for how long it is worth waiting before asking
again). A delivery let go holds a *slot* until the worker tells the gate how it ended
(:meth:`Gate.release`); a slot whose worker died is freed when its lease runs out, so a crash
never leaves a destination short of capacity for longer than the forward timeout.

The state is never per process: it lives in Redis beside the Redis Streams queue, or in the
database beside the database queue.

- rate limit: a sliding window over the requests themselves: a request counts from when it
  is let go until ``per`` seconds after it ended (it reaches the target somewhere in between),
  so in any window of ``per`` seconds the target sees at most ``requests``. A slow target
  therefore gets at most ``requests`` per ``per`` plus its answer time.
- max in flight: at most this many slots are held at once.
- circuit breaker: ``failure_threshold`` consecutive retryable failures open it for
  ``cooldown`` seconds (nothing is let go); then it is half-open: one delivery (the probe)
  goes; its success closes the circuit, its failure opens it again for another ``cooldown``.
- ordering: events of one ordering key carry the position the queue gave them when they were
  accepted (1, 2, 3, ... per tool, destination and key); position ``n`` goes only once every
  position before it has *settled* (delivered, dead, ignored: :meth:`Gate.settle`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

from webhook_worker.queue.base import Position
from webhook_worker.tools.model import CircuitBreaker, Control

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "Control",
    "Gate",
    "Outcome",
    "Position",
    "Verdict",
    "WaitReason",
]

ORDERING_IDLE_TTL = 30 * 24 * 3600.0
"""Seconds after its last use that a key's ordering state is forgotten (a key that is no longer
known starts free: its next event goes at once)."""


class CircuitState(enum.IntEnum):
    """The value of ``webhook_destination_circuit_state``."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class WaitReason(enum.StrEnum):
    RATE_LIMIT = "rate_limit"
    MAX_IN_FLIGHT = "max_in_flight"
    CIRCUIT_OPEN = "circuit_open"
    PROBE = "probe"
    """Half-open: the probe is out; the others wait for its answer."""
    ORDERING = "ordering"
    """An earlier event of the same ordering key has not settled yet."""


class Verdict(NamedTuple):
    go: bool
    slot: str | None = None
    """Set when ``go``: the slot to release (None when nothing was held, e.g. ordering only)."""
    wait: float = 0.0
    """When not ``go``: seconds until asking again may succeed (a hint, never 0)."""
    reason: WaitReason | None = None
    probe: bool = False
    """This delivery is the half-open circuit's probe."""


class Outcome(enum.Enum):
    SUCCESS = "success"
    """The target answered and the answer is final (2xx, or a non-retryable 4xx): the
    target is up."""
    FAILURE = "failure"
    """A retryable failure (timeout, connection refused, 5xx, 429): counts toward opening the
    circuit."""
    UNSENT = "unsent"
    """Let go but never sent (cancelled, a local error): frees the slot, says nothing about
    the target."""


class CircuitChange(NamedTuple):
    before: CircuitState
    after: CircuitState


class Gate(Protocol):
    async def acquire(
        self,
        tool_id: str,
        destination_id: str,
        control: Control,
        position: Position | None,
        lease: float,
    ) -> Verdict:
        """May one delivery go now? One atomic step for every check (ordering first, then
        circuit, in flight, rate): on ``go`` the slot is taken and the request counted in the
        rate window; on wait nothing changes (but a circuit whose cooldown is over becomes
        half-open, this delivery being its probe). ``lease``: seconds after which the slot
        is freed if never released (the worker died)."""
        ...

    async def release(
        self,
        tool_id: str,
        destination_id: str,
        control: Control,
        slot: str | None,
        outcome: Outcome,
    ) -> CircuitChange | None:
        """The delivery let go with ``slot`` ended: free the slot and feed the circuit breaker.
        Returns the circuit's change of state when this outcome caused one (so exactly one
        worker logs it), else None."""
        ...

    async def settle(self, positions: Sequence[tuple[str, Position]]) -> None:
        """``(tool_id, position)``: these events are done with (delivered, dead, ignored) for
        that destination and key: the next position of the key may go once all before it
        are done too. Idempotent; a position may settle before earlier ones (an event a
        filter ignored is never sent)."""
        ...

    async def waiting_for(self, keys: Sequence[tuple[str, str, str]]) -> list[int]:
        """For each ``(tool_id, destination_id, key)``, the position that may go next (every
        position before it has settled), so a worker holding later ones knows when to ask
        again. A key with no state answers 0 (anything may go)."""
        ...

    async def circuits(self) -> Mapping[tuple[str, str], CircuitState]:
        """Every destination whose circuit is not closed, by (tool id, destination id)."""
        ...

    async def forget(self, tool_id: str, destination_id: str) -> None:
        """Drop a destination's rate window, slots and circuit (its control was changed or
        removed): it starts afresh. Ordering state is kept."""
        ...
