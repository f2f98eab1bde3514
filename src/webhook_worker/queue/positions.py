"""The text form of :attr:`Message.ordering <webhook_worker.queue.base.Message.ordering>`.

A message's positions travel as the JSON text ``[[destination_id, key, seq], ...]``: in the
``ordering`` field of a Redis stream entry (and of a retry hash), in the ``ordering`` column of
``queue_messages`` and of ``events``. One encoder for all of them, so the Redis enqueue script,
which writes the text itself (it learns the seqs only inside Redis), produces the same bytes as
everything else (:func:`template`).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from webhook_worker.queue.base import Position

__all__ = ["decode_ordering", "encode_ordering", "template"]


def encode_ordering(ordering: Sequence[Position]) -> str | None:
    """``ordering`` as JSON text; None when the message is unordered (no positions), so the
    column stays NULL and the stream entry carries no field."""
    if not ordering:
        return None
    return orjson.dumps([[p.destination_id, p.key, p.seq] for p in ordering]).decode()


def decode_ordering(text: str | bytes | None) -> tuple[Position, ...]:
    """The positions :func:`encode_ordering` wrote (None or empty: none). Raises ValueError
    for anything else, so a corrupt entry is set aside as malformed rather than delivered out
    of order."""
    if not text:
        return ()
    items = orjson.loads(text)
    if not isinstance(items, list):
        raise ValueError(f"ordering must be a JSON array of positions, got {text!r}")
    positions = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not isinstance(item[0], str)
            or not isinstance(item[1], str)
            or type(item[2]) is not int
            or item[2] < 0
        ):
            raise ValueError(
                f"each ordering position must be [destination_id, key, seq], got {item!r}"
            )
        positions.append(Position(item[0], item[1], item[2]))
    return tuple(positions)


def template(ordering: Sequence[Position]) -> list[str]:
    """The text of :func:`encode_ordering` cut where the seqs go: ``len(ordering) + 1`` pieces,
    to be joined with the seqs between them. The Redis enqueue script gives the seqs and writes
    the field with these pieces, byte for byte what :func:`encode_ordering` writes."""
    pieces: list[str] = []
    before = "[["
    for position in ordering:
        destination = orjson.dumps(position.destination_id).decode()
        key = orjson.dumps(position.key).decode()
        pieces.append(f"{before}{destination},{key},")
        before = "],["
    pieces.append("]]")
    return pieces
