"""What only the Redis Streams queue does, against a real Redis (and, for restarts, a private
redis-server): its keys and Lua scripts, XAUTOCLAIM paging, malformed entries, restarts. The
Protocol's promises are in test_contract.py."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis

from tests.queue.support import NOT_YET, SOON, TTL, message
from tests.support import RedisServer, eventually, free_port
from webhook_worker.config import Settings
from webhook_worker.constants import (
    FIELD_BODY,
    FIELD_MALFORMED_ERROR,
    FIELD_MALFORMED_SOURCE_ID,
    FIELD_ORDERING,
    REDIS_GROUP,
)
from webhook_worker.control.base import ORDERING_IDLE_TTL
from webhook_worker.errors import QueueUnavailableError
from webhook_worker.queue.base import EnqueueResult, Position
from webhook_worker.queue.redis_connection import connect
from webhook_worker.queue.redis_streams import RedisStreamsQueue


def redis_addr(client: aioredis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}"


async def stream_entries(
    client: aioredis.Redis, key: str
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of the stream ``key``, as ``(id, fields)``."""
    entries = await client.xrange(key)
    # redis-py types XRANGE's reply loosely (maybe None, str or bytes, fields maybe None); with
    # decode_responses off it is always a list of (bytes id, bytes fields), [] for no stream.
    return cast(list[tuple[bytes, dict[bytes, bytes]]], entries)


@pytest.fixture
async def make_queue(
    redis_client: aioredis.Redis, redis_prefix: str
) -> Callable[..., Awaitable[RedisStreamsQueue]]:
    async def make(
        consumer: str = "a", reclaim_idle: float = NOT_YET, ttl: float = TTL
    ) -> RedisStreamsQueue:
        queue = RedisStreamsQueue(redis_client, redis_prefix, consumer, ttl, reclaim_idle)
        await queue.setup()
        return queue

    return make


@pytest.fixture
async def queue(make_queue: Callable[..., Awaitable[RedisStreamsQueue]]) -> RedisStreamsQueue:
    return await make_queue()


# Layout and set-up.


async def test_the_body_is_stored_as_raw_bytes(
    queue: RedisStreamsQueue, redis_client: aioredis.Redis
) -> None:
    binary = bytes(range(256)) + b"\xff\xfe\x00 not utf-8 \xc3\x28"
    await queue.enqueue([message(body=binary)])
    # No base64: another reader of the stream sees exactly what was posted.
    entries = await stream_entries(redis_client, queue.stream_key)
    assert entries[0][1][FIELD_BODY] == binary


async def test_setup_is_idempotent(queue: RedisStreamsQueue) -> None:
    await queue.setup()
    await queue.setup()


