"""Health checks in the SPEC shape, and the gauges refreshed when ``/metrics`` is scraped.

Every check is bounded by HEALTH_CHECK_TIMEOUT, so a hung dependency makes its component
unhealthy instead of hanging the health request. Thresholds (docs/operations.md):

=============  ====================================  ====================================
component      degraded when                         unhealthy when
=============  ====================================  ====================================
database       the query took > HEALTH_DATABASE_SLOW  it failed or timed out
               or every pooled connection is in use
redis          the ping took > HEALTH_REDIS_SLOW      it failed or timed out
queue          depth > HEALTH_QUEUE_DEGRADED_DEPTH    depth > HEALTH_QUEUE_UNHEALTHY_DEPTH,
                                                      or it cannot be read
worker         memory > HEALTH_MEMORY_DEGRADED_       memory > HEALTH_MEMORY_UNHEALTHY_
               PERCENT of the memory limit            PERCENT of the limit
=============  ====================================  ====================================
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from webhook_worker.config import HealthThresholds
from webhook_worker.observability import metrics, runtime
from webhook_worker.queue.base import Queue
from webhook_worker.storage import migrate
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import DeadLetterStore

Check = Callable[[], Awaitable[dict[str, Any]]]
_HEALTHY, _DEGRADED, _UNHEALTHY = "healthy", "degraded", "unhealthy"
_SCHEMA_CACHE_SECONDS = 30.0


class Health:
    def __init__(
        self,
        db: Database,
        queue: Queue,
        uses_redis: bool,
        thresholds: HealthThresholds,
        memory_limit: Callable[[], int] = runtime.memory_limit_bytes,
    ) -> None:
        self._memory_limit = memory_limit
        self._db = db
        self._queue = queue
        self._uses_redis = uses_redis
        self._limits = thresholds
        self._schema_checked_at = -_SCHEMA_CACHE_SECONDS

    async def report(self) -> tuple[int, dict[str, Any]]:
        """``(http_status, body)`` for ``GET /health``: 200 healthy or degraded, 503 unhealthy."""
        checks: dict[str, Check] = {"database": self._database}
        if self._uses_redis:
            checks["redis"] = self._redis
        checks["queue"] = self._queue_depth
        checks["worker"] = self._runtime
        results = await asyncio.gather(
            *(self._bounded(name, check) for name, check in checks.items())
        )
        components = dict(zip(checks, results, strict=True))
        statuses = {component["status"] for component in components.values()}
        overall = (
            _UNHEALTHY
            if _UNHEALTHY in statuses
            else _DEGRADED
            if _DEGRADED in statuses
            else _HEALTHY
        )
        body = {
            "status": overall,
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "components": components,
        }
        return (503 if overall == _UNHEALTHY else 200), body

    async def ready(self) -> tuple[bool, dict[str, str]]:
        """Database and queue reachable and the schema current: safe to route traffic here."""
        results = await asyncio.gather(
            self._bounded("database", self._database),
            self._bounded("queue", self._queue_ping),
            self._bounded("schema", self._schema),
        )
        detail = {
            name: r["status"]
            for name, r in zip(("database", "queue", "schema"), results, strict=True)
        }
        return all(r["status"] != _UNHEALTHY for r in results), detail

    async def _bounded(self, name: str, check: Check) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(check(), timeout=self._limits.check_timeout)
        except TimeoutError:
            result = _component(
                _UNHEALTHY, error=f"no answer within {self._limits.check_timeout:g}s"
            )
        except Exception as exc:  # a failing dependency is a health result, not an error
            result = _component(_UNHEALTHY, error=type(exc).__name__)
        metrics.HEALTH_CHECK_DURATION.labels(name).observe(time.perf_counter() - started)
        metrics.HEALTH_CHECKS.labels(name, result["status"]).inc()
        return result

    async def _database(self) -> dict[str, Any]:
        duration_ms = await self._db.ping()
        pool = self._db.pool_status()
        exhausted = pool["capacity"] > 0 and pool["open_connections"] >= pool["capacity"]
        slow = duration_ms > self._limits.database_slow * 1000
        return _component(
            _DEGRADED if slow or exhausted else _HEALTHY,
            open_connections=pool["open_connections"],
            query_duration_ms=round(duration_ms, 2),
        )

    async def _redis(self) -> dict[str, Any]:
        started = time.perf_counter()
        await self._queue.ping()
        duration_ms = (time.perf_counter() - started) * 1000
        slow = duration_ms > self._limits.redis_slow * 1000
        return _component(_DEGRADED if slow else _HEALTHY, ping_duration_ms=round(duration_ms, 2))

    async def _queue_ping(self) -> dict[str, Any]:
        await self._queue.ping()
        return _component(_HEALTHY)

    async def _schema(self) -> dict[str, Any]:
        # Cached for a while: readiness is probed every few seconds; the schema changes rarely.
        if time.monotonic() - self._schema_checked_at > _SCHEMA_CACHE_SECONDS:
            await migrate.require_current(self._db)
            self._schema_checked_at = time.monotonic()
        return _component(_HEALTHY)

    async def _queue_depth(self) -> dict[str, Any]:
        depth = await self._queue.depth()
        status = (
            _UNHEALTHY
            if depth > self._limits.queue_unhealthy_depth
            else _DEGRADED
            if depth > self._limits.queue_degraded_depth
            else _HEALTHY
        )
        return _component(status, queue_depth=depth)

    async def _runtime(self) -> dict[str, Any]:
        rss = runtime.resident_bytes()
        limit = self._memory_limit()
        status = _HEALTHY
        if limit:
            used = rss / limit * 100
            if used > self._limits.memory_unhealthy_percent:
                status = _UNHEALTHY
            elif used > self._limits.memory_degraded_percent:
                status = _DEGRADED
        return _component(
            status,
            runtime={
                "goroutines": runtime.task_count(),
                "memory_alloc_mb": round(rss / 1024 / 1024, 1),
            },
        )


class Gauges:
    """The gauges that describe state rather than count events, refreshed on each scrape (every
    process serves /metrics, so each reports what it sees), each read bounded in time."""

    def __init__(self, db: Database, queue: Queue, timeout: float = 2.0) -> None:
        self._db = db
        self._queue = queue
        self._dead_letters = DeadLetterStore(db)
        self._timeout = timeout

    async def refresh(self) -> None:
        runtime.refresh()
        pool = self._db.pool_status()
        metrics.DB_POOL_IN_USE.set(pool["open_connections"])
        metrics.DB_POOL_SIZE.set(pool["capacity"])
        reads: list[tuple[Any, Callable[[], Awaitable[float]]]] = [
            (metrics.QUEUE_DEPTH, self._queue.depth),
            (metrics.SCHEDULED_RETRIES, self._queue.scheduled_count),
            (metrics.OLDEST_MESSAGE_AGE, self._queue.oldest_age),
            (metrics.DLQ_DEPTH, self._dead_letters.depth),
        ]
        results = await asyncio.gather(
            *(asyncio.wait_for(read(), self._timeout) for _, read in reads),
            return_exceptions=True,
        )
        for (gauge, _), value in zip(reads, results, strict=True):
            if not isinstance(value, BaseException):
                gauge.set(value)


def _component(status: str, **details: Any) -> dict[str, Any]:
    return {"status": status, "details": details}
