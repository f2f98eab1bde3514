"""What the read side of storage hands out: events, their attempts and dead letters as typed,
immutable rows, and a page of them.

Rows are the stored facts, not a wire format: times are aware UTC datetimes, the body is the
bytes as received, and nothing is shaped for JSON. The API's views (``api/views.py``) and the
cursor that stands for :attr:`Page.after` (``api/cursor.py``) live with the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from webhook_worker.vocabulary import DeadLetterStatus, DeliveryStatus, EventStatus

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One processing attempt of an event (``event_attempts``).

    ``outcome`` and ``error_class`` are the words as stored: the attempt log is history, shown
    as it was written.
    """

    attempt: int
    started_at: datetime
    duration_ms: float
    outcome: str
    error_class: str | None
    error: str | None
    http_status: int | None
    destination_id: str | None = None
    """The destination this attempt delivered to; None for the event's own processing."""


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """One destination's delivery of an event (``event_deliveries``)."""

    destination_id: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    """When the next attempt is due, while ``retrying``."""
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class EventRow:
    """An accepted event with its attempts, oldest first."""

    id: str
    tool_id: str
    event_type: str | None
    delivery_id: str
    status: EventStatus
    received_at: datetime
    processed_at: datetime | None
    headers: Mapping[str, Any]
    body: bytes
    """The request body exactly as received."""
    payload: Any
    """The stored JSON when a transform produced it; None when the body is the payload."""
    attempt_count: int
    attempts: tuple[AttemptRow, ...]
    deliveries: tuple[DeliveryRow, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """An event the worker gave up on, with the error (``dead_letters``)."""

    id: str
    event_id: str
    tool_id: str
    event_type: str | None
    error: str
    error_class: str
    retryable: bool
    retry_count: int
    status: DeadLetterStatus
    created_at: datetime
    updated_at: datetime
    last_retry_at: datetime | None
    next_retry_at: datetime | None
    destination_id: str | None = None
    """The destination whose delivery failed; None when the event itself failed."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """A page of a list, newest first."""

    items: list[T]
    after: str | None
    """The id the next page starts after; None when this is the last page."""


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite returns naive ones, meaning UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)
