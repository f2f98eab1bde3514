"""The database queue, on SQLite and on PostgreSQL (the ``db`` fixture runs each test on both)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select

from webhook_worker.errors import QueueUnavailableError
from webhook_worker.queue.base import Delivery, Message
from webhook_worker.queue.database import DatabaseQueue
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import queue_messages

TTL = 3600.0
LEASE = 60.0


def message(delivery_id: str | None = None, tool_id: str = "github", **fields: Any) -> Message:
    values: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "tool_id": tool_id,
        "event_type": "push",
        "delivery_id": delivery_id or uuid.uuid4().hex,
        "received_at": 1_700_000_000.123456,
        "headers": b'{"content-type":"application/json"}',
        "body": b'{"ok":true}',
        "traceparent": None,
    }
    values.update(fields)
    return Message(**values)


def queue(db: Database, consumer: str = "c1", **options: Any) -> DatabaseQueue:
    settings: dict[str, Any] = {"idempotency_ttl": TTL, "reclaim_idle": LEASE}
    settings.update(options)
    return DatabaseQueue(db, consumer, **settings)


async def until(
    check: Callable[[], Awaitable[list[Delivery]]], within: float = 5.0
) -> list[Delivery]:
    """Call ``check`` until it returns something, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.01)
    pytest.fail(f"nothing within {within}s")


@pytest.fixture
async def other_db(db: Database) -> AsyncIterator[Database]:
    """A second engine on the same database: what another process would have."""
    other = Database.from_url(db.engine.url.render_as_string(hide_password=False))
    yield other
    await other.close()


async def test_round_trip_preserves_every_field(db: Database) -> None:
    q = queue(db)
    sent = [
        message(body=bytes(range(256)) + b"\xff\xfe\x80 not utf-8", received_at=1712345678.987654),
        message(
            event_type=None,
            headers=b'{"x-emoji":"\xc3\xa9\xf0\x9f\x9a\x80"}',
            body=b"",
            traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            delivery_id="d" * 255,
            tool_id="t" * 128,
        ),
    ]
    results = await q.enqueue(sent)
    assert [(r.event_id, r.duplicate) for r in results] == [(m.event_id, False) for m in sent]

    got = await q.receive(10, block=0)

    assert [d.message for d in got] == sent
    assert all(type(d.message.body) is bytes and type(d.message.headers) is bytes for d in got)
    assert [d.deliveries for d in got] == [1, 1]
    assert len({d.receipt for d in got}) == 2
    assert await q.depth() == 2
    assert await q.pending_count() == 2


async def test_receive_takes_oldest_first_and_at_most_count(db: Database) -> None:
    q = queue(db)
    sent = [message() for _ in range(5)]
    await q.enqueue(sent)

    first = await q.receive(3, block=0)
    second = await q.receive(3, block=0)

    assert [d.message for d in first] == sent[:3]
    assert [d.message for d in second] == sent[3:]
    assert await q.receive(3, block=0) == []


async def test_duplicates_in_one_batch_and_across_batches(db: Database) -> None:
    q = queue(db)
    original, other = message("d-1"), message("d-2")
    same_id_other_tool = message("d-1", tool_id="gitlab")

    results = await q.enqueue([original, message("d-1"), other, same_id_other_tool])
    assert results == [
        (original.event_id, False),
        (original.event_id, True),
        (other.event_id, False),
        (same_id_other_tool.event_id, False),
    ]

    again = await q.enqueue([message("d-2"), message("d-3"), message("d-1")])
    assert [r.duplicate for r in again] == [True, False, True]
    assert again[0].event_id == other.event_id
    assert again[2].event_id == original.event_id

    assert await q.depth() == 4
    event_ids = {d.message.event_id for d in await q.receive(10, block=0)}
    assert event_ids == {original.event_id, other.event_id, same_id_other_tool.event_id} | {
        again[1].event_id
    }


