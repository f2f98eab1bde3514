"""Delayed redelivery, the same contract on every queue: Redis Streams, and the database queue
on SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

import orjson
import pytest
import redis.asyncio as aioredis

from tests.support import eventually
from webhook_worker.queue.base import Delivery, Message, Queue
from webhook_worker.queue.database import DatabaseQueue
from webhook_worker.queue.redis_streams import RedisStreamsQueue
from webhook_worker.storage.database import Database


def message() -> Message:
    return Message(
        event_id=str(uuid.uuid4()),
        tool_id="t",
        event_type="push",
        delivery_id=uuid.uuid4().hex,
        received_at=time.time(),
        headers=orjson.dumps({"a": "b"}),
        body=b"\x00\xffbody",
        traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
    )


MakeQueue = Callable[[str], Awaitable[Queue]]


@pytest.fixture(params=["redis", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> object:
    """The Redis client, or the migrated SQLite or PostgreSQL database."""
    names = {"redis": "redis_client", "sqlite": "sqlite_db", "postgresql": "postgres_db"}
    return request.getfixturevalue(names[request.param])


@pytest.fixture
def make_queue(backend: object, redis_prefix: str) -> MakeQueue:
    """``await make_queue(consumer)``: a queue on the backend; several share its contents."""

    async def make(consumer: str) -> Queue:
        if isinstance(backend, Database):
            return DatabaseQueue(backend, consumer, 3600, 30)
        assert isinstance(backend, aioredis.Redis)
        redis_queue = RedisStreamsQueue(backend, redis_prefix, consumer, 3600, 30)
        await redis_queue.setup()
        return redis_queue

    return make


@pytest.fixture
async def queue(make_queue: MakeQueue) -> Queue:
    return await make_queue("c1")


async def take(queue: Queue, count: int = 10) -> list[Delivery]:
    await queue.promote_due()
    return await queue.receive(count, 0)


async def test_a_retry_comes_back_after_its_delay_not_before(queue: Queue) -> None:
    sent = message()
    await queue.enqueue([sent])
    [delivery] = await queue.receive(1, 0)
    assert (delivery.message.attempt, delivery.message.retry_from) == (0, None)
    # The caller counts the attempt up; the queue carries it to the next delivery.
    retried = replace(sent, attempt=1, retry_from=1700000000.5)
    scheduled = time.monotonic()
    await queue.retry_later([(replace(delivery, message=retried), 0.4)])
    assert await queue.scheduled_count() == 1
    assert await take(queue) == []  # not due yet

    again = await eventually(lambda: take(queue), within=5, what="the retry")
    assert time.monotonic() - scheduled >= 0.35
    assert [d.message for d in again] == [retried]
    assert again[0].deliveries == 1  # a retry is not a crash: the poison count starts over
    assert await queue.scheduled_count() == 0
    await queue.ack(again)
    assert await queue.depth() == 0


async def test_scheduled_retries_survive_a_new_queue_object(
    queue: Queue, make_queue: MakeQueue
) -> None:
    # A worker restart: the schedule lives in Redis or the database, not in the process.
    sent = message()
    await queue.enqueue([sent])
    await queue.retry_later([(d, 0.05) for d in await queue.receive(1, 0)])
    if isinstance(queue, RedisStreamsQueue):
        restarted: Queue = RedisStreamsQueue(
            queue._client, queue.stream_key.rsplit(":", 1)[0], "c2", 3600, 30
        )
    else:
        assert isinstance(queue, DatabaseQueue)
        restarted = DatabaseQueue(queue._db, "c2", 3600, 30)
    again = await eventually(lambda: take(restarted), within=5, what="the retry after a restart")
    assert [d.message for d in again] == [sent]


async def test_each_retry_happens_once_with_its_own_delay(queue: Queue) -> None:
    sent = [message() for _ in range(3)]
    await queue.enqueue(sent)
    deliveries = await queue.receive(3, 0)
    await queue.retry_later([(deliveries[0], 0.0), (deliveries[1], 0.3), (deliveries[2], 30)])
    first = await eventually(lambda: take(queue), within=5, what="the first retry")
    assert [d.message for d in first] == [sent[0]]
    second = await eventually(lambda: take(queue), within=5, what="the second retry")
    assert [d.message for d in second] == [sent[1]]
    assert await queue.scheduled_count() == 1
    assert await queue.depth() >= 2  # waiting/pending plus the scheduled one is not lost
