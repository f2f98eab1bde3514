"""Sending accepted events through the pipeline again: an event replay, a dead letter retried
by hand (one or in bulk by filter), and the automatic retry of retryable dead letters.

The database is changed first (the event leaves its final status, the dead letter becomes
``retrying``), then the messages are queued; if the queue is unavailable the change is undone,
so nothing is left claiming to be retried that is not. Claiming a dead letter is a conditional
UPDATE, so two operators (or an operator and the automatic retry) never send one twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.errors import ConflictError, NotFoundError
from webhook_worker.observability import metrics
from webhook_worker.queue.base import Message, Queue
from webhook_worker.storage import replays
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import DeadLetterFilter, dead_letter
from webhook_worker.storage.replays import Claimed
from webhook_worker.storage.rows import DeadLetterRow
from webhook_worker.vocabulary import DeadLetterStatus, EventStatus

BULK_CHUNK = 500

_SelectIds = Callable[[AsyncConnection], Awaitable[list[str]]]


class Replayer:
    def __init__(self, db: Database, queue: Queue) -> None:
        self._db = db
        self._queue = queue

    async def replay_event(self, event_id: str) -> None:
        """Process an event again from its stored body, whatever its status. A dead event's
        dead letter goes along (``retrying``), so it is resolved when the replay succeeds."""
        now = datetime.now(UTC)
        async with self._db.begin() as conn:
            previous = await replays.mark_retrying(conn, [event_id])
            if not previous:
                raise NotFoundError(f"no event {event_id!r}")
            letters = await replays.dead_letters_of(conn, event_id)
            claimed = await replays.claim(conn, letters, (DeadLetterStatus.PENDING,), now, None)
            messages = await replays.messages(conn, [event_id])
        await self._send(messages, previous, claimed)

    async def retry_dead_letter(self, dead_letter_id: str) -> DeadLetterRow:
        """Retry one dead letter (pending or discarded). Returns it as it was when sent back
        (status ``retrying``; the worker may have moved it on since)."""
        now = datetime.now(UTC)
        async with self._db.begin() as conn:
            letter = await dead_letter(conn, dead_letter_id)
            if letter is None:
                raise NotFoundError(f"no dead letter {dead_letter_id!r}")
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
            previous = await replays.mark_retrying(conn, [letter.event_id])
            messages = await replays.messages(conn, [letter.event_id])
            sent = await dead_letter(conn, dead_letter_id)
        assert sent is not None  # claimed in this transaction: it exists
        await self._send(messages, previous, claimed)
        metrics.DLQ_RETRIES.labels("requeued").inc()
        return sent

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
        """Claim the pending dead letters ``select_ids`` chooses and requeue their events;
        returns how many were requeued."""
        async with self._db.begin() as conn:
            ids = await select_ids(conn)
            claimed = await replays.claim(
                conn, ids, (DeadLetterStatus.PENDING,), now, next_retry_at
            )
            event_ids = [c.event_id for c in claimed]
            previous = await replays.mark_retrying(conn, event_ids)
            messages = await replays.messages(conn, event_ids)
        await self._send(messages, previous, claimed)
        metrics.DLQ_RETRIES.labels("requeued").inc(len(messages))
        return len(messages)

    async def _send(
        self,
        messages: list[Message],
        previous: dict[str, EventStatus],
        claimed: Sequence[Claimed],
    ) -> None:
        try:
            await self._queue.requeue(messages)
        except BaseException:
            # Put things back as they were: nothing may claim to be retried that is not.
            async with self._db.begin() as conn:
                await replays.undo(conn, previous, claimed)
            raise
