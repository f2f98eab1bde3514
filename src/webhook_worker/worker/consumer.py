"""The worker loop: receive a batch, store it, forward its events one by one, acknowledge each
event once its outcome is committed; reclaim what dead workers left.

A message is acknowledged only after its outcome is committed to the database, so a crash at
any point leaves it in the queue, where this or another worker picks it up again. While the
database is unreachable, writes are retried with capped backoff (no hot loop, no
acknowledgement). On stop: no new reads; stores, forwards and outcome writes in flight finish
and are acknowledged.

Forwards are not tied to their batch: an event is settled (outcome written, message acknowledged,
both in small groups) as soon as its own forward ends. Each tool may have ``tool_concurrency``
forwards in flight; while its target keeps up, more events wait their turn; once it is slow
(see :mod:`~webhook_worker.worker.lanes`) it keeps at most as many waiting and the rest go back
to the queue untried for a moment. So a hanging or slow target occupies a bounded share of the
worker, never all of it, and other tools' events keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence

from webhook_worker.errors import DatabaseUnavailableError, QueueUnavailableError, UnavailableError
from webhook_worker.observability import metrics
from webhook_worker.queue.base import Delivery, Queue
from webhook_worker.replay import Replayer
from webhook_worker.worker.lanes import Admission, ToolLanes
from webhook_worker.worker.processor import Processor
from webhook_worker.worker.work import Batch, Work

log = logging.getLogger(__name__)

_BACKOFF_START = 0.1
_BACKOFF_CAP = 5.0
_HOUSEKEEPING_INTERVAL = 5.0
_PROMOTE_INTERVAL = 0.1
_BACKGROUND_STOP_TIMEOUT = 10.0
_BATCHES_AT_ONCE = 4
"""Batches being received and stored at once (their forwards run on beyond this)."""
_SLOW_AFTER = 1.0
"""A tool whose oldest forward in flight started longer ago than this is slow: it keeps at most
``tool_concurrency`` events waiting, and the rest go back to the queue for a moment."""
_SHED_INTERVAL = 0.25
_DEFER_MIN, _DEFER_MAX = 0.5, 5.0
"""Bounds of how long an event waits in the queue when its tool is busy (a quarter of the
tool's forward timeout in between)."""

_Action = Callable[[], Awaitable[None]]


class Worker:
    def __init__(
        self,
        queue: Queue,
        processor: Processor,
        *,
        batch_size: int = 500,
        concurrency: int = 1000,
        tool_concurrency: int = 64,
        max_deliveries: int = 10,
        reclaim_interval: float = 30.0,
        lease_renewal: float = 20.0,
        shutdown_timeout: float = 30.0,
        block: float = 0.25,
        replayer: Replayer | None = None,
        dlq_auto_retry_max: int = 3,
        dlq_auto_retry_interval: float = 300.0,
    ) -> None:
        """``concurrency``: events held at once (received, not yet settled). ``tool_concurrency``:
        forwards in flight per tool, at most a quarter of ``concurrency``. ``lease_renewal``:
        how often held messages are renewed in the queue (well under the reclaim idle time)."""
        self._queue = queue
        self._processor = processor
        self._batch_size = batch_size
        self._batches = asyncio.Semaphore(_BATCHES_AT_ONCE)
        self._holding = _Holding(concurrency)
        self._lanes: ToolLanes[Work] = ToolLanes(
            max(1, min(tool_concurrency, concurrency // 4)), _SLOW_AFTER
        )
        self._max_deliveries = max_deliveries
        self._reclaim_interval = reclaim_interval
        self._lease_renewal = lease_renewal
        self._shutdown_timeout = shutdown_timeout
        self._block = block
        self._replayer = replayer
        self._dlq_auto_retry_max = dlq_auto_retry_max
        self._dlq_auto_retry_interval = dlq_auto_retry_interval
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._settler = _Settler(processor, queue, self._holding, self._with_backoff, batch_size)
        self.processed = 0
        """Events this worker stored for the first time (for start-up messages and tests)."""

    def stop(self) -> None:
        """Ask :meth:`run` to finish: no new reads; work in flight completes."""
        self._stopping.set()

    async def run(self) -> None:
        log.info("worker started")
        self._settler.start()
        background = (
            asyncio.create_task(self._reclaim_forever(), name="worker-reclaim"),
            asyncio.create_task(self._housekeeping_forever(), name="worker-housekeeping"),
            asyncio.create_task(self._promote_forever(), name="worker-promote-retries"),
            asyncio.create_task(self._retry_dead_letters_forever(), name="worker-dlq-retry"),
            asyncio.create_task(self._shed_forever(), name="worker-shed-slow-lanes"),
            asyncio.create_task(self._renew_forever(), name="worker-renew-leases"),
        )
        try:
            await self._consume()
        finally:
            self._stopping.set()  # also when _consume failed: the loops below end on it
            # The loops watch _stopping rather than relying on cancellation alone: a cancel
            # that lands inside a Redis or database call can come back as a connection error,
            # which a loop built to survive outages would take for one and carry on.
            renewer = background[-1]
            _, stuck = await asyncio.wait(background[:-1], timeout=_BACKGROUND_STOP_TIMEOUT)
            for task in stuck:
                task.cancel()
            await self._drain()
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            log.info("worker stopped")

    async def _consume(self) -> None:
        backoff = _BACKOFF_START
        while not self._stopping.is_set():
            try:
                taken = await self._take(lambda count: self._queue.receive(count, self._block))
            except QueueUnavailableError as exc:
                log.warning("queue unavailable, retrying in %.1fs: %s", backoff, exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_CAP)
                continue
            if taken is None:
                return
            backoff = _BACKOFF_START

    async def _take(self, read: Callable[[int], Awaitable[list[Delivery]]]) -> int | None:
        """Wait for a batch slot and for room, read up to a batch with ``read(count)``, and
        hand what came to its own task. Returns how many came (None: asked to stop)."""
        await self._batches.acquire()
        try:
            if not await self._holding.wait_for_room(self._stopping):
                self._batches.release()
                return None
            deliveries = await read(min(self._batch_size, self._holding.room()))
        except BaseException:
            self._batches.release()
            raise
        if not deliveries:
            self._batches.release()
            return 0
        self._holding.take(deliveries)
        task = asyncio.create_task(self._handle(deliveries))
        self._in_flight.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._in_flight.discard(finished)
            self._batches.release()
            if not finished.cancelled() and finished.exception() is not None:
                log.error("batch handling failed", exc_info=finished.exception())
                # Left unacknowledged: stop renewing them so another worker reclaims them.
                self._holding.release(deliveries)

        task.add_done_callback(done)
        return len(deliveries)

    async def _handle(self, deliveries: list[Delivery]) -> None:
        """Store the batch; acknowledge what is settled; hand the events to forward on."""
        poison = [d for d in deliveries if d.deliveries > self._max_deliveries]
        fresh = [d for d in deliveries if d.deliveries <= self._max_deliveries]
        if poison:
            if not await self._with_backoff(lambda: self._dead_letter_poison(poison)):
                return  # stopping while the database is away: leave them for redelivery
            self._settler.acknowledge(poison)
        if not fresh:
            return
        batch = Batch()

        async def store() -> None:
            batch.absorb(await self._store(fresh))

        if not await self._with_backoff(store):
            return
        self.processed += batch.stored
        self._settler.acknowledge(batch.done)
        for work in batch.to_update:
            self._settler.settle(work, forwarded=False)
        for work in batch.to_forward:
            self._dispatch(work)

    def _dispatch(self, work: Work) -> None:
        admission = self._lanes.admit(work.message.tool_id, work)
        if admission is Admission.START:
            self._start_forward(work)
        elif admission is Admission.DEFER:
            self._defer(work)
        # Admission.WAIT: the lane starts it when one of the tool's forwards ends.

    def _defer(self, work: Work) -> None:
        config = work.plan.forward
        timeout = config.timeout if config is not None else _DEFER_MIN
        delay = min(max(timeout / 4, _DEFER_MIN), _DEFER_MAX) * random.uniform(0.8, 1.2)
        self._processor.deferred(work, delay)
        self._settler.defer(work.delivery, delay)

    async def _shed_forever(self) -> None:
        """Send back to the queue what slow tools hold in line beyond their share."""
        while not self._stopping.is_set():
            for work in self._lanes.shed():
                self._defer(work)
            await self._sleep(_SHED_INTERVAL)

    def _start_forward(self, work: Work) -> None:
        task = asyncio.create_task(self._forward(work))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _forward(self, work: Work) -> None:
        # Never raises but when cancelled (a stop that ran out of time): then the event is not
        # settled, so it is redelivered later, and nothing new starts.
        await self._processor.forward_one(work)
        self._settler.settle(work, forwarded=True)
        nxt = self._lanes.finish(work.message.tool_id, work)
        if nxt is not None:
            self._start_forward(nxt)

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
            if isinstance(exc, DatabaseUnavailableError) or len(fresh) == 1:
                raise
        # One bad message must not hold back the batch: find it by storing them one by one.
        log.warning("a batch of %d failed; storing its events one by one", len(fresh))
        batch = Batch()
        for delivery in fresh:
            try:
                batch.absorb(await self._processor.store([delivery]))
            except Exception as exc:
                if isinstance(exc, DatabaseUnavailableError):
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
                if not isinstance(exc, UnavailableError):
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
            try:
                while not self._stopping.is_set():
                    taken = await self._take(self._queue.reclaim)
                    if not taken:
                        break
                    metrics.RECLAIMED.inc(taken)
                    log.info("reclaimed %d messages from stopped consumers", taken)
            except QueueUnavailableError as exc:
                log.warning("reclaim skipped, queue unavailable: %s", exc)

    async def _renew_forever(self) -> None:
        """Keep what this worker holds from looking abandoned: a message waiting on a slow
        forward (or on the database coming back) must not be reclaimed by another worker."""
        while True:
            await asyncio.sleep(self._lease_renewal)
            held = self._holding.older_than(self._lease_renewal)
            if not held:
                continue
            try:
                await self._queue.renew(held)
            except QueueUnavailableError as exc:
                log.warning("could not renew %d held messages: %s", len(held), exc)
            else:
                self._holding.renewed(held)

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
                if not isinstance(exc, UnavailableError):
                    raise
                log.warning("automatic dead letter retry skipped: %r", exc)

    async def _housekeeping_forever(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(QueueUnavailableError):
                metrics.QUEUE_DEPTH.set(await self._queue.depth())
                await self._queue.housekeeping()
            await self._sleep(_HOUSEKEEPING_INTERVAL)

    async def _drain(self) -> None:
        """Let stores, forwards and outcome writes in flight finish (up to the shutdown
        timeout); what does not finish stays unacknowledged and is redelivered."""
        deadline = time.monotonic() + self._shutdown_timeout
        if self._in_flight:
            log.info("finishing %d batches and forwards in flight", len(self._in_flight))
        while self._in_flight and (remaining := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self._in_flight), timeout=remaining)
        unfinished = set(self._in_flight)
        for task in unfinished:
            task.cancel()
        if unfinished:
            log.warning(
                "%d batches or forwards did not finish in time; they will be redelivered",
                len(unfinished),
            )
            await asyncio.gather(*unfinished, return_exceptions=True)
        await self._settler.close(max(deadline - time.monotonic(), 1.0))

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:1000]


class _Holding:
    """The messages a worker holds (received, not yet acknowledged or rescheduled), bounded."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held: dict[str, tuple[Delivery, float]] = {}
        self._room = asyncio.Event()

    def room(self) -> int:
        return self._limit - len(self._held)

    async def wait_for_room(self, stopping: asyncio.Event) -> bool:
        """Wait until another message may be taken; False when asked to stop meanwhile."""
        while len(self._held) >= self._limit:
            self._room.clear()
            waiter = asyncio.ensure_future(self._room.wait())
            stopper = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait((waiter, stopper), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
        return not stopping.is_set()

    def take(self, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        for delivery in deliveries:
            self._held[delivery.receipt] = (delivery, now)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._held.pop(delivery.receipt, None)
        self._room.set()

    def older_than(self, seconds: float) -> list[Delivery]:
        """Held messages taken or last renewed more than ``seconds`` ago."""
        cutoff = time.monotonic() - seconds
        return [delivery for delivery, since in self._held.values() if since <= cutoff]

    def renewed(self, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        for delivery in deliveries:
            if delivery.receipt in self._held:
                self._held[delivery.receipt] = (delivery, now)


class _Settler:
    """Group commit of outcomes: events whose processing ended are written (one transaction),
    rescheduled and acknowledged together, by one task, in groups of up to ``batch_size``.
    While one group is written the next accumulates, so under load a write carries many events
    and when idle an event waits for no one."""

    def __init__(
        self,
        processor: Processor,
        queue: Queue,
        holding: _Holding,
        with_backoff: Callable[[_Action], Awaitable[bool]],
        batch_size: int,
    ) -> None:
        self._processor = processor
        self._queue = queue
        self._holding = holding
        self._with_backoff = with_backoff
        self._batch_size = batch_size
        self._settle: list[tuple[Work, bool]] = []
        self._acknowledge: list[Delivery] = []
        self._defer: list[tuple[Delivery, float]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="worker-settle")

    def settle(self, work: Work, *, forwarded: bool) -> None:
        """Write the event's outcome, then acknowledge it or schedule its retry."""
        self._settle.append((work, forwarded))
        self._wakeup.set()

    def acknowledge(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            self._acknowledge += deliveries
            self._wakeup.set()

    def defer(self, delivery: Delivery, delay: float) -> None:
        """Back to the queue, untried and unchanged, for ``delay`` seconds."""
        self._defer.append((delivery, delay))
        self._wakeup.set()

    async def close(self, within: float) -> None:
        """Write what is waiting, then stop (what cannot be written in time is redelivered)."""
        self._closing = True
        self._wakeup.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=within)
        if not done:
            log.warning(
                "outcomes still unwritten at the shutdown timeout; they will be redelivered"
            )
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._settle or self._acknowledge or self._defer:
                settle, self._settle = (
                    self._settle[: self._batch_size],
                    self._settle[self._batch_size :],
                )
                acknowledge, self._acknowledge = self._acknowledge, []
                defer, self._defer = self._defer, []
                try:
                    await self._write(settle, acknowledge, defer)
                except Exception:
                    log.exception(
                        "writing %d outcomes failed; they will be redelivered", len(settle)
                    )
                    self._holding.release([w.delivery for w, _ in settle])
                    self._holding.release([*acknowledge, *(d for d, _ in defer)])
            if self._closing:
                return

    async def _write(
        self,
        settle: list[tuple[Work, bool]],
        acknowledge: list[Delivery],
        defer: list[tuple[Delivery, float]],
    ) -> None:
        batch = Batch(
            to_forward=[work for work, forwarded in settle if forwarded],
            to_update=[work for work, forwarded in settle if not forwarded],
        )
        if settle and not await self._with_backoff(lambda: self._processor.record(batch)):
            return  # stopping while the database is away: everything here is redelivered
        retry = [*batch.retry, *defer]
        done = [*acknowledge, *batch.done]
        if retry and not await self._with_backoff(lambda: self._queue.retry_later(retry)):
            return
        if done and not await self._with_backoff(lambda: self._queue.ack(done)):
            return
        self._holding.release([*done, *(delivery for delivery, _ in retry)])
