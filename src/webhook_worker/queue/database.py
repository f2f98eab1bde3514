"""The queue on the database, used when REDIS_ADDR is unset.

One row of ``queue_messages`` is one message. A consumer *leases* rows by stamping
``locked_by``/``locked_until``; acknowledging deletes the row; a lease that runs out (the worker
died or hung) lets :meth:`DatabaseQueue.reclaim` hand the row to another consumer. On PostgreSQL
several worker processes share the table through ``FOR UPDATE SKIP LOCKED``; on SQLite writers
are serialised by ``BEGIN IMMEDIATE`` (see :mod:`webhook_worker.storage.database`), so the same
statements are safe there too.

De-duplication uses ``delivery_ids``: the upsert that records a delivery id is the arbiter, in
the same transaction as the queue insert, so of two concurrent requests with one delivery id
exactly one is enqueued. A message's replay key (see :class:`Message`) is a second row there,
its ``delivery_id`` the key after ``replay:``, recorded by the same upsert.

Ordering positions are given in that transaction too, for the accepted messages only: an upsert
of ``ordering_keys`` counts each key's ``assigned`` up (its row lock serialises concurrent
enqueues of one key), and the message's row carries them in ``ordering``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Row,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.constants import DELIVERY_REPLAY_PREFIX
from webhook_worker.queue.base import Delivery, EnqueueResult, Message, Position
from webhook_worker.queue.positions import decode_ordering, encode_ordering
from webhook_worker.queue.unavailable import database_unavailable
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import delivery_ids, ordering_keys, queue_messages

__all__ = ["DatabaseQueue"]

_T = TypeVar("_T")
_Key = tuple[str, str]
_OrderKey = tuple[str, str, str]
"""(tool id, destination id, ordering key): one row of ``ordering_keys``."""

# PostgreSQL accepts at most 32767 bind parameters per statement; 1000 rows of four stays far
# below that and below SQLite's limit, while still being one statement for any usual batch.
_CHUNK_ROWS = 1000

_MESSAGE_COLUMNS = (
    queue_messages.c.id,
    queue_messages.c.deliveries,
    queue_messages.c.event_id,
    queue_messages.c.tool_id,
    queue_messages.c.event_type,
    queue_messages.c.delivery_id,
    queue_messages.c.received_at,
    queue_messages.c.headers,
    queue_messages.c.body,
    queue_messages.c.traceparent,
    queue_messages.c.attempt,
    queue_messages.c.retry_from,
    queue_messages.c.destination_id,
    queue_messages.c.ordering,
)


class DatabaseQueue:
    """The :class:`~webhook_worker.queue.base.Queue` on PostgreSQL or SQLite.

    ``consumer`` names this process in ``locked_by``; ``idempotency_ttl`` is how long a delivery
    id is remembered; ``reclaim_idle`` is the lease: a message received but not acknowledged
    within it may be reclaimed by another consumer; ``poll_interval`` is how often a blocking
    :meth:`receive` looks for messages enqueued by other processes.
    """

    def __init__(
        self,
        db: Database,
        consumer: str,
        idempotency_ttl: float,
        reclaim_idle: float,
        poll_interval: float = 0.05,
    ) -> None:
        self._db = db
        self._consumer = consumer
        self._idempotency_ttl = idempotency_ttl
        self._reclaim_idle = reclaim_idle
        self._poll_interval = poll_interval
        # Replaced (after being set) by every enqueue: a receiver waits on the event it saw
        # before looking, so an enqueue that commits after the look still wakes it.
        self._enqueued = asyncio.Event()
        self._upsert_insert: Any = (
            postgresql.insert if db.dialect == "postgresql" else sqlite.insert
        )
        self._record_ids = self._record_ids_statement()
        self._give_positions = self._give_positions_statement()
        self._redirect_ids = (
            update(delivery_ids)
            .where(
                delivery_ids.c.tool_id == bindparam("key_tool"),
                delivery_ids.c.delivery_id == bindparam("key_id"),
            )
            .values(event_id=bindparam("first_id"))
        )

    async def enqueue(self, messages: Sequence[Message]) -> list[EnqueueResult]:
        """Durably add ``messages`` in one transaction; see the Protocol.

        A message's keys are its delivery id and, when it has one, its replay key. Within the
        batch a message sharing any key with an earlier one is that one's duplicate. A key whose
        record expired counts as new.
        """
        if not messages:
            return []
        # owner: each key -> the index of the first message holding it (the batch's leader for
        # every message sharing a key with it); leaders[i]: whose event message i answers with.
        owner: dict[_Key, int] = {}
        leaders: list[int] = []
        for index, message in enumerate(messages):
            keys = _keys(message)
            leader = next((owner[key] for key in keys if key in owner), index)
            for key in keys:
                owner.setdefault(key, leader)
            leaders.append(leader)
        # A fixed lock order keeps two concurrent batches sharing keys from deadlocking; the
        # queue rows themselves keep the order of arrival.
        ordered = sorted(owner)
        now = time.time()
        new: set[_Key] = set()
        known: dict[_Key, str] = {}
        answers: dict[int, str] = {}
        accepted: list[Message] = []
        with _unavailable("enqueue"):
            async with self._db.begin() as conn:
                expires_at = now + self._idempotency_ttl
                for chunk in _chunks(ordered):
                    rows = [
                        {
                            "tool_id": key[0],
                            "delivery_id": key[1],
                            "event_id": messages[owner[key]].event_id,
                            "expires_at": expires_at,
                        }
                        for key in chunk
                    ]
                    result = await conn.execute(self._record_ids, rows)
                    new.update((tool_id, key) for tool_id, key, _event_id in result.all())
                for looked_up in _chunks([key for key in ordered if key not in new]):
                    # A statement of its own: under READ COMMITTED it sees the row a concurrent
                    # enqueue committed while our upsert waited for it.
                    found = await conn.execute(
                        select(
                            delivery_ids.c.tool_id,
                            delivery_ids.c.delivery_id,
                            delivery_ids.c.event_id,
                        ).where(
                            tuple_(delivery_ids.c.tool_id, delivery_ids.c.delivery_id).in_(
                                looked_up
                            )
                        )
                    )
                    for tool_id, key, event_id in found.all():
                        known[(tool_id, key)] = event_id
                redirected: dict[int, str] = {}
                for index, message in enumerate(messages):
                    if leaders[index] != index:
                        continue
                    seen = next((key for key in _keys(message) if key not in new), None)
                    if seen is None:
                        accepted.append(message)
                        answers[index] = message.event_id
                    else:
                        answers[index] = redirected[index] = known[seen]
                if redirected:
                    # The new keys of a duplicate (a replay's fresh delivery id) were recorded
                    # for an event that will not exist: they name the first event instead.
                    moved = [
                        {"key_tool": key[0], "key_id": key[1], "first_id": redirected[leader]}
                        for key, leader in owner.items()
                        if leader in redirected and key in new
                    ]
                    if moved:
                        await conn.execute(self._redirect_ids, moved)
                if accepted:
                    accepted = await self._with_positions(conn, accepted, now)
                    await conn.execute(insert(queue_messages), [_row(m, now) for m in accepted])
        if accepted:
            self._enqueued.set()
            self._enqueued = asyncio.Event()
        return [
            EnqueueResult(answers[leader], leader != index or leader in redirected)
            for index, leader in enumerate(leaders)
        ]

    async def requeue(self, messages: Sequence[Message]) -> None:
        """Add messages of events already accepted (replays, dead-letter retries): no
        de-duplication, since their delivery ids are known on purpose."""
        if not messages:
            return
        now = time.time()
        with _unavailable("requeue"):
            async with self._db.begin() as conn:
                await conn.execute(insert(queue_messages), [_row(m, now) for m in messages])
        self._enqueued.set()
        self._enqueued = asyncio.Event()

    async def receive(self, count: int, block: float) -> list[Delivery]:
        """Lease up to ``count`` waiting messages, oldest first, waiting up to ``block`` seconds.

        An enqueue in this process wakes the wait at once; messages from other processes are
        found by polling every ``poll_interval``.
        """
        deadline = time.monotonic() + block
        while True:
            enqueued = self._enqueued
            now = time.time()
            waiting = and_(
                queue_messages.c.available_at <= now, queue_messages.c.locked_until.is_(None)
            )
            deliveries = await self._lease(waiting, count, now, "receive")
            remaining = deadline - time.monotonic()
            if deliveries or remaining <= 0 or count <= 0:
                return deliveries
            with suppress(TimeoutError):
                await asyncio.wait_for(enqueued.wait(), min(self._poll_interval, remaining))

    async def reclaim(self, count: int) -> list[Delivery]:
        """Lease up to ``count`` messages whose lease ran out without an acknowledgement."""
        now = time.time()
        return await self._lease(queue_messages.c.locked_until < now, count, now, "reclaim")

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete the acknowledged messages (one statement per thousand)."""
        ids = [int(d.receipt) for d in deliveries]
        with _unavailable("acknowledge"):
            async with self._db.begin(durable=False) as conn:
                for chunk in _chunks(ids):
                    await conn.execute(delete(queue_messages).where(queue_messages.c.id.in_(chunk)))

    async def renew(self, deliveries: Sequence[Delivery]) -> int:
        """Extend this consumer's lease on rows it still holds (a lease another consumer took
        over since is left alone, and counted)."""
        ids = [int(d.receipt) for d in deliveries]
        if not ids:
            return 0
        renewed = taken_over = 0
        with _unavailable("renew leases"):
            async with self._db.begin(durable=False) as conn:
                # Timed once the transaction holds its lock (SQLite's BEGIN IMMEDIATE may wait
                # for other writers): the wait must not come out of the new lease.
                until = time.time() + self._reclaim_idle
                for chunk in _chunks(ids):
                    result = await conn.execute(
                        update(queue_messages)
                        .where(
                            queue_messages.c.id.in_(chunk),
                            queue_messages.c.locked_by == self._consumer,
                        )
                        .values(locked_until=until)
                    )
                    renewed += result.rowcount
                if renewed < len(ids):  # settled meanwhile, or leased to another consumer
                    for chunk in _chunks(ids):
                        taken_over += (
                            await conn.scalar(
                                select(func.count()).where(
                                    queue_messages.c.id.in_(chunk),
                                    queue_messages.c.locked_by != self._consumer,
                                )
                            )
                            or 0
                        )
        return taken_over

    async def retry_later(self, deliveries: Sequence[tuple[Delivery, float]]) -> None:
        """Release each row with ``available_at`` pushed ``delay`` seconds ahead, one UPDATE per
        row, in one transaction; a receipt given again (an event split into its destinations'
        retries) adds a row for each further message. The delivery count starts again, since
        it counts crashes."""
        if not deliveries:
            return
        now = time.time()
        statement = (
            update(queue_messages)
            .where(queue_messages.c.id == bindparam("row_id"))
            .values(
                available_at=bindparam("due"),
                attempt=bindparam("next_attempt"),
                retry_from=bindparam("series_start"),
                destination_id=bindparam("destination"),
                ordering=bindparam("positions"),
                locked_by=None,
                locked_until=None,
                deliveries=0,
            )
        )
        rows: list[dict[str, Any]] = []
        added: list[dict[str, Any]] = []
        seen: set[str] = set()
        for d, delay in deliveries:
            if d.receipt in seen:
                added.append(_row(d.message, now + delay))
                continue
            seen.add(d.receipt)
            rows.append(
                {
                    "row_id": int(d.receipt),
                    "due": now + delay,
                    "next_attempt": d.message.attempt,
                    "series_start": d.message.retry_from,
                    "destination": d.message.destination_id,
                    "positions": encode_ordering(d.message.ordering),
                }
            )
        with _unavailable("schedule a retry"):
            async with self._db.begin(durable=False) as conn:
                await conn.execute(statement, rows)
                if added:
                    await conn.execute(insert(queue_messages), added)

    async def promote_due(self, limit: int = 500) -> int:
        """Nothing to move: ``receive`` takes rows once their ``available_at`` has passed."""
        return 0

    async def oldest_age(self) -> float:
        """From the earliest ``available_at`` among rows available now (waiting or leased)."""
        now = time.time()
        query = select(func.min(queue_messages.c.available_at)).where(
            queue_messages.c.available_at <= now
        )
        with _unavailable("read the oldest message"):
            async with self._db.connect() as conn:
                oldest = await conn.scalar(query)
        return 0.0 if oldest is None else max(0.0, now - float(oldest))

    async def scheduled_count(self) -> int:
        """Rows waiting for a retry (not leased, available only later)."""
        now = time.time()
        return await self._count(
            and_(queue_messages.c.locked_until.is_(None), queue_messages.c.available_at > now),
            "count scheduled retries",
        )

    async def depth(self) -> int:
        """Messages in the queue: waiting plus received but not yet acknowledged."""
        return await self._count(None, "count messages")

    async def pending_count(self) -> int:
        """Messages received but not yet acknowledged, including leases that ran out and wait to
        be reclaimed (what Redis calls the pending entries)."""
        return await self._count(queue_messages.c.locked_until.is_not(None), "count pending")

    async def ping(self) -> None:
        """Raise QueueUnavailableError when the database does not answer."""
        with _unavailable("ping"):
            async with self._db.connect() as conn:
                await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Nothing to release: the Database belongs to the caller."""

    async def housekeeping(self) -> None:
        """Forget delivery ids past WORKER_IDEMPOTENCY_TTL (Redis expires its keys itself)."""
        await self.purge_expired_delivery_ids()

    async def forget_delivery_ids(
        self, keys: Sequence[tuple[str, str]], replay_keys: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Delete their ``delivery_ids`` rows (a replay key's is its prefixed key), a thousand
        per statement, in one transaction."""
        keys = [*keys, *((tool, DELIVERY_REPLAY_PREFIX + key) for tool, key in replay_keys)]
        if not keys:
            return
        d = delivery_ids
        with _unavailable("forget delivery ids"):
            async with self._db.begin() as conn:
                for chunk in _chunks(sorted(set(keys))):
                    await conn.execute(
                        delete(d).where(tuple_(d.c.tool_id, d.c.delivery_id).in_(list(chunk)))
                    )

    async def purge_expired_delivery_ids(self, chunk: int = _CHUNK_ROWS) -> int:
        """Forget delivery ids past their TTL, ``chunk`` rows per transaction so no lock is held
        for long. Returns how many were deleted. For a housekeeping loop."""
        d = delivery_ids
        total = 0
        with _unavailable("purge delivery ids"):
            while True:
                now = time.time()
                expired = d.c.expires_at < now
                # SKIP LOCKED: never wait for (so never deadlock with) an enqueue that is reviving
                # one of these ids. ``expired`` again on the DELETE so a row revived since the
                # snapshot is re-checked and kept.
                victims = (
                    select(d.c.tool_id, d.c.delivery_id)
                    .where(expired)
                    .limit(chunk)
                    .with_for_update(skip_locked=True)
                )
                statement = delete(d).where(
                    tuple_(d.c.tool_id, d.c.delivery_id).in_(victims), expired
                )
                async with self._db.begin() as conn:
                    deleted = int((await conn.execute(statement)).rowcount)
                total += deleted
                if deleted < chunk:
                    return total

    def _record_ids_statement(self) -> Any:
        """INSERT the delivery ids, reviving expired ones; RETURNING lists exactly the new ones.

        Other rows are locked by the statement (PostgreSQL locks a conflicting row even when the
        DO UPDATE condition is false), so a concurrent enqueue of the same id waits for our
        commit and then sees a live record. "Expired" is written against the new row's
        ``expires_at`` (now + TTL), so the statement has no parameter outside its rows and is
        compiled once and executed for any number of rows.
        """
        statement = self._upsert_insert(delivery_ids)
        ttl: ColumnElement[float] = literal_column(repr(float(self._idempotency_ttl)))
        return statement.on_conflict_do_update(
            index_elements=[delivery_ids.c.tool_id, delivery_ids.c.delivery_id],
            set_={
                "event_id": statement.excluded.event_id,
                "expires_at": statement.excluded.expires_at,
            },
            where=delivery_ids.c.expires_at < statement.excluded.expires_at - ttl,
        ).returning(delivery_ids.c.tool_id, delivery_ids.c.delivery_id, delivery_ids.c.event_id)

    def _give_positions_statement(self) -> Any:
        """Count a key's ``assigned`` up by the new row's (the number of positions this batch
        takes), RETURNING the last one given. The row lock of the upsert makes concurrent
        enqueues of one key take turns, so no position is given twice."""
        statement = self._upsert_insert(ordering_keys)
        k = ordering_keys.c
        return statement.on_conflict_do_update(
            index_elements=[k.tool_id, k.destination_id, k.key],
            set_={
                "assigned": k.assigned + statement.excluded.assigned,
                "used_at": statement.excluded.used_at,
            },
        ).returning(k.tool_id, k.destination_id, k.key, k.assigned)

    async def _with_positions(
        self, conn: AsyncConnection, accepted: list[Message], now: float
    ) -> list[Message]:
        """``accepted`` with the seqs of their positions given, in order, in the enqueue's
        transaction (so a position is given if and only if the message is enqueued)."""
        wanted: dict[_OrderKey, int] = {}
        for message in accepted:
            for p in message.ordering:
                key = (message.tool_id, p.destination_id, p.key)
                wanted[key] = wanted.get(key, 0) + 1
        if not wanted:
            return accepted
        # Sorted, as the delivery ids are: concurrent batches lock the rows in one order.
        rows = [
            {"tool_id": t, "destination_id": d, "key": k, "assigned": n, "used_at": now}
            for (t, d, k), n in sorted(wanted.items())
        ]
        following: dict[_OrderKey, int] = {}
        for chunk in _chunks(rows):
            result = await conn.execute(self._give_positions, list(chunk))
            for tool_id, destination_id, key, assigned in result.all():
                taken = wanted[(tool_id, destination_id, key)]
                following[(tool_id, destination_id, key)] = int(assigned) - taken + 1
        given: list[Message] = []
        for message in accepted:
            if not message.ordering:
                given.append(message)
                continue
            positions = []
            for p in message.ordering:
                key = (message.tool_id, p.destination_id, p.key)
                positions.append(Position(p.destination_id, p.key, following[key]))
                following[key] += 1
            given.append(replace(message, ordering=tuple(positions)))
        return given

    async def _lease(
        self, condition: ColumnElement[bool], count: int, now: float, action: str
    ) -> list[Delivery]:
        """Stamp up to ``count`` rows matching ``condition`` as ours and return them.

        SKIP LOCKED makes concurrent consumers take disjoint rows instead of queueing behind
        each other; a row another consumer leased since our snapshot fails the re-checked
        condition and is left out. On SQLite the clause renders as nothing and BEGIN IMMEDIATE
        does the serialising.
        """
        if count <= 0:
            return []
        q = queue_messages
        chosen = (
            select(q.c.id)
            .where(condition)
            .order_by(q.c.id)
            .limit(count)
            .with_for_update(skip_locked=True)
        )
        statement = (
            update(q)
            .where(q.c.id.in_(chosen))
            .values(
                locked_by=self._consumer,
                locked_until=now + self._reclaim_idle,
                deliveries=q.c.deliveries + 1,
            )
            .returning(*_MESSAGE_COLUMNS)
        )
        with _unavailable(action):
            async with self._db.begin(durable=False) as conn:
                rows = (await conn.execute(statement)).all()
        # RETURNING follows no particular order; hand messages out oldest first.
        return [_delivery(row) for row in sorted(rows, key=lambda row: int(row.id))]

    async def _count(self, condition: ColumnElement[bool] | None, action: str) -> int:
        statement = select(func.count()).select_from(queue_messages)
        if condition is not None:
            statement = statement.where(condition)
        with _unavailable(action):
            async with self._db.connect() as conn:
                return int((await conn.execute(statement)).scalar_one())


