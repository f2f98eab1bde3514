"""The worker loop against real queues and databases: exactly-once rows, poison messages,
outages, graceful stop."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest
from sqlalchemy import Table, func, select

from tests.support import eventually, free_port
from webhook_worker.config import Settings
from webhook_worker.queue.base import Message
from webhook_worker.queue.database import DatabaseQueue
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import attempts, dead_letters, events
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.cache import ToolCache
from webhook_worker.tools.model import parse_tool
from webhook_worker.worker.consumer import Worker
from webhook_worker.worker.forwarder import Forwarder
from webhook_worker.worker.processor import Processor


def message(delivery: str | None = None) -> Message:
    return Message(
        event_id=str(uuid.uuid4()),
        tool_id="t",
        event_type="push",
        delivery_id=delivery or uuid.uuid4().hex,
        received_at=time.time(),
        headers=orjson.dumps({"x-test": "1"}),
        body=orjson.dumps({"n": uuid.uuid4().hex}),
    )


async def count(db: Database, table: Table, **where: str) -> int:
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    async with db.connect() as conn:
        return int(await conn.scalar(query) or 0)


def processor(db: Database) -> Processor:
    """A processor with no tools configured: every event is stored (store_only)."""
    return Processor(db, ToolCache(ToolStore(db), 60), Forwarder(), Settings())


def queue_on(db: Database, consumer: str = "w1", reclaim_idle: float = 0.2) -> DatabaseQueue:
    return DatabaseQueue(db, consumer, idempotency_ttl=3600, reclaim_idle=reclaim_idle)


@pytest.fixture
async def running() -> AsyncIterator[list[tuple[Worker, asyncio.Task[None]]]]:
    """Workers started by a test; stopped (gracefully) afterwards."""
    started: list[tuple[Worker, asyncio.Task[None]]] = []
    yield started
    for worker, task in started:
        worker.stop()
        await asyncio.wait_for(task, timeout=15)


def start(worker: Worker, running: list[tuple[Worker, asyncio.Task[None]]]) -> Worker:
    running.append((worker, asyncio.create_task(worker.run())))
    return worker


async def test_every_message_is_stored_once_and_acknowledged(
    db: Database, running: list[tuple[Worker, asyncio.Task[None]]]
) -> None:
    queue = queue_on(db)
    await queue.enqueue([message() for _ in range(1200)])
    start(Worker(queue, processor(db), batch_size=500, concurrency=2), running)

    async def drained() -> bool:
        return await queue.depth() == 0

    await eventually(drained, within=30, what="the queue to drain")
    assert await count(db, events) == 1200
    assert await count(db, attempts) == 1200


async def test_a_redelivered_message_never_creates_a_second_row(db: Database) -> None:
    # A worker stored the batch, then died before acknowledging: the messages come back.
    queue = queue_on(db, reclaim_idle=0.05)
    sent = [message() for _ in range(5)]
    await queue.enqueue(sent)
    first = await queue.receive(10, 0)
    assert (await processor(db).store(first)).stored == 5

    rescuer = queue_on(db, consumer="w2", reclaim_idle=0.05)
    again = await eventually(lambda: rescuer.reclaim(10), what="the unacknowledged messages")
    assert [d.deliveries for d in again] == [2] * 5
    assert (await processor(db).store(again)).stored == 0
    await rescuer.ack(again)
    assert await count(db, events) == 5
    assert await count(db, attempts) == 5
    assert await queue.depth() == 0


async def test_the_same_delivery_id_under_a_new_event_id_is_stored_once(db: Database) -> None:
    # Past the ingest TTL a provider may resend a delivery; the events table still holds one row.
    queue = DatabaseQueue(db, "w1", idempotency_ttl=0.01, reclaim_idle=1)
    store = processor(db).store
    await queue.enqueue([message("delivery-1")])
    assert (await store(await queue.receive(10, 0))).stored == 1

    async def accepted_again() -> bool:
        [result] = await queue.enqueue([message("delivery-1")])
        return not result.duplicate

    await eventually(accepted_again, what="the delivery id to expire")
    assert (await store(await queue.receive(10, 0))).stored == 0
    assert await count(db, events, delivery_id="delivery-1") == 1


async def test_poison_message_is_dead_lettered_not_retried_forever(
    db: Database, running: list[tuple[Worker, asyncio.Task[None]]]
) -> None:
    queue = queue_on(db, reclaim_idle=0.05)
    poison = message()
    await queue.enqueue([poison])
    # Three workers each take it and "crash" (never acknowledge).
    for name in ("a", "b", "c"):
        crashed = queue_on(db, consumer=name, reclaim_idle=0.05)
        taken = await crashed.receive(1, 0) or await eventually(
            functools.partial(crashed.reclaim, 1), what="the message"
        )
        assert taken[0].message.event_id == poison.event_id

    worker = Worker(queue, processor(db), max_deliveries=3, reclaim_interval=0.05)
    start(worker, running)

    async def dead() -> bool:
        return await count(db, dead_letters, event_id=poison.event_id) == 1

    await eventually(dead, within=10, what="the dead letter")
    assert await count(db, events, id=poison.event_id, status="dead") == 1

    async def acknowledged() -> bool:
        return await queue.depth() == 0

    await eventually(acknowledged, what="the acknowledgement")


async def test_nothing_is_acknowledged_while_the_database_is_unreachable(
    sqlite_db: Database, running: list[tuple[Worker, asyncio.Task[None]]]
) -> None:
    # The queue lives in SQLite; the events database is a PostgreSQL nobody listens on.
    queue = queue_on(sqlite_db)
    await queue.enqueue([message() for _ in range(3)])
    dead = Database.from_url(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none")
    try:
        worker = start(Worker(queue, processor(dead)), running)

        async def leased() -> bool:
            return await queue.pending_count() == 3

        await eventually(leased, what="the worker to take the batch")
        worker.stop()
        await asyncio.wait_for(running.pop()[1], timeout=15)
        assert await queue.depth() == 3
        assert worker.processed == 0
    finally:
        await dead.close()


async def test_stop_finishes_in_flight_work_and_acknowledges(
    db: Database, running: list[tuple[Worker, asyncio.Task[None]]]
) -> None:
    queue = queue_on(db)
    await queue.enqueue([message() for _ in range(300)])
    worker = start(Worker(queue, processor(db), batch_size=100), running)

    async def started() -> bool:
        return worker.processed > 0 or await queue.pending_count() > 0

    await eventually(started, what="work to start")
    worker.stop()
    await asyncio.wait_for(running.pop()[1], timeout=15)
    stored = await count(db, events)
    # Whatever was stored was acknowledged, and whatever was not stored is still queued.
    assert stored + await queue.depth() == 300
    assert await queue.pending_count() == 0


async def test_a_message_that_cannot_be_stored_is_dead_lettered_at_its_first_delivery(
    db: Database, running: list[tuple[Worker, asyncio.Task[None]]]
) -> None:
    # The transform's result nests 1,000 levels: no JSON encoder on the way to the payload
    # column takes it, and no retry would change that.
    await ToolStore(db).create(
        parse_tool({"id": "deep", "mode": "transform_and_store", "transform": "@"})
    )
    unstorable = replace(message(), tool_id="deep", body=b"[" * 1000 + b"]" * 1000)
    queue = queue_on(db, reclaim_idle=0.05)
    await queue.enqueue([unstorable])
    # Were it redelivered, it would come back at once and be poison by its third delivery.
    start(Worker(queue, processor(db), max_deliveries=2, reclaim_interval=0.05), running)

    async def dead_letter() -> str | None:
        async with db.connect() as conn:
            found = await conn.scalar(
                select(dead_letters.c.error_class).where(
                    dead_letters.c.event_id == unstorable.event_id
                )
            )
        return None if found is None else str(found)

    assert await eventually(dead_letter, within=10, what="the dead letter") == "storage_error"
    assert await count(db, events, id=unstorable.event_id, status="dead") == 1

    async def acknowledged() -> bool:
        return await queue.depth() == 0

    await eventually(acknowledged, what="the acknowledgement")
