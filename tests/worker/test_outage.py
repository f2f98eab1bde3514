"""A database outage while the processor writes an outcome: the worker retries the write (the
consumer's ``_with_backoff``), and each retry must start from the same inputs. Metrics count
what was committed, once; the batch lists each message once.

The outage is real: the processor reaches the test PostgreSQL through a TCP proxy on loopback
that the test takes down, or that drops the connection when the transaction commits (the
worst moment: every statement ran, nothing is kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import TypeVar
from urllib.parse import urlsplit

import orjson
import pytest
from cryptography.fernet import Fernet
from prometheus_client import REGISTRY

from tests.support import Target, target_server
from webhook_worker.config import Settings
from webhook_worker.errors import DatabaseUnavailableError
from webhook_worker.queue.base import Delivery, Message
from webhook_worker.runtime import Runtime, open_runtime
from webhook_worker.storage.deadletters import DeadLetterFilter, DeadLetterStore
from webhook_worker.worker.processor import Processor
from webhook_worker.worker.work import Batch

_COMMIT = b"Q\x00\x00\x00\x0cCOMMIT;\x00"
"""The protocol message of asyncpg's commit: a simple query (``Q``, length 12, ``COMMIT;``)."""
T = TypeVar("T")


class PostgresProxy:
    """Forwards loopback TCP connections to PostgreSQL until told otherwise: :meth:`cut`
    closes every connection and refuses new ones until :meth:`restore`; :meth:`drop_commits`
    makes the next ``times`` transactions lose their connection instead of committing."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._down = False
        self._commits_to_drop = 0
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self._down = True
        for writer in list(self._writers):
            writer.close()

    def restore(self) -> None:
        self._down = False

    def drop_commits(self, times: int) -> None:
        self._commits_to_drop = times

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._down:
            client_w.close()
            return
        server_r, server_w = await asyncio.open_connection(*self._upstream)
        self._writers |= {client_w, server_w}
        try:
            await asyncio.gather(
                self._pump(client_r, server_w, watch=True), self._pump(server_r, client_w)
            )
        finally:
            for writer in (client_w, server_w):
                self._writers.discard(writer)
                writer.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, watch: bool = False
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                if watch and self._commits_to_drop and _COMMIT in chunk:
                    self._commits_to_drop -= 1
                    break
                writer.write(chunk)
                await writer.drain()
        # One side ended (or a commit was dropped): end the connection, which ends the other
        # direction's pump too.
        writer.close()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    async with target_server() as running:
        yield running


@pytest.fixture
async def proxy(postgres_server_url: str, postgres_db: object) -> AsyncIterator[PostgresProxy]:
    """A proxy in front of this run's (migrated, emptied) PostgreSQL database."""
    upstream = urlsplit(postgres_server_url)
    running = PostgresProxy(upstream.hostname or "127.0.0.1", upstream.port or 5432)
    await running.start()
    yield running
    await running.close()


@pytest.fixture
async def runtime(
    proxy: PostgresProxy, postgres_server_url: str, target: Target
) -> AsyncIterator[Runtime]:
    """The real runtime (database queue), its database reached through the proxy."""
    database = urlsplit(postgres_server_url).path
    settings = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{proxy.port}{database}",
        secrets_key=Fernet.generate_key().decode(),
        allow_private_forward=True,
        dlq_auto_retry_interval=60.0,
    )
    async with open_runtime(settings, migrate_first=True) as running:
        await running.tool_service.create(
            {
                "id": "fwd",
                "auth": {"type": "none"},
                "mode": "store_and_forward",
                "forward": {"url": target.url},
                "retry": {"max_retries": 3, "initial_interval": "1s"},
            }
        )
        yield running


