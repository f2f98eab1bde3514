"""The JSON shapes of SPEC.md for what storage returns: an event with its attempts, a dead
letter, and a page of either. The management API answers them and the CLI prints them with
``--json``, so both say the same thing in the same words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson

from webhook_worker.api.cursor import next_cursor
from webhook_worker.clock import iso
from webhook_worker.storage.rows import AttemptRow, DeadLetterRow, DeliveryRow, EventRow, Page

T = TypeVar("T")


def event_view(event: EventRow) -> dict[str, Any]:
    """The SPEC shape of an event. ``payload`` is what was stored (the transform's result when
    there is one); ``raw_payload`` is the body as received, present only when it differs."""
    body = decode_body(event.body)
    view: dict[str, Any] = {
        "id": event.id,
        "tool_id": event.tool_id,
        "event_type": event.event_type,
        "delivery_id": event.delivery_id,
        "status": event.status.value,
        "received_at": iso(event.received_at),
        "processed_at": iso(event.processed_at),
        "payload": body if event.payload is None else event.payload,
        "headers": dict(event.headers),
        "attempts": [attempt_view(attempt) for attempt in event.attempts],
        "deliveries": [delivery_view(delivery, event.attempts) for delivery in event.deliveries],
    }
    if event.payload is not None:
        view["raw_payload"] = body
    return view


def attempt_view(attempt: AttemptRow) -> dict[str, Any]:
    """One entry of an event's ``attempts`` (duration to the microsecond)."""
    return {
        "attempt": attempt.attempt,
        "started_at": iso(attempt.started_at),
        "duration_ms": round(attempt.duration_ms, 3),
        "outcome": attempt.outcome,
        "error_class": attempt.error_class,
        "error": attempt.error,
        "http_status": attempt.http_status,
        "destination_id": attempt.destination_id,
    }


def delivery_view(delivery: DeliveryRow, attempts: Sequence[AttemptRow]) -> dict[str, Any]:
    """One entry of an event's ``deliveries``: a destination's delivery with its own attempts
    (``attempts``: the event's, of which it keeps this destination's)."""
    return {
        "destination_id": delivery.destination_id,
        "status": delivery.status.value,
        "attempt_count": delivery.attempt_count,
        "next_attempt_at": iso(delivery.next_attempt_at),
        "updated_at": iso(delivery.updated_at),
        "attempts": [
            attempt_view(attempt)
            for attempt in attempts
            if attempt.destination_id == delivery.destination_id
        ],
    }


def dead_letter_view(letter: DeadLetterRow, event: EventRow | None = None) -> dict[str, Any]:
    """The SPEC shape of a dead letter (plus ``retryable`` and ``next_retry_at``); with
    ``event``, the event's view under ``event`` (what showing one dead letter answers)."""
    view: dict[str, Any] = {
        "id": letter.id,
        "event_id": letter.event_id,
        "destination_id": letter.destination_id,
        "tool_id": letter.tool_id,
        "event_type": letter.event_type,
        "error": letter.error,
        "error_class": letter.error_class,
        "retryable": letter.retryable,
        "retry_count": letter.retry_count,
        "status": letter.status.value,
        "created_at": iso(letter.created_at),
        "last_retry_at": iso(letter.last_retry_at),
        "next_retry_at": iso(letter.next_retry_at),
    }
    if event is not None:
        view["event"] = event_view(event)
    return view


def page_view(page: Page[T], view: Callable[[T], dict[str, Any]]) -> dict[str, Any]:
    """A list answer: ``{"items": [...], "next_cursor": "<opaque>" or null}``."""
    return {"items": [view(item) for item in page.items], "next_cursor": next_cursor(page)}


def decode_body(body: bytes) -> Any:
    """The body as JSON when it is JSON, else as text (undecodable bytes replaced)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", errors="replace")
