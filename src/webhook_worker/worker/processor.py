"""What happens to a batch of events, in three phases so that retrying one phase (after the
database was away) never repeats another's side effects:

1. :meth:`Processor.store`: one transaction. New events are inserted with their outcome
   (``processed``, ``ignored``, ``dead``, or ``pending`` when they still have to be forwarded);
   an event the table already holds is skipped if it is final, re-planned if not. Idempotent:
   a redelivered message never creates a second row nor re-forwards a forwarded event.
2. :meth:`Processor.forward_one`: one event's HTTP call, no database (the worker runs these
   event by event and hands each finished event to phase 3 in groups).
3. :meth:`Processor.record`: one transaction with a group of events' statuses, attempts and
   dead letters; it says which messages to acknowledge and which to retry after what delay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import jmespath.exceptions
import orjson
from opentelemetry.trace import Span

from webhook_worker.config import Settings
from webhook_worker.constants import TABLE_EVENTS
from webhook_worker.ids import new_id
from webhook_worker.observability import metrics, tracing
from webhook_worker.queue.base import Delivery
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import (
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
from webhook_worker.vocabulary import (
    FINAL_STATUSES,
    SUCCESS_STATUSES,
    DeadLetterStatus,
    EventStatus,
)
from webhook_worker.worker.forwarder import Forwarder, ForwardOutcome
from webhook_worker.worker.plan import Plans
from webhook_worker.worker.retry import Backoff, Failure
from webhook_worker.worker.work import (
    Batch,
    Work,
    attempt_row,
    event_fields,
    event_row,
    forward_request,
    outcome_row,
)

log = logging.getLogger(__name__)


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
        batch = Batch()
        await self._know_tools(deliveries)
        now = datetime.now(UTC)
        works = [self._prepare(d) for d in deliveries]
        for work in works:
            work.span = self._start_span(work)
        with tracing.client_span(
            f"INSERT {TABLE_EVENTS}", self._db_attributes("INSERT"), links=[w.span for w in works]
        ):
            inserted, states = await self._insert(works, now)
        batch.stored = len(inserted)
        for work in works:
            event_id = work.message.event_id
            state = states.get(event_id)
            if event_id in inserted:
                if work.status == EventStatus.PENDING:
                    batch.to_forward.append(work)
                else:
                    _settled(work)
                    batch.done.append(work.delivery)
            elif state is None or state.status in FINAL_STATUSES:
                # Already settled, or a repeated delivery id under another event id.
                tracing.end(work.span)
                batch.done.append(work.delivery)
            else:
                # Interrupted earlier, waiting for a retry, or sent back from the dead letter
                # queue: plan it again (the tool may have changed) and carry on.
                work.existing = True
                work.attempt = int(state.attempt_count) + 1
                pending = work.status == EventStatus.PENDING
                (batch.to_forward if pending else batch.to_update).append(work)
        return batch

    async def _insert(self, works: list[Work], now: datetime) -> tuple[set[str], dict[str, Any]]:
        """Insert the new events with what is already known of them; read the others' state."""
        async with self._db.begin(durable=False) as conn:
            inserted = await insert_events(conn, [event_row(w, now) for w in works])
            others = [w.message.event_id for w in works if w.message.event_id not in inserted]
            states = await event_states(conn, others)
            new_final = [
                w for w in works if w.message.event_id in inserted and w.status in FINAL_STATUSES
            ]
            await insert_attempts(conn, [attempt_row(w, now) for w in new_final])
            await upsert_dead_letters(
                conn, [self._dead_letter(w, now) for w in new_final if w.status == EventStatus.DEAD]
            )
        return inserted, states

    async def _know_tools(self, deliveries: Sequence[Delivery]) -> None:
        """Make sure the tool cache is at least as new as each event (a tool another process
        added a moment ago is not mistaken for a deleted one and its event merely stored)."""
        newest: dict[str, float] = {}
        for delivery in deliveries:
            message = delivery.message
            if self._tools.get(message.tool_id) is None:
                newest[message.tool_id] = max(newest.get(message.tool_id, 0.0), message.received_at)
        for tool_id, received_at in newest.items():
            await self._tools.as_of(tool_id, received_at)

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
        work = Work(delivery, plan, EventStatus.PENDING if plan.forwards else EventStatus.PROCESSED)
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
                work.status = EventStatus.IGNORED
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

    async def forward_one(self, work: Work) -> None:
        """Send one event to its tool's target and keep the outcome on ``work``. Never raises
        (but for cancellation): an unexpected error is a retryable failure of the attempt."""
        config = work.plan.forward
        if not work.plan.forwards or config is None:
            return  # the tool stopped forwarding since: storing was enough
        attributes: dict[str, str | int] = {
            "http.request.method": config.method,
            "url.full": config.url,
        }
        with tracing.client_span(config.method, attributes, parent=work.span) as span:
            try:
                request = forward_request(work)
                if span is not None:
                    request = replace(request, traceparent=tracing.traceparent(span))
                work.outcome = await self._forwarder.send(config, request)
            except Exception as exc:
                log.exception("forwarding failed unexpectedly", extra=event_fields(work))
                failure = Failure("connection_error", f"unexpected error: {exc!r}"[:500])
                work.outcome = ForwardOutcome(0.0, None, failure)
            if span is not None and work.outcome.http_status is not None:
                span.set_attribute("http.response.status_code", work.outcome.http_status)
        outcome = work.outcome
        status_class = "error" if outcome.http_status is None else f"{outcome.http_status // 100}xx"
        metrics.FORWARD_DURATION.labels(work.message.tool_id, status_class).observe(
            outcome.duration_ms / 1000
        )

    def deferred(self, work: Work, delay: float) -> None:
        """The event goes back to the queue untried, for ``delay`` seconds, because its tool
        has as many forwards in flight and waiting as it may have (a slow target)."""
        metrics.FORWARDS_DEFERRED.labels(work.message.tool_id).inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "forward deferred for %.1fs: the tool is busy", delay, extra=event_fields(work)
            )
        if work.span is not None:
            work.span.set_attribute("webhook.status", "deferred")
        tracing.end(work.span)

    # Phase 3 -----------------------------------------------------------------------------

    async def record(self, batch: Batch) -> None:
        """Write the outcome of forwarded and re-planned events; fill ``done`` and ``retry``."""
        if not batch.to_forward and not batch.to_update:
            return
        now = datetime.now(UTC)
        for work in batch.to_forward:
            failure = work.outcome.failure if work.outcome else None
            if failure is None:
                work.status = EventStatus.PROCESSED
                continue
            failures = work.message.attempt + 1
            series_start = work.message.retry_from or work.message.received_at
            backoff = Backoff(work.plan.retry, self._time_scale)
            delay = backoff.next_attempt(failures, time.time() - series_start, failure)
            work.failure = failure
            if delay is None:
                work.status = EventStatus.DEAD
            else:
                work.status = EventStatus.RETRYING
                metrics.RETRY_ATTEMPTS.labels(str(failures), failure.error_class).inc()
                retried = replace(work.message, attempt=failures, retry_from=series_start)
                batch.retry.append((replace(work.delivery, message=retried), delay))
        settled = [*batch.to_forward, *batch.to_update]
        with tracing.client_span(
            f"UPDATE {TABLE_EVENTS}", self._db_attributes("UPDATE"), links=[w.span for w in settled]
        ):
            await self._record_outcomes(settled, now)
        retrying = {d.message.event_id for d, _ in batch.retry}
        for work in settled:
            if work.message.event_id in retrying:
                tracing.end(work.span, f"retrying: {work.failure.message if work.failure else ''}")
                log.info("event will be retried", extra=event_fields(work))
            else:
                _settled(work)
                batch.done.append(work.delivery)

    async def _record_outcomes(self, settled: list[Work], now: datetime) -> None:
        async with self._db.begin(durable=False) as conn:
            await update_outcomes(conn, [outcome_row(w, now) for w in settled])
            await insert_attempts(conn, [attempt_row(w, now) for w in settled])
            await upsert_dead_letters(
                conn, [self._dead_letter(w, now) for w in settled if w.status == EventStatus.DEAD]
            )
            recovered = [
                w.message.event_id for w in settled if w.existing and w.status in SUCCESS_STATUSES
            ]
            if resolved := await resolve_dead_letters(conn, recovered, now):
                metrics.DLQ_RETRIES.labels("resolved").inc(resolved)

    async def dead_letter(
        self, deliveries: Sequence[Delivery], error_class: str, error: str
    ) -> None:
        """Store each event as ``dead`` with a dead letter, without processing it (poison)."""
        now = datetime.now(UTC)
        works = [
            _dead(Work(d, self._plans.for_event(None, None), EventStatus.DEAD), error_class, error)
            for d in deliveries
        ]
        async with self._db.begin(durable=False) as conn:
            inserted = await insert_events(conn, [event_row(w, now) for w in works])
            fresh = [w for w in works if w.message.event_id in inserted]
            await insert_attempts(conn, [attempt_row(w, now) for w in fresh])
            await upsert_dead_letters(conn, [self._dead_letter(w, now) for w in fresh])
        for work in fresh:
            _settled(work)

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
            "status": DeadLetterStatus.PENDING,
            "created_at": now,
            "updated_at": now,
            "next_retry_at": due,
        }


def _truthy(value: Any) -> bool:
    """JMESPath truth: false, null and empty strings, lists and objects are false; numbers,
    0 included, are true (unlike Python)."""
    return not (value is None or value is False or value in ("", [], {}))


def _dead(work: Work, error_class: str, message: str) -> Work:
    work.status = EventStatus.DEAD
    work.failure = Failure(error_class, " ".join(message.split())[:1000])
    return work


def _settled(work: Work) -> None:
    """Count the event's outcome, end its span, and (at debug level) log it."""
    labels = (work.message.event_type or "", work.message.tool_id, work.status)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("event %s", work.status, extra=event_fields(work))
    metrics.EVENTS_PROCESSED.labels(*labels).inc()
    metrics.PROCESSING_DURATION.labels(*labels).observe(time.perf_counter() - work.started)
    if work.span is not None:
        work.span.set_attribute("webhook.status", work.status)
        tracing.end(
            work.span,
            work.failure.message if work.status == EventStatus.DEAD and work.failure else None,
        )
