"""The worker's background loops, beside the main receive loop.

- reclaim: take over messages that stopped or crashed workers left unacknowledged;
- renew: keep the leases of what this worker holds, so a slow forward is not reclaimed;
- promote: move retries that are due back into the queue;
- dead-letter auto retry: requeue retryable dead letters (DLQ_AUTO_RETRY_*);
- housekeeping: the queue depth metric and the queue's own clean-up;
- shed: send back to the queue what slow tools hold in line beyond their share;
- retention: create the event partitions ahead, then every RETENTION_INTERVAL delete what has
  expired (one process of the deployment at a time, storage/retention.py) and report the oldest
  event's age and the database's size.

Every loop but lease renewal ends when the worker is asked to stop. The loops watch the stop
event rather than relying on cancellation alone: a cancel that lands inside a Redis or database
call can come back as a connection error, which a loop built to survive outages would take for
one and carry on. Renewal goes on until the worker has drained, since what it still holds must
not be reclaimed while its outcome is being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta

from webhook_worker.errors import QueueUnavailableError, UnavailableError
from webhook_worker.observability import metrics
from webhook_worker.queue.base import Delivery, Queue
from webhook_worker.replay import Replayer
from webhook_worker.storage.retention import Retention
from webhook_worker.tools.model import Tool
from webhook_worker.worker.backoff import pause
from webhook_worker.worker.holding import Holding

log = logging.getLogger(__name__)

_HOUSEKEEPING_INTERVAL = 5.0
_PROMOTE_INTERVAL = 0.1
_SHED_INTERVAL = 0.25
_STOP_TIMEOUT = 10.0
_RELEASE_UNPAUSED_INTERVAL = 5.0

Read = Callable[[int], Awaitable[list[Delivery]]]
Take = Callable[[Read], Awaitable[int | None]]
"""Reads up to a batch with ``read(count)`` and hands it to the worker; how many came (None:
asked to stop)."""


class Background:
    """Starts and stops the loops (see the module docstring)."""

    def __init__(
        self,
        queue: Queue,
        holding: Holding,
        stopping: asyncio.Event,
        *,
        take: Take,
        shed: Callable[[], None],
        replayer: Replayer | None,
        reclaim_interval: float,
        lease_renewal: float,
        dlq_auto_retry_max: int,
        dlq_auto_retry_interval: float,
        paused: Callable[[str, str], bool] = lambda tool_id, destination_id: False,
        tools_refresh_interval: float = 2.0,
        retention: Retention | None = None,
        tools: Callable[[], Iterable[Tool]] = tuple,
    ) -> None:
        """``take`` is how reclaimed messages join the worker; ``shed()`` defers what slow
        tools hold beyond their share; ``paused(tool_id, destination_id)``: is it paused in
        the tools as this process knows them (refreshed every ``tools_refresh_interval``);
        ``retention`` sweeps (None: no sweep) with the retention of each of ``tools()``."""
        self._queue = queue
        self._holding = holding
        self._stopping = stopping
        self._take = take
        self._shed = shed
        self._replayer = replayer
        self._reclaim_interval = reclaim_interval
        self._lease_renewal = lease_renewal
        self._dlq_auto_retry_max = dlq_auto_retry_max
        self._dlq_auto_retry_interval = dlq_auto_retry_interval
        self._paused = paused
        self._tools_refresh_interval = tools_refresh_interval
        self._retention = retention
        self._tools = tools
        self._loops: tuple[asyncio.Task[None], ...] = ()
        self._renewer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start every loop."""
        self._loops = (
            asyncio.create_task(self._reclaim_forever(), name="worker-reclaim"),
            asyncio.create_task(self._housekeeping_forever(), name="worker-housekeeping"),
            asyncio.create_task(self._promote_forever(), name="worker-promote-retries"),
            asyncio.create_task(self._retry_dead_letters_forever(), name="worker-dlq-retry"),
            asyncio.create_task(self._shed_forever(), name="worker-shed-slow-lanes"),
            asyncio.create_task(self._release_unpaused_forever(), name="worker-release-unpaused"),
            asyncio.create_task(self._retention_forever(), name="worker-retention"),
        )
        self._renewer = asyncio.create_task(self._renew_forever(), name="worker-renew-leases")

    async def stop(self) -> None:
        """Once the stop event is set: wait for the loops to end (those stuck past a timeout
        are cancelled). Lease renewal goes on until :meth:`stop_renewing`."""
        if not self._loops:
            return
        _, stuck = await asyncio.wait(self._loops, timeout=_STOP_TIMEOUT)
        for task in stuck:
            task.cancel()

    async def stop_renewing(self) -> None:
        """Stop lease renewal (the worker holds nothing any more)."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)

    async def _reclaim_forever(self) -> None:
        while not self._stopping.is_set():
            await pause(self._stopping, self._reclaim_interval)
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
            # Half a period: a message taken just after one round is renewed at the next, by
            # 1.5 periods of age, which leaves most of the lease for a stalled loop or a slow
            # database (renewing only what had a full period of age left a third of it).
            held = self._holding.older_than(self._lease_renewal / 2)
            if not held:
                continue
            started = time.monotonic()
            try:
                taken_over = await self._queue.renew(held)
            except QueueUnavailableError as exc:
                log.warning("could not renew %d held messages: %s", len(held), exc)
                continue
            self._holding.renewed(held, started)
            if taken_over:
                log.warning(
                    "%d held messages were taken over by another worker after their lease ran "
                    "out; they may be processed twice (raise WORKER_RECLAIM_IDLE if this recurs)",
                    taken_over,
                )

    async def _promote_forever(self) -> None:
        """Move retries that are due back into the queue (Redis keeps them aside until then)."""
        while not self._stopping.is_set():
            try:
                moved = await self._queue.promote_due()
            except QueueUnavailableError:
                moved = 0
            if not moved:
                await pause(self._stopping, _PROMOTE_INTERVAL)

    async def _retry_dead_letters_forever(self) -> None:
        """The automatic retry of retryable dead letters (DLQ_AUTO_RETRY_*)."""
        if self._replayer is None or self._dlq_auto_retry_max == 0:
            return
        # Look several times per interval so a due dead letter waits at most a fraction more.
        tick = min(self._dlq_auto_retry_interval / 4, 30.0)
        while not self._stopping.is_set():
            await pause(self._stopping, tick)
            try:
                while await self._replayer.retry_due(
                    self._dlq_auto_retry_max, self._dlq_auto_retry_interval
                ):
                    pass
            except Exception as exc:  # the next tick tries again
                if not isinstance(exc, UnavailableError):
                    raise
                log.warning("automatic dead letter retry skipped: %r", exc)

    async def _release_unpaused_forever(self) -> None:
        """Send again deliveries recorded ``paused`` for a destination that is not paused (any
        more): a worker that had not yet seen a resume recorded them after the resume sent the
        others, or the destination was removed meanwhile. Only those recorded a while ago, so
        a worker that has not yet seen a pause does not send back what others just recorded."""
        if self._replayer is None:
            return
        settle = max(2 * self._tools_refresh_interval, 1.0)
        while not self._stopping.is_set():
            await pause(self._stopping, _RELEASE_UNPAUSED_INTERVAL)
            before = datetime.now(UTC) - timedelta(seconds=settle)
            try:
                released = await self._replayer.release_unpaused(self._paused, before)
            except Exception as exc:  # the next tick tries again
                if not isinstance(exc, UnavailableError):
                    raise
                log.warning("sending deliveries of resumed destinations skipped: %r", exc)
                continue
            if released:
                log.info(
                    "sent %d deliveries again that waited for a destination no longer paused",
                    released,
                )

    async def _retention_forever(self) -> None:
        """Partitions ahead at start, then a sweep every interval (skipped when another process
        holds it) and the storage gauges. A failure is logged and counted, and the next
        interval tries again: nothing here may stop the worker."""
        retention = self._retention
        if retention is None:
            return
        metrics.RETENTION_INTERVAL.set(retention.interval)
        try:
            await retention.prepare(self._tools())  # logs what it creates
        except Exception as exc:
            _sweep_failed("creating partitions", exc)
        while not self._stopping.is_set():
            try:
                result = await retention.sweep(self._tools(), rest=retention.interval)
                await retention.observe()
            except Exception as exc:
                _sweep_failed("the retention sweep", exc)
            else:
                if result.events or result.partitions_dropped:
                    log.info(
                        "retention: deleted %d events (%d bytes, %d partitions) in %.2fs",
                        result.events,
                        result.bytes,
                        result.partitions_dropped,
                        result.duration,
                    )
            await pause(self._stopping, retention.interval)

    async def _housekeeping_forever(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(QueueUnavailableError):
                metrics.QUEUE_DEPTH.set(await self._queue.depth())
                await self._queue.housekeeping()
            await pause(self._stopping, _HOUSEKEEPING_INTERVAL)

    async def _shed_forever(self) -> None:
        while not self._stopping.is_set():
            self._shed()
            await pause(self._stopping, _SHED_INTERVAL)


def _sweep_failed(what: str, exc: Exception) -> None:
    metrics.RETENTION_SWEEP_FAILURES.inc()
    if isinstance(exc, UnavailableError):
        log.warning("%s failed, trying again next interval: %s", what, exc)
    else:
        log.error("%s failed, trying again next interval", what, exc_info=exc)
