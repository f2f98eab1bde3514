"""The tool definition declared once (tools/schema.py): the docs table and the messages come from
the declaration, and a field added there is validated, described and documented without more
code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import Field, ValidationError

from webhook_worker.errors import ToolConfigError
from webhook_worker.tools.fields import Duration
from webhook_worker.tools.messages import config_error
from webhook_worker.tools.model import parse_tool
from webhook_worker.tools.reference import declared_fields, markdown_table, with_table
from webhook_worker.tools.schema import ToolDefinition, validate_definition

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tools.md"
HMAC = {"type": "hmac", "header": "X-Signature", "secret": "s3cret"}


def test_the_docs_table_is_the_generated_one() -> None:
    page = DOCS.read_text(encoding="utf-8")
    assert with_table(page) == page, (
        "docs/tools.md is out of date: run "
        "`python -m webhook_worker.tools.reference --write docs/tools.md`"
    )


def test_the_table_has_a_row_for_every_declared_field() -> None:
    table = markdown_table()
    paths = [path for path, _ in declared_fields()]
    for path in paths:
        assert f"| `{path}` |" in table, path
    # Nested sections are walked: a sample from each kind of nesting.
    assert {
        "auth.secrets",
        "forward.signing_secret",
        "events.*.transform",
        "delivery_id.path",
        "destinations[].retry.max_retries",
    } <= set(paths)
    assert all(info.description for _, info in declared_fields()), "a field lacks a description"


@pytest.mark.parametrize(
    ("definition", "field", "message"),
    [
        ({"id": "t", "colour": "red"}, "colour", "unknown field (known: allowed_ips, auth, "),
        ({"id": "t", "auth": {**HMAC, "salt": "x"}}, "auth.salt", "unknown field (known: algo"),
        ({"id": "t", "events": {"push": {"colour": 1}}}, "events.push.colour", "(known: filter"),
        ({"id": "t", "enabled": "yes"}, "enabled", "expected true or false"),
        ({"id": "t", "mode": "shout"}, "mode", "expected one of 'store_only', "),
        ({"id": "t", "retry": {"max_retries": -1}}, "retry.max_retries", "a whole number >= 0"),
        ({"id": "t", "retry": {"multiplier": 0.5}}, "retry.multiplier", "expected a number >= 1"),
        ({"id": "t", "forward": {}}, "forward.url", "required: the http:// or https:// URL"),
        ({"id": "t", "allowed_ips": "10.0.0.0/8"}, "allowed_ips", 'such as ["10.0.0.0/8"]'),
        ({"id": "t", "allowed_ips": ["10.0.0.1", "nope"]}, "allowed_ips", "'nope' does not"),
        ({"id": "t", "auth": {**HMAC, "prefix": 5}}, "auth.prefix", 'string such as "sha256="'),
        ({"id": "t", "delivery_id": {"header": ["X-A", 5]}}, "delivery_id.header", "5 is not"),
    ],
)
def test_messages_come_from_the_declaration_without_pydantic_wording(
    definition: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ToolConfigError) as caught:
        parse_tool(definition)
    assert caught.value.field == field
    assert message in caught.value.message
    text = str(caught.value)
    for boilerplate in ("pydantic", "Input should", "validation error", "[type="):
        assert boilerplate not in text, text


def test_a_misspelt_field_is_reported_before_what_it_leaves_missing() -> None:
    with pytest.raises(ToolConfigError) as caught:
        parse_tool({"idd": "demo"})
    assert caught.value.field == "idd"


@pytest.mark.parametrize(
    "definition",
    [
        {"forward": {"url": "https://e.com", "headers": {"X-Api-Key": 12345678}}},
        {"forward": {"url": "https://e.com", "signing_secret": "whsec_%%12345678"}},
        {"auth": {"type": "standard_webhooks", "secrets": ["whsec_%%12345678"]}},
        {"auth": {**HMAC, "secret": 12345678}},
        {"auth": {**HMAC, "secrets": ["ok", 12345678]}},
    ],
)
def test_no_message_repeats_a_secret(definition: dict[str, Any]) -> None:
    with pytest.raises(ToolConfigError) as caught:
        parse_tool({"id": "t", **definition})
    assert "12345678" not in str(caught.value)


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        # Each of these was accepted (or crashed with a ValueError, a 500) before the
        # declaration: now every value the JSON Schema refuses is refused here too.
        ({"id": "demo\n"}, "id"),
        ({"forward": {"url": "http://[x"}}, "forward.url"),
        ({"forward": {"url": "https://e.com", "headers": {"X-A\n": "v"}}}, "forward.headers"),
        ({"retry": {"multiplier": True}}, "retry.multiplier"),
        ({"forward": {"url": "https://e.com", "timeout": "inf"}}, "forward.timeout"),
    ],
)
def test_values_outside_the_declaration_are_refused(definition: dict[str, Any], field: str) -> None:
    with pytest.raises(ToolConfigError) as caught:
        parse_tool({"id": "demo", **definition})
    assert caught.value.field == field


def test_validation_compiles_what_the_hot_paths_evaluate() -> None:
    definition = validate_definition(
        {"id": "t", "filter": "a == `1`", "events": {"push": {"transform": "b"}}}
    )
    assert definition.filter is not None and definition.filter.search({"a": 1}) is True
    assert definition.events is not None
    assert definition.events["push"].transform is not None
    assert definition.events["push"].transform.search({"b": 2}) == 2
    tool = parse_tool({"id": "t", "event_type": {"path": "kind"}, "allowed_ips": ["10.0.0.0/8"]})
    assert tool.event_type.compiled is not None
    assert tool.event_type.compiled.search({"kind": "x"}) == "x"
    assert str(tool.allowed_ips[0]) == "10.0.0.0/8"


class WithRetention(ToolDefinition):
    """A definition with one more field, as the second round adds them."""

    retention: Duration | None = Field(None, description="How long events are kept.")


def test_a_declared_field_is_validated_documented_and_in_the_json_schema() -> None:
    assert WithRetention.model_validate({"id": "t", "retention": "24h"}).retention == 86400.0
    row = next(line for line in markdown_table(WithRetention).splitlines() if "retention" in line)
    assert row == "| `retention` | duration | unset | How long events are kept. |"
    schema = WithRetention.model_json_schema()
    assert schema["properties"]["retention"]["description"] == "How long events are kept."
    with pytest.raises(ValidationError) as caught:
        WithRetention.model_validate({"id": "t", "retention": "a while"})
    error = config_error(caught.value, WithRetention)
    assert (error.field, error.message) == (
        "retention",
        "'a while' is not a duration such as 500ms, 30s, 5m, 24h or 30d",
    )


@pytest.mark.parametrize(
    ("forward", "field"),
    [
        ({"headers": {"X-Team": "a\r\nX-Injected: 1"}}, "forward.headers"),
        ({"headers": {"X-Team": "a\nb"}}, "forward.headers"),
        ({"headers": {"X-Team": "a\x00b"}}, "forward.headers"),
        ({"headers": {"X-Team": "a\x7fb"}}, "forward.headers"),
        ({"headers": {"Authorization": "Bearer t0ken\r\n"}}, "forward.headers"),
        ({"headers": {"X-Team\r\nX-Injected": "1"}}, "forward.headers"),
        ({"url": "https://example.com/in\r\nX-Injected: 1"}, "forward.url"),
        ({"url": "https://example.com/in?a=b\tc"}, "forward.url"),
        ({"url": "https://example.com/in put"}, "forward.url"),
    ],
)
def test_forward_headers_and_urls_hold_no_control_characters(
    forward: dict[str, Any], field: str
) -> None:
    with pytest.raises(ToolConfigError) as caught:
        parse_tool({"id": "t", "forward": {"url": "https://example.com/in", **forward}})
    assert caught.value.field == field
    assert "t0ken" not in str(caught.value)  # a header value may be a credential


def test_a_tab_inside_a_header_value_is_allowed() -> None:
    # RFC 9110 lets a field value hold horizontal tabs.
    tool = parse_tool({"id": "t", "forward": {"url": "https://e.com", "headers": {"X-A": "a\tb"}}})
    assert tool.forward is not None and tool.forward.headers == (("X-A", "a\tb"),)


@pytest.mark.parametrize("tool_id", ["demo\n", "demo\r\n", "\ndemo", "de\nmo", "demo\x00"])
def test_a_tool_id_matches_in_full(tool_id: str) -> None:
    for definition, given in (({"id": tool_id}, None), ({"id": "x"}, tool_id)):
        with pytest.raises(ToolConfigError) as caught:
            parse_tool(definition, tool_id=given)
        assert caught.value.field == "id"
