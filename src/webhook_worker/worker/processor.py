"""What happens to a batch of events, in three phases so that retrying one phase (after the
database was away) never repeats another's side effects:

1. :meth:`Processor.store`: one transaction. New events are inserted with their outcome
   (``processed``, ``ignored``, ``dead``, or ``pending`` when they still have to be forwarded);
   an event the table already holds is skipped if it is final, re-planned if not. Idempotent:
   a redelivered message never creates a second row nor re-forwards a forwarded event.
2. :meth:`Processor.forward`: the HTTP calls, no database.
3. :meth:`Processor.record`: one transaction with statuses, attempts and dead letters; it says
   which messages to acknowledge and which to retry after what delay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import jmespath.exceptions
import orjson
from opentelemetry.trace import Span

from webhook_worker.config import Settings
from webhook_worker.constants import (
    STATUS_DEAD,
    STATUS_IGNORED,
    STATUS_PENDING,
    STATUS_PROCESSED,
    STATUS_RETRYING,
    TABLE_EVENTS,
)
from webhook_worker.ids import new_id
from webhook_worker.observability import metrics, tracing
from webhook_worker.queue.base import Delivery, Message
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import (
    DLQ_PENDING,
    resolve_dead_letters,
    upsert_dead_letters,
)
from webhook_worker.storage.events import (
    event_states,
    insert_attempts,
    insert_events,
    update_outcomes,
)
from webhook_worker.tools.cache import ToolCache
from webhook_worker.worker.forwarder import Forwarder, ForwardOutcome, ForwardRequest
from webhook_worker.worker.plan import Plan, Plans
from webhook_worker.worker.retry import Backoff, Failure

log = logging.getLogger(__name__)

_FINAL = frozenset({STATUS_PROCESSED, STATUS_IGNORED, STATUS_DEAD})
_DONE = frozenset({STATUS_PROCESSED, STATUS_IGNORED})
_FORWARDS_AT_ONCE = 64


@dataclass(slots=True)
class Work:
    """One event's way through the phases."""

    delivery: Delivery
    plan: Plan
    status: str
    payload: Any = None
    """The stored JSON when it differs from the body (a transform ran), else None."""
    failure: Failure | None = None
    attempt: int = 1
    """The number of this processing attempt (``events.attempt_count`` after it)."""
    existing: bool = False
    outcome: ForwardOutcome | None = None
    span: Span | None = None
    """The event's CONSUMER span when tracing is on; ended when the event is settled."""

    @property
    def message(self) -> Message:
        return self.delivery.message


@dataclass(slots=True)
class Batch:
    """A batch's progress. ``done`` and ``retry`` together hold every message once the batch
    went through :meth:`Processor.record`."""

    started: float
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


