"""The text form of a message's ordering positions, and the pieces the Redis enqueue script
writes it from."""

from __future__ import annotations

import pytest

from webhook_worker.queue.base import Position
from webhook_worker.queue.positions import decode_ordering, encode_ordering, template

ORDERING = (
    Position("billing", "c-7", 1),
    Position("crm", '{"a":"\\u00e9 \\"q\\""}', 12),
    Position("audit", "é/ü\ttab", 3),
)


def test_round_trip() -> None:
    text = encode_ordering(ORDERING)
    assert text == (
        '[["billing","c-7",1],["crm","{\\"a\\":\\"\\\\u00e9 \\\\\\"q\\\\\\"\\"}",12],'
        '["audit","é/ü\\ttab",3]]'
    )
    assert decode_ordering(text) == ORDERING
    assert decode_ordering(text.encode()) == ORDERING


def test_unordered_is_none() -> None:
    assert encode_ordering(()) is None
    assert decode_ordering(None) == ()
    assert decode_ordering(b"") == ()


def test_the_template_joined_with_the_seqs_is_the_encoded_text() -> None:
    pieces = template(ORDERING)
    assert len(pieces) == len(ORDERING) + 1
    joined = pieces[0] + "".join(
        f"{p.seq}{piece}" for p, piece in zip(ORDERING, pieces[1:], strict=True)
    )
    assert joined == encode_ordering(ORDERING)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"billing": 1}',
        '[["billing", "k"]]',
        '[["billing", "k", "1"]]',
        '[["billing", "k", 1.0]]',
        '[["billing", "k", true]]',
        '[["billing", "k", -1]]',
        '[[1, "k", 1]]',
        '["billing", "k", 1]',
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode_ordering(text)
