"""The retention soak (``bench --retention``): how big the database is while old events expire,
and whether ingest slows down while the retention sweep runs.

Two loops run beside the load:

- every ``every`` seconds (30 by default) a :class:`StorageSample`: the size of the database
  (``pg_database_size`` on PostgreSQL; the SQLite file with its ``-wal`` and ``-shm``), the
  events stored (every tool's), and how many sweeps ended since the previous sample;
- every second, the worker's ``/metrics``: a sweep is seen when
  ``webhook_retention_last_sweep_timestamp_seconds`` moves, and it lasted
  ``webhook_retention_sweep_duration_seconds`` (the last value of a gauge, or the growth of a
  histogram's sum over its count).

The load generator keeps each request's latency by the second it was due (``LoadPlan.timeline``);
:func:`latency_split` then compares the seconds that overlap a sweep with the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from sqlalchemy import func, select

from webhook_worker.bench.deployment import Deployment
from webhook_worker.bench.observe import parse_metrics
from webhook_worker.storage import footprint
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import events

LAST_SWEEP: Final = "webhook_retention_last_sweep_timestamp_seconds"
SWEEP_DURATION: Final = "webhook_retention_sweep_duration_seconds"
MARGIN: Final = 1.0
"""Seconds either side of a sweep that still count as during it (the timestamps are read once a
second, and a request due just before a sweep may be answered while it runs)."""


@dataclass(frozen=True, slots=True)
class StorageSample:
    t: float
    """Seconds since the measured load started."""
    bytes: int
    events: int
    sweeps: int
    """Sweeps that ended since the previous sample."""


@dataclass(frozen=True, slots=True)
class Sweep:
    ended_at: float
    """Unix time (``webhook_retention_last_sweep_timestamp_seconds``)."""
    duration_s: float | None

    @property
    def span(self) -> tuple[float, float]:
        """When it ran, widened by :data:`MARGIN`."""
        return (self.ended_at - (self.duration_s or 0.0) - MARGIN, self.ended_at + MARGIN)


class SweepWatch:
    """Sweeps seen in successive ``/metrics`` pages of the worker."""

    def __init__(self) -> None:
        self.sweeps: list[Sweep] = []
        self._last: float | None = None
        self._sum: float | None = None
        self._count: float | None = None

    def update(self, metrics: dict[str, float]) -> Sweep | None:
        """Read one page; the sweep that ended since the previous one, if any."""
        last = metrics.get(LAST_SWEEP)
        duration = metrics.get(SWEEP_DURATION)
        total, count = metrics.get(f"{SWEEP_DURATION}_sum"), metrics.get(f"{SWEEP_DURATION}_count")
        if duration is None and total is not None and count is not None:
            if self._sum is not None and self._count is not None and count > self._count:
                duration = (total - self._sum) / (count - self._count)
            self._sum, self._count = total, count
        if not last or last == self._last:
            self._last = last
            return None
        self._last = last
        sweep = Sweep(last, None if duration is None else round(duration, 3))
        self.sweeps.append(sweep)
        return sweep


class StorageWatch:
    """Reads the size of the deployment's database and the events in it."""

    def __init__(self, deployment: Deployment) -> None:
        url = deployment.settings.sqlalchemy_url()
        self._sqlite = Path(url.split(":///", 1)[1]) if url.startswith("sqlite") else None
        self._db = None if self._sqlite else Database.from_url(url, pool_size=1)
        self._metrics_url = deployment.metrics_url
        self._http = httpx.AsyncClient(timeout=5)
        self._count = _SqliteCount(self._sqlite) if self._sqlite else None

    async def close(self) -> None:
        await self._http.aclose()
        if self._db is not None:
            await self._db.close()
        if self._count is not None:
            self._count.close()

    async def size(self) -> int:
        if self._sqlite is not None:
            return footprint.sqlite_size(self._sqlite)
        assert self._db is not None
        return await footprint.database_size(self._db)

    async def stored(self) -> int:
        if self._count is not None:
            return await asyncio.to_thread(self._count.count)
        assert self._db is not None
        async with self._db.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(events)) or 0)

    async def metrics(self) -> dict[str, float]:
        if not self._metrics_url:
            return {}
        try:
            response = await self._http.get(self._metrics_url)
        except httpx.TransportError:
            return {}
        return parse_metrics(response.text) if response.status_code == 200 else {}


