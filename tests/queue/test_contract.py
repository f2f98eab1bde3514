"""The Queue Protocol's promises, written once and run against every implementation: Redis
Streams, and the database queue on SQLite and on PostgreSQL (the ``backend`` fixture).

What only one implementation does (Lua scripts, XAUTOCLAIM paging, malformed entries, SKIP
LOCKED, purging delivery ids) is tested beside it, in test_redis_streams.py and
test_database_queue.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from tests.queue.conftest import Backend, ContractQueue
from tests.queue.support import SOON, message
from tests.support import eventually
from webhook_worker.errors import QueueUnavailableError
from webhook_worker.queue.base import Delivery, EnqueueResult


@pytest.fixture
async def queue(backend: Backend) -> ContractQueue:
    return await backend.queue()


async def take(queue: ContractQueue, count: int = 10) -> list[Delivery]:
    """What a worker's loop does: move due retries in, then receive without waiting."""
    await queue.promote_due()
    return await queue.receive(count, 0)


async def reclaim_all(queue: ContractQueue, count: int, what: str) -> list[Delivery]:
    """Reclaim until ``count`` messages have been taken over."""
    taken: list[Delivery] = []

    async def enough() -> bool:
        taken.extend(await queue.reclaim(10))
        return len(taken) >= count

    await eventually(enough, what=what)
    return taken


# Enqueue, receive, acknowledge.


