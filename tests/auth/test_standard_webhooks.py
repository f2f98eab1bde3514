"""Standard Webhooks: the reference library's vector, round trips with ``standardwebhooks``
both ways, svix-* header names, the tolerance both ways, rotation and bad headers."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.auth import support
from tests.auth.support import verifier
from webhook_worker.auth import AuthError, Verifier
from webhook_worker.auth.standard_webhooks import decode_secret, sign

# standard-webhooks/standard-webhooks libraries/python/tests/test_webhooks.py (test_sign_function).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
WHEN = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(
    signature: str = SIGNATURE, msg_id: str = MSG_ID, when: str = str(WHEN), prefix: str = "webhook"
) -> dict[str, str]:
    return {f"{prefix}-id": msg_id, f"{prefix}-timestamp": when, f"{prefix}-signature": signature}


def check(v: Verifier, sent: dict[str, str], body: bytes = BODY, now: float = WHEN) -> None:
    support.check(v, sent, body, now)


def test_reference_vector() -> None:
    check(verifier("standard_webhooks", secret=SECRET), headers())
    assert sign(SECRET, MSG_ID, WHEN, BODY) == SIGNATURE


def test_secret_without_the_whsec_prefix_is_the_same_key() -> None:
    bare = SECRET.removeprefix("whsec_")
    check(verifier("standard_webhooks", secret=bare), headers())
    assert decode_secret(bare) == decode_secret(SECRET) == base64.b64decode(bare)


def test_svix_header_names_are_accepted() -> None:
    check(verifier("standard_webhooks", secret=SECRET), headers(prefix="svix"))


@pytest.mark.parametrize(
    ("sent", "body", "secret"),
    [
        (headers(), BODY.replace(b"2432", b"2433"), SECRET),
        (headers(signature="v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="), BODY, SECRET),
        (headers(), BODY, "whsec_" + base64.b64encode(b"another key of 24 bytes.").decode()),
        (headers(msg_id="msg_other"), BODY, SECRET),
        (headers(when=str(WHEN + 1)), BODY, SECRET),
        (headers(signature=SIGNATURE.replace("v1,", "v2,")), BODY, SECRET),
    ],
    ids=["body", "signature", "secret", "id", "timestamp", "version"],
)
def test_tampering_is_refused(sent: dict[str, str], body: bytes, secret: str) -> None:
    with pytest.raises(AuthError):
        check(verifier("standard_webhooks", secret=secret), sent, body)


def test_any_v1_in_the_list_may_match() -> None:
    listed = f"v1a,{'A' * 88} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1,!!! {SIGNATURE}"
    check(verifier("standard_webhooks", secret=SECRET), headers(signature=listed))


def test_rotation_any_secret_verifies() -> None:
    other = "whsec_" + base64.b64encode(b"a newer signing key here").decode()
    check(verifier("standard_webhooks", secrets=[other, SECRET]), headers())


@pytest.mark.parametrize(("skew", "ok"), [(-300, True), (300, True), (-301, False), (301, False)])
def test_tolerance_is_five_minutes_both_ways(skew: int, ok: bool) -> None:
    v = verifier("standard_webhooks", secret=SECRET)
    if ok:
        check(v, headers(), now=WHEN - skew)
    else:
        with pytest.raises(AuthError, match="webhook-timestamp"):
            check(v, headers(), now=WHEN - skew)


def test_signed_by_the_reference_library_verified_by_ours() -> None:
    now = datetime.now(tz=UTC)
    body = '{"type": "contact.created", "data": {"name": "Zoë"}}'
    signature = Webhook(SECRET).sign(msg_id="msg_1", timestamp=now, data=body)
    sent = headers(signature=signature, msg_id="msg_1", when=str(int(now.timestamp())))
    check(verifier("standard_webhooks", secret=SECRET), sent, body.encode(), now.timestamp())


def test_signed_by_ours_verified_by_the_reference_library() -> None:
    now = int(time.time())
    sent = headers(signature=sign(SECRET, "msg_2", now, BODY), msg_id="msg_2", when=str(now))
    assert Webhook(SECRET).verify(BODY, sent) == {"test": 2432232314}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY + b" ", sent)


@pytest.mark.parametrize(
    "sent",
    [
        {},
        {k: v for k, v in headers().items() if k != "webhook-id"},
        {k: v for k, v in headers().items() if k != "webhook-timestamp"},
        {k: v for k, v in headers().items() if k != "webhook-signature"},
        headers(when="hello"),
        headers(when="1614265330.0"),
        headers(signature="v1,not base64"),
        headers(signature="v1"),
        headers(signature=","),
        headers(signature="v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE"),  # unpadded
        headers(signature="   "),
        headers(signature="v1," + "A" * 20_000),
    ],
)
def test_malformed_headers_are_auth_errors(sent: dict[str, str]) -> None:
    with pytest.raises(AuthError) as caught:
        check(verifier("standard_webhooks", secret=SECRET), sent)
    assert SECRET.removeprefix("whsec_") not in str(caught.value)
