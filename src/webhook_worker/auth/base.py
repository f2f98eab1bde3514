"""The verifier seam: each auth scheme checks the raw request and raises AuthError or returns.

Verification works on the exact bytes received; nothing re-serialises the body first. Every
comparison of a secret or a signature is constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

from typing import Protocol

from webhook_worker.tools.model import AuthConfig


class AuthError(Exception):
    """The request's credentials are missing or wrong (401). The message is safe to show: it
    never contains a secret or the signature that was sent."""


class Headers(Protocol):
    """Case-insensitive header lookup (Starlette's ``Headers`` fits)."""

    def get(self, key: str, /) -> str | None: ...


class Verifier(Protocol):
    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        """Return when the request is authentic; raise AuthError otherwise."""
        ...


def build_verifier(auth: AuthConfig) -> Verifier:
    """The verifier for ``auth.type``. New schemes register here."""
    from webhook_worker.auth import hmac_signature, token

    if auth.type == "hmac":
        return hmac_signature.HmacVerifier(auth)
    if auth.type == "token":
        return token.HeaderTokenVerifier(auth)
    if auth.type == "bearer":
        return token.BearerVerifier(auth)
    if auth.type == "basic":
        return token.BasicVerifier(auth)
    return NoAuth()


class NoAuth:
    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        return None
