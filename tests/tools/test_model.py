"""Tool validation: every invalid field is rejected with ToolConfigError naming it."""

from __future__ import annotations

from typing import Any

import pytest

from webhook_worker.errors import ToolConfigError
from webhook_worker.tools.model import parse_tool

HMAC = {"type": "hmac", "header": "X-Signature", "secret": "s3cret"}


def tool(**fields: Any) -> dict[str, Any]:
    return {"id": "demo", **fields}


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        (tool(provider="githib"), "provider"),
        (tool(event_type={"path": "a.[b"}), "event_type.path"),
        (tool(delivery_id={"path": "("}), "delivery_id.path"),
        (tool(filter="action == "), "filter"),
        (tool(transform="{a: }"), "transform"),
        (tool(events={"push": {"transform": "a[?"}}), "events.push.transform"),
        (tool(events={"push": {"filter": "]"}}), "events.push.filter"),
        (tool(events={"push": {"mode": "shout"}}), "events.push.mode"),
        (tool(events={"push": {"colour": "red"}}), "events.push.colour"),
        (tool(mode="store_and_forward", forward={"url": "ftp://example.com/x"}), "forward.url"),
        (tool(forward={"url": "not a url"}), "forward.url"),
        (tool(forward={"url": "https://"}), "forward.url"),
        (tool(mode="store_and_forward"), "forward.url"),
        (tool(forward={"url": "https://example.com", "timeout": "soon"}), "forward.timeout"),
        (tool(forward={"url": "https://example.com", "method": "GET"}), "forward.method"),
        (
            tool(forward={"url": "https://example.com", "signing_secret": "not base64!"}),
            "forward.signing_secret",
        ),
        (tool(retry={"initial_interval": "1 minute"}), "retry.initial_interval"),
        (tool(retry={"max_elapsed_time": "-5m"}), "retry.max_elapsed_time"),
        (tool(retry={"max_retries": -1}), "retry.max_retries"),
        (tool(rate_limit={"requests": 0}), "rate_limit.requests"),
        (tool(rate_limit={"requests": 5, "per": "0s"}), "rate_limit.per"),
        (tool(rate_limit={"burst": 5}), "rate_limit"),
        (tool(auth={**HMAC, "tolerance": "5 min"}), "auth.tolerance"),
        (tool(auth={"type": "hmac", "header": "X-Signature"}), "auth.secret"),
        (tool(auth={"type": "token", "header": "X-Token", "secret": ""}), "auth.secrets"),
        (tool(auth={"type": "hmac", "secret": "s"}), "auth.header"),
        (tool(auth={**HMAC, "header": "Bad Header"}), "auth.header"),
        (tool(auth={**HMAC, "algorithm": "md5"}), "auth.algorithm"),
        (tool(auth={**HMAC, "encoding": "base32"}), "auth.encoding"),
        (tool(auth={"type": "kerberos", "secret": "s"}), "auth.type"),
        (tool(auth={**HMAC, "salt": "x"}), "auth.salt"),
        (tool(colour="red"), "colour"),
        (tool(mode="shout"), "mode"),
        (tool(mode="transform_and_store"), "transform"),
        (tool(enabled="yes"), "enabled"),
        (tool(allowed_ips=["10.0.0.0/33"]), "allowed_ips"),
        (tool(event_type={"header": "X-Event", "path": "type"}), "event_type"),
        ({"id": "has space"}, "id"),
        ({"id": ""}, "id"),
        ({"id": "-leading-dash"}, "id"),
        ({"id": "x" * 129}, "id"),
        ({"id": "a/b"}, "id"),
        ({"provider": "github"}, "id"),
    ],
)
def test_invalid_field_is_named(definition: dict[str, Any], field: str) -> None:
    with pytest.raises(ToolConfigError) as caught:
        parse_tool(definition)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_not_an_object_is_rejected() -> None:
    with pytest.raises(ToolConfigError, match="expected a JSON object"):
        parse_tool(["demo"])  # type: ignore[arg-type]


def test_minimal_tool_gets_defaults() -> None:
    parsed = parse_tool({"id": "demo"})
    assert parsed.provider == "generic"
    assert parsed.enabled is True
    assert parsed.mode == "store_only"
    assert parsed.auth.type == "none"
    assert parsed.event_type.header is None and parsed.event_type.path is None
    assert parsed.config == {"id": "demo", "provider": "generic"}


