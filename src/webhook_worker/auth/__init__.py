"""Request authentication schemes, one module each, chosen per tool by :func:`build_verifier`."""

from webhook_worker.auth.base import AuthError, Headers, Verifier, build_verifier

__all__ = ["AuthError", "Headers", "Verifier", "build_verifier"]
