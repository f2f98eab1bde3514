"""Group commit for ingest: concurrent requests share one queue round trip.

Each request hands its message to the batcher and awaits the result. While one batch is being
written, new messages accumulate; the next write takes them all. Under light load a batch is one
message (no added latency); under heavy load one round trip carries hundreds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from webhook_worker.errors import QueueUnavailableError
from webhook_worker.queue.base import EnqueueResult, Message, Queue

log = logging.getLogger(__name__)


class EnqueueBatcher:
    def __init__(self, queue: Queue, max_batch: int = 256) -> None:
        self._queue = queue
        self._max_batch = max_batch
        self._pending: list[tuple[Message, asyncio.Future[EnqueueResult]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="enqueue-batcher")

    def submit(self, message: Message) -> Awaitable[EnqueueResult]:
        """Queue ``message`` for the next batch; the awaitable resolves once it is durably
        enqueued (or raises QueueUnavailableError)."""
        if self._closing:
            raise RuntimeError("the enqueue batcher is closed")
        future: asyncio.Future[EnqueueResult] = asyncio.get_running_loop().create_future()
        self._pending.append((message, future))
        self._wakeup.set()
        return future

    async def close(self) -> None:
        """Write what is pending, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._write(batch)
            if self._closing:
                return

    async def _write(self, batch: list[tuple[Message, asyncio.Future[EnqueueResult]]]) -> None:
        try:
            results = await self._queue.enqueue([message for message, _ in batch])
        except asyncio.CancelledError:
            # Shutting down mid-write: the outcome is unknown, which is a 503 for the sender
            # (de-duplication makes its retry safe).
            _fail(batch, QueueUnavailableError("the service is shutting down"))
            raise
        except Exception as exc:  # every waiter must learn the outcome, whatever it was
            log.debug("enqueue of %d messages failed: %r", len(batch), exc)
            _fail(batch, exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _fail(batch: list[tuple[Message, asyncio.Future[EnqueueResult]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
