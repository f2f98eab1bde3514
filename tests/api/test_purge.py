"""``DELETE /api/v1/events`` end to end, on each deployment shape (SQLite; PostgreSQL with the
database queue; PostgreSQL with Redis Streams): real app, real worker, real queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from tests.support import SECRET, Service, Target, eventually, running_service, target_server
from webhook_worker.config import Settings
from webhook_worker.storage.schema import attempts, deliveries


@pytest.fixture
async def service(backend_settings: Settings) -> AsyncIterator[Service]:
    async with running_service(backend_settings) as running:
        await running.runtime.tool_service.create(
            {"id": "store", "auth": {"type": "none"}, "delivery_id": {"header": "X-Delivery"}}
        )
        await running.runtime.tool_service.create(
            {"id": "other", "auth": {"type": "none"}, "delivery_id": {"header": "X-Delivery"}}
        )
        yield running


async def send(service: Service, delivery_id: str, tool_id: str = "store") -> Any:
    body = orjson.dumps({"delivery": delivery_id})
    headers = {"X-Delivery": delivery_id}
    return await service.post(body, tool_id=tool_id, headers=headers, sign=False)


async def accepted(service: Service, delivery_id: str, tool_id: str = "store") -> str:
    response = await send(service, delivery_id, tool_id)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "accepted"
    event_id = str(response.json()["event_id"])
    await service.settled(event_id, "processed")
    return event_id


async def purge(service: Service, **params: str) -> dict[str, Any]:
    response = await service.client.delete("/api/v1/events", params=params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_an_erased_delivery_id_is_accepted_as_new(service: Service) -> None:
    first = await accepted(service, "gdpr-1")
    kept = await accepted(service, "gdpr-2")
    duplicate = await send(service, "gdpr-1")
    assert (duplicate.status_code, duplicate.json()["event_id"]) == (200, first)

    assert await purge(service, delivery_id="gdpr-1", dry_run="true") == {"matched": 1}
    assert (await service.client.get(f"/api/v1/events/{first}")).status_code == 200
    assert await purge(service, delivery_id="gdpr-1") == {"deleted": 1}

    assert (await service.client.get(f"/api/v1/events/{first}")).status_code == 404
    again = await accepted(service, "gdpr-1")
    assert again != first
    stored = (await service.client.get("/api/v1/events", params={"delivery_id": "gdpr-1"})).json()
    assert [item["id"] for item in stored["items"]] == [again]
    # The other delivery id is still known: the purge forgot only what it deleted.
    assert (await send(service, "gdpr-2")).json() == {"event_id": kept, "status": "duplicate"}


async def test_an_erased_github_delivery_is_accepted_when_sent_again_unchanged(
    service: Service,
) -> None:
    # GitHub signs the body alone, so ingest also remembers the signature (a replay key): a
    # redelivery from GitHub's settings page is the same body, signature and delivery id.
    await service.runtime.tool_service.create(
        {"id": "gh", "provider": "github", "auth": {"secret": SECRET}}
    )
    body = orjson.dumps({"zen": "erase me", "hook_id": 1})
    headers = {"X-GitHub-Delivery": "gh-erased", "X-GitHub-Event": "push"}
    first = await service.post(body, tool_id="gh", headers=headers)
    assert first.status_code == 202, first.text
    await service.settled(first.json()["event_id"], "processed")
    # Under another delivery id, the same signed body is a replay.
    replayed = await service.post(body, tool_id="gh", headers={**headers, "X-GitHub-Delivery": "x"})
    assert replayed.json()["status"] == "duplicate"

    assert await purge(service, tool_id="gh", delivery_id="gh-erased") == {"deleted": 1}
    again = await service.post(body, tool_id="gh", headers=headers)
    assert (again.status_code, again.json()["status"]) == (202, "accepted"), again.text
    assert again.json()["event_id"] != first.json()["event_id"]
    await service.settled(again.json()["event_id"], "processed")


async def test_dry_run_counts_what_the_real_run_deletes(service: Service) -> None:
    for n in range(4):
        await accepted(service, f"count-{n}")
    survivor = await accepted(service, "count-other", tool_id="other")

    assert await purge(service, tool_id="store", dry_run="true") == {"matched": 4}
    assert await purge(service, tool_id="store", dry_run="false") == {"deleted": 4}
    assert await purge(service, tool_id="store", dry_run="true") == {"matched": 0}
    listed = (await service.client.get("/api/v1/events")).json()["items"]
    assert [item["id"] for item in listed] == [survivor]


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({}, "at least one filter"),
        ({"dry_run": "true"}, "at least one filter"),
        ({"tool_id": "", "event_type": ""}, "at least one filter"),
        ({"tool": "store"}, "'tool': unknown parameter"),
        ({"tool_id": "store", "dry_run": "yes"}, "dry_run: expected true or false"),
        ({"status": "gone"}, "status: expected one of"),
        ({"until": "yesterday"}, "until:"),
    ],
)
async def test_bad_purges_are_400_and_delete_nothing(
    service: Service, params: dict[str, str], names: str
) -> None:
    event_id = await accepted(service, f"bad-{len(params)}-{names[:4]}")
    response = await service.client.delete("/api/v1/events", params=params)
    assert response.status_code == 400, response.text
    assert names in response.json()["detail"]
    assert (await service.client.get(f"/api/v1/events/{event_id}")).status_code == 200


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    async with target_server() as running:
        yield running


async def test_a_retry_still_queued_for_a_purged_event_is_dropped(
    service: Service, target: Target
) -> None:
    target.answers = [(503, {})]
    await service.runtime.tool_service.create(
        {
            "id": "fwd",
            "auth": {"type": "none"},
            "delivery_id": {"header": "X-Delivery"},
            "mode": "store_and_forward",
            "forward": {"url": target.url, "timeout": "2s"},
            "retry": {"max_retries": 3, "initial_interval": "1s", "max_interval": "1s"},
        }
    )
    await service.runtime.tools.load()
    response = await send(service, "queued", tool_id="fwd")
    assert response.status_code == 202
    event_id = response.json()["event_id"]
    await service.settled(event_id, "retrying")
    queue = service.runtime.queue

    async def scheduled() -> bool:
        return await queue.scheduled_count() == 1

    await eventually(scheduled, what="the retry to be scheduled")

    assert await purge(service, tool_id="fwd") == {"deleted": 1}

    async def drained() -> bool:
        return await queue.depth() == 0 and await queue.scheduled_count() == 0

    await eventually(drained, within=15, what="the retry to come due and be dropped")
    assert len(target.requests) == 1  # the retry was not sent
    assert (await service.client.get(f"/api/v1/events/{event_id}")).status_code == 404
    async with service.runtime.db.connect() as conn:
        left = await conn.scalar(
            select(func.count()).select_from(attempts).where(attempts.c.event_id == event_id)
        )
    assert left == 0  # nothing was written about the purged event
    # The worker is still working.
    await accepted(service, "after-the-purge")


async def test_an_event_purged_while_its_forward_is_under_way_stays_purged(
    service: Service, target: Target
) -> None:
    target.delay = 1.0
    await service.runtime.tool_service.create(
        {
            "id": "slow",
            "auth": {"type": "none"},
            "delivery_id": {"header": "X-Delivery"},
            "mode": "store_and_forward",
            "forward": {"url": target.url, "timeout": "5s"},
        }
    )
    await service.runtime.tools.load()
    response = await send(service, "in-flight", tool_id="slow")
    assert response.status_code == 202
    event_id = response.json()["event_id"]

    async def forwarding() -> bool:
        return len(target.requests) == 1

    await eventually(forwarding, what="the forward to start")
    assert await purge(service, tool_id="slow") == {"deleted": 1}
    queue = service.runtime.queue

    async def drained() -> bool:
        return await queue.depth() == 0 and await queue.scheduled_count() == 0

    await eventually(drained, within=15, what="the forward's outcome to be settled")
    await accepted(service, "after-the-forward")  # the worker has moved on
    assert len(target.requests) == 1  # not sent again
    assert (await service.client.get(f"/api/v1/events/{event_id}")).status_code == 404
    async with service.runtime.db.connect() as conn:
        for table in (attempts, deliveries):
            left = await conn.scalar(
                select(func.count()).select_from(table).where(table.c.event_id == event_id)
            )
            assert left == 0, table.name  # nothing was written about the purged event
