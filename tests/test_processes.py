"""The real processes: ``api`` plus two ``worker`` processes on PostgreSQL, with Redis Streams
and with the database queue. One worker is SIGKILLed mid-stream; every accepted event must be
stored exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import REDIS_URL
from tests.support import Processes, eventually, free_port
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import events

EVENTS = int(os.environ.get("TEST_PROCESS_EVENTS", "3000"))
# About a minute each on a busy machine; its own waits allow up to three.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(params=["redis", "database-queue"])
def processes(
    request: pytest.FixtureRequest,
    postgres_db: Database,
    postgres_server_url: str,
    redis_prefix: str,
    tmp_path: Path,
) -> Iterator[Processes]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "REDIS_", "WORKER_", "API_", "HEALTH_"))
    }
    env.update(
        DATABASE_URL=postgres_server_url,
        API_ADDR=f"127.0.0.1:{free_port()}",
        WORKER_RECLAIM_IDLE="1s",
        TOOLS_REFRESH_INTERVAL="200ms",
        LOG_LEVEL="info",
    )
    if request.param == "redis":
        request.getfixturevalue("redis_client")  # removes the prefix's keys afterwards
        env["REDIS_ADDR"] = REDIS_URL.split("://", 1)[1].split("/", 1)[0]
        env["REDIS_KEY_PREFIX"] = redis_prefix
    running = Processes(env, tmp_path)
    yield running
    running.stop_all()


async def _stored(db: Database) -> int:
    async with db.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(events)) or 0)


async def test_sigkilled_worker_loses_nothing_and_duplicates_nothing(
    processes: Processes, postgres_db: Database
) -> None:
    assert processes.cli("migrate").returncode == 0
    api = processes.start("api")
    base = f"http://{processes.env['API_ADDR']}"
    workers = [
        processes.start(
            "worker", WORKER_CONSUMER_NAME=f"w{i}", HEALTH_ENDPOINT=f"127.0.0.1:{free_port()}"
        )
        for i in range(2)
    ]
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:

        async def api_up() -> bool:
            try:
                return (await client.get("/health/live")).status_code == 200
            except httpx.TransportError:
                return api.poll() is not None  # a dead API ends the wait; the assert says why

        await eventually(api_up, within=30, what="the API to start")
        assert api.poll() is None, processes.output()
        created = await client.post("/api/v1/tools", json={"id": "load", "auth": {"type": "none"}})
        assert created.status_code == 201, created.text

        accepted: set[str] = set()
        limit = asyncio.Semaphore(32)

        async def send(n: int) -> None:
            async with limit:
                response = await client.post(
                    "/webhooks/load",
                    content=b'{"n": %d, "pad": "%s"}' % (n, uuid.uuid4().hex.encode()),
                    headers={"Content-Type": "application/json"},
                )
                assert response.status_code == 202, response.text
                accepted.add(response.json()["event_id"])

        half = EVENTS // 2
        await asyncio.gather(*(send(n) for n in range(half)))

        async def some_stored() -> bool:
            return await _stored(postgres_db) > 0

        await eventually(some_stored, within=30, what="the workers to store events")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        await asyncio.gather(*(send(n) for n in range(half, EVENTS)))

    async def all_stored() -> bool:
        return await _stored(postgres_db) >= EVENTS

    await eventually(all_stored, within=120, what=f"{EVENTS} stored events\n{processes.output()}")
    async with postgres_db.connect() as conn:
        ids = set((await conn.scalars(select(events.c.id))).all())
    assert len(accepted) == EVENTS
    assert ids == accepted

    # The survivors stop gracefully on SIGTERM, exit 0.
    for process in (workers[1], api):
        process.send_signal(signal.SIGTERM)
        assert processes.exit_code(process) == 0, processes.output()
