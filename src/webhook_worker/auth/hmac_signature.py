"""HMAC signature of the raw body in a header: ``X-Signature: sha256=<hex>`` and variants."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from webhook_worker.auth.base import AuthError, Headers
from webhook_worker.tools.model import AuthConfig

_DIGESTS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1, "sha512": hashlib.sha512}


class HmacVerifier:
    """Any configured secret (rotation) whose HMAC of the body equals the header's value."""

    def __init__(self, auth: AuthConfig) -> None:
        assert auth.header is not None
        self._header = auth.header
        self._digest = _DIGESTS[auth.algorithm]
        self._prefix = auth.prefix
        self._base64 = auth.encoding == "base64"
        self._keys = tuple(secret.encode() for secret in auth.secrets)

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        sent = headers.get(self._header)
        if not sent:
            raise AuthError(f"missing signature header {self._header}")
        if self._prefix:
            if not sent.startswith(self._prefix):
                raise AuthError(f"{self._header} must start with {self._prefix!r}")
            sent = sent[len(self._prefix) :]
        signature = _decode(sent.strip(), self._base64)
        if signature is None:
            raise AuthError(f"{self._header} is not valid {'base64' if self._base64 else 'hex'}")
        for key in self._keys:
            if hmac.compare_digest(hmac.new(key, body, self._digest).digest(), signature):
                return
        raise AuthError(f"{self._header} does not match the body")


def sign(secret: str, body: bytes, algorithm: str = "sha256", encoding: str = "hex") -> str:
    """The signature a sender computes (used by tests, ``send`` and the benchmark)."""
    digest = hmac.new(secret.encode(), body, _DIGESTS[algorithm]).digest()
    return base64.b64encode(digest).decode() if encoding == "base64" else digest.hex()


def _decode(value: str, is_base64: bool) -> bytes | None:
    try:
        if is_base64:
            return base64.b64decode(value, validate=True)
        return bytes.fromhex(value)
    except (ValueError, binascii.Error):
        return None
