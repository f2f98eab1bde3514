"""Group commit: many small writes share one round trip.

Callers hand items to a :class:`GroupCommit`; one task writes them in groups of up to
``max_group`` with a flush function (one Redis script call, one transaction). While a group is
being written the next one accumulates, so under light load a group is one item (no added
latency) and under heavy load one round trip carries hundreds.

Two ways to hand in an item:

- :meth:`GroupCommit.submit` returns an awaitable for the item's own result (the ingest path
  waits for its message to be enqueued). An error from the flush reaches every caller whose
  item was in that group; the next group is written as usual.
- :meth:`GroupCommit.add` is fire and forget (the worker's outcome writer): the flush function
  deals with its own errors, and one it lets through is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[list[T]], Awaitable[Sequence[R] | None]]
"""Writes one group; returns one result per item, in order, or None when no item of the group
awaits a result (all were :meth:`GroupCommit.add`-ed)."""


class GroupCommit(Generic[T, R]):
    """Items in, groups out, written by one task (see the module docstring)."""

    def __init__(
        self,
        flush: Flush[T, R],
        *,
        max_group: int,
        name: str,
        interrupted: Callable[[], Exception] | None = None,
    ) -> None:
        """``flush`` writes one group of at most ``max_group`` items. ``name`` names the task
        and the log lines. ``interrupted()`` is what callers still waiting get when the writer
        is cancelled (a close that ran out of time, a shutdown): a RuntimeError by default."""
        if max_group < 1:
            raise ValueError("a group needs room for at least one item")
        self._flush = flush
        self._max_group = max_group
        self._name = name
        self._interrupted = interrupted or (lambda: RuntimeError(f"{name} was stopped"))
        # Parallel lists rather than a pair per item: the flush gets its items without a copy.
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R] | None] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start the writing task (items handed in before are written then)."""
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name=self._name)

    def submit(self, item: T) -> Awaitable[R]:
        """Queue ``item`` for the next group; the awaitable resolves to its result once the
        group is written, or raises what the flush raised."""
        if self._closing:
            raise RuntimeError(f"{self._name} is closed")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._items.append(item)
        self._futures.append(future)
        self._wakeup.set()
        return future

    def add(self, item: T) -> None:
        """Queue ``item`` for the next group without waiting for its result."""
        if self._closing:
            raise RuntimeError(f"{self._name} is closed")
        self._items.append(item)
        self._futures.append(None)
        self._wakeup.set()

    def add_many(self, items: Sequence[T]) -> None:
        """:meth:`add` each of ``items``."""
        if self._closing:
            raise RuntimeError(f"{self._name} is closed")
        if items:
            self._items += items
            self._futures += [None] * len(items)
            self._wakeup.set()

    async def close(self, within: float | None = None) -> bool:
        """Write what is waiting, then stop. After ``within`` seconds (None: no limit) the
        writer is cancelled and what is still unwritten is dropped (its waiters get
        ``interrupted()``). Returns whether everything was written."""
        self._closing = True
        self._wakeup.set()
        task, self._task = self._task, None
        if task is None:
            unwritten = bool(self._items)
            self._fail_pending()
            return not unwritten
        try:
            done, _ = await asyncio.wait({task}, timeout=within)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False
        task.result()  # a failure of the loop itself is a bug: let it show
        return True

    async def _run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._items:
                    size = self._max_group
                    items, futures = self._items[:size], self._futures[:size]
                    del self._items[:size], self._futures[:size]
                    await self._write(items, futures)
                if self._closing:
                    return
        finally:
            self._fail_pending()

    async def _write(self, items: list[T], futures: list[asyncio.Future[R] | None]) -> None:
        try:
            results = await self._flush(items)
        except asyncio.CancelledError:
            # Cut off mid-write: the outcome is unknown, which the waiters must hear about.
            _fail(futures, self._interrupted())
            raise
        except Exception as exc:  # every waiter must learn the outcome, whatever it was
            _fail(futures, exc)
            if None in futures:  # nobody else hears of it
                log.error("%s: writing %d items failed", self._name, len(items), exc_info=exc)
            else:
                log.debug("%s: writing %d items failed: %r", self._name, len(items), exc)
            return
        if results is None or len(results) != len(items):
            if any(future is not None for future in futures):
                _fail(futures, RuntimeError(f"{self._name}: the flush returned no result each"))
            return
        for future, result in zip(futures, results, strict=True):
            if future is not None and not future.done():
                future.set_result(result)

    def _fail_pending(self) -> None:
        """Items never written (the writer was cancelled, or closed before it started)."""
        if self._items:
            _fail(self._futures, self._interrupted())
            self._items.clear()
            self._futures.clear()


def _fail(futures: list[asyncio.Future[R] | None], exc: BaseException) -> None:
    for future in futures:
        if future is not None and not future.done():
            future.set_exception(exc)
