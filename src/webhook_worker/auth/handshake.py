"""Set-up handshakes: requests a provider sends to check an endpoint, answered instead of queued.

Today only Slack's ``url_verification``: a signed request whose ``challenge`` is echoed back. The
ingest handler asks :func:`handshake_reply` after verification succeeds and, when it gets a reply,
sends it (200) and enqueues nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from webhook_worker.auth import slack

if TYPE_CHECKING:
    from webhook_worker.tools.model import Tool


@dataclass(frozen=True, slots=True)
class HandshakeReply:
    body: bytes
    media_type: str


def handshake_reply(tool: Tool, body: bytes) -> HandshakeReply | None:
    """The answer the provider expects when ``body`` (already verified) is a handshake; None
    for an ordinary delivery, which is queued as usual."""
    if tool.provider == "slack" or tool.auth.type == "slack":
        challenge = slack.url_verification_challenge(body)
        if challenge is not None:
            return HandshakeReply(challenge.encode(), "text/plain")
    return None
