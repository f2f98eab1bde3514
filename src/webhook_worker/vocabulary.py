"""The words the pipeline speaks: statuses, outcomes, error classes, modes and auth types.

Each is a :class:`~enum.StrEnum`, so a member is its wire value (``EventStatus.DEAD == "dead"``)
and goes into JSON, SQL and metric labels as it is. These values are part of the external
contract (SPEC.md); adding one is a change to the API, renaming one breaks stored data.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum, unique
from typing import Final


@unique
class EventStatus(StrEnum):
    """An event's status (``events.status``)."""

    PENDING = "pending"
    """Stored, still to be forwarded (or being forwarded)."""
    PROCESSED = "processed"
    IGNORED = "ignored"
    """The tool's filter said no: stored, not forwarded."""
    RETRYING = "retrying"
    """A retryable failure; the next attempt is scheduled."""
    DEAD = "dead"
    """Given up on: a dead letter holds the error."""

    @property
    def final(self) -> bool:
        """Nothing more happens to the event unless somebody replays it."""
        return self in FINAL_STATUSES


FINAL_STATUSES: Final = frozenset({EventStatus.PROCESSED, EventStatus.IGNORED, EventStatus.DEAD})
SUCCESS_STATUSES: Final = frozenset({EventStatus.PROCESSED, EventStatus.IGNORED})


@unique
class DeliveryStatus(StrEnum):
    """One destination's delivery of an event (``event_deliveries.status``)."""

    PENDING = "pending"
    """To be sent (or being sent)."""
    DELIVERED = "delivered"
    IGNORED = "ignored"
    """This destination's filter said no (or the destination was removed or disabled)."""
    RETRYING = "retrying"
    PAUSED = "paused"
    DEAD = "dead"

    @property
    def final(self) -> bool:
        """Nothing more happens to this delivery unless somebody replays it."""
        return self in FINAL_DELIVERY_STATUSES


FINAL_DELIVERY_STATUSES: Final = frozenset(
    {DeliveryStatus.DELIVERED, DeliveryStatus.IGNORED, DeliveryStatus.DEAD}
)

EVENT_STATUS_RULES: Final[tuple[tuple[frozenset[DeliveryStatus], EventStatus], ...]] = (
    (frozenset({DeliveryStatus.DEAD}), EventStatus.DEAD),
    (frozenset({DeliveryStatus.RETRYING, DeliveryStatus.PAUSED}), EventStatus.RETRYING),
    (frozenset({DeliveryStatus.PENDING}), EventStatus.PENDING),
    (frozenset({DeliveryStatus.DELIVERED}), EventStatus.PROCESSED),
)
"""An event's status from its deliveries': the first rule one of them matches; when none does
(every destination ignored it), ``ignored``. SPEC: dead if any delivery is dead, else retrying
if any is retrying or paused, else processed (or ignored). The storage layer turns the same
rules into SQL (storage/deliveries.py)."""


def event_status(deliveries: Iterable[DeliveryStatus]) -> EventStatus:
    """The status of an event whose deliveries are ``deliveries`` (see EVENT_STATUS_RULES)."""
    present = frozenset(deliveries)
    for statuses, status in EVENT_STATUS_RULES:
        if present & statuses:
            return status
    return EventStatus.IGNORED


@unique
class DeadLetterStatus(StrEnum):
    """A dead letter's status (``dead_letters.status``)."""

    PENDING = "pending"
    """Waiting for a human (or for the automatic retry, when retryable)."""
    RETRYING = "retrying"
    """Sent back to the queue; resolved once the event is processed."""
    RESOLVED = "resolved"
    DISCARDED = "discarded"


@unique
class AttemptOutcome(StrEnum):
    """What one processing attempt came to (``event_attempts.outcome``)."""

    STORED = "stored"
    FORWARDED = "forwarded"
    IGNORED = "ignored"
    FAILED = "failed"
    """A retryable failure: another attempt follows."""
    DEAD = "dead"


@unique
class ErrorClass(StrEnum):
    """Why an attempt failed: a bounded set, so it can be a metric label and a filter.

    docs/processing.md has the table with each class's cause; :attr:`retryable` says whether
    another attempt may succeed. A database outage is not among them: it is no failure of the
    event's (the worker holds the message and retries the write, recording no attempt).
    """

    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    HTTP_5XX = "http_5xx"
    HTTP_408 = "http_408"
    HTTP_429 = "http_429"
    HTTP_4XX = "http_4xx"
    HTTP_3XX = "http_3xx"
    FORBIDDEN_TARGET = "forbidden_target"
    TRANSFORM_ERROR = "transform_error"
    FILTER_ERROR = "filter_error"
    INVALID_PAYLOAD = "invalid_payload"
    STORAGE_ERROR = "storage_error"
    """The event cannot be written to the database (not an outage: this event's data)."""
    POISON = "poison"
    UNKNOWN = "unknown"

    @property
    def retryable(self) -> bool:
        return self in RETRYABLE_ERRORS


RETRYABLE_ERRORS: Final = frozenset(
    {
        ErrorClass.TIMEOUT,
        ErrorClass.CONNECTION_ERROR,
        ErrorClass.HTTP_5XX,
        ErrorClass.HTTP_408,
        ErrorClass.HTTP_429,
    }
)


@unique
class Mode(StrEnum):
    """What the worker does with a tool's events."""

    STORE_ONLY = "store_only"
    STORE_AND_FORWARD = "store_and_forward"
    TRANSFORM_AND_STORE = "transform_and_store"


@unique
class AuthType(StrEnum):
    """How an incoming request proves who sent it (``auth.type``)."""

    NONE = "none"
    TOKEN = "token"  # noqa: S105 (a scheme name, not a password)
    HMAC = "hmac"
    BASIC = "basic"
    BEARER = "bearer"
    STRIPE = "stripe"
    SLACK = "slack"
    STANDARD_WEBHOOKS = "standard_webhooks"
