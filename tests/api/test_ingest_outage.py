"""Redis goes away: the API answers 503 (never 202), and nothing it accepted is lost."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx

from tests.support import RedisServer, eventually, serving
from webhook_worker.config import Settings
from webhook_worker.runtime import open_runtime
from webhook_worker.storage.database import Database
from webhook_worker.storage.events import EventFilter


async def test_redis_down_means_503_and_everything_accepted_is_stored(
    redis_server: RedisServer, postgres_db: Database, postgres_server_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=postgres_server_url,
        redis_addr=f"127.0.0.1:{redis_server.port}",
        redis_password=redis_server.password,
        redis_key_prefix="outage",
        worker_reclaim_idle=1.0,
    )
    async with open_runtime(settings) as runtime:
        await runtime.tool_service.create({"id": "t", "auth": {"type": "none"}})
        worker = runtime.worker()
        async with serving(runtime) as client:
            worker_task = asyncio.create_task(worker.run())

            async def post() -> httpx.Response:
                return await client.post("/webhooks/t", content=uuid.uuid4().hex.encode())

            accepted = set()
            for _ in range(20):
                response = await post()
                assert response.status_code == 202
                accepted.add(response.json()["event_id"])

            redis_server.stop()
            refused = [await post() for _ in range(5)]
            assert [r.status_code for r in refused] == [503] * 5
            assert refused[0].json()["error"] == "queue_unavailable"
            assert refused[0].headers["retry-after"] == "5"

            redis_server.start()

            async def accepting() -> bool:
                response = await post()
                if response.status_code == 202:
                    accepted.add(response.json()["event_id"])
                return response.status_code == 202

            await eventually(accepting, within=15, what="ingest to accept again")
            for _ in range(20):
                response = await post()
                assert response.status_code == 202
                accepted.add(response.json()["event_id"])

            async def all_stored() -> bool:
                return await runtime.events.count(EventFilter(tool_id="t")) >= len(accepted)

            await eventually(all_stored, within=30, what="every accepted event to be stored")
            worker.stop()
            await asyncio.wait_for(worker_task, timeout=15)

        page = await runtime.events.list(EventFilter(tool_id="t"), limit=500)
        assert {item.id for item in page.items} == accepted
