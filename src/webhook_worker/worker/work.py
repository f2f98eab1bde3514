"""One event's and one batch's way through the processor's phases, and the records they become
(:mod:`~webhook_worker.storage.records`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry.trace import Span

from webhook_worker.observability import tracing
from webhook_worker.queue.base import Delivery, Message
from webhook_worker.storage.records import AttemptRecord, EventRecord, OutcomeRecord
from webhook_worker.vocabulary import FINAL_STATUSES, AttemptOutcome, EventStatus
from webhook_worker.worker.forwarder import ForwardOutcome, ForwardRequest
from webhook_worker.worker.plan import Plan
from webhook_worker.worker.retry import Failure


@dataclass(slots=True)
class Work:
    """One event's way through the phases."""

    delivery: Delivery
    plan: Plan
    status: EventStatus
    payload: Any = None
    """The stored JSON when it differs from the body (a transform ran), else None."""
    failure: Failure | None = None
    attempt: int = 1
    """The number of this processing attempt (``events.attempt_count`` after it)."""
    existing: bool = False
    outcome: ForwardOutcome | None = None
    span: Span | None = None
    """The event's CONSUMER span when tracing is on; ended when the event is settled."""
    started: float = field(default_factory=time.perf_counter)
    """When the worker took the event up (``time.perf_counter``), for the processing time."""

    @property
    def message(self) -> Message:
        return self.delivery.message


@dataclass(slots=True)
class Batch:
    """A batch's progress. ``done`` and ``retry`` together hold every message once the batch
    went through :meth:`Processor.record` (which fills them only once its write committed, so a
    retried ``record`` adds each message once)."""

    done: list[Delivery] = field(default_factory=list)
    """Settled: acknowledge them."""
    to_forward: list[Work] = field(default_factory=list)
    to_update: list[Work] = field(default_factory=list)
    """Existing events whose new outcome :meth:`Processor.record` writes."""
    retry: list[tuple[Delivery, float]] = field(default_factory=list)
    """To deliver again after the delay (acknowledged by scheduling the retry)."""
    stored: int = 0

    def absorb(self, other: Batch) -> None:
        """Take over another (partial) batch's work: used when a batch is split up."""
        self.done += other.done
        self.to_forward += other.to_forward
        self.to_update += other.to_update
        self.retry += other.retry
        self.stored += other.stored


def event_fields(work: Work) -> dict[str, Any]:
    """What a log line about an event carries: ids to find it and its trace."""
    message = work.message
    fields: dict[str, Any] = {
        "event_id": message.event_id,
        "tool_id": message.tool_id,
        "event_type": message.event_type,
        "attempt": work.attempt,
    }
    if work.span is not None:
        fields["trace_id"] = tracing.trace_id(work.span)
    elif message.traceparent:
        fields["trace_id"] = message.traceparent.split("-")[1]
    if work.failure is not None:
        fields["error_class"] = work.failure.error_class
    return fields


def forward_request(work: Work) -> ForwardRequest:
    message = work.message
    if work.payload is not None or work.plan.transform is not None:
        body, content_type = orjson.dumps(work.payload), "application/json"
    else:
        headers = orjson.loads(message.headers)
        body, content_type = message.body, headers.get("content-type", "application/octet-stream")
    return ForwardRequest(
        event_id=message.event_id,
        tool_id=message.tool_id,
        event_type=message.event_type,
        body=body,
        content_type=content_type,
        traceparent=message.traceparent,
    )


def event_record(work: Work, now: datetime) -> EventRecord:
    """The new event's row, with what phase 1 decided (``work.status``)."""
    message = work.message
    final = work.status in FINAL_STATUSES
    # Positional (in the record's field order): keywords cost a third more on the hot path.
    return EventRecord(
        message.event_id,  # id
        message.tool_id,
        message.event_type,
        message.delivery_id,
        work.status,
        datetime.fromtimestamp(message.received_at, UTC),  # received_at
        now if final else None,  # processed_at
        # Already JSON: written as it is, never parsed and encoded again (see json_text).
        orjson.Fragment(message.headers),
        message.body,
        work.payload,
        1 if final else 0,  # attempt_count
    )


def outcome_record(work: Work, status: EventStatus, now: datetime) -> OutcomeRecord:
    """An existing event's new ``status`` after this attempt."""
    return OutcomeRecord(
        event_id=work.message.event_id,
        status=status,
        processed_at=now if status in FINAL_STATUSES else None,
        attempt_count=work.attempt,
        payload=work.payload,
    )


_OUTCOMES: dict[EventStatus, AttemptOutcome] = {
    EventStatus.PROCESSED: AttemptOutcome.STORED,
    EventStatus.IGNORED: AttemptOutcome.IGNORED,
    EventStatus.DEAD: AttemptOutcome.DEAD,
    EventStatus.RETRYING: AttemptOutcome.FAILED,
}


def attempt_record(
    work: Work, status: EventStatus, failure: Failure | None, now: datetime
) -> AttemptRecord:
    """This attempt, which left the event ``status`` (for ``failure`` when it failed)."""
    outcome = work.outcome
    label = _OUTCOMES[status]
    if outcome is not None and outcome.failure is None:
        label = AttemptOutcome.FORWARDED
    return AttemptRecord(  # positional, in field order, as in event_record
        work.message.event_id,
        work.attempt,
        now,  # started_at
        outcome.duration_ms if outcome else (time.perf_counter() - work.started) * 1000,
        label,
        failure.error_class if failure else None,
        failure.message if failure else None,
        outcome.http_status if outcome else None,
    )
