"""Ordering positions on every queue (Redis Streams, the database queue on SQLite and on
PostgreSQL): enqueue gives each key's positions 1, 2, 3, ... in the order it accepts the
messages, atomically with the write, and every later step carries them unchanged."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from tests.queue.conftest import Backend, ContractQueue
from tests.queue.support import SOON, message
from tests.support import eventually
from webhook_worker.queue.base import Delivery, Message, Position


@pytest.fixture
async def queue(backend: Backend) -> ContractQueue:
    return await backend.queue()


def ordered(*keys: tuple[str, str], **fields: Any) -> Message:
    """A message as ingest builds it, with a position (seq 0) per (destination, key)."""
    return message(ordering=tuple(Position(dest, key, 0) for dest, key in keys), **fields)


async def received(queue: ContractQueue, count: int) -> list[Delivery]:
    """Exactly ``count`` deliveries, moving due retries in first, as a worker does."""
    got: list[Delivery] = []

    async def enough() -> bool:
        await queue.promote_due()
        got.extend(await queue.receive(count - len(got), 0))
        return len(got) >= count

    await eventually(enough, what=f"{count} messages")
    assert len(got) == count
    return got


def seqs(deliveries: list[Delivery]) -> dict[str, tuple[Position, ...]]:
    return {d.message.event_id: d.message.ordering for d in deliveries}


async def test_positions_count_per_key_in_enqueue_order_across_batches(
    queue: ContractQueue,
) -> None:
    batches = [
        [ordered(("billing", "a"), ("crm", "eu")), ordered(("billing", "b")), message()],
        [ordered(("billing", "a"))],
        [ordered(("billing", "b"), ("crm", "eu")), ordered(("billing", "a"))],
        [ordered(("billing", "a"), tool_id="other-tool"), ordered(("crm", "a"))],
    ]
    for batch in batches:
        results = await queue.enqueue(batch)
        assert not any(result.duplicate for result in results)

    got = await received(queue, sum(len(batch) for batch in batches))

    m = [item for batch in batches for item in batch]
    assert seqs(got) == {
        m[0].event_id: (Position("billing", "a", 1), Position("crm", "eu", 1)),
        m[1].event_id: (Position("billing", "b", 1),),
        m[2].event_id: (),
        m[3].event_id: (Position("billing", "a", 2),),
        m[4].event_id: (Position("billing", "b", 2), Position("crm", "eu", 2)),
        m[5].event_id: (Position("billing", "a", 3),),
        # Another tool's key, and another destination's key of the same text: their own orders.
        m[6].event_id: (Position("billing", "a", 1),),
        m[7].event_id: (Position("crm", "a", 1),),
    }
    # Everything else about the message travels as it was.
    assert [replace(d.message, ordering=()) for d in got] == [
        replace(item, ordering=()) for item in m
    ]


async def test_duplicates_get_no_position_and_use_none_up(queue: ContractQueue) -> None:
    first = ordered(("billing", "a"), delivery_id="d-1")
    # A duplicate in a later batch, and one within the batch (sharing the new one's id).
    await queue.enqueue([first])
    again = ordered(("billing", "a"), delivery_id="d-1")
    second = ordered(("billing", "a"), delivery_id="d-2")
    twin = ordered(("billing", "a"), delivery_id="d-2")
    results = await queue.enqueue([again, second, twin])
    assert [r.duplicate for r in results] == [True, False, True]
    third = ordered(("billing", "a"), delivery_id="d-3")
    await queue.enqueue([third])

    got = await received(queue, 3)

    assert seqs(got) == {
        first.event_id: (Position("billing", "a", 1),),
        second.event_id: (Position("billing", "a", 2),),
        third.event_id: (Position("billing", "a", 3),),
    }


async def test_concurrent_enqueuers_never_share_a_position(backend: Backend) -> None:
    producers = [await backend.queue(f"api-{n}") for n in range(3)]
    batches, per_batch = 8, 15

    async def produce(queue: ContractQueue) -> None:
        for _ in range(batches):
            await queue.enqueue(
                [ordered(("billing", "hot"), ("crm", f"k{i % 3}")) for i in range(per_batch)]
            )

    await asyncio.gather(*(produce(queue) for queue in producers))

    total = len(producers) * batches * per_batch
    got = await received(producers[0], total)
    by_key: dict[tuple[str, str], list[int]] = {}
    for delivery in got:
        for p in delivery.message.ordering:
            by_key.setdefault((p.destination_id, p.key), []).append(p.seq)
    assert sorted(by_key[("billing", "hot")]) == list(range(1, total + 1))
    for key in ("k0", "k1", "k2"):
        assert sorted(by_key[("crm", key)]) == list(range(1, total // 3 + 1))
    # Positions follow the queue's order of acceptance (the order receive hands them out).
    assert by_key[("billing", "hot")] == sorted(by_key[("billing", "hot")])


async def test_positions_survive_retry_later_and_promotion(queue: ContractQueue) -> None:
    sent = ordered(("billing", "a"), ("crm", "b"))
    await queue.enqueue([sent])
    [delivery] = await received(queue, 1)
    given = delivery.message.ordering
    assert given == (Position("billing", "a", 1), Position("crm", "b", 1))

    # The event split into its destinations' retries: each keeps the positions it carries.
    await queue.retry_later(
        [
            (delivery, 0.0),
            (replace(delivery, message=replace(delivery.message, destination_id="crm")), 0.0),
        ]
    )
    retried = await received(queue, 2)

    assert sorted((d.message.destination_id or "", d.message.ordering) for d in retried) == [
        ("", given),
        ("crm", given),
    ]
    # Retrying gave nothing new: the key's next event is still the second.
    await queue.enqueue([later := ordered(("billing", "a"))])
    [next_one] = await received(queue, 1)
    assert (next_one.message.event_id, next_one.message.ordering) == (
        later.event_id,
        (Position("billing", "a", 2),),
    )


async def test_positions_survive_reclaim(backend: Backend) -> None:
    crashed = await backend.queue("crashed", reclaim_idle=SOON)
    survivor = await backend.queue("survivor", reclaim_idle=SOON)
    await crashed.enqueue([ordered(("billing", "a")), ordered(("billing", "a"))])
    first = await received(crashed, 2)

    taken: list[Delivery] = []

    async def reclaimed() -> bool:
        taken.extend(await survivor.reclaim(10))
        return len(taken) >= 2

    await eventually(reclaimed, what="the crashed consumer's messages to be reclaimed")
    assert seqs(taken) == seqs(first)
    assert sorted(p.seq for d in taken for p in d.message.ordering) == [1, 2]


async def test_requeue_keeps_the_positions_it_is_given_and_gives_none(
    queue: ContractQueue,
) -> None:
    await queue.enqueue([ordered(("billing", "a"))])
    [original] = await received(queue, 1)
    await queue.ack([original])

    # A replay of a stored event: its positions as stored; an unordered one stays unordered.
    await queue.requeue([original.message, plain := message()])
    replayed = await received(queue, 2)
    assert seqs(replayed) == {
        original.message.event_id: (Position("billing", "a", 1),),
        plain.event_id: (),
    }
    await queue.enqueue([fresh := ordered(("billing", "a"))])
    [after] = await received(queue, 1)
    assert (after.message.event_id, after.message.ordering) == (
        fresh.event_id,
        (Position("billing", "a", 2),),
    )


async def test_seqs_counted_within_one_batch_follow_its_order(queue: ContractQueue) -> None:
    batch = [ordered(("billing", "a"), delivery_id=f"d-{i}") for i in range(50)]
    await queue.enqueue(batch)
    got = await received(queue, 50)
    given = seqs(got)
    assert [given[m.event_id][0].seq for m in batch] == list(range(1, 51))
    assert Counter(d.deliveries for d in got) == Counter({1: 50})
