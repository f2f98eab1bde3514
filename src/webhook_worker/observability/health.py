"""Health checks in the SPEC shape: every check bounded by a timeout, so a hung dependency
makes a component unhealthy instead of hanging the health request."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from webhook_worker.queue.base import Queue
from webhook_worker.storage.database import Database

CHECK_TIMEOUT = 2.0

Check = Callable[[], Awaitable[dict[str, Any]]]


class Health:
    def __init__(self, db: Database, queue: Queue, uses_redis: bool) -> None:
        self._db = db
        self._queue = queue
        self._uses_redis = uses_redis

    async def report(self) -> tuple[int, dict[str, Any]]:
        """``(http_status, body)`` for ``GET /health``."""
        checks: dict[str, Check] = {"database": self._database}
        if self._uses_redis:
            checks["redis"] = self._redis
        checks["queue"] = self._queue_depth
        checks["worker"] = self._runtime
        results = await asyncio.gather(*(_bounded(check) for check in checks.values()))
        components = dict(zip(checks, results, strict=True))
        statuses = {component["status"] for component in components.values()}
        overall = (
            "unhealthy"
            if "unhealthy" in statuses
            else "degraded"
            if "degraded" in statuses
            else "healthy"
        )
        body = {
            "status": overall,
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "components": components,
        }
        return (503 if overall == "unhealthy" else 200), body

    async def ready(self) -> tuple[bool, dict[str, str]]:
        """Database and queue reachable (what a load balancer needs to route traffic here)."""
        results = await asyncio.gather(_bounded(self._database), _bounded(self._queue_ping))
        detail = {"database": results[0]["status"], "queue": results[1]["status"]}
        return all(r["status"] != "unhealthy" for r in results), detail

    async def _database(self) -> dict[str, Any]:
        duration = await self._db.ping()
        return _component(
            "healthy",
            open_connections=self._db.pool_status()["open_connections"],
            query_duration_ms=round(duration, 2),
        )

    async def _redis(self) -> dict[str, Any]:
        started = time.perf_counter()
        await self._queue.ping()
        return _component(
            "healthy", ping_duration_ms=round((time.perf_counter() - started) * 1000, 2)
        )

    async def _queue_ping(self) -> dict[str, Any]:
        await self._queue.ping()
        return _component("healthy")

    async def _queue_depth(self) -> dict[str, Any]:
        return _component("healthy", queue_depth=await self._queue.depth())

    async def _runtime(self) -> dict[str, Any]:
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return _component(
            "healthy",
            runtime={"goroutines": len(asyncio.all_tasks()), "memory_alloc_mb": round(rss_mb, 1)},
        )


async def _bounded(check: Check) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT)
    except TimeoutError:
        return _component("unhealthy", error=f"no answer within {CHECK_TIMEOUT:g}s")
    except Exception as exc:  # a failing dependency is a health result, not an error
        return _component("unhealthy", error=type(exc).__name__)


def _component(status: str, **details: Any) -> dict[str, Any]:
    return {"status": status, "details": details}
