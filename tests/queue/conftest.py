"""The ``backend`` fixture of the contract suite: each implementation of the Queue Protocol on a
live backend (Redis Streams on the test Redis under a private key prefix, the database queue on
SQLite and on PostgreSQL), and the same implementation pointed at a backend that is down."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
import redis

from tests.conftest import REDIS_URL
from tests.queue.support import NOT_YET, TTL
from tests.support import free_port
from webhook_worker.config import Settings
from webhook_worker.errors import DatabaseUnavailableError
from webhook_worker.queue.base import Queue
from webhook_worker.queue.database import DatabaseQueue
from webhook_worker.queue.redis_connection import connect
from webhook_worker.queue.redis_streams import RedisStreamsQueue
from webhook_worker.storage.database import Database


class ContractQueue(Queue, Protocol):
    """The Protocol plus what both implementations also offer the health checks."""

    async def pending_count(self) -> int: ...


@dataclass
class Backend:
    """One queue implementation on a live backend. Every :meth:`queue` has a connection of its
    own, as a queue in another process would; all are closed after the test."""

    name: str
    remedy: str
    """The setting an unavailability message must name, so the reader knows what to check."""
    cause: type[BaseException]
    """What the QueueUnavailableError is raised from."""
    build: Callable[[str, float, float], Awaitable[ContractQueue]]
    build_unreachable: Callable[[], Awaitable[ContractQueue]]
    opened: list[ContractQueue] = field(default_factory=list)

    async def queue(
        self, consumer: str = "c1", *, reclaim_idle: float = NOT_YET, ttl: float = TTL
    ) -> ContractQueue:
        """A queue for ``consumer`` sharing the backend's contents with every other."""
        queue = await self.build(consumer, reclaim_idle, ttl)
        self.opened.append(queue)
        return queue

    async def unreachable(self) -> ContractQueue:
        """A queue whose backend does not answer (nothing listens, or the file is gone)."""
        queue = await self.build_unreachable()
        self.opened.append(queue)
        return queue


@pytest.fixture
async def backend(
    live_backend: tuple[str, object], redis_prefix: str, tmp_path: Path
) -> AsyncIterator[Backend]:
    """Each contract test runs three times: Redis Streams, the database queue on SQLite, and
    the database queue on PostgreSQL."""
    kind, live = live_backend
    databases: list[Database] = []
    if kind == "redis":
        addr = REDIS_URL.split("://", 1)[1].split("/", 1)[0]

        async def build_redis(consumer: str, reclaim_idle: float, ttl: float) -> ContractQueue:
            queue = RedisStreamsQueue(
                connect(Settings(redis_addr=addr)),
                redis_prefix,
                consumer,
                ttl,
                reclaim_idle,
                owns_client=True,
            )
            await queue.setup()
            return queue

        async def unreachable_redis() -> ContractQueue:
            client = connect(Settings(redis_addr=f"127.0.0.1:{free_port()}"))
            return RedisStreamsQueue(client, "p", "c1", TTL, NOT_YET, owns_client=True)

        chosen = Backend("redis", "REDIS_ADDR", redis.RedisError, build_redis, unreachable_redis)
    else:
        assert isinstance(live, Database)
        url = live.engine.url.render_as_string(hide_password=False)

        async def build_database(consumer: str, reclaim_idle: float, ttl: float) -> ContractQueue:
            databases.append(Database.from_url(url))
            return DatabaseQueue(databases[-1], consumer, ttl, reclaim_idle)

        async def unreachable_database() -> ContractQueue:
            if kind == "postgresql":
                nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x"
            else:
                # The directory is removed once the engine exists: SQLite cannot open the file.
                gone = tmp_path / "gone"
                nowhere = f"sqlite+aiosqlite:///{gone / 'queue.db'}"
            databases.append(Database.from_url(nowhere))
            shutil.rmtree(tmp_path / "gone", ignore_errors=True)
            return DatabaseQueue(databases[-1], "c1", TTL, NOT_YET)

        chosen = Backend(
            kind,
            "DATABASE_URL",
            DatabaseUnavailableError,
            build_database,
            unreachable_database,
        )
    yield chosen
    for queue in chosen.opened:
        await queue.close()
    for database in databases:
        await database.close()
