"""Group commit for ingest: concurrent requests share one queue round trip.

Each request hands its message to the batcher (:meth:`EnqueueBatcher.submit`) and awaits the
result. While one batch is being written, new messages accumulate; the next write takes them
all. Under light load a batch is one message (no added latency); under heavy load one round trip
carries hundreds. The grouping is :class:`~webhook_worker.groupcommit.GroupCommit`'s; a group is
written with one :meth:`Queue.enqueue <webhook_worker.queue.base.Queue.enqueue>`.
"""

from __future__ import annotations

from webhook_worker.errors import QueueUnavailableError
from webhook_worker.groupcommit import GroupCommit
from webhook_worker.queue.base import EnqueueResult, Message, Queue


def _shutting_down() -> QueueUnavailableError:
    # The outcome of a write cut off by shutdown is unknown, which is a 503 for the sender
    # (de-duplication makes its retry safe).
    return QueueUnavailableError("the service is shutting down")


class EnqueueBatcher(GroupCommit[Message, EnqueueResult]):
    """Enqueues messages in batches of up to ``max_batch``. ``submit(message)`` resolves once
    the message is durably enqueued, or raises QueueUnavailableError."""

    def __init__(self, queue: Queue, max_batch: int = 256) -> None:
        super().__init__(
            queue.enqueue, max_group=max_batch, name="enqueue-batcher", interrupted=_shutting_down
        )
