"""Per-tool admission of forwards, so that one slow target cannot take a whole worker.

Each tool has a lane: up to ``limit`` forwards in flight and up to ``limit`` more waiting for one
of them to end. An event that finds its tool's lane full is deferred: it goes back to the queue
untried for a moment, instead of occupying the worker while the target hangs. A lane with
nothing in flight and nothing waiting is dropped, so idle tools cost nothing.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

_T = TypeVar("_T")


class Admission(enum.Enum):
    START = "start"
    """Forward it now."""
    WAIT = "wait"
    """The lane keeps it; :meth:`ToolLanes.finish` hands it out when a forward ends."""
    DEFER = "defer"
    """The lane is full: send it back to the queue for a while."""


@dataclass(slots=True)
class _Lane(Generic[_T]):
    in_flight: int = 0
    waiting: deque[_T] = field(default_factory=deque)


class ToolLanes(Generic[_T]):
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a lane needs room for at least one forward")
        self.limit = limit
        self._lanes: dict[str, _Lane[_T]] = {}

    def admit(self, tool_id: str, item: _T) -> Admission:
        lane = self._lanes.setdefault(tool_id, _Lane())
        if lane.in_flight < self.limit:
            lane.in_flight += 1
            return Admission.START
        if len(lane.waiting) < self.limit:
            lane.waiting.append(item)
            return Admission.WAIT
        return Admission.DEFER

    def finish(self, tool_id: str) -> _T | None:
        """One of the tool's forwards ended: the next waiting item to start, if any (it counts
        as in flight from now on)."""
        lane = self._lanes[tool_id]
        if lane.waiting:
            return lane.waiting.popleft()
        lane.in_flight -= 1
        if lane.in_flight == 0:
            del self._lanes[tool_id]
        return None

    def in_flight(self, tool_id: str) -> int:
        lane = self._lanes.get(tool_id)
        return lane.in_flight if lane else 0

    def waiting(self, tool_id: str) -> int:
        lane = self._lanes.get(tool_id)
        return len(lane.waiting) if lane else 0
