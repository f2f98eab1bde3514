"""The one rule for "this header carries a credential".

Two places ask it and must agree: ingest (such headers of an incoming webhook are not stored with
the event, so they are never shown or logged) and the tool definitions (such ``forward.headers``
values are encrypted at rest and redacted in every view). A header counts as a credential when
its name contains any of :data:`CREDENTIAL_WORDS`, whatever its case.

The rule leans towards hiding: any name with ``key`` in it is caught. Hiding a harmless header
costs a little context; storing or showing a credential cannot be undone. The exceptions are the
few ``*-Key`` headers that providers use for routing and de-duplication (:data:`NOT_CREDENTIALS`):
they carry no secret, and an event without them could not be replayed faithfully.
"""

from __future__ import annotations

import functools
from typing import Final

CREDENTIAL_WORDS: Final = (
    "auth",  # authorization, proxy-authorization, x-auth-token, ...
    "cookie",
    "token",
    "secret",
    "signature",
    "password",
    "key",  # api-key, x-access-key, ...
    "hmac",
    "credential",
)
"""Lower-case parts of a header name that mark its value as a credential."""

NOT_CREDENTIALS: Final = frozenset(
    {
        "idempotency-key",  # GitLab's delivery id, and a common de-duplication header
        "x-event-key",  # Bitbucket's event type
    }
)
"""Lower-case names that contain a credential word but are public metadata of the webhook."""


# Cached by name: ingest asks about every header of every request, and senders repeat the same
# few names, so a lookup is a dictionary hit. The bound keeps odd names from growing it forever.
@functools.lru_cache(maxsize=4096)
def is_credential_header(name: str) -> bool:
    """True when the header ``name`` (any case) carries a credential, a token or a signature."""
    lowered = name.lower()
    if lowered in NOT_CREDENTIALS:
        return False
    return any(word in lowered for word in CREDENTIAL_WORDS)
