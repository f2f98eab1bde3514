"""Assembly: builds the database, queue, tool cache and services a process needs, and closes
them again. The only module that knows which queue implementation the settings select."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis

from webhook_worker.config import Settings
from webhook_worker.constants import TABLE_QUEUE, RedisKeys
from webhook_worker.control.base import Gate
from webhook_worker.control.database import DatabaseGate
from webhook_worker.control.redis import RedisGate
from webhook_worker.errors import DatabaseUnavailableError, WebhookWorkerError
from webhook_worker.queue.base import Queue
from webhook_worker.queue.batcher import EnqueueBatcher
from webhook_worker.queue.database import DatabaseQueue
from webhook_worker.queue.redis_connection import connect
from webhook_worker.queue.redis_streams import RedisStreamsQueue
from webhook_worker.replay import Replayer
from webhook_worker.storage import migrate
from webhook_worker.storage.database import Database
from webhook_worker.storage.events import EventStore
from webhook_worker.storage.retention import Retention
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.cache import ToolCache
from webhook_worker.tools.secrets import SecretsAtRest
from webhook_worker.tools.service import ToolService
from webhook_worker.worker.consumer import Worker
from webhook_worker.worker.forwarder import Forwarder
from webhook_worker.worker.processor import Processor
from webhook_worker.worker.target_guard import TargetGuard

log = logging.getLogger(__name__)


class StartupError(WebhookWorkerError):
    """A dependency is unreachable at start. The message says which and where."""


@dataclass
class Runtime:
    settings: Settings
    db: Database
    queue: Queue
    tools: ToolCache
    tool_service: ToolService
    events: EventStore
    batcher: EnqueueBatcher
    forwarder: Forwarder
    gate: Gate
    """Delivery control shared by every process: in Redis with the Redis queue, else in the
    database."""

    def worker(self) -> Worker:
        s = self.settings
        return Worker(
            self.queue,
            self.processor(),
            batch_size=s.worker_batch_size,
            concurrency=s.worker_concurrency,
            tool_concurrency=s.worker_tool_concurrency,
            max_deliveries=s.worker_max_deliveries,
            reclaim_interval=max(s.worker_reclaim_idle / 2, 0.05),
            lease_renewal=max(s.worker_reclaim_idle / 4, 0.03),
            shutdown_timeout=s.worker_shutdown_timeout,
            replayer=self.replayer,
            dlq_auto_retry_max=s.dlq_auto_retry_max,
            dlq_auto_retry_interval=s.dlq_auto_retry_interval,
            gate=self.gate,
            tools_refresh_interval=s.tools_refresh_interval,
            retention=Retention(self.db, s.events_retention, s.retention_interval),
            tools=self.tools.all,
        )

    def processor(self) -> Processor:
        return Processor(
            self.db, self.tools, self.forwarder, self.settings, *self.queue_destination()
        )

    def queue_destination(self) -> tuple[str, str]:
        """``(messaging system, destination name)`` for trace attributes."""
        if self.settings.uses_redis:
            return "redis", RedisKeys(self.settings.redis_key_prefix).stream
        return self.db.dialect, TABLE_QUEUE

    @property
    def replayer(self) -> Replayer:
        return Replayer(self.db, self.queue)

    async def start(self) -> None:
        """Start the background parts: the tool refresh and the ingest batcher."""
        self.tools.start()
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.close()
        await self.tools.close()


@asynccontextmanager
async def database(settings: Settings, *, migrate_first: bool = False) -> AsyncIterator[Database]:
    """The database, reachable and at the current schema (migrated first if asked)."""
    db = Database.from_settings(settings)
    try:
        with _reachable(settings):
            if migrate_first:
                await migrate.upgrade(db)
            else:
                await migrate.require_current(db)
        yield db
    finally:
        await db.close()


async def apply_migrations(settings: Settings) -> tuple[str | None, str]:
    """``webhook-worker migrate``: returns the revisions before and after."""
    db = Database.from_settings(settings)
    try:
        with _reachable(settings):
            return await migrate.upgrade(db)
    finally:
        await db.close()


@contextmanager
def _reachable(settings: Settings) -> Iterator[None]:
    """Turn "cannot connect" into a StartupError naming the database (no traceback)."""
    try:
        yield
    except DatabaseUnavailableError as exc:
        cause = exc.__cause__ or exc
        raise StartupError(
            f"cannot reach the database ({settings.describe_database()}): {_first_line(cause)}"
        ) from None


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, migrate_first: bool = False
) -> AsyncIterator[Runtime]:
    secrets = SecretsAtRest.from_settings(settings)  # a bad SECRETS_KEY stops us before I/O
    async with database(settings, migrate_first=migrate_first) as db:
        if db.file_warning is not None:
            log.warning(db.file_warning)
        queue = await _open_queue(settings, db)
        # Embedded: the queue is in the SQLite file, so the worker's commits may skip the fsync.
        db.relaxed_commits = db.is_sqlite and isinstance(queue, DatabaseQueue)
        forwarder = Forwarder(guard=TargetGuard(settings.allow_private_forward))
        gate_client: aioredis.Redis | None = None
        gate: Gate
        if isinstance(queue, RedisStreamsQueue):
            gate_client = connect(settings)  # its own pool: control never waits behind a batch
            gate = RedisGate(gate_client, queue.keys)
        else:
            gate = DatabaseGate(db)
        try:
            store = ToolStore(db, secrets)
            await store.reencrypt()  # after a key is set or rotated, nothing waits for an edit
            tools = ToolCache(store.for_serving(), settings.tools_refresh_interval)
            await tools.load()
            runtime = Runtime(
                settings=settings,
                db=db,
                queue=queue,
                tools=tools,
                tool_service=ToolService(
                    store,
                    after_change=tools.load,
                    allow_private_forward=settings.allow_private_forward,
                ),
                events=EventStore(db),
                batcher=EnqueueBatcher(queue),
                forwarder=forwarder,
                gate=gate,
            )
            yield runtime
        finally:
            if gate_client is not None:
                await gate_client.aclose()
            await forwarder.close()
            await queue.close()


async def _open_queue(settings: Settings, db: Database) -> Queue:
    if not settings.uses_redis:
        return DatabaseQueue(
            db,
            settings.worker_consumer_name,
            settings.worker_idempotency_ttl,
            settings.worker_reclaim_idle,
        )
    try:
        return await RedisStreamsQueue.open(settings)
    except WebhookWorkerError as exc:
        raise StartupError(f"cannot reach Redis at {settings.redis_addr}: {exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
