"""Stripe: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``.

``v1`` is the hex HMAC-SHA256 of ``{t}.{body}`` keyed by the endpoint's whole signing secret
(``whsec_...``, used as text, not decoded). While Stripe rolls a secret it sends one ``v1`` per
active secret; any may match. Like Stripe's own libraries, a timestamp older than the tolerance
is refused and one in the future is accepted.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

from webhook_worker.auth import timestamp
from webhook_worker.auth.base import AuthError, Headers, read_header, utf8

if TYPE_CHECKING:
    from webhook_worker.tools.model import AuthConfig

HEADER = "Stripe-Signature"
_SCHEME = "v1"


class StripeVerifier:
    def __init__(self, auth: AuthConfig) -> None:
        self._keys = tuple(utf8(secret) for secret in auth.secrets)
        self._tolerance = auth.tolerance or timestamp.DEFAULT_TOLERANCE

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        when, signatures = parse_header(read_header(headers, HEADER))
        signed = f"{when}.".encode() + body
        expected = [hmac.digest(key, signed, hashlib.sha256) for key in self._keys]
        if not any(hmac.compare_digest(mine, sent) for mine in expected for sent in signatures):
            raise AuthError(f"no {_SCHEME} signature in {HEADER} matches the body")
        timestamp.check(when, now, self._tolerance, f"{HEADER} t", allow_future=True)


def parse_header(value: str) -> tuple[int, list[bytes]]:
    """The timestamp and the decoded ``v1`` signatures; AuthError when either is missing.
    Entries of other schemes (``v0`` in test mode) and ``v1`` values that are not hex are
    skipped, as Stripe's libraries do."""
    when: int | None = None
    signatures: list[bytes] = []
    for item in value.split(","):
        key, _, text = item.strip().partition("=")
        if key == "t" and when is None:
            when = timestamp.parse(text, f"{HEADER} t")
        elif key == _SCHEME:
            try:
                signatures.append(bytes.fromhex(text))
            except ValueError:
                continue
    if when is None:
        raise AuthError(f"{HEADER} has no t= timestamp")
    if not signatures:
        raise AuthError(f"{HEADER} has no {_SCHEME}= signature")
    return when, signatures


def sign_header(secret: str, body: bytes, when: int) -> str:
    """The ``Stripe-Signature`` value Stripe sends for ``body`` at Unix time ``when``."""
    digest = hmac.new(utf8(secret), f"{when}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={when},{_SCHEME}={digest}"
