"""HMAC signature of the raw body in a header: ``X-Signature: sha256=<hex>`` and variants.

GitHub, Jira, Bitbucket and Shopify sign this way; ``generic`` tools pick the header, digest,
encoding and prefix. With ``timestamp_header`` the signed content is ``{timestamp}.{body}`` and
the timestamp must be within the tolerance, both ways.
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

_DIGESTS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1, "sha512": hashlib.sha512}


class HmacVerifier:
    """Any configured secret (rotation) whose HMAC of the body equals the header's value."""

    def __init__(self, auth: AuthConfig) -> None:
        assert auth.header is not None
        self._header = auth.header
        self._digest = _DIGESTS[auth.algorithm]
        self._prefix = auth.prefix
        self._base64 = auth.encoding == "base64"
        self._keys = tuple(utf8(secret) for secret in auth.secrets)
        self._timestamp_header = auth.timestamp_header
        self._tolerance = auth.tolerance or timestamp.DEFAULT_TOLERANCE

    def verify(self, headers: Headers, body: bytes, now: float) -> bytes | None:
        sent = read_header(headers, self._header)
        if self._prefix:
            if not sent.startswith(self._prefix):
                raise AuthError(f"{self._header} must start with {self._prefix!r}")
            sent = sent[len(self._prefix) :]
        signature = _decode(sent.strip(), self._base64)
        if signature is None:
            raise AuthError(f"{self._header} is not valid {'base64' if self._base64 else 'hex'}")
        signed = body
        when = None
        if self._timestamp_header is not None:
            raw_time = read_header(headers, self._timestamp_header)
            when = timestamp.parse(raw_time, self._timestamp_header)
            signed = raw_time.encode() + b"." + body
        if not any(
            hmac.compare_digest(hmac.digest(key, signed, self._digest), signature)
            for key in self._keys
        ):
            raise AuthError(f"{self._header} does not match the body")
        if when is not None and self._timestamp_header is not None:
            timestamp.check(when, now, self._tolerance, self._timestamp_header)
            return None
        # Signed alone, the body is identified by the signature, decoded (so that the hex case,
        # base64 padding bits or spaces of its text, which a replayer may vary, do not count):
        # it equals the HMAC of the body under the secret that verified it.
        return signature

    def replay_keys(self, body: bytes) -> tuple[str, ...]:
        """What :meth:`verify` may have returned for ``body`` (hex), under each secret; none
        when the timestamp is signed too (then verify returns no key)."""
        if self._timestamp_header is not None:
            return ()
        return tuple(hmac.digest(key, body, self._digest).hex() for key in self._keys)


def sign(
    secret: str,
    body: bytes,
    algorithm: str = "sha256",
    encoding: str = "hex",
    signed_timestamp: str | None = None,
) -> str:
    """The signature a sender computes (used by tests, ``send`` and the benchmark). With
    ``signed_timestamp`` the signed content is ``{signed_timestamp}.{body}``."""
    content = body if signed_timestamp is None else f"{signed_timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, _DIGESTS[algorithm]).digest()
    return base64.b64encode(digest).decode() if encoding == "base64" else digest.hex()


def _decode(value: str, is_base64: bool) -> bytes | None:
    try:
        if is_base64:
            return base64.b64decode(value, validate=True)
        return bytes.fromhex(value)
    except (ValueError, binascii.Error):
        return None
