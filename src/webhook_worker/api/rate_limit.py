"""Per-tool ingest rate limits: a token bucket per tool, in each API process.

Only authenticated requests are counted (ingest checks the address and the credentials first),
so a sender without the tool's secret cannot spend the provider's share.

With several API processes behind a load balancer each enforces the limit on its own share of
the traffic, so the deployment as a whole admits up to ``processes x requests`` per period.
"""

from __future__ import annotations

import math
import time

from webhook_worker.tools.model import RateLimit


class RateLimiter:
    def __init__(self) -> None:
        # tool id -> (tokens left, last refill time, the limit they were counted under)
        self._buckets: dict[str, tuple[float, float, RateLimit]] = {}

    def wait(self, tool_id: str, limit: RateLimit) -> float:
        """0 when a request may pass now (and counts it); else the seconds until one may."""
        now = time.monotonic()
        tokens, last, counted_under = self._buckets.get(tool_id, (limit.requests, now, limit))
        if counted_under != limit:  # the tool's limit changed: start a fresh bucket
            tokens, last = float(limit.requests), now
        rate = limit.requests / limit.per
        tokens = min(float(limit.requests), tokens + (now - last) * rate)
        if tokens >= 1:
            self._buckets[tool_id] = (tokens - 1, now, limit)
            return 0.0
        self._buckets[tool_id] = (tokens, now, limit)
        return (1 - tokens) / rate


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
