"""The outcome writer: deliveries (and events) whose processing ended are settled in groups.

Settling writes their outcomes (one transaction for the group); a message whose last delivery
is settled is then acknowledged, or split into the retries of its failed deliveries, and only
then let go of (:class:`Holding`). One task does
this in groups of up to ``batch_size``; while one group is written the next accumulates, so
under load a write carries many events and when idle an event waits for no one (the grouping
is :class:`~webhook_worker.groupcommit.GroupCommit`'s).

A write that fails for good is logged and its messages are let go unacknowledged: the queue
hands them out again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import NamedTuple

from webhook_worker.control.base import Gate
from webhook_worker.groupcommit import GroupCommit
from webhook_worker.queue.base import Delivery, Queue
from webhook_worker.worker.backoff import with_backoff
from webhook_worker.worker.holding import Holding
from webhook_worker.worker.processor import Processor
from webhook_worker.worker.work import Batch, Part, Work, settled_positions

log = logging.getLogger(__name__)


class _Defer(NamedTuple):
    part: Part
    delay: float


class _Park(NamedTuple):
    part: Part


# What a group holds: a message to acknowledge, a delivery to send back for a while, one to
# record as waiting for its paused destination, a delivery whose outcome to write, or an event
# whose own outcome to write.
_Outcome = Delivery | _Defer | _Park | Part | Work


class Settler:
    """Writes outcomes, reschedules and acknowledges, in groups (see the module docstring)."""

    def __init__(
        self,
        processor: Processor,
        queue: Queue,
        holding: Holding,
        stopping: asyncio.Event,
        batch_size: int,
        gate: Gate | None = None,
    ) -> None:
        """``stopping``: once set, a write waiting for the database or queue to come back gives
        up (its messages are redelivered). ``gate``: told which ordering positions are
        settled, before their messages are acknowledged (a crash between the two settles them
        again when the message comes back: settling is idempotent)."""
        self._processor = processor
        self._queue = queue
        self._gate = gate
        self._holding = holding
        self._stopping = stopping
        self._group: GroupCommit[_Outcome, None] = GroupCommit(
            self._write, max_group=batch_size, name="worker-settle"
        )

    def start(self) -> None:
        """Start the writing task."""
        self._group.start()

    def settle(self, item: Part | Work) -> None:
        """Write the outcome of a delivery (sent, or decided without sending) or of an event's
        own processing; the message is then acknowledged or its retries scheduled, once all
        its deliveries are settled."""
        self._group.add(item)

    def acknowledge(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge messages whose outcome is already written."""
        self._group.add_many(deliveries)

    def defer(self, part: Part, delay: float) -> None:
        """The delivery back to the queue, untried, for ``delay`` seconds."""
        self._group.add(_Defer(part, delay))

    def park(self, part: Part) -> None:
        """Record the delivery ``paused``: its destination is paused; resuming it sends the
        delivery again."""
        self._group.add(_Park(part))

    async def close(self, within: float) -> None:
        """Write what is waiting, then stop (what cannot be written in time is redelivered)."""
        if not await self._group.close(within):
            log.warning(
                "outcomes still unwritten at the shutdown timeout; they will be redelivered"
            )

    async def _write(self, group: list[_Outcome]) -> None:
        batch = Batch()
        acknowledge: list[Delivery] = []
        for item in group:
            if isinstance(item, Delivery):
                acknowledge.append(item)
            elif isinstance(item, _Defer):
                batch.deferred.append((item.part, item.delay))
            elif isinstance(item, _Park):
                batch.parked.append(item.part)
            elif isinstance(item, Work):
                batch.to_update.append(item)
            elif item.outcome is not None:
                batch.to_forward.append(item)
            else:
                batch.to_record.append(item)
        try:
            await self._settle(batch, acknowledge)
        except Exception:
            settled = len(batch.to_forward) + len(batch.to_update) + len(batch.to_record)
            log.exception("writing %d outcomes failed; they will be redelivered", settled)
            self._holding.release([_delivery(item) for item in group])

    async def _settle(self, batch: Batch, acknowledge: list[Delivery]) -> None:
        if not await with_backoff(lambda: self._processor.record(batch), self._stopping):
            return  # stopping while the database is away: everything here is redelivered
        retry = batch.retry
        done = [*acknowledge, *batch.done]
        gate = self._gate
        if gate is not None:
            # Messages acknowledged as they are were settled whole (stored, or dead letters).
            positions = batch.settled + [
                settled
                for delivery in acknowledge
                for settled in settled_positions(delivery.message)
            ]
            if positions and not await with_backoff(lambda: gate.settle(positions), self._stopping):
                return
        if retry and not await with_backoff(lambda: self._queue.retry_later(retry), self._stopping):
            return
        if done and not await with_backoff(lambda: self._queue.ack(done), self._stopping):
            return
        self._holding.release([*done, *(delivery for delivery, _ in retry)])


def _delivery(item: _Outcome) -> Delivery:
    if isinstance(item, Delivery):
        return item
    if isinstance(item, _Defer | _Park):
        return item.part.work.delivery
    if isinstance(item, Part):
        return item.work.delivery
    return item.delivery
