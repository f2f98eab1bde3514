"""Per-tool admission of forwards, so that one slow target cannot take a whole worker.

Each tool has a lane with up to ``limit`` forwards in flight; more events wait their turn. While
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

    def admit(self, tool_id: str, item: _T) -> Admission:
        lane = self._lanes.setdefault(tool_id, _Lane())
        if len(lane.started) < self.limit:
            lane.started[id(item)] = self._clock()
            return Admission.START
        if len(lane.waiting) < self.limit or not self._slow(lane):
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
        """The items to defer now: what slow lanes hold in line beyond ``limit`` (the newest)."""
        shed: list[_T] = []
        for lane in self._lanes.values():
            while len(lane.waiting) > self.limit and self._slow(lane):
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