def _row(message: Message, available_at: float) -> dict[str, Any]:
    return {
        "event_id": message.event_id,
        "tool_id": message.tool_id,
        "event_type": message.event_type,
        "delivery_id": message.delivery_id,
        "received_at": message.received_at,
        "headers": message.headers,
        "body": message.body,
        "traceparent": message.traceparent,
        "attempt": message.attempt,
        "retry_from": message.retry_from,
        "destination_id": message.destination_id,
        "ordering": encode_ordering(message.ordering),
        "available_at": available_at,
        "locked_by": None,
        "locked_until": None,
        "deliveries": 0,
    }


def _delivery(row: Row[Any]) -> Delivery:
    message = Message(
        event_id=row.event_id,
        tool_id=row.tool_id,
        event_type=row.event_type,
        delivery_id=row.delivery_id,
        received_at=float(row.received_at),
        headers=bytes(row.headers),
        body=bytes(row.body),
        traceparent=row.traceparent,
        attempt=int(row.attempt),
        retry_from=None if row.retry_from is None else float(row.retry_from),
        destination_id=row.destination_id,
        ordering=decode_ordering(row.ordering),
    )
    return Delivery(message=message, receipt=str(row.id), deliveries=int(row.deliveries))


def _keys(message: Message) -> tuple[_Key, ...]:
    """The de-duplication keys of a message: its delivery id, then its replay key if any."""
    if message.replay_key is None:
        return ((message.tool_id, message.delivery_id),)
    return (
        (message.tool_id, message.delivery_id),
        (message.tool_id, DELIVERY_REPLAY_PREFIX + message.replay_key),
    )


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), _CHUNK_ROWS):
        yield items[start : start + _CHUNK_ROWS]


def _unavailable(action: str) -> AbstractContextManager[None]:
    return database_unavailable("database queue", action)
