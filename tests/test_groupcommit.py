"""GroupCommit: items handed in concurrently are written in groups by one task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import pytest

from tests.support import eventually
from webhook_worker.groupcommit import GroupCommit

T = TypeVar("T")


async def soon(waiter: Awaitable[T]) -> T:
    """``waiter``'s outcome, failing the test rather than hanging if it never comes."""
    return await asyncio.wait_for(waiter, timeout=5)


class Store:
    """A flush function that records each group and can be held mid-write or made to fail."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next: Exception | None = None

    async def flush(self, items: list[int]) -> Sequence[str]:
        self.groups.append(list(items))
        await self.gate.wait()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return [f"r{item}" for item in items]


async def test_a_lone_item_is_written_at_once_and_the_rest_gather_meanwhile() -> None:
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(store.flush, max_group=100, name="test")
    group.start()
    store.gate.clear()
    first = group.submit(0)

    async def first_write_started() -> bool:
        return len(store.groups) == 1

    await eventually(first_write_started, what="the first write")
    rest = [group.submit(i) for i in range(1, 11)]
    store.gate.set()

    assert await soon(asyncio.gather(first, *rest)) == [f"r{i}" for i in range(11)]
    assert store.groups == [[0], list(range(1, 11))]
    assert await group.close(5)


async def test_concurrent_callers_share_a_write_and_each_gets_its_own_result() -> None:
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(store.flush, max_group=1000, name="test")
    group.start()

    async def caller(i: int) -> str:
        await asyncio.sleep(0)
        return await group.submit(i)

    results = await soon(asyncio.gather(*(caller(i) for i in range(200))))

    assert results == [f"r{i}" for i in range(200)]
    assert sorted(item for written in store.groups for item in written) == list(range(200))
    assert len(store.groups) < 20  # grouped, not one write each
    assert await group.close(5)


async def test_a_group_holds_at_most_max_group_items() -> None:
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(store.flush, max_group=4, name="test")
    waiting = [group.submit(i) for i in range(10)]
    group.start()

    assert await soon(asyncio.gather(*waiting)) == [f"r{i}" for i in range(10)]
    assert store.groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert await group.close(5)


async def test_an_error_reaches_every_caller_of_its_group_and_the_next_group_is_written() -> None:
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(store.flush, max_group=3, name="test")
    store.fail_next = ValueError("the write failed")
    failing = [group.submit(i) for i in range(3)]
    fine = [group.submit(i) for i in range(3, 5)]
    group.start()

    for waiter in failing:
        with pytest.raises(ValueError, match="the write failed"):
            await soon(waiter)
    assert await soon(asyncio.gather(*fine)) == ["r3", "r4"]
    assert await soon(group.submit(5)) == "r5"
    assert store.groups == [[0, 1, 2], [3, 4], [5]]
    assert await group.close(5)


async def test_close_writes_what_is_waiting_and_refuses_more() -> None:
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(store.flush, max_group=2, name="test")
    group.start()
    store.gate.clear()
    waiting = [group.submit(i) for i in range(5)]
    group.add(5)
    closing = asyncio.create_task(group.close(5))

    async def closing_started() -> bool:
        return bool(store.groups)

    await eventually(closing_started, what="the first write")
    store.gate.set()

    assert await soon(closing)
    assert await soon(asyncio.gather(*waiting)) == [f"r{i}" for i in range(5)]
    assert store.groups == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(RuntimeError, match="closed"):
        group.submit(6)
    with pytest.raises(RuntimeError, match="closed"):
        group.add(6)


async def test_close_gives_up_at_its_deadline_and_tells_every_caller_still_waiting() -> None:
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(
        store.flush, max_group=2, name="test", interrupted=lambda: ConnectionError("shut down")
    )
    group.start()
    store.gate.clear()  # the first write never ends
    waiting = [group.submit(i) for i in range(5)]

    assert not await group.close(0.05)

    for waiter in waiting:  # the group cut off mid-write and the ones never started
        with pytest.raises(ConnectionError, match="shut down"):
            await soon(waiter)
    assert store.groups == [[0, 1]]


async def test_a_failure_nobody_awaits_is_logged_and_the_writer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(store.flush, max_group=10, name="test-writer")
    store.fail_next = ValueError("the write failed")
    group.add_many([1, 2])
    with caplog.at_level(logging.ERROR, logger="webhook_worker.groupcommit"):
        group.start()

        async def logged() -> bool:
            return any("test-writer" in r.getMessage() for r in caplog.records)

        await eventually(logged, what="the failure logged")
    assert await soon(group.submit(3)) == "r3"
    assert store.groups == [[1, 2], [3]]
    assert await group.close(5)


def test_a_group_needs_room_for_one_item() -> None:
    with pytest.raises(ValueError, match="at least one"):
        GroupCommit(Store().flush, max_group=0, name="test")
