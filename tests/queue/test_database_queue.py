"""What only the database queue does, on SQLite and on PostgreSQL (the ``db`` fixture runs each
test on both): purging delivery ids, the in-process wake-up, the lock order of concurrent
batches, the lease columns. The Protocol's promises are in test_contract.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from tests.queue.support import NOT_YET, SOON, TTL, message
from tests.support import eventually, free_port
from webhook_worker.errors import QueueUnavailableError
from webhook_worker.queue.base import Message, Position
from webhook_worker.queue.database import DatabaseQueue
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import ordering_keys, queue_messages


def queue(db: Database, consumer: str = "c1", **options: Any) -> DatabaseQueue:
    settings: dict[str, Any] = {"idempotency_ttl": TTL, "reclaim_idle": NOT_YET}
    settings.update(options)
    return DatabaseQueue(db, consumer, **settings)


@pytest.fixture
async def other_db(db: Database) -> AsyncIterator[Database]:
    """A second engine on the same database: what another process would have."""
    other = Database.from_url(db.engine.url.render_as_string(hide_password=False))
    yield other
    await other.close()


async def test_purge_forgets_only_expired_delivery_ids(db: Database) -> None:
    await queue(db, idempotency_ttl=0.0).enqueue([message(f"old-{i}") for i in range(25)])
    live = message("live")
    q = queue(db)
    await q.enqueue([live])

    assert await q.purge_expired_delivery_ids(chunk=10) == 25

    assert await q.purge_expired_delivery_ids(chunk=10) == 0
    assert await q.enqueue([message("live")]) == [(live.event_id, True)]


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


async def test_concurrent_batches_of_many_ordering_keys_take_turns(
    db: Database, other_db: Database
) -> None:
    api_a, api_b = queue(db, "api-a"), queue(other_db, "api-b")
    await asyncio.gather(api_a.ping(), api_b.ping())
    keys = [f"k{i}" for i in range(300)]

    def batch(order: list[str]) -> list[Message]:
        return [message(ordering=(Position("billing", key, 0),)) for key in order]

    for _ in range(5):
        # Keys in opposite orders: without a fixed lock order PostgreSQL would deadlock.
        await asyncio.gather(
            api_a.enqueue(batch(keys + keys)), api_b.enqueue(batch(keys[::-1] + keys[::-1]))
        )

    given: dict[str, list[int]] = {}
    for delivery in await api_a.receive(10000, 0):
        [position] = delivery.message.ordering
        given.setdefault(position.key, []).append(position.seq)
    assert {key: sorted(found) for key, found in given.items()} == {
        key: list(range(1, 21)) for key in keys
    }
    before = time.time()
    await api_a.enqueue(batch(["k0"]))
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                select(ordering_keys.c.key, ordering_keys.c.assigned, ordering_keys.c.used_at)
            )
        ).all()
    assert {row.key: row.assigned for row in rows} == {key: 20 for key in keys} | {"k0": 21}
    assert max(row.used_at for row in rows) >= before


async def test_a_late_renewal_leaves_the_new_holders_lease_alone(
    db: Database, other_db: Database
) -> None:
    holder = queue(db, "holder", reclaim_idle=SOON)
    await holder.enqueue([message(), message()])
    held = await holder.receive(10, 0)
    rescuer = queue(other_db, "rescuer")
    reclaimed = await eventually(lambda: rescuer.reclaim(10), what="the holder's leases to end")
    assert sorted(d.receipt for d in reclaimed) == sorted(d.receipt for d in held)

    leases = select(queue_messages.c.locked_by, queue_messages.c.locked_until)
    async with db.connect() as conn:
        before = sorted((await conn.execute(leases)).all())
    await holder.renew(held)
    async with db.connect() as conn:
        after = sorted((await conn.execute(leases)).all())
    assert after == before
    assert {owner for owner, _ in after} == {"rescuer"}


async def test_housekeeping_on_an_unreachable_database_raises_queue_unavailable() -> None:
    # The Protocol's methods are covered by the contract suite; purging is this queue's own.
    nowhere = Database.from_url(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    q = queue(nowhere)
    try:
        for call in (q.housekeeping, q.purge_expired_delivery_ids):
            with pytest.raises(QueueUnavailableError, match="DATABASE_URL") as caught:
                await call()
            assert caught.value.__cause__ is not None
    finally:
        await nowhere.close()
