"""The ordering keys of an event, worked out at ingest.

A destination with an ``ordering_key`` (a JMESPath) delivers the events of one key one at a
time, in the order they were received. Ingest evaluates the key on the request body and puts a
:class:`~webhook_worker.queue.base.Position` per ordered destination on the message (seq 0);
the queue gives the seqs, in the same atomic step as the write.

The hot path stays plain: a tool's keys are compiled once per :class:`Tool` object (the tool
cache hands out a new one when the tool changes), and a tool without ordering keys costs one
dict lookup: its body is not parsed.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Final

import jmespath
import jmespath.exceptions
import jmespath.parser
import orjson

from webhook_worker.queue.base import Position
from webhook_worker.tools.model import Tool

__all__ = ["MAX_KEY_LENGTH", "UNPARSED", "key_text", "ordered_destinations", "positions"]

log = logging.getLogger(__name__)

MAX_KEY_LENGTH: Final = 512
"""Characters a key is kept as it is. A longer key (or one holding NUL, which PostgreSQL text
cannot store) is replaced by the sha256 hex digest of its UTF-8 text: keys name Redis keys and
database rows, so they stay bounded; two keys then share an order only if their digests
collide."""

MAX_TOOLS: Final = 4096
"""Tools whose compiled keys are kept at most: a bound over tools deleted while the process
runs."""

UNPARSED: Final[Any] = object()
"""``positions(..., parsed=UNPARSED)``: the body has not been parsed yet."""

Compiled = tuple[tuple[str, jmespath.parser.ParsedResult], ...]
"""(destination id, compiled ``ordering_key``) of each ordered destination, in the tool's
order."""

_compiled: dict[str, tuple[Tool, Compiled]] = {}


def ordered_destinations(tool: Tool) -> Compiled:
    """The enabled destinations of ``tool`` that have an ``ordering_key``, their keys compiled
    (once per Tool object). The legacy ``forward`` (destination ``default``) has no ordering;
    destinations are delivered whatever the tool's mode, so the mode does not matter."""
    cached = _compiled.get(tool.id)
    if cached is not None and cached[0] is tool:
        return cached[1]
    compiled: list[tuple[str, jmespath.parser.ParsedResult]] = []
    for destination in tool.destinations:
        expression = destination.control.ordering_key
        if not destination.enabled or not expression:
            continue
        try:
            compiled.append((destination.id, jmespath.compile(expression)))
        except jmespath.exceptions.JMESPathError as exc:
            # Validated when the tool was saved; an invalid one here came from an older
            # release. Unordered beats refusing every webhook of the tool.
            log.error(
                "tool %r destination %r: ordering_key %r is not a valid JMESPath (%s); its "
                "events are delivered unordered until the tool is fixed",
                tool.id,
                destination.id,
                expression,
                exc,
            )
    if len(_compiled) >= MAX_TOOLS:
        _compiled.clear()
    _compiled[tool.id] = (tool, tuple(compiled))
    return _compiled[tool.id][1]


def positions(tool: Tool, body: bytes, parsed: Any = UNPARSED) -> tuple[Position, ...]:
    """The event's position (seq 0, the queue gives the seq) for each ordered destination whose
    key is not null. ``parsed``: the body already parsed as JSON by the caller (None when it
    is not JSON), so it is not parsed twice. A body that is not JSON is unordered."""
    keyed = ordered_destinations(tool)
    if not keyed:
        return ()
    if parsed is UNPARSED:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return ()
    if parsed is None:
        return ()
    found: list[Position] = []
    for destination_id, expression in keyed:
        try:
            value = expression.search(parsed)
        except jmespath.exceptions.JMESPathError:
            # A function given the wrong type by this body: no key, as for a missing field.
            continue
        key = key_text(value)
        if key is not None:
            found.append(Position(destination_id, key, 0))
    return tuple(found)


def key_text(value: Any) -> str | None:
    """What an ``ordering_key`` result becomes: None (null, missing) stays None (unordered); a
    string is the key as it is; any other JSON value its canonical JSON text (sorted object
    keys), so ``{"a":1,"b":2}`` and ``{"b":2,"a":1}`` are one key. Past
    :data:`MAX_KEY_LENGTH` characters, or holding NUL, the key is its sha256 hex digest."""
    if value is None:
        return None
    text = value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    if isinstance(text, bytes):
        text = text.decode()
    if len(text) > MAX_KEY_LENGTH or "\x00" in text:
        return hashlib.sha256(text.encode()).hexdigest()
    return text
