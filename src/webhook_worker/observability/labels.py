"""Label values chosen by senders, kept few: every metric labelled with an event type gets its
value from :func:`event_type`.

A sender picks the event type (a header or a body field), and each distinct value would be a new
series of every ``webhook_*`` metric labelled with it: 300 made-up types grew ``/metrics`` from
89 KB to 2.2 MB. So each tool keeps the first :data:`MAX_EVENT_TYPES_PER_TOOL` event types it
sees as their own label values, and every later one is counted as :data:`OTHER`. The types a
tool names in its ``events`` overrides always keep their own value (and do not use up the
allowance): they are the ones its operators chose to watch.

Process-wide, like the Prometheus registry the values end up in; O(1) per call, and the values
a tool has admitted never change, so each series keeps its meaning for the life of the process.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Final

MAX_EVENT_TYPES_PER_TOOL: Final = 50
OTHER: Final = "other"
"""The label value of the event types past a tool's first :data:`MAX_EVENT_TYPES_PER_TOOL`."""


class EventTypeLabels:
    """The event types each tool has admitted as label values."""

    def __init__(self, cap: int = MAX_EVENT_TYPES_PER_TOOL) -> None:
        self._cap = cap
        self._admitted: dict[str, set[str]] = {}

    def label(self, tool_id: str, event_type: str | None, known: Container[str] | None) -> str:
        """The label value for ``event_type`` (None: ``""``) of ``tool_id``'s events; ``known``
        holds the event types the tool's ``events`` overrides name."""
        value = event_type or ""
        admitted = self._admitted.get(tool_id)
        if admitted is None:
            admitted = self._admitted[tool_id] = set()
        if value in admitted or (known is not None and value in known):
            return value
        if len(admitted) >= self._cap:
            return OTHER
        admitted.add(value)
        return value


_LABELS: Final = EventTypeLabels()


def event_type(tool_id: str, event_type: str | None, known: Container[str] | None = None) -> str:
    """The ``event_type`` label value of an event of ``tool_id`` (see the module's docstring)."""
    return _LABELS.label(tool_id, event_type, known)
