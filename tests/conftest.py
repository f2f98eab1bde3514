"""Shared fixtures: a private PostgreSQL database, Redis key prefix and SQLite file per test run.

PostgreSQL and Redis are required: when they do not answer, the tests fail (they never skip).
Override their addresses with TEST_POSTGRES_URL and TEST_REDIS_URL.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from cryptography.fernet import Fernet

from tests.support import RedisServer
from webhook_worker.config import Settings
from webhook_worker.storage import migrate
from webhook_worker.storage.database import Database

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:8]
# Tools with secrets need SECRETS_KEY on PostgreSQL (the embedded SQLite runs keep plaintext).
SECRETS_KEY = Fernet.generate_key().decode()


def _postgres_server() -> str:
    return POSTGRES_URL.rsplit("/", 1)[0]


def _admin(sql: str) -> None:
    """Run one statement on the server's maintenance database (in a thread of its own, so it
    works whether or not an event loop is already running)."""

    async def execute() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, execute()).result()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """``postgresql://.../<db>``: a database created for this test run, dropped afterwards."""
    name = f"webhook_worker_test_{RUN_ID}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is required for the tests and did not answer at {POSTGRES_URL}: {exc}"
        )
    yield f"{_postgres_server()}/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_prefix() -> str:
    """A Redis key prefix private to one test."""
    return f"wwtest:{RUN_ID}:{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def redis_client(redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError) as exc:
        pytest.fail(f"Redis is required for the tests and did not answer at {REDIS_URL}: {exc}")
    yield client
    keys = [key async for key in client.scan_iter(match=f"{redis_prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def postgres_db(postgres_server_url: str) -> AsyncIterator[Database]:
    """A migrated PostgreSQL database, emptied before each test."""
    db = Database.from_url(postgres_server_url.replace("postgresql://", "postgresql+asyncpg://"))
    await migrate.upgrade(db)
    await _truncate(db)
    yield db
    await db.close()


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite database in a fresh file."""
    db = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
    await migrate.upgrade(db)
    yield db
    await db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Database:
    """Each test using this runs twice: on SQLite and on PostgreSQL."""
    fixture = "sqlite_db" if request.param == "sqlite" else "postgres_db"
    database: Database = request.getfixturevalue(fixture)
    return database


async def _truncate(db: Database) -> None:
    from sqlalchemy import text

    from webhook_worker.storage.schema import metadata

    names = ", ".join(table.name for table in metadata.sorted_tables if table.name != "metadata")
    async with db.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        await conn.execute(text("UPDATE metadata SET value = 0"))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server (on a free port, with AOF) that a test may stop and start again."""
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["redis", "sqlite", "postgresql"])
def live_backend(request: pytest.FixtureRequest) -> tuple[str, object]:
    """Every store a queue or a gate keeps its state in (their contract tests run on each):
    its name, and the Redis client (which deletes the test's keys afterwards) or the migrated,
    empty database."""
    names = {"redis": "redis_client", "sqlite": "sqlite_db", "postgresql": "postgres_db"}
    return request.param, request.getfixturevalue(names[request.param])


@pytest.fixture(params=["sqlite", "postgresql", "postgresql+redis"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str) -> Settings:
    """Settings for each deployment shape: embedded SQLite (database queue), PostgreSQL with
    the database queue, PostgreSQL with Redis Streams. Tests using it run three times."""
    fast = {
        "tools_refresh_interval": 0.1,
        "worker_reclaim_idle": 1.0,
        "worker_consumer_name": "test",
        # Forward targets in the tests are local servers, which the SSRF guard would refuse.
        "allow_private_forward": True,
    }
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path, **fast)  # type: ignore[arg-type]
    request.getfixturevalue("postgres_db")  # a migrated, emptied database
    url = request.getfixturevalue("postgres_server_url")
    if request.param == "postgresql":
        return Settings(database_url=url, secrets_key=SECRETS_KEY, **fast)  # type: ignore[arg-type]
    request.getfixturevalue("redis_client")  # cleans the prefix up afterwards
    redis_addr = REDIS_URL.split("://", 1)[1].split("/", 1)[0]
    return Settings(
        database_url=url,
        secrets_key=SECRETS_KEY,
        redis_addr=redis_addr,
        redis_key_prefix=redis_prefix,
        **fast,  # type: ignore[arg-type]
    )
