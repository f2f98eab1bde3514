"""Request authentication schemes, one module each, chosen per tool by :func:`build_verifier`.

``hmac_signature`` (GitHub, Jira, Bitbucket, Shopify, generic HMAC), ``token`` (GitLab, bearer,
basic), ``stripe_signature``, ``slack``, ``standard_webhooks``; ``timestamp`` holds the replay
window they share, ``handshake`` the provider set-up requests answered rather than queued.
"""

from webhook_worker.auth.base import AuthError, Headers, Verifier, build_verifier
from webhook_worker.auth.handshake import HandshakeReply, handshake_reply

__all__ = [
    "AuthError",
    "HandshakeReply",
    "Headers",
    "Verifier",
    "build_verifier",
    "handshake_reply",
]
