"""The messages a worker holds: received, not yet acknowledged or rescheduled.

The count is bounded (WORKER_CONCURRENCY), so a worker reads only what it has room for. Each
message also remembers when it was taken or last renewed in the queue, so the lease renewal
loop (:mod:`~webhook_worker.worker.background`) renews only what is about to look abandoned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from webhook_worker.queue.base import Delivery


class Holding:
    """Held messages by receipt, bounded by ``limit``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held: dict[str, tuple[Delivery, float]] = {}
        self._room = asyncio.Event()

    def room(self) -> int:
        """How many more messages may be taken now."""
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
        """The worker holds ``deliveries`` from now on."""
        now = time.monotonic()
        for delivery in deliveries:
            self._held[delivery.receipt] = (delivery, now)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        """The worker no longer holds ``deliveries`` (settled, or left for redelivery)."""
        for delivery in deliveries:
            self._held.pop(delivery.receipt, None)
        self._room.set()

    def older_than(self, seconds: float) -> list[Delivery]:
        """Held messages taken or last renewed more than ``seconds`` ago."""
        cutoff = time.monotonic() - seconds
        return [delivery for delivery, since in self._held.values() if since <= cutoff]

    def renewed(self, deliveries: Sequence[Delivery], since: float) -> None:
        """The queue renewed the lease of ``deliveries`` in a call that started at ``since``
        (``time.monotonic``). The lease runs from some moment of that call, so counting from
        its start, not its end, never schedules the next renewal after the lease ran out when
        the call itself was slow (a busy database)."""
        for delivery in deliveries:
            if delivery.receipt in self._held:
                self._held[delivery.receipt] = (delivery, since)