def message(n: int) -> Message:
    return Message(
        event_id=str(uuid.uuid4()),
        tool_id="fwd",
        event_type="push",
        delivery_id=uuid.uuid4().hex,
        received_at=time.time(),
        headers=orjson.dumps({"content-type": "application/json"}),
        body=orjson.dumps({"n": n}),
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def samples() -> dict[str, float]:
    return {
        "retries": sample("webhook_retry_attempts_total", attempt="1", reason="http_5xx"),
        "dead_letters": sample("webhook_dlq_entries_total", event_type="push", reason="http_4xx"),
        "resolved": sample("webhook_dlq_retries_total", status="resolved"),
        "processed": sample(
            "webhook_events_processed_total", event_type="push", tool_id="fwd", status="processed"
        ),
        "dead": sample(
            "webhook_events_processed_total", event_type="push", tool_id="fwd", status="dead"
        ),
    }


async def take(runtime: Runtime, count: int) -> list[Delivery]:
    taken: list[Delivery] = []
    deadline = time.monotonic() + 5
    while len(taken) < count and time.monotonic() < deadline:
        taken += await runtime.queue.receive(count - len(taken), 0.1)
    assert len(taken) == count
    return taken


async def forward_in_order(processor: Processor, batch: Batch, order: list[str]) -> None:
    """Forward the batch's events in ``order`` of event ids (the target answers in order)."""
    by_id = {work.message.event_id: work for work in batch.to_forward}
    assert sorted(by_id) == sorted(order)
    for event_id in order:
        await processor.forward_one(by_id[event_id])


async def retried(action: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """``action`` called until the database lets it commit, as the consumer does; its result
    and how many tries failed."""
    failures = 0
    while True:
        try:
            return await action(), failures
        except DatabaseUnavailableError:
            failures += 1
            assert failures < 10


async def test_a_database_outage_during_record_counts_each_outcome_once(
    runtime: Runtime, proxy: PostgresProxy, target: Target
) -> None:
    processor = runtime.processor()
    dead_letters = DeadLetterStore(runtime.db)

    # C: dead (the target refuses it), then retried from the dead letter queue.
    c = message(3)
    await runtime.queue.enqueue([c])
    target.answers = [(400, {})]
    first = await processor.store(await take(runtime, 1))
    await forward_in_order(processor, first, [c.event_id])
    await processor.record(first)
    await runtime.queue.ack(first.done)
    [letter] = (await dead_letters.list(DeadLetterFilter())).items
    await runtime.replayer.retry_dead_letter(letter.id)

    # A will fail retryably, B for good, C get through.
    a, b = message(1), message(2)
    await runtime.queue.enqueue([a, b])
    batch = await processor.store(await take(runtime, 3))
    target.answers = [(500, {}), (400, {}), (200, {})]
    await forward_in_order(processor, batch, [a.event_id, b.event_id, c.event_id])

    before = samples()
    # The database goes away: first no connection at all, then twice the commit is lost.
    proxy.cut()

    tries = 0

    async def record() -> None:
        nonlocal tries
        tries += 1
        if tries == 2:
            proxy.restore()
            proxy.drop_commits(2)
        await processor.record(batch)  # what the consumer retries in _with_backoff

    _, failures = await retried(record)
    assert failures == 3

    after = samples()
    assert {name: after[name] - before[name] for name in before} == {
        "retries": 1,  # A
        "dead_letters": 1,  # B
        "resolved": 1,  # C
        "processed": 1,  # C
        "dead": 1,  # B
    }
    assert [(d.message.event_id, d.message.attempt) for d, _ in batch.retry] == [(a.event_id, 1)]
    assert sorted(d.message.event_id for d in batch.done) == sorted([b.event_id, c.event_id])

    # What was committed is what was counted; the outage itself left no attempt.
    events = {e: await runtime.events.get(e) for e in (a.event_id, b.event_id, c.event_id)}
    assert {
        e: (event.status, [x.outcome for x in event.attempts]) for e, event in events.items()
    } == {
        a.event_id: ("retrying", ["failed"]),
        b.event_id: ("dead", ["dead"]),
        c.event_id: ("processed", ["dead", "forwarded"]),
    }
    letters = (await dead_letters.list(DeadLetterFilter())).items
    assert sorted((x.event_id, x.status) for x in letters) == sorted(
        [(b.event_id, "pending"), (c.event_id, "resolved")]
    )


async def test_a_database_outage_while_storing_counts_dead_letters_once(
    runtime: Runtime, proxy: PostgresProxy
) -> None:
    await runtime.tool_service.create(
        {"id": "shape", "auth": {"type": "none"}, "mode": "transform_and_store", "transform": "a"}
    )
    processor = runtime.processor()
    not_json = replace(message(1), tool_id="shape", body=b"not json")
    poison = message(2)
    await runtime.queue.enqueue([not_json, poison])
    [to_store, to_bury] = sorted(
        await take(runtime, 2), key=lambda d: d.message.event_id != not_json.event_id
    )

    def dead_letters(reason: str, tool_id: str) -> tuple[float, float]:
        return (
            sample("webhook_dlq_entries_total", event_type="push", reason=reason),
            sample(
                "webhook_events_processed_total", event_type="push", tool_id=tool_id, status="dead"
            ),
        )

    before = dead_letters("invalid_payload", "shape")
    proxy.drop_commits(2)
    batch, failures = await retried(lambda: processor.store([to_store]))
    assert failures == 2
    after = dead_letters("invalid_payload", "shape")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    assert batch.stored == 1
    assert [d.message.event_id for d in batch.done] == [not_json.event_id]

    before = dead_letters("poison", "fwd")
    proxy.drop_commits(2)
    _, failures = await retried(lambda: processor.dead_letter([to_bury], "poison", "too often"))
    assert failures == 2
    after = dead_letters("poison", "fwd")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)

    letters = (await DeadLetterStore(runtime.db).list(DeadLetterFilter())).items
    assert sorted(x.error_class for x in letters) == ["invalid_payload", "poison"]


async def test_a_database_outage_while_burying_poison_counts_it_once(
    runtime: Runtime, proxy: PostgresProxy
) -> None:
    poison = message(7)
    await runtime.queue.enqueue([poison])
    [delivery] = await take(runtime, 1)
    worker = runtime.worker()

    before = sample("webhook_queue_poison_total")
    proxy.drop_commits(2)
    # What the consumer's backoff retries until the dead letter is committed.
    _, failures = await retried(lambda: worker._dead_letter_poison([delivery]))
    assert failures == 2
    assert sample("webhook_queue_poison_total") - before == 1

    letters = (await DeadLetterStore(runtime.db).list(DeadLetterFilter())).items
    assert [(x.event_id, x.error_class) for x in letters] == [(poison.event_id, "poison")]
