"""Provider presets and the auth fields they fill in: what each ``provider`` means, what a tool
can override, and the auth validation errors naming their field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from webhook_worker.errors import ToolConfigError
from webhook_worker.tools.model import PROVIDERS, auth_type_of, parse_tool

SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def parsed(provider: str, **auth: Any) -> Any:
    return parse_tool({"id": "t", "provider": provider, **({"auth": auth} if auth else {})})


def test_every_provider_of_the_spec_is_a_preset() -> None:
    assert set(PROVIDERS) == {
        "github", "gitlab", "jira", "bitbucket", "stripe", "slack", "shopify",
        "standard_webhooks", "generic",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("provider", "auth", "event_header", "delivery_headers"),
    [
        ("github", ("hmac", "X-Hub-Signature-256", "sha256=", "hex"),
         "X-GitHub-Event", ("X-GitHub-Delivery",)),
        ("gitlab", ("token", "X-Gitlab-Token", "", "hex"),
         "X-Gitlab-Event", ("Idempotency-Key", "X-Gitlab-Event-UUID")),
        ("jira", ("hmac", "X-Hub-Signature", "sha256=", "hex"),
         None, ("X-Atlassian-Webhook-Identifier",)),
        ("bitbucket", ("hmac", "X-Hub-Signature", "sha256=", "hex"),
         "X-Event-Key", ("X-Request-UUID", "X-Request-Id")),
        ("shopify", ("hmac", "X-Shopify-Hmac-Sha256", "", "base64"),
         "X-Shopify-Topic", ("X-Shopify-Webhook-Id",)),
        ("stripe", ("stripe", None, "", "hex"), None, ()),
        ("slack", ("slack", None, "", "hex"), None, ()),
        ("standard_webhooks", ("standard_webhooks", None, "", "hex"),
         None, ("webhook-id", "svix-id")),
    ],
)  # fmt: skip
def test_preset_fills_auth_and_extraction(
    provider: str,
    auth: tuple[str, str | None, str, str],
    event_header: str | None,
    delivery_headers: tuple[str, ...],
) -> None:
    tool = parsed(provider, secret=SW_SECRET)
    assert (tool.auth.type, tool.auth.header, tool.auth.prefix, tool.auth.encoding) == auth
    assert tool.event_type.header == event_header
    assert tool.delivery_id.headers == delivery_headers
    # Whatever is not read from a header is read from the body.
    assert (tool.event_type.path is None) == (event_header is not None)
    assert (tool.delivery_id.path is None) == bool(delivery_headers)


def test_body_paths_of_the_presets() -> None:
    stripe = parsed("stripe", secret="whsec_x")
    assert (stripe.event_type.path, stripe.delivery_id.path) == ("type", "id")
    slack = parsed("slack", secret="s")
    assert slack.event_type.compiled is not None and slack.delivery_id.path == "event_id"
    callback = {"type": "event_callback", "event": {"type": "app_mention"}, "event_id": "Ev1"}
    assert slack.event_type.compiled.search(callback) == "app_mention"
    assert slack.event_type.compiled.search({"type": "app_rate_limited"}) == "app_rate_limited"
    assert parsed("jira").event_type.path == "webhookEvent"


def test_github_sha1_when_the_tool_asks_for_it() -> None:
    tool = parsed("github", secret="s", algorithm="sha1")
    assert (tool.auth.header, tool.auth.prefix, tool.auth.algorithm) == (
        "X-Hub-Signature",
        "sha1=",
        "sha1",
    )


def test_jira_without_a_secret_needs_no_auth_and_with_one_is_hmac() -> None:
    assert parsed("jira").auth.type == "none"
    assert parsed("jira", tolerance="1m").auth.type == "none"
    assert parsed("jira", secret="s").auth.type == "hmac"
    with pytest.raises(ToolConfigError) as caught:
        parsed("jira", type="hmac")
    assert caught.value.field == "auth.secret"


def test_gitlab_signing_token_switches_to_standard_webhooks() -> None:
    tool = parsed("gitlab", type="standard_webhooks", secret=SW_SECRET)
    assert (tool.auth.type, tool.auth.header) == ("standard_webhooks", None)
    assert tool.event_type.header == "X-Gitlab-Event"


@pytest.mark.parametrize("provider", ["github", "gitlab", "bitbucket", "stripe", "slack",
                                      "shopify", "standard_webhooks"])  # fmt: skip
def test_a_secret_is_required(provider: str) -> None:
    with pytest.raises(ToolConfigError) as caught:
        parsed(provider)
    assert caught.value.field == "auth.secret"


def test_secret_headers_cover_the_fixed_signature_headers() -> None:
    assert parsed("stripe", secret="x").secret_headers == {"stripe-signature"}
    assert parsed("slack", secret="x").secret_headers == {"x-slack-signature"}
    assert parsed("standard_webhooks", secret=SW_SECRET).secret_headers == {
        "webhook-signature",
        "svix-signature",
    }
    assert parsed("shopify", secret="x").secret_headers == {"x-shopify-hmac-sha256"}


def test_header_lists_and_single_headers() -> None:
    tool = parse_tool(
        {"id": "t", "event_type": {"header": "X-A"}, "delivery_id": {"header": ["X-B", "X-C"]}}
    )
    assert tool.event_type.headers == ("X-A",) and tool.event_type.header == "X-A"
    assert tool.delivery_id.headers == ("X-B", "X-C") and tool.delivery_id.header == "X-B"
    assert tool.config["delivery_id"] == {"header": ["X-B", "X-C"]}


def test_timestamp_header_and_tolerance() -> None:
    tool = parse_tool(
        {
            "id": "t",
            "auth": {"type": "hmac", "header": "X-Sig", "timestamp_header": "X-Ts",
                     "tolerance": "2m", "secret": "s"},
        }
    )  # fmt: skip
    assert (tool.auth.timestamp_header, tool.auth.tolerance) == ("X-Ts", 120.0)


HMAC = {"type": "hmac", "header": "X-Sig", "secret": "s"}


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({"provider": "stripe", "auth": {"secret": "x", "header": "X-Sig"}}, "auth.header"),
        ({"provider": "slack", "auth": {"secret": "x", "header": "X-Sig"}}, "auth.header"),
        ({"auth": {"type": "standard_webhooks", "secret": "whsec_not base64!"}}, "auth.secrets"),
        ({"auth": {"type": "standard_webhooks", "secrets": [SW_SECRET, "%%"]}}, "auth.secrets"),
        ({"auth": {"type": "standard_webhooks", "secret": "whsec_"}}, "auth.secrets"),
        ({"auth": {"type": "token", "header": "X-T", "secret": "s", "timestamp_header": "X-Ts"}},
         "auth.timestamp_header"),
        ({"auth": {**HMAC, "timestamp_header": "X Ts"}}, "auth.timestamp_header"),
        ({"auth": {**HMAC, "timestamp_header": "X-Ts\n"}}, "auth.timestamp_header"),
        ({"auth": {**HMAC, "tolerance": 0}}, "auth.tolerance"),
        ({"auth": {**HMAC, "tolerance": "0s"}}, "auth.tolerance"),
        ({"auth": {"type": "svix", "secret": "s"}}, "auth.type"),
        ({"delivery_id": {"header": []}}, "delivery_id.header"),
        ({"delivery_id": {"header": ["X-A", "bad header"]}}, "delivery_id.header"),
        ({"delivery_id": {"header": ["X-A"] * 9}}, "delivery_id.header"),
        ({"event_type": {"header": 5}}, "event_type.header"),
    ],
)  # fmt: skip
def test_invalid_auth_is_named(definition: dict[str, Any], field: str) -> None:
    with pytest.raises(ToolConfigError) as caught:
        parse_tool({"id": "t", **definition})
    assert caught.value.field == field
    assert "not base64!" not in str(caught.value)  # a secret is never echoed


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        ({"provider": "standard_webhooks", "auth": {"secret": "********"}}, "standard_webhooks"),
        ({"provider": "jira"}, "none"),
        ({"provider": "jira", "auth": {"secret": "********"}}, "hmac"),
        ({"provider": "gitlab", "auth": {"type": "standard_webhooks"}}, "standard_webhooks"),
        ({"auth": {"type": "bearer"}}, "bearer"),
        ({"provider": "unknown"}, "none"),
        ({}, "none"),
    ],
)
def test_auth_type_of_a_redacted_view(definition: dict[str, Any], expected: str) -> None:
    assert auth_type_of(definition) == expected


def test_the_tool_definitions_in_docs_providers_md_are_valid() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "providers.md"
    blocks = re.findall(r"```json\n(.*?)\n```", page.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks
    for block in blocks:
        parse_tool(json.loads(block))
