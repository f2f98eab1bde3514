"""Slack request signing: Slack's documentation example, round trips with slack_sdk, the
tolerance both ways, and the url_verification handshake."""

from __future__ import annotations

import json

import pytest
from slack_sdk.signature import Clock, SignatureVerifier

from tests.auth import support
from tests.auth.support import verifier
from webhook_worker.auth import AuthError, Verifier, handshake_reply
from webhook_worker.auth.slack import sign, url_verification_challenge
from webhook_worker.tools.model import parse_tool

# https://api.slack.com/authentication/verifying-requests-from-slack (the worked example).
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TIMESTAMP = "1531420618"
BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
    b"&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner"
    b"&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
NOW = float(TIMESTAMP)


class FixedClock(Clock):
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def check(
    v: Verifier,
    signature: str | None = SIGNATURE,
    timestamp: str | None = TIMESTAMP,
    body: bytes = BODY,
    now: float = NOW,
) -> None:
    headers = {}
    if signature is not None:
        headers["X-Slack-Signature"] = signature
    if timestamp is not None:
        headers["X-Slack-Request-Timestamp"] = timestamp
    support.check(v, headers, body, now)


def test_slack_documentation_example() -> None:
    check(verifier("slack", secret=SECRET))
    assert sign(SECRET, BODY, TIMESTAMP) == SIGNATURE


@pytest.mark.parametrize(
    ("signature", "timestamp", "body", "secret"),
    [
        (SIGNATURE, TIMESTAMP, BODY.replace(b"foobar", b"foobaz"), SECRET),
        (SIGNATURE[:-1] + "2", TIMESTAMP, BODY, SECRET),
        (SIGNATURE, TIMESTAMP, BODY, SECRET[:-1] + "6"),
        (SIGNATURE, "1531420619", BODY, SECRET),
        (SIGNATURE.replace("v0=", "v1="), TIMESTAMP, BODY, SECRET),
        (SIGNATURE.removeprefix("v0="), TIMESTAMP, BODY, SECRET),
    ],
    ids=["body", "signature", "secret", "timestamp", "version", "no-version"],
)
def test_tampering_is_refused(signature: str, timestamp: str, body: bytes, secret: str) -> None:
    with pytest.raises(AuthError):
        check(verifier("slack", secret=secret), signature, timestamp, body, float(TIMESTAMP))


@pytest.mark.parametrize("skew", [-300, 300])
def test_within_five_minutes_either_way(skew: int) -> None:
    check(verifier("slack", secret=SECRET), now=NOW - skew)
    assert SignatureVerifier(SECRET, FixedClock(NOW - skew)).is_valid(BODY, TIMESTAMP, SIGNATURE)


@pytest.mark.parametrize("skew", [-301, 301])
def test_outside_five_minutes_either_way_like_slack_sdk(skew: int) -> None:
    with pytest.raises(AuthError, match="X-Slack-Request-Timestamp"):
        check(verifier("slack", secret=SECRET), now=NOW - skew)
    assert not SignatureVerifier(SECRET, FixedClock(NOW - skew)).is_valid(
        BODY, TIMESTAMP, SIGNATURE
    )


def test_signed_by_slack_sdk_verified_by_ours_and_back() -> None:
    body = json.dumps({"type": "event_callback", "event": {"type": "app_mention", "text": "é"}})
    theirs = SignatureVerifier(SECRET, FixedClock(NOW))
    signature = theirs.generate_signature(timestamp=TIMESTAMP, body=body)
    assert signature is not None
    check(verifier("slack", secret=SECRET), signature, body=body.encode())
    assert theirs.is_valid(body.encode(), TIMESTAMP, sign(SECRET, body.encode(), TIMESTAMP))


def test_rotation_any_secret_verifies() -> None:
    check(verifier("slack", secrets=["another-signing-secret", SECRET]))


@pytest.mark.parametrize(
    ("signature", "timestamp"),
    [
        (None, TIMESTAMP),
        (SIGNATURE, None),
        ("", ""),
        (SIGNATURE, "soon"),
        (SIGNATURE, "1531420618.5"),
        (SIGNATURE, " 1531420618"),
        ("v0=not-hex", TIMESTAMP),
        ("v0=" + "a" * 20_000, TIMESTAMP),
    ],
)
def test_malformed_headers_are_auth_errors(signature: str | None, timestamp: str | None) -> None:
    with pytest.raises(AuthError) as caught:
        check(verifier("slack", secret=SECRET), signature, timestamp)
    assert SECRET not in str(caught.value)


class TestUrlVerification:
    BODY = b'{"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}'  # noqa: E501

    def test_the_challenge_is_answered_for_slack_tools(self) -> None:
        tool = parse_tool({"id": "s", "provider": "slack", "auth": {"secret": SECRET}})
        reply = handshake_reply(tool, self.BODY)
        assert reply is not None
        assert reply.body == b"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
        assert reply.media_type == "text/plain"

    def test_other_providers_never_answer_it(self) -> None:
        tool = parse_tool({"id": "g", "provider": "generic"})
        assert handshake_reply(tool, self.BODY) is None

    @pytest.mark.parametrize(
        "body",
        [
            b'{"type": "event_callback", "event": {"type": "url_verification"}}',
            b'{"type": "url_verification"}',
            b'{"type": "url_verification", "challenge": 5}',
            b'{"type": "url_verification", "challenge": ""}',
            b"type=url_verification&challenge=abc",
            b'["url_verification"]',
            b"\xff url_verification",
            b"",
        ],
    )
    def test_anything_else_is_an_ordinary_delivery(self, body: bytes) -> None:
        assert url_verification_challenge(body) is None
