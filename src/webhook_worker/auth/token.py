"""Shared-secret schemes: a token header, ``Authorization: Bearer``, ``Authorization: Basic``."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import TYPE_CHECKING

from webhook_worker.auth.base import AuthError, Headers, read_header, utf8

if TYPE_CHECKING:
    from webhook_worker.tools.model import AuthConfig


def _matches(sent: str, secrets: tuple[bytes, ...]) -> bool:
    candidate = utf8(sent)
    # Check every secret (no early exit) so timing does not reveal which one matched.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(candidate, secret)
    return matched


class HeaderTokenVerifier:
    """The header (e.g. ``X-Gitlab-Token``) equals one of the secrets."""

    def __init__(self, auth: AuthConfig) -> None:
        assert auth.header is not None
        self._header = auth.header
        self._secrets = tuple(utf8(s) for s in auth.secrets)

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        sent = read_header(headers, self._header)
        if not _matches(sent, self._secrets):
            raise AuthError(f"{self._header} does not match")


class BearerVerifier:
    """``Authorization: Bearer <secret>`` (or the configured header)."""

    def __init__(self, auth: AuthConfig) -> None:
        self._header = auth.header or "Authorization"
        self._secrets = tuple(utf8(s) for s in auth.secrets)

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        sent = headers.get(self._header) or ""
        scheme, _, token = sent.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError(f"missing {self._header}: Bearer <token>")
        if not _matches(token.strip(), self._secrets):
            raise AuthError("bearer token does not match")


class BasicVerifier:
    """``Authorization: Basic base64(user:password)``; a secret is ``user:password``."""

    def __init__(self, auth: AuthConfig) -> None:
        self._header = auth.header or "Authorization"
        self._secrets = tuple(utf8(s) for s in auth.secrets)

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        sent = headers.get(self._header) or ""
        scheme, _, encoded = sent.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise AuthError(f"missing {self._header}: Basic <credentials>")
        try:
            credentials = base64.b64decode(encoded.strip(), validate=True).decode()
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise AuthError("basic credentials are not valid base64") from None
        if not _matches(credentials, self._secrets):
            raise AuthError("basic credentials do not match")