class _SqliteCount:
    """Counts events with a plain read transaction (see observe.py: never blocks the writer)."""

    def __init__(self, path: Path) -> None:
        from sqlalchemy import create_engine

        self._engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    def count(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(events)) or 0)

    def close(self) -> None:
        self._engine.dispose()


async def watch(
    storage: StorageWatch,
    since: float,
    done: asyncio.Event,
    samples: list[StorageSample],
    sweeps: SweepWatch,
    every: float = 30.0,
) -> None:
    """Sample the storage every ``every`` seconds (and once at the start and the end), and the
    sweep metrics every second, until ``done`` is set."""
    await _sample(storage, since, samples, sweeps)
    next_sample = time.monotonic() + every
    while not done.is_set():
        sweeps.update(await storage.metrics())
        if time.monotonic() >= next_sample:
            await _sample(storage, since, samples, sweeps)
            next_sample += every
        try:
            await asyncio.wait_for(done.wait(), 1.0)
        except TimeoutError:
            continue
    sweeps.update(await storage.metrics())
    if time.monotonic() > next_sample - every + 1:  # not just sampled
        await _sample(storage, since, samples, sweeps)


async def _sample(
    storage: StorageWatch, since: float, into: list[StorageSample], sweeps: SweepWatch
) -> None:
    counted = sum(sample.sweeps for sample in into)
    into.append(
        StorageSample(
            t=round(time.time() - since, 1),
            bytes=await storage.size(),
            events=await storage.stored(),
            sweeps=len(sweeps.sweeps) - counted,
        )
    )


def latency_split(
    timeline: Sequence[Sequence[float]], started_at: float, sweeps: Sequence[Sweep]
) -> dict[str, Any]:
    """Ingest latency (ms) in the seconds of the load that overlap a sweep and in the others:
    ``timeline[i]`` holds the latencies of the requests due in second ``i`` after
    ``started_at``. The ratio of the p99s says what a sweep costs ingest."""
    spans = [sweep.span for sweep in sweeps]
    during: list[float] = []
    between: list[float] = []
    seconds = {"during": 0, "between": 0}
    for index, latencies in enumerate(timeline):
        low, high = started_at + index, started_at + index + 1
        overlaps = any(start < high and end > low for start, end in spans)
        (during if overlaps else between).extend(latencies)
        seconds["during" if overlaps else "between"] += 1
    windows = {
        "during_sweeps": {**_summary(during), "seconds": seconds["during"]},
        "between_sweeps": {**_summary(between), "seconds": seconds["between"]},
    }
    p99_during = windows["during_sweeps"].get("p99")
    p99_between = windows["between_sweeps"].get("p99")
    ratio = round(p99_during / p99_between, 3) if p99_during and p99_between else None
    return {**windows, "p99_ratio": ratio}


def _summary(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"requests": 0}
    ordered = sorted(latencies)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))], 3)

    return {"requests": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": ordered[last]}


def growth(samples: Sequence[StorageSample], settle: float) -> dict[str, Any]:
    """Whether the size stopped growing: the size at ``settle`` seconds (the first sample at or
    after it) against the last and the largest after it."""
    after = [sample for sample in samples if sample.t >= settle]
    if len(after) < 2:
        return {"settle_s": settle, "settled_bytes": None, "last_bytes": None, "max_bytes": None,
                "growth_after_settle": None}  # fmt: skip
    first, last = after[0], after[-1]
    largest = max(sample.bytes for sample in after)
    return {
        "settle_s": settle,
        "settled_bytes": first.bytes,
        "last_bytes": last.bytes,
        "max_bytes": largest,
        "growth_after_settle": round(last.bytes / first.bytes - 1, 3) if first.bytes else None,
    }


def part(
    retention: float,
    interval: float,
    samples: Sequence[StorageSample],
    sweeps: SweepWatch,
    split: dict[str, Any],
) -> dict[str, Any]:
    """The report's ``lifecycle``."""
    return {
        "retention_s": retention,
        "retention_interval_s": interval,
        "storage": [asdict(sample) for sample in samples],
        "sweeps": [asdict(sweep) for sweep in sweeps.sweeps],
        "size": growth(samples, settle=2 * retention + interval),
        "latency_ms": split,
    }
