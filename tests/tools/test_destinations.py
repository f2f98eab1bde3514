"""A tool's ``destinations``: declared, validated and compiled into ``Tool.destinations``, with the
rules that span them (unique ids, ``default`` is the forward's, a bound on their number) and the
SSRF check at configuration time for each of their URLs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook_worker.config import RetryPolicy
from webhook_worker.errors import ToolConfigError
from webhook_worker.storage.database import Database
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.model import DEFAULT_DESTINATION, Destination, ForwardConfig, parse_tool
from webhook_worker.tools.schema import MAX_DESTINATIONS
from webhook_worker.tools.service import ToolService
from webhook_worker.vocabulary import Mode

SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "tools.md"


def destination(dest_id: str = "billing", **fields: Any) -> dict[str, Any]:
    return {"id": dest_id, "url": f"https://{dest_id}.example.com/in", **fields}


def tool(*destinations: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": "shop", "destinations": list(destinations), **fields}


def refusal(definition: dict[str, Any]) -> ToolConfigError:
    with pytest.raises(ToolConfigError) as caught:
        parse_tool(definition)
    return caught.value


def test_destinations_are_compiled_in_the_order_given() -> None:
    parsed = parse_tool(
        tool(
            destination(
                "crm",
                method="put",
                headers={"Authorization": "Bearer t0ken"},
                timeout="2s",
                signing_secret=SIGNING,
                filter="type == 'order'",
                transform="{id: id}",
                retry={"max_retries": 2, "initial_interval": "5s"},
                enabled=False,
            ),
            destination("billing"),
        )
    )
    assert parsed.destinations == (
        Destination(
            id="crm",
            forward=ForwardConfig(
                url="https://crm.example.com/in",
                method="PUT",
                headers=(("Authorization", "Bearer t0ken"),),
                timeout=2.0,
                signing_secret=SIGNING,
            ),
            filter="type == 'order'",
            transform="{id: id}",
            retry=RetryPolicy(max_retries=2, initial_interval=5.0),
            enabled=False,
        ),
        Destination(id="billing", forward=ForwardConfig(url="https://billing.example.com/in")),
    )
    assert parsed.config["destinations"][0]["method"] == "put"  # the definition as given


def test_a_tool_without_destinations_has_none_and_its_forward_stays_where_it_was() -> None:
    assert parse_tool({"id": "shop"}).destinations == ()
    forwarding = parse_tool(
        {"id": "shop", "mode": "store_and_forward", "forward": {"url": "https://e.com/in"}}
    )
    assert forwarding.destinations == ()
    assert forwarding.forward == ForwardConfig(url="https://e.com/in")


def test_store_and_forward_needs_a_forward_or_a_destination() -> None:
    error = refusal(tool(mode="store_and_forward"))
    assert error.field == "forward.url"
    assert "unless the tool has destinations" in error.message
    parsed = parse_tool(tool(destination(), mode="store_and_forward"))
    assert parsed.mode == Mode.STORE_AND_FORWARD and parsed.forward is None
    both = parse_tool(
        tool(destination(), mode="store_and_forward", forward={"url": "https://e.com"})
    )
    assert both.forward is not None and [d.id for d in both.destinations] == ["billing"]


def test_ids_are_unique_within_the_tool() -> None:
    error = refusal(tool(destination("a"), destination("b"), destination("a")))
    assert error.field == "destinations[2].id"
    assert (
        error.message
        == "'a' is already the id of destinations[0]; ids must be unique within the tool"
    )
    # Another tool may use the same ids.
    parse_tool({**tool(destination("a")), "id": "other"})


def test_default_is_the_forward_s_while_the_tool_has_one() -> None:
    error = refusal(
        tool(destination("a"), destination(DEFAULT_DESTINATION), forward={"url": "https://e.com"})
    )
    assert error.field == "destinations[1].id"
    assert "the tool's `forward` is the destination 'default'" in error.message
    assert "choose another id, or remove `forward`" in error.message
    # Without a forward, `default` is a destination like any other.
    parsed = parse_tool(tool(destination(DEFAULT_DESTINATION)))
    assert [d.id for d in parsed.destinations] == [DEFAULT_DESTINATION]


def test_at_most_32_destinations() -> None:
    many = [destination(f"d{number}") for number in range(MAX_DESTINATIONS)]
    assert len(parse_tool(tool(*many)).destinations) == MAX_DESTINATIONS == 32
    error = refusal(tool(*many, destination("one-more")))
    assert (error.field, error.message) == ("destinations", "expected at most 32 items, got 33")


@pytest.mark.parametrize(
    ("definition", "field", "message"),
    [
        (tool(destination(), destination("crm", url="ftp://x")), "destinations[1].url", "http"),
        (tool({"url": "https://e.com"}), "destinations[0].id", "required: 1-64 letters"),
        (tool({"id": "a"}), "destinations[0].url", "required: the http:// or https:// URL"),
        (tool(destination("has space")), "destinations[0].id", "1-64 letters, digits"),
        (tool(destination("-lead")), "destinations[0].id", "starting with a letter or digit"),
        (tool(destination("a" * 65)), "destinations[0].id", "1-64"),
        (tool(destination("a/b")), "destinations[0].id", "1-64"),
        (tool(destination("a\n")), "destinations[0].id", "1-64"),
        (tool(destination(method="GET")), "destinations[0].method", "expected one of"),
        (tool(destination(timeout="soon")), "destinations[0].timeout", "duration"),
        (tool(destination(filter="a[?")), "destinations[0].filter", "invalid JMESPath"),
        (tool(destination(transform="{a: }")), "destinations[0].transform", "invalid JMESPath"),
        (tool(destination(retry={"max_retries": -1})), "destinations[0].retry.max_retries", ">= 0"),
        (tool(destination(enabled="no")), "destinations[0].enabled", "expected true or false"),
        (tool(destination(signing_secret="nope!")), "destinations[0].signing_secret", "whsec_"),
        (tool(destination(headers={"X-A\n": "v"})), "destinations[0].headers", "header name"),
        (tool(destination(headers={"X-A": "a\r\nX-B: 1"})), "destinations[0].headers", "control"),
        (tool(destination(url="https://e.com/a b")), "destinations[0].url", "spaces"),
        (
            {"id": "shop", "destinations": ["billing"]},
            "destinations[0]",
            'expected an object such as {"id": "billing"',
        ),
        ({"id": "shop", "destinations": destination()}, "destinations", "expected a list"),
    ],
)
def test_an_invalid_destination_is_named_by_its_position(
    definition: dict[str, Any], field: str, message: str
) -> None:
    error = refusal(definition)
    assert error.field == field
    assert message in error.message


def test_an_unknown_destination_field_is_named_with_the_known_ones() -> None:
    error = refusal(tool({**destination(), "colour": 1}))
    assert error.field == "destinations[0].colour"
    assert error.message.startswith(
        "unknown field (known: circuit_breaker, enabled, filter, headers, id, max_in_flight,"
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"headers": {"X-Api-Key": 12345678}},
        {"signing_secret": "whsec_%%12345678"},
        {"url": "https://user:12345678@e.com/\n"},
    ],
)
def test_no_message_repeats_a_destination_secret(fields: dict[str, Any]) -> None:
    assert "12345678" not in str(refusal(tool(destination(**fields))))


def test_the_example_in_docs_tools_md_is_valid() -> None:
    section = DOCS.read_text(encoding="utf-8").split("## Destinations", 1)[1]
    block = re.search(r"```yaml\n(.*?)\n```", section, re.DOTALL)
    assert block is not None
    (definition,) = yaml.safe_load(block.group(1))
    assert [d.id for d in parse_tool(definition).destinations] == ["billing", "crm"]


# The SSRF check when the tool is written


@pytest.fixture
def store(db: Database) -> ToolStore:
    return ToolStore(db)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/in", "http://10.0.0.8/in", "http://[::1]/in", "http://169.254.169.254/"],
)
async def test_a_destination_to_a_refused_literal_is_refused_when_written(
    store: ToolStore, url: str
) -> None:
    service = ToolService(store)
    definition = tool(destination("public"), {"id": "inside", "url": url})
    for write in (service.create(definition), service.apply([definition])):
        with pytest.raises(ToolConfigError) as caught:
            await write
        assert caught.value.field == "destinations[1].url"
        assert "ALLOW_PRIVATE_FORWARD=true" in caught.value.message
    await service.create(tool(destination("public")))
    with pytest.raises(ToolConfigError) as caught:
        await service.patch("shop", {"destinations": definition["destinations"]})
    assert caught.value.field == "destinations[1].url"
    view = await service.get("shop")
    view["destinations"].append({"id": "inside", "url": url})
    with pytest.raises(ToolConfigError) as caught:
        await service.replace("shop", view)
    assert caught.value.field == "destinations[1].url"
    assert [d["id"] for d in (await store.get("shop"))["config"]["destinations"]] == ["public"]

    # ALLOW_PRIVATE_FORWARD lets it through, as it does a forward's.
    allowed = ToolService(store, allow_private_forward=True)
    created = await allowed.patch("shop", {"destinations": definition["destinations"]})
    assert [d["url"] for d in created["destinations"]] == ["https://public.example.com/in", url]
