"""Standard Webhooks (https://www.standardwebhooks.com), also sent by Svix and GitLab.

Headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (or the same with the
``svix-`` prefix). The signature header is a space-separated list of ``v1,<base64>``, each an
HMAC-SHA256 of ``{id}.{timestamp}.{body}`` keyed by the base64-decoded secret (after an optional
``whsec_``); any may match. The timestamp must be within the tolerance (default 300 s) both ways,
as in the reference libraries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import TYPE_CHECKING

from webhook_worker.auth import timestamp
from webhook_worker.auth.base import AuthError, Headers, read_header, utf8

if TYPE_CHECKING:
    from webhook_worker.tools.model import AuthConfig

ID_HEADERS = ("webhook-id", "svix-id")
TIMESTAMP_HEADERS = ("webhook-timestamp", "svix-timestamp")
SIGNATURE_HEADERS = ("webhook-signature", "svix-signature")
_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
_VERSION = "v1"


class StandardWebhooksVerifier:
    def __init__(self, auth: AuthConfig) -> None:
        self._keys = tuple(decode_secret(secret) for secret in auth.secrets)
        self._tolerance = auth.tolerance or timestamp.DEFAULT_TOLERANCE

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        message_id = read_header(headers, *ID_HEADERS)
        raw_time = read_header(headers, *TIMESTAMP_HEADERS)
        sent = read_header(headers, *SIGNATURE_HEADERS)
        when = timestamp.parse(raw_time, TIMESTAMP_HEADERS[0])
        signatures = _signatures(sent)
        if not signatures:
            raise AuthError(f"{SIGNATURE_HEADERS[0]} has no valid '{_VERSION},<base64>' entry")
        signed = utf8(message_id) + f".{raw_time}.".encode() + body
        expected = [hmac.digest(key, signed, hashlib.sha256) for key in self._keys]
        if not any(hmac.compare_digest(mine, theirs) for mine in expected for theirs in signatures):
            raise AuthError(f"no signature in {SIGNATURE_HEADERS[0]} matches the body")
        timestamp.check(when, now, self._tolerance, TIMESTAMP_HEADERS[0])


def decode_secret(secret: str) -> bytes:
    """The HMAC key for a ``whsec_<base64>`` (or bare base64) secret; ValueError when it is not
    base64. Missing padding is tolerated, as in the reference library."""
    text = secret.removeprefix(_SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("not base64") from None
    if not key:
        raise ValueError("empty")
    return key


def sign(secret: str, message_id: str, when: int, body: bytes) -> str:
    """The ``webhook-signature`` value a sender computes (one ``v1`` entry)."""
    signed = utf8(message_id) + f".{when}.".encode() + body
    digest = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return f"{_VERSION},{base64.b64encode(digest).decode()}"


def _signatures(value: str) -> list[bytes]:
    """The decoded ``v1`` entries; other versions (``v1a`` asymmetric) and undecodable entries
    are skipped."""
    found: list[bytes] = []
    for entry in value.split():
        version, _, encoded = entry.partition(",")
        if version != _VERSION:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (ValueError, binascii.Error):
            continue
    return found
