"""``Queue.forget_delivery_ids`` on every implementation (Redis Streams, the database queue on
SQLite and on PostgreSQL): an erased event's delivery id is accepted as new when sent again,
and only the ids named are forgotten."""

from __future__ import annotations

import pytest

from tests.queue.conftest import Backend
from tests.queue.support import message
from webhook_worker.errors import QueueUnavailableError
from webhook_worker.queue.base import EnqueueResult


async def test_a_forgotten_delivery_id_is_accepted_as_new(backend: Backend) -> None:
    queue = await backend.queue()
    first, kept = message("erased"), message("kept")
    await queue.enqueue([first, kept])
    again, kept_again = message("erased"), message("kept")
    assert (await queue.enqueue([again]))[0].duplicate

    await queue.forget_delivery_ids([("github", "erased"), ("github", "never-seen")])

    results = await queue.enqueue([again, kept_again])
    assert results == [
        EnqueueResult(again.event_id, duplicate=False),
        EnqueueResult(kept.event_id, duplicate=True),
    ]


async def test_forgetting_is_per_tool_and_takes_many_keys(backend: Backend) -> None:
    queue = await backend.queue()
    many = [message(f"d-{n}") for n in range(2500)]  # more than one statement's worth
    other_tool = message("d-0", tool_id="stripe")
    await queue.enqueue([*many, other_tool])

    await queue.forget_delivery_ids([("github", m.delivery_id) for m in many])
    await queue.forget_delivery_ids([])

    fresh = [message(m.delivery_id) for m in many[:3]]
    assert not any(r.duplicate for r in await queue.enqueue(fresh))
    assert (await queue.enqueue([message("d-0", tool_id="stripe")]))[0].duplicate


async def test_an_unreachable_backend_is_a_queue_error(backend: Backend) -> None:
    queue = await backend.unreachable()
    with pytest.raises(QueueUnavailableError, match=backend.remedy):
        await queue.forget_delivery_ids([("github", "erased")])
