"""A destination's delivery control as declared: ``rate_limit``, ``max_in_flight``,
``circuit_breaker``, ``ordering_key`` and ``paused`` parse into ``Destination.control`` and
``Destination.paused``; a mistake is named by its field path; the tool's ``forward`` has none."""

from __future__ import annotations

from typing import Any

import pytest

from webhook_worker.errors import ToolConfigError
from webhook_worker.tools.model import (
    NO_CONTROL,
    CircuitBreaker,
    Control,
    RateLimit,
    parse_tool,
)


def destination(dest_id: str = "billing", **fields: Any) -> dict[str, Any]:
    return {"id": dest_id, "url": f"https://{dest_id}.example.com/in", **fields}


def tool(*destinations: dict[str, Any]) -> dict[str, Any]:
    return {"id": "shop", "destinations": list(destinations)}


def refusal(definition: dict[str, Any]) -> ToolConfigError:
    with pytest.raises(ToolConfigError) as caught:
        parse_tool(definition)
    return caught.value


def test_every_control_field_is_compiled() -> None:
    parsed = parse_tool(
        tool(
            destination(
                rate_limit={"requests": 20, "per": "2s"},
                max_in_flight=3,
                circuit_breaker={"failure_threshold": 2, "cooldown": "1m"},
                ordering_key="data.id",
                paused=True,
            )
        )
    )
    (billing,) = parsed.destinations
    assert billing.control == Control(
        rate_limit=RateLimit(20, 2.0),
        max_in_flight=3,
        circuit_breaker=CircuitBreaker(2, 60.0),
        ordering_key="data.id",
    )
    assert billing.control.gated
    assert billing.paused is True


def test_defaults_are_the_documented_ones() -> None:
    parsed = parse_tool(tool(destination(rate_limit={"requests": 5}, circuit_breaker={})))
    control = parsed.destinations[0].control
    assert control.rate_limit == RateLimit(5, 1.0)
    assert control.circuit_breaker == CircuitBreaker(5, 30.0)
    assert parsed.destinations[0].paused is False


def test_a_destination_without_control_shares_no_control() -> None:
    (plain,) = parse_tool(tool(destination())).destinations
    assert plain.control is NO_CONTROL
    assert not plain.control.gated


def test_ordering_alone_is_not_gated() -> None:
    (ordered,) = parse_tool(tool(destination(ordering_key="customer"))).destinations
    assert ordered.control == Control(ordering_key="customer")
    assert not ordered.control.gated


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"rate_limit": {"requests": 0}}, "rate_limit.requests", "expected a whole number >= 1"),
        ({"rate_limit": {"requests": 1.5}}, "rate_limit.requests", "expected a whole number"),
        ({"rate_limit": {"per": "1s"}}, "rate_limit.requests", "required: how many deliveries"),
        ({"rate_limit": {"requests": 1, "per": "0s"}}, "rate_limit.per", "must be positive"),
        ({"rate_limit": {"requests": 1, "burst": 2}}, "rate_limit", '{"requests": 10'),
        ({"rate_limit": 10}, "rate_limit", 'expected {"requests": 10, "per": "1s"}'),
        ({"max_in_flight": 0}, "max_in_flight", "expected a whole number >= 1"),
        ({"max_in_flight": "3"}, "max_in_flight", "expected a whole number"),
        (
            {"circuit_breaker": {"failure_threshold": 0}},
            "circuit_breaker.failure_threshold",
            "expected a whole number >= 1",
        ),
        (
            {"circuit_breaker": {"cooldown": "soon"}},
            "circuit_breaker.cooldown",
            "is not a duration",
        ),
        ({"circuit_breaker": {"cooldown": "0s"}}, "circuit_breaker.cooldown", "must be positive"),
        ({"circuit_breaker": True}, "circuit_breaker", '{"failure_threshold": 5'),
        ({"ordering_key": "data.["}, "ordering_key", "invalid JMESPath expression"),
        ({"ordering_key": 7}, "ordering_key", ""),
        ({"paused": "yes"}, "paused", "expected true or false"),
    ],
)
def test_a_mistake_is_named_by_its_path(fields: dict[str, Any], field: str, message: str) -> None:
    error = refusal(tool(destination("crm"), destination(**fields)))
    assert error.field == f"destinations[1].{field}"
    assert message in error.message


@pytest.mark.parametrize(
    "name", ["rate_limit", "max_in_flight", "circuit_breaker", "ordering_key", "paused"]
)
def test_the_forward_has_no_delivery_control(name: str) -> None:
    error = refusal(
        {
            "id": "shop",
            "mode": "store_and_forward",
            "forward": {"url": "https://shop.example.com/in", name: 1},
        }
    )
    assert error.field == f"forward.{name}"
    assert error.message.startswith("unknown field")
