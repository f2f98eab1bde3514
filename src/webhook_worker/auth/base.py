"""The verifier seam: each auth scheme checks the raw request and raises AuthError or returns.

Verification works on the exact bytes received; nothing re-serialises the body first. Every
comparison of a secret or a signature is constant-time (``hmac.compare_digest``). A verifier
raises nothing but AuthError, whatever the headers and body hold.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from webhook_worker.errors import ToolConfigError
from webhook_worker.vocabulary import AuthType

if TYPE_CHECKING:
    # Only for annotations: tools.model imports this package to validate secrets.
    from webhook_worker.tools.model import AuthConfig

MAX_HEADER_CHARS = 8192
"""Longer credential headers are refused before any work is done on them."""


class AuthError(Exception):
    """The request's credentials are missing or wrong (401). The message is safe to show: it
    never contains a secret or the signature that was sent."""


class Headers(Protocol):
    """Case-insensitive header lookup (Starlette's ``Headers`` fits)."""

    def get(self, key: str, /) -> str | None: ...


class Verifier(Protocol):
    def verify(self, headers: Headers, body: bytes, now: float) -> bytes | None:
        """Return when the request is authentic; raise AuthError otherwise. ``now`` is the
        Unix time the request arrived (injectable so tests can pin the clock).

        A scheme that signs the body alone (no signed id or timestamp ties a signature to one
        delivery) returns the verified signature's bytes: they identify the signed body, so
        ingest uses them to recognise a captured request sent again under a new delivery id.
        Every other scheme returns None."""
        ...


@runtime_checkable
class SignsBodyAlone(Protocol):
    """A verifier whose :meth:`Verifier.verify` returns a replay key (it signs the body alone)."""

    def replay_keys(self, body: bytes) -> tuple[str, ...]:
        """Every replay key ingest may have remembered for a request with this body: one per
        secret, since any of them may have signed it (hex, as ingest keeps them)."""
        ...


VerifierFactory = Callable[["AuthConfig"], Verifier]


@functools.cache
def verifiers() -> Mapping[AuthType, VerifierFactory]:
    """Each auth type's verifier class: exactly one per :class:`AuthType` member (a test keeps it
    so). A new scheme registers here. Built on first use because the scheme modules import this
    one."""
    from webhook_worker.auth import (
        hmac_signature,
        slack,
        standard_webhooks,
        stripe_signature,
        token,
    )

    return MappingProxyType(
        {
            AuthType.NONE: NoAuth,
            AuthType.TOKEN: token.HeaderTokenVerifier,
            AuthType.HMAC: hmac_signature.HmacVerifier,
            AuthType.BASIC: token.BasicVerifier,
            AuthType.BEARER: token.BearerVerifier,
            AuthType.STRIPE: stripe_signature.StripeVerifier,
            AuthType.SLACK: slack.SlackVerifier,
            AuthType.STANDARD_WEBHOOKS: standard_webhooks.StandardWebhooksVerifier,
        }
    )


def build_verifier(auth: AuthConfig) -> Verifier:
    """The verifier for ``auth.type``. An unknown type raises ToolConfigError naming
    ``auth.type``: a type nobody verifies must never mean that every request is accepted."""
    try:
        factory = verifiers()[AuthType(auth.type)]
    except (ValueError, KeyError):
        known = ", ".join(verifiers())
        raise ToolConfigError(
            "auth.type", f"no verifier for auth type {auth.type!r} (known: {known})"
        ) from None
    return factory(auth)


class NoAuth:
    """``auth.type: none``: every request is accepted (the tool relies on allowed_ips, or on
    nothing)."""

    def __init__(self, auth: AuthConfig | None = None) -> None:
        pass

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        return None


def read_header(headers: Headers, *names: str) -> str:
    """The value of the first of ``names`` the request has; AuthError when none has a value or
    the value is longer than MAX_HEADER_CHARS."""
    for name in names:
        value = headers.get(name)
        if value:
            if len(value) > MAX_HEADER_CHARS:
                raise AuthError(f"{name} is longer than {MAX_HEADER_CHARS} characters")
            return value
    raise AuthError(f"missing header {' or '.join(names)}")


def utf8(text: str) -> bytes:
    """``text`` as UTF-8, never raising (a lone surrogate cannot match any secret anyway)."""
    return text.encode("utf-8", "surrogatepass")
