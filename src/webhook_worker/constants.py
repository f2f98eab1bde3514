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


class RedisKeys:
    """Every Redis key under one prefix (REDIS_KEY_PREFIX): the only place keys are composed.

    Plain attributes, computed once, since the per-message keys are built on the ingest path.
    """

    __slots__ = (
        "_dedupe_prefix",
        "_replay_prefix",
        "malformed",
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
DELIVERY_REPLAY_PREFIX: Final = "replay:"
"""Before a replay key in the ``delivery_id`` column of ``delivery_ids``: the database queue
keeps both kinds of key in one table, so one upsert records them all."""
TABLE_METADATA: Final = "metadata"

METADATA_TOOLS_REVISION: Final = "tools_revision"
"""Row in the metadata table bumped by every tool change; processes poll it to reload tools."""

EMBEDDED_DB_FILENAME: Final = "webhook-worker.db"