class Processor:
    def __init__(
        self,
        db: Database,
        tools: ToolCache,
        forwarder: Forwarder,
        settings: Settings,
        messaging_system: str = "webhook-worker",
        destination: str = "events",
    ) -> None:
        self._db = db
        self._messaging_system = messaging_system
        self._destination = destination
        self._tools = tools
        self._forwarder = forwarder
        self._plans = Plans(settings.retry)
        self._time_scale = settings.retry_time_scale
        self._dlq_auto_retry_interval = settings.dlq_auto_retry_interval

    # Phase 1 -----------------------------------------------------------------------------

    async def store(self, deliveries: Sequence[Delivery]) -> Batch:
        batch = Batch(started=time.perf_counter())
        now = datetime.now(UTC)
        works = [self._prepare(d) for d in deliveries]
        for work in works:
            work.span = self._start_span(work)
        with tracing.client_span(
            f"INSERT {TABLE_EVENTS}", self._db_attributes("INSERT"), links=[w.span for w in works]
        ):
            inserted, states = await self._insert(works, now, batch.started)
        batch.stored = len(inserted)
        for work in works:
            event_id = work.message.event_id
            state = states.get(event_id)
            if event_id in inserted:
                if work.status == STATUS_PENDING:
                    batch.to_forward.append(work)
                else:
                    _settled(work, batch.started)
                    batch.done.append(work.delivery)
            elif state is None or state.status in _FINAL:
                # Already settled, or a repeated delivery id under another event id.
                tracing.end(work.span)
                batch.done.append(work.delivery)
            else:
                # Interrupted earlier, waiting for a retry, or sent back from the dead letter
                # queue: plan it again (the tool may have changed) and carry on.
                work.existing = True
                work.attempt = int(state.attempt_count) + 1
                pending = work.status == STATUS_PENDING
                (batch.to_forward if pending else batch.to_update).append(work)
        return batch

    async def _insert(
        self, works: list[Work], now: datetime, started: float
    ) -> tuple[set[str], dict[str, Any]]:
        """Insert the new events with what is already known of them; read the others' state."""
        async with self._db.begin() as conn:
            inserted = await insert_events(conn, [_event_row(w, now) for w in works])
            others = [w.message.event_id for w in works if w.message.event_id not in inserted]
            states = await event_states(conn, others)
            new_final = [w for w in works if w.message.event_id in inserted and w.status in _FINAL]
            await insert_attempts(conn, [_attempt_row(w, now, started) for w in new_final])
            await upsert_dead_letters(
                conn, [self._dead_letter(w, now) for w in new_final if w.status == STATUS_DEAD]
            )
        return inserted, states

    def _start_span(self, work: Work) -> Span | None:
        message = work.message
        return tracing.start_consumer(
            message.traceparent,
            self._messaging_system,
            self._destination,
            {
                "messaging.message.id": message.event_id,
                "webhook.tool_id": message.tool_id,
                "webhook.event_type": message.event_type,
                "webhook.delivery_id": message.delivery_id,
            },
        )

    def _db_attributes(self, operation: str) -> dict[str, str | int]:
        return {
            "db.system.name": self._db.dialect,
            "db.operation.name": operation,
            "db.collection.name": TABLE_EVENTS,
        }

    def _prepare(self, delivery: Delivery) -> Work:
        message = delivery.message
        live = self._tools.get(message.tool_id)
        plan = self._plans.for_event(live.tool if live else None, message.event_type)
        work = Work(delivery, plan, STATUS_PENDING if plan.forwards else STATUS_PROCESSED)
        if not plan.needs_json:
            return work
        try:
            document = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            return _dead(
                work,
                "invalid_payload",
                "the body is not JSON, which the tool's filter or transform needs",
            )
        if plan.filter is not None:
            try:
                keep = plan.filter.search(document)
            except jmespath.exceptions.JMESPathError as exc:
                return _dead(work, "filter_error", f"the filter failed: {exc}")
            if not _truthy(keep):
                work.status = STATUS_IGNORED
                return work
        if plan.transform is not None:
            try:
                work.payload = plan.transform.search(document)
            except jmespath.exceptions.JMESPathError as exc:
                return _dead(work, "transform_error", f"the transform failed: {exc}")
            if work.payload is None:
                return _dead(work, "transform_error", "the transform produced null")
        return work

    # Phase 2 -----------------------------------------------------------------------------

    async def forward(self, batch: Batch) -> None:
        slots = asyncio.Semaphore(_FORWARDS_AT_ONCE)

        async def one(work: Work) -> None:
            config = work.plan.forward
            if not work.plan.forwards or config is None:
                return  # the tool stopped forwarding since: storing was enough
            async with slots:
                attributes: dict[str, str | int] = {
                    "http.request.method": config.method,
                    "url.full": config.url,
                }
                with tracing.client_span(config.method, attributes, parent=work.span) as span:
                    request = _forward_request(work)
                    if span is not None:
                        request = replace(request, traceparent=tracing.traceparent(span))
                    work.outcome = await self._forwarder.send(config, request)
                    if span is not None and work.outcome.http_status is not None:
                        span.set_attribute("http.response.status_code", work.outcome.http_status)
            outcome = work.outcome
            status_class = (
                "error" if outcome.http_status is None else f"{outcome.http_status // 100}xx"
            )
            metrics.FORWARD_DURATION.labels(work.message.tool_id, status_class).observe(
                outcome.duration_ms / 1000
            )

        await asyncio.gather(*(one(work) for work in batch.to_forward))

    # Phase 3 -----------------------------------------------------------------------------

    async def record(self, batch: Batch) -> None:
        """Write the outcome of forwarded and re-planned events; fill ``done`` and ``retry``."""
        if not batch.to_forward and not batch.to_update:
            return
        now = datetime.now(UTC)
        for work in batch.to_forward:
            failure = work.outcome.failure if work.outcome else None
            if failure is None:
                work.status = STATUS_PROCESSED
                continue
            failures = work.message.attempt + 1
            series_start = work.message.retry_from or work.message.received_at
            backoff = Backoff(work.plan.retry, self._time_scale)
            delay = backoff.next_attempt(failures, time.time() - series_start, failure)
            work.failure = failure
            if delay is None:
                work.status = STATUS_DEAD
            else:
                work.status = STATUS_RETRYING
                metrics.RETRY_ATTEMPTS.labels(str(failures), failure.error_class).inc()
                retried = replace(work.message, attempt=failures, retry_from=series_start)
                batch.retry.append((replace(work.delivery, message=retried), delay))
        settled = [*batch.to_forward, *batch.to_update]
        with tracing.client_span(
            f"UPDATE {TABLE_EVENTS}", self._db_attributes("UPDATE"), links=[w.span for w in settled]
        ):
            await self._record_outcomes(settled, now, batch.started)
        retrying = {d.message.event_id for d, _ in batch.retry}
        for work in settled:
            if work.message.event_id in retrying:
                tracing.end(work.span, f"retrying: {work.failure.message if work.failure else ''}")
                log.info("event will be retried", extra=event_fields(work))
            else:
                _settled(work, batch.started)
                batch.done.append(work.delivery)

    async def _record_outcomes(self, settled: list[Work], now: datetime, started: float) -> None:
        async with self._db.begin() as conn:
            await update_outcomes(conn, [_outcome_row(w, now) for w in settled])
            await insert_attempts(conn, [_attempt_row(w, now, started) for w in settled])
            await upsert_dead_letters(
                conn, [self._dead_letter(w, now) for w in settled if w.status == STATUS_DEAD]
            )
            recovered = [w.message.event_id for w in settled if w.existing and w.status in _DONE]
            await resolve_dead_letters(conn, recovered, now)

    async def dead_letter(
        self, deliveries: Sequence[Delivery], error_class: str, error: str
    ) -> None:
        """Store each event as ``dead`` with a dead letter, without processing it (poison)."""
        now = datetime.now(UTC)
        batch = Batch(started=time.perf_counter())
        works = [
            _dead(Work(d, self._plans.for_event(None, None), STATUS_DEAD), error_class, error)
            for d in deliveries
        ]
        async with self._db.begin() as conn:
            inserted = await insert_events(conn, [_event_row(w, now) for w in works])
            fresh = [w for w in works if w.message.event_id in inserted]
            await insert_attempts(conn, [_attempt_row(w, now, batch.started) for w in fresh])
            await upsert_dead_letters(conn, [self._dead_letter(w, now) for w in fresh])
        for work in fresh:
            _settled(work, batch.started)

    def _dead_letter(self, work: Work, now: datetime) -> dict[str, Any]:
        failure = work.failure or Failure("unknown", "no error recorded")
        metrics.DLQ_ENTRIES.labels(work.message.event_type or "", failure.error_class).inc()
        log.warning("event dead-lettered: %s", failure.message, extra=event_fields(work))
        due = None
        if failure.retryable:
            due = datetime.fromtimestamp(now.timestamp() + self._dlq_auto_retry_interval, UTC)
        return {
            "id": new_id(),
            "event_id": work.message.event_id,
            "tool_id": work.message.tool_id,
            "event_type": work.message.event_type,
            "error": failure.message,
            "error_class": failure.error_class,
            "retryable": failure.retryable,
            "retry_count": 0,
            "status": DLQ_PENDING,
            "created_at": now,
            "updated_at": now,
            "next_retry_at": due,
        }


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