def test_github_preset_fills_auth_and_extraction() -> None:
    parsed = parse_tool({"id": "gh", "provider": "github", "auth": {"secret": "s3cret"}})
    assert parsed.auth.type == "hmac"
    assert parsed.auth.header == "X-Hub-Signature-256"
    assert parsed.auth.prefix == "sha256="
    assert parsed.auth.algorithm == "sha256"
    assert parsed.auth.encoding == "hex"
    assert parsed.auth.secrets == ("s3cret",)
    assert parsed.event_type.header == "X-GitHub-Event"
    assert parsed.delivery_id.header == "X-GitHub-Delivery"


def test_github_preset_still_needs_a_secret() -> None:
    with pytest.raises(ToolConfigError) as caught:
        parse_tool({"id": "gh", "provider": "github"})
    assert caught.value.field == "auth.secret"


def test_explicit_fields_override_the_preset() -> None:
    parsed = parse_tool(
        {
            "id": "gh",
            "provider": "github",
            "auth": {"secret": "s", "header": "X-Hub-Signature", "algorithm": "sha1"},
            "event_type": {"path": "action"},
            "delivery_id": {"header": "X-Request-Id"},
        }
    )
    assert parsed.auth.header == "X-Hub-Signature"
    assert parsed.auth.algorithm == "sha1"
    assert parsed.auth.prefix == "sha256="  # not overridden: still the preset's
    assert parsed.event_type.header is None
    assert parsed.event_type.path == "action"
    assert parsed.event_type.compiled is not None
    assert parsed.event_type.compiled.search({"action": "opened"}) == "opened"
    assert parsed.delivery_id.header == "X-Request-Id"


def test_a_different_auth_type_replaces_the_preset_scheme() -> None:
    parsed = parse_tool(
        {
            "id": "gh",
            "provider": "github",
            "auth": {"type": "token", "header": "X-Token", "secret": "t"},
        }
    )
    assert parsed.auth.type == "token"
    assert parsed.auth.header == "X-Token"
    assert parsed.auth.prefix == ""  # nothing of the hmac preset leaks in
    assert parsed.event_type.header == "X-GitHub-Event"  # extraction still from the preset


def test_secret_and_secrets_combine_for_rotation() -> None:
    parsed = parse_tool(
        {"id": "demo", "auth": {**HMAC, "secret": "new", "secrets": ["old", "older"]}}
    )
    assert parsed.auth.secrets == ("new", "old", "older")


def test_the_url_id_wins_over_the_body_id() -> None:
    parsed = parse_tool({"id": "from-body"}, tool_id="from-url")
    assert parsed.id == "from-url"
    assert parsed.config["id"] == "from-url"


def test_valid_full_definition() -> None:
    parsed = parse_tool(
        {
            "id": "shop.orders_v2",
            "enabled": False,
            "description": "orders",
            "auth": {**HMAC, "encoding": "base64", "algorithm": "sha512", "tolerance": "5m"},
            "allowed_ips": ["10.0.0.0/8", "2001:db8::/32"],
            "event_type": "X-Topic",
            "delivery_id": {"path": "meta.id"},
            "mode": "store_and_forward",
            "events": {"orders/create": {"mode": "transform_and_store", "transform": "order"}},
            "filter": "total > `0`",
            "transform": "{id: id, total: total}",
            "forward": {
                "url": "https://example.com/in",
                "method": "put",
                "headers": {"X-Api-Key": "k"},
                "timeout": "2500ms",
                "signing_secret": "whsec_c2VjcmV0LWtleQ==",
            },
            "retry": {"max_retries": 3, "initial_interval": "500ms", "multiplier": 1.5},
            "created_at": "2024-01-01T00:00:00Z",
        }
    )
    assert parsed.enabled is False
    assert parsed.auth.tolerance == 300.0
    assert parsed.event_type.header == "X-Topic"
    assert parsed.forward is not None
    assert parsed.forward.method == "PUT"
    assert parsed.forward.timeout == 2.5
    assert parsed.retry is not None
    assert parsed.retry.initial_interval == 0.5
    assert parsed.retry.max_interval == 300.0
    assert len(parsed.allowed_ips) == 2
    assert "created_at" not in parsed.config
