"""Per-destination admission of deliveries, so that one slow target cannot take a whole worker.

Each destination of a tool has a lane; the tool's destinations share ``limit`` equally (each
keeps at least one), so a tool holds about ``limit`` deliveries in flight however many
destinations it has. A lane starts up to its share; more deliveries wait their turn. While
the tool's target keeps up, its line may grow as long as the worker has room (a burst to one
healthy tool is simply absorbed). Once the lane is *slow*, its oldest forward in flight having
started more than ``slow_after`` seconds ago, it keeps at most ``limit`` waiting: newer arrivals
and the excess already in line are deferred, sent back to the queue untried for a moment, rather
than occupying the worker while the target hangs. A lane with nothing in flight is dropped, so
idle tools cost nothing.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

_T = TypeVar("_T")


class Admission(enum.Enum):
    START = "start"
    """Forward it now."""
    WAIT = "wait"
    """The lane keeps it; :meth:`ToolLanes.finish` hands it out when a forward ends."""
    DEFER = "defer"
    """The lane is slow and full: send it back to the queue for a while."""


@dataclass(slots=True)
class _Lane(Generic[_T]):
    limit: int
    """In flight at once, and waiting at most once the lane is slow."""
    started: dict[int, float] = field(default_factory=dict)
    """When each forward in flight started, by the id of its item."""
    waiting: deque[_T] = field(default_factory=deque)


class ToolLanes(Generic[_T]):
    def __init__(
        self,
        limit: int,
        slow_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError("a lane needs room for at least one forward")
        self.limit = limit
        self._slow_after = slow_after
        self._clock = clock
        self._lanes: dict[str, _Lane[_T]] = {}

    def admit(self, tool_id: str, item: _T, share: int = 1) -> Admission:
        """``share``: how many lanes split the limit (a tool's destinations each have a lane
        and an equal share of the tool's ``limit``, at least one)."""
        lane = self._lanes.get(tool_id)
        if lane is None:
            lane = self._lanes[tool_id] = _Lane(max(1, self.limit // share))
        if len(lane.started) < lane.limit:
            lane.started[id(item)] = self._clock()
            return Admission.START
        if len(lane.waiting) < lane.limit or not self._slow(lane):
            lane.waiting.append(item)
            return Admission.WAIT
        return Admission.DEFER

    def finish(self, tool_id: str, item: _T) -> _T | None:
        """``item``'s forward ended: the next waiting item to start, if any (it counts as in
        flight from now on)."""
        lane = self._lanes[tool_id]
        del lane.started[id(item)]
        if lane.waiting:
            nxt = lane.waiting.popleft()
            lane.started[id(nxt)] = self._clock()
            return nxt
        if not lane.started:
            del self._lanes[tool_id]
        return None

    def shed(self) -> list[_T]:
        """The items to defer now: what slow lanes hold in line beyond their limit (the
        newest)."""
        shed: list[_T] = []
        for lane in self._lanes.values():
            while len(lane.waiting) > lane.limit and self._slow(lane):
                shed.append(lane.waiting.pop())
        return shed

    def in_flight(self, tool_id: str) -> int:
        lane = self._lanes.get(tool_id)
        return len(lane.started) if lane else 0

    def waiting(self, tool_id: str) -> int:
        lane = self._lanes.get(tool_id)
        return len(lane.waiting) if lane else 0

    def _slow(self, lane: _Lane[_T]) -> bool:
        return bool(lane.started) and self._clock() - min(lane.started.values()) > self._slow_after
