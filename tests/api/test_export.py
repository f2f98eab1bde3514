"""``GET /api/v1/events/export`` (NDJSON, oldest first, flat memory) and the ``search`` and
``delivery_id`` filters of ``/api/v1/events``, through the real app on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.types import Message

from tests.api.support import started_app, uvicorn_serving
from tests.storage.support import BASE_TIME, event_id, event_record, seed
from tests.support import serving
from webhook_worker.config import Settings
from webhook_worker.runtime import Runtime, open_runtime
from webhook_worker.storage.database import Database
from webhook_worker.storage.events import MAX_SEARCH, EventFilter, EventStore

NDJSON = "application/x-ndjson"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'export.db'}"
    request.getfixturevalue("postgres_db")  # migrated and emptied for this test
    url: str = request.getfixturevalue("postgres_server_url")
    return url


@pytest.fixture
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    settings = Settings(
        database_url=database_url, tools_refresh_interval=0.05, worker_reclaim_idle=1.0
    )
    async with open_runtime(settings, migrate_first=True) as opened:
        yield opened


@pytest.fixture
async def http(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(runtime) as client:
        yield client


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    """The events of an export; every line is one JSON object and the last line ends too."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == NDJSON
    body = response.content
    if not body:
        return []
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.decode().split("\n")[:-1]]


def indexes(items: list[dict[str, Any]]) -> list[int]:
    return [int(item["id"].rsplit("-", 1)[1]) for item in items]


