"""The worker loop: receive a batch, store it, forward its events one by one, acknowledge each
event once its outcome is committed.

A message is acknowledged only after its outcome is committed to the database, so a crash at
any point leaves it in the queue, where this or another worker picks it up again. While the
database is unreachable, writes are retried with capped backoff (no hot loop, no
acknowledgement). On stop: no new reads; stores, forwards and outcome writes in flight finish
and are acknowledged.

Forwards are not tied to their batch: an event is settled (outcome written, message acknowledged,
both in small groups, :mod:`~webhook_worker.worker.settler`) as soon as its own forward ends.
Each tool may have ``tool_concurrency`` forwards in flight; while its target keeps up, more
events wait their turn; once it is slow (see :mod:`~webhook_worker.worker.lanes`) it keeps at
most as many waiting and the rest go back to the queue untried for a moment. So a hanging or
slow target occupies a bounded share of the worker, never all of it, and other tools' events
keep flowing. What the worker holds is bounded too (:mod:`~webhook_worker.worker.holding`);
reclaiming, lease renewal, retries and housekeeping run beside this loop
(:mod:`~webhook_worker.worker.background`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable

from webhook_worker.control.base import Gate
from webhook_worker.errors import DatabaseUnavailableError, QueueUnavailableError
from webhook_worker.observability import metrics
from webhook_worker.queue.base import Delivery, Queue
from webhook_worker.replay import Replayer
from webhook_worker.storage.retention import Retention
from webhook_worker.tools.model import Tool
from webhook_worker.vocabulary import ErrorClass
from webhook_worker.worker.background import Background, Read
from webhook_worker.worker.backoff import BACKOFF_CAP, BACKOFF_START, pause, with_backoff
from webhook_worker.worker.gatekeeper import Gatekeeper, controlled
from webhook_worker.worker.holding import Holding
from webhook_worker.worker.lanes import Admission, ToolLanes
from webhook_worker.worker.processor import Processor
from webhook_worker.worker.settler import Settler
from webhook_worker.worker.work import Batch, Part

__all__ = ["Worker"]

log = logging.getLogger(__name__)

_BATCHES_AT_ONCE = 4
"""Batches being received and stored at once (their forwards run on beyond this)."""
_SLOW_AFTER = 1.0
"""A tool whose oldest forward in flight started longer ago than this is slow: it keeps at most
``tool_concurrency`` events waiting, and the rest go back to the queue for a moment."""
_DEFER_MIN, _DEFER_MAX = 0.5, 5.0
"""Bounds of how long an event waits in the queue when its tool is busy (a quarter of the
tool's forward timeout in between)."""


class Worker:
    """Receives, stores, forwards and settles events until stopped (see the module
    docstring)."""

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
        gate: Gate | None = None,
        tools_refresh_interval: float = 2.0,
        retention: Retention | None = None,
        tools: Callable[[], Iterable[Tool]] = tuple,
    ) -> None:
        """``concurrency``: events held at once (received, not yet settled). ``tool_concurrency``:
        deliveries in flight per tool, at most a quarter of ``concurrency``, shared equally by
        its destinations (each keeps at least one).
        ``lease_renewal``:
        how often held messages are renewed in the queue (well under the reclaim idle time).
        ``gate``: the delivery control shared by every worker (the runtime always gives one;
        None only in tests of the rest). ``retention``: the retention sweep, with the retention
        of each of ``tools()`` (None: no sweep)."""
        self._queue = queue
        self._processor = processor
        self._batch_size = batch_size
        self._batches = asyncio.Semaphore(_BATCHES_AT_ONCE)
        self._holding = Holding(concurrency)
        self._lanes: ToolLanes[Part] = ToolLanes(
            max(1, min(tool_concurrency, concurrency // 4)), _SLOW_AFTER
        )
        self._max_deliveries = max_deliveries
        self._shutdown_timeout = shutdown_timeout
        self._block = block
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._settler = Settler(processor, queue, self._holding, self._stopping, batch_size, gate)
        self._gatekeeper = (
            None
            if gate is None
            else Gatekeeper(
                gate,
                start=self._start_forward,
                defer=self._defer_for,
                share=lambda part: self._lanes.limit // len(part.work.plan.routes),
                stopping=self._stopping,
            )
        )
        self._background = Background(
            queue,
            self._holding,
            self._stopping,
            take=self._take,
            shed=self._shed,
            replayer=replayer,
            reclaim_interval=reclaim_interval,
            lease_renewal=lease_renewal,
            dlq_auto_retry_max=dlq_auto_retry_max,
            dlq_auto_retry_interval=dlq_auto_retry_interval,
            paused=processor.destination_paused,
            tools_refresh_interval=tools_refresh_interval,
            retention=retention,
            tools=tools,
        )
        self.processed = 0
        """Events this worker stored for the first time (for start-up messages and tests)."""

    def stop(self) -> None:
        """Ask :meth:`run` to finish: no new reads; work in flight completes."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`, then finish what is in flight."""
        log.info("worker started")
        self._settler.start()
        self._background.start()
        try:
            await self._consume()
        finally:
            self._stopping.set()  # also when _consume failed: the background loops end on it
            await self._background.stop()
            await self._drain()
            await self._background.stop_renewing()
            log.info("worker stopped")

    async def _consume(self) -> None:
        backoff = BACKOFF_START
        while not self._stopping.is_set():
            try:
                taken = await self._take(lambda count: self._queue.receive(count, self._block))
            except QueueUnavailableError as exc:
                log.warning("queue unavailable, retrying in %.1fs: %s", backoff, exc)
                await pause(self._stopping, backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)
                continue
            if taken is None:
                return
            backoff = BACKOFF_START

    async def _take(self, read: Read) -> int | None:
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
            if not await with_backoff(lambda: self._dead_letter_poison(poison), self._stopping):
                return  # stopping while the database is away: leave them for redelivery
            self._settler.acknowledge(poison)
        if not fresh:
            return
        batch = Batch()

        async def store() -> None:
            batch.absorb(await self._store(fresh))

        if not await with_backoff(store, self._stopping):
            return
        self.processed += batch.stored
        self._settler.acknowledge(batch.done)
        for work in batch.to_update:
            self._settler.settle(work)
        for part in batch.to_record:
            self._settler.settle(part)
        for part in batch.to_forward:
            self._dispatch(part)

    def _dispatch(self, part: Part) -> None:
        route = part.route
        if route is not None and route.paused:
            self._settler.park(part)
            return
        if self._gatekeeper is not None and controlled(part):
            self._gatekeeper.admit(part)
            return
        # WORKER_TOOL_CONCURRENCY bounds a tool's deliveries in flight: its destinations share
        # it, so fanning out does not multiply what one tool holds of the worker.
        admission = self._lanes.admit(_lane(part), part, len(part.work.plan.routes))
        if admission is Admission.START:
            self._start_forward(part)
        elif admission is Admission.DEFER:
            self._defer(part)
        # Admission.WAIT: the lane starts it when one of the destination's deliveries ends.

    def _defer(self, part: Part) -> None:
        timeout = part.route.forward.timeout if part.route is not None else _DEFER_MIN
        delay = min(max(timeout / 4, _DEFER_MIN), _DEFER_MAX) * random.uniform(0.8, 1.2)
        self._defer_for(part, delay)

    def _defer_for(self, part: Part, delay: float) -> None:
        self._processor.deferred(part, delay)
        self._settler.defer(part, delay)

    def _shed(self) -> None:
        """Send back to the queue what slow destinations hold in line beyond their share."""
        for part in self._lanes.shed():
            self._defer(part)

    def _start_forward(self, part: Part) -> None:
        task = asyncio.create_task(self._forward(part))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _forward(self, part: Part) -> None:
        # Never raises but when cancelled (a stop that ran out of time): then the delivery is
        # not settled, so its message is redelivered later, and nothing new starts (a
        # controlled delivery's slot is freed when its lease runs out).
        # Paused since it was planned (workers see a pause within TOOLS_REFRESH_INTERVAL, and
        # the pause endpoint answers only after that): not sent.
        sent = not self._processor.paused_now(part)
        if sent:
            await self._processor.forward_one(part)
        if self._gatekeeper is not None and controlled(part):
            await self._gatekeeper.release(part, sent)
        else:
            nxt = self._lanes.finish(_lane(part), part)
            if nxt is not None:
                self._start_forward(nxt)
        if sent:
            self._settler.settle(part)
        else:
            self._settler.park(part)

    async def _dead_letter_poison(self, poison: list[Delivery]) -> None:
        await self._processor.dead_letter(
            poison,
            ErrorClass.POISON,
            f"delivered more than {self._max_deliveries} times without being acknowledged "
            "(WORKER_MAX_DELIVERIES); a worker may have crashed while processing it",
        )
        # Counted once the dead letters are committed: this runs again while the database is away.
        metrics.POISON.inc(len(poison))

    async def _store(self, fresh: list[Delivery]) -> Batch:
        try:
            return await self._processor.store(fresh)
        except Exception as exc:
            if isinstance(exc, DatabaseUnavailableError):
                raise
            if len(fresh) == 1:
                # Storing it again would fail the same way; redelivering it would too, ten
                # times over, until it counted as poison: set it aside now.
                return await self._unstorable(fresh[0], exc)
        # One bad message must not hold back the batch: find it by storing them one by one.
        log.warning("a batch of %d failed; storing its events one by one", len(fresh))
        batch = Batch()
        for delivery in fresh:
            try:
                batch.absorb(await self._processor.store([delivery]))
            except Exception as exc:
                if isinstance(exc, DatabaseUnavailableError):
                    raise
                batch.absorb(await self._unstorable(delivery, exc))
        return batch

    async def _unstorable(self, delivery: Delivery, exc: Exception) -> Batch:
        """Dead-letter an event that cannot be stored (``storage_error``), to acknowledge."""
        log.error(
            "event %s cannot be stored: %r",
            delivery.message.event_id,
            exc,
            extra={"event_id": delivery.message.event_id},
        )
        await self._processor.dead_letter([delivery], ErrorClass.STORAGE_ERROR, _describe(exc))
        return Batch(done=[delivery])

    async def _drain(self) -> None:
        """Let stores, forwards and outcome writes in flight finish (up to the shutdown
        timeout); what does not finish stays unacknowledged and is redelivered."""
        deadline = time.monotonic() + self._shutdown_timeout
        if self._gatekeeper is not None:
            self._gatekeeper.stop()
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


def _lane(part: Part) -> str:
    """Each destination of each tool has its own lane (ids hold no ``/``)."""
    return f"{part.message.tool_id}/{part.destination_id}"


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:1000]