async def test_round_trip_preserves_every_field(queue: ContractQueue) -> None:
    sent = [
        message(
            body=bytes(range(256)) + b"\xff\xfe\x80 not utf-8 \xc3\x28",
            received_at=1712345678.987654,
            traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        message(
            event_type=None,
            headers=b'{"x-emoji":"\xc3\xa9\xf0\x9f\x9a\x80"}',
            body=b"",
            delivery_id="d" * 255,
            tool_id="t" * 128,
        ),
        message(event_type=""),  # "" is not None: a provider that sent an empty type
        message(attempt=2, retry_from=1712345000.25),
    ]
    results = await queue.enqueue(sent)
    assert results == [EnqueueResult(m.event_id, duplicate=False) for m in sent]

    got = await queue.receive(10, 1.0)

    assert [d.message for d in got] == sent
    assert all(type(d.message.body) is bytes and type(d.message.headers) is bytes for d in got)
    assert [d.deliveries for d in got] == [1] * len(sent)
    assert len({d.receipt for d in got}) == len(sent)
    assert await queue.depth() == len(sent)
    assert await queue.pending_count() == len(sent)


async def test_receive_hands_out_oldest_first_and_at_most_count(queue: ContractQueue) -> None:
    sent = [message() for _ in range(5)]
    await queue.enqueue(sent)

    first = await queue.receive(3, 0)
    second = await queue.receive(3, 0)

    assert [d.message for d in first] == sent[:3]
    assert [d.message for d in second] == sent[3:]
    assert await queue.receive(3, 0) == []


async def test_depth_counts_waiting_plus_pending_and_ack_removes_for_good(
    backend: Backend,
) -> None:
    # A reclaim idle time of zero: anything still pending could be reclaimed at once.
    queue = await backend.queue(reclaim_idle=0.0)
    await queue.enqueue([message() for _ in range(3)])
    received = await queue.receive(2, 1.0)
    assert len(received) == 2
    assert (await queue.depth(), await queue.pending_count()) == (3, 2)

    await queue.ack(received)
    assert (await queue.depth(), await queue.pending_count()) == (1, 0)

    rest = await queue.receive(10, 1.0)
    await queue.ack(rest)
    assert (await queue.depth(), await queue.pending_count()) == (0, 0)
    assert await queue.reclaim(10) == []
    assert await queue.receive(10, 0) == []


async def test_receive_waits_up_to_block_when_empty(queue: ContractQueue) -> None:
    started = time.monotonic()
    assert await queue.receive(10, 0.3) == []
    assert 0.3 <= time.monotonic() - started < 3


@pytest.mark.parametrize("sender", ["same queue", "another process"])
async def test_a_waiting_receive_gets_a_message_enqueued_meanwhile(
    backend: Backend, queue: ContractQueue, sender: str
) -> None:
    producer = queue if sender == "same queue" else await backend.queue("api")
    waiting = asyncio.create_task(queue.receive(10, 3.0))
    await asyncio.sleep(0)  # let the receive start waiting
    sent = message()
    await producer.enqueue([sent])

    got = await asyncio.wait_for(waiting, 5.0)

    assert [d.message for d in got] == [sent]


async def test_concurrent_consumers_never_share_a_message(backend: Backend) -> None:
    sent = [message() for _ in range(500)]
    await (await backend.queue("api")).enqueue(sent)
    consumers = [await backend.queue("a"), await backend.queue("b")]
    taken: list[Delivery] = []

    async def drain(queue: ContractQueue) -> None:
        while got := await queue.receive(7, 0):
            taken.extend(got)

    # Three tasks per consumer, so each connection runs several receives at once as well.
    await asyncio.wait_for(asyncio.gather(*(drain(q) for q in consumers for _ in range(3))), 60)

    ids = [d.message.event_id for d in taken]
    assert len(ids) == len(set(ids)), "a message was handed to two consumers"
    assert set(ids) == {m.event_id for m in sent}
    assert {d.deliveries for d in taken} == {1}


async def test_requeue_adds_known_messages_without_deduplication(queue: ContractQueue) -> None:
    original = message("d-1")
    await queue.enqueue([original])
    # A dead letter retried by hand: same event, same delivery id, a fresh retry series.
    retried = replace(original, retry_from=1712345999.5)
    await queue.requeue([retried])

    assert [d.message for d in await queue.receive(10, 1.0)] == [original, retried]
    assert await queue.enqueue([message("d-1")]) == [(original.event_id, True)]
    assert await queue.depth() == 2


# De-duplication on (tool id, delivery id).


async def test_duplicates_in_one_batch_and_across_batches(queue: ContractQueue) -> None:
    original, other = message("d-1"), message("d-2")
    same_id_other_tool = message("d-1", tool_id="gitlab")

    results = await queue.enqueue([original, message("d-1"), other, same_id_other_tool])
    assert results == [
        (original.event_id, False),
        (original.event_id, True),
        (other.event_id, False),
        (same_id_other_tool.event_id, False),
    ]

    new = message("d-3")
    again = await queue.enqueue([message("d-2"), new, message("d-1")])
    assert again == [(other.event_id, True), (new.event_id, False), (original.event_id, True)]

    assert await queue.depth() == 4
    received = [d.message for d in await queue.receive(10, 1.0)]
    assert received == [original, other, same_id_other_tool, new]


async def test_concurrent_enqueue_of_one_delivery_id_accepts_it_once(backend: Backend) -> None:
    api_a, api_b = await backend.queue("api-a"), await backend.queue("api-b")
    for round_ in range(30):
        a, b = message(f"d-{round_}"), message(f"d-{round_}")
        result_a, result_b = await asyncio.gather(api_a.enqueue([a]), api_b.enqueue([b]))
        assert sorted([result_a[0].duplicate, result_b[0].duplicate]) == [False, True]
        assert result_a[0].event_id == result_b[0].event_id in (a.event_id, b.event_id)
    assert await api_a.depth() == 30


async def test_a_delivery_id_is_accepted_again_after_its_ttl(backend: Backend) -> None:
    first = message("d-1")
    short = await backend.queue(ttl=1.0)
    assert await short.enqueue([first]) == [(first.event_id, False)]
    queue = await backend.queue()

    async def accepted_again() -> EnqueueResult | None:
        [result] = await queue.enqueue([message("d-1")])
        return None if result.duplicate else result

    retry = await eventually(accepted_again, within=5, what="the delivery id to expire")

    # Remembered again, now under the new event id; housekeeping forgets only expired ids.
    await queue.housekeeping()
    assert await queue.enqueue([message("d-1")]) == [(retry.event_id, True)]
    got = [d.message.event_id for d in await queue.receive(10, 1.0)]
    assert got == [first.event_id, retry.event_id]


# De-duplication on a second key, the replay key (a body signed without an id or timestamp).


async def test_a_known_replay_key_makes_a_duplicate_whatever_the_delivery_id(
    queue: ContractQueue,
) -> None:
    first = message("d-1", replay_key="r-1")
    assert await queue.enqueue([first]) == [(first.event_id, False)]

    # A captured request sent again under a new delivery id: the first event's duplicate, and
    # the new delivery id now names that event too (the replayer's retry is a duplicate).
    assert await queue.enqueue([message("d-2", replay_key="r-1")]) == [(first.event_id, True)]
    assert await queue.enqueue([message("d-2")]) == [(first.event_id, True)]
    # A known delivery id with a new replay key: a duplicate, its replay key recorded as well.
    assert await queue.enqueue([message("d-1", replay_key="r-9")]) == [(first.event_id, True)]
    assert await queue.enqueue([message("d-8", replay_key="r-9")]) == [(first.event_id, True)]

    other_tool = message("d-1", tool_id="gitlab", replay_key="r-1")
    other_body = message("d-3", replay_key="r-2")
    without = message("r-1")  # a delivery id equal to a replay key is not a replay key
    results = await queue.enqueue([other_tool, other_body, without])
    assert results == [(m.event_id, False) for m in (other_tool, other_body, without)]

    received = [d.message for d in await queue.receive(10, 1.0)]
    assert received == [first, other_tool, other_body, without]
    assert await queue.depth() == 4


async def test_replay_keys_within_one_batch(queue: ContractQueue) -> None:
    a = message("d-1", replay_key="r-1")
    b = message("d-2", replay_key="r-1")  # a's body again
    c = message("d-1", replay_key="r-2")  # a's delivery id again
    d = message("d-3", replay_key="r-3")
    results = await queue.enqueue([a, b, c, d])
    assert results == [
        (a.event_id, False),
        (a.event_id, True),
        (a.event_id, True),
        (d.event_id, False),
    ]
    # Every key of the batch was recorded, the duplicates' for the event they duplicate.
    later = [message("d-2"), message("d-9", replay_key="r-2"), message("d-3")]
    assert await queue.enqueue(later) == [
        (a.event_id, True),
        (a.event_id, True),
        (d.event_id, True),
    ]
    assert [x.message for x in await queue.receive(10, 1.0)] == [a, d]


async def test_concurrent_replays_under_new_delivery_ids_accept_one(backend: Backend) -> None:
    api_a, api_b = await backend.queue("api-a"), await backend.queue("api-b")
    for round_ in range(30):
        a = message(f"a-{round_}", replay_key=f"r-{round_}")
        b = message(f"b-{round_}", replay_key=f"r-{round_}")
        result_a, result_b = await asyncio.gather(api_a.enqueue([a]), api_b.enqueue([b]))
        assert sorted([result_a[0].duplicate, result_b[0].duplicate]) == [False, True]
        assert result_a[0].event_id == result_b[0].event_id in (a.event_id, b.event_id)
    assert await api_a.depth() == 30


# Reclaiming what a dead consumer left behind, and renewing what a live one still holds.


async def test_a_live_lease_is_not_reclaimed(backend: Backend) -> None:
    busy = await backend.queue("busy")
    await busy.enqueue([message()])
    assert len(await busy.receive(10, 0)) == 1

    assert await (await backend.queue("other")).reclaim(10) == []
    assert await busy.pending_count() == 1


async def test_unacknowledged_messages_are_reclaimed_by_another_consumer(
    backend: Backend,
) -> None:
    sent = [message() for _ in range(3)]
    dead = await backend.queue("dead", reclaim_idle=SOON)
    await dead.enqueue(sent)
    taken = await dead.receive(10, 0)
    assert len(taken) == 3
    rescuer = await backend.queue("rescuer", reclaim_idle=SOON)
    assert await rescuer.receive(10, 0) == []

    reclaimed = await reclaim_all(rescuer, 3, "the rescuer to reclaim 3 messages")

    assert [d.message for d in reclaimed] == sent
    assert [d.receipt for d in reclaimed] == [d.receipt for d in taken]
    assert [d.deliveries for d in reclaimed] == [2, 2, 2]
    # Each takeover counts, so a poison message can be dead-lettered after N deliveries.
    third = await backend.queue("third", reclaim_idle=SOON)
    again = await reclaim_all(third, 3, "a second takeover")
    assert [d.deliveries for d in again] == [3, 3, 3]
    await third.ack(again)
    assert (await third.depth(), await third.pending_count()) == (0, 0)


async def test_renewed_messages_are_not_reclaimed_and_a_late_renewal_steals_nothing(
    backend: Backend,
) -> None:
    holder = await backend.queue("holder", reclaim_idle=0.3)
    await holder.enqueue([message(), message()])
    held = await holder.receive(10, 0)
    assert len(held) == 2
    rescuer = await backend.queue("rescuer", reclaim_idle=0.3)

    # Renewed every 0.1 s for a second (over three reclaim idle times): nothing is taken over.
    # The sleep paces the renewals; the test asserts that nothing happens meanwhile.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert await holder.renew(held) == 0
        assert await rescuer.reclaim(10) == []
        await asyncio.sleep(0.1)

    # The holder goes quiet: the rescuer takes the messages over.
    reclaimed = await reclaim_all(rescuer, 2, "the rescuer to reclaim the unrenewed messages")
    assert sorted(d.receipt for d in reclaimed) == sorted(d.receipt for d in held)

    # The holder wakes up and renews what it lost, while the rescuer dies in turn. A renewal
    # that stole the messages back, or extended the rescuer's hold, would keep them from a
    # third consumer for ever.
    third = await backend.queue("third", reclaim_idle=0.3)

    async def late_renewal_then_reclaim() -> list[Delivery]:
        # The late renewal says it found both messages taken over.
        assert await holder.renew(held) == 2
        return await third.reclaim(10)

    taken = await eventually(late_renewal_then_reclaim, what="the third consumer to take over")
    assert sorted(d.receipt for d in taken) == sorted(d.receipt for d in held)
    assert {d.deliveries for d in taken} == {3}
    await third.ack(taken)
    assert await third.pending_count() == 0
    # Settled messages are not counted as taken over.
    assert await holder.renew(held) == 0


# Delayed redelivery.


async def test_a_retry_comes_back_after_its_delay_not_before(queue: ContractQueue) -> None:
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


async def test_scheduled_retries_survive_a_restart(backend: Backend, queue: ContractQueue) -> None:
    # A worker restart: the schedule lives in Redis or the database, not in the process.
    sent = message()
    await queue.enqueue([sent])
    await queue.retry_later([(d, 0.05) for d in await queue.receive(1, 0)])
    await queue.close()

    restarted = await backend.queue("c2")
    again = await eventually(lambda: take(restarted), within=5, what="the retry after a restart")
    assert [d.message for d in again] == [sent]


async def test_each_retry_happens_once_with_its_own_delay(queue: ContractQueue) -> None:
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


# What the health checks and metrics read.


async def test_oldest_age_counts_waiting_and_in_flight_messages(queue: ContractQueue) -> None:
    assert await queue.oldest_age() == 0.0
    await queue.enqueue([message()])

    async def aged() -> bool:
        return await queue.oldest_age() >= 0.2

    await eventually(aged, what="the message to age")
    received = await queue.receive(1, 0)
    assert 0.2 <= await queue.oldest_age() < 30  # in flight still counts
    # A scheduled retry is not available to workers, so it is not behind.
    await queue.retry_later([(received[0], 30)])
    assert await queue.oldest_age() == 0.0
    assert await queue.scheduled_count() == 1


async def test_unavailable_backend_raises_queue_unavailable(backend: Backend) -> None:
    queue = await backend.unreachable()
    delivery = Delivery(message(), receipt="1", deliveries=1)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: queue.enqueue([message()]),
        lambda: queue.requeue([message()]),
        lambda: queue.receive(1, 0.1),
        lambda: queue.reclaim(1),
        lambda: queue.ack([delivery]),
        lambda: queue.renew([delivery]),
        lambda: queue.retry_later([(delivery, 1.0)]),
        queue.scheduled_count,
        queue.oldest_age,
        queue.depth,
        queue.pending_count,
        queue.ping,
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(QueueUnavailableError, match=backend.remedy) as caught:
            await call()
        # Fast: ingest answers 503 and the sender retries, rather than a request that hangs.
        assert time.monotonic() - started < 3.0
        assert isinstance(caught.value.__cause__, backend.cause)