async def test_open_builds_a_working_queue_from_settings(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    settings = Settings(
        redis_addr=redis_addr(redis_client),
        redis_key_prefix=redis_prefix,
        worker_consumer_name="from-settings",
    )
    queue = await RedisStreamsQueue.open(settings)
    try:
        sent = message()
        await queue.enqueue([sent])
        assert [d.message for d in await queue.receive(1, 1.0)] == [sent]
    finally:
        await queue.close()


async def test_close_leaves_a_borrowed_client_open(
    queue: RedisStreamsQueue, redis_client: aioredis.Redis
) -> None:
    await queue.close()
    assert await redis_client.ping()


def test_a_decoding_client_is_refused() -> None:
    client = aioredis.Redis(decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisStreamsQueue(client, "p", "a", TTL, NOT_YET)


# De-duplication keys.


async def test_dedupe_key_expires_after_the_ttl_from_first_sight(
    make_queue: Callable[..., Awaitable[RedisStreamsQueue]], redis_client: aioredis.Redis
) -> None:
    queue = await make_queue(ttl=120.5)
    sent = message()
    await queue.enqueue([sent])
    key = queue.keys.dedupe(sent.tool_id, sent.delivery_id)
    assert await redis_client.get(key) == sent.event_id.encode()
    assert 115 <= await redis_client.ttl(key) <= 121

    # A duplicate must not extend the window: it is measured from the first delivery.
    await redis_client.expire(key, 30)
    await queue.enqueue([message(delivery_id=sent.delivery_id)])
    assert await redis_client.ttl(key) <= 30


async def test_failed_append_forgets_the_delivery_id(
    queue: RedisStreamsQueue, redis_client: aioredis.Redis
) -> None:
    await redis_client.delete(queue.stream_key)
    await redis_client.set(queue.stream_key, b"not a stream")
    sent = message()
    with pytest.raises(QueueUnavailableError):
        await queue.enqueue([sent])
    # Otherwise the sender's retry would be answered "duplicate" for an event never enqueued.
    assert await redis_client.exists(queue.keys.dedupe(sent.tool_id, sent.delivery_id)) == 0


# Ordering positions.


async def test_an_ordering_key_hash_holds_the_last_position_and_idles_out(
    queue: RedisStreamsQueue, redis_client: aioredis.Redis
) -> None:
    positions = (Position("billing", "a:b", 0),)  # a key may hold ':' (it comes last)
    await queue.enqueue([message(ordering=positions), message(ordering=positions)])
    key = queue.keys.order("github", "billing", "a:b")
    assert await redis_client.hgetall(key) == {b"assigned": b"2"}
    ttl_ms = await redis_client.pttl(key)
    assert ORDERING_IDLE_TTL * 1000 - 60_000 < ttl_ms <= ORDERING_IDLE_TTL * 1000
    # The entry carries the text every other reader writes too.
    entries = await stream_entries(redis_client, queue.stream_key)
    assert [fields[FIELD_ORDERING] for _, fields in entries] == [
        b'[["billing","a:b",1]]',
        b'[["billing","a:b",2]]',
    ]


async def test_failed_append_gives_its_positions_back(
    queue: RedisStreamsQueue, redis_client: aioredis.Redis
) -> None:
    positions = (Position("billing", "a", 0), Position("crm", "b", 0))
    await queue.enqueue([message(ordering=positions)])
    await redis_client.delete(queue.stream_key)
    await redis_client.set(queue.stream_key, b"not a stream")
    with pytest.raises(QueueUnavailableError):
        await queue.enqueue([message(ordering=positions)])
    # Otherwise the key's next event would wait for a position never sent.
    for dest, key in (("billing", "a"), ("crm", "b")):
        assert await redis_client.hget(queue.keys.order("github", dest, key), "assigned") == b"1"


# Reclaiming what a dead consumer left behind.


async def test_reclaim_follows_the_cursor_across_pages(
    make_queue: Callable[..., Awaitable[RedisStreamsQueue]], redis_client: aioredis.Redis
) -> None:
    owner = await make_queue("owner")
    sent = [message() for _ in range(30)]
    await owner.enqueue(sent)
    taken = await owner.receive(30, 1.0)
    # Only the last five look abandoned. XAUTOCLAIM COUNT 2 inspects at most 20 pending entries
    # per call, so reaching them takes more than one call.
    await redis_client.xclaim(
        owner.stream_key,
        REDIS_GROUP,
        "owner",
        0,
        [d.receipt for d in taken[25:]],
        idle=120_000,
        justid=True,
    )
    rescuer = await make_queue("rescuer", reclaim_idle=NOT_YET)

    first = await rescuer.reclaim(2)
    assert [d.message for d in first] == sent[25:27]
    rest = await rescuer.reclaim(10)
    assert [d.message for d in rest] == sent[27:]
    assert {d.deliveries for d in first + rest} == {2}


async def test_reclaim_acknowledges_entries_deleted_from_the_stream(
    make_queue: Callable[..., Awaitable[RedisStreamsQueue]], redis_client: aioredis.Redis
) -> None:
    dead = await make_queue("dead")
    kept, lost = message(), message()
    await dead.enqueue([kept, lost])
    taken = await dead.receive(10, 1.0)
    await redis_client.xdel(dead.stream_key, taken[1].receipt)

    rescuer = await make_queue("rescuer", reclaim_idle=SOON)
    reclaimed = await eventually(lambda: rescuer.reclaim(10), what="a reclaim")
    assert [d.message for d in reclaimed] == [kept]
    assert await rescuer.pending_count() == 1


# Entries that cannot be decoded.


async def test_malformed_entries_are_set_aside(
    queue: RedisStreamsQueue, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    missing = await redis_client.xadd(queue.stream_key, {b"id": b"x", b"tool": b"t"})
    bad_text = await redis_client.xadd(
        queue.stream_key,
        {
            b"id": b"y",
            b"tool": b"\xff\xfe",
            b"delivery": b"d",
            b"ts": b"1",
            b"headers": b"{}",
            b"body": b"",
        },
    )
    good = message()
    await queue.enqueue([good])

    with caplog.at_level(logging.ERROR, logger="webhook_worker.queue.redis_streams"):
        deliveries = await queue.receive(10, 1.0)
    assert [d.message for d in deliveries] == [good]
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 2

    aside = await stream_entries(redis_client, queue.keys.malformed)
    assert [fields[FIELD_MALFORMED_SOURCE_ID] for _, fields in aside] == [missing, bad_text]
    assert all(fields[FIELD_MALFORMED_ERROR] for _, fields in aside)
    assert aside[0][1][b"tool"] == b"t"

    # The bad entries are gone for good, not pending and not waiting to come back.
    assert await queue.pending_count() == 1
    await queue.ack(deliveries)
    assert await redis_client.xlen(queue.stream_key) == 0
    assert await queue.receive(10, 0) == []


async def test_malformed_entry_found_by_reclaim_is_set_aside(
    make_queue: Callable[..., Awaitable[RedisStreamsQueue]], redis_client: aioredis.Redis
) -> None:
    queue = await make_queue("rescuer", reclaim_idle=SOON)
    await redis_client.xadd(queue.stream_key, {b"id": b"x"})
    await redis_client.xreadgroup(REDIS_GROUP, "dead", {queue.stream_key: ">"})

    async def set_aside() -> bool:
        assert await queue.reclaim(10) == []
        return bool(await redis_client.xlen(queue.keys.malformed))

    await eventually(set_aside, what="the entry to be set aside")
    assert await redis_client.xlen(queue.stream_key) == 0
    assert await queue.pending_count() == 0


# Redis that is down.


async def test_setup_on_an_unreachable_redis_raises_queue_unavailable() -> None:
    # The Protocol's methods are covered by the contract suite; setup is this queue's own.
    client = connect(Settings(redis_addr=f"127.0.0.1:{free_port()}"))
    queue = RedisStreamsQueue(client, "p", "a", TTL, NOT_YET, owns_client=True)
    try:
        with pytest.raises(QueueUnavailableError, match="REDIS_ADDR"):
            await queue.setup()
    finally:
        await queue.close()


@pytest.fixture(params=[False, True], ids=["volatile", "aof"])
def restartable_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server without persistence, and one with an append-only file."""
    server = RedisServer(tmp_path, persistent=request.param)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def private_queue(restartable_redis: RedisServer) -> AsyncIterator[RedisStreamsQueue]:
    redis_server = restartable_redis
    settings = Settings(
        redis_addr=f"127.0.0.1:{redis_server.port}",
        redis_username="default",
        redis_password=redis_server.password,
        redis_db=3,
        redis_key_prefix="private",
        worker_consumer_name="a",
    )
    queue = await RedisStreamsQueue.open(settings)
    yield queue
    await queue.close()


async def test_redis_restart_makes_the_queue_unavailable_then_usable_again(
    restartable_redis: RedisServer, private_queue: RedisStreamsQueue
) -> None:
    redis_server = restartable_redis
    before = message()
    assert await private_queue.enqueue([before]) == [EnqueueResult(before.event_id, False)]

    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(QueueUnavailableError):
        await private_queue.enqueue([message()])
    assert time.monotonic() - started < 3.0
    with pytest.raises(QueueUnavailableError):
        await private_queue.receive(1, 0.1)

    redis_server.start()
    after = message()
    assert await private_queue.enqueue([after]) == [EnqueueResult(after.event_id, False)]
    deliveries = await private_queue.receive(10, 1.0)
    if redis_server.persistent:
        # The append-only file kept the stream and the group: nothing accepted is lost.
        assert [d.message for d in deliveries] == [before, after]
    else:
        # Nothing survived, not even the group; receive recreates it.
        assert [d.message for d in deliveries] == [after]
    await private_queue.ack(deliveries)
    assert await private_queue.depth() == 0
