"""Provider presets: what ``"provider": "github"`` fills in when the tool does not say.

A preset supplies the auth scheme and where the event type and delivery id are found. The tool's
own fields always win over the preset's.
"""

from __future__ import annotations

from typing import Any, Final

PRESETS: Final[dict[str, dict[str, Any]]] = {
    "generic": {
        "auth": {"type": "none"},
        "event_type": None,
        "delivery_id": None,
    },
    "github": {
        "auth": {
            "type": "hmac",
            "header": "X-Hub-Signature-256",
            "algorithm": "sha256",
            "encoding": "hex",
            "prefix": "sha256=",
        },
        "event_type": {"header": "X-GitHub-Event"},
        "delivery_id": {"header": "X-GitHub-Delivery"},
    },
}
