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
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Gauge

from webhook_worker.config import HealthThresholds
from webhook_worker.control.base import CircuitState, Gate
from webhook_worker.errors import UnavailableError
from webhook_worker.observability import metrics, runtime
from webhook_worker.queue.base import Queue
from webhook_worker.storage import migrate
from webhook_worker.storage.backlog import destination_backlog
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import DeadLetterStore
from webhook_worker.storage.tools import ToolStore

log = logging.getLogger(__name__)

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
    process serves /metrics, so each reports what it sees), each read bounded in time.

    A read that fails (the database or the queue away, or too slow) leaves its gauges at their
    last value, so a scrape during an outage still answers; it is logged once when it starts
    failing and once when it works again, not at every scrape."""

    def __init__(
        self, db: Database, queue: Queue, timeout: float = 2.0, gate: Gate | None = None
    ) -> None:
        self._db = db
        self._queue = queue
        self._dead_letters = DeadLetterStore(db)
        # Only ids and flags are read from the tools: no secret is opened, none needs a key.
        self._tools = ToolStore(db)
        self._gate = gate
        self._timeout = timeout
        self._failing: set[str] = set()

    async def refresh(self) -> None:
        runtime.refresh()
        pool = self._db.pool_status()
        metrics.DB_POOL_IN_USE.set(pool["open_connections"])
        metrics.DB_POOL_SIZE.set(pool["capacity"])
        reads: dict[str, Callable[[], Awaitable[None]]] = {
            "queue depth": _into(metrics.QUEUE_DEPTH, self._queue.depth),
            "scheduled retries": _into(metrics.SCHEDULED_RETRIES, self._queue.scheduled_count),
            "oldest message age": _into(metrics.OLDEST_MESSAGE_AGE, self._queue.oldest_age),
            "dead letter depth": _into(metrics.DLQ_DEPTH, self._dead_letters.depth),
            "destination backlog": self._destination_backlog,
            "paused destinations": self._paused,
            "circuit states": self._circuits,
        }
        results = await asyncio.gather(
            *(asyncio.wait_for(read(), self._timeout) for read in reads.values()),
            return_exceptions=True,
        )
        for name, result in zip(reads, results, strict=True):
            self._note(name, result)

    async def _destination_backlog(self) -> None:
        counts = await destination_backlog(self._db)
        # A destination whose backlog emptied is absent from the answer: it reads 0 rather
        # than keeping the last count it had.
        for family in metrics.DESTINATION_BACKLOG.collect():
            for sample in family.samples:
                key = (sample.labels["tool_id"], sample.labels["destination_id"])
                if key not in counts:
                    metrics.DESTINATION_BACKLOG.labels(*key).set(0)
        for (tool_id, destination_id), count in counts.items():
            metrics.DESTINATION_BACKLOG.labels(tool_id, destination_id).set(count)

    async def _paused(self) -> None:
        flags = await self._tools.destination_flags()
        _publish(metrics.DESTINATION_PAUSED, {key: float(f.paused) for key, f in flags.items()})

    async def _circuits(self) -> None:
        """Every destination with a circuit breaker reads 0 (closed) unless the gate, which
        knows only the circuits that are not closed, says otherwise."""
        flags = await self._tools.destination_flags()
        open_now = await self._gate.circuits() if self._gate is not None else {}
        states = {key: float(CircuitState.CLOSED) for key, f in flags.items() if f.circuit_breaker}
        # A destination removed since its circuit opened is not shown: it no longer exists.
        states.update({key: float(state) for key, state in open_now.items() if key in flags})
        _publish(metrics.DESTINATION_CIRCUIT_STATE, states)

    def _note(self, name: str, result: BaseException | None) -> None:
        """Log the first failure of a read and its recovery."""
        if result is None:
            if name in self._failing:
                self._failing.discard(name)
                log.info("/metrics: the %s can be read again", name)
            return
        if name in self._failing:
            return
        self._failing.add(name)
        # An outage says what happened in one line; anything else is a bug: its traceback.
        expected = isinstance(result, (UnavailableError, TimeoutError))
        log.warning(
            "/metrics: cannot read the %s, keeping its last value: %s",
            name,
            str(result) or f"no answer within {self._timeout:g}s",
            exc_info=None if expected else result,
        )


def _publish(gauge: Gauge, values: Mapping[tuple[str, str], float]) -> None:
    """Set ``gauge`` per (tool id, destination id) to ``values``, and drop the series of
    destinations that are gone: a removed destination must not read as paused (or open)
    forever."""
    for family in gauge.collect():
        for sample in family.samples:
            key = (sample.labels["tool_id"], sample.labels["destination_id"])
            if key not in values:
                gauge.remove(*key)
    for (tool_id, destination_id), value in values.items():
        gauge.labels(tool_id, destination_id).set(value)


def _into(gauge: Gauge, read: Callable[[], Awaitable[float]]) -> Callable[[], Awaitable[None]]:
    """A read that sets ``gauge`` to what ``read`` returns."""

    async def set_gauge() -> None:
        gauge.set(await read())

    return set_gauge


def _component(status: str, **details: Any) -> dict[str, Any]:
    return {"status": status, "details": details}
