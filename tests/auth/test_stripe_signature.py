"""Stripe-Signature: a pinned example, round trips with Stripe's own library both ways, the
tolerance (past only: Stripe's library accepts future timestamps), rotation and bad headers."""

from __future__ import annotations

import time

import pytest
import stripe

from tests.auth import support
from tests.auth.support import verifier
from webhook_worker.auth import AuthError, Verifier
from webhook_worker.auth.base import MAX_HEADER_CHARS
from webhook_worker.auth.stripe_signature import sign_header

SECRET = "whsec_test_secret"
BODY = b'{"id":"evt_1","object":"event","type":"invoice.paid"}'
WHEN = 1_700_000_000
# stripe.WebhookSignature.generate_signature_header(BODY, SECRET, WHEN), and independently
# `printf '1700000000.<body>' | openssl dgst -sha256 -hmac whsec_test_secret`.
HEADER = "t=1700000000,v1=dfb4777aaaec4ea29ff455dd4df7fe6b2ef71096ad3a93a158db7e100109ea91"


def check(v: Verifier, header: str | None, body: bytes = BODY, now: float = WHEN) -> None:
    support.check(v, {} if header is None else {"Stripe-Signature": header}, body, now)


def test_pinned_example() -> None:
    check(verifier("stripe", secret=SECRET), HEADER)
    assert sign_header(SECRET, BODY, WHEN) == HEADER
    assert stripe.WebhookSignature.generate_signature_header(BODY.decode(), SECRET, WHEN) == HEADER


def test_signed_by_stripes_library_verified_by_ours() -> None:
    now = int(time.time())
    body = (
        b'{"id": "evt_3Nx", "object": "event", "type": "payment_intent.succeeded", "x": "\xc3\xa9"}'
    )
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET, now)
    check(verifier("stripe", secret=SECRET), header, body, now)


def test_signed_by_ours_verified_by_stripes_library() -> None:
    now = int(time.time())
    header = sign_header(SECRET, BODY, now)
    assert stripe.WebhookSignature.verify_header(BODY, header, SECRET, tolerance=300)
    event = stripe.Webhook.construct_event(BODY, header, SECRET)
    assert event.type == "invoice.paid"


@pytest.mark.parametrize(
    ("header", "body", "secret"),
    [
        (HEADER, BODY.replace(b"paid", b"void"), SECRET),
        (HEADER, BODY + b" ", SECRET),
        (HEADER[:-1] + "0", BODY, SECRET),
        (HEADER, BODY, "whsec_other"),
        (HEADER, BODY, SECRET.removeprefix("whsec_")),  # the key is the whole whsec_ string
        (HEADER.replace("t=1700000000", "t=1700000001"), BODY, SECRET),
        (HEADER.replace("v1=", "v0="), BODY, SECRET),
    ],
    ids=["body", "whitespace", "signature", "secret", "secret-without-prefix", "timestamp",
         "v0-scheme"],
)  # fmt: skip
def test_tampering_is_refused(header: str, body: bytes, secret: str) -> None:
    with pytest.raises(AuthError):
        check(verifier("stripe", secret=secret), header, body, WHEN)


def test_any_v1_may_match_and_other_schemes_are_ignored() -> None:
    stale = "v1=" + "ab" * 32
    header = f"t={WHEN},v0={'cd' * 32},{stale},v1=nothex,{HEADER.split(',')[1]}"
    check(verifier("stripe", secret=SECRET), header)


def test_rotation_any_secret_verifies() -> None:
    check(verifier("stripe", secrets=["whsec_new", SECRET]), HEADER)


def test_older_than_the_tolerance_is_refused() -> None:
    v = verifier("stripe", secret=SECRET)
    check(v, HEADER, now=WHEN + 300)
    with pytest.raises(AuthError, match="old"):
        check(v, HEADER, now=WHEN + 301)
    longer = verifier("stripe", secret=SECRET, tolerance="10m")
    check(longer, HEADER, now=WHEN + 600)


def test_future_timestamps_are_accepted_like_stripes_library() -> None:
    # stripe.WebhookSignature.verify_header only refuses timestamps older than the tolerance.
    now = int(time.time())
    future = sign_header(SECRET, BODY, now + 3600)
    assert stripe.WebhookSignature.verify_header(BODY, future, SECRET, tolerance=300)
    check(verifier("stripe", secret=SECRET), future, now=now)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"v1={'ab' * 32}",  # no timestamp
        f"t={WHEN}",  # no signature
        f"t=abc,v1={'ab' * 32}",
        f"t=,v1={'ab' * 32}",
        f"t=-5,v1={'ab' * 32}",
        f"t=1e9,v1={'ab' * 32}",
        f"t={'9' * 5000},v1={'ab' * 32}",
        f"t={WHEN},v1=",
        f"t={WHEN},v1=zz",
        ",,,==,=",
        "t=" + "1" * 10 + ",v1=" + "a" * 100_000,
    ],
)
def test_malformed_headers_are_auth_errors(header: str | None) -> None:
    with pytest.raises(AuthError) as caught:
        check(verifier("stripe", secret=SECRET), header)
    assert SECRET not in str(caught.value)
    assert "ab" * 32 not in str(caught.value)


def test_an_overlong_header_is_refused_before_any_work() -> None:
    padded = HEADER + ",v0=" + "a" * MAX_HEADER_CHARS  # still holds the right v1
    with pytest.raises(AuthError, match="longer than"):
        check(verifier("stripe", secret=SECRET), padded)
