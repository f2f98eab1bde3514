"""The retention sweep's share of the database: it works in short transactions and rests
between them, so that ingest and the worker, which share the database (and often the machine),
never wait long behind it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

REST: Final = 2.0
"""Seconds of rest per second of work: a sweep uses at most a third of the time it runs for,
so it takes three times as long as it would flat out (seconds a RETENTION_INTERVAL of minutes)
and what else runs keeps two thirds of every stretch of it."""


@asynccontextmanager
async def paced(rest: float = REST) -> AsyncIterator[None]:
    """``async with paced(): <one transaction>``: afterwards, rest ``rest`` times as long as it
    took (not after an error, which ends the sweep)."""
    started = time.monotonic()
    yield
    await asyncio.sleep(rest * (time.monotonic() - started))