def _truthy(value: Any) -> bool:
    """JMESPath truth: false, null and empty strings, lists and objects are false; numbers,
    0 included, are true (unlike Python)."""
    return not (value is None or value is False or value in ("", [], {}))


def _dead(work: Work, error_class: str, message: str) -> Work:
    work.status = STATUS_DEAD
    work.failure = Failure(error_class, " ".join(message.split())[:1000])
    return work


def _settled(work: Work, started: float) -> None:
    """Count the event's outcome, end its span, and (at debug level) log it."""
    labels = (work.message.event_type or "", work.message.tool_id, work.status)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("event %s", work.status, extra=event_fields(work))
    metrics.EVENTS_PROCESSED.labels(*labels).inc()
    metrics.PROCESSING_DURATION.labels(*labels).observe(time.perf_counter() - started)
    if work.span is not None:
        work.span.set_attribute("webhook.status", work.status)
        tracing.end(
            work.span, work.failure.message if work.status == STATUS_DEAD and work.failure else None
        )


def _forward_request(work: Work) -> ForwardRequest:
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


def _event_row(work: Work, now: datetime) -> dict[str, Any]:
    message = work.message
    final = work.status in _FINAL
    return {
        "id": message.event_id,
        "tool_id": message.tool_id,
        "event_type": message.event_type,
        "delivery_id": message.delivery_id,
        "status": work.status,
        "received_at": datetime.fromtimestamp(message.received_at, UTC),
        "processed_at": now if final else None,
        "headers": orjson.loads(message.headers),
        "body": message.body,
        "payload": work.payload,
        "attempt_count": 1 if final else 0,
    }


def _outcome_row(work: Work, now: datetime) -> dict[str, Any]:
    return {
        "event_id": work.message.event_id,
        "status": work.status,
        "processed_at": now if work.status in _FINAL else None,
        "attempt_count": work.attempt,
        "payload": work.payload,
    }


_OUTCOMES = {
    STATUS_PROCESSED: "stored",
    STATUS_IGNORED: "ignored",
    STATUS_DEAD: "dead",
    STATUS_RETRYING: "failed",
}


def _attempt_row(work: Work, now: datetime, started: float) -> dict[str, Any]:
    outcome, failure = work.outcome, work.failure
    label = _OUTCOMES[work.status]
    if outcome is not None and outcome.failure is None:
        label = "forwarded"
    return {
        "event_id": work.message.event_id,
        "attempt": work.attempt,
        "started_at": now,
        "duration_ms": outcome.duration_ms if outcome else (time.perf_counter() - started) * 1000,
        "outcome": label,
        "error_class": failure.error_class if failure else None,
        "error": failure.message if failure else None,
        "http_status": outcome.http_status if outcome else None,
    }
