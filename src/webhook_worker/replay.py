"""Sending accepted events through the pipeline again: an event replay (to all its
destinations or one, one event or in bulk by filter), a dead letter retried by hand (one or in
bulk by filter), and the automatic retry of retryable dead letters.

The database is changed first (the event leaves its final status, the deliveries sent round
again are ``pending`` again, the dead letter becomes ``retrying``), then the messages are
queued; if the queue is unavailable the change is undone, so nothing is left claiming to be
retried that is not. Claiming a dead letter is a conditional UPDATE, so two operators (or an
operator and the automatic retry) never send one twice. A dead letter of a delivery sends only
that delivery round again; the event's other destinations are not sent it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.errors import ConflictError, NotFoundError
from webhook_worker.observability import metrics
from webhook_worker.queue.base import Message, Queue
from webhook_worker.storage import paused, replays
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import DeadLetterFilter, DeadLetterStore, dead_letter
from webhook_worker.storage.deliveries import lock_events
from webhook_worker.storage.events import EventFilter, EventStore
from webhook_worker.storage.replays import Claimed
from webhook_worker.storage.rows import DeadLetterRow
from webhook_worker.vocabulary import DeadLetterStatus

BULK_CHUNK = 500

_SelectIds = Callable[[AsyncConnection], Awaitable[list[str]]]


class Replayer:
    def __init__(self, db: Database, queue: Queue) -> None:
        self._db = db
        self._queue = queue

    async def replay_event(self, event_id: str, destination_id: str | None = None) -> None:
        """Process an event again from its stored body, whatever its status: every delivery
        (the destinations' filters evaluated again, so a destination added since gets it too),
        or the delivery to ``destination_id`` alone. The dead letters of what is sent round go
        along (``retrying``), so they are resolved when the replay succeeds."""
        now = datetime.now(UTC)
        target = [(event_id, destination_id)]
        async with self._db.begin() as conn:
            previous = await replays.mark_retrying(conn, target)  # locks the event first
            if not previous.events:
                raise NotFoundError(f"no event {event_id!r}")
            letters = await replays.pending_dead_letters_of(conn, [event_id], destination_id)
            claimed = await replays.claim(conn, letters, (DeadLetterStatus.PENDING,), now, None)
            messages = await replays.messages(conn, target)
        await self._send(messages, previous, claimed)

    async def replay_matching(
        self,
        where: EventFilter,
        destination_id: str | None = None,
        *,
        dry_run: bool = False,
        chunk: int = BULK_CHUNK,
    ) -> int:
        """Replay every event matching ``where`` (to ``destination_id`` only, when given), in
        chunks of ``chunk`` events, oldest first; returns how many were requeued. With
        ``dry_run``, only counts them. Events that arrive while it runs are left out."""
        where = where.ending_by(datetime.now(UTC))
        if dry_run:
            return await EventStore(self._db).count(where)
        requeued = 0
        after: str | None = None
        while True:
            now = datetime.now(UTC)
            async with self._db.begin() as conn:
                ids = await replays.events_matching(conn, where, chunk, after)
                if not ids:
                    return requeued
                targets = [(event_id, destination_id) for event_id in ids]
                previous = await replays.mark_retrying(conn, targets)
                letters = await replays.pending_dead_letters_of(conn, ids, destination_id)
                claimed = await replays.claim(conn, letters, (DeadLetterStatus.PENDING,), now, None)
                messages = await replays.messages(conn, targets)
            await self._send(messages, previous, claimed)
            requeued += len(messages)
            after = ids[-1]

    async def retry_dead_letter(self, dead_letter_id: str) -> DeadLetterRow:
        """Retry one dead letter (pending or discarded). Returns it as it was when sent back
        (status ``retrying``; the worker may have moved it on since)."""
        now = datetime.now(UTC)
        async with self._db.begin() as conn:
            letter = await dead_letter(conn, dead_letter_id)
            if letter is None:
                raise NotFoundError(f"no dead letter {dead_letter_id!r}")
            await lock_events(conn, [letter.event_id])
            claimed = await replays.claim(
                conn,
                [dead_letter_id],
                (DeadLetterStatus.PENDING, DeadLetterStatus.DISCARDED),
                now,
                None,
            )
            if not claimed:
                raise ConflictError(
                    f"dead letter {dead_letter_id!r} is {letter.status}; only pending or "
                    "discarded dead letters can be retried"
                )
            targets = _targets(claimed)
            previous = await replays.mark_retrying(conn, targets)
            messages = await replays.messages(conn, targets)
            sent = await dead_letter(conn, dead_letter_id)
        assert sent is not None  # claimed in this transaction: it exists
        await self._send(messages, previous, claimed)
        metrics.DLQ_RETRIES.labels("requeued").inc()
        return sent

    async def count_matching(self, where: DeadLetterFilter) -> int:
        """How many pending dead letters a bulk retry with ``where`` would send back."""
        return await DeadLetterStore(self._db).count(
            replace(where, status=DeadLetterStatus.PENDING)
        )

    async def retry_matching(
        self, where: DeadLetterFilter, limit: int = BULK_CHUNK, before: datetime | None = None
    ) -> int:
        """Retry up to ``limit`` pending dead letters matching ``where``. Returns how many were
        requeued; call again until it returns 0 to work through a large set, passing the same
        ``before`` (when the bulk retry started) so letters that already failed again in this
        run are not sent round a second time."""

        async def select_ids(conn: AsyncConnection) -> list[str]:
            return await replays.pending_matching(conn, where, limit, before)

        return await self._retry_selected(select_ids, datetime.now(UTC), next_retry_at=None)

    async def retry_due(self, max_retries: int, interval: float, limit: int = BULK_CHUNK) -> int:
        """The automatic retry: retryable dead letters whose time came, at most ``max_retries``
        times each. Returns how many were requeued."""
        now = datetime.now(UTC)

        async def select_ids(conn: AsyncConnection) -> list[str]:
            return await replays.due(conn, max_retries, now, limit)

        return await self._retry_selected(
            select_ids, now, next_retry_at=now + timedelta(seconds=interval)
        )

    async def _retry_selected(
        self, select_ids: _SelectIds, now: datetime, next_retry_at: datetime | None
    ) -> int:
        """Claim the pending dead letters ``select_ids`` chooses and requeue what failed
        (each delivery, or event); returns how many were requeued."""
        async with self._db.begin() as conn:
            ids = await select_ids(conn)
            await lock_events(conn, await replays.events_of(conn, ids))
            claimed = await replays.claim(
                conn, ids, (DeadLetterStatus.PENDING,), now, next_retry_at
            )
            targets = _targets(claimed)
            previous = await replays.mark_retrying(conn, targets)
            messages = await replays.messages(conn, targets)
        await self._send(messages, previous, claimed)
        metrics.DLQ_RETRIES.labels("requeued").inc(len(messages))
        return len(messages)

    async def release_paused(
        self, tool_id: str, destination_id: str, *, chunk: int = BULK_CHUNK
    ) -> int:
        """Send the deliveries that waited while the destination was paused, in the order
        their events were received (chunk by chunk, each queued before the next is read);
        returns how many. Each becomes ``pending`` and is queued as that destination's
        delivery alone, keeping the event's ordering positions. A delivery another release
        took meanwhile is not sent twice (checked under the events' lock)."""
        released = 0
        after: tuple[datetime, str] | None = None
        while True:
            async with self._db.begin() as conn:
                found = await paused.oldest_paused(conn, tool_id, destination_id, chunk, after)
                if not found:
                    return released
                after = found[-1]
                ids = [event_id for _, event_id in found]
                await lock_events(conn, ids)
                still = await paused.still_paused(conn, destination_id, ids)
                targets: list[tuple[str, str | None]] = [
                    (event_id, destination_id) for event_id in ids if event_id in still
                ]
                previous = await replays.mark_retrying(conn, targets)
                messages = await replays.messages(conn, targets)
            await self._send(messages, previous, ())
            released += len(messages)

    async def release_unpaused(
        self, paused_now: Callable[[str, str], bool], parked_before: datetime
    ) -> int:
        """Send again what waits for a destination that is not paused any more (its resume
        ran while a worker that had not yet seen it was recording the delivery ``paused``;
        or the destination was removed meanwhile), for deliveries recorded before
        ``parked_before``. ``paused_now(tool_id, destination_id)``: the tools as this process
        knows them. Returns how many were sent."""
        async with self._db.begin() as conn:
            found = await paused.destinations_with_paused(conn, parked_before)
        released = 0
        for tool_id, destination_id in found:
            if not paused_now(tool_id, destination_id):
                released += await self.release_paused(tool_id, destination_id)
        return released

    async def _send(
        self,
        messages: list[Message],
        previous: replays.Previous,
        claimed: Sequence[Claimed],
    ) -> None:
        try:
            await self._queue.requeue(messages)
        except BaseException:
            # Put things back as they were: nothing may claim to be retried that is not.
            async with self._db.begin() as conn:
                await replays.undo(conn, previous, claimed)
            raise


def _targets(claimed: Sequence[Claimed]) -> list[tuple[str, str | None]]:
    """What the claimed dead letters send round: the failed delivery, or the whole event when
    the event itself failed."""
    return [(c.event_id, c.destination_id) for c in claimed]