async def test_expired_delivery_id_is_accepted_again(db: Database) -> None:
    # A zero TTL: the record is expired the moment it is written.
    first = message("d-1")
    assert await queue(db, idempotency_ttl=0.0).enqueue([first]) == [(first.event_id, False)]
    q = queue(db)

    retry = message("d-1")
    assert await q.enqueue([retry]) == [(retry.event_id, False)]

    # Remembered again, now under the new event id.
    assert await q.enqueue([message("d-1")]) == [(retry.event_id, True)]
    assert [d.message for d in await q.receive(10, block=0)] == [first, retry]


async def test_purge_forgets_only_expired_delivery_ids(db: Database) -> None:
    await queue(db, idempotency_ttl=0.0).enqueue([message(f"old-{i}") for i in range(25)])
    live = message("live")
    q = queue(db)
    await q.enqueue([live])

    assert await q.purge_expired_delivery_ids(chunk=10) == 25

    assert await q.purge_expired_delivery_ids(chunk=10) == 0
    assert await q.enqueue([message("live")]) == [(live.event_id, True)]


async def test_ack_deletes(db: Database) -> None:
    q = queue(db, reclaim_idle=0.0)
    await q.enqueue([message() for _ in range(3)])
    got = await q.receive(10, block=0)

    await q.ack(got[:2])

    assert await q.depth() == 1
    await q.ack(got[2:])
    assert await q.depth() == 0
    assert await q.pending_count() == 0
    assert await q.reclaim(10) == []
    assert await q.receive(10, block=0) == []


async def test_receive_waits_for_block_when_empty(db: Database) -> None:
    q = queue(db)
    started = time.monotonic()
    assert await q.receive(10, block=0.3) == []
    assert 0.3 <= time.monotonic() - started < 3


async def test_in_process_enqueue_wakes_a_waiting_receive(db: Database) -> None:
    # A poll interval longer than the test allows, so only the wake-up can deliver in time.
    q = queue(db, poll_interval=30.0)
    waiting = asyncio.create_task(q.receive(10, block=30))
    await asyncio.sleep(0)  # let the receive start waiting
    sent = message()
    started = time.monotonic()
    await q.enqueue([sent])

    got = await asyncio.wait_for(waiting, timeout=5)

    assert [d.message for d in got] == [sent]
    assert time.monotonic() - started < 5


async def test_receive_polls_for_messages_from_another_process(
    db: Database, other_db: Database
) -> None:
    consumer = queue(db, poll_interval=0.02)
    waiting = asyncio.create_task(consumer.receive(10, block=30))
    sent = message()
    await queue(other_db, "api").enqueue([sent])

    got = await asyncio.wait_for(waiting, timeout=5)

    assert [d.message for d in got] == [sent]


async def test_concurrent_consumers_never_share_a_message(db: Database, other_db: Database) -> None:
    sent = [message() for _ in range(500)]
    await queue(db, "api").enqueue(sent)
    consumers = [queue(db, "a"), queue(other_db, "b")]
    taken: list[Delivery] = []

    async def drain(q: DatabaseQueue) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = await q.receive(7, block=0)
            if not got:
                return
            taken.extend(got)

    # Three tasks per consumer, so each engine runs several leases at once as well.
    await asyncio.gather(*(drain(q) for q in consumers for _ in range(3)))

    ids = [d.message.event_id for d in taken]
    assert len(ids) == len(set(ids)), "a message was handed to two consumers"
    assert set(ids) == {m.event_id for m in sent}
    assert {d.deliveries for d in taken} == {1}


async def test_unacknowledged_messages_are_reclaimed_after_the_lease(
    db: Database, other_db: Database
) -> None:
    sent = [message() for _ in range(3)]
    dying = queue(db, "dying", reclaim_idle=0.1)
    await dying.enqueue(sent)
    leased = await dying.receive(10, block=0)
    assert len(leased) == 3
    rescuer = queue(other_db, "rescuer", reclaim_idle=0.1)
    assert await rescuer.receive(10, block=0) == []

    reclaimed = await until(lambda: rescuer.reclaim(10))

    assert [d.message for d in reclaimed] == sent
    assert [d.deliveries for d in reclaimed] == [2, 2, 2]
    assert [d.receipt for d in reclaimed] == [d.receipt for d in leased]
    await rescuer.ack(reclaimed)
    assert await rescuer.depth() == 0


