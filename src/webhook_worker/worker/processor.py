"""What happens to a batch of events, in three phases so that retrying one phase (after the
database was away) never repeats another's side effects:

1. :meth:`Processor.store`: one transaction. New events are inserted with their outcome
   (``processed``, ``ignored``, ``dead``, or ``pending`` when they still have deliveries to
   make), with the deliveries its destinations' filters or transforms decided at once
   (``ignored``, ``dead``); a delivery to send is recorded with its first outcome, in phase 3.
   An event the table already holds owes
   only the deliveries not recorded as final: those are planned again (the tool may have
   changed), the others are never sent again. Idempotent: a redelivered message never creates
   a second row nor re-sends a delivery recorded as delivered.
2. :meth:`Processor.forward_one`: one delivery's HTTP call, no database (the worker runs these
   delivery by delivery, each destination in its own lane, and hands each finished delivery to
   phase 3 in groups).
3. :meth:`Processor.record`: one transaction with a group of deliveries' statuses, attempts and
   dead letters, and their events' statuses worked out again from all their deliveries. A
   message is settled when the last of its deliveries is: acknowledged, or split into one
   retry per delivery that failed, each on that destination's own schedule.

Each phase that writes decides first, in pure code (:mod:`~webhook_worker.worker.decide`),
into locals; writes once; and only after the commit counts metrics, logs, ends the events'
spans and fills the :class:`~webhook_worker.worker.work.Batch`. A phase the worker retries
because the database was away therefore starts again from the same inputs and has emitted
nothing: the metrics count what was committed, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

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
from webhook_worker.storage.deliveries import (
    delivery_states,
    lock_events,
    settle_events,
    upsert_deliveries,
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
    DeliveryRecord,
    DeliveryState,
    EventState,
    OutcomeRecord,
)
from webhook_worker.tools.cache import ToolCache
from webhook_worker.vocabulary import (
    FINAL_STATUSES,
    DeadLetterStatus,
    DeliveryStatus,
    ErrorClass,
    EventStatus,
    event_status,
)
from webhook_worker.worker import decide
from webhook_worker.worker.forwarder import Forwarder, ForwardOutcome
from webhook_worker.worker.plan import Plans, Route
from webhook_worker.worker.retry import Failure
from webhook_worker.worker.work import (
    Batch,
    Part,
    Work,
    attempt_record,
    delivery_record,
    event_fields,
    event_record,
    forward_request,
    outcome_record,
    part_attempt_record,
    part_fields,
    settled_positions,
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
        """Store new events with what their plan decided; sort every message into the batch:
        settled (to acknowledge), deliveries to send, or an existing event's new outcome to
        record."""
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
            if event_id in inserted:
                for part in work.parts:
                    if part.status != DeliveryStatus.PENDING:
                        _delivery_decided(part, part.status)
                sends = [part for part in work.parts if part.status == DeliveryStatus.PENDING]
                if sends:
                    work.unsettled = len(sends)
                    batch.to_forward += sends
                    if work.status in FINAL_STATUSES:
                        _count(work)  # dead already (a destination's transform failed)
                else:
                    if work.status == EventStatus.DEAD and not work.parts:
                        _dead_lettered(work, work.failure)
                    _settled(work)
                    batch.done.append(work.delivery)
                continue
            state = states.get(event_id)
            if state is None:
                # A repeated delivery id under another event id, or one destination's delivery
                # of an event deleted since: nothing to do.
                tracing.end(work.span)
                batch.done.append(work.delivery)
            else:
                self._again(work, state, batch)
        return batch

    def _again(self, work: Work, state: EventState, batch: Batch) -> None:
        """An event already stored (interrupted, waiting for a retry, sent back from the dead
        letter queue, replayed): plan what it still owes again, from the tool as it is now."""
        work.existing = True
        work.attempt = state.attempt_count + 1
        # Planned as a new event by _prepare: start again from the tool's own decision.
        work.status = work.prepared.status
        work.parts = []
        message = work.message
        if message.destination_id is not None:
            owed = [message.destination_id]
        elif work.status == EventStatus.PENDING or state.deliveries:
            routes = [r.id for r in work.plan.routes] if work.status == EventStatus.PENDING else []
            # What the tool delivers to now and has not finished, then what was planned before
            # and is not finished either (a destination removed since is let go of below).
            owed = [d for d in routes if not _finished(state, d)]
            owed += [
                d
                for d, recorded in state.deliveries.items()
                if not recorded.status.final and d not in routes
            ]
        else:
            owed = []
        if message.destination_id is None and not owed:
            if state.status in FINAL_STATUSES and (state.deliveries or work.status.final):
                tracing.end(work.span)
                batch.done.append(work.delivery)
            else:
                batch.to_update.append(work)  # the event's own outcome, or its status again
            return
        for destination_id in owed:
            recorded = state.deliveries.get(destination_id)
            if recorded is not None and recorded.status.final:
                continue  # only a message for this one destination gets here
            work.parts.append(self._part_again(work, destination_id, recorded))
        if not work.parts:
            tracing.end(work.span)
            batch.done.append(work.delivery)
            return
        work.unsettled = len(work.parts)
        for part in work.parts:
            (batch.to_forward if part.status == DeliveryStatus.PENDING else batch.to_record).append(
                part
            )

    def _part_again(self, work: Work, destination_id: str, recorded: DeliveryState | None) -> Part:
        attempt = recorded.attempt_count + 1 if recorded is not None else 1
        existing = recorded is not None
        if work.status in (EventStatus.DEAD, EventStatus.IGNORED):
            # The tool itself now gives up on the event or filters it out: so does the delivery.
            status = DeliveryStatus(work.status)
            return Part(work, destination_id, None, status, None, work.failure, attempt, existing)
        route = work.plan.route(destination_id) if work.status == EventStatus.PENDING else None
        if route is None:
            return Part(
                work, destination_id, None, DeliveryStatus.IGNORED, None, _GONE, attempt, existing
            )
        return self._part(work, route, attempt, existing)

    async def _insert(
        self, works: list[Work], now: datetime
    ) -> tuple[set[str], dict[str, EventState]]:
        """Insert the new events with what is already known of them and their deliveries; read
        the others' state. A message for one destination never makes an event."""
        records = [event_record(w, now) for w in works if w.message.destination_id is None]
        async with self._db.begin(durable=False) as conn:
            inserted = await insert_events(conn, records)
            others = [w.message.event_id for w in works if w.message.event_id not in inserted]
            states = await event_states(conn, others)
            new = [w for w in works if w.message.event_id in inserted]
            # The deliveries decided at once (ignored, dead); one about to be sent is recorded
            # with its first outcome (a redelivery finds it missing and sends it then).
            decided = [part for w in new for part in w.parts if part.status.final]
            await upsert_deliveries(conn, [delivery_record(p, p.status, now) for p in decided])
            own = [w for w in new if w.status in FINAL_STATUSES and not w.parts]
            await insert_attempts(
                conn,
                [attempt_record(w, w.status, w.failure, now) for w in own]
                + [part_attempt_record(p, p.status, p.failure, now) for p in decided],
            )
            await upsert_dead_letters(
                conn,
                [self._dead_letter(w, w.failure, now) for w in own if w.status == EventStatus.DEAD]
                + [
                    self._dead_letter(p.work, p.failure, now, p.destination_id)
                    for p in decided
                    if p.status == DeliveryStatus.DEAD
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
        attributes = {
            "messaging.message.id": message.event_id,
            "webhook.tool_id": message.tool_id,
            "webhook.event_type": message.event_type,
            "webhook.delivery_id": message.delivery_id,
        }
        if message.destination_id is not None:
            attributes["webhook.destination_id"] = message.destination_id
        return tracing.start_consumer(
            message.traceparent, self._messaging_system, self._destination, attributes
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
        work = Work(
            delivery, plan, prepared.status, prepared.payload, prepared.failure, prepared=prepared
        )
        if message.destination_id is None and prepared.status == EventStatus.PENDING:
            # A new event (if it is not, phase 1 plans it again from what is recorded).
            work.parts = [self._part(work, route, 1) for route in plan.routes]
            work.status = event_status(part.status for part in work.parts)
        return work

    @staticmethod
    def _part(work: Work, route: Route, attempt: int, existing: bool = False) -> Part:
        routed = decide.route(route, work.message.body, work.prepared)
        return Part(
            work, route.id, route, routed.status, routed.payload, routed.failure, attempt, existing
        )

    # Phase 2 -----------------------------------------------------------------------------

    async def forward_one(self, part: Part) -> None:
        """Send one delivery to its destination and keep the outcome on ``part``. Never raises
        (but for cancellation): an unexpected error is a retryable failure of the attempt."""
        route = part.route
        assert route is not None, "only deliveries with a destination are sent"
        config = route.forward
        message = part.message
        attributes: dict[str, str | int] = {
            "http.request.method": config.method,
            "url.full": config.redacted_url,
            "webhook.destination_id": part.destination_id,
        }
        with tracing.client_span(config.method, attributes, parent=part.work.span) as span:
            try:
                request = forward_request(part)
                if span is not None:
                    request = replace(request, traceparent=tracing.traceparent(span))
                part.outcome = await self._forwarder.send(config, request)
            except Exception as exc:
                log.exception("forwarding failed unexpectedly", extra=part_fields(part))
                failure = Failure(ErrorClass.CONNECTION_ERROR, f"unexpected error: {exc!r}"[:500])
                part.outcome = ForwardOutcome(0.0, None, failure)
            if span is not None and part.outcome.http_status is not None:
                span.set_attribute("http.response.status_code", part.outcome.http_status)
        outcome = part.outcome
        seconds = outcome.duration_ms / 1000
        status_class = "error" if outcome.http_status is None else f"{outcome.http_status // 100}xx"
        metrics.FORWARD_DURATION_OF(message.tool_id, status_class).observe(seconds)
        metrics.DELIVERY_DURATION_OF(message.tool_id, part.destination_id).observe(seconds)

    def paused_now(self, part: Part) -> bool:
        """Is the delivery's destination paused in the tools as this process knows them now
        (it may have been paused since the delivery was planned)?"""
        return self.destination_paused(part.message.tool_id, part.destination_id)

    def destination_paused(self, tool_id: str, destination_id: str) -> bool:
        live = self._tools.get(tool_id)
        if live is None:
            return False
        for destination in live.tool.destinations:
            if destination.id == destination_id:
                return destination.paused
        return False

    def deferred(self, part: Part, delay: float) -> None:
        """The delivery goes back to the queue untried, for ``delay`` seconds, because its
        destination has as many deliveries in flight and waiting as it may have (a slow
        target)."""
        metrics.FORWARDS_DEFERRED.labels(part.message.tool_id).inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "delivery deferred for %.1fs: the destination is busy",
                delay,
                extra=part_fields(part),
            )

    # Phase 3 -----------------------------------------------------------------------------

    async def record(self, batch: Batch) -> None:
        """Write the outcome of sent deliveries, of deliveries and events decided again without
        sending; then fill ``done`` and ``retry`` with the messages now settled. Raises
        (DatabaseUnavailableError while the database is away) having changed nothing, so the
        caller may call it again with the same batch."""
        if not (
            batch.to_forward or batch.to_update or batch.to_record or batch.deferred or batch.parked
        ):
            return
        now = datetime.now(UTC)
        clock = now.timestamp()
        # Decide everything first, into locals: until the commit nothing is changed or told.
        parts = [self._settle(part, clock) for part in batch.to_forward]
        parts += [_PartSettled(part, part.status, part.failure) for part in batch.to_record]
        works = [_Settled(work, work.status, work.failure) for work in batch.to_update]
        if parts or works or batch.parked:
            with tracing.client_span(
                f"UPDATE {TABLE_EVENTS}",
                self._db_attributes("UPDATE"),
                links=[s.part.work.span for s in parts] + [s.work.span for s in works],
            ):
                changes, resolved = await self._write(parts, works, batch.parked, now)
        else:
            changes, resolved = {}, 0
        # Committed: from here on, tell (once).
        if resolved:
            metrics.DLQ_RETRIES.labels(DeadLetterStatus.RESOLVED).inc(resolved)
        finished: list[Work] = []
        for part, status, failure, retry in parts:
            part.status, part.failure = status, failure
            _delivery_decided(part, status)
            if status.final and part.message.ordering:
                # The next event of its key may go now, not only once the event's other
                # deliveries are settled too.
                batch.settled += settled_positions(part.message, only=part.destination_id)
            work = part.work
            if retry is not None:
                _retrying(part, retry)
                message = replace(
                    work.message,
                    destination_id=part.destination_id,
                    attempt=retry.attempt,
                    retry_from=retry.retry_from,
                )
                work.later.append((message, retry.delay))
                work.kept.add(part.destination_id)
            work.unsettled -= 1
            if work.unsettled == 0:
                finished.append(work)
        for part, delay in batch.deferred:
            work = part.work
            work.later.append((replace(work.message, destination_id=part.destination_id), delay))
            work.kept.add(part.destination_id)
            work.unsettled -= 1
            if work.unsettled == 0:
                finished.append(work)
        for part in batch.parked:
            _parked(part)
            work = part.work
            work.kept.add(part.destination_id)
            work.unsettled -= 1
            if work.unsettled == 0:
                finished.append(work)
        for settled in works:
            work = settled.work
            work.status, work.failure = settled.status, settled.failure
            if work.status == EventStatus.DEAD:
                _dead_lettered(work, work.failure)
            finished.append(work)
        for work in finished:
            before_after = changes.get(work.message.event_id)
            if before_after is not None:
                before, after = before_after
                work.status = after
                if after != before and after in FINAL_STATUSES:
                    _settled(work)
                else:
                    tracing.end(work.span)
            elif work.status in FINAL_STATUSES:
                _settled(work)
            else:
                tracing.end(work.span)
            if work.later:
                batch.retry += [(replace(work.delivery, message=m), d) for m, d in work.later]
            else:
                batch.done.append(work.delivery)
            batch.settled += settled_positions(work.message, work.kept)

    async def _write(
        self,
        parts: list[_PartSettled],
        works: list[_Settled],
        parked: list[Part],
        now: datetime,
    ) -> tuple[dict[str, tuple[EventStatus, EventStatus]], int]:
        """One transaction: deliveries, attempts, dead letters, then the events' statuses.
        ``parked``: deliveries to a paused destination, recorded ``paused`` (not an attempt:
        nothing was tried)."""
        records: list[DeliveryRecord] = []
        attempts: list[AttemptRecord] = []
        letters: list[DeadLetterRecord] = []
        recovered: list[tuple[str, str]] = []
        added: dict[str, int] = {}
        for part, status, failure, retry in parts:
            event_id = part.message.event_id
            due = None if retry is None else now + timedelta(seconds=retry.delay)
            records.append(delivery_record(part, status, now, due))
            attempts.append(part_attempt_record(part, status, failure, now))
            added[event_id] = added.get(event_id, 0) + 1
            if status == DeliveryStatus.DEAD:
                letters.append(self._dead_letter(part.work, failure, now, part.destination_id))
            elif part.existing and status == DeliveryStatus.DELIVERED:
                recovered.append((event_id, part.destination_id))
        for part in parked:
            record = delivery_record(part, DeliveryStatus.PAUSED, now)
            records.append(record._replace(attempt_count=part.attempt - 1))
            added.setdefault(part.message.event_id, 0)  # its status again, from its deliveries
        outcomes: list[OutcomeRecord] = []
        for own in works:
            event_id = own.work.message.event_id
            if own.status not in FINAL_STATUSES:
                added.setdefault(event_id, 0)  # its status again, from its deliveries
                continue
            outcomes.append(outcome_record(own.work, own.status, now))
            attempts.append(attempt_record(own.work, own.status, own.failure, now))
            if own.status == EventStatus.DEAD:
                letters.append(self._dead_letter(own.work, own.failure, now))
            elif own.work.existing:
                recovered.append((event_id, ""))
        touched = (
            [s.part.message.event_id for s in parts]
            + [s.work.message.event_id for s in works]
            + [part.message.event_id for part in parked]
        )
        async with self._db.begin(durable=False) as conn:
            before = await lock_events(conn, touched)
            if len(before) < len(set(touched)):
                # Purged while this worker held them (DELETE /api/v1/events): nothing is written
                # about an event that is gone, or its rows would outlive it.
                records = [r for r in records if r.event_id in before]
                outcomes = [o for o in outcomes if o.event_id in before]
                attempts = [a for a in attempts if a.event_id in before]
                letters = [d for d in letters if d.event_id in before]
                recovered = [r for r in recovered if r[0] in before]
            recorded = await delivery_states(conn, list({r.event_id for r in records}))
            # A delivery another worker recorded as delivered meanwhile (it took this message
            # over when its lease ran out) stays delivered: this late outcome is history only,
            # never a reason to send it again.
            late = {
                (r.event_id, r.destination_id)
                for r in records
                if r.status != DeliveryStatus.DELIVERED
                and _status(recorded, r.event_id, r.destination_id) == DeliveryStatus.DELIVERED
            }
            if late:
                records = [r for r in records if (r.event_id, r.destination_id) not in late]
                letters = [d for d in letters if (d.event_id, d.destination_id) not in late]
            await upsert_deliveries(conn, records)
            await update_outcomes(conn, outcomes)
            await insert_attempts(conn, attempts)
            await upsert_dead_letters(conn, letters)
            resolved = await resolve_dead_letters(conn, recovered, now)
            changes = await settle_events(conn, before, recorded, records, added, now)
        if late:
            log.warning(
                "%d late outcomes of deliveries already recorded as delivered by another worker "
                "(this worker's lease ran out) were kept as attempts only",
                len(late),
            )
        return changes, resolved

    def _settle(self, part: Part, now: float) -> _PartSettled:
        """What follows the delivery's attempt (pure: see :func:`decide.settle`)."""
        route = part.route
        assert route is not None, "only deliveries with a destination are sent"
        settlement = decide.settle(part.outcome, part.message, now, route.retry, self._time_scale)
        if isinstance(settlement, decide.Done):
            return _PartSettled(part, DeliveryStatus.DELIVERED, None)
        if isinstance(settlement, decide.RetryAfter):
            return _PartSettled(part, DeliveryStatus.RETRYING, settlement.failure, settlement)
        return _PartSettled(part, DeliveryStatus.DEAD, settlement.failure)

    async def dead_letter(
        self, deliveries: Sequence[Delivery], error_class: str, error: str
    ) -> None:
        """Give up on messages without processing them (poison): a new event is stored as
        ``dead``; a message for one destination makes that delivery ``dead``. Either way a dead
        letter holds the reason."""
        now = datetime.now(UTC)
        failure = decide.failure(ErrorClass(error_class), error)
        plan = self._plans.for_event(None, None)
        works = [Work(d, plan, EventStatus.DEAD, failure=failure) for d in deliveries]
        events = [w for w in works if w.message.destination_id is None]
        scoped = [w for w in works if w.message.destination_id is not None]
        async with self._db.begin(durable=False) as conn:
            before = await lock_events(conn, [w.message.event_id for w in scoped])
            inserted = await insert_events(conn, [event_record(w, now) for w in events])
            fresh = [w for w in events if w.message.event_id in inserted]
            states = await event_states(conn, [w.message.event_id for w in scoped])
            parts = []
            for work in scoped:
                state = states.get(work.message.event_id)
                if state is None:
                    continue
                destination_id = work.message.destination_id
                assert destination_id is not None
                known = state.deliveries.get(destination_id)
                if known is not None and known.status.final:
                    continue  # settled meanwhile: nothing to give up on
                attempt = known.attempt_count + 1 if known is not None else 1
                part = Part(work, destination_id, None, DeliveryStatus.DEAD, None, failure, attempt)
                parts.append(part)
            written = [delivery_record(p, DeliveryStatus.DEAD, now) for p in parts]
            await upsert_deliveries(conn, written)
            await insert_attempts(
                conn,
                [attempt_record(w, EventStatus.DEAD, failure, now) for w in fresh]
                + [part_attempt_record(p, DeliveryStatus.DEAD, failure, now) for p in parts],
            )
            await upsert_dead_letters(
                conn,
                [self._dead_letter(w, failure, now) for w in fresh]
                + [self._dead_letter(p.work, failure, now, p.destination_id) for p in parts],
            )
            await settle_events(
                conn,
                before,
                {event_id: state.deliveries for event_id, state in states.items()},
                written,
                {p.message.event_id: 1 for p in parts},
                now,
            )
        for work in fresh:
            _dead_lettered(work, failure)
            _settled(work)
        for part in parts:
            _delivery_decided(part, DeliveryStatus.DEAD)

    def _dead_letter(
        self,
        work: Work,
        failure: Failure | None,
        now: datetime,
        destination_id: str = "",
    ) -> DeadLetterRecord:
        """The dead letter of the event, or of its delivery to ``destination_id`` (a record
        only: nothing is counted or logged here)."""
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
            destination_id=destination_id,
        )


_GONE: Final = Failure(
    ErrorClass.UNKNOWN, "the destination was removed from the tool or disabled meanwhile"
)
"""Why a delivery planned before is ``ignored`` now (not a failure: nothing is retried)."""


def _status(
    recorded: Mapping[str, Mapping[str, DeliveryState]], event_id: str, destination_id: str
) -> DeliveryStatus | None:
    state = recorded.get(event_id, {}).get(destination_id)
    return None if state is None else state.status


def _finished(state: EventState, destination_id: str) -> bool:
    recorded = state.deliveries.get(destination_id)
    return recorded is not None and recorded.status.final


class _Settled(NamedTuple):
    """What an event's own processing came to, decided before the write that records it."""

    work: Work
    status: EventStatus
    failure: Failure | None


class _PartSettled(NamedTuple):
    """What a delivery came to, decided before the write that records it."""

    part: Part
    status: DeliveryStatus
    failure: Failure | None
    retry: decide.RetryAfter | None = None


def _retrying(part: Part, retry: decide.RetryAfter) -> None:
    metrics.RETRY_ATTEMPTS.labels(str(retry.attempt), retry.failure.error_class).inc()
    log.info("delivery will be retried", extra=part_fields(part))


def _parked(part: Part) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug("delivery waits: its destination is paused", extra=part_fields(part))


def _delivery_decided(part: Part, status: DeliveryStatus) -> None:
    """Count what one delivery came to (and a dead letter when it is dead)."""
    message = part.message
    metrics.DELIVERIES_OF(message.tool_id, part.destination_id, status).inc()
    if status == DeliveryStatus.DEAD:
        _dead_lettered(part.work, part.failure, part.destination_id)


def _dead_lettered(work: Work, failure: Failure | None, destination_id: str | None = None) -> None:
    error_class = failure.error_class if failure else ErrorClass.UNKNOWN
    message = work.message
    kind = event_type_label(message.tool_id, message.event_type, work.plan.overrides)
    metrics.DLQ_ENTRIES.labels(kind, error_class).inc()
    fields = event_fields(work)
    if destination_id is not None:
        fields["destination_id"] = destination_id
    log.warning("dead-lettered: %s", failure.message if failure else "", extra=fields)


def _count(work: Work) -> None:
    """Count the event's final status (once per message) and (at debug level) log it."""
    if work.reported:
        return
    work.reported = True
    message = work.message
    kind = event_type_label(message.tool_id, message.event_type, work.plan.overrides)
    labels = (kind, message.tool_id, work.status)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("event %s", work.status, extra=event_fields(work))
    metrics.EVENTS_PROCESSED.labels(*labels).inc()
    metrics.PROCESSING_DURATION.labels(*labels).observe(time.perf_counter() - work.started)


def _settled(work: Work) -> None:
    """Count the event's final status and end its span."""
    _count(work)
    if work.span is not None:
        work.span.set_attribute("webhook.status", work.status)
        tracing.end(
            work.span,
            work.failure.message if work.status == EventStatus.DEAD and work.failure else None,
        )
