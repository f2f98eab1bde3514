"""The ordering keys ingest works out for an event: which destinations order it, what a key's
text is, and that a tool without ordering keys pays nothing for them."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import orjson
import pytest

from webhook_worker.queue.base import Position
from webhook_worker.tools import ordering
from webhook_worker.tools.model import Control, Tool, parse_tool
from webhook_worker.tools.ordering import MAX_KEY_LENGTH, key_text, positions


def ordered_tool(keys: dict[str, str | None], *, disabled: tuple[str, ...] = ()) -> Tool:
    """A tool with one destination per entry of ``keys`` (its ordering key, or None), in order;
    the ids in ``disabled`` are disabled. Built from the model: the definition's
    ``ordering_key`` is parsed elsewhere."""
    definition: dict[str, Any] = {
        "id": "shop",
        "destinations": [
            {"id": dest, "url": f"https://{dest}.example.com/in", "enabled": dest not in disabled}
            for dest in keys
        ],
    }
    tool = parse_tool(definition)
    return with_keys(tool, keys)


def with_keys(tool: Tool, keys: dict[str, str | None]) -> Tool:
    destinations = tuple(
        replace(d, control=Control(ordering_key=keys.get(d.id))) for d in tool.destinations
    )
    return replace(tool, destinations=destinations)


def test_each_ordered_destination_gets_a_position_with_seq_0() -> None:
    tool = ordered_tool({"billing": "customer.id", "audit": None, "crm": "region"})
    body = orjson.dumps({"customer": {"id": "c-7"}, "region": "eu"})
    assert positions(tool, body) == (Position("billing", "c-7", 0), Position("crm", "eu", 0))


def test_disabled_destinations_and_the_legacy_forward_are_not_ordered() -> None:
    tool = ordered_tool({"billing": "id", "crm": "id"}, disabled=("crm",))
    tool = replace(tool, forward=tool.destinations[0].forward)
    assert positions(tool, b'{"id": "x"}') == (Position("billing", "x", 0),)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"", b'{"id": null}', b'{"other": 1}', b"null", b"[1, 2]", b'"text"'],
)
def test_no_json_or_a_null_key_is_unordered(body: bytes) -> None:
    assert positions(ordered_tool({"billing": "id"}), body) == ()


def test_a_key_the_expression_cannot_evaluate_is_unordered() -> None:
    # length() of a number is a type error at evaluation time, not at compile time.
    tool = ordered_tool({"billing": "length(id)", "crm": "region"})
    assert positions(tool, b'{"id": 5, "region": "eu"}') == (Position("crm", "eu", 0),)


def test_a_body_the_caller_parsed_is_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    tool = ordered_tool({"billing": "id"})

    def refuse(_body: bytes) -> Any:
        raise AssertionError("parsed again")

    monkeypatch.setattr(orjson, "loads", refuse)
    assert positions(tool, b'{"id": "x"}', {"id": "x"}) == (Position("billing", "x", 0),)
    assert positions(tool, b"not json", None) == ()


def test_a_tool_without_ordering_keys_never_parses_the_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tool = ordered_tool({"billing": None, "crm": None})

    def refuse(_body: bytes) -> Any:
        raise AssertionError("a tool without ordering keys parsed the body")

    monkeypatch.setattr(orjson, "loads", refuse)
    assert positions(tool, b'{"id": "x"}') == ()
    assert positions(parse_tool({"id": "plain"}), b'{"id": "x"}') == ()


def test_keys_are_compiled_once_per_tool_object() -> None:
    tool = ordered_tool({"billing": "id"})
    first = ordering.ordered_destinations(tool)
    assert ordering.ordered_destinations(tool) is first
    # The cache hands out a new Tool when the tool changes: its keys are compiled anew.
    changed = with_keys(tool, {"billing": "other"})
    assert positions(changed, b'{"id": "x", "other": "y"}') == (Position("billing", "y", 0),)


def test_an_invalid_expression_leaves_the_destination_unordered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tool = ordered_tool({"billing": "id[", "crm": "id"})
    assert positions(tool, b'{"id": "x"}') == (Position("crm", "x", 0),)
    assert "ordering_key 'id['" in caplog.text


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("c-7", "c-7"),
        ("", ""),
        (7, "7"),
        (1.5, "1.5"),
        (True, "true"),
        ([1, "a"], '[1,"a"]'),
        ({"b": 2, "a": {"d": 1, "c": 0}}, '{"a":{"c":0,"d":1},"b":2}'),
        (None, None),
    ],
)
def test_key_text(value: Any, key: str | None) -> None:
    assert key_text(value) == key


def test_equal_objects_are_one_key_whatever_their_field_order() -> None:
    tool = ordered_tool({"billing": "account"})
    first = positions(tool, b'{"account": {"org": 1, "user": 2}}')
    second = positions(tool, b'{"account": {"user": 2, "org": 1}}')
    assert first == second == (Position("billing", '{"org":1,"user":2}', 0),)


def test_a_long_key_is_its_sha256() -> None:
    at_limit = "k" * MAX_KEY_LENGTH
    assert key_text(at_limit) == at_limit
    longer = "é" * (MAX_KEY_LENGTH + 1)
    assert key_text(longer) == hashlib.sha256(longer.encode()).hexdigest()
    assert (
        key_text(["x" * MAX_KEY_LENGTH])
        == hashlib.sha256(orjson.dumps(["x" * MAX_KEY_LENGTH])).hexdigest()
    )


def test_a_key_holding_nul_is_its_sha256() -> None:
    assert key_text("a\x00b") == hashlib.sha256(b"a\x00b").hexdigest()
