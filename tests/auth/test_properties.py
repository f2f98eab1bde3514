"""Whatever arrives, every verifier either returns or raises AuthError, and the message never
carries a secret. Headers are tried both as arbitrary text and as raw bytes through Starlette's
header decoding (what the ingest handler really passes)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from tests.auth.support import AnyHeaders, verifier
from webhook_worker.auth import (
    AuthError,
    Verifier,
    handshake_reply,
    slack,
    standard_webhooks,
    timestamp,
)
from webhook_worker.tools.model import parse_tool

SECRETS = ("s3cret-one", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
SCHEMES: dict[str, tuple[str, dict[str, Any]]] = {
    "github": ("github", {"secrets": list(SECRETS)}),
    "github-sha1": ("github", {"secrets": list(SECRETS), "algorithm": "sha1"}),
    "gitlab": ("gitlab", {"secrets": list(SECRETS)}),
    "gitlab-standard": ("gitlab", {"type": "standard_webhooks", "secret": SECRETS[1]}),
    "jira": ("jira", {"secrets": list(SECRETS)}),
    "bitbucket": ("bitbucket", {"secrets": list(SECRETS)}),
    "stripe": ("stripe", {"secrets": list(SECRETS)}),
    "slack": ("slack", {"secrets": list(SECRETS)}),
    "shopify": ("shopify", {"secrets": list(SECRETS)}),
    "standard_webhooks": ("standard_webhooks", {"secret": SECRETS[1]}),
    "hmac-timestamp": ("generic", {"type": "hmac", "header": "X-Sig", "prefix": "v1=",
                                   "timestamp_header": "X-Ts", "secrets": list(SECRETS)}),
    "bearer": ("generic", {"type": "bearer", "secrets": list(SECRETS)}),
    "basic": ("generic", {"type": "basic", "secret": "user:pass"}),
}  # fmt: skip
VERIFIERS: dict[str, Verifier] = {name: verifier(p, **auth) for name, (p, auth) in SCHEMES.items()}

# Every header name any scheme reads, so generated requests reach past "missing header".
NAMES = sorted(
    {
        "X-Hub-Signature-256", "X-Hub-Signature", "X-Gitlab-Token", "Stripe-Signature",
        "X-Slack-Signature", "X-Slack-Request-Timestamp", "X-Shopify-Hmac-Sha256", "webhook-id",
        "webhook-timestamp", "webhook-signature", "svix-id", "svix-timestamp", "svix-signature",
        "X-Sig", "X-Ts", "Authorization",
    }
)  # fmt: skip
# Values shaped like the real thing, so parsing gets deep, mixed with anything at all.
SHAPED = st.one_of(
    st.text(),
    st.text(alphabet="0123456789abcdef=,.tv ", max_size=200),
    st.builds(lambda t, s: f"t={t},v1={s}", st.integers(-(10**20), 10**20), st.text(max_size=80)),
    st.builds(lambda s: f"v1,{s}", st.text(alphabet="ABCDEFabcdef0123456789+/= ", max_size=90)),
    st.builds(lambda s: f"sha256={s}", st.text(alphabet="0123456789abcdefXYZ", max_size=70)),
    st.builds(lambda s: f"Basic {s}", st.text(max_size=40)),
    st.integers(-(10**15), 10**15).map(str),
    st.just("1700000000"),
)
HEADER_MAPS = st.dictionaries(st.sampled_from(NAMES), SHAPED, max_size=len(NAMES))
RAW_HEADERS = st.lists(
    st.tuples(st.sampled_from(NAMES).map(str.encode), st.binary(max_size=120)), max_size=12
)
BODIES = st.one_of(st.binary(max_size=300), st.just(b""), st.just(b"\xff\xfe\x00"))
NOWS = st.one_of(st.just(1_700_000_000.0), st.floats(allow_nan=False, allow_infinity=False))


def assert_only_auth_errors(v: Verifier, headers: Any, body: bytes, now: float) -> None:
    try:
        v.verify(headers, body, now)
    except AuthError as exc:
        message = str(exc)
        for secret in (*SECRETS, "user:pass"):
            assert secret not in message


@pytest.mark.parametrize("scheme", sorted(VERIFIERS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sent=HEADER_MAPS, body=BODIES, now=NOWS)
def test_any_text_headers_give_only_auth_errors(
    scheme: str, sent: dict[str, str], body: bytes, now: float
) -> None:
    assert_only_auth_errors(VERIFIERS[scheme], AnyHeaders(sent), body, now)


@pytest.mark.parametrize("scheme", sorted(VERIFIERS))
@settings(max_examples=150, deadline=None)
@given(raw=RAW_HEADERS, body=BODIES)
def test_any_raw_header_bytes_give_only_auth_errors(
    scheme: str, raw: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers = Headers(raw=[(name.lower(), value) for name, value in raw])
    assert_only_auth_errors(VERIFIERS[scheme], headers, body, 1_700_000_000.0)


# The parsers beside the verifiers: the Slack handshake body, signed timestamps and Standard
# Webhooks secrets.

SLACK_TOOL = parse_tool({"id": "s", "provider": "slack", "auth": {"secret": SECRETS[0]}})
HANDSHAKE_BODIES = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda challenge, kind: orjson.dumps({"type": kind, "challenge": challenge}),
        st.one_of(st.text(max_size=1100), st.integers(-(10**6), 10**6), st.none(), st.just([])),
        st.sampled_from(["url_verification", "event_callback", ""]),
    ),
    st.just(b'{"type": "url_verification", "challenge": "' + b"c" * 1025 + b'"}'),
    st.just(b"[" * 5000 + b'"url_verification"'),
)


@settings(max_examples=300, deadline=None)
@given(body=HANDSHAKE_BODIES)
def test_any_body_gives_a_bounded_challenge_or_none(body: bytes) -> None:
    challenge = slack.url_verification_challenge(body)
    reply = handshake_reply(SLACK_TOOL, body)
    if challenge is None:
        assert reply is None
        return
    assert 0 < len(challenge) <= 1024
    assert orjson.loads(body)["challenge"] == challenge
    assert reply is not None
    assert (reply.body, reply.media_type) == (challenge.encode(), "text/plain")


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(max_size=20), st.integers(-(10**13), 10**13).map(str)))
def test_any_timestamp_text_is_whole_seconds_or_an_auth_error(value: str) -> None:
    try:
        seconds = timestamp.parse(value, "X-Ts")
    except AuthError as exc:
        assert "X-Ts" in str(exc)
    else:
        assert str(seconds) == value.lstrip("0").rjust(1, "0")
        assert 0 <= seconds < 10**12


@settings(max_examples=300, deadline=None)
@given(secret=st.one_of(st.text(max_size=60), st.text(max_size=60).map("whsec_".__add__)))
def test_any_standard_webhooks_secret_decodes_or_is_a_value_error(secret: str) -> None:
    try:
        key = standard_webhooks.decode_secret(secret)
    except ValueError:
        return
    assert key
