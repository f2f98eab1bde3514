"""What the chaos tests share: their sizes, a cluster of real ``webhook-worker`` processes, a load
generator that remembers every answer, probes of the queue, and the tally of what was stored.

Sizes (environment variables; ``make chaos`` sets the full ones):

================================  =====  ======  ============================================
variable                          CI     full    what
================================  =====  ======  ============================================
``CHAOS_EVENTS``                  3000   20000   events of the SIGKILL test; the fan-out SIGKILL
                                                 test sends a third, the others half
``CHAOS_KILL_INTERVAL``           2      3       seconds between two SIGKILLs of a worker
``CHAOS_REDIS_OUTAGE``            3      10      seconds the private Redis stays down
``CHAOS_PG_OUTAGE``               8      30      seconds the private PostgreSQL stays down
``CHAOS_FORWARD_EVENTS``          600    3000    events of the forward-target test
``CHAOS_HANG_TIMEOUT``            10     30      forward timeout of the tool whose target hangs
``CHAOS_LABEL``                   ci     full    names the results file
================================  =====  ======  ============================================
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from sqlalchemy import func, select

from tests.support import Processes, eventually, free_port
from webhook_worker.constants import REDIS_GROUP, RedisKeys
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import attempts, dead_letters, events, queue_messages

T = TypeVar("T")

RESULTS_DIR = Path(__file__).parent / ".results"
RESULTS: list[dict[str, Any]] = []
"""Every summary recorded in this session (conftest writes them out and prints them)."""


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        pytest.fail(f"{name}={raw!r} is not a number")


@dataclass(frozen=True)
class Sizes:
    events: int
    kill_interval: float
    redis_outage: float
    pg_outage: float
    forward_events: int
    hang_timeout: float
    label: str

    @classmethod
    def from_env(cls) -> Sizes:
        return cls(
            events=int(_number("CHAOS_EVENTS", 3000)),
            kill_interval=_number("CHAOS_KILL_INTERVAL", 2.0),
            redis_outage=_number("CHAOS_REDIS_OUTAGE", 3.0),
            pg_outage=_number("CHAOS_PG_OUTAGE", 8.0),
            forward_events=int(_number("CHAOS_FORWARD_EVENTS", 600)),
            hang_timeout=_number("CHAOS_HANG_TIMEOUT", 10.0),
            label=os.environ.get("CHAOS_LABEL", "ci").strip() or "ci",
        )


async def until(
    check: Callable[[], Awaitable[T]],
    within: float,
    what: str,
    interval: float = 0.1,
    details: Callable[[], str] | None = None,
) -> T:
    """:func:`tests.support.eventually`, polling every 0.1 s unless told: the checks here
    query tables and queues that a busy run keeps growing."""
    return await eventually(check, within, what, interval=interval, details=details)


# The processes -----------------------------------------------------------------------------


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    name: str
    health: str
    """``http://127.0.0.1:PORT`` of its health and metrics listener."""


