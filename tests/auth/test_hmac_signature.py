"""Body HMAC in a header: GitHub, Jira, Bitbucket, Shopify and generic HMAC (optionally with a
signed timestamp), against the providers' published examples."""

from __future__ import annotations

import hashlib
import hmac
from typing import ClassVar

import pytest

from tests.auth import support
from tests.auth.support import verifier
from webhook_worker.auth import AuthError, Verifier
from webhook_worker.auth.hmac_signature import sign

NOW = 1_700_000_000.0

# GitHub's documentation ("Validating webhook deliveries", testing the webhook payload validation).
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SHA256 = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
# The same example under the legacy SHA-1 header, computed with `openssl dgst -sha1 -hmac`.
GITHUB_SHA1 = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59"

# Shopify publishes no fixed vector: its libraries' tests sign with base64(HMAC-SHA256(secret,
# body)) computed on the fly (shopify-api-js lib/webhooks/__tests__/utils.ts `hmac`). This one
# was computed the same way with `openssl dgst -sha256 -hmac ... -binary | base64`.
SHOPIFY_SECRET = "shpss_0123456789abcdef"
SHOPIFY_BODY = b'{"id":820982911946154508,"email":"jon@example.com","total_price":"199.00"}'
SHOPIFY_HMAC = "nrHClCK3KxlVunNHdltMihysztIU1hg31wBbxhWmPwc="


def check(v: Verifier, headers: dict[str, str], body: bytes, now: float = NOW) -> None:
    support.check(v, headers, body, now)


def test_github_documentation_example() -> None:
    v = verifier("github", secret=GITHUB_SECRET)
    check(v, {"X-Hub-Signature-256": GITHUB_SHA256}, GITHUB_BODY)
    assert sign(GITHUB_SECRET, GITHUB_BODY) == GITHUB_SHA256.removeprefix("sha256=")


@pytest.mark.parametrize(
    ("headers", "body", "secret"),
    [
        ({"X-Hub-Signature-256": GITHUB_SHA256}, b"Hello, World?", GITHUB_SECRET),
        ({"X-Hub-Signature-256": GITHUB_SHA256}, GITHUB_BODY + b"\n", GITHUB_SECRET),
        ({"X-Hub-Signature-256": GITHUB_SHA256[:-1] + "f"}, GITHUB_BODY, GITHUB_SECRET),
        ({"X-Hub-Signature-256": GITHUB_SHA256}, GITHUB_BODY, GITHUB_SECRET + "!"),
        ({"X-Hub-Signature-256": GITHUB_SHA256.removeprefix("sha256=")}, GITHUB_BODY,
         GITHUB_SECRET),
        ({"X-Hub-Signature": GITHUB_SHA1}, GITHUB_BODY, GITHUB_SECRET),
        ({}, GITHUB_BODY, GITHUB_SECRET),
    ],
    ids=["body", "trailing-newline", "signature", "secret", "no-prefix", "sha1-only", "missing"],
)  # fmt: skip
def test_github_tampering_is_refused(headers: dict[str, str], body: bytes, secret: str) -> None:
    with pytest.raises(AuthError):
        check(verifier("github", secret=secret), headers, body)


def test_github_sha1_only_when_the_tool_asks_for_it() -> None:
    v = verifier("github", secret=GITHUB_SECRET, algorithm="sha1")
    check(v, {"X-Hub-Signature": GITHUB_SHA1}, GITHUB_BODY)
    with pytest.raises(AuthError):
        check(v, {"X-Hub-Signature-256": GITHUB_SHA256}, GITHUB_BODY)


@pytest.mark.parametrize("provider", ["jira", "bitbucket"])
def test_jira_and_bitbucket_sign_like_github_in_x_hub_signature(provider: str) -> None:
    v = verifier(provider, secret=GITHUB_SECRET)
    check(v, {"X-Hub-Signature": GITHUB_SHA256}, GITHUB_BODY)
    with pytest.raises(AuthError):
        check(v, {"X-Hub-Signature-256": GITHUB_SHA256}, GITHUB_BODY)
    with pytest.raises(AuthError):
        check(v, {"X-Hub-Signature": GITHUB_SHA256}, GITHUB_BODY + b" ")


def test_jira_without_a_secret_accepts_unsigned_deliveries() -> None:
    check(verifier("jira"), {}, b'{"webhookEvent": "jira:issue_created"}')


