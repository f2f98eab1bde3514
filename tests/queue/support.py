"""What the queue tests share: a message builder and the reclaim idle times they use."""

from __future__ import annotations

import uuid
from typing import Any

from webhook_worker.queue.base import Message

TTL = 3600.0
"""An idempotency TTL no test reaches."""
NOT_YET = 60.0
"""A reclaim idle time (the lease, on the database) no test reaches."""
SOON = 0.1
"""A reclaim idle time every test reaches quickly."""


def message(delivery_id: str | None = None, tool_id: str = "github", **fields: Any) -> Message:
    """A message as ingest builds it; ``fields`` override any other attribute."""
    values: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "tool_id": tool_id,
        "event_type": "push",
        "delivery_id": delivery_id or uuid.uuid4().hex,
        "received_at": 1_700_000_000.123456,
        "headers": b'{"content-type":"application/json"}',
        "body": b'{"ok":true}',
        "traceparent": None,
    }
    values.update(fields)
    return Message(**values)
