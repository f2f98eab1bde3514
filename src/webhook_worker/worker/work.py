"""One event's, one delivery's and one batch's way through the processor's phases, and the
records they become (:mod:`~webhook_worker.storage.records`).

A :class:`Work` is one queue message: an event, or (``message.destination_id`` set) one
destination's delivery of an event. Its :class:`Part` s are the deliveries it makes, each sent
and settled on its own; the message is acknowledged (or split into the retries of the
deliveries that failed) once the last of them is settled."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry.trace import Span

from webhook_worker.observability import tracing
from webhook_worker.queue.base import Delivery, Message, Position
from webhook_worker.queue.positions import encode_ordering
from webhook_worker.storage.records import (
    AttemptRecord,
    DeliveryRecord,
    EventRecord,
    OutcomeRecord,
)
from webhook_worker.vocabulary import FINAL_STATUSES, AttemptOutcome, DeliveryStatus, EventStatus
from webhook_worker.worker.decide import TO_FORWARD, Prepared
from webhook_worker.worker.forwarder import ForwardOutcome, ForwardRequest
from webhook_worker.worker.plan import Plan, Route
from webhook_worker.worker.retry import Failure


@dataclass(slots=True)
class Work:
    """One message's way through the phases."""

    delivery: Delivery
    plan: Plan
    status: EventStatus
    """The event's status as decided by its tool (``pending``: it has deliveries to make)."""
    payload: Any = None
    """The stored JSON when it differs from the body (a transform ran), else None."""
    failure: Failure | None = None
    attempt: int = 1
    """The number of this processing attempt (``events.attempt_count`` after it)."""
    existing: bool = False
    span: Span | None = None
    """The message's CONSUMER span when tracing is on; ended when the message is settled."""
    started: float = field(default_factory=time.perf_counter)
    """When the worker took the event up (``time.perf_counter``), for the processing time."""
    prepared: Prepared = TO_FORWARD
    """The tool's decision, which the destinations' own decisions start from."""
    parts: list[Part] = field(default_factory=list)
    """The deliveries this message makes (or records without sending)."""
    unsettled: int = 0
    """Parts not settled yet; the message's fate is known when it comes to 0."""
    later: list[tuple[Message, float]] = field(default_factory=list)
    """Deliveries to make again after a delay (retries, deferrals): one message each."""
    kept: set[str] = field(default_factory=set)
    """Destinations whose delivery is not over when the message is settled (to make again
    later, or waiting for a paused destination): their ordering positions stay unsettled."""
    reported: bool = False
    """The event's final status was counted (webhook_events_processed_total)."""
    sent: tuple[bytes, str] | None = None
    """What its deliveries send without a transform of their own, and its content type:
    worked out by the first of them (:func:`forward_request`)."""

    @property
    def message(self) -> Message:
        return self.delivery.message


@dataclass(slots=True)
class Part:
    """One destination's delivery of a message's event."""

    work: Work
    destination_id: str
    route: Route | None
    """None: the destination is gone (removed or disabled) since the delivery was planned."""
    status: DeliveryStatus
    """As decided before sending: ``pending`` (to send), ``ignored`` or ``dead``."""
    payload: Any = None
    """What to send when the destination's transform ran; None: what the event stores."""
    failure: Failure | None = None
    attempt: int = 1
    """This delivery's attempt number (``event_deliveries.attempt_count`` after it)."""
    existing: bool = False
    """The delivery was recorded before (a retry, a redelivery, a replay)."""
    outcome: ForwardOutcome | None = None
    slot: str | None = None
    """The delivery control slot it holds while in flight (a controlled destination's)."""

    @property
    def message(self) -> Message:
        return self.work.delivery.message


