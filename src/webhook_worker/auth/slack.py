"""Slack: ``X-Slack-Signature: v0=<hex>`` over ``v0:{X-Slack-Request-Timestamp}:{body}``.

The key is the app's signing secret; the timestamp must be within the tolerance (default 300 s)
both ways, as in Slack's own SDKs. Slack also checks a new Events API URL with a signed
``url_verification`` request whose ``challenge`` must be echoed: :func:`url_verification_challenge`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

import orjson

from webhook_worker.auth import timestamp
from webhook_worker.auth.base import AuthError, Headers, read_header, utf8

if TYPE_CHECKING:
    from webhook_worker.tools.model import AuthConfig

SIGNATURE_HEADER = "X-Slack-Signature"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
_VERSION = "v0"
_MAX_CHALLENGE_CHARS = 1024


class SlackVerifier:
    def __init__(self, auth: AuthConfig) -> None:
        self._keys = tuple(utf8(secret) for secret in auth.secrets)
        self._tolerance = auth.tolerance or timestamp.DEFAULT_TOLERANCE

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        sent = read_header(headers, SIGNATURE_HEADER)
        raw_time = read_header(headers, TIMESTAMP_HEADER)
        when = timestamp.parse(raw_time, TIMESTAMP_HEADER)
        version, _, hex_digest = sent.partition("=")
        if version != _VERSION:
            raise AuthError(f"{SIGNATURE_HEADER} must start with '{_VERSION}='")
        try:
            signature = bytes.fromhex(hex_digest)
        except ValueError:
            raise AuthError(f"{SIGNATURE_HEADER} is not valid hex") from None
        signed = f"{_VERSION}:{raw_time}:".encode() + body
        if not any(
            hmac.compare_digest(hmac.digest(key, signed, hashlib.sha256), signature)
            for key in self._keys
        ):
            raise AuthError(f"{SIGNATURE_HEADER} does not match the body")
        timestamp.check(when, now, self._tolerance, TIMESTAMP_HEADER)


def sign(secret: str, body: bytes, raw_time: str) -> str:
    """The ``X-Slack-Signature`` value Slack sends for ``body`` with that timestamp header."""
    signed = f"{_VERSION}:{raw_time}:".encode() + body
    return f"{_VERSION}={hmac.new(utf8(secret), signed, hashlib.sha256).hexdigest()}"


def url_verification_challenge(body: bytes) -> str | None:
    """The ``challenge`` of a ``url_verification`` request, which Slack expects back as the
    response body (200, text/plain); None for any other body."""
    if b"url_verification" not in body:  # skips parsing for every ordinary event
        return None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or payload.get("type") != "url_verification":
        return None
    challenge = payload.get("challenge")
    if not isinstance(challenge, str) or not 0 < len(challenge) <= _MAX_CHALLENGE_CHARS:
        return None
    return challenge
