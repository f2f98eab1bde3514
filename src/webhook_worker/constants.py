"""Every name that leaves the process: Redis keys, stream and group names, table names.

Changing one of these is a wire change: running processes and stored data depend on it.
"""

from typing import Final

# Redis. Every key starts with the configurable prefix (REDIS_KEY_PREFIX) and a colon.
REDIS_STREAM_SUFFIX: Final = "events"
"""The stream that carries accepted events from the API to the workers."""
REDIS_GROUP: Final = "workers"
"""The consumer group every worker reads the stream through."""
REDIS_DEDUPE_SUFFIX: Final = "delivery"
"""``{prefix}:delivery:{tool_id}:{delivery_id}`` -> event id, for WORKER_IDEMPOTENCY_TTL."""
REDIS_REPLAY_SUFFIX: Final = "replay"
"""``{prefix}:replay:{tool_id}:{replay_key}`` -> event id, for WORKER_IDEMPOTENCY_TTL."""
REDIS_RETRY_SUFFIX: Final = "retry"
"""Sorted set of event ids by due time; ``{prefix}:retry:{event_id}`` holds each message."""
REDIS_MALFORMED_SUFFIX: Final = "events:malformed"
"""Stream where entries of the events stream that cannot be decoded are set aside for a human."""
REDIS_GATE_SUFFIX: Final = "gate"
"""``{prefix}:gate:{tool_id}:{destination_id}`` (hash: the circuit breaker) and its ``:slots``
(sorted set: deliveries in flight by lease expiry) and ``:sends`` (sorted set: the rate
window) keys: a destination's delivery control."""
REDIS_ORDER_SUFFIX: Final = "order"
"""``{prefix}:order:{tool_id}:{destination_id}:{key}`` (hash: ``assigned``, the last position
the queue gave; ``settled``, every position up to it is settled) and its ``:ahead`` sorted set
(positions settled before an earlier one): one ordering key's state."""
REDIS_CIRCUITS_SUFFIX: Final = "circuits"
"""``{prefix}:circuits`` (hash: ``{tool_id}:{destination_id}`` -> circuit state): every
destination whose circuit is not closed, so listing them needs no SCAN of the keyspace."""


class RedisKeys:
    """Every Redis key under one prefix (REDIS_KEY_PREFIX): the only place keys are composed.

    Plain attributes, computed once, since the per-message keys are built on the ingest path.
    """

    __slots__ = (
        "_dedupe_prefix",
        "_replay_prefix",
        "circuits",
        "gate_prefix",
        "malformed",
        "order_prefix",
        "prefix",
        "retry",
        "retry_hash_prefix",
        "stream",
    )

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.stream = f"{prefix}:{REDIS_STREAM_SUFFIX}"
        """``{prefix}:events``: the stream of accepted events."""
        self.malformed = f"{prefix}:{REDIS_MALFORMED_SUFFIX}"
        """``{prefix}:events:malformed``: entries that could not be decoded."""
        self.retry = f"{prefix}:{REDIS_RETRY_SUFFIX}"
        """``{prefix}:retry``: sorted set of event ids waiting for a retry, by due time."""
        self.retry_hash_prefix = f"{self.retry}:"
        """What :meth:`retry_hash` puts before the event id (the promote script needs it)."""
        self._dedupe_prefix = f"{prefix}:{REDIS_DEDUPE_SUFFIX}:"
        self._replay_prefix = f"{prefix}:{REDIS_REPLAY_SUFFIX}:"
        self.gate_prefix = f"{prefix}:{REDIS_GATE_SUFFIX}:"
        """What :meth:`gate` puts before ``{tool_id}:{destination_id}`` (scripts that scan
        every destination need it)."""
        self.order_prefix = f"{prefix}:{REDIS_ORDER_SUFFIX}:"
        """What :meth:`order` puts before ``{tool_id}:{destination_id}:{key}`` (the enqueue
        script composes the keys of the positions it gives)."""
        self.circuits = f"{prefix}:{REDIS_CIRCUITS_SUFFIX}"
        """``{prefix}:circuits``: hash of the destinations whose circuit is not closed
        (``{tool_id}:{destination_id}`` -> 1 half-open, 2 open)."""

    def retry_hash(self, member: str) -> str:
        """``{prefix}:retry:{member}``: the fields of a message waiting for a retry (``member``
        as in :func:`retry_member`)."""
        return self.retry_hash_prefix + member

    def dedupe(self, tool_id: str, delivery_id: str) -> str:
        """``{prefix}:delivery:{tool_id}:{delivery_id}``: the first event id for a delivery id."""
        return f"{self._dedupe_prefix}{tool_id}:{delivery_id}"

    def replay(self, tool_id: str, replay_key: str) -> str:
        """``{prefix}:replay:{tool_id}:{replay_key}``: the first event id for a replay key."""
        return f"{self._replay_prefix}{tool_id}:{replay_key}"

    def gate(self, tool_id: str, destination_id: str) -> str:
        """``{prefix}:gate:{tool_id}:{destination_id}``: a destination's circuit breaker; with
        ``:slots`` and ``:sends`` after it, its deliveries in flight and its rate window."""
        return f"{self.gate_prefix}{tool_id}:{destination_id}"

    def order(self, tool_id: str, destination_id: str, key: str) -> str:
        """``{prefix}:order:{tool_id}:{destination_id}:{key}``: one ordering key's positions
        (ids hold no ``:``, so the key, last, may)."""
        return f"{self.order_prefix}{tool_id}:{destination_id}:{key}"


