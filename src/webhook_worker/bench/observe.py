"""What the benchmark reads from the deployment while and after the load runs: events stored
for its tool, events delivered to each destination on the sink, queue depth, and the memory and
CPU time of the processes (``/proc/<pid>/status`` and ``stat``).

Queue depth is read where the queue lives (the stream's length, or the queue table's rows:
waiting plus in flight, as ``webhook_queue_depth`` counts), not from a process's ``/metrics``,
whose gauges a busy process refreshes late.

The embedded SQLite file is read through a plain synchronous engine (in a thread): its reads
are plain read transactions, which in WAL mode never block the writer, whereas the service's
own engine begins every transaction as a writer.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Select, create_engine, func, select

from webhook_worker.bench.deployment import Child, Deployment
from webhook_worker.constants import RedisKeys
from webhook_worker.queue import redis_connection
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import events, queue_messages


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    """Seconds since the measured phase started."""
    queue_depth: int
    api_rss_mb: float | None
    worker_rss_mb: float | None


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What the sink has received so far, per destination id."""

    distinct: Mapping[str, int]
    """Distinct events (``webhook-id``) per destination."""
    requests: Mapping[str, int]
    """Requests per destination, retries and repeats included."""
    last_at: float | None
    """Unix time the sink received its latest request, any destination."""

    def since(self, baseline: Forwarded) -> Forwarded:
        """The counts added since ``baseline``."""
        return Forwarded(
            {dest: n - baseline.distinct.get(dest, 0) for dest, n in self.distinct.items()},
            {dest: n - baseline.requests.get(dest, 0) for dest, n in self.requests.items()},
            self.last_at,
        )

    @property
    def every_destination(self) -> int:
        """Events that reached every destination, as far as counts tell: the sink only hears
        from the benchmark's own tool, so a destination with N distinct ids has N of its
        events, and the smallest count is how many reached them all."""
        return min(self.distinct.values(), default=0)


class Observer:
    def __init__(
        self, deployment: Deployment, sink: Child | None = None, *, by_metrics: bool = False
    ) -> None:
        self._tool_id = deployment.tool.id
        # With retention on, stored events leave the table again: count what the worker says
        # it finished instead.
        self._metrics_url = deployment.metrics_url if by_metrics else None
        self._sink_url = sink.url if sink is not None else None
        self._destinations = deployment.destinations
        self._pids = dict(deployment.pids)
        if sink is not None:
            self._pids["sink"] = sink.pid
        settings = deployment.settings
        self._redis = redis_connection.connect(settings) if settings.uses_redis else None
        self._stream = RedisKeys(settings.redis_key_prefix).stream
        url = settings.sqlalchemy_url()
        self._sqlite = (
            create_engine(url.replace("+aiosqlite", ""), connect_args={"timeout": 30})
            if url.startswith("sqlite")
            else None
        )
        self._db = None if self._sqlite else Database.from_url(url, pool_size=2)
        self._http = httpx.AsyncClient(timeout=5)

    async def close(self) -> None:
        await self._http.aclose()
        if self._redis is not None:
            await self._redis.aclose()
        if self._db is not None:
            await self._db.close()
        if self._sqlite is not None:
            self._sqlite.dispose()

    async def stored(self) -> int:
        """Events of the tool in the events table (any status). A count over a table that grows
        by thousands of rows a second is not free: call it when the queue is empty, or seldom.
        With ``by_metrics``: the events the worker finished (``webhook_events_processed_total``
        of the tool), as its ``/metrics`` says."""
        if self._metrics_url is not None:
            page = await self._http.get(self._metrics_url)
            page.raise_for_status()
            finished = parse_metrics(page.text, tool_id=self._tool_id)
            return int(finished.get("webhook_events_processed_total", 0))
        query = select(func.count()).select_from(events).where(events.c.tool_id == self._tool_id)
        return int(await self._scalar(query) or 0)

    async def last_stored_at(self) -> float | None:
        """Unix time of the tool's latest ``processed_at``."""
        query = select(func.max(events.c.processed_at)).where(events.c.tool_id == self._tool_id)
        value = await self._scalar(query)
        return _epoch(value) if isinstance(value, datetime) else None

    async def queue_depth(self) -> int:
        """Messages in the queue, waiting or in flight (every tool's)."""
        if self._redis is not None:
            return int(await self._redis.xlen(self._stream))
        return int(await self._scalar(select(func.count()).select_from(queue_messages)) or 0)

    async def _scalar(self, query: Select[Any]) -> Any:
        if self._sqlite is not None:
            return await asyncio.to_thread(self._sqlite_scalar, query)
        assert self._db is not None
        async with self._db.connect() as conn:
            return await conn.scalar(query)

    def _sqlite_scalar(self, query: Select[Any]) -> Any:
        assert self._sqlite is not None
        with self._sqlite.connect() as conn:
            return conn.scalar(query)

    async def forwarded(self) -> Forwarded:
        """What the sink received for each of the tool's destinations (zeros without a
        sink)."""
        answer: dict[str, dict[str, Any]] = {}
        if self._sink_url is not None:
            answer = (await self._http.get(f"{self._sink_url}/count")).json()
        counts = {dest: answer.get(dest, {}) for dest in self._destinations}
        return Forwarded(
            {dest: int(c.get("distinct", 0)) for dest, c in counts.items()},
            {dest: int(c.get("received", 0)) for dest, c in counts.items()},
            max((c["last_at"] for c in counts.values() if c.get("last_at")), default=None),
        )

    def rss_mb(self, role: str, field: str = "VmRSS") -> float | None:
        """Resident memory of the ``api`` or ``worker`` process (``VmHWM``: its peak)."""
        pid = self._pids.get(role)
        return None if pid is None else process_memory_mb(pid, field)

    def cpu_seconds(self) -> dict[str, float | None]:
        """CPU time used so far by the ``api`` and ``worker`` processes (and the ``sink``
        when there is one), and by the whole machine (every process, the database and Redis
        included)."""
        used: dict[str, float | None] = {
            role: process_cpu_s(pid) for role, pid in self._pids.items() if role in ROLES
        }
        used["machine"] = machine_busy_s()
        return used

    async def sample(self, since: float) -> Sample:
        return Sample(
            t=round(time.time() - since, 2),
            queue_depth=await self.queue_depth(),
            api_rss_mb=self.rss_mb("api"),
            worker_rss_mb=self.rss_mb("worker"),
        )


ROLES = ("api", "worker", "sink")
_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds of a process (``/proc/<pid>/stat``); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; the fields after its closing parenthesis do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot (``/proc/stat``: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICKS


def process_memory_mb(pid: int, field: str = "VmRSS") -> float | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process, in MiB; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


async def sample_until(
    observer: Observer, since: float, done: asyncio.Event, into: list[Sample], every: float = 1.0
) -> None:
    """Append a sample every ``every`` seconds until ``done`` is set."""
    while not done.is_set():
        into.append(await observer.sample(since))
        try:
            await asyncio.wait_for(done.wait(), every)
        except TimeoutError:
            continue


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(body: str, **labels: str) -> dict[str, float]:
    """The samples of a Prometheus text page by name, summed over the series whose labels
    include ``labels``."""
    values: dict[str, float] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name, _, label_text = name_part.partition("{")
        if labels:
            found = dict(_LABEL.findall(label_text))
            if any(found.get(key) != wanted for key, wanted in labels.items()):
                continue
        try:
            number = float(value)
        except ValueError:
            continue
        if math.isfinite(number):
            values[name] = values.get(name, 0.0) + number
    return values