class Cluster:
    """``webhook-worker api`` and any number of ``webhook-worker worker`` processes sharing a
    database and a queue, all on loopback."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[Worker] = []
        self._names = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.processes.env['API_ADDR']}"

    def migrate(self) -> None:
        result = self.processes.cli("migrate")
        assert result.returncode == 0, result.stdout + result.stderr

    async def start_api(self) -> subprocess.Popen[bytes]:
        self.api = self.processes.start("api")
        await self._until_live(self.api, self.base_url, "the API")
        return self.api

    async def start_worker(self, **env: str) -> Worker:
        self._names += 1
        name = f"chaos-w{self._names}"
        health = f"127.0.0.1:{free_port()}"
        process = self.processes.start(
            "worker", WORKER_CONSUMER_NAME=name, HEALTH_ENDPOINT=health, **env
        )
        worker = Worker(process, name, f"http://{health}")
        self.workers.append(worker)
        await self._until_live(process, worker.health, f"worker {name}")
        return worker

    async def _until_live(self, process: subprocess.Popen[bytes], base: str, what: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:

            async def live() -> bool:
                if process.poll() is not None:
                    return True  # dead: stop waiting; the assert below says why
                try:
                    return (await client.get("/health/live")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(live, within=60, what=f"{what} to start", details=self.output)
        assert process.poll() is None, f"{what} exited with {process.returncode}\n{self.output()}"

    def kill(self, worker: Worker) -> None:
        """SIGKILL: no shutdown at all; whatever it held stays pending in the queue."""
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        self.workers.remove(worker)

    async def kill_while(
        self,
        sending: asyncio.Task[None],
        interval: float,
        min_kills: int,
        before_kill: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """SIGKILL the oldest worker every ``interval`` seconds and start a new one at once,
        until ``sending`` is done and at least ``min_kills`` workers died; ``before_kill`` runs
        just before each kill (to note what was in flight). Returns how many were killed."""
        kills = 0
        while not sending.done() or kills < min_kills:
            # Pacing the faults; the wait ends early when the load is sent.
            await asyncio.wait({sending}, timeout=interval)
            if sending.done() and kills >= min_kills:
                break
            if before_kill is not None:
                await before_kill()
            self.kill(self.workers[0])
            kills += 1
            await self.start_worker()
        return kills

    def terminate_all(self) -> dict[str, int | str]:
        """SIGTERM every running process; their exit codes (each should be 0)."""
        running = [(w.name, w.process) for w in self.workers]
        if self.api is not None:
            running.append(("api", self.api))
        for _, process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return {name: self.processes.exit_code(process, within=40) for name, process in running}

    def output(self) -> str:
        return self.processes.output()


async def add_tool(client: httpx.AsyncClient, definition: dict[str, Any]) -> None:
    response = await client.post("/api/v1/tools", json=definition)
    assert response.status_code == 201, response.text


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


# The load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    n: int
    tool: str
    status: int | None
    """None: no HTTP answer at all (connection refused, reset, timeout)."""
    event_id: str | None
    sent_at: float
    answered_at: float
    error: str = ""


class Load:
    """Posts numbered JSON events (``{"n": N, "run": TAG}``; every body distinct, so the delivery
    id, a hash of the body, is too) and keeps every answer."""

    def __init__(self, client: httpx.AsyncClient, concurrency: int = 32) -> None:
        self.client = client
        self.tag = uuid.uuid4().hex[:12]
        self.answers: list[Answer] = []
        self.tools: dict[int, str] = {}
        self._limit = asyncio.Semaphore(concurrency)

    def body(self, n: int) -> bytes:
        return orjson.dumps({"n": n, "run": self.tag, "pad": "x" * 64})

    async def send(self, n: int, tool: str = "load") -> Answer:
        self.tools[n] = tool
        async with self._limit:
            sent_at = time.monotonic()
            try:
                response = await self.client.post(
                    f"/webhooks/{tool}",
                    content=self.body(n),
                    headers={"Content-Type": "application/json"},
                )
            except httpx.TransportError as exc:
                answer = Answer(n, tool, None, None, sent_at, time.monotonic(), repr(exc))
            else:
                event_id = None
                if response.status_code in (200, 202):
                    event_id = response.json()["event_id"]
                answer = Answer(
                    n,
                    tool,
                    response.status_code,
                    event_id,
                    sent_at,
                    time.monotonic(),
                    "" if response.status_code in (200, 202) else response.text[:200],
                )
        self.answers.append(answer)
        return answer

    async def run(
        self,
        numbers: Iterable[int],
        tool: Callable[[int], str] = lambda n: "load",
        rate: float | None = None,
    ) -> None:
        """Send every number, at most ``rate`` per second when given (spread over time so that
        a fault injected meanwhile hits a steady stream), else as fast as the API takes them."""
        started = time.monotonic()
        tasks = []
        for i, n in enumerate(numbers):
            if rate is not None:
                due = started + i / rate
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)  # pacing the stream, not waiting for a condition
            tasks.append(asyncio.create_task(self.send(n, tool(n))))
        await asyncio.gather(*tasks)

    @property
    def accepted(self) -> dict[str, int]:
        """Event id -> number, for every 202."""
        return {a.event_id: a.n for a in self.answers if a.status == 202 and a.event_id}

    def statuses(self) -> Counter[int | None]:
        return Counter(a.status for a in self.answers)

    def numbers(self) -> set[int]:
        return {a.n for a in self.answers}


# What the database holds ------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredEvent:
    id: str
    tool_id: str
    status: str
    n: int | None
    attempt_count: int


async def stored_events(db: Database, tag: str) -> list[StoredEvent]:
    """The events of this load (by run tag) in the events table."""
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    events.c.id,
                    events.c.tool_id,
                    events.c.status,
                    events.c.body,
                    events.c.attempt_count,
                )
            )
        ).all()
    found = []
    for row in rows:
        try:
            body = orjson.loads(row.body)
        except orjson.JSONDecodeError:
            continue
        if isinstance(body, dict) and body.get("run") == tag:
            found.append(
                StoredEvent(row.id, row.tool_id, row.status, body.get("n"), row.attempt_count)
            )
    return found


async def stored_count(db: Database) -> int:
    async with db.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(events)) or 0)


async def attempt_outcomes(db: Database) -> dict[str, list[tuple[str, str | None]]]:
    """Event id -> [(outcome, error_class), ...] in attempt order."""
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                select(attempts.c.event_id, attempts.c.outcome, attempts.c.error_class).order_by(
                    attempts.c.event_id, attempts.c.attempt, attempts.c.id
                )
            )
        ).all()
    found: dict[str, list[tuple[str, str | None]]] = {}
    for row in rows:
        found.setdefault(row.event_id, []).append((row.outcome, row.error_class))
    return found


async def dead_letter_classes(db: Database) -> dict[str, str]:
    """Event id -> error class of its dead letter."""
    async with db.connect() as conn:
        rows = (
            await conn.execute(select(dead_letters.c.event_id, dead_letters.c.error_class))
        ).all()
    return {row.event_id: row.error_class for row in rows}


# The queue ----------------------------------------------------------------------------------------


class QueueProbe:
    """Reads how much the queue still holds, straight from Redis or the queue table."""

    def __init__(
        self,
        db: Database | None = None,
        redis: aioredis.Redis | None = None,
        prefix: str = "",
    ) -> None:
        self._db = db
        self._redis = redis
        keys = RedisKeys(prefix)
        self.stream = keys.stream
        self.retry = keys.retry

    async def state(self) -> dict[str, int]:
        """``depth``: messages in the queue (waiting or handed out); ``pending``: handed out and
        not acknowledged; ``scheduled``: waiting for a retry."""
        if self._redis is not None:
            depth = int(await self._redis.xlen(self.stream))
            try:
                pending = int((await self._redis.xpending(self.stream, REDIS_GROUP))["pending"])
            except ResponseError:  # no group yet
                pending = 0
            scheduled = int(await self._redis.zcard(self.retry))
            return {"depth": depth, "pending": pending, "scheduled": scheduled}
        assert self._db is not None
        now = time.time()
        async with self._db.connect() as conn:
            queued = await conn.scalar(select(func.count()).select_from(queue_messages))
            handed_out = await conn.scalar(
                select(func.count())
                .select_from(queue_messages)
                .where(queue_messages.c.locked_until > now)
            )
            waiting = await conn.scalar(
                select(func.count())
                .select_from(queue_messages)
                .where(queue_messages.c.available_at > now)
            )
        return {
            "depth": int(queued or 0),
            "pending": int(handed_out or 0),
            "scheduled": int(waiting or 0),
        }

    async def pending_of(self, consumer: str) -> int:
        """Messages handed to ``consumer`` and not acknowledged (Redis only)."""
        assert self._redis is not None
        try:
            summary = await self._redis.xpending(self.stream, REDIS_GROUP)
        except ResponseError:
            return 0
        for entry in summary.get("consumers") or []:
            name = entry["name"]
            if (name.decode() if isinstance(name, bytes) else name) == consumer:
                return int(entry["pending"])
        return 0

    async def drained(self) -> dict[str, int] | None:
        """The state when nothing is left (truthy), else None."""
        state = await self.state()
        return state if not any(state.values()) else None


# The tally ----------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Accepted versus stored: what got lost, what got stored twice."""

    load: Load
    stored: list[StoredEvent]
    started: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stored_ids(self) -> set[str]:
        return {event.id for event in self.stored}

    @property
    def lost(self) -> set[str]:
        return set(self.load.accepted) - self.stored_ids

    @property
    def duplicated(self) -> int:
        """Rows beyond the first for the same webhook (same number)."""
        counts = Counter(event.n for event in self.stored)
        return sum(count - 1 for count in counts.values() if count > 1)

    def summary(self, test: str, **extra: Any) -> dict[str, Any]:
        statuses = self.load.statuses()
        return {
            "test": test,
            "sent": len(self.load.numbers()),
            "requests": len(self.load.answers),
            "accepted_202": statuses.get(202, 0),
            "duplicate_200": statuses.get(200, 0),
            "unavailable_503": statuses.get(503, 0),
            "other_answers": sum(c for s, c in statuses.items() if s not in (200, 202, 503)),
            "stored": len(self.stored),
            "duplicated": self.duplicated,
            "lost": len(self.lost),
            "duration_s": round(time.monotonic() - self.started, 1),
            **self.extra,
            **extra,
        }


def record(summary: dict[str, Any]) -> None:
    """Keep a test's figures for the session's results file, and print them (pytest -s)."""
    summary = {
        "label": Sizes.from_env().label,
        **summary,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.append(summary)
    print("CHAOS " + json.dumps(summary))