@dataclass(slots=True)
class Batch:
    """A batch's progress. ``done`` and ``retry`` together hold every message once the batch
    went through :meth:`Processor.record` (which fills them only once its write committed, so a
    retried ``record`` adds each message once)."""

    done: list[Delivery] = field(default_factory=list)
    """Settled: acknowledge them."""
    to_forward: list[Part] = field(default_factory=list)
    """Deliveries to send (phase 2), or sent, whose outcome :meth:`Processor.record` writes."""
    to_update: list[Work] = field(default_factory=list)
    """Existing events whose new outcome (decided without sending) phase 3 writes."""
    to_record: list[Part] = field(default_factory=list)
    """Deliveries of existing events decided without sending (ignored, dead)."""
    deferred: list[tuple[Part, float]] = field(default_factory=list)
    """Deliveries sent back to the queue untried for a while (nothing to write)."""
    parked: list[Part] = field(default_factory=list)
    """Deliveries to a paused destination: recorded ``paused``, sent again on resume."""
    retry: list[tuple[Delivery, float]] = field(default_factory=list)
    """To deliver again after the delay (acknowledged by scheduling the retry); one receipt
    may come several times, once per delivery retried."""
    settled: list[tuple[str, Position]] = field(default_factory=list)
    """(tool id, position) of the deliveries ``record`` settled for good (delivered, dead,
    ignored): the next event of their ordering key may go."""
    stored: int = 0

    def absorb(self, other: Batch) -> None:
        """Take over another (partial) batch's work: used when a batch is split up."""
        self.done += other.done
        self.to_forward += other.to_forward
        self.to_update += other.to_update
        self.to_record += other.to_record
        self.deferred += other.deferred
        self.parked += other.parked
        self.retry += other.retry
        self.settled += other.settled
        self.stored += other.stored


def settled_positions(
    message: Message, kept: Collection[str] = (), only: str | None = None
) -> list[tuple[str, Position]]:
    """The ordering positions a settled message lets go of: those of the destinations it
    was about (all, or its own one; ``only`` that one), but those in ``kept``."""
    if not message.ordering:
        return []
    scope = only if only is not None else message.destination_id
    return [
        (message.tool_id, position)
        for position in message.ordering
        if position.seq > 0
        and (scope is None or position.destination_id == scope)
        and position.destination_id not in kept
    ]


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


def part_fields(part: Part) -> dict[str, Any]:
    """What a log line about a delivery carries: its event's fields and the destination."""
    fields = event_fields(part.work)
    fields["destination_id"] = part.destination_id
    fields["attempt"] = part.attempt
    if part.failure is not None:
        fields["error_class"] = part.failure.error_class
    return fields


def forward_request(part: Part) -> ForwardRequest:
    work = part.work
    message = work.message
    if part.payload is not None:
        body, content_type = orjson.dumps(part.payload), "application/json"
    else:
        if work.sent is None:
            if work.payload is not None or work.plan.transform is not None:
                work.sent = orjson.dumps(work.payload), "application/json"
            else:
                headers = orjson.loads(message.headers)
                kind = headers.get("content-type", "application/octet-stream")
                work.sent = message.body, kind
        body, content_type = work.sent
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
        # attempt_count: the attempts written with the event (a destination decided at once).
        sum(part.status.final for part in work.parts) if work.parts else int(final),
        encode_ordering(message.ordering) if message.ordering else None,  # ordering
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
    """This processing of the event itself, which left it ``status`` (for ``failure`` when it
    failed)."""
    return AttemptRecord(  # positional, in field order, as in event_record
        work.message.event_id,
        work.attempt,
        now,  # started_at
        (time.perf_counter() - work.started) * 1000,  # duration_ms
        _OUTCOMES[status],
        failure.error_class if failure else None,
        failure.message if failure else None,
        None,  # http_status
        None,  # destination_id
    )


_DELIVERY_OUTCOMES: dict[DeliveryStatus, AttemptOutcome] = {
    DeliveryStatus.DELIVERED: AttemptOutcome.FORWARDED,
    DeliveryStatus.IGNORED: AttemptOutcome.IGNORED,
    DeliveryStatus.DEAD: AttemptOutcome.DEAD,
    DeliveryStatus.RETRYING: AttemptOutcome.FAILED,
}


def part_attempt_record(
    part: Part, status: DeliveryStatus, failure: Failure | None, now: datetime
) -> AttemptRecord:
    """This attempt of a delivery, which left it ``status``."""
    outcome = part.outcome
    return AttemptRecord(
        part.work.message.event_id,
        part.attempt,
        now,  # started_at
        outcome.duration_ms if outcome else 0.0,
        _DELIVERY_OUTCOMES[status],
        failure.error_class if failure else None,
        failure.message if failure else None,
        outcome.http_status if outcome else None,
        part.destination_id,
    )


def delivery_record(
    part: Part, status: DeliveryStatus, now: datetime, next_attempt_at: datetime | None = None
) -> DeliveryRecord:
    """The delivery as this attempt leaves it."""
    return DeliveryRecord(  # positional, in field order, as in event_record
        part.work.message.event_id,
        part.destination_id,
        part.work.message.tool_id,
        status,
        part.attempt,  # attempt_count
        next_attempt_at,
        now,  # updated_at
    )