async def test_export_streams_every_matching_event_oldest_first_as_the_event_view(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    # More than two batches of 500, of two tools, one event with attempts.
    await seed(
        runtime.db,
        [event_record(i, tool_id="other" if i % 3 == 0 else "demo") for i in range(1203)],
        [
            {
                "event_id": event_id(1),
                "attempt": 1,
                "started_at": BASE_TIME,
                "duration_ms": 1.5,
                "outcome": "failed",
                "error_class": "http_5xx",
                "error": "forward answered 503",
                "http_status": 503,
            }
        ],
    )
    exported = lines(await http.get("/api/v1/events/export", params={"tool_id": "demo"}))
    expected = [i for i in range(1203) if i % 3 != 0]
    assert indexes(exported) == expected
    assert len(exported) == await EventStore(runtime.db).count(EventFilter(tool_id="demo"))
    for item in (exported[0], exported[-1]):
        shown = await http.get(f"/api/v1/events/{item['id']}")
        assert item == shown.json()
    assert exported[0]["attempts"][0]["error"] == "forward answered 503"
    everything = lines(await http.get("/api/v1/events/export"))
    assert indexes(everything) == list(range(1203))


async def test_export_applies_the_list_filters(runtime: Runtime, http: httpx.AsyncClient) -> None:
    await seed(
        runtime.db,
        [
            event_record(0, body=b'{"order": "needle"}'),
            event_record(1, body=b'{"order": "needle"}', tool_id="other"),
            event_record(2, event_type="issues", status="processed"),
            event_record(3, body=b"\xff needle, not UTF-8"),
            event_record(4),
        ],
    )

    async def exported(**params: str) -> list[int]:
        found = lines(await http.get("/api/v1/events/export", params=params))
        where_count = await http.get("/api/v1/events", params={**params, "limit": "500"})
        assert sorted(indexes(where_count.json()["items"])) == indexes(found)
        return indexes(found)

    assert await exported(search="needle") == [0, 1, 3]
    assert await exported(search="needle", tool_id="demo") == [0, 3]
    assert await exported(delivery_id="delivery-2") == [2]
    assert await exported(event_type="issues", status="processed") == [2]
    since = (BASE_TIME + timedelta(minutes=1)).isoformat()
    until = (BASE_TIME + timedelta(minutes=4)).isoformat()
    assert await exported(since=since, until=until) == [1, 2, 3]
    assert await exported(since=since, until=until, search="needle") == [1, 3]
    assert await exported(search="needle", tool_id="nobody") == []
    assert await exported(search="", tool_id="") == [0, 1, 2, 3, 4]  # empty: no filter


async def test_export_is_not_an_event_id_and_refuses_what_it_does_not_take(
    http: httpx.AsyncClient,
) -> None:
    assert lines(await http.get("/api/v1/events/export")) == []
    for params, name in (
        ({"limit": "10"}, "limit"),
        ({"cursor": "abc"}, "cursor"),
        ({"tool": "demo"}, "tool"),
        ({"status": "done"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"search": "x" * (MAX_SEARCH + 1)}, "search"),
    ):
        refused = await http.get("/api/v1/events/export", params=params)
        assert refused.status_code == 400, params
        assert refused.json()["field"] == name, refused.json()
    assert (await http.post("/api/v1/events/export")).status_code == 405


async def test_list_and_replay_take_search_and_delivery_id(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    await seed(
        runtime.db,
        [
            event_record(0, body=b'{"customer": "cus_42", "note": "100%"}'),
            event_record(1, body=b'{"customer": "cus_7"}'),
            event_record(2, body=b'{"customer": "cus_42"}', tool_id="other"),
        ],
    )

    async def listed(**params: str) -> list[int]:
        response = await http.get("/api/v1/events", params=params)
        assert response.status_code == 200, response.text
        return indexes(response.json()["items"])

    assert await listed(search="cus_42") == [2, 0]
    assert await listed(search="cus_42", tool_id="demo") == [0]
    assert await listed(search="100%") == [0]
    assert await listed(search="CUS_42") == []
    assert await listed(delivery_id="delivery-1") == [1]
    assert await listed(delivery_id="delivery-1", search="cus_42") == []
    longest = await http.get("/api/v1/events", params={"search": "é" * MAX_SEARCH})
    assert longest.status_code == 200
    too_long = await http.get("/api/v1/events", params={"search": "é" * (MAX_SEARCH + 1)})
    assert too_long.status_code == 400
    assert f"at most {MAX_SEARCH} characters" in too_long.json()["detail"]

    counted = await http.post(
        "/api/v1/events/replay", json={"tool_id": "demo", "search": "cus_42", "dry_run": True}
    )
    assert counted.json() == {"matched": 1}
    counted = await http.post(
        "/api/v1/events/replay", json={"delivery_id": "delivery-2", "dry_run": True}
    )
    assert counted.json() == {"matched": 1}
    refused = await http.post("/api/v1/events/replay", json={"search": 42, "dry_run": True})
    assert refused.status_code == 400


def test_an_export_ends_when_it_started() -> None:
    now = BASE_TIME
    assert EventFilter().ending_by(now).until == now
    later = EventFilter(until=now + timedelta(hours=1), search="x").ending_by(now)
    assert later == EventFilter(until=now, search="x")
    earlier = EventFilter(until=now - timedelta(hours=1))
    assert earlier.ending_by(now) is earlier


# Memory


async def _export_through_asgi(app: Starlette, query: dict[str, str]) -> tuple[int, int]:
    """GET the export straight through ASGI, dropping each chunk once counted (as a client
    writing to a file would): (lines, peak bytes the process allocated meanwhile)."""
    counted = {"lines": 0, "chunks": 0}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/events/export",
        "raw_path": b"/api/v1/events/export",
        "query_string": urlencode(query).encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 4000),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
        elif message["type"] == "http.response.body":
            counted["lines"] += message.get("body", b"").count(b"\n")
            counted["chunks"] += 1

    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    await app(scope, receive, send)
    peak = tracemalloc.get_traced_memory()[1] - before
    assert counted["chunks"] > counted["lines"] // 500  # written as it was read
    return counted["lines"], peak


@pytest.mark.timeout(300)
async def test_export_memory_stays_flat_as_the_export_grows(runtime: Runtime) -> None:
    """4x the events, about the same peak: what an export holds is one batch, not the result
    (a million events take the memory 5,000 do)."""
    body = json.dumps({"data": "x" * 2000}).encode()  # 2 KB: 40 MB for 20,000 if kept

    async def add(start: int, count: int) -> None:
        for first in range(start, start + count, 2500):
            await seed(runtime.db, [event_record(i, body=body) for i in range(first, first + 2500)])

    await add(0, 5000)
    async with started_app(runtime) as app:
        query = {"tool_id": "demo"}
        await _export_through_asgi(app, {"search": "nothing matches this"})  # warm the caches
        tracemalloc.start()
        try:
            exported, small = await _export_through_asgi(app, query)
            assert exported == 5000
            await add(5000, 15000)
            exported, large = await _export_through_asgi(app, query)
            assert exported == 20000
        finally:
            tracemalloc.stop()
    # Proportional growth would be 4x (and 30 MB more); one batch of 500 is ~1-3 MB.
    assert large < small * 1.5 + 2_000_000, (small, large)
    assert large < 20_000_000, large


async def test_an_export_that_fails_half_way_is_cut_short_not_ended(
    postgres_db: Database, postgres_server_url: str
) -> None:
    """A failure after the answer started cannot change its status: the server cuts the
    connection, and a client sees an incomplete answer rather than a shorter export."""
    body = json.dumps({"data": "x" * 20_000}).encode()  # enough to fill the socket buffers
    for first in range(0, 3000, 500):
        await seed(postgres_db, [event_record(i, body=body) for i in range(first, first + 500)])
    settings = Settings(database_url=postgres_server_url)
    async with (
        open_runtime(settings) as opened,
        uvicorn_serving(opened) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
    ):
        received = 0
        try:
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream("GET", "/api/v1/events/export") as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_bytes():
                        if received == 0:
                            async with postgres_db.begin() as conn:
                                await conn.execute(text("ALTER TABLE events RENAME TO hidden"))
                        received += len(chunk)
        finally:
            async with postgres_db.begin() as conn:
                await conn.execute(text("ALTER TABLE IF EXISTS hidden RENAME TO events"))
        assert 0 < received < 3000 * len(body)
