"""The queue Protocol and the message that travels through it.

Delivery is at least once: a message handed to a worker stays in the queue until that worker
acknowledges it, and comes back (to any worker) if it is never acknowledged. Consumers make
processing idempotent (the events table is unique on event id and on tool + delivery id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class Position(NamedTuple):
    """Where an event stands in the order of one destination and ordering key."""

    destination_id: str
    key: str
    """The value of the destination's ``ordering_key`` for the event (a JSON text when it is
    not a string)."""
    seq: int
    """1, 2, 3, ... in the order the queue accepted the events of this tool, destination and
    key; 0 until the queue has given it one (ingest leaves it 0; :meth:`Queue.enqueue` sets
    it, in the same atomic step as the message's write)."""


@dataclass(frozen=True, slots=True)
class Message:
    """An accepted webhook on its way to a worker. Built by ingest from the raw request."""

    event_id: str
    tool_id: str
    event_type: str | None
    delivery_id: str
    received_at: float
    """Epoch seconds at which the API accepted the request."""
    headers: bytes
    """The request headers as a JSON object, lower-cased, signature headers removed."""
    body: bytes
    """The request body exactly as received."""
    traceparent: str | None = None
    """W3C trace context of the ingest request, continued by the worker."""
    attempt: int = 0
    """Failed processing attempts so far in the current retry series (0 for a new event)."""
    retry_from: float | None = None
    """Epoch seconds the current retry series began: None means ``received_at``; a dead letter
    retried by hand starts a new series with a fresh retry budget."""
    destination_id: str | None = None
    """None: the whole event (a new event, a redelivery or a replay: every destination it still
    owes). Set: only this destination's delivery (its retry, a deferral, a dead letter or replay
    of that delivery alone)."""
    ordering: tuple[Position, ...] = ()
    """The event's place in the order of each destination with an ``ordering_key`` for which
    the key is not null. Kept through retries and deferrals, stored with the event (a replay
    or a paused delivery sent again keeps it)."""
    replay_key: str | None = field(default=None, compare=False)
    """A second de-duplication key beside the delivery id (a hash of the body, for schemes that
    sign the body alone): the message is a duplicate when either was seen within the TTL. Used
    by :meth:`Queue.enqueue` only; not carried to the worker, so not compared either."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message handed to a worker, with what the queue needs to acknowledge it."""

    message: Message
    receipt: str
    """Queue-specific handle: the stream entry id (Redis) or the row id (database)."""
    deliveries: int
    """How many times the message has been handed out, this time included (1 the first time)."""


class EnqueueResult(NamedTuple):
    event_id: str
    """The new event's id, or for a duplicate the id of the event first accepted."""
    duplicate: bool


class Queue(Protocol):
    """Carries messages from the API to the workers.

    ``enqueue`` de-duplicates on (tool id, delivery id), and on (tool id, replay key) for a
    message that has one, atomically with the write: of two concurrent requests sharing a key
    exactly one is enqueued. A message is a duplicate when ANY of its keys was seen within the
    TTL; then its other keys are recorded too, for the event first accepted.
    """

    async def enqueue(self, messages: Sequence[Message]) -> list[EnqueueResult]:
        """Durably add ``messages`` (one round trip for the batch), in order.

        Raises QueueUnavailableError when the backend cannot be reached; then nothing of the
        batch may be assumed enqueued or not (the caller answers 503, the sender retries, and
        de-duplication makes the retry safe).
        """
        ...

    async def requeue(self, messages: Sequence[Message]) -> None:
        """Add messages of events accepted before (a replay, a dead letter retried), without
        de-duplication: their delivery ids are known on purpose."""
        ...

    async def receive(self, count: int, block: float) -> list[Delivery]:
        """Up to ``count`` new messages for this consumer, waiting up to ``block`` seconds."""
        ...

    async def reclaim(self, count: int) -> list[Delivery]:
        """Take over up to ``count`` messages that other consumers received but did not
        acknowledge within the reclaim idle time (their worker died)."""
        ...

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove processed messages from the queue for good."""
        ...

    async def renew(self, deliveries: Sequence[Delivery]) -> int:
        """Tell the queue this consumer is still working on ``deliveries`` (reset their idle
        time or extend their lease), so they are not reclaimed while a slow forward runs.
        Returns how many of them another consumer has taken over since (their lease ran out
        first); those are left alone. Settled ones are not counted."""
        ...

    async def retry_later(self, deliveries: Sequence[tuple[Delivery, float]]) -> None:
        """Acknowledge each delivery (by its receipt) and deliver its message (as given: the
        caller counts ``attempt`` up) again after the given delay in seconds. Atomic per
        message: it stays pending or is scheduled, never lost. A scheduled retry survives
        restarts of any process.

        One receipt may come several times with different messages (an event's destinations
        retried each on its own schedule): the receipt is acknowledged once and every message
        is scheduled, all in the same atomic step."""
        ...

    async def promote_due(self, limit: int = 500) -> int:
        """Make retries whose time has come available to ``receive`` (if the backend needs a
        step for it). Returns how many were moved."""
        ...

    async def scheduled_count(self) -> int:
        """Messages waiting for a retry."""
        ...

    async def oldest_age(self) -> float:
        """Seconds the oldest message available to workers (waiting or in flight) has been so;
        0 when there is none. A growing value means the workers are not keeping up."""
        ...

    async def depth(self) -> int:
        """Messages in the queue: waiting plus received but not yet acknowledged."""
        ...

    async def housekeeping(self) -> None:
        """Periodic clean-up (called by workers): forget delivery ids past their TTL."""
        ...

    async def forget_delivery_ids(
        self, keys: Sequence[tuple[str, str]], replay_keys: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Forget these ``(tool id, delivery id)`` and ``(tool id, replay key)`` before their
        TTL, so that each is accepted as a new event when sent again (their events were
        erased). Unknown keys are no error."""
        ...

    async def ping(self) -> None:
        """Raise QueueUnavailableError when the backend does not answer."""
        ...

    async def close(self) -> None: ...