async def test_reclaim_leaves_live_leases_alone(db: Database, other_db: Database) -> None:
    busy = queue(db, "busy", reclaim_idle=LEASE)
    await busy.enqueue([message()])
    assert len(await busy.receive(10, block=0)) == 1

    assert await queue(other_db, "other").reclaim(10) == []
    assert await busy.pending_count() == 1


async def test_concurrent_enqueue_of_one_delivery_id_accepts_it_once(
    db: Database, other_db: Database
) -> None:
    api_a, api_b = queue(db, "api-a"), queue(other_db, "api-b")
    for round_ in range(30):
        a, b = message(f"d-{round_}"), message(f"d-{round_}")
        result_a, result_b = await asyncio.gather(api_a.enqueue([a]), api_b.enqueue([b]))
        assert sorted([result_a[0].duplicate, result_b[0].duplicate]) == [False, True]
        assert result_a[0].event_id == result_b[0].event_id in (a.event_id, b.event_id)
    assert await api_a.depth() == 30


async def test_concurrent_overlapping_batches_do_not_deadlock(
    db: Database, other_db: Database
) -> None:
    api_a, api_b = queue(db, "api-a"), queue(other_db, "api-b")
    await asyncio.gather(api_a.ping(), api_b.ping())  # both connected, so the batches overlap
    for round_ in range(10):
        keys = [f"r{round_}-k{i}" for i in range(300)]

        # Opposite orders: without a fixed lock order PostgreSQL would see a deadlock here.
        results_a, results_b = await asyncio.gather(
            api_a.enqueue([message(k) for k in keys]),
            api_b.enqueue([message(k) for k in reversed(keys)]),
        )

        assert sum(not r.duplicate for r in results_a + results_b) == len(keys)
        by_key_a = dict(zip(keys, results_a, strict=True))
        by_key_b = dict(zip(reversed(keys), results_b, strict=True))
        assert all(by_key_a[k].event_id == by_key_b[k].event_id for k in keys)
    assert await api_a.depth() == 10 * 300


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_unreachable_postgres_raises_queue_unavailable() -> None:
    nowhere = Database.from_url(f"postgresql+asyncpg://postgres@127.0.0.1:{_unused_port()}/x")
    q = queue(nowhere)
    delivery = Delivery(message(), receipt="1", deliveries=1)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: q.enqueue([message()]),
        lambda: q.receive(1, block=0),
        lambda: q.reclaim(1),
        lambda: q.ack([delivery]),
        q.depth,
        q.pending_count,
        q.ping,
        q.purge_expired_delivery_ids,
    ]
    try:
        for call in calls:
            with pytest.raises(QueueUnavailableError, match="DATABASE_URL") as caught:
                await call()
            assert caught.value.__cause__ is not None
    finally:
        await nowhere.close()


async def test_renewed_leases_are_not_reclaimed_and_renewal_never_steals(db: Database) -> None:
    holder = queue(db, "holder", reclaim_idle=0.3)
    await holder.enqueue([message(), message()])
    held = await holder.receive(10, 0.0)
    assert len(held) == 2
    rescuer = queue(db, "rescuer", reclaim_idle=0.3)

    # Renewed every 0.1 s for a second (over three leases): nothing is taken over.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        await holder.renew(held)
        assert await rescuer.reclaim(10) == []
        await asyncio.sleep(0.1)

    # The holder goes quiet: the leases run out and the rescuer takes the rows; a late renewal
    # by the holder does not extend the rescuer's leases into its own.
    reclaimed = await until(lambda: rescuer.reclaim(10))
    assert sorted(d.receipt for d in reclaimed) == sorted(d.receipt for d in held)
    leases = select(queue_messages.c.locked_by, queue_messages.c.locked_until)
    async with db.connect() as conn:
        before = sorted((await conn.execute(leases)).all())
    await holder.renew(held)
    async with db.connect() as conn:
        after = sorted((await conn.execute(leases)).all())
    assert after == before
    assert {owner for owner, _ in after} == {"rescuer"}
    await rescuer.ack(reclaimed)