# Stream entry fields.
def retry_member(event_id: str, destination_id: str | None) -> str:
    """What names a message waiting for a retry in Redis: the event id, with the destination
    after a ``/`` for one destination's delivery (destination ids never hold ``/``), so each
    destination of an event waits on its own schedule."""
    return event_id if destination_id is None else f"{event_id}/{destination_id}"


FIELD_EVENT_ID: Final = b"id"
FIELD_TOOL_ID: Final = b"tool"
FIELD_EVENT_TYPE: Final = b"type"
FIELD_DELIVERY_ID: Final = b"delivery"
FIELD_RECEIVED_AT: Final = b"ts"
FIELD_HEADERS: Final = b"headers"
FIELD_BODY: Final = b"body"
FIELD_TRACEPARENT: Final = b"traceparent"
FIELD_ATTEMPT: Final = b"attempt"
FIELD_RETRY_FROM: Final = b"retry_from"
FIELD_DESTINATION: Final = b"destination"
FIELD_ORDERING: Final = b"ordering"
"""The message's ordering positions, JSON ``[[destination_id, key, position], ...]``."""
# Extra fields on an entry of the malformed stream, beside the original entry's fields.
FIELD_MALFORMED_SOURCE_ID: Final = b"malformed-source-id"
"""The entry id the malformed entry had in the events stream."""
FIELD_MALFORMED_ERROR: Final = b"malformed-error"
"""Why the entry could not be decoded."""

# Tables.
TABLE_TOOLS: Final = "tools"
TABLE_EVENTS: Final = "events"
TABLE_ATTEMPTS: Final = "event_attempts"
TABLE_DEAD_LETTERS: Final = "dead_letters"
TABLE_QUEUE: Final = "queue_messages"
TABLE_DELIVERY_IDS: Final = "delivery_ids"
TABLE_EVENT_DELIVERIES: Final = "event_deliveries"
TABLE_EVENT_KEYS: Final = "event_keys"
TABLE_DESTINATION_GATES: Final = "destination_gates"
"""One row per controlled destination: its circuit breaker (and the row locked while its
control is checked)."""
TABLE_DESTINATION_SLOTS: Final = "destination_slots"
"""Deliveries in flight to a destination, each with its lease expiry."""
TABLE_DESTINATION_SENDS: Final = "destination_sends"
"""When recent requests were let go to a destination (its rate window)."""
TABLE_ORDERING_KEYS: Final = "ordering_keys"
"""Per tool, destination and ordering key: the last position given and the last settled."""
TABLE_ORDERING_SETTLED: Final = "ordering_settled"
"""Positions settled before an earlier one of their key."""
DELIVERY_REPLAY_PREFIX: Final = "replay:"
"""Before a replay key in the ``delivery_id`` column of ``delivery_ids``: the database queue
keeps both kinds of key in one table, so one upsert records them all."""
TABLE_METADATA: Final = "metadata"

METADATA_TOOLS_REVISION: Final = "tools_revision"
"""Row in the metadata table bumped by every tool change; processes poll it to reload tools."""
METADATA_RETENTION_LEASE: Final = "retention_lease"
"""Row in the metadata table: epoch milliseconds until which one process holds the retention
sweep (storage/retention.py); no other process sweeps before then."""

EMBEDDED_DB_FILENAME: Final = "webhook-worker.db"