def test_shopify_example() -> None:
    v = verifier("shopify", secret=SHOPIFY_SECRET)
    check(v, {"X-Shopify-Hmac-Sha256": SHOPIFY_HMAC}, SHOPIFY_BODY)
    assert sign(SHOPIFY_SECRET, SHOPIFY_BODY, encoding="base64") == SHOPIFY_HMAC


@pytest.mark.parametrize(
    ("value", "body", "secret"),
    [
        (SHOPIFY_HMAC, SHOPIFY_BODY.replace(b"199", b"198"), SHOPIFY_SECRET),
        ("mrHClCK3KxlVunNHdltMihysztIU1hg31wBbxhWmPwc=", SHOPIFY_BODY, SHOPIFY_SECRET),
        (SHOPIFY_HMAC, SHOPIFY_BODY, "shpss_other"),
        (SHOPIFY_HMAC.rstrip("="), SHOPIFY_BODY, SHOPIFY_SECRET),
        ("not base64!", SHOPIFY_BODY, SHOPIFY_SECRET),
        (bytes.fromhex("9eb1c2").hex(), SHOPIFY_BODY, SHOPIFY_SECRET),
    ],
    ids=["body", "signature", "secret", "unpadded", "invalid-base64", "hex"],
)
def test_shopify_tampering_is_refused(value: str, body: bytes, secret: str) -> None:
    with pytest.raises(AuthError):
        check(verifier("shopify", secret=secret), {"X-Shopify-Hmac-Sha256": value}, body)


def test_rotation_any_secret_verifies() -> None:
    v = verifier("shopify", secrets=["shpss_new", SHOPIFY_SECRET])
    check(v, {"X-Shopify-Hmac-Sha256": SHOPIFY_HMAC}, SHOPIFY_BODY)


class TestSignedTimestamp:
    """Generic HMAC with ``timestamp_header``: ``{timestamp}.{body}`` is signed."""

    AUTH: ClassVar[dict[str, str]] = {
        "type": "hmac",
        "header": "X-Signature",
        "prefix": "sha256=",
        "timestamp_header": "X-Timestamp",
        "secret": "s3cret",
    }

    def headers(self, when: str, body: bytes) -> dict[str, str]:
        return {
            "X-Signature": "sha256=" + sign("s3cret", body, signed_timestamp=when),
            "X-Timestamp": when,
        }

    def test_signed_content_is_timestamp_dot_body(self) -> None:
        expected = hmac.new(b"s3cret", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert self.headers("1700000000", b"{}")["X-Signature"] == f"sha256={expected}"
        check(verifier(**self.AUTH), self.headers("1700000000", b"{}"), b"{}")

    @pytest.mark.parametrize("skew", [-300, 0, 300])
    def test_within_the_tolerance_both_ways(self, skew: int) -> None:
        when = str(int(NOW) + skew)
        check(verifier(**self.AUTH), self.headers(when, b"{}"), b"{}")

    @pytest.mark.parametrize("skew", [-301, 301])
    def test_outside_the_tolerance_both_ways(self, skew: int) -> None:
        when = str(int(NOW) + skew)
        with pytest.raises(AuthError, match="X-Timestamp"):
            check(verifier(**self.AUTH), self.headers(when, b"{}"), b"{}")

    def test_tolerance_is_per_tool(self) -> None:
        v = verifier(**{**self.AUTH, "tolerance": "1h"})
        check(v, self.headers(str(int(NOW) - 3500), b"{}"), b"{}")
        with pytest.raises(AuthError):
            check(v, self.headers(str(int(NOW) - 3700), b"{}"), b"{}")

    def test_a_changed_timestamp_breaks_the_signature(self) -> None:
        headers = self.headers("1700000000", b"{}")
        headers["X-Timestamp"] = "1700000001"
        with pytest.raises(AuthError, match="does not match"):
            check(verifier(**self.AUTH), headers, b"{}")

    @pytest.mark.parametrize(
        "when", ["", "abc", "1700000000.5", "-1700000000", "\u0661\u0667\u0660\u0660", "9" * 40]
    )
    def test_a_timestamp_that_is_not_whole_seconds_is_refused(self, when: str) -> None:
        headers = {**self.headers("1700000000", b"{}"), "X-Timestamp": when}
        with pytest.raises(AuthError):
            check(verifier(**self.AUTH), headers, b"{}")
