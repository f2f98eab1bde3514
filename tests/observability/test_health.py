"""``/health``, ``/health/live`` and ``/health/ready``: the SPEC shape, thresholds, timeouts,
and what each answers with a dependency down."""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import replace
from pathlib import Path

from tests.support import RedisServer, free_port, serving
from webhook_worker.config import HealthThresholds, Settings
from webhook_worker.observability import runtime as process
from webhook_worker.observability.health import Health
from webhook_worker.queue.base import Message
from webhook_worker.queue.database import DatabaseQueue
from webhook_worker.runtime import open_runtime
from webhook_worker.storage.database import Database


def assert_spec_shape(body: dict[str, object], components: set[str]) -> None:
    assert set(body) == {"status", "timestamp", "components"}
    assert isinstance(body["timestamp"], str) and body["timestamp"].endswith("Z")
    found = body["components"]
    assert isinstance(found, dict) and set(found) == components
    for component in found.values():
        assert set(component) == {"status", "details"}
        assert component["status"] in ("healthy", "degraded", "unhealthy")


async def test_all_up_is_healthy_in_the_spec_shape(backend_settings: Settings) -> None:
    async with (
        open_runtime(backend_settings, migrate_first=True) as runtime,
        serving(runtime) as client,
    ):
        response = await client.get("/health")
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
    expected = {"database", "queue", "worker"}
    if backend_settings.uses_redis:
        expected.add("redis")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "healthy"
    assert_spec_shape(body, expected)
    details = body["components"]
    assert set(details["database"]["details"]) == {"open_connections", "query_duration_ms"}
    assert details["queue"]["details"] == {"queue_depth": 0}
    assert set(details["worker"]["details"]["runtime"]) == {"goroutines", "memory_alloc_mb"}
    assert details["worker"]["details"]["runtime"]["goroutines"] > 0
    if backend_settings.uses_redis:
        assert set(details["redis"]["details"]) == {"ping_duration_ms"}
    assert (live.status_code, ready.status_code) == (200, 200)
    assert ready.json()["components"] == {
        "database": "healthy",
        "queue": "healthy",
        "schema": "healthy",
    }


async def test_a_deep_queue_is_degraded_but_still_200(sqlite_db: Database) -> None:
    queue = DatabaseQueue(sqlite_db, "c", 3600, 30)
    await queue.enqueue([_message() for _ in range(3)])
    health = Health(sqlite_db, queue, False, HealthThresholds(queue_degraded_depth=2))
    status, body = await health.report()
    assert (status, body["status"]) == (200, "degraded")
    assert body["components"]["queue"] == {"status": "degraded", "details": {"queue_depth": 3}}
    unhealthy = Health(sqlite_db, queue, False, HealthThresholds(queue_unhealthy_depth=2))
    status, body = await unhealthy.report()
    assert (status, body["status"]) == (503, "unhealthy")


async def test_an_unreachable_database_is_unhealthy_and_not_ready(sqlite_db: Database) -> None:
    dead = Database.from_url(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none")
    try:
        health = Health(dead, DatabaseQueue(sqlite_db, "c", 3600, 30), False, HealthThresholds())
        status, body = await health.report()
        ready, detail = await health.ready()
    finally:
        await dead.close()
    assert status == 503
    assert body["components"]["database"]["status"] == "unhealthy"
    assert "error" in body["components"]["database"]["details"]
    assert not ready
    assert detail["database"] == "unhealthy"


async def test_redis_down_is_unhealthy_and_live_stays_up(
    redis_server: RedisServer, postgres_db: Database, postgres_server_url: str
) -> None:
    settings = Settings(
        database_url=postgres_server_url,
        redis_addr=f"127.0.0.1:{redis_server.port}",
        redis_password=redis_server.password,
        redis_key_prefix=f"health-{uuid.uuid4().hex[:6]}",
    )
    async with open_runtime(settings) as runtime, serving(runtime) as client:
        assert (await client.get("/health")).status_code == 200
        redis_server.stop()
        down = await client.get("/health")
        ready = await client.get("/health/ready")
        live = await client.get("/health/live")
        redis_server.start()
    assert down.status_code == 503
    components = down.json()["components"]
    assert components["redis"]["status"] == "unhealthy"
    assert components["queue"]["status"] == "unhealthy"
    assert components["database"]["status"] == "healthy"
    assert ready.status_code == 503
    assert live.status_code == 200


async def test_a_hung_dependency_cannot_hang_the_health_request(
    tmp_path: Path, postgres_db: Database, postgres_server_url: str
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    settings = Settings(
        database_url=postgres_server_url,
        redis_addr=f"127.0.0.1:{server.port}",
        redis_password=server.password,
        redis_key_prefix="hung",
        health=HealthThresholds(check_timeout=0.5),
    )
    try:
        async with open_runtime(settings) as runtime, serving(runtime) as client:
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)  # Redis accepts nothing, answers nothing
            try:
                started = time.monotonic()
                response = await client.get("/health")
                took = time.monotonic() - started
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
    finally:
        server.stop()
    assert response.status_code == 503
    assert response.json()["components"]["redis"]["details"]["error"] == "no answer within 0.5s"
    assert took < 3


async def test_memory_over_a_share_of_the_limit_is_degraded_then_unhealthy(
    sqlite_db: Database,
) -> None:
    # A limit the process's real RSS is 85 % of (no cgroup limit is set on a test machine).
    def limit() -> int:
        return process.resident_bytes() * 100 // 85

    queue = DatabaseQueue(sqlite_db, "c", 3600, 30)
    health = Health(sqlite_db, queue, False, HealthThresholds(), memory_limit=limit)
    _, body = await health.report()
    assert body["components"]["worker"]["status"] == "degraded"
    strict = Health(
        sqlite_db,
        queue,
        False,
        replace(HealthThresholds(), memory_unhealthy_percent=50),
        memory_limit=limit,
    )
    status, body = await strict.report()
    assert (status, body["components"]["worker"]["status"]) == (503, "unhealthy")


def _message() -> Message:
    return Message(
        event_id=str(uuid.uuid4()),
        tool_id="t",
        event_type=None,
        delivery_id=uuid.uuid4().hex,
        received_at=time.time(),
        headers=b"{}",
        body=b"{}",
    )
