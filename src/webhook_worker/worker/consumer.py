"""The worker loop: receive a batch, process it, acknowledge it; reclaim what dead workers left.

A batch is acknowledged only after its outcome is committed to the database, so a crash at any
point leaves the messages in the queue, where this or another worker picks them up again.
While the database is unreachable the batch is retried with capped backoff (no hot loop, no
acknowledgement). On stop: no new reads, in-flight batches finish and are acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

from webhook_worker.errors import QueueUnavailableError
from webhook_worker.observability import metrics
from webhook_worker.queue.base import Delivery, Queue
from webhook_worker.replay import Replayer
from webhook_worker.storage.database import is_unavailable
from webhook_worker.worker.processor import Processor
from webhook_worker.worker.work import Batch

log = logging.getLogger(__name__)

_BACKOFF_START = 0.1
_BACKOFF_CAP = 5.0
_HOUSEKEEPING_INTERVAL = 5.0
_PROMOTE_INTERVAL = 0.1
_BACKGROUND_STOP_TIMEOUT = 10.0

_Action = Callable[[], Awaitable[None]]


class Worker:
    def __init__(
        self,
        queue: Queue,
        processor: Processor,
        *,
        batch_size: int = 500,
        concurrency: int = 4,
        max_deliveries: int = 10,
        reclaim_interval: float = 30.0,
        shutdown_timeout: float = 30.0,
        block: float = 0.25,
        replayer: Replayer | None = None,
        dlq_auto_retry_max: int = 3,
        dlq_auto_retry_interval: float = 300.0,
    ) -> None:
        self._queue = queue
        self._processor = processor
        self._batch_size = batch_size
        self._slots = asyncio.Semaphore(concurrency)
        self._max_deliveries = max_deliveries
        self._reclaim_interval = reclaim_interval
        self._shutdown_timeout = shutdown_timeout
        self._block = block
        self._replayer = replayer
        self._dlq_auto_retry_max = dlq_auto_retry_max
        self._dlq_auto_retry_interval = dlq_auto_retry_interval
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self.processed = 0
        """Events this worker stored for the first time (for start-up messages and tests)."""

    def stop(self) -> None:
        """Ask :meth:`run` to finish: no new reads; in-flight batches complete."""
        self._stopping.set()

    async def run(self) -> None:
        log.info("worker started")
        reclaimer = asyncio.create_task(self._reclaim_forever(), name="worker-reclaim")
        gauges = asyncio.create_task(self._housekeeping_forever(), name="worker-housekeeping")
        promoter = asyncio.create_task(self._promote_forever(), name="worker-promote-retries")
        dlq = asyncio.create_task(self._retry_dead_letters_forever(), name="worker-dlq-retry")
        try:
            await self._consume()
        finally:
            self._stopping.set()  # also when _consume failed: the loops below end on it
            # The loops watch _stopping rather than relying on cancellation alone: a cancel
            # that lands inside a Redis or database call can come back as a connection error,
            # which a loop built to survive outages would take for one and carry on.
            background = (reclaimer, gauges, promoter, dlq)
            _, stuck = await asyncio.wait(background, timeout=_BACKGROUND_STOP_TIMEOUT)
            for task in stuck:
                task.cancel()
            await self._drain()
            log.info("worker stopped")

    async def _consume(self) -> None:
        backoff = _BACKOFF_START
        while not self._stopping.is_set():
            await self._slots.acquire()
            try:
                deliveries = await self._queue.receive(self._batch_size, self._block)
            except QueueUnavailableError as exc:
                self._slots.release()
                log.warning("queue unavailable, retrying in %.1fs: %s", backoff, exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_CAP)
                continue
            except BaseException:
                self._slots.release()
                raise
            backoff = _BACKOFF_START
            if not deliveries:
                self._slots.release()
                continue
            self._spawn(deliveries)

    def _spawn(self, deliveries: list[Delivery]) -> None:
        task = asyncio.create_task(self._handle(deliveries))
        self._in_flight.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._in_flight.discard(finished)
            self._slots.release()
            if not finished.cancelled() and finished.exception() is not None:
                log.error("batch handling failed", exc_info=finished.exception())

        task.add_done_callback(done)

    async def _handle(self, deliveries: list[Delivery]) -> None:
        poison = [d for d in deliveries if d.deliveries > self._max_deliveries]
        fresh = [d for d in deliveries if d.deliveries <= self._max_deliveries]
        if poison and not await self._with_backoff(lambda: self._dead_letter_poison(poison)):
            return  # stopping while the database is away: leave them for redelivery
        batch = Batch(started=time.perf_counter())

        async def store() -> None:
            batch.absorb(await self._store(fresh))

        if fresh:
            if not await self._with_backoff(store):
                return
            await self._processor.forward(batch)
            if not await self._with_backoff(lambda: self._processor.record(batch)):
                return
        self.processed += batch.stored
        settled = [*poison, *batch.done]
        if batch.retry:
            await self._with_backoff(lambda: self._queue.retry_later(batch.retry))
        await self._with_backoff(lambda: self._queue.ack(settled))

    async def _dead_letter_poison(self, poison: list[Delivery]) -> None:
        metrics.POISON.inc(len(poison))
        await self._processor.dead_letter(
            poison,
            "poison",
            f"delivered more than {self._max_deliveries} times without being acknowledged "
            "(WORKER_MAX_DELIVERIES); a worker may have crashed while processing it",
        )

    async def _store(self, fresh: list[Delivery]) -> Batch:
        try:
            return await self._processor.store(fresh)
        except Exception as exc:
            if is_unavailable(exc) or len(fresh) == 1:
                raise
        # One bad message must not hold back the batch: find it by storing them one by one.
        log.warning("a batch of %d failed; storing its events one by one", len(fresh))
        batch = Batch(started=time.perf_counter())
        for delivery in fresh:
            try:
                batch.absorb(await self._processor.store([delivery]))
            except Exception as exc:
                if is_unavailable(exc):
                    raise
                log.error(
                    "event %s cannot be stored: %r",
                    delivery.message.event_id,
                    exc,
                    extra={"event_id": delivery.message.event_id},
                )
                await self._processor.dead_letter([delivery], "storage_error", _describe(exc))
                batch.done.append(delivery)
        return batch

    async def _with_backoff(self, action: _Action) -> bool:
        """Run ``action`` until it succeeds, backing off while the database or queue is away.
        Returns False if asked to stop while still failing."""
        backoff = _BACKOFF_START
        while True:
            try:
                await action()
                return True
            except Exception as exc:
                if not (is_unavailable(exc) or isinstance(exc, QueueUnavailableError)):
                    raise
                if self._stopping.is_set():
                    log.warning(
                        "stopping with a batch unfinished (%r); it will be redelivered", exc
                    )
                    return False
                log.warning("dependency unavailable, retrying in %.1fs: %r", backoff, exc)
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, _BACKOFF_CAP)

    async def _reclaim_forever(self) -> None:
        while not self._stopping.is_set():
            await self._sleep(self._reclaim_interval)
            if self._stopping.is_set():
                return
            try:
                while True:
                    await self._slots.acquire()
                    try:
                        deliveries = await self._queue.reclaim(self._batch_size)
                    except BaseException:
                        self._slots.release()
                        raise
                    if not deliveries:
                        self._slots.release()
                        break
                    metrics.RECLAIMED.inc(len(deliveries))
                    log.info("reclaimed %d messages from stopped consumers", len(deliveries))
                    self._spawn(deliveries)
            except QueueUnavailableError as exc:
                log.warning("reclaim skipped, queue unavailable: %s", exc)

    async def _promote_forever(self) -> None:
        """Move retries that are due back into the queue (Redis keeps them aside until then)."""
        while not self._stopping.is_set():
            try:
                moved = await self._queue.promote_due()
            except QueueUnavailableError:
                moved = 0
            if not moved:
                await self._sleep(_PROMOTE_INTERVAL)

    async def _retry_dead_letters_forever(self) -> None:
        """The automatic retry of retryable dead letters (DLQ_AUTO_RETRY_*)."""
        if self._replayer is None or self._dlq_auto_retry_max == 0:
            return
        # Look several times per interval so a due dead letter waits at most a fraction more.
        tick = min(self._dlq_auto_retry_interval / 4, 30.0)
        while not self._stopping.is_set():
            await self._sleep(tick)
            try:
                while await self._replayer.retry_due(
                    self._dlq_auto_retry_max, self._dlq_auto_retry_interval
                ):
                    pass
            except Exception as exc:  # the next tick tries again
                if not (is_unavailable(exc) or isinstance(exc, QueueUnavailableError)):
                    raise
                log.warning("automatic dead letter retry skipped: %r", exc)

    async def _housekeeping_forever(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(QueueUnavailableError):
                metrics.QUEUE_DEPTH.set(await self._queue.depth())
                await self._queue.housekeeping()
            await self._sleep(_HOUSEKEEPING_INTERVAL)

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        log.info("finishing %d in-flight batches", len(self._in_flight))
        _, pending = await asyncio.wait(set(self._in_flight), timeout=self._shutdown_timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%d batches did not finish in time; they will be redelivered", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:1000]
