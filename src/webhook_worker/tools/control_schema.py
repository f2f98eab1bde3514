"""The sections of a destination's delivery control: its rate limit and circuit breaker.

They are declared apart from the tool's own ``rate_limit`` (tools/schema.py), which limits what
ingest accepts: these limit what is sent to one destination, and what exceeds them waits in the
queue instead of being refused. The other control fields (``max_in_flight``, ``ordering_key``,
``paused``) are plain values declared on the destination itself.
"""

from __future__ import annotations

from pydantic import Field, StrictInt

from webhook_worker.tools.fields import PositiveDuration
from webhook_worker.tools.section import Section

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_COOLDOWN = 30.0


class DestinationRateLimitDefinition(Section):
    """At most ``requests`` deliveries to this destination in any window of ``per``, across
    every worker process; the others wait in the queue (no retry spent)."""

    shape = '{"requests": 10, "per": "1s"}'
    unknown_is_shape_error = True

    requests: StrictInt = Field(
        ge=1,
        description="How many deliveries may start per `per`; more wait in the queue, "
        "without spending a retry.",
    )
    per: PositiveDuration = Field(1.0, description="The window.")


class CircuitBreakerDefinition(Section):
    """Stop sending to a destination that keeps failing, and try it again after a pause."""

    shape = '{"failure_threshold": 5, "cooldown": "30s"}'
    unknown_is_shape_error = True

    failure_threshold: StrictInt = Field(
        DEFAULT_FAILURE_THRESHOLD,
        ge=1,
        description="Consecutive retryable failures (timeout, connection error, 5xx, 429) "
        "that open the circuit.",
    )
    cooldown: PositiveDuration = Field(
        DEFAULT_COOLDOWN,
        description="How long an open circuit sends nothing (deliveries wait without spending "
        "retries); then one probe is sent, and its success closes the circuit.",
    )


__all__ = ["CircuitBreakerDefinition", "DestinationRateLimitDefinition"]
