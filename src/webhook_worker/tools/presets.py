"""Provider presets: what ``"provider": "stripe"`` fills in when the tool does not say.

A preset supplies the auth scheme and where the event type and delivery id are found. The tool's
own fields always win over the preset's. docs/providers.md describes each provider's set-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class Preset:
    auth: Mapping[str, Any]
    """The auth fields a tool starts from (its own ``auth`` fields are laid over them)."""
    event_type: Mapping[str, Any] | None = None
    delivery_id: Mapping[str, Any] | None = None
    auth_without_secret: Mapping[str, Any] | None = None
    """Used instead of ``auth`` when the tool names neither a type nor a secret (a provider whose
    secret is optional, such as Jira)."""
    auth_by_algorithm: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Extra auth fields for a non-default ``algorithm`` when the tool names no header (GitHub's
    legacy SHA-1 signature lives in another header with another prefix)."""


def _hub_signature(header: str) -> dict[str, Any]:
    """``<header>: sha256=<hex HMAC-SHA256 of the body>``, the GitHub-style signature."""
    return {
        "type": "hmac",
        "header": header,
        "algorithm": "sha256",
        "encoding": "hex",
        "prefix": "sha256=",
    }


PRESETS: Final[dict[str, Preset]] = {
    "generic": Preset(auth={"type": "none"}),
    "github": Preset(
        auth=_hub_signature("X-Hub-Signature-256"),
        auth_by_algorithm={"sha1": {"header": "X-Hub-Signature", "prefix": "sha1="}},
        event_type={"header": "X-GitHub-Event"},
        delivery_id={"header": "X-GitHub-Delivery"},
    ),
    "gitlab": Preset(
        auth={"type": "token", "header": "X-Gitlab-Token"},
        event_type={"header": "X-Gitlab-Event"},
        delivery_id={"header": ["Idempotency-Key", "X-Gitlab-Event-UUID"]},
    ),
    "jira": Preset(
        auth=_hub_signature("X-Hub-Signature"),
        auth_without_secret={"type": "none"},
        event_type={"path": "webhookEvent"},
        delivery_id={"header": "X-Atlassian-Webhook-Identifier"},
    ),
    "bitbucket": Preset(
        auth=_hub_signature("X-Hub-Signature"),
        event_type={"header": "X-Event-Key"},
        # Bitbucket Cloud sends X-Request-UUID, Bitbucket Data Center X-Request-Id.
        delivery_id={"header": ["X-Request-UUID", "X-Request-Id"]},
    ),
    "stripe": Preset(
        auth={"type": "stripe"},
        event_type={"path": "type"},
        delivery_id={"path": "id"},
    ),
    "slack": Preset(
        auth={"type": "slack"},
        # Events API callbacks carry the event's type inside; other payloads (url_verification,
        # app_rate_limited) only at the top.
        event_type={"path": "event.type || type"},
        delivery_id={"path": "event_id"},
    ),
    "shopify": Preset(
        auth={
            "type": "hmac",
            "header": "X-Shopify-Hmac-Sha256",
            "algorithm": "sha256",
            "encoding": "base64",
        },
        event_type={"header": "X-Shopify-Topic"},
        delivery_id={"header": "X-Shopify-Webhook-Id"},
    ),
    "standard_webhooks": Preset(
        auth={"type": "standard_webhooks"},
        event_type={"path": "type"},
        delivery_id={"header": ["webhook-id", "svix-id"]},
    ),
}
