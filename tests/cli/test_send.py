"""``sign_request`` signs as each auth scheme's sender would: the real verifiers accept it."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from typing import Any, cast

import httpx
import pytest
import stripe
from slack_sdk.signature import SignatureVerifier
from standardwebhooks.webhooks import Webhook

from webhook_worker.auth import AuthError, build_verifier
from webhook_worker.cli.send import default_event, sample_payload, sign_request
from webhook_worker.tools.model import FieldSource, Tool, parse_tool
from webhook_worker.vocabulary import AuthType

BODY = b'{"action": "opened", "number": 7}'
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def tool(auth: dict[str, Any] | None = None, **fields: Any) -> Tool:
    return parse_tool({"id": "demo", **({"auth": auth} if auth else {}), **fields})


def verify(parsed: Tool, headers: dict[str, str], body: bytes = BODY) -> None:
    build_verifier(parsed.auth).verify(httpx.Headers(headers), body, time.time())


@pytest.mark.parametrize(
    "auth",
    [
        {"type": "hmac", "header": "X-Signature", "secret": "s3cret"},
        {"type": "hmac", "header": "X-Signature", "prefix": "sha256=", "secret": "s3cret"},
        {"type": "hmac", "header": "X-Sig", "algorithm": "sha1", "prefix": "sha1=", "secret": "k1"},
        {"type": "hmac", "header": "X-Sig", "algorithm": "sha512", "encoding": "base64",
         "secret": "longer-secret"},
        {"type": "token", "header": "X-Gitlab-Token", "secret": "t0ken"},
        {"type": "bearer", "secret": "t0ken"},
        {"type": "bearer", "header": "X-Auth", "secret": "t0ken"},
        {"type": "basic", "secret": "user:pa:ss"},
    ],
)  # fmt: skip
def test_every_scheme_verifies_and_a_changed_body_does_not(auth: dict[str, Any]) -> None:
    parsed = tool(auth)
    headers = sign_request(parsed, BODY, "push")
    verify(parsed, headers)
    if auth["type"] == "hmac":
        assert auth["secret"] not in json.dumps(headers)
        with pytest.raises(AuthError):
            verify(parsed, headers, BODY + b" ")


def test_hmac_header_is_prefix_and_digest_of_the_exact_bytes() -> None:
    parsed = tool({"type": "hmac", "header": "X-Signature", "prefix": "sha256=", "secret": "k"})
    headers = sign_request(parsed, b"hello", "push")
    expected = hmac.new(b"k", b"hello", hashlib.sha256).hexdigest()
    assert headers["X-Signature"] == f"sha256={expected}"
    assert headers["Content-Type"] == "application/json"
    b64 = tool({"type": "hmac", "header": "X-S", "encoding": "base64", "secret": "k"})
    digest = hmac.new(b"k", b"hello", hashlib.sha256).digest()
    assert sign_request(b64, b"hello", "push")["X-S"] == base64.b64encode(digest).decode()


def test_rotation_signs_with_the_first_secret() -> None:
    parsed = tool({"type": "hmac", "header": "X-Sig", "secret": "new", "secrets": ["old"]})
    headers = sign_request(parsed, BODY, "push")
    only_new = dataclasses.replace(parsed.auth, secrets=("new",))
    build_verifier(only_new).verify(httpx.Headers(headers), BODY, time.time())
    only_old = dataclasses.replace(parsed.auth, secrets=("old",))
    with pytest.raises(AuthError):
        build_verifier(only_old).verify(httpx.Headers(headers), BODY, time.time())


def test_no_auth_sends_no_credentials() -> None:
    headers = sign_request(tool(), BODY, "push")
    assert headers == {"Content-Type": "application/json"}


def test_github_preset_headers() -> None:
    parsed = tool({"secret": "gh-s3cret"}, provider="github")
    first = sign_request(parsed, BODY, "pull_request")
    second = sign_request(parsed, BODY, "pull_request")
    verify(parsed, first)
    assert first["X-Hub-Signature-256"].startswith("sha256=")
    assert first["X-GitHub-Event"] == "pull_request"
    assert first["X-GitHub-Delivery"] != second["X-GitHub-Delivery"]  # never a duplicate


def test_event_type_and_delivery_id_read_from_the_body_get_no_header() -> None:
    parsed = tool(event_type={"path": "action"}, delivery_id={"path": "id"})
    assert sign_request(parsed, BODY, "push") == {"Content-Type": "application/json"}


def test_an_unknown_scheme_is_refused_clearly() -> None:
    parsed = tool({"type": "token", "header": "X-T", "secret": "t"})
    # Outside AuthType on purpose (the cast smuggles it past mypy): sign_request must refuse it.
    kerberos = cast(AuthType, "kerberos")
    future = dataclasses.replace(parsed, auth=dataclasses.replace(parsed.auth, type=kerberos))
    with pytest.raises(ValueError, match="kerberos"):
        sign_request(future, BODY, "push")


def test_sample_payload_is_unique_json() -> None:
    parsed = tool()
    first, second = (json.loads(sample_payload(parsed, "ping")) for _ in range(2))
    assert first["id"] != second["id"]
    assert first["event"] == "ping"


def test_sample_payload_fills_the_paths_the_tool_reads() -> None:
    parsed = tool(event_type={"path": "meta.kind"}, delivery_id={"path": "meta.delivery"})
    payload = json.loads(sample_payload(parsed, "order.created"))
    assert payload["meta"]["kind"] == "order.created"
    assert payload["meta"]["delivery"] == payload["id"]
    assert parsed.event_type.compiled is not None
    assert parsed.event_type.compiled.search(payload) == "order.created"


# Every preset, with the secret a real account of that provider would have.
PRESET_AUTH: dict[str, dict[str, Any]] = {
    "github": {"secret": "gh-secret"},
    "gitlab": {"secret": "gl-token"},
    "gitlab-signing-token": {"type": "standard_webhooks", "secret": SW_SECRET},
    "jira": {"secret": "jira-secret"},
    "jira-unsigned": {},
    "bitbucket": {"secret": "bb-secret"},
    "stripe": {"secrets": ["whsec_new", "whsec_old"]},
    "slack": {"secret": "8f742231b10e8888abcd99yyyzzz85a5"},
    "shopify": {"secret": "shpss_secret"},
    "standard_webhooks": {"secret": SW_SECRET},
    "generic": {"type": "hmac", "header": "X-Sig", "prefix": "sha256=",
                "timestamp_header": "X-Ts", "secret": "s"},
}  # fmt: skip


def preset(name: str) -> Tool:
    return tool(PRESET_AUTH[name], provider=name.split("-")[0])


def extract(source: FieldSource, headers: dict[str, str], body: bytes) -> Any:
    """What ingest reads for ``source`` from this request."""
    if source.header is not None:
        return headers.get(source.header)
    assert source.compiled is not None
    return source.compiled.search(json.loads(body))


@pytest.mark.parametrize("name", sorted(PRESET_AUTH))
def test_every_preset_signs_a_sample_our_verifier_accepts(name: str) -> None:
    parsed = preset(name)
    event = default_event(parsed)
    body = sample_payload(parsed, event)
    headers = sign_request(parsed, body, event)
    verify(parsed, headers, body)
    if parsed.auth.type not in ("none", "token"):  # the body is signed
        with pytest.raises(AuthError):
            verify(parsed, headers, body + b"\n")
    if parsed.provider != "generic":
        assert extract(parsed.event_type, headers, body) == event
        assert extract(parsed.delivery_id, headers, body)
    assert not any(secret in json.dumps(headers) for secret in ("whsec_new", "s3cret", "gh-secret"))


@pytest.mark.parametrize("name", sorted(PRESET_AUTH))
def test_every_preset_sample_differs_each_time(name: str) -> None:
    parsed = preset(name)
    assert sample_payload(parsed, "x") != sample_payload(parsed, "x")


def test_stripe_send_is_what_stripes_library_accepts_with_the_first_secret() -> None:
    parsed = preset("stripe")
    body = sample_payload(parsed, "invoice.paid")
    header = sign_request(parsed, body, "invoice.paid")["Stripe-Signature"]
    assert stripe.WebhookSignature.verify_header(body, header, "whsec_new", tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body, header, "whsec_old", tolerance=300)
    assert json.loads(body)["type"] == "invoice.paid"
    assert json.loads(body)["id"].startswith("evt_")


def test_slack_send_is_what_slack_sdk_accepts() -> None:
    parsed = preset("slack")
    body = sample_payload(parsed, "app_mention")
    headers = sign_request(parsed, body, "app_mention")
    assert SignatureVerifier("8f742231b10e8888abcd99yyyzzz85a5").is_valid_request(body, headers)
    payload = json.loads(body)
    assert payload["type"] == "event_callback"
    assert payload["event"]["type"] == "app_mention"
    assert payload["event_id"].startswith("Ev")


def test_standard_webhooks_send_is_what_the_reference_library_accepts() -> None:
    parsed = preset("standard_webhooks")
    body = sample_payload(parsed, "contact.created")
    headers = sign_request(parsed, body, "contact.created")
    assert Webhook(SW_SECRET).verify(body, headers)["type"] == "contact.created"
    assert headers["webhook-id"].startswith("msg_")  # the delivery id is the signed id


def test_timestamped_schemes_sign_at_the_given_time() -> None:
    parsed = preset("slack")
    headers = sign_request(parsed, BODY, "x", now=1_531_420_618.9)
    assert headers["X-Slack-Request-Timestamp"] == "1531420618"
    generic = sign_request(preset("generic"), BODY, "x", now=1_700_000_000)
    assert generic["X-Ts"] == "1700000000"
    expected = hmac.new(b"s", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert generic["X-Sig"] == f"sha256={expected}"


def test_default_events_are_the_providers_own() -> None:
    assert default_event(preset("github")) == "ping"
    assert default_event(preset("stripe")) == "payment_intent.succeeded"
    assert default_event(preset("gitlab")) == "Push Hook"
    assert default_event(tool()) == "ping"
