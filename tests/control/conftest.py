"""The ``gates`` fixture of the Gate contract suite: each implementation on a live backend
(Redis under a private key prefix, the database on SQLite and on PostgreSQL). Every gate it
builds has a connection of its own, as a gate in another worker process would."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL
from tests.support import free_port
from webhook_worker.constants import RedisKeys
from webhook_worker.control.base import Gate
from webhook_worker.control.database import DatabaseGate
from webhook_worker.control.redis import RedisGate
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import ordering_keys


@dataclass
class Gates:
    """One Gate implementation on a live backend."""

    name: str
    build: Callable[[], Gate]
    build_unreachable: Callable[[], Gate]
    assign: Callable[[str, str, str, int], Awaitable[None]]
    """What the queue does at enqueue: give an ordering key its positions up to ``n``."""

    def gate(self) -> Gate:
        """A gate sharing the backend's state with every other one."""
        return self.build()

    def unreachable(self) -> Gate:
        """A gate whose backend does not answer."""
        return self.build_unreachable()


@pytest.fixture
async def gates(
    live_backend: tuple[str, object], redis_prefix: str, tmp_path: Path
) -> AsyncIterator[Gates]:
    """Each contract test runs three times: Redis, SQLite and PostgreSQL."""
    kind, live = live_backend
    closers: list[Callable[[], Awaitable[None]]] = []
    keys = RedisKeys(redis_prefix)
    if kind == "redis":
        assert isinstance(live, aioredis.Redis)
        client = live

        def build_redis(url: str = REDIS_URL) -> Gate:
            own: aioredis.Redis = aioredis.Redis.from_url(url, socket_connect_timeout=1)
            closers.append(own.aclose)
            return RedisGate(own, keys)

        async def assign_redis(tool_id: str, destination_id: str, key: str, n: int) -> None:
            await client.hset(keys.order(tool_id, destination_id, key), "assigned", n)

        chosen = Gates(
            "redis",
            build_redis,
            lambda: build_redis(f"redis://127.0.0.1:{free_port()}/0"),
            assign_redis,
        )
    else:
        assert isinstance(live, Database)
        database = live
        url = live.engine.url.render_as_string(hide_password=False)

        def build_database(at: str = url) -> Gate:
            db = Database.from_url(at)
            closers.append(db.close)
            return DatabaseGate(db)

        def unreachable_database() -> Gate:
            if kind == "postgresql":
                return build_database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
            # The directory is removed once the engine exists: SQLite cannot open the file.
            gate = build_database(f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'gate.db'}")
            shutil.rmtree(tmp_path / "gone", ignore_errors=True)
            return gate

        async def assign_database(tool_id: str, destination_id: str, key: str, n: int) -> None:
            async with database.begin() as conn:
                await conn.execute(
                    ordering_keys.insert().values(
                        tool_id=tool_id,
                        destination_id=destination_id,
                        key=key,
                        assigned=n,
                        used_at=time.time(),
                    )
                )

        chosen = Gates(kind, build_database, unreachable_database, assign_database)
    yield chosen
    for close in closers:
        await close()
