"""The retention sweep's share of the database: it works in short transactions and rests
between them, so that ingest and the worker, which share the database (and often the machine),
never wait long behind it."""

from __future__ import annotations

from asyncio import sleep
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from time import monotonic
from typing import Final

REST: Final = 2.0
"""Seconds of rest per second of work: a sweep uses at most a third of the time it runs for,
so it takes three times as long as it would flat out (seconds a RETENTION_INTERVAL of minutes)
and what else runs keeps two thirds of every stretch of it."""


@asynccontextmanager
async def paced(rest: float = REST) -> AsyncIterator[None]:
    """``async with paced(): <one transaction>``: afterwards, rest ``rest`` times as long as it
    took (not after an error, which ends the sweep)."""
    started = monotonic()
    yield
    await sleep(rest * (monotonic() - started))


class Pace:
    """One sweep's pacing: :func:`paced` until ``budget`` seconds after it was made, then no
    rest (a sweep that still has work half way through its interval goes on flat out, so that
    its rests never make it fall behind)."""

    def __init__(self, budget: float) -> None:
        self._until = monotonic() + budget

    def __call__(self) -> AbstractAsyncContextManager[None]:
        return paced(REST if monotonic() < self._until else 0.0)
