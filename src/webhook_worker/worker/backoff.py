"""Waiting out an outage: retry an action with capped, jittered backoff until it succeeds or
the worker is asked to stop; and a sleep that wakes at once on stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from webhook_worker.errors import UnavailableError

log = logging.getLogger(__name__)

BACKOFF_START = 0.1
BACKOFF_CAP = 5.0

Action = Callable[[], Awaitable[None]]


async def with_backoff(action: Action, stopping: asyncio.Event) -> bool:
    """Run ``action`` until it succeeds, backing off while the database or queue is away
    (other errors propagate). Returns False if asked to stop while still failing."""
    backoff = BACKOFF_START
    while True:
        try:
            await action()
            return True
        except Exception as exc:
            if not isinstance(exc, UnavailableError):
                raise
            if stopping.is_set():
                log.warning("stopping with a batch unfinished (%r); it will be redelivered", exc)
                return False
            log.warning("dependency unavailable, retrying in %.1fs: %r", backoff, exc)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_CAP)


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, but wake at once when ``stopping`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
