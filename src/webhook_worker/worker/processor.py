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

Each phase that writes decides first, in pure code (:mod:`~webhook_worker.worker.decide`),
into locals; writes once; and only after the commit counts metrics, logs, ends the events'
spans and fills the :class:`~webhook_worker.worker.work.Batch`. A phase the worker retries
because the database was away therefore starts again from the same inputs and has emitted
nothing: the metrics count what was committed, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from opentelemetry.trace import Span

from webhook_worker.config import Settings
from webhook_worker.constants import TABLE_EVENTS
from webhook_worker.ids import new_id
from webhook_worker.observability import metrics, tracing
from webhook_worker.observability.labels import event_type as event_type_label
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
from webhook_worker.storage.records import (
    AttemptRecord,
    DeadLetterRecord,
    EventState,
    OutcomeRecord,
)
from webhook_worker.tools.cache import ToolCache
from webhook_worker.vocabulary import (
    FINAL_STATUSES,
    SUCCESS_STATUSES,
    DeadLetterStatus,
    ErrorClass,
    EventStatus,
)
from webhook_worker.worker import decide
from webhook_worker.worker.forwarder import Forwarder, ForwardOutcome
from webhook_worker.worker.plan import Plans
from webhook_worker.worker.retry import Failure
from webhook_worker.worker.work import (
    Batch,
    Work,
    attempt_record,
    event_fields,
    event_record,
    forward_request,
    outcome_record,
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
        """Store new events with what their plan decided; sort every delivery into the batch:
        settled (to acknowledge), to forward, or an existing event's new outcome to record."""
        await self._know_tools(deliveries)
        now = datetime.now(UTC)
        works = [self._prepare(d) for d in deliveries]
        for work in works:
            work.span = self._start_span(work)
        with tracing.client_span(
            f"INSERT {TABLE_EVENTS}", self._db_attributes("INSERT"), links=[w.span for w in works]
        ):
            inserted, states = await self._insert(works, now)
        # Committed: from here on, tell.
        batch = Batch(stored=len(inserted))
        for work in works:
            event_id = work.message.event_id
            state = states.get(event_id)
            if event_id in inserted:
                if work.status == EventStatus.PENDING:
                    batch.to_forward.append(work)
                else:
                    if work.status == EventStatus.DEAD:
                        _dead_lettered(work)
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
                work.attempt = state.attempt_count + 1
                pending = work.status == EventStatus.PENDING
                (batch.to_forward if pending else batch.to_update).append(work)
        return batch

    async def _insert(
        self, works: list[Work], now: datetime
    ) -> tuple[set[str], dict[str, EventState]]:
        """Insert the new events with what is already known of them; read the others' state."""
        records = [event_record(w, now) for w in works]
        async with self._db.begin(durable=False) as conn:
            inserted = await insert_events(conn, records)
            others = [w.message.event_id for w in works if w.message.event_id not in inserted]
            states = await event_states(conn, others)
            new_final = [
                w for w in works if w.message.event_id in inserted and w.status in FINAL_STATUSES
            ]
            await insert_attempts(
                conn, [attempt_record(w, w.status, w.failure, now) for w in new_final]
            )
            await upsert_dead_letters(
                conn,
                [
                    self._dead_letter(w, w.failure, now)
                    for w in new_final
                    if w.status == EventStatus.DEAD
                ],
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
        prepared = decide.prepare(plan, message.body)
        return Work(delivery, plan, prepared.status, prepared.payload, prepared.failure)

    # Phase 2 -----------------------------------------------------------------------------

    async def forward_one(self, work: Work) -> None:
        """Send one event to its tool's target and keep the outcome on ``work``. Never raises
        (but for cancellation): an unexpected error is a retryable failure of the attempt."""
        config = work.plan.forward
        if not work.plan.forwards or config is None:
            return  # the tool stopped forwarding since: storing was enough
        attributes: dict[str, str | int] = {
            "http.request.method": config.method,
            "url.full": config.redacted_url,
        }
        with tracing.client_span(config.method, attributes, parent=work.span) as span:
            try:
                request = forward_request(work)
                if span is not None:
                    request = replace(request, traceparent=tracing.traceparent(span))
                work.outcome = await self._forwarder.send(config, request)
            except Exception as exc:
                log.exception("forwarding failed unexpectedly", extra=event_fields(work))
                failure = Failure(ErrorClass.CONNECTION_ERROR, f"unexpected error: {exc!r}"[:500])
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
        """Write the outcome of forwarded and re-planned events; then fill ``done`` and
        ``retry``. Raises (DatabaseUnavailableError while the database is away) having changed
        nothing, so the caller may call it again with the same batch."""
        if not batch.to_forward and not batch.to_update:
            return
        now = datetime.now(UTC)
        clock = now.timestamp()
        # Decide everything first, into locals: until the commit nothing is changed or told.
        settled = [self._settle(work, clock) for work in batch.to_forward]
        settled += [_Settled(work, work.status, work.failure) for work in batch.to_update]
        outcomes: list[OutcomeRecord] = []
        attempts: list[AttemptRecord] = []
        letters: list[DeadLetterRecord] = []
        recovered: list[str] = []
        for work, status, failure, _ in settled:
            outcomes.append(outcome_record(work, status, now))
            attempts.append(attempt_record(work, status, failure, now))
            if status == EventStatus.DEAD:
                letters.append(self._dead_letter(work, failure, now))
            elif work.existing and status in SUCCESS_STATUSES:
                recovered.append(work.message.event_id)
        with tracing.client_span(
            f"UPDATE {TABLE_EVENTS}",
            self._db_attributes("UPDATE"),
            links=[s.work.span for s in settled],
        ):
            async with self._db.begin(durable=False) as conn:
                await update_outcomes(conn, outcomes)
                await insert_attempts(conn, attempts)
                await upsert_dead_letters(conn, letters)
                resolved = await resolve_dead_letters(conn, recovered, now)
        # Committed: from here on, tell (once).
        if resolved:
            metrics.DLQ_RETRIES.labels(DeadLetterStatus.RESOLVED).inc(resolved)
        for work, status, failure, retry in settled:
            work.status, work.failure = status, failure
            if retry is not None:
                _retrying(work, retry)
                message = replace(work.message, attempt=retry.attempt, retry_from=retry.retry_from)
                batch.retry.append((replace(work.delivery, message=message), retry.delay))
                continue
            if status == EventStatus.DEAD:
                _dead_lettered(work)
            _settled(work)
            batch.done.append(work.delivery)

    def _settle(self, work: Work, now: float) -> _Settled:
        """What follows the event's forward (pure: see :func:`decide.settle`)."""
        settlement = decide.settle(
            work.outcome, work.message, now, work.plan.retry, self._time_scale
        )
        if isinstance(settlement, decide.Done):
            return _Settled(work, settlement.status, None)
        retry = settlement if isinstance(settlement, decide.RetryAfter) else None
        return _Settled(work, settlement.status, settlement.failure, retry)

    async def dead_letter(
        self, deliveries: Sequence[Delivery], error_class: str, error: str
    ) -> None:
        """Store each event as ``dead`` with a dead letter, without processing it (poison)."""
        now = datetime.now(UTC)
        failure = decide.failure(ErrorClass(error_class), error)
        plan = self._plans.for_event(None, None)
        works = [Work(d, plan, EventStatus.DEAD, failure=failure) for d in deliveries]
        records = [event_record(w, now) for w in works]
        async with self._db.begin(durable=False) as conn:
            inserted = await insert_events(conn, records)
            fresh = [w for w in works if w.message.event_id in inserted]
            await insert_attempts(
                conn, [attempt_record(w, EventStatus.DEAD, failure, now) for w in fresh]
            )
            await upsert_dead_letters(conn, [self._dead_letter(w, failure, now) for w in fresh])
        for work in fresh:
            _dead_lettered(work)
            _settled(work)

    def _dead_letter(self, work: Work, failure: Failure | None, now: datetime) -> DeadLetterRecord:
        """The event's dead letter (a record only: nothing is counted or logged here)."""
        failure = failure or Failure(ErrorClass.UNKNOWN, "no error recorded")
        due = None
        if failure.retryable:
            due = now + timedelta(seconds=self._dlq_auto_retry_interval)
        return DeadLetterRecord(
            id=new_id(),
            event_id=work.message.event_id,
            tool_id=work.message.tool_id,
            event_type=work.message.event_type,
            error=failure.message,
            error_class=failure.error_class,
            retryable=failure.retryable,
            retry_count=0,
            status=DeadLetterStatus.PENDING,
            created_at=now,
            updated_at=now,
            next_retry_at=due,
        )


class _Settled(NamedTuple):
    """What an attempt came to, decided before the write that records it."""

    work: Work
    status: EventStatus
    failure: Failure | None
    retry: decide.RetryAfter | None = None


def _retrying(work: Work, retry: decide.RetryAfter) -> None:
    metrics.RETRY_ATTEMPTS.labels(str(retry.attempt), retry.failure.error_class).inc()
    log.info("event will be retried", extra=event_fields(work))
    tracing.end(work.span, f"retrying: {retry.failure.message}")


def _dead_lettered(work: Work) -> None:
    failure = work.failure
    error_class = failure.error_class if failure else ErrorClass.UNKNOWN
    message = work.message
    kind = event_type_label(message.tool_id, message.event_type, work.plan.overrides)
    metrics.DLQ_ENTRIES.labels(kind, error_class).inc()
    log.warning(
        "event dead-lettered: %s", failure.message if failure else "", extra=event_fields(work)
    )


def _settled(work: Work) -> None:
    """Count the event's outcome, end its span, and (at debug level) log it."""
    message = work.message
    kind = event_type_label(message.tool_id, message.event_type, work.plan.overrides)
    labels = (kind, message.tool_id, work.status)
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
